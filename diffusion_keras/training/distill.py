"""`distill`: progressive distillation of a trained model, round by round.

Each round is a training run (`training.run.train` with a `teacher`) that
halves the sampling steps: 64 -> 32 -> ... -> `steps`. The directory holds

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
import os
import time

from diffusion_keras.config import fields
from diffusion_keras.config.distill import DistillConfig
from diffusion_keras.config.model import DiffusionConfig, NetworkConfig
from diffusion_keras.config.run import TrainConfig, run_paths
from diffusion_keras.data.datasets import load_images, steps_per_epoch
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

# The teacher steps of the first round, unless the teacher is a student.
FIRST_TEACHER_STEPS = 64


def round_prediction(config, teacher, student_steps):
    """What the `student_steps` student predicts: `config.prediction`, or for
    auto the teacher's down to the 4-step student and velocity from the
    2-step one on. Measured (flowers, 32x32): at 4 steps a noise student of
    a noise teacher reached an error of 0.018 against its teacher in 90
    steps, a velocity one 0.061; at 1 step velocity reached 0.067 in 180
    steps, noise 0.083 (`docs/results/distillation.md`)."""
    if config.prediction != "auto":
        return config.prediction
    return "velocity" if student_steps <= 2 else teacher.prediction


def round_epochs(config, teacher_images, rounds, data):
    """Epochs of each round: `config.round_epochs`, or for 0 what spreads
    `config.budget` x `teacher_images` training images over the rounds."""
    if config.round_epochs:
        return config.round_epochs
    if not teacher_images:
        raise ValueError(
            "the teacher does not say how many images it trained on; give --round-epochs"
        )
    per_epoch = max(1, steps_per_epoch(data, config.batch_size, config.dataset_repetitions))
    steps = config.budget * teacher_images / (rounds * config.batch_size)
    return max(1, round(steps / per_epoch))


def round_config(config, teacher, student_steps, output, epochs):
    """The `TrainConfig` of the round that makes a `student_steps` student."""
    model_config = teacher.get_config()
    settings = {
        f.name: model_config[f.name]
        for cls in (NetworkConfig, DiffusionConfig)
        for f in fields.settings_of(cls)
        if f.name in model_config
    }
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    settings.update(
        student_steps=student_steps,
        student_guidance=config.guidance_scale,
        prediction=round_prediction(config, teacher, student_steps),
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
        learning_rate=config.learning_rate,
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
    )


def resolve_config(config, teacher):
    """`config` with its defaults filled in from the teacher: the first
    round's teacher steps and the teacher run's data."""
    from_steps = config.from_steps or int(teacher.student_steps) or FIRST_TEACHER_STEPS
    if teacher.student_steps and from_steps != teacher.student_steps:
        raise ValueError(
            f"this teacher is a student of {teacher.student_steps} steps; --from-steps must be "
            f"{teacher.student_steps} (or left out)"
        )
    round_steps(from_steps, config.steps)  # checked before any work
    data, center_crop = config.data, config.center_crop
    found = teacher_run_settings(config.teacher)
    if not data:
        if found is None:
            raise ValueError(
                f"no --data given and no run config.json beside {config.teacher}; give the "
                "teacher's training images with --data"
            )
        data, center_crop = found["data"], found["center_crop"]
    return dataclasses.replace(config, from_steps=from_steps, data=data, center_crop=center_crop)


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
        student, epochs = None, None
        budget_images = teacher_images(config, teacher)
        rounds = round_steps(config.from_steps, config.steps)
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
            if epochs is None:
                epochs = round_epochs(config, budget_images, len(rounds), data)
            student = train(
                round_config(config, teacher, student_steps, directory, epochs),
                resume=resume_round, verbose=verbose, data=data,
                extra_callbacks=extra_callbacks, teacher=teacher,
                overwrite=not resume_round and existing_run(directory) is not None,
            )  # fmt: skip
            record_round(paths["rounds_csv"], dict(
                steps=student_steps,
                teacher_steps=2 * student_steps,
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
