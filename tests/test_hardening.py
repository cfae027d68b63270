"""Bad input, crash-safe checkpoints, exact resume, the NaN guard, safe loading."""

import gc
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import (
    ROOT,
    TINY,
    blob_images,
    one_line_error,
    run_script,
    tiny_model,
    write_png_folder,
)
from diffusion_keras import DiffusionModel
from diffusion_keras.data.datasets import load_images
from diffusion_keras.models.saving import load_model
from diffusion_keras.training.preemption import interrupts_noted
from diffusion_keras.training.run import TrainConfig, train
from diffusion_keras.utils.errors import ModelFileError, TrainingError

TINY_FLAGS = [
    "--image-size", 16, "--widths", "8,16", "--block-depth", 1, "--embedding-dims", 8,
    "--batch-size", 8, "--dataset-repetitions", 1, "--plot-diffusion-steps", 2,
    "--plot-images", 2, "--verbose", 2,
]  # fmt: skip


# -- images users actually have ---------------------------------------------


def write_awkward_images(folder):
    """One of each image kind people have, plus broken files; returns the
    number of good images."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    rgba = np.concatenate([rgb, np.full((24, 40, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "deep.png")
    Image.fromarray(rgb).save(folder / "photo.jpg")
    Image.fromarray(rgb).resize((7, 300)).save(folder / "tall.bmp")
    good = 7
    (folder / "empty.png").write_bytes(b"")
    (folder / "fake.jpg").write_bytes(b"this is text, not a jpeg")
    whole = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "readme.txt").write_text("notes")
    return good


def test_awkward_images_are_converted_and_broken_ones_skipped(tmp_path):
    good = write_awkward_images(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable image files: .*empty.png"):
        data = load_images(str(tmp_path / "imgs"), image_size=16)
    assert data.images.shape == (good, 16, 16, 3)
    # 16-bit grayscale is scaled to 8 bits, not clipped to white.
    deep = data.images[sorted(os.listdir(tmp_path / "imgs")).index("deep.png") - 1]
    assert 20 < deep.mean() < 235


@pytest.mark.slow
def test_training_runs_on_awkward_images(tmp_path):
    write_awkward_images(tmp_path / "imgs")
    write_png_folder(str(tmp_path / "imgs" / "more"), count=10)
    result = run_script(
        "train.py",
        "--data",
        tmp_path / "imgs",
        "--epochs",
        1,
        "--output",
        tmp_path / "run",
        *TINY_FLAGS,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 3 unreadable image files" in result.stderr
    assert (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "no image files"),
        (lambda p: None, "does not exist"),
        (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"")), "none of the 1 image files"),
        (lambda p: write_png_folder(str(p), count=5), "fewer than one batch of 8"),
        (lambda p: p.write_text("a file"), "is not a folder"),
    ],
)
def test_unusable_data_fails_before_any_model_is_built(tmp_path, make, message):
    data = tmp_path / "data"
    make(data)
    run_dir = tmp_path / "run"
    line = one_line_error(run_script("train.py", "--data", data, "--output", run_dir, *TINY_FLAGS))
    assert message in line
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train.py", ["--batch-size", "0"], "--batch-size: expected a number >= 1"),
        ("train.py", ["--epochs", "-3"], "--epochs: expected a number >= 1"),
        ("train.py", ["--learning-rate", "nan"], "--learning-rate: expected a finite number"),
        ("train.py", ["--learning-rate", "0"], "--learning-rate: expected a positive number"),
        ("train.py", ["--weight-decay", "-1"], "--weight-decay: expected a number >= 0"),
        ("train.py", ["--ema", "1"], "--ema: expected a number in [0, 1)"),
        ("train.py", ["--adam-beta2", "1"], "--adam-beta2: expected a number in [0, 1)"),
        ("train.py", ["--image-size", "20", "--widths", "8,16,32,64"], "multiple of 8"),
        ("train.py", ["--embedding-dims", "7"], "even"),
        ("train.py", ["--loss", "huber"], "invalid choice: 'huber'"),
        ("train.py", ["--keep-checkpoints", "0"], "expected a number >= 1"),
        ("generate.py", ["m.keras", "--num-images", "0"], "--num-images: expected a number >= 1"),
        ("generate.py", ["m.keras", "--show-steps", "1,0"], "expected numbers >= 1"),
        ("generate.py", ["m.keras", "--seed", "x"], "--seed: invalid int value"),
    ],
)
def test_bad_numbers_are_refused_in_one_line(script, args, message):
    assert message in one_line_error(run_script(script, *args))


@pytest.mark.slow
def test_unwritable_output_is_reported_up_front(tmp_path, png_folder):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(
        run_script("train.py", "--data", png_folder, "--output", blocker / "run", *TINY_FLAGS)
    )
    assert "cannot write to the run directory" in line


def test_full_disk_is_reported_up_front(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    config = TrainConfig(data="builtin:flowers:16", output=str(tmp_path / "run"), **_tiny_config())
    with pytest.raises(TrainingError, match="only 0 MB free"):
        train(config, verbose=0)


def _tiny_config(**overrides):
    settings = dict(
        image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8, batch_size=8,
        dataset_repetitions=1, plot_images=2, plot_diffusion_steps=2, epochs=1,
    )  # fmt: skip
    settings.update(overrides)
    return settings


# -- loading ------------------------------------------------------------------


@pytest.mark.slow
def test_generate_refuses_other_packages_models(tmp_path):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "plain.keras"
    plain.save(path)
    assert "not a diffusion_keras DiffusionModel" in one_line_error(run_script("generate.py", path))


@pytest.mark.slow
def test_truncated_model_file_is_refused(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.keras"
    model.save(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a Keras model file|damaged"):
        load_model(str(cut))
    assert "cut.keras" in one_line_error(run_script("generate.py", cut))


def test_architecture_mismatch_is_reported(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.keras"
    model.save(path)
    # Same weights, but a config that claims other widths.
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"widths": [8, 16]', b'"widths": [8, 24]')
            target.writestr(item, data)
    with pytest.raises(ModelFileError, match="could not load"):
        load_model(str(other))


def test_loading_keeps_safe_mode_on(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        assert b"Lambda" not in archive.read("config.json")
    calls = []
    real = keras.models.load_model

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.models, "load_model", spy)
    load_model(str(path))
    assert calls and calls[0]["safe_mode"] is True


def test_unadapted_model_refuses_to_generate():
    model = DiffusionModel(**TINY, seed=0)
    with pytest.raises(ValueError, match="never adapted"):
        model.generate(2, 2)
    model.adapt(blob_images(4))
    assert model.generate(2, 2, seed=0).shape == (2, 16, 16, 3)


# -- failing safely -----------------------------------------------------------


class PoisonWeights(keras.callbacks.Callback):
    """Sets a network weight to NaN at the start of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            weight = self.model.network.trainable_weights[0]
            weight.assign(np.full(weight.shape, np.nan, np.float32))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(data="builtin:flowers:32", output=str(run_dir), **_tiny_config(epochs=3))
    with pytest.raises(TrainingError, match=r"loss became nan at batch 1.*untouched"):
        train(config, verbose=0, extra_callbacks=[PoisonWeights(epoch=1)])
    checkpoints = sorted(os.listdir(run_dir / "checkpoints"))
    assert checkpoints == ["epoch_001.keras"]
    assert not (run_dir / "model.keras").exists()
    good = load_model(str(run_dir / "checkpoints" / "epoch_001.keras"))
    assert all(np.isfinite(w).all() for w in good.network.get_weights())


