import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, blob_images, fit_on_blobs, tiny_model
from diffusion_keras import DiffusionModel
from diffusion_keras.models.saving import load_model


def weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def total_variation(images):
    return np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()


def test_book_defaults():
    model = DiffusionModel(seed=0)
    assert model.network.count_params() == 1_953_507
    config = model.get_config()
    expected = dict(
        image_size=64,
        widths=[32, 64, 96, 128],
        block_depth=2,
        embedding_dims=32,
        embedding_min_frequency=1.0,
        embedding_max_frequency=1000.0,
        schedule="offset_cosine",
        min_signal_rate=0.02,
        max_signal_rate=0.95,
        ema=0.999,
        loss="mae",
    )
    assert {k: config[k] for k in expected} == expected


def test_ema_network_starts_as_an_exact_copy():
    model = DiffusionModel(**TINY, seed=0)
    assert weights_equal(model.network, model.ema_network)
    assert not model.ema_network.trainable


def test_ema_decay_warms_up_to_the_configured_value():
    model = DiffusionModel(**TINY, seed=0, ema=0.999)
    decays = []
    for n in [0, 1, 10, 100, 8990, 20000]:
        model.train_steps.assign(n)
        decays.append(float(model.ema_decay()))
    np.testing.assert_allclose(decays, [0.1, 2 / 11, 11 / 20, 101 / 110, 0.999, 0.999], rtol=1e-6)
    model = DiffusionModel(**TINY, seed=0, ema=0.999, ema_warmup=False)
    assert float(model.ema_decay()) == pytest.approx(0.999)


def test_train_step_moves_ema_by_the_decay():
    model = tiny_model()
    before = model.ema_network.get_weights()
    # One step through `fit`, which calls `train_step` as each backend does.
    model.fit(blob_images(4), batch_size=4, epochs=1, verbose=0, shuffle=False)
    decay = 0.1  # first step of the warm-up
    after = model.network.get_weights()
    expected = [decay * b + (1 - decay) * a for a, b in zip(after, before)]
    for got, want in zip(model.ema_network.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(keras.ops.convert_to_numpy(model.train_steps)) == 1


@pytest.mark.slow
def test_training_learns_and_ema_samples_look_like_the_data():
    model = tiny_model()
    data, history = fit_on_blobs(model, steps_per_epoch=50, epochs=4)
    losses = history.history["n_loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    samples = model.generate(32, 20, seed=0)
    noise = model.denormalize(model.make_noise(32, 1)).numpy()
    smoothness = total_variation(samples)
    # Closer to the data's smoothness than to the noise's, after 200 steps.
    assert abs(smoothness - total_variation(data)) < abs(smoothness - total_variation(noise))


@pytest.mark.slow
def test_partial_batches_train_and_evaluate():
    model = tiny_model()
    images = blob_images(10)
    history = model.fit(images, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["n_loss"][0])
    result = model.evaluate(images, batch_size=4, verbose=0, return_dict=True)
    assert set(result) == {"n_loss", "i_loss"} and np.isfinite(result["n_loss"])


@pytest.mark.parametrize("seed", [None, 2**40 + 3], ids=["unseeded", "beyond 32 bits"])
def test_any_seed_builds_a_model_on_every_backend(seed):
    model = tiny_model(seed=seed)
    assert model.generate(1, 2, seed=0).shape == (1, 16, 16, 3)
    if seed is not None:
        assert weights_equal(model.network, tiny_model(seed=seed).network)


@pytest.mark.slow
def test_same_seed_same_training():
    def run():
        model = tiny_model(seed=7)
        model.fit(blob_images(16), batch_size=8, epochs=2, verbose=0, shuffle=False)
        return model.network.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def trained_tiny_model():
    model = tiny_model()
    model.fit(blob_images(16), batch_size=8, epochs=2, verbose=0, shuffle=False)
    return model


@pytest.mark.slow
def test_generate_is_seeded_and_in_range():
    model = trained_tiny_model()
    a = model.generate(5, 4, seed=3)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, model.generate(5, 4, seed=3))
    assert not np.array_equal(a, model.generate(5, 4, seed=4))


@pytest.mark.slow
def test_compiled_sampler_equals_the_eager_loop():
    model = trained_tiny_model()
    noise = model.make_noise(4, 0)
    eager = model.denormalize(model.reverse_diffusion(noise, 6)).numpy()
    np.testing.assert_allclose(
        model.generate(initial_noise=noise, diffusion_steps=6), eager, atol=1e-5
    )
    stepped = model.generate(initial_noise=noise, diffusion_steps=6, progress=True)
    np.testing.assert_allclose(stepped, eager, atol=1e-5)


@pytest.mark.slow
def test_chunked_generation_equals_one_batch():
    model = trained_tiny_model()
    whole = model.generate(7, 3, seed=11, batch_size=7)
    chunked = model.generate(7, 3, seed=11, batch_size=3)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_generate_refuses_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="diffusion_steps must be >= 1"):
        model.generate(2, 0)
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        model.generate(0)
    with pytest.raises(ValueError, match=r"initial_noise must have shape \(n, 16, 16, 3\)"):
        model.generate(initial_noise=np.zeros((2, 8, 8, 3)))


def test_config_round_trip():
    model = DiffusionModel(**TINY, seed=5, schedule="cosine", ema=0.99, loss="mse")
    clone = DiffusionModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    json.dumps(model.get_config())


