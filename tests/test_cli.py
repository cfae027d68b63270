import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run_script

TINY_FLAGS = [
    "--image-size",
    16,
    "--widths",
    "8,16",
    "--block-depth",
    1,
    "--embedding-dims",
    8,
    "--batch-size",
    8,
    "--dataset-repetitions",
    1,
    "--plot-diffusion-steps",
    3,
    "--plot-images",
    4,
    "--verbose",
    2,
]


@pytest.mark.slow
def test_train_resume_and_generate_end_to_end(png_folder, tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", "--data", png_folder, "--epochs", 1, "--output", run_dir, *TINY_FLAGS
    )
    assert result.returncode == 0, result.stderr
    assert "40 images" in result.stdout
    for name in [
        "model.keras",
        "config.json",
        "checkpoints/epoch_001.keras",
        "samples/epoch_001.png",
    ]:
        assert (run_dir / name).exists(), name
    assert os.listdir(run_dir / "logs")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_size"] == 16 and config["widths"] == [8, 16]

    result = run_script("train.py", "--output", run_dir, "--resume", "--epochs", 2, "--verbose", 2)
    assert result.returncode == 0, result.stderr
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout
    assert (run_dir / "checkpoints/epoch_002.keras").exists()
    assert (run_dir / "samples/epoch_002.png").exists()

    model = run_dir / "model.keras"
    grid, single = tmp_path / "grid.png", tmp_path / "single"
    result = run_script(
        "generate.py",
        model,
        "--output",
        grid,
        "--num-images",
        6,
        "--steps",
        4,
        "--seed",
        1,
        "--output-dir",
        single,
        "--columns",
        3,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).size == (3 * 18 + 2, 2 * 18 + 2)
    assert len(os.listdir(single)) == 6
    again = tmp_path / "again.png"
    run_script(
        "generate.py",
        model,
        "--output",
        again,
        "--num-images",
        6,
        "--steps",
        4,
        "--seed",
        1,
        "--columns",
        3,
        "--no-progress",
    )
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(Image.open(again)))

    interp = tmp_path / "interp.png"
    result = run_script(
        "generate.py",
        model,
        "--output",
        interp,
        "--interpolate",
        "--rows",
        2,
        "--steps",
        3,
        "--seed",
        2,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(interp).size == (11 * 18 + 2, 2 * 18 + 2)
    steps = tmp_path / "steps.png"
    result = run_script(
        "generate.py",
        model,
        "--output",
        steps,
        "--show-steps",
        "1,2,5",
        "--num-images",
        4,
        "--seed",
        2,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(steps).size == (4 * 18 + 2, 3 * 18 + 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs: expected a number >= 1"),
        (["--image-size", "30"], "image size 30 must be a positive multiple of 8"),
        (["--ema", "1.5"], "--ema: expected a number in [0, 1)"),
        (["--schedule", "sigmoid"], "invalid choice: 'sigmoid'"),
        (["--max-signal-rate", "1.2"], "--max-signal-rate: expected a number in [0, 1]"),
        (["--min-signal-rate", "0.5", "--max-signal-rate", "0.4"], "min_signal_rate < max"),
        (["--widths", "32,x"], "comma-separated whole numbers"),
        (["--data", "/no/such/folder"], "does not exist"),
        (["--data", "builtin:tulips"], "unknown built-in data set"),
        (["--resume", "--output", "/no/such/run"], "not found"),
        (["--latent", "--image-size", "30"], "not divisible by --latent-factor 4"),
        (
            ["--latent", "--image-size", "128", "--autoencoder-crop", "30"],
            "--autoencoder-crop 30 is not divisible by --latent-factor 4",
        ),
        (["--autoencoder", "/no/such.keras", "--epochs", "1"], "does not exist"),
        (["--text-encoder-training", "joint"], "a text encoder needs --captions"),
    ],
)
def test_train_rejects_bad_arguments_in_one_line(args, message):
    line = one_line_error(run_script("train.py", *args))
    assert message in line


@pytest.mark.slow
def test_generate_rejects_bad_files_in_one_line(tmp_path):
    missing = one_line_error(run_script("generate.py", tmp_path / "none.keras"))
    assert "does not exist" in missing
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip file at all")
    assert "not a Keras model file" in one_line_error(run_script("generate.py", junk))
    assert "--steps: expected a number >= 1" in one_line_error(
        run_script("generate.py", junk, "--steps", "0")
    )


def test_flags_reach_the_run_config():
    from diffusion_keras.cli import train

    def config(*flags):
        return train.config_from_args(train.parser().parse_args([*flags, "--output", "run"]))

    assert config().remat is True
    assert config("--no-remat").remat is False
    rates = config("--min-signal-rate", "0.1", "--max-signal-rate", "0.9")
    assert (rates.min_signal_rate, rates.max_signal_rate) == (0.1, 0.9)
    assert config().flip is False and config("--flip").flip is True
    book = config("--recipe", "book", "--batch-size", "16")
    assert (book.ema_warmup, book.flip, book.batch_size) == (False, False, 16)
    assert config().ema_warmup is True
    weighted = config("--loss-weighting", "min_snr", "--min-snr-gamma", "2")
    assert (weighted.loss_weighting, weighted.min_snr_gamma) == ("min_snr", 2.0)
    sampled = config(
        "--time-sampling", "log_normal", "--log-snr-mean", "-0.5", "--log-snr-std", "2"
    )
    assert (sampled.time_sampling, sampled.log_snr_mean, sampled.log_snr_std) == (
        "log_normal",
        -0.5,
        2.0,
    )
    assert (config().time_sampling, config().log_snr_mean) == ("log_normal", -1.5)
    assert config("--recipe", "book").time_sampling == "uniform"
    assert config().latent is False
    latent = config("--autoencoder", "ae.keras", "--latent-factor", "8")
    assert (latent.latent, latent.autoencoder, latent.latent_factor) == (True, "ae.keras", 8)
    assert latent.autoencoder_crop == 64
    assert config().text_encoder_training == "frozen"
    joint = config("--captions", "--text-encoder-training", "joint")
    assert joint.text_encoder_training == "joint"
    assert config("--latent", "--autoencoder-crop", "0").autoencoder_crop == 0
    cosine = config("--lr-schedule", "cosine", "--warmup-steps", "100")
    assert (cosine.lr_schedule, cosine.warmup_steps) == ("cosine", 100)
    assert config("--adam-beta2", "0.99").adam_beta_2 == 0.99
