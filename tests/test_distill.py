"""Progressive distillation: students that take one step where their teacher
takes two, as normal model files, with the run folder's guarantees."""

import os
import signal
import types

import keras
import numpy as np
import pytest

from conftest import TINY, one_line_error, run_script
from diffusion_keras.config.distill import STUDENT_SPACING, DistillConfig
from diffusion_keras.config.sampling import STUDENT_ETA
from diffusion_keras.data.datasets import ImageData, load_images, random_subset
from diffusion_keras.diffusion.schedules import get_schedule
from diffusion_keras.models.distillation import (
    attach_teacher,
    student_of,
    student_times,
    two_step_target,
)
from diffusion_keras.models.saving import load_model
from diffusion_keras.sampling.rules import sampling_times
from diffusion_keras.training.distill import (
    claim_distill_directory,
    distill,
    resolve_config,
    round_learning_rate,
    round_plan,
    round_steps,
)
from diffusion_keras.training.run import TrainConfig, train
from diffusion_keras.utils.errors import Preempted, TrainingError

ROUND = dict(round_epochs=1, dataset_repetitions=1, batch_size=16, plot_images=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher trained for 2 epochs of 20 steps, with its run folder."""
    run_dir = tmp_path_factory.mktemp("teacher")
    config = TrainConfig(
        data="builtin:flowers:32", output=str(run_dir), batch_size=16, dataset_repetitions=10,
        epochs=2, plot_images=2, plot_diffusion_steps=2, learning_rate=1e-3, **TINY,
    )  # fmt: skip  (the teacher the thresholds below were measured with)
    train(config, verbose=0)
    return str(run_dir / "model.keras")


# -- the target ---------------------------------------------------------------


@pytest.mark.parametrize("substeps", [2, 5])
def test_one_ddim_step_to_the_target_lands_where_the_teachers_steps_do(substeps):
    schedule = get_schedule("offset_cosine", 0.02, 0.95)
    rng = np.random.default_rng(0)
    steps = 4

    def rates(t):
        return [float(keras.ops.convert_to_numpy(r)) for r in schedule(np.float32(t))]

    for index in range(steps - 1):  # the last step returns its estimate instead
        times, sub_times, next_times = student_times(np.float32(index), steps, substeps)
        # The teacher's steps cut the student's into equal parts.
        grid = np.array([times, *sub_times, next_times])
        np.testing.assert_allclose(np.diff(grid), -1 / (steps * substeps), atol=1e-6)
        noisy = rng.normal(size=(2, 4, 4, 3))
        # Any teacher: DDIM steps with arbitrary estimates.
        current = noisy
        for t, next_t in zip(grid[:-1], grid[1:]):
            (noise, signal), (next_noise, next_signal) = rates(t), rates(next_t)
            estimate = rng.normal(size=(2, 4, 4, 3))
            current = next_signal * estimate + next_noise * (current - signal * estimate) / noise
        (noise, signal), (next_noise, next_signal) = rates(times), rates(next_times)
        target = two_step_target(noisy, current, signal, noise, next_signal, next_noise)
        one_step = next_signal * target + next_noise * (noisy - signal * target) / noise
        np.testing.assert_allclose(one_step, current, atol=1e-9)


@pytest.mark.parametrize("substeps,spacing", [(2, "uniform"), (4, "uniform"),
                                              (4, "log_snr_span")])  # fmt: skip
def test_a_one_step_students_target_is_its_teachers_ddim_in_substeps(teacher, substeps, spacing):
    model = load_model(teacher, precision="float32")  # bfloat16 rounds the two paths apart
    student = attach_teacher(student_of(model, 1, spacing=spacing), model, substeps)
    images = np.random.default_rng(1).uniform(size=(4, *model.sample_shape)).astype("float32")
    _, (targets, _, noisy_images, *_) = student.steps._forward(images)
    wanted = model.generate(initial_noise=noisy_images, diffusion_steps=substeps, sampler="ddim",
                            spacing=spacing, eta=0.0)  # fmt: skip
    got = keras.ops.convert_to_numpy(student.denormalize(targets))
    np.testing.assert_allclose(got, wanted, atol=2e-4)
    with pytest.raises(ValueError, match="at least 2 steps"):
        attach_teacher(student_of(model, 1), model, 1)


def test_log_snr_span_steps_halve_onto_their_teachers_and_fall_where_the_image_is_noise():
    schedule = get_schedule("offset_cosine", 0.02, 0.95)
    times = {n: sampling_times(schedule, n, "log_snr_span") for n in (1, 2, 4, 8, 16)}
    # From pure noise to the end of the schedule, whatever the steps.
    for n, grid in times.items():
        assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == n + 1
        # Each student's steps are every other step of its teacher's.
        if n > 1:
            np.testing.assert_allclose(times[n // 2], grid[::2], atol=1e-6)
    # Equal steps in log-SNR, so most of them where the image is mostly noise.
    noise_rates, signal_rates = (keras.ops.convert_to_numpy(r) for r in schedule(times[8]))
    lambdas = np.log(signal_rates / noise_rates)
    np.testing.assert_allclose(np.diff(lambdas), (lambdas[-1] - lambdas[0]) / 8, atol=1e-4)
    assert (times[8] > 0.5).sum() == 6
    # A student's teacher steps fall on that grid, K to a student step.
    grid = sampling_times(schedule, 4 * 3, "log_snr_span")
    for index in range(4):
        now, between, later = student_times(np.float32(index), 4, 3, grid)
        got = [keras.ops.convert_to_numpy(t) for t in (now, *between, later)]
        np.testing.assert_allclose(got, grid[3 * index : 3 * index + 4])
    # A schedule whose noise vanishes at t = 0 stops at log-SNR 5.
    cosine = sampling_times(get_schedule("cosine"), 4, "log_snr_span")
    noise_rates, signal_rates = (keras.ops.convert_to_numpy(r) for r in
                                 get_schedule("cosine")(cosine))  # fmt: skip
    np.testing.assert_allclose(np.log(signal_rates / noise_rates)[[0, -1]], [-5, 5], atol=1e-3)


def test_rounds_halve_the_steps_down_to_the_students():
    assert round_steps(64, 1) == [32, 16, 8, 4, 2, 1]
    assert round_steps(8, 2) == [4, 2]
    for bad in ((64, 3), (6, 1), (2, 2), (4, 8)):
        with pytest.raises(ValueError, match="halves the steps"):
            round_steps(*bad)


def test_a_first_round_may_cut_each_student_step_in_more_teacher_steps():
    # 5 of the teacher's DDIM 20 steps per step of a 4-step student, then halvings.
    assert round_steps(20, 1, first_substeps=5) == [4, 2, 1]
    assert round_steps(12, 3, first_substeps=4) == [3]
    for bad in ((20, 1, 3), (15, 1, 5), (10, 4, 5)):
        with pytest.raises(ValueError, match=f"cuts each student step in {bad[2]}"):
            round_steps(*bad)
    for few in (1, 0):
        with pytest.raises(ValueError, match="at least 2 steps"):
            round_steps(8, 1, first_substeps=few)


def test_the_first_round_distils_the_teachers_ddim_12_in_three_unless_told(tmp_path):
    # A 4-step student of DDIM 12 came nearer held-out real images than one of
    # DDIM 8 in 19 of 24 distances at 4 and 2 steps (docs/results/distillation.md).
    teacher = types.SimpleNamespace(student_steps=0)
    given = dict(teacher=str(tmp_path / "model.keras"), data="builtin:flowers", steps=1)

    def first_round(**settings):
        config = resolve_config(DistillConfig(**given, **settings), teacher)
        return config.from_steps, config.first_substeps

    assert first_round() == (12, 3)
    assert round_steps(*first_round()[:1], 1, first_round()[1]) == [4, 2, 1]
    # A --from-steps given halves, as the default did before 2026-12-08.
    assert first_round(from_steps=8) == (8, 2)
    assert first_round(from_steps=64) == (64, 2)
    # Cutting the first student's steps in 5 starts it from DDIM 20.
    assert first_round(first_substeps=5) == (20, 5)
    assert first_round(first_substeps=2) == (8, 2)
    given["steps"] = 2
    assert first_round() == (12, 3)
    given["steps"] = 3  # 18 -> 6 -> 3
    assert first_round() == (18, 3)
    # A student of more than 4 steps starts from twice its steps.
    given["steps"] = 8
    assert first_round() == (16, 2)
    given["steps"] = 1
    student = types.SimpleNamespace(student_steps=4, student_spacing="uniform")
    resolved = resolve_config(DistillConfig(**given), student)
    assert (resolved.from_steps, resolved.first_substeps) == (4, 2)
    with pytest.raises(ValueError, match="--from-steps must be 4"):
        resolve_config(DistillConfig(**given, from_steps=16), student)
    # A distillation saved before the setting existed halved in its first round.
    path = tmp_path / "config.json"
    DistillConfig(**given).save(str(path))
    import json

    saved = json.loads(path.read_text())
    del saved["first_substeps"]
    path.write_text(json.dumps(saved))
    assert DistillConfig.load(str(path)).first_substeps == 2


def test_the_students_steps_fall_on_the_measured_spacing_or_their_teachers(tmp_path):
    teacher = types.SimpleNamespace(student_steps=0)
    given = dict(teacher=str(tmp_path / "model.keras"), data="builtin:flowers")
    assert resolve_config(DistillConfig(**given), teacher).spacing == STUDENT_SPACING
    for spacing in ("uniform", "log_snr_span"):
        assert resolve_config(DistillConfig(**given, spacing=spacing), teacher).spacing == spacing
        # A student's students keep its grid: their steps must be every other of its own.
        student = types.SimpleNamespace(student_steps=4, student_spacing=spacing)
        assert resolve_config(DistillConfig(**given), student).spacing == spacing
        other = "uniform" if spacing == "log_snr_span" else "log_snr_span"
        with pytest.raises(ValueError, match=f"--spacing must be {spacing}"):
            resolve_config(DistillConfig(**given, spacing=other), student)
    # A distillation saved before the setting existed ran on uniform steps.
    path = tmp_path / "config.json"
    DistillConfig(**given).save(str(path))
    import json

    saved = json.loads(path.read_text())
    del saved["spacing"]
    path.write_text(json.dumps(saved))
    assert DistillConfig.load(str(path)).spacing == "uniform"


def test_the_budget_is_spread_over_the_rounds_with_most_for_the_last():
    rounds = round_steps(64, 1)
    for count in (1536, 384, 40):
        data = ImageData(np.zeros((count, 2, 2, 3), np.uint8))
        config = DistillConfig(budget=0.4, batch_size=16)
        plan = round_plan(config, 384 * 64, rounds, data)
        steps = {s: epochs * (images // 16) for s, (epochs, images) in plan.items()}
        # All rounds together: 0.4 x the teacher's 384 x 64 images, to a step an epoch.
        epochs = sum(epochs for epochs, _ in plan.values())
        assert abs(sum(steps.values()) - 0.4 * 384 * 64 / 16) <= epochs
        assert steps[32] == steps[16] == steps[8] < steps[4] < steps[2] == steps[1]
        assert all(16 <= images <= count for _, images in plan.values())
    # Rounds of other step counts below 8 (12 -> 6 -> 3) get the last rounds' share.
    odd = round_plan(DistillConfig(budget=0.4, batch_size=16), 384 * 64, [12, 6, 3], data)
    odd = {s: epochs * (images // 16) for s, (epochs, images) in odd.items()}
    assert odd[12] < odd[6] == odd[3]
    fixed = round_plan(DistillConfig(round_epochs=3), 0, rounds, data)
    assert set(fixed.values()) == {(3, 40)}
    with pytest.raises(ValueError, match="--round-epochs"):
        round_plan(DistillConfig(), 0, rounds, data)


def test_a_round_of_fewer_steps_learns_faster():
    config = DistillConfig(learning_rate=2e-4)
    rates = [round_learning_rate(config, steps) for steps in (32, 16, 8, 4, 2, 1)]
    assert rates == sorted(rates) and rates[-1] == 2e-4
    # Measured best by KID: the rate falls as 1 / N (not N^(-2/3)), 1e-4 at 1 step.
    assert rates[0] == pytest.approx(2e-4 / 32)
    assert round_learning_rate(DistillConfig(), 4) == pytest.approx(2.5e-5)


def test_a_round_whose_students_switch_prediction_learns_four_times_faster():
    # They start far from their teacher: at the plain rate the 1-step velocity
    # students of noise teachers came out speckled (docs/results/distillation.md).
    config = DistillConfig()
    assert round_learning_rate(config, 1, switches_prediction=True) == pytest.approx(4e-4)
    assert round_learning_rate(config, 2, switches_prediction=True) == pytest.approx(2e-4)
    assert round_learning_rate(config, 1) == pytest.approx(1e-4)


def test_a_first_round_of_more_than_two_teacher_steps_a_step_learns_four_times_faster():
    # Its student starts farther from its target: from DDIM 12 in 3 at the plain
    # rate the students were farther from held-out images in 15 of 15 distances.
    config = DistillConfig()
    assert round_learning_rate(config, 4, substeps=3) == pytest.approx(1e-4)
    assert round_learning_rate(config, 4, substeps=2) == pytest.approx(2.5e-5)
    assert round_learning_rate(config, 4, substeps=5) == pytest.approx(1e-4)


def test_a_round_over_fewer_images_takes_a_seeded_subset_with_its_labels():
    data = ImageData(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), labels=np.arange(10),
                     captions=[str(i) for i in range(10)])  # fmt: skip
    subset = random_subset(data, 4, [42, 2])
    np.testing.assert_array_equal(subset.images.ravel(), subset.labels)
    assert subset.captions == [str(i) for i in subset.labels]
    assert len(set(subset.labels)) == 4
    np.testing.assert_array_equal(random_subset(data, 4, [42, 2]).labels, subset.labels)
    assert random_subset(data, 10, 0) is data


# -- the student --------------------------------------------------------------


def test_a_student_starts_as_its_teacher_and_knows_its_sampling(teacher):
    model = load_model(teacher)
    student = student_of(model, 2, prediction="noise")
    assert student.student_steps == 2 and model.student_steps == 0
    for ours, theirs in zip(student.network.get_weights(), model.ema_network.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert student.sampling_defaults() == dict(
        sampler="ddim", diffusion_steps=2, spacing="uniform", eta=STUDENT_ETA
    )
    assert model.sampling_defaults() == dict(  # the book's, as before
        sampler="ddim", diffusion_steps=20, spacing="uniform", eta=0.0
    )
    # A student on log-SNR steps samples on them, and its students keep them.
    span = student_of(model, 2, prediction="noise", spacing="log_snr_span")
    assert span.sampling_defaults()["spacing"] == "log_snr_span"
    assert student_of(span, 1).student_spacing == "log_snr_span"
    with pytest.raises(ValueError, match="same spacing"):
        attach_teacher(student_of(model, 1, spacing="uniform"), span)
    # The same prediction and weights: the same images as the teacher's 2 DDIM
    # steps with the student's fresh noise, from the same seed.
    np.testing.assert_allclose(
        student.generate(3, seed=1),
        model.generate(3, diffusion_steps=2, seed=1, eta=STUDENT_ETA),
        atol=1e-6,
    )


def test_a_student_samples_with_its_own_share_of_fresh_noise_unless_told(teacher):
    # Eta 0.5 took students nearer held-out real photographs than their
    # deterministic path (docs/results/distillation.md).
    assert 0 < STUDENT_ETA <= 1
    student = student_of(load_model(teacher), 2, prediction="noise")
    noise = student.make_noise(3, seed=2)
    default = student.generate(initial_noise=noise, seed=3)
    told = student.generate(initial_noise=noise, seed=3, eta=STUDENT_ETA)
    deterministic = student.generate(initial_noise=noise, seed=3, eta=0.0)
    np.testing.assert_allclose(default, told, atol=1e-6)
    assert np.abs(default - deterministic).mean() > 1e-3
    # The same seed, the same fresh noise: the same images.
    np.testing.assert_allclose(student.generate(initial_noise=noise, seed=3), default, atol=1e-6)
    # A 1-step student's only step ends at the image: no fresh noise enters.
    one = student_of(load_model(teacher), 1, prediction="noise")
    np.testing.assert_allclose(
        one.generate(initial_noise=noise, seed=3),
        one.generate(initial_noise=noise, seed=4, eta=0.0),
        atol=1e-6,
    )
    # Its eta goes with its sampler: another sampler is deterministic unless told.
    np.testing.assert_allclose(
        student.generate(initial_noise=noise, seed=3, sampler="dpmpp_2m"),
        student.generate(initial_noise=noise, seed=4, sampler="dpmpp_2m", eta=0.0),
        atol=1e-6,
    )
    # generate.py: the same default, but deterministic where a path is shown
    # or an image kept; --eta always wins.
    from diffusion_keras.cli.generate import parser, sampling_arguments

    def settings(*flags):
        args = parser().parse_args(["student.keras", *flags])
        return sampling_arguments(args, student.sampling_defaults())

    assert settings() == student.sampling_defaults()
    assert settings("--steps", "1")["eta"] == STUDENT_ETA
    assert settings("--interpolate")["eta"] == 0.0
    assert settings("--show-steps", "1,2")["eta"] == 0.0
    assert settings("--init-image", "x.png")["eta"] == 0.0
    assert settings("--sampler", "dpmpp_2m")["eta"] == 0.0
    assert settings("--eta", "0")["eta"] == 0.0
    assert settings("--init-image", "x.png", "--eta", "1")["eta"] == 1.0


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

    # Its batch norms keep the teacher's statistics, in both of its networks.
    from diffusion_keras.training.precise_bn import batch_norm_layers

    for network in (after.network, after.ema_network):
        for mine, theirs in zip(batch_norm_layers(network),
                                batch_norm_layers(model.ema_network)):  # fmt: skip
            np.testing.assert_allclose(mine.moving_variance, theirs.moving_variance, rtol=1e-6)
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
    # --prediction auto: the teacher's, but velocity for one step from noise.
    assert load_model(teacher).prediction == "noise"
    assert student.student_steps == 1 and student.prediction == "velocity"
    two = load_model(str(output / "rounds" / "steps_002" / "model.keras"))
    assert two.prediction == "noise"
    # The 2-step round keeps the noise prediction, at 1e-4 / 2; the 1-step one
    # switches to velocity and learns at 4x 1e-4.
    rates = {steps: TrainConfig.load(output / "rounds" / f"steps_00{steps}" / "config.json")
             .learning_rate for steps in (1, 2)}  # fmt: skip
    assert rates == {1: pytest.approx(4e-4), 2: pytest.approx(5e-5)}

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
    # Its first round may copy a finer DDIM: the teacher's 8 steps, 4 per student
    # step; and the students' steps may fall equally in log-SNR.
    result = run_script("distill.py", teacher, *flags, "--overwrite", "--from-steps", 8,
                        "--first-substeps", 4, "--spacing", "log_snr_span")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(name.startswith("student.old-") for name in os.listdir(tmp_path))
    with open(output / "rounds.csv") as handle:
        rows = [row.split(",")[:2] for row in handle.read().splitlines()[1:]]
    assert rows == [["2", "8"], ["1", "2"]]
    # That first round, farther from its target, learns at 4x 1e-4 / 2.
    rate = TrainConfig.load(output / "rounds" / "steps_002" / "config.json").learning_rate
    assert rate == pytest.approx(2e-4)
    for path in (output / "model.keras", output / "rounds" / "steps_002" / "model.keras"):
        assert load_model(str(path)).sampling_defaults()["spacing"] == "log_snr_span"


def test_a_distillation_directory_is_claimed_as_a_run_directory_is(tmp_path):
    output = tmp_path / "student"
    claim_distill_directory(str(output), resume=False, overwrite=False)  # nothing there yet
    with pytest.raises(TrainingError, match="--resume: .* holds no distillation"):
        claim_distill_directory(str(output), resume=True, overwrite=False)
    # A finished round's checkpoint is a distillation, before any student is written.
    checkpoints = output / "rounds" / "steps_032" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "epoch_0001.keras").write_bytes(b"weights")
    with pytest.raises(TrainingError, match="already holds a distillation .*round steps_032"):
        claim_distill_directory(str(output), resume=False, overwrite=False)
    with pytest.raises(TrainingError, match="does not go with --resume"):
        claim_distill_directory(str(output), resume=True, overwrite=True)
    claim_distill_directory(str(output), resume=False, overwrite=True)
    assert not output.exists()
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("student.old-")]
    assert (moved / "rounds" / "steps_032" / "checkpoints" / "epoch_0001.keras").exists()


def test_distill_py_refuses_bad_input_in_one_line(teacher, tmp_path):
    line = one_line_error(run_script("distill.py", tmp_path / "none.keras"))
    assert "does not exist" in line
    line = one_line_error(
        run_script("distill.py", teacher, "--from-steps", 12, "--output", tmp_path / "x")
    )
    assert "halves the steps" in line
    line = one_line_error(run_script("distill.py", teacher, "--from-steps", 20, "--first-substeps",
                                     3, "--output", tmp_path / "z"))  # fmt: skip
    assert "cuts each student step in 3" in line
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


# -- any teacher: class-conditional, captioned, latent ---------------------------


def conditioned_teacher(kind, path):
    """An untrained tiny teacher of `kind`, saved alone (distillation works on
    any weights; a lone model file needs --data and --round-epochs)."""
    from diffusion_keras import DiffusionModel
    from diffusion_keras.models.autoencoder import Autoencoder
    from diffusion_keras.models.text import TextEncoder, build_vocabulary

    extra = {}
    if kind == "class":
        extra = dict(num_classes=4, class_names=["red", "green", "blue", "purple"])
    elif kind == "caption":
        words = ["a", "red", "green", "blue", "purple", "flower", "petals"]
        extra = dict(attention_levels=(1,), attention_heads=2, text_encoder=TextEncoder(
            build_vocabulary(words), sequence_length=6, dims=16, depth=1, heads=2, seed=1))
    else:
        autoencoder = Autoencoder(factor=4, widths=(8, 16, 16), seed=1)
        extra = dict(autoencoder=autoencoder)
    model = DiffusionModel(**{**TINY, "seed": 1}, **extra)
    images = load_images("builtin:flowers:16", 16).images.astype(np.float32) / 255
    if kind == "latent":
        model.autoencoder.measure_latent_scale(images)
    model.adapt(images)
    model.save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["class", "caption", "latent"])
def test_a_conditioned_or_latent_teacher_gives_a_student_that_keeps_it(kind, tmp_path):
    teacher = conditioned_teacher(kind, str(tmp_path / "teacher.keras"))
    guidance = 1.0 if kind == "latent" else 2.0
    config = DistillConfig(teacher=teacher, data="builtin:flowers:32", steps=2, from_steps=4,
                           guidance_scale=guidance, output=str(tmp_path / "students"),
                           **ROUND)  # fmt: skip
    distill(config, verbose=0)
    student = load_model(str(tmp_path / "students" / "model.keras"))
    assert student.student_steps == 2 and student.student_guidance == guidance
    asked = {}
    if kind == "class":
        assert student.num_classes == 4
        asked = dict(class_labels=["red", "blue"])
    elif kind == "caption":
        assert student.text_encoder is not None
        asked = dict(prompts=["a red flower", "blue petals"])
    else:
        assert student.autoencoder is not None
    images = student.generate(2, seed=0, **asked)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    # The same seed gives the same images.
    np.testing.assert_array_equal(images, student.generate(2, seed=0, **asked))