class CtrlCInsideALibrary(keras.callbacks.Callback):
    """Ctrl-C at batch 2, landing in library code that turns it into another
    error (as TensorFlow can while it traces a function)."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                raise TypeError("Expected int32, but got None of type 'NoneType'.") from None


def test_ctrl_c_that_a_library_turns_into_another_error_still_saves_the_weights(tmp_path):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this test process handles SIGINT itself")
    run_dir = tmp_path / "run"
    config = TrainConfig(data="builtin:flowers:32", output=str(run_dir), **_tiny_config())
    with pytest.raises(KeyboardInterrupt) as raised:
        train(config, verbose=0, extra_callbacks=[CtrlCInsideALibrary()])
    assert isinstance(raised.value.__cause__, TypeError)
    assert load_model(str(run_dir / "interrupted.keras")).generate(1, 2, seed=0).shape[0] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class CtrlCWherePythonIgnoresIt(keras.callbacks.Callback):
    """Ctrl-C at batch 2 that lands in a garbage-collector callback, where
    Python prints and ignores any exception (seen in CI inside JAX's
    `_xla_gc_callback`)."""

    def on_train_batch_end(self, batch, logs=None):
        if batch != 1:
            return
        fired = []

        def during_gc(phase, info):
            if phase == "start" and not fired:
                fired.append(True)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2)  # the handler runs here, inside the callback

        gc.callbacks.append(during_gc)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(during_gc)
        assert fired


def test_ctrl_c_that_python_ignores_still_stops_the_run_and_saves_the_weights(
    tmp_path, monkeypatch
):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this test process handles SIGINT itself")
    printed = []  # what Python would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    run_dir = tmp_path / "run"
    config = TrainConfig(data="builtin:flowers:32", output=str(run_dir), **_tiny_config())
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=0, extra_callbacks=[CtrlCWherePythonIgnoresIt()])
    assert load_model(str(run_dir / "interrupted.keras")).generate(1, 2, seed=0).shape[0] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert printed == []  # the noted Ctrl-C is not printed as an ignored exception
    assert sys.unraisablehook == printed.append


class RaisesWhenCollected:
    def __init__(self, error):
        self.error = error

    def __del__(self):
        raise self.error


def test_only_a_noted_ctrl_c_is_kept_from_the_ignored_exceptions_printout(monkeypatch):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this test process handles SIGINT itself")
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_type))
    with interrupts_noted() as noted:
        RaisesWhenCollected(KeyboardInterrupt())  # no Ctrl-C noted yet: printed
        RaisesWhenCollected(ValueError("a bug"))  # not a Ctrl-C: printed
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert noted == [signal.SIGINT]
        RaisesWhenCollected(KeyboardInterrupt())  # the noted Ctrl-C: not printed
        RaisesWhenCollected(ValueError("a bug"))  # still printed
    RaisesWhenCollected(KeyboardInterrupt())  # outside the block: printed
    assert printed == [KeyboardInterrupt, ValueError, ValueError, KeyboardInterrupt]


def test_other_errors_are_not_taken_for_ctrl_c(tmp_path):
    class Broken(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise TypeError("a bug")

    run_dir = tmp_path / "run"
    config = TrainConfig(data="builtin:flowers:32", output=str(run_dir), **_tiny_config())
    with pytest.raises(TypeError, match="a bug"):
        train(config, verbose=0, extra_callbacks=[Broken()])
    assert not (run_dir / "interrupted.keras").exists()


@pytest.mark.slow
def test_ctrl_c_saves_the_current_weights(tmp_path, png_folder):
    run_dir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    flags = ["--data", png_folder, "--epochs", 50, "--output", run_dir, *TINY_FLAGS]
    # A background job of a non-interactive shell (CI started with `&`) ignores
    # SIGINT, and a child inherits that: give train.py the default, as a terminal would.
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *map(str, flags)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "epoch_001.keras").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err.strip().splitlines()[-1]
    assert load_model(str(run_dir / "interrupted.keras")).generate(1, 2, seed=0).shape[0] == 1


def test_free_memory_is_released_on_glibc_and_skipped_elsewhere(monkeypatch):
    import platform

    from diffusion_keras.training import callbacks

    if platform.libc_ver()[0] == "glibc":
        assert callbacks.release_free_memory() is True
    monkeypatch.setattr(callbacks.ctypes.util, "find_library", lambda name: "/nonexistent/libc.so")
    assert callbacks.release_free_memory() is False
