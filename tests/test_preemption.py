"""Preemption-safe training: SIGTERM saves the position and exits 143,
checkpoints inside epochs, and `--resume` from any of them repeats every step
of an uninterrupted run."""

import csv
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT, run_script, write_png_folder
from diffusion_keras.training.checkpoints import (
    Checkpointer,
    checkpoint_path,
    list_checkpoints,
    parse_checkpoint_every,
)
from diffusion_keras.training.preemption import EXIT_PREEMPTED, stop_signal
from diffusion_keras.training.run import TrainConfig, fit_phases, train
from diffusion_keras.utils.errors import Preempted

# Each of these starts training processes: the slow tier (`-m slow`).
pytestmark = pytest.mark.slow

TINY = dict(
    image_size=16,
    widths=(8, 16),
    block_depth=1,
    embedding_dims=8,
    batch_size=8,
    dataset_repetitions=2,
    plot_images=2,
    plot_diffusion_steps=2,
    seed=3,
    epochs=2,
)  # fmt: skip  (32 images, 8 steps an epoch)
TINY_FLAGS = [
    "--image-size", 16, "--widths", "8,16", "--block-depth", 1, "--embedding-dims", 8,
    "--batch-size", 8, "--dataset-repetitions", 2, "--plot-diffusion-steps", 2,
    "--plot-images", 2, "--verbose", 0, "--seed", 3,
]  # fmt: skip