LOAD_AND_GENERATE = """
import sys, numpy as np, keras
import diffusion_keras
model = keras.models.load_model(sys.argv[1])
assert type(model).__name__ == "DiffusionModel", type(model)
np.save(sys.argv[2], model.generate(4, 5, seed=9))
print(int(model.train_steps.numpy()), int(model.optimizer.iterations.numpy()))
"""


@pytest.mark.slow
def test_keras_round_trip_in_a_fresh_process(tmp_path):
    model = trained_tiny_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    expected = model.generate(4, 5, seed=9)
    out = str(tmp_path / "generated.npy")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, path, out],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), expected)
    assert result.stdout.split() == ["4", "4"]  # step counter and optimizer state


@pytest.mark.slow
def test_reloaded_model_keeps_ema_and_normalizer(tmp_path):
    model = trained_tiny_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert weights_equal(loaded.ema_network, model.ema_network)
    assert not weights_equal(loaded.ema_network, loaded.network)
    np.testing.assert_array_equal(
        loaded.normalizer.adapt_mean.numpy(), model.normalizer.adapt_mean.numpy()
    )


@pytest.mark.parametrize("prediction", ["noise", "image", "velocity"])
def test_prediction_targets_split_back_into_noise_and_image(prediction):
    model = DiffusionModel(**TINY, seed=0, prediction=prediction)
    rng = np.random.default_rng(0)
    images, noises = (rng.standard_normal((3, 16, 16, 3)).astype("float32") for _ in range(2))
    times = tf.constant(rng.uniform(size=(3, 1, 1, 1)).astype("float32"))
    noise_rates, signal_rates = model.diffusion_schedule(times)
    noisy_images = signal_rates * images + noise_rates * noises
    targets = model.prediction_targets(images, noises, noise_rates, signal_rates)
    pred_noises, pred_images = model.split_prediction(
        targets, noisy_images, noise_rates, signal_rates
    )
    np.testing.assert_allclose(pred_noises, noises, atol=1e-4)
    np.testing.assert_allclose(pred_images, images, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "prediction, loss", [("noise", "mse"), ("image", "mae"), ("velocity", "mae")]
)
def test_every_prediction_target_trains_and_reloads(prediction, loss, tmp_path):
    model = tiny_model(prediction=prediction, loss=loss)
    _, history = fit_on_blobs(model, steps_per_epoch=30, epochs=2)
    # The loss that is optimised: on the noise, the image or the velocity.
    trained = history.history[
        {"noise": "n_loss", "image": "i_loss", "velocity": "v_loss"}[prediction]
    ]
    assert np.isfinite(trained).all() and trained[-1] < trained[0], history.history
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_config()["prediction"] == prediction and loaded.loss_name == loss
    for sampler in ("ddim", "dpmpp_2m"):
        images = loaded.generate(3, 5, seed=0, sampler=sampler)
        assert np.isfinite(images).all()
        np.testing.assert_array_equal(images, model.generate(3, 5, seed=0, sampler=sampler))


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        DiffusionModel(**TINY, prediction="score")


@pytest.mark.slow
def test_files_from_before_the_fused_batch_norm_still_load(tmp_path):
    """A model saved before `batch_norm` and `remat` existed holds Keras's
    BatchNormalization in the book's separate layers and neither key; it
    loads as such, and the fused U-Net with the same weights draws the same
    images."""
    import zipfile

    old = tiny_model(batch_norm="keras", remat=False)
    fit_on_blobs(old, steps_per_epoch=3)
    saved, path = str(tmp_path / "saved.keras"), str(tmp_path / "old.keras")
    old.save(saved)
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["batch_norm"], config["config"]["remat"]
                data = json.dumps(config).encode()
            target.writestr(item, data)
    loaded = load_model(path)
    assert loaded.batch_norm == "keras" and not loaded.remat
    expected = old.generate(4, 5, seed=2)
    np.testing.assert_array_equal(loaded.generate(4, 5, seed=2), expected)
    fused = DiffusionModel.from_config({**old.get_config(), "batch_norm": "fused"})
    assert any(type(layer).__name__ == "FusedBatchNormalization" for layer in fused.network.layers)
    fused.set_weights(old.get_weights())
    np.testing.assert_allclose(fused.generate(4, 5, seed=2), expected, atol=1e-4)
    assert DiffusionModel(**TINY).batch_norm == "fused"


@pytest.mark.slow
def test_remat_model_trains_and_samples_as_the_books_layers_do(tmp_path):
    """The default `remat=True` (residual blocks that recompute their batch
    norm and swish) trains to the same weights as the book's separate layers
    and draws the same images; it saves and loads as itself."""
    flat, remat = tiny_model(remat=False), tiny_model()
    assert remat.remat and not flat.remat
    assert any(type(layer).__name__ == "ResidualBlock" for layer in remat.network.layers)
    for model in (flat, remat):
        fit_on_blobs(model, steps_per_epoch=4)
    expected = flat.generate(4, 5, seed=2)
    np.testing.assert_allclose(remat.generate(4, 5, seed=2), expected, atol=2e-4)
    path = str(tmp_path / "remat.keras")
    remat.save(path)
    loaded = load_model(path)
    assert loaded.remat
    np.testing.assert_array_equal(loaded.generate(4, 5, seed=2), remat.generate(4, 5, seed=2))
