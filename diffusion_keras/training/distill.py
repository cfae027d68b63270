"""`distill`: progressive distillation of a trained model, round by round.

Each round is a training run (`training.run.train` with a `teacher`) that
halves the sampling steps, but the first, which by default cuts each student
step in three teacher steps: 12 -> 4 -> 2 -> 1 (`from_steps`,
`first_substeps`; 8 -> 4 -> 2 -> 1 with `--from-steps 8`). The directory holds

- `config.json`: the `DistillConfig`;
- `rounds/steps_NNN/`: round N's run directory (config, checkpoints, sample
  grids, history, and its student `model.keras`), with every guarantee of a
  training run: atomic checkpoints, `--resume`, SIGTERM and Ctrl-C safety;
- `rounds.csv`: each finished round's steps, training steps and CPU seconds;
- `model.keras`: the last student.

`--resume` skips the rounds that have their student and resumes the one in
progress from its newest checkpoint; the result is the same as a run that was
never stopped.
"""

import dataclasses
import math
import os
import time

from diffusion_keras.config import fields
from diffusion_keras.config.distill import (
    FIRST_STUDENT_STEPS,
    FIRST_SUBSTEPS,
    STUDENT_SPACING,
    DistillConfig,
)
from diffusion_keras.config.model import DiffusionConfig, NetworkConfig
from diffusion_keras.config.run import TrainConfig, run_paths
from diffusion_keras.data.datasets import load_images, random_subset, steps_per_epoch
from diffusion_keras.models.saving import load_model
from diffusion_keras.training.callbacks import save_model_atomically
from diffusion_keras.training.checkpoints import list_checkpoints
from diffusion_keras.training.distill_files import (  # noqa: F401
    claim_distill_directory,
    distill_paths,
    finished_rounds,
    record_round,
    round_dir,
    round_steps,
    teacher_run_settings,
)
from diffusion_keras.training.run import train
from diffusion_keras.training.run_files import RunLock, existing_run
from diffusion_keras.utils.errors import TrainingError
from diffusion_keras.utils.precision import resolve_precision


def round_prediction(config, teacher, student_steps):
    """What the `student_steps` student predicts: `config.prediction`, or for
    auto its teacher's, except that a noise-predicting 1-step student
    predicts velocity instead. A student that keeps its teacher's prediction
    starts as its teacher; one that changes starts far away. But one step
    from pure noise divides a predicted noise by a signal rate near 0, and
    the 1-step noise student's images came out speckled. Measured (flowers,
    32x32, `bench/distill.py`): the 2-step student's KID 0.065 predicting
    noise, 0.101 switching to velocity; the 1-step student's 0.162
    predicting noise (speckled), 0.072 predicting velocity
    (`docs/results/distillation.md`)."""
    if config.prediction != "auto":
        return config.prediction
    if student_steps == 1 and teacher.prediction == "noise":
        return "velocity"
    return teacher.prediction


# Each round's share of the budget by its students' steps: 8 and more, 4,
# and the others (fewer); the bench's `--variant` may replace it.
ROUND_WEIGHTS = dict(many=1.0, four=2.0, few=3.0)


def round_weight(student_steps):
    """A round's share of the budget, relative to the others: the rounds
    down to the 8-step student start close to their teachers and need
    little, the last ones most (`docs/results/distillation.md`)."""
    kind = "many" if student_steps >= 8 else "four" if student_steps == 4 else "few"
    return ROUND_WEIGHTS[kind]


def round_plan(config, teacher_images, rounds, data):
    """`{student_steps: (epochs, images)}`: each round's epochs and how many
    of the training images it goes over. `config.round_epochs` gives every
    round those epochs of all the images; 0 spreads `config.budget` x
    `teacher_images` training images over `rounds` by `round_weight`, as
    whole epochs over a seeded subset of the images where a round needs
    fewer steps than an epoch of them all."""
    if config.round_epochs:
        return {steps: (config.round_epochs, len(data)) for steps in rounds}
    if not teacher_images:
        raise ValueError(
            "the teacher does not say how many images it trained on; give --round-epochs"
        )
    batch, repetitions = config.batch_size, config.dataset_repetitions
    total = config.budget * teacher_images / batch
    shares = sum(round_weight(steps) for steps in rounds)
    per_epoch = max(1, steps_per_epoch(data, batch, repetitions))
    plan = {}
    for steps in rounds:
        wanted = max(1.0, total * round_weight(steps) / shares)
        epochs = max(1, math.ceil(wanted / per_epoch - 1e-9))
        images = math.ceil(wanted / epochs) * batch / repetitions
        plan[steps] = (epochs, int(min(len(data), max(batch, math.ceil(images)))))
    return plan


# How fast a round's rate falls with its students' steps N: the rate is
# `config.learning_rate` x N^-ROUND_RATE_POWER. 1 against 2/3 (the rule
# before 2026-12-06), both from 1e-4: better trained-feature KID in 14 of 16
# comparisons (two teachers each of flowers and glyphs; the two losses were the
# 1-step students of one pair, whose round is the same under both rules), worse
# random-feature KID in 14 (docs/results/distillation.md).
ROUND_RATE_POWER = 1.0