def step_losses(run_dir):
    """`{step: loss}` from `steps.csv`; a resumed run appends, and the last
    row for each step is the one that counts."""
    with open(os.path.join(run_dir, "steps.csv")) as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def epoch_losses(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as handle:
        return {int(row["epoch"]): float(row["n_loss"]) for row in csv.DictReader(handle)}


def csv_rows(path):
    with open(path) as handle:
        return list(csv.reader(handle))


def scalar_points(run_dir):
    """`[(tag, step)]` of every scalar in a run's TensorBoard event files."""
    import glob

    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    points = []
    for path in glob.glob(os.path.join(run_dir, "logs", "**", "events.out.tfevents.*"),
                          recursive=True):  # fmt: skip
        folder = os.path.basename(os.path.dirname(path))
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            points += [(folder, value.tag, event.step) for value in event.summary.value]
    return sorted(points)


def same_logs(straight, run_dir, killed=False):
    """A stopped and resumed run logs what an uninterrupted one does: each epoch
    once in `history.csv`, each step once in `steps.csv`, each scalar once (a
    killed process may not have flushed its last TensorBoard points)."""
    assert csv_rows(run_dir / "history.csv") == csv_rows(straight / "history.csv")
    assert csv_rows(run_dir / "steps.csv") == csv_rows(straight / "steps.csv")
    points, expected = scalar_points(run_dir), scalar_points(straight)
    assert len(points) == len(set(points))
    assert set(points) <= set(expected) if killed else points == expected


def largest_difference(expected, got):
    assert sorted(got) == sorted(expected)
    return max(abs(expected[k] - got[k]) for k in expected)


class AfterSteps(keras.callbacks.Callback):
    """Calls `action` once, after the process's `count`-th training step."""

    def __init__(self, count, action):
        super().__init__()
        self.count = count
        self.action = action
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.count:
            self.action()


def sigterm_after(count):
    return AfterSteps(count, lambda: os.kill(os.getpid(), signal.SIGTERM))


def crash_after(count):
    """A crash that saves nothing, as a power cut would."""

    def crash():
        raise RuntimeError("power cut")

    return AfterSteps(count, crash)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of 2 epochs of 8 steps, in this process."""
    run_dir = tmp_path_factory.mktemp("straight")
    model = train(TrainConfig(data="builtin:flowers:32", output=str(run_dir), **TINY), verbose=0)
    return run_dir, model


def test_sigterm_stops_after_the_step_and_resume_repeats_every_step(tmp_path, straight):
    config = TrainConfig(data="builtin:flowers:32", output=str(tmp_path), **TINY)
    # Stopped inside the first epoch, then inside the second, then finished.
    with pytest.raises(Preempted, match=r"after step 4 of epoch 1; saved .*epoch_000_step_00004"):
        train(config, verbose=0, extra_callbacks=[sigterm_after(3)])
    with pytest.raises(Preempted, match=r"after step 3 of epoch 2; saved .*epoch_001_step_00003"):
        train(config, resume=True, verbose=0, extra_callbacks=[sigterm_after(6)])
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["epoch_001.keras", "epoch_001_step_00003.json", "epoch_001_step_00003.keras"]
    assert not (tmp_path / "model.keras").exists()
    model = train(config, resume=True, verbose=0)

    straight_dir, straight_model = straight
    difference = largest_difference(step_losses(straight_dir), step_losses(tmp_path))
    print(f"per-step loss difference after two SIGTERMs and resumes: {difference:.1e}")
    assert difference == 0.0
    # The history rows of the cut epochs are the uninterrupted ones too.
    assert epoch_losses(tmp_path) == epoch_losses(straight_dir)
    for ours, theirs in zip(model.get_weights(), straight_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    # No sample grid for an epoch cut short: each grid is a whole epoch's.
    assert sorted(os.listdir(tmp_path / "samples")) == ["epoch_001.png", "epoch_002.png"]


def test_a_crash_loses_at_most_checkpoint_every_steps(tmp_path, straight):
    config = TrainConfig(
        data="builtin:flowers:32", output=str(tmp_path), checkpoint_every="3", **TINY
    )
    with pytest.raises(RuntimeError, match="power cut"):
        train(config, verbose=0, extra_callbacks=[crash_after(13)])
    (position, _), *_ = reversed(list_checkpoints(tmp_path / "checkpoints"))
    assert position == (1, 4)  # step 12 of 16: the crash after step 13 lost 1 step
    train(config, resume=True, verbose=0)
    assert largest_difference(step_losses(straight[0]), step_losses(tmp_path)) == 0.0
    # Mid-epoch checkpoints older than the newest checkpoint are gone.
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["epoch_001.keras", "epoch_002.keras"]


def test_sigterm_before_the_first_step_saves_nothing(tmp_path):
    config = TrainConfig(data="builtin:flowers:32", output=str(tmp_path), **TINY)
    with stop_signal().handled() as stop:
        stop.request()
        with pytest.raises(Preempted, match="before the first training step; nothing to save"):
            train(config, verbose=0)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_sigterm_during_the_last_step_finishes_the_run(tmp_path, straight):
    config = TrainConfig(data="builtin:flowers:32", output=str(tmp_path), **TINY)
    # Sent after step 15, read at the end of step 16 of 16: nothing is left to save for.
    model = train(config, verbose=0, extra_callbacks=[sigterm_after(15)])
    assert (tmp_path / "model.keras").exists()
    for ours, theirs in zip(model.get_weights(), straight[1].get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_a_library_call_restores_the_sigterm_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    config = TrainConfig(data="builtin:flowers:32", output=str(tmp_path), **dict(TINY, epochs=1))
    train(config, verbose=0)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not stop_signal().requested


@pytest.mark.parametrize(
    "text, expected",
    [("500", ("steps", 500)), ("10m", ("minutes", 10.0)), ("0.5M", ("minutes", 0.5)),
     ("0", None)],
)  # fmt: skip
def test_checkpoint_every_reads_steps_or_minutes(text, expected):
    assert parse_checkpoint_every(text) == expected


@pytest.mark.parametrize("text", ["-1", "m", "0m", "ten", "1.5", "infm"])
def test_checkpoint_every_refuses_other_values(text):
    with pytest.raises(ValueError, match="steps .500., of minutes .10m. or 0"):
        parse_checkpoint_every(text)


def test_checkpoints_every_few_minutes_follow_the_clock(tmp_path):
    now = [0.0]
    checkpointer = Checkpointer(
        str(tmp_path), steps_per_epoch=100, every="2m", clock=lambda: now[0]
    )
    saved = []

    def save(epoch, step):  # what `_save` records, without a model to save
        saved.append((epoch, step))
        checkpointer._last_save = now[0]

    checkpointer._save = save
    checkpointer.on_epoch_begin(0)
    for minute in [0.5, 1.0, 2.1, 2.5, 4.0, 4.2]:  # the clock after steps 1..6
        now[0] = minute * 60
        checkpointer.on_train_batch_end(0)
    assert saved == [(0, 3), (0, 6)]


def test_fit_phases_split_a_resumed_epoch():
    assert fit_phases(0, 0, 3) == [(0, 3, 0)]
    assert fit_phases(1, 5, 3) == [(1, 2, 5), (2, 3, 0)]
    assert fit_phases(2, 5, 3) == [(2, 3, 5)]
    assert fit_phases(3, 0, 3) == []


def test_checkpoint_names_carry_the_position(tmp_path):
    assert checkpoint_path("d", 3).endswith("epoch_003.keras")
    assert checkpoint_path("d", 3, 40).endswith("epoch_003_step_00040.keras")
    for name in ["epoch_002.keras", "epoch_003_step_00040.keras", "epoch_003.keras", "x.keras"]:
        (tmp_path / name).write_bytes(b"")
    assert [p for p, _ in list_checkpoints(tmp_path)] == [(2, 0), (3, 0), (3, 40)]


# -- whole processes -----------------------------------------------------------


def start_training(output, *flags, resume=False):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    extra = ["--resume"] if resume else []
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), "--output", str(output), *extra,
         *map(str, flags)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def process_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    data = str(root / "data")
    write_png_folder(data, count=32)
    flags = ["--data", data, "--epochs", 6, *TINY_FLAGS]
    straight = root / "straight"
    result = run_script("train.py", "--output", straight, *flags)
    assert result.returncode == 0, result.stderr
    return root, flags, straight


def test_sigterm_at_five_random_moments_exits_143_and_resumes_exactly(process_runs):
    """SIGTERM at random moments of a run: twice while TensorFlow loads or the
    model is built, three times during training. Each time the process exits
    with 143 and one line, within one step and one checkpoint write of the
    signal, and the resumed run's per-step losses are the uninterrupted run's."""
    root, flags, straight = process_runs
    run_dir = root / "sigterm"
    rng = np.random.default_rng(0)
    delays, stopped_at = [], []
    for round, fraction in enumerate(rng.uniform(size=5)):
        logged = len(step_losses(run_dir)) if (run_dir / "steps.csv").exists() else 0
        resume = bool(list_checkpoints(run_dir / "checkpoints"))
        process = start_training(run_dir, *flags, resume=resume)
        if round < 2:
            time.sleep(4.0 * fraction)
        else:  # after this process's first step, by up to 0.3 s
            while not (run_dir / "steps.csv").exists() or len(step_losses(run_dir)) <= logged:
                assert process.poll() is None, process.communicate()
                time.sleep(0.01)
            time.sleep(0.3 * fraction)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
        delays.append(time.monotonic() - sent)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert process.returncode == EXIT_PREEMPTED, err
        assert len(lines) == 1 and lines[0].startswith("train.py: stopped by SIGTERM"), err
        stopped_at.append(lines[0].split("SIGTERM ")[1].split(";")[0])
    print(f"stopped {stopped_at}; exits {', '.join(f'{d:.1f}' for d in delays)} s after SIGTERM")
    assert sum(where.startswith("after step") for where in stopped_at) >= 3
    # The slowest exit is at the first step, which traces the step function.
    assert max(delays) < 30
    result = run_script("train.py", "--output", run_dir, "--resume", *flags)
    assert result.returncode == 0, result.stderr
    difference = largest_difference(step_losses(straight), step_losses(run_dir))
    print(f"per-step loss difference after {len(stopped_at)} SIGTERMs: {difference:.1e}")
    assert difference == 0.0
    same_logs(straight, run_dir)


def test_sigkill_loses_at_most_checkpoint_every_steps(process_runs):
    root, flags, straight = process_runs
    run_dir = root / "sigkill"
    process = start_training(run_dir, *flags, "--checkpoint-every", 3)
    deadline = time.monotonic() + 300
    while not any(step for (_, step), _ in list_checkpoints(run_dir / "checkpoints")):
        assert process.poll() is None and time.monotonic() < deadline, "no mid-epoch checkpoint"
        time.sleep(0.02)
    time.sleep(np.random.default_rng(1).uniform(0.0, 0.5))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    (epoch, step), _ = list_checkpoints(run_dir / "checkpoints")[-1]
    lost = max(step_losses(run_dir)) - (epoch * 8 + step)
    print(f"SIGKILL after step {max(step_losses(run_dir))}; newest checkpoint at step "
          f"{epoch * 8 + step}: {lost} steps lost")  # fmt: skip
    assert 0 <= lost <= 3
    result = run_script("train.py", "--output", run_dir, "--resume")
    assert result.returncode == 0, result.stderr
    assert largest_difference(step_losses(straight), step_losses(run_dir)) == 0.0
    same_logs(straight, run_dir, killed=True)
