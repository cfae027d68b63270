"""A run is never lost or silently corrupted: an existing run is not overwritten
unasked, one process writes a run, a failed checkpoint write keeps the previous
one, and logs in files are plain lines."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_script
from diffusion_keras.config.run import TrainConfig
from diffusion_keras.models.saving import load_model
from diffusion_keras.training import run_files
from diffusion_keras.training.checkpoints import list_checkpoints
from diffusion_keras.training.run import train
from diffusion_keras.utils.errors import TrainingError

TINY = dict(image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8, batch_size=8,
            dataset_repetitions=1, plot_images=2, plot_diffusion_steps=2, seed=3, epochs=1,
            data="builtin:flowers:16")  # fmt: skip
TINY_FLAGS = ["--image-size", 16, "--widths", "8,16", "--block-depth", 1, "--embedding-dims", 8,
              "--batch-size", 8, "--dataset-repetitions", 1, "--plot-diffusion-steps", 2,
              "--plot-images", 2, "--data", "builtin:flowers:16"]  # fmt: skip


def checksums(folder):
    """`{relative path: sha256}` of every file below `folder`."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train(TrainConfig(output=str(run_dir), **TINY), verbose=0)
    return run_dir


def test_the_library_refuses_to_train_into_an_existing_run(finished_run):
    before = checksums(finished_run)
    with pytest.raises(TrainingError, match="already holds a run .*--resume.*--overwrite"):
        train(TrainConfig(output=str(finished_run), **TINY), verbose=0)
    assert checksums(finished_run) == before


def test_overwrite_moves_the_old_run_aside_and_never_deletes_it(finished_run, tmp_path):
    copy = tmp_path / "run"
    os.rename(finished_run, copy)
    try:
        before = checksums(copy)
        train(TrainConfig(output=str(copy), **TINY), verbose=0, overwrite=True)
        moved = [p for p in os.listdir(tmp_path) if p.startswith("run.old-")]
        assert len(moved) == 1 and checksums(tmp_path / moved[0]) == before
        assert (copy / "model.keras").exists()
    finally:
        os.rename(tmp_path / moved[0], finished_run)


def test_a_folder_without_trained_weights_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.json").write_text("{}")
    for folder in ["empty", "started", "missing"]:
        assert run_files.existing_run(str(tmp_path / folder)) is None


@pytest.mark.slow
def test_train_py_into_a_finished_run_stops_before_any_work_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    assert run_script("train.py", "--output", run_dir, "--epochs", 1, "--verbose", 0,
                      *TINY_FLAGS).returncode == 0  # fmt: skip
    before = checksums(run_dir)
    start = time.monotonic()
    result = run_script("train.py", "--output", run_dir, "--epochs", 1, *TINY_FLAGS)
    line = one_line_error(result)
    assert time.monotonic() - start < 10
    for words in [str(run_dir), "epoch_001.keras", "--resume", "--overwrite"]:
        assert words in line, line
    assert checksums(run_dir) == before


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run_dir = str(tmp_path / "run")
    with run_files.RunLock(run_dir):
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from diffusion_keras.training.run_files "
             "import RunLock; RunLock(sys.argv[1]).__enter__()", run_dir],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert other.returncode != 0
        assert f"being written by another run (process {os.getpid()}" in other.stderr
    assert not os.path.exists(os.path.join(run_dir, run_files.LOCK_NAME))
    # A lock whose process is gone (as after SIGKILL) is taken over, with a warning.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(run_dir, run_files.LOCK_NAME), "w") as handle:
        handle.write(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "started": 0}}')
    with pytest.warns(UserWarning, match="stale lock"):
        with run_files.RunLock(run_dir):
            pass


