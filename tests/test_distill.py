"""Progressive distillation: students that take one step where their teacher
takes two, as normal model files, with the run folder's guarantees."""

import os
import signal

import keras
import numpy as np
import pytest

from conftest import TINY, one_line_error, run_script
from diffusion_keras.config.distill import DistillConfig
from diffusion_keras.diffusion.schedules import get_schedule
from diffusion_keras.models.distillation import student_of, student_times, two_step_target
from diffusion_keras.models.saving import load_model
from diffusion_keras.training.distill import distill, round_steps
from diffusion_keras.training.run import TrainConfig, train
from diffusion_keras.utils.errors import Preempted

ROUND = dict(round_epochs=1, dataset_repetitions=1, batch_size=16, plot_images=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher trained for 2 epochs of 20 steps, with its run folder."""
    run_dir = tmp_path_factory.mktemp("teacher")
    config = TrainConfig(
        data="builtin:flowers:32", output=str(run_dir), batch_size=16, dataset_repetitions=10,
        epochs=2, plot_images=2, plot_diffusion_steps=2, **TINY,
    )  # fmt: skip
    train(config, verbose=0)
    return str(run_dir / "model.keras")


# -- the target ---------------------------------------------------------------


def test_one_ddim_step_to_the_target_lands_where_the_teachers_two_steps_do():
    schedule = get_schedule("offset_cosine", 0.02, 0.95)
    rng = np.random.default_rng(0)
    steps = 4
    for index in range(steps - 1):  # the last step returns its estimate instead
        times, mid_times, next_times = student_times(np.float32(index), steps)
        (noise, signal), (mid_noise, mid_signal), (next_noise, next_signal) = (
            [float(keras.ops.convert_to_numpy(r)) for r in schedule(np.float32(t))]
            for t in (times, mid_times, next_times)
        )
        noisy = rng.normal(size=(2, 4, 4, 3))
        # Any teacher: two DDIM steps with arbitrary estimates.
        first, second = rng.normal(size=(2, 2, 4, 4, 3))
        mid = mid_signal * first + mid_noise * (noisy - signal * first) / noise
        landing = next_signal * second + next_noise * (mid - mid_signal * second) / mid_noise
        target = two_step_target(noisy, landing, signal, noise, next_signal, next_noise)
        one_step = next_signal * target + next_noise * (noisy - signal * target) / noise
        np.testing.assert_allclose(one_step, landing, atol=1e-9)


def test_rounds_halve_the_steps_down_to_the_students():
    assert round_steps(64, 1) == [32, 16, 8, 4, 2, 1]
    assert round_steps(8, 2) == [4, 2]
    for bad in ((64, 3), (6, 1), (2, 2), (4, 8)):
        with pytest.raises(ValueError, match="halves the steps"):
            round_steps(*bad)


# -- the student --------------------------------------------------------------


def test_a_student_starts_as_its_teacher_and_knows_its_sampling(teacher):
    model = load_model(teacher)
    student = student_of(model, 2, prediction="noise")
    assert student.student_steps == 2 and model.student_steps == 0
    for ours, theirs in zip(student.network.get_weights(), model.ema_network.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert student.sampling_defaults() == dict(
        sampler="ddim", diffusion_steps=2, spacing="uniform", eta=0.0
    )
    assert model.sampling_defaults()["diffusion_steps"] == 20  # the book's, as before
    # The same prediction and weights: the same images as the teacher's 2 DDIM steps.
    np.testing.assert_allclose(
        student.generate(3, seed=1), model.generate(3, diffusion_steps=2, seed=1), atol=1e-6
    )


@pytest.mark.slow
def test_distillation_brings_the_student_to_its_teachers_two_steps(teacher, tmp_path):
    model = load_model(teacher)
    noise = model.make_noise(32, seed=5)
    wanted = model.generate(initial_noise=noise, diffusion_steps=4)
    rounds = {**ROUND, "round_epochs": 8, "dataset_repetitions": 4}
    config = DistillConfig(teacher=teacher, steps=2, from_steps=4, prediction="noise",
                           output=str(tmp_path), learning_rate=1e-3, ema=0.5,
                           **rounds)  # fmt: skip
    before = student_of(model, 2)
    after = distill(config, verbose=0)

    def error(student):
        return np.abs(student.generate(initial_noise=noise) - wanted).mean()

    # Measured 0.030 -> 0.014.
    print(f"2-step student against the teacher's 4 steps: {error(before):.3f} -> "
          f"{error(after):.3f}")  # fmt: skip
    assert error(after) < 0.7 * error(before)


# -- the command and the run folder ---------------------------------------------


@pytest.mark.slow
def test_distill_py_writes_a_student_that_generate_py_samples_in_its_steps(teacher, tmp_path):
    output = tmp_path / "student"
    flags = ["--steps", 1, "--from-steps", 4, "--output", output, "--round-epochs", 1,
             "--dataset-repetitions", 1, "--batch-size", 16, "--plot-images", 2]  # fmt: skip
    result = run_script("distill.py", teacher, *flags)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(output / "rounds")) == ["steps_001", "steps_002"]
    with open(output / "rounds.csv") as handle:
        rows = handle.read().splitlines()
    assert rows[0].startswith("steps,teacher_steps,training_steps,cpu_seconds")
    assert [row.split(",")[0] for row in rows[1:]] == ["2", "1"]
    student = load_model(str(output / "model.keras"))
    assert student.student_steps == 1 and student.prediction == "velocity"

    grid = tmp_path / "grid.png"
    result = run_script("generate.py", output / "model.keras", "--num-images", 2, "--seed", 3,
                        "--output", grid, "--output-dir", tmp_path / "pngs")  # fmt: skip
    assert result.returncode == 0, result.stderr
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "pngs" / "image_0000.png"), np.float32) / 255
    expected = student.generate(2, seed=3, diffusion_steps=1, sampler="ddim")[0]
    assert np.abs(written - expected).max() <= 1 / 255 + 1e-6

    # A second distillation into the same folder is refused in one line.
    line = one_line_error(run_script("distill.py", teacher, *flags))
    assert "already holds a distillation" in line and "--resume" in line
    result = run_script("distill.py", teacher, *flags, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert any(name.startswith("student.old-") for name in os.listdir(tmp_path))


def test_distill_py_refuses_bad_input_in_one_line(teacher, tmp_path):
    line = one_line_error(run_script("distill.py", tmp_path / "none.keras"))
    assert "does not exist" in line
    line = one_line_error(
        run_script("distill.py", teacher, "--steps", 3, "--output", tmp_path / "x")
    )
    assert "halves the steps" in line
    lonely = tmp_path / "lonely.keras"
    lonely.write_bytes(open(teacher, "rb").read())
    line = one_line_error(run_script("distill.py", lonely, "--output", tmp_path / "y"))
    assert "--data" in line


class StopAfter(keras.callbacks.Callback):
    """SIGTERM after the process's `count`-th training step."""

    def __init__(self, count):
        super().__init__()
        self.count, self.seen = count, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.count:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_stopped_distillation_resumes_to_the_same_student(teacher, tmp_path):
    def config(name):
        rounds = {**ROUND, "dataset_repetitions": 3}
        return DistillConfig(teacher=teacher, steps=1, from_steps=4, output=str(tmp_path / name),
                             checkpoint_every="1", **rounds)  # fmt: skip


    straight = distill(config("straight"), verbose=0)
    # Rounds of 6 steps; SIGTERM in the second round's second step, which
    # stops after its third.
    with pytest.raises(Preempted, match="--resume continues"):
        distill(config("stopped"), verbose=0, extra_callbacks=[StopAfter(8)])
    assert not (tmp_path / "stopped" / "model.keras").exists()
    resumed = distill(config("stopped"), resume=True, verbose=0)
    for ours, theirs in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
