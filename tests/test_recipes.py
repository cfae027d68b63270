"""Training recipes: the book's exactly one flag away, learning-rate schedules,
and loss weighting by noise level."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY, fit_on_blobs, one_line_error, run_script, tiny_model, write_png_folder
from diffusion_keras import DiffusionModel
from diffusion_keras.diffusion.schedules import offset_cosine_schedule
from diffusion_keras.diffusion.weighting import loss_weights, time_sampler
from diffusion_keras.training.run import RECIPES, TrainConfig, learning_rate


def test_book_recipe_is_the_books_notebook():
    book = TrainConfig.for_recipe("book")
    assert (book.flip, book.ema, book.ema_warmup) == (False, 0.999, False)
    assert (book.learning_rate, book.lr_schedule, book.weight_decay) == (1e-3, "constant", 1e-4)
    assert book.adam_beta_2 == 0.999  # AdamW's own default, as the book's notebook uses it
    assert (book.loss, book.prediction, book.loss_weighting) == ("mae", "noise", "none")
    assert book.time_sampling == "uniform"
    assert (book.batch_size, book.image_size, book.widths) == (64, 64, (32, 64, 96, 128))
    assert TrainConfig.for_recipe("book", batch_size=16).batch_size == 16  # flags still win
    assert TrainConfig.for_recipe("default") == TrainConfig()
    assert TrainConfig().flip is False  # flips are opt-in
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of: default, book"):
        TrainConfig.for_recipe("fast")
    assert set(RECIPES) == {"default", "book"}


def test_the_optimizer_takes_the_configs_second_moment_decay():
    from diffusion_keras.training.run import build_model

    small = dict(image_size=16, widths=(8, 16), block_depth=1, precision="float32")
    assert float(build_model(TrainConfig(**small)).optimizer.beta_2) == 0.999
    assert float(build_model(TrainConfig(adam_beta_2=0.99, **small)).optimizer.beta_2) == 0.99


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(learning_rate=2e-3, lr_schedule="cosine", warmup_steps=10)
    schedule = learning_rate(config, total_steps=110)
    rates = [float(schedule(step)) for step in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(rates, [0.0, 1e-3, 2e-3, 1e-3, 0.0, 0.0], atol=1e-9)
    assert learning_rate(TrainConfig(), 110) == 2e-3  # the default: constant
    assert learning_rate(TrainConfig.for_recipe("book"), 110) == 1e-3
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        learning_rate(TrainConfig(lr_schedule="step"), 10)


@pytest.mark.parametrize("prediction", ["noise", "velocity", "image"])
@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_loss_weightings_weight_the_clean_image_loss_as_their_papers_say(weighting, prediction):
    """Whatever is predicted, the weight on that loss equals the paper's weight
    on the clean-image loss it is equivalent to: min(SNR, 5) for min-SNR (Hang
    et al. 2023, eq. 8), SNR + 1 for EDM with unit-variance data (Karras et al.
    2022: (sigma^2 + 1) / sigma^2 with sigma = noise / signal)."""
    times = np.linspace(0.0, 1.0, 11, dtype="float32").reshape(-1, 1, 1, 1)
    noise_rates, signal_rates = offset_cosine_schedule(times)
    noise_rates, signal_rates = np.asarray(noise_rates), np.asarray(signal_rates)
    snrs = signal_rates**2 / noise_rates**2
    weights = np.asarray(loss_weights(weighting, noise_rates, signal_rates, prediction))
    # The image error is its prediction's error times this factor.
    image_error_per_unit = {
        "noise": noise_rates / signal_rates,
        "velocity": noise_rates,
        "image": np.ones_like(noise_rates),
    }[prediction]
    expected = np.minimum(snrs, 5.0) if weighting == "min_snr" else snrs + 1.0
    np.testing.assert_allclose(weights / image_error_per_unit**2, expected, rtol=1e-4)
    if weighting == "edm" and prediction == "velocity":
        np.testing.assert_allclose(weights, 1.0, rtol=1e-5)  # EDM's loss is plain MSE on velocity
    np.testing.assert_array_equal(
        np.asarray(loss_weights("none", noise_rates, signal_rates, prediction)), 1.0
    )


@pytest.mark.parametrize("weighting,prediction", [("min_snr", "velocity"), ("edm", "noise")])
def test_weighted_model_trains_saves_and_reloads(tmp_path, weighting, prediction):
    model = tiny_model(prediction=prediction, loss="mse", loss_weighting=weighting,
                       min_snr_gamma=2.0)  # fmt: skip
    _, history = fit_on_blobs(model, steps_per_epoch=4)
    assert np.isfinite(history.history["n_loss"]).all()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.loss_weighting, loaded.min_snr_gamma) == (weighting, 2.0)
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        DiffusionModel(**TINY, loss_weighting="p2")


def test_log_normal_times_have_normal_log_snrs_cut_to_the_schedules_range():
    from math import erf, exp, pi, sqrt

    draws = (np.arange(20_000, dtype=np.float32) + 0.5) / 20_000
    np.testing.assert_array_equal(time_sampler("uniform", offset_cosine_schedule)(draws), draws)
    sample = time_sampler("log_normal", offset_cosine_schedule, log_snr_mean=1.0, log_snr_std=2.4)
    times = np.asarray(sample(draws.reshape(-1, 1, 1, 1))).reshape(-1)
    assert times.min() >= 0.0 and times.max() <= 1.0 and (np.diff(times) >= 0).all()
    noise_rates, signal_rates = (np.asarray(r, np.float64) for r in offset_cosine_schedule(times))
    log_snrs = 2.0 * np.log(signal_rates / noise_rates)
    # The normal (mean 1, sd 2.4) cut to [log-SNR at t=1, at t=0]: its mean and sd.
    low, high = (2.0 * np.log(s / sqrt(1 - s * s)) for s in (0.02, 0.95))
    a, b = (low - 1.0) / 2.4, (high - 1.0) / 2.4
    pdf = [exp(-z * z / 2) / sqrt(2 * pi) for z in (a, b)]
    mass = 0.5 * (erf(b / sqrt(2)) - erf(a / sqrt(2)))
    mean = 1.0 + 2.4 * (pdf[0] - pdf[1]) / mass
    sd = 2.4 * sqrt(1 + (a * pdf[0] - b * pdf[1]) / mass - ((pdf[0] - pdf[1]) / mass) ** 2)
    assert log_snrs.mean() == pytest.approx(mean, abs=0.01)
    assert log_snrs.std() == pytest.approx(sd, abs=0.01)
    assert 0.1 < np.mean(times > 0.7) < 0.2  # uniform times: 30% there, at noise rate > 0.92
    # The default mean (-1.5) is noisier than EDM's: about half the steps there.
    noisier = np.asarray(time_sampler("log_normal", offset_cosine_schedule)(draws))
    assert 0.4 < np.mean(noisier > 0.7) < 0.55


@pytest.mark.slow
def test_a_log_normal_model_trains_saves_and_reloads(tmp_path):
    model = tiny_model(time_sampling="log_normal", log_snr_mean=0.5, log_snr_std=2.0)
    _, history = fit_on_blobs(model, steps_per_epoch=4)
    assert np.isfinite(history.history["n_loss"]).all()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.time_sampling, loaded.log_snr_mean, loaded.log_snr_std) == (
        "log_normal",
        0.5,
        2.0,
    )
    default = tiny_model()
    assert (default.time_sampling, default.log_snr_mean, default.log_snr_std) == (
        "log_normal",
        -1.5,
        2.4,
    )
    older = {k: v for k, v in model.get_config().items() if k != "time_sampling"}
    assert DiffusionModel.from_config(older).time_sampling == "uniform"  # saved before it
    with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
        DiffusionModel(**TINY, time_sampling="beta")
    with pytest.raises(ValueError, match="log_snr_std must be > 0"):
        DiffusionModel(**TINY, time_sampling="log_normal", log_snr_std=0.0)


def test_a_run_saved_before_time_sampling_resumes_with_uniform_times(tmp_path):
    path = str(tmp_path / "config.json")
    TrainConfig().save(path)
    assert TrainConfig.load(path).time_sampling == "log_normal"
    with open(path) as handle:
        old = json.load(handle)
    del old["time_sampling"], old["log_snr_mean"], old["log_snr_std"]
    with open(path, "w") as handle:
        json.dump(old, handle)
    assert TrainConfig.load(path).time_sampling == "uniform"


def test_unweighted_loss_is_the_books_op_for_op():
    model = tiny_model()
    rng = np.random.default_rng(0)
    targets, outputs = rng.normal(size=(2, 4, 16, 16, 3)).astype("float32")
    rates = np.full((4, 1, 1, 1), 0.6, "float32")
    loss = model.training_loss(targets, outputs, rates, rates)
    assert float(loss) == float(keras.ops.mean(keras.ops.abs(targets - outputs)))


@pytest.mark.slow
def test_train_py_recipe_book_writes_the_books_settings(tmp_path):
    folder = tmp_path / "images"
    write_png_folder(folder, 16, nested=False)
    run = tmp_path / "run"
    result = run_script(
        "train.py", "--recipe", "book", "--data", folder, "--output", run, "--image-size", 16,
        "--widths", "8,16", "--block-depth", 1, "--batch-size", 8, "--epochs", 1,
        "--dataset-repetitions", 1, "--plot-images", 2, "--plot-diffusion-steps", 2,
        "--lr-schedule", "cosine", "--warmup-steps", 1, "--verbose", 0,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["ema_warmup"], config["flip"], config["lr_schedule"]) == (False, False, "cosine")
    line = one_line_error(
        run_script("train.py", "--output", run, "--resume", "--recipe", "book", "--epochs", 2)
    )
    assert "--recipe applies to new runs" in line


@pytest.mark.slow
def test_a_cosine_run_resumed_with_more_epochs_stretches_its_schedule(tmp_path):
    from conftest import blob_images
    from diffusion_keras.data.datasets import ImageData
    from diffusion_keras.training.run import train

    data = ImageData((blob_images(16, 16) * 255).astype(np.uint8), source="blobs")
    config = TrainConfig(
        image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8, batch_size=8,
        dataset_repetitions=1, epochs=1, lr_schedule="cosine", warmup_steps=1, plot_images=2,
        plot_diffusion_steps=2, precision="float32", output=str(tmp_path / "run"),
    )  # fmt: skip
    model = train(config, verbose=0, data=data)
    assert float(model.optimizer.learning_rate) == 0.0  # the end of a 2-step cosine
    config.epochs = 3
    model = train(config, resume=True, verbose=0, data=data)
    schedule = model.optimizer._learning_rate
    assert float(schedule(2)) > 0.0 and float(schedule(6)) == pytest.approx(0.0, abs=1e-12)
    assert int(model.train_steps.numpy()) == 6


def test_power_function_ema_spans_the_same_share_of_the_run_at_every_step():
    """EDM2's power-function EMA (Karras et al. 2024): its exponent for a
    relative length (their table: 0.05 -> 16.97, 0.10 -> 6.94), a decay of
    (1 - 1/t)^(gamma + 1) at update t, so the first update copies the weights
    and the average of weights w_1..w_t weighs w_i as i^gamma."""
    import keras

    from diffusion_keras.models.ema import EMA, power_ema_exponent

    assert power_ema_exponent(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_ema_exponent(0.10) == pytest.approx(6.94, abs=0.01)
    weight = keras.Variable(0.0, trainable=False)
    average = keras.Variable(123.0, trainable=False)
    steps = keras.Variable(0, dtype="int32", trainable=False)
    ema = EMA(lambda: [(weight, average)], 0.999, True, steps, length=0.1)
    gamma = power_ema_exponent(0.1)
    for t in range(1, 201):
        weight.assign(float(t))
        ema.update()
        steps.assign_add(1)
        if t == 1:
            assert float(average) == 1.0  # the first update copies the weights
    expected = (1 - 1 / 200.0) ** (gamma + 1)
    assert float(ema.current_decay()) == pytest.approx((1 - 1 / 201.0) ** (gamma + 1), rel=1e-6)
    assert expected < 0.999  # not the fixed decay
    i = np.arange(1, 201, dtype=np.float64)
    profile = np.sum(i**gamma * i) / np.sum(i**gamma)  # the average of w_i = i
    assert float(average) == pytest.approx(profile, rel=2e-3)


def test_ema_length_is_a_setting_with_a_one_line_error():
    assert TrainConfig().ema_length == 0.0 or TrainConfig().ema_length > 0
    assert TrainConfig.for_recipe("book").ema_length == 0.0
    with pytest.raises(ValueError, match=r"ema_length.*\[0, 0.28\]"):
        TrainConfig(ema_length=0.5)
    model = DiffusionModel(**TINY, ema_length=0.1, seed=1)
    assert model.get_config()["ema_length"] == 0.1
    assert model.ema_updater.exponent == pytest.approx(7.94, abs=0.01)