@pytest.mark.slow
def test_two_train_py_on_one_folder_the_second_exits_within_10_s(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), "--output", str(run_dir), "--epochs",
         "50", "--verbose", "0", *map(str, TINY_FLAGS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run_dir / "checkpoints"):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        start = time.monotonic()
        second = run_script("train.py", "--output", run_dir, "--resume")
        line = one_line_error(second)
        assert time.monotonic() - start < 10
        assert f"process {first.pid}" in line, line
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        resumed = run_script("train.py", "--output", run_dir, "--resume", "--epochs", 2,
                             "--verbose", 0)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "stale lock" in resumed.stderr
    finally:
        if first.poll() is None:
            first.kill()


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_stops_in_one_line(
    tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    config = TrainConfig(output=str(run_dir), **{**TINY, "epochs": 2})
    saves = []
    real_save = keras.Model.save

    def fails_half_way(model, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 1:
            return real_save(model, path, *args, **kwargs)
        with open(path, "wb") as handle:  # half a file, then the disk is full
            handle.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", fails_half_way)
    with pytest.raises(TrainingError) as raised:
        train(config, verbose=0)
    message = str(raised.value)
    assert "No space left on device" in message and "epoch_001.keras is intact" in message
    assert "\n" not in message
    monkeypatch.setattr(keras.Model, "save", real_save)
    [(position, path)] = list_checkpoints(run_dir / "checkpoints")
    assert position == (1, 0) and load_model(path).train_steps.numpy() == 2
    assert not [p for p in os.listdir(run_dir / "checkpoints") if p.startswith(".tmp")]
    assert not os.path.exists(run_dir / run_files.LOCK_NAME)


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    train(TrainConfig(output=str(run_dir), **{**TINY, "epochs": 2}), verbose=0)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    newest = checkpoints[-1][1]
    with open(newest, "r+b") as handle:
        handle.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(UserWarning, match=f"skipping checkpoint.*{os.path.basename(newest)}"):
        model = train(TrainConfig(output=str(run_dir), **{**TINY, "epochs": 3}), resume=True,
                      verbose=0)  # fmt: skip
    assert int(model.train_steps.numpy()) == 3 * 2


@pytest.mark.slow
def test_logs_in_a_file_are_one_plain_line_per_epoch(tmp_path):
    log = tmp_path / "log.txt"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for epochs in (1, 3):
        with open(log, "w") as handle:
            result = subprocess.run(
                [sys.executable, os.path.join(ROOT, "train.py"), "--output",
                 str(tmp_path / f"run{epochs}"), "--epochs", str(epochs), *map(str, TINY_FLAGS)],
                stdout=handle, stderr=subprocess.PIPE, text=True, env=env, timeout=600,
            )  # fmt: skip
        assert result.returncode == 0, result.stderr
        text = log.read_text()
        assert "\x1b" not in text and "\r" not in text
        lines = [line for line in text.splitlines() if line.startswith("epoch ")]
        assert [line.split(" step")[0] for line in lines] == [
            f"epoch {e}/{epochs}" for e in range(1, epochs + 1)
        ], text
        assert all("images/s" in line and "ETA" in line and "n_loss" in line for line in lines)
        assert len(text.splitlines()) <= epochs + 3, text
    with open(log, "w") as handle:
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "generate.py"),
             str(tmp_path / "run3" / "model.keras"), "--num-images", "4", "--steps", "20",
             "--output", str(tmp_path / "g.png")],
            stdout=handle, stderr=subprocess.PIPE, text=True, env=env, timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "\x1b" not in text and len(text) < 1000, text


def test_line_log_prints_inside_long_epochs_only():
    from diffusion_keras.training.callbacks import LineLog

    class Model:
        train_steps = keras.Variable(0, dtype="int64", trainable=False)

    stream = io.StringIO()
    log = LineLog(epochs=2, steps_per_epoch=250, batch_size=4, every=100, stream=stream,
                  clock=iter(np.arange(0, 10000, 0.5)).__next__)  # fmt: skip
    log.set_model(Model())
    log.on_train_begin()
    for epoch in range(2):
        log.on_epoch_begin(epoch)
        for batch in range(250):
            Model.train_steps.assign_add(1)
            log.on_train_batch_end(batch, {"n_loss": 0.5})
        log.on_epoch_end(epoch, {"n_loss": 0.25})
    printed = stream.getvalue().splitlines()
    assert [p.split(":")[0] for p in printed] == [
        "epoch 1/2 step 100/250", "epoch 1/2 step 200/250", "epoch 1/2 step 250/250",
        "epoch 2/2 step 100/250", "epoch 2/2 step 200/250", "epoch 2/2 step 250/250",
    ]  # fmt: skip
    assert printed[-1].endswith("ETA 0s") and "n_loss 0.2500" in printed[-1]