# How much faster a round learns whose student predicts something else than
# its teacher (a noise teacher's 1-step student predicts velocity:
# `round_prediction`). Such a student does not start as its teacher: its
# first images are about the negated noise, and at 1x (1e-4) the 1-step
# students came out speckled with it, on all four bench sets. At 4x the
# photos' 1-step student's distance by the check classifier of held-out
# photographs went 156 -> 42 (1e-3: 45), and its images became the teacher's,
# blurred (docs/results/distillation.md, 2026-12-07).
PREDICTION_SWITCH_RATE = 4.0


# How much faster a first round learns whose teacher takes more than two
# steps per student step (`DistillConfig.first_substeps`): its student starts
# farther from its target. From the teacher's DDIM 12 in 3 at 1x, the seed-0
# landscapes' students were farther from held-out images than the default's
# (then from 8) in 15 of 15 distances; at 4x nearer in 12
# (docs/results/distillation.md, 2026-12-07).
FIRST_ROUND_RATE = 4.0


def round_learning_rate(config, student_steps, switches_prediction=False, substeps=2):
    """The peak learning rate of the round that makes a `student_steps`
    student: `config.learning_rate` / student_steps (`ROUND_RATE_POWER`),
    from 1e-4 for the 1-step student down to 3.1e-6 for the 32-step one,
    `FIRST_ROUND_RATE` x that where its teacher takes more than two steps per
    student step (`substeps`), and `PREDICTION_SWITCH_RATE` x that for a
    student that predicts something else than its teacher
    (`switches_prediction`), which starts far away. A
    student of many steps starts within a hair of its target and a large
    rate only shakes it; one of few steps has far to go. Measured (flowers,
    32x32, 96 steps of 16 from the teacher): the 32-step student's error
    against its teacher went 0.013 -> 0.039 at 2e-4, -> 0.009 at 6e-5, ->
    0.006 at 2e-5 (`docs/results/distillation.md`). By KID, 1e-4 made better
    students than 2e-4 (`config.distill.LEARNING_RATE`), and a rate falling
    as 1 / N rather than N^(-2/3) better ones still; faster falls (N^-1.5,
    N^-2) were better by the flowers' and glyphs' trained features but not
    by the classifiers of held-out photographs."""
    rate = config.learning_rate * float(student_steps) ** -ROUND_RATE_POWER
    rate *= FIRST_ROUND_RATE if int(substeps) > 2 else 1.0
    return rate * (PREDICTION_SWITCH_RATE if switches_prediction else 1.0)


def round_config(config, teacher, student_steps, output, epochs, substeps=2):
    """The `TrainConfig` of the round that makes a `student_steps` student
    from `substeps` of its teacher's steps per step."""
    model_config = teacher.get_config()
    settings = {
        f.name: model_config[f.name]
        for cls in (NetworkConfig, DiffusionConfig)
        for f in fields.settings_of(cls)
        if f.name in model_config
    }
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    prediction = round_prediction(config, teacher, student_steps)
    settings.update(
        student_steps=student_steps,
        student_spacing=config.spacing,
        student_guidance=config.guidance_scale,
        prediction=prediction,
        ema=config.ema,
        ema_warmup=True,
        ema_length=0.0,
    )
    return TrainConfig(
        **settings,
        data=config.data,
        center_crop=config.center_crop,
        batch_size=config.batch_size,
        dataset_repetitions=config.dataset_repetitions,
        epochs=epochs,
        learning_rate=round_learning_rate(config, student_steps,
                                          prediction != teacher.prediction,
                                          substeps),  # fmt: skip
        lr_schedule="cosine",
        seed=config.seed,
        precision=config.precision,
        conditional=bool(teacher.num_classes),
        captions=teacher.text_encoder is not None,
        latent=teacher.autoencoder is not None,
        output=output,
        plot_images=config.plot_images,
        plot_diffusion_steps=student_steps,
        keep_checkpoints=config.keep_checkpoints,
        checkpoint_every=config.checkpoint_every,
        kid_every=0,
        # The student's batch norms keep the teacher's statistics
        # (`models.distillation`); recomputing them for its weights moved
        # the 32-step student away from its teacher (error 0.012 -> 0.015)
        # and cost each epoch about 5 CPU seconds at 32x32.
        precise_bn_batches=0,
    )


