"""Latent diffusion: a DiffusionModel that works on an autoencoder's latents."""

import keras
import numpy as np
import pytest

from conftest import blob_images
from diffusion_keras import DiffusionModel
from diffusion_keras.models.autoencoder import Autoencoder

SIZE = 16
TINY_LATENT = dict(image_size=SIZE, widths=(8, 16), block_depth=1, embedding_dims=8, seed=1)


@pytest.fixture(scope="module")
def autoencoder():
    autoencoder = Autoencoder(factor=4, widths=(8, 16, 16), seed=1)
    autoencoder.measure_latent_scale(blob_images(32, SIZE))
    return autoencoder


def latent_model(autoencoder, **overrides):
    model = DiffusionModel(**{**TINY_LATENT, **overrides}, autoencoder=autoencoder)
    model.adapt(blob_images(32, SIZE))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    return model


def test_the_u_net_works_on_latents_and_generate_returns_images(autoencoder):
    model = latent_model(autoencoder)
    assert model.sample_shape == (SIZE // 4, SIZE // 4, 4)
    assert model.network.input_shape[0] == (None, SIZE // 4, SIZE // 4, 4)
    images = model.generate(3, 4, seed=0)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_the_normalizer_learns_latent_statistics(autoencoder):
    model = latent_model(autoencoder)
    latents = model.encode_images(blob_images(32, SIZE))
    np.testing.assert_allclose(model.normalizer.adapt_mean, latents.mean(axis=(0, 1, 2)), atol=1e-4)


@pytest.mark.slow
def test_training_on_images_equals_training_on_latents_encoded_once(autoencoder):
    images = blob_images(16, SIZE)
    on_images, on_latents = latent_model(autoencoder), latent_model(autoencoder)
    on_images.fit(images, batch_size=8, epochs=1, verbose=0, shuffle=False)
    latents = on_latents.encode_images(images)
    on_latents.fit(latents, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(on_images.network.weights, on_latents.network.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.slow
def test_the_autoencoder_is_frozen_and_the_users_copy_untouched(autoencoder):
    before = [w.copy() for w in autoencoder.get_weights()]
    model = latent_model(autoencoder)
    assert not model.autoencoder.trainable_weights
    assert len(model.trainable_weights) == len(model.network.trainable_weights)
    model.fit(blob_images(16, SIZE), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(model.autoencoder.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert autoencoder.trainable


@pytest.mark.slow
def test_one_file_holds_the_model_and_its_decoder(autoencoder, tmp_path):
    model = latent_model(autoencoder, num_classes=2)
    model.fit(blob_images(16, SIZE), np.arange(16) % 2, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "latent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.autoencoder, Autoencoder)
    assert float(loaded.autoencoder.latent_scale) == float(autoencoder.latent_scale)
    for settings in (
        dict(),
        dict(sampler="dpmpp_2m", spacing="log_snr"),
        dict(class_labels=[0, 1], guidance_scale=3.0),
        dict(eta=1.0),
    ):
        np.testing.assert_array_equal(
            loaded.generate(2, 3, seed=4, **settings), model.generate(2, 3, seed=4, **settings)
        )


def test_another_precision_keeps_the_autoencoder(autoencoder):
    model = latent_model(autoencoder)
    bfloat16 = model.with_precision("mixed_bfloat16")
    assert bfloat16.autoencoder is not None
    assert np.abs(bfloat16.generate(2, 3, seed=0) - model.generate(2, 3, seed=0)).mean() < 0.05


def test_what_latent_models_do_not_do_is_said(autoencoder):
    model = latent_model(autoencoder)
    with pytest.raises(ValueError, match="pixel-space models"):
        model.edit(blob_images(1, SIZE), strength=0.5)
    with pytest.raises(ValueError, match="3 channels"):
        DiffusionModel(**TINY_LATENT, channels=1, autoencoder=autoencoder)
    with pytest.raises(ValueError, match="not divisible"):
        DiffusionModel(**{**TINY_LATENT, "image_size": 18}, autoencoder=autoencoder)
    with pytest.raises(ValueError, match="latent model"):
        DiffusionModel(**TINY_LATENT).encode_images(blob_images(1, SIZE))


def test_cached_latents_are_encoded_again_when_the_autoencoder_changes(autoencoder, tmp_path):
    from diffusion_keras.data.datasets import ImageData
    from diffusion_keras.training.latent import encoded_once

    data = ImageData((blob_images(16, SIZE) * 255).astype(np.uint8), source="blobs")
    model = latent_model(autoencoder)
    cached = encoded_once(model, data, str(tmp_path))
    assert cached.images.dtype == np.float32 and cached.images.shape == (16, 4, 4, 4)
    again = encoded_once(model, data, str(tmp_path))
    np.testing.assert_array_equal(again.images, cached.images)
    other = latent_model(Autoencoder(factor=4, widths=(8, 16, 16), seed=2))
    changed = encoded_once(other, data, str(tmp_path))
    np.testing.assert_allclose(changed.images, other.encode_images(data.images / 255.0), atol=1e-5)


@pytest.mark.slow
def test_a_latent_run_trains_its_autoencoder_on_crops_of_larger_images(tmp_path, capsys):
    from diffusion_keras.data.datasets import ImageData
    from diffusion_keras.training.latent import autoencoder_for
    from diffusion_keras.training.run import TrainConfig
    from diffusion_keras.utils.errors import TrainingError

    data = ImageData((blob_images(16, SIZE) * 255).astype(np.uint8), source="blobs")
    config = TrainConfig(image_size=SIZE, batch_size=8, dataset_repetitions=1, latent=True,
                         autoencoder_epochs=1, autoencoder_crop=8)  # fmt: skip
    autoencoder = autoencoder_for(config, data, str(tmp_path), verbose=0)
    assert "on 8x8 crops" in capsys.readouterr().out
    assert int(autoencoder.train_steps.numpy()) == 2
    # Its learning rate has decayed to zero over its epochs.
    assert float(autoencoder.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    # It reconstructs whole images, and its latent scale is measured on them.
    assert autoencoder(blob_images(2, SIZE)).shape == (2, SIZE, SIZE, 3)
    assert float(autoencoder.latent_scale) != 1.0
    config.autoencoder_crop = 6
    with pytest.raises(TrainingError, match="multiple of the latent factor 4, got 6"):
        autoencoder_for(config, data, str(tmp_path / "other"), verbose=0)


def test_the_autoencoder_crops_only_images_larger_than_its_crop():
    from diffusion_keras.training.latent import training_crop

    assert training_crop(64, 128, 4) == 64
    assert training_crop(0, 128, 4) == 0  # 0: whole images
    assert training_crop(128, 128, 4) == 0 and training_crop(130, 128, 4) == 0  # not smaller
    assert training_crop(30, 128, 4) is None  # not a multiple of the factor
    assert training_crop(-4, 128, 4) is None


@pytest.mark.slow
def test_a_latent_run_trains_its_autoencoder_once_and_resumes(tmp_path):
    from diffusion_keras.data.datasets import ImageData
    from diffusion_keras.models.saving import load_autoencoder, load_model
    from diffusion_keras.training.run import TrainConfig, train

    data = ImageData((blob_images(32, SIZE) * 255).astype(np.uint8), source="blobs")
    settings = dict(
        image_size=SIZE, widths=(8, 16), block_depth=1, embedding_dims=8, batch_size=8,
        dataset_repetitions=1, epochs=1, latent=True, autoencoder_epochs=1, plot_images=2,
        plot_diffusion_steps=2, precision="float32",
    )  # fmt: skip
    first = TrainConfig(**settings, output=str(tmp_path / "first"))
    model = train(first, verbose=0, data=data)
    saved = load_autoencoder(str(tmp_path / "first" / "autoencoder.keras"))
    assert float(saved.latent_scale) != 1.0
    for a, b in zip(saved.get_weights(), model.autoencoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The images were encoded once, into the run directory, and the resumed
    # run maps the same latents instead of encoding again.
    latents = tmp_path / "first" / "latents.npy"
    np.testing.assert_allclose(
        np.load(latents), model.encode_images(data.images / 255.0), atol=1e-5
    )
    written = latents.stat().st_mtime_ns
    first.epochs = 2
    resumed = train(first, resume=True, verbose=0, data=data)
    assert int(resumed.train_steps.numpy()) == 8
    assert latents.stat().st_mtime_ns == written

    # Another run reuses the autoencoder instead of training one.
    path = str(tmp_path / "first" / "autoencoder.keras")
    second = TrainConfig(**settings, autoencoder=path, output=str(tmp_path / "second"))
    model = train(second, verbose=0, data=data)
    assert not (tmp_path / "second" / "autoencoder.keras").exists()
    loaded = load_model(str(tmp_path / "second" / "model.keras"))
    for a, b in zip(saved.get_weights(), loaded.autoencoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.generate(2, 3, seed=0), model.generate(2, 3, seed=0))