def resolve_config(config, teacher):
    """`config` with its defaults filled in from the teacher: the first
    round's teacher steps and its steps per student step, the students'
    spacing and the teacher run's data."""
    first_substeps = config.first_substeps or (
        FIRST_SUBSTEPS
        if not config.from_steps and not teacher.student_steps
        and int(config.steps) <= FIRST_STUDENT_STEPS
        else 2
    )  # fmt: skip
    first_student = int(config.steps)  # times the least power of 2 that reaches 4
    while first_student < FIRST_STUDENT_STEPS:
        first_student *= 2
    from_steps = (config.from_steps or int(teacher.student_steps)
                  or first_substeps * first_student)  # fmt: skip
    if teacher.student_steps and from_steps != teacher.student_steps:
        raise ValueError(
            f"this teacher is a student of {teacher.student_steps} steps; --from-steps must be "
            f"{teacher.student_steps} (or left out)"
        )
    spacing = config.spacing
    if spacing == "auto":
        spacing = teacher.student_spacing if teacher.student_steps else STUDENT_SPACING
    if teacher.student_steps and spacing != teacher.student_spacing:
        raise ValueError(
            f"this teacher is a student of {teacher.student_spacing} steps; --spacing must be "
            f"{teacher.student_spacing} (or left out)"
        )
    round_steps(from_steps, config.steps, first_substeps)  # checked before any work
    data, center_crop = config.data, config.center_crop
    found = teacher_run_settings(config.teacher)
    if not data:
        if found is None:
            raise ValueError(
                f"no --data given and no run config.json beside {config.teacher}; give the "
                "teacher's training images with --data"
            )
        data, center_crop = found["data"], found["center_crop"]
    return dataclasses.replace(config, from_steps=from_steps, first_substeps=first_substeps,
                               spacing=spacing, data=data, center_crop=center_crop)  # fmt: skip


def teacher_images(config, teacher):
    """How many images the teacher trained on: its steps times its run's
    batch size (this run's when its run's is unknown)."""
    found = teacher_run_settings(config.teacher) or {}
    return int(teacher.train_steps.numpy()) * int(found.get("batch_size") or config.batch_size)


def distill(config, resume=False, overwrite=False, verbose="auto", data=None,
            extra_callbacks=()):  # fmt: skip
    """Distils `config.teacher` round by round; returns the last student.

    Args:
        config: `DistillConfig` (`teacher` is the model file).
        resume: continue the distillation in `config.output`: finished
            rounds are kept, the round in progress resumes from its newest
            checkpoint.
        overwrite: move a distillation already in `config.output` aside
            (`<output>.old-<time>`) instead of refusing it.
        verbose: Keras verbosity of each round's `fit`.
        data: `ImageData` or None: already loaded training images.
        extra_callbacks: more Keras callbacks for every round.

    Raises:
        TrainingError: the directory holds a distillation (without `resume`
            or `overwrite`), another process writes it, or a round failed.
        Preempted: SIGTERM stopped a round at a step boundary; `resume`
            continues it exactly.
    """
    output = config.output
    claim_distill_directory(output, resume, overwrite)
    with RunLock(output):
        paths = distill_paths(output)
        if resume:
            saved = DistillConfig.load(paths["config"])
            config = dataclasses.replace(saved, output=output)
        precision = resolve_precision(config.precision)
        teacher = load_model(config.teacher, compile=False, precision=precision)
        config = resolve_config(dataclasses.replace(config, precision=precision), teacher)
        config.save(paths["config"])
        finished = finished_rounds(paths["rounds_csv"])
        student, plan = None, None
        budget_images = teacher_images(config, teacher)
        rounds = round_steps(config.from_steps, config.steps, config.first_substeps)
        for student_steps in rounds:
            directory = round_dir(output, student_steps)
            done = os.path.join(directory, "model.keras")
            if os.path.exists(done) and student_steps in finished:
                student = load_model(done, compile=False, precision=precision)
                teacher = student
                continue
            resume_round = bool(list_checkpoints(run_paths(directory)["checkpoints"]))
            started = time.process_time(), time.monotonic()
            if data is None:
                data = load_images(
                    config.data, teacher.image_size, center_crop=config.center_crop,
                    with_labels=bool(teacher.num_classes),
                    with_captions=teacher.text_encoder is not None,
                )  # fmt: skip
            if plan is None:
                plan = round_plan(config, budget_images, rounds, data)
            epochs, images = plan[student_steps]
            substeps = config.first_substeps if student_steps == rounds[0] else 2
            student = train(
                round_config(config, teacher, student_steps, directory, epochs, substeps),
                resume=resume_round, verbose=verbose,
                data=random_subset(data, images, [config.seed, student_steps]),
                extra_callbacks=extra_callbacks, teacher=teacher, teacher_substeps=substeps,
                overwrite=not resume_round and existing_run(directory) is not None,
            )  # fmt: skip
            record_round(paths["rounds_csv"], dict(
                steps=student_steps,
                teacher_steps=substeps * student_steps,
                training_steps=int(student.train_steps.numpy()),
                cpu_seconds=f"{time.process_time() - started[0]:.1f}",
                wall_seconds=f"{time.monotonic() - started[1]:.1f}",
                resumed=int(resume_round),
            ))  # fmt: skip
            teacher = load_model(done, compile=False, precision=precision)
        if student is None:
            raise TrainingError("no round to run")  # round_steps never returns none
        save_model_atomically(student, paths["model"])
        return student
