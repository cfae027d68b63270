"""Training runs: `train`, which `train.py` wraps, as a short sequence of stages.

The run's settings are a `TrainConfig` (`diffusion_keras.config.run`).

A run directory holds `config.json`, `checkpoints/` (`diffusion_keras.training.checkpoints`),
`samples/epoch_NNN.png`, `history.csv` (per epoch), `steps.csv` (per step),
TensorBoard `logs/` and the final `model.keras`.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import warnings

import keras

from diffusion_keras.config import fields
from diffusion_keras.config.choices import LR_SCHEDULES, TEXT_ENCODER_TRAINING
from diffusion_keras.config.model import DiffusionConfig, NetworkConfig
from diffusion_keras.config.run import RECIPES, TrainConfig, run_paths  # noqa: F401
from diffusion_keras.data.datasets import (
    image_dataset,
    load_images,
    require_labels,
    split_held_out,
    steps_per_epoch,
    train_dataset,
)
from diffusion_keras.metrics.kid import KIDMonitor, feature_extractor
from diffusion_keras.models.classifier import NoiseClassifier
from diffusion_keras.models.diffusion_model import DiffusionModel
from diffusion_keras.models.distillation import attach_teacher, student_of
from diffusion_keras.models.saving import load_model
from diffusion_keras.nn.unet import build_unet
from diffusion_keras.training.callbacks import (
    LineLog,
    NanGuard,
    NotedInterrupt,
    ReleaseFreeMemory,
    SampleGrid,
    StepLog,
    save_model_atomically,
)
from diffusion_keras.training.checkpoints import (
    Checkpointer,
    list_checkpoints,
    parse_checkpoint_every,
)
from diffusion_keras.training.clip import text_encoder_for
from diffusion_keras.training.distribute import (
    default_strategy,
    fit_multiworker,
    is_multiworker,
    worker_index,
)
from diffusion_keras.training.latent import autoencoder_for, encoded_once
from diffusion_keras.training.precise_bn import PreciseBatchNorm
from diffusion_keras.training.preemption import interrupts_noted, stop_signal
from diffusion_keras.training.run_files import RunLock, claim_run_directory, trim_logs
from diffusion_keras.utils.errors import ModelFileError, Preempted, TrainingError
from diffusion_keras.utils.precision import resolve_precision

NOTHING_TO_SAVE = "stopped by SIGTERM before the first training step; nothing to save"


def learning_rate(config, total_steps):
    """`config.learning_rate`, or with `lr_schedule="cosine"` a schedule
    that rises linearly over `warmup_steps` and then falls along a cosine to
    zero at `total_steps` (Loshchilov & Hutter 2017)."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown lr_schedule {config.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
        )
    if config.lr_schedule == "constant":
        return config.learning_rate
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def build_model(config, class_names=None, total_steps=None, autoencoder=None, text_encoder=None):
    """A fresh, compiled `DiffusionModel` for `config` (normalizer not adapted).

    A conditional config needs the `class_names` of its data; a learning-rate
    schedule needs the run's `total_steps`; a latent one its `autoencoder`;
    one with captions its `text_encoder`."""
    training = config.text_encoder_training
    if training not in TEXT_ENCODER_TRAINING:
        raise ValueError(f"text_encoder_training must be 'frozen' or 'joint', got {training!r}")
    # Every network and diffusion setting of the run, by name: the model's
    # settings are the same fields (`diffusion_keras.config.model`).
    settings = {
        f.name: getattr(config, f.name)
        for cls in (NetworkConfig, DiffusionConfig)
        for f in fields.settings_of(cls)
    }
    if config.captions:
        settings.update(text_encoder=text_encoder, train_text_encoder=training == "joint")
    elif config.conditional:
        settings.update(num_classes=len(class_names), class_names=list(class_names))
    model = DiffusionModel(
        **settings,
        seed=config.seed,
        precision=resolve_precision(config.precision),
        autoencoder=autoencoder,
    )
    return compile_model(model, config, total_steps)


def compile_model(model, config, total_steps=None):
    """Compiles `model` with the run's optimizer (AdamW) and `jit_compile`."""
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=learning_rate(config, total_steps or 1),
            weight_decay=config.weight_decay,
            beta_2=config.adam_beta_2,
        ),
        jit_compile=resolve_jit_compile(config.jit_compile),
    )
    return model


def resolve_jit_compile(setting):
    """`"on"`/`"off"` as given; `"auto"` is off on every device for now.

    Measured on a 2-core AVX-512 CPU, XLA made the book's training step slower
    (16.8 against 21.6 images/s). No GPU was available to measure, so `auto`
    stays off there too; try `--jit-compile on` on a GPU.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"jit_compile must be auto, on or off, got {setting!r}")
    return setting == "on"


def load_latest_checkpoint(run_dir):
    """`((epoch, step), model)` from the newest checkpoint of a run that
    loads (`epoch` whole epochs and `step` steps into the next), or None.

    A damaged newest checkpoint (a disk that filled up, say) is skipped with a
    warning in favour of the one before it.
    """
    for position, path in reversed(list_checkpoints(os.path.join(run_dir, "checkpoints"))):
        try:
            return position, load_model(path)
        except ModelFileError as error:
            warnings.warn(f"skipping checkpoint: {error}", stacklevel=2)
    return None


def checkpoint_bytes(config):
    """About how large one checkpoint of `config`'s model is: network, EMA
    network and AdamW's two moments, in float32."""
    unet = build_unet(
        config.image_size,
        widths=config.widths,
        block_depth=config.block_depth,
        embedding_dims=config.embedding_dims,
    )
    return 4 * 4 * unet.count_params()


def check_output_dir(run_dir, needed_bytes):
    """Fails at once, in one line, when the run directory cannot be written or
    its disk cannot hold the checkpoints."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write_test")
        with open(probe, "wb") as handle:
            handle.write(b"0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        os.remove(probe)
    except OSError as error:
        raise TrainingError(
            f"cannot write to the run directory {run_dir!r}: {error.strerror or error}"
        ) from None
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise TrainingError(
            f"only {free / 1e6:.0f} MB free for {run_dir!r}; checkpoints need about "
            f"{needed_bytes / 1e6:.0f} MB"
        )


@dataclasses.dataclass
class Run:
    """What the stages of `train` hand on to each other."""

    config: TrainConfig
    strategy: object
    verbose: object
    chief: bool
    run_dir: str
    paths: dict
    data: object = None
    held_out: object = None
    steps: int = 0
    text_encoder: object = None
    model: object = None
    initial_epoch: int = 0
    first_step: int = 0
    nan_guard: object = None
    checkpointer: object = None
    line_log: bool = False
    teacher: object = None
    teacher_substeps: int = 2

    def dataset(self, first_epoch=0, first_step=0):
        """The training batches from `first_epoch`, `first_step` on."""
        config = self.config
        return train_dataset(
            self.data, config.batch_size, config.dataset_repetitions, seed=config.seed,
            flip=config.flip, first_epoch=first_epoch, first_step=first_step,
            epochs=config.epochs, labels=config.conditional or config.captions,
        )  # fmt: skip


def train(config, resume=False, verbose="auto", data=None, extra_callbacks=(), strategy=None,
          overwrite=False, teacher=None, teacher_substeps=2):  # fmt: skip
    """Trains a model as `config` says and writes the run directory.

    Args:
        config: `TrainConfig`.
        resume: bool. Continue from the newest checkpoint in `config.output`
            (weights, EMA, normalizer, optimizer state, step counters, epoch).
            Without it, a `config.output` that already holds a run is refused
            (`TrainingError`), unless `overwrite`.
        verbose: passed to `fit`.
        data: `ImageData` or None. Already loaded images; loaded from
            `config.data` when None.
        extra_callbacks: more Keras callbacks.
        overwrite: bool. A new run into a `config.output` that holds one moves
            the old run aside to `<output>.old-<time>` first (never deletes it).
        strategy: a `tf.distribute.Strategy` (TensorFlow), a
            `distribute.KerasDistribution` (JAX, PyTorch) or None (one device). Under
            `MultiWorkerMirroredStrategy` the chief writes the run directory
            and every other worker writes to `RUN_DIR/.worker_K/`.
        teacher: a `DiffusionModel` or None. Distil it instead
            (`diffusion_keras.models.distillation`): the model is a student of
            `config.student_steps` steps made from the teacher (or the
            checkpoint's, resuming), trained towards the teacher's two DDIM
            steps; `diffusion_keras.training.distill.distill` runs the rounds.
        teacher_substeps: the teacher's DDIM steps per student step (2: a
            halving).

    Returns:
        The trained `DiffusionModel`.

    Raises:
        TrainingError: the run directory is unusable, holds a run (without
            `resume` or `overwrite`), is being written by another process,
            there is no checkpoint to resume, or the loss became NaN or infinite (the last good
            checkpoint and model are left untouched).
        KeyboardInterrupt: after saving the current weights to
            `RUN_DIR/interrupted.keras`.
    """
    strategy = strategy or default_strategy()
    chief = worker_index(strategy) is None
    if chief:
        claim_run_directory(config.output, resume, overwrite)
    # One writer per run directory: the chief holds its lock until the run ends.
    with RunLock(config.output) if chief else contextlib.nullcontext():
        return _train(config, resume, verbose, data, extra_callbacks, strategy, teacher,
                      teacher_substeps)  # fmt: skip


def _train(config, resume, verbose, data, extra_callbacks, strategy, teacher=None,
           teacher_substeps=2):  # fmt: skip
    run = start_run(config, strategy, verbose)
    run.teacher, run.teacher_substeps = teacher, teacher_substeps
    prepare_data(run, data)
    prepare_text_encoder(run)
    # Built now so that less than a batch of data fails before any model is built.
    run.dataset()
    if stop_signal().should_stop() and not is_multiworker(run.strategy):
        raise Preempted(NOTHING_TO_SAVE)
    prepare_model(run, resume)
    if run.chief:
        config.save(run.paths["config"])
    # SIGTERM stops at the next step boundary while training (main thread only);
    # `train.py` has it for the whole process, a library call for its duration.
    with stop_signal().handled() as stop:
        fit(run, stop, extra_callbacks)
        return finish(run, stop)


def start_run(config, strategy, verbose):
    """Stage 1: the run directory (the chief's, or a worker's own), the
    precision, and room on its disk."""
    worker = worker_index(strategy)
    chief = worker is None
    run_dir = config.output if chief else os.path.join(config.output, f".worker_{worker}")
    config.precision = resolve_precision(config.precision)
    # Room for the kept checkpoints, one being written, and the final model.
    check_output_dir(run_dir, (config.keep_checkpoints + 2) * checkpoint_bytes(config))
    parse_checkpoint_every(config.checkpoint_every)  # a bad value fails before any work
    line_log = verbose == "auto" and not sys.stdout.isatty()
    if line_log:
        verbose = 0  # plain lines (`LineLog`) instead of a progress bar's frames
    run = Run(config, strategy, verbose, chief, run_dir, run_paths(run_dir))
    run.line_log = line_log
    return run


def prepare_data(run, data=None):
    """Stage 2: the images (loaded unless given), their labels or captions,
    the KID images held out, and the steps of an epoch."""
    config = run.config
    with_labels = config.conditional or config.train_classifier
    if data is None:
        data = load_images(
            config.data, config.image_size, center_crop=config.center_crop,
            with_labels=with_labels, with_captions=config.captions,
        )  # fmt: skip
    if with_labels:
        require_labels(data)
    if config.captions and data.captions is None:
        raise TrainingError(f"--captions: {data.source or 'these images'} came without captions")
    if config.kid_every:
        # Held out before training, the same images for every resume of the run.
        data, run.held_out = split_held_out(data, config.kid_images, config.seed)
    run.data = data
    run.steps = steps_per_epoch(data, config.batch_size, config.dataset_repetitions)


def prepare_text_encoder(run):
    """Stage 3, for captions: the run's frozen text encoder, loaded (a resumed
    run finds the one it trained in RUN_DIR) or trained (CLIP) now; the
    captions then train as its tokens."""
    if not run.config.captions:
        return
    if run.teacher is not None:
        run.text_encoder = run.teacher.text_encoder  # a student reads the teacher's tokens
    else:
        run.text_encoder = text_encoder_for(
            run.config, run.data, run.run_dir, run.verbose, run.chief
        )
    run.data = dataclasses.replace(run.data, labels=run.text_encoder.tokenize(run.data.captions))


def prepare_model(run, resume):
    """Stage 4: the model, from the newest checkpoint or built (with its
    autoencoder for a latent run) and adapted to the data; a latent run's
    images encoded once."""
    config, steps = run.config, run.steps
    with run.strategy.scope():
        if resume:
            found = load_latest_checkpoint(config.output)
            if found is None:
                raise TrainingError(
                    f"--resume: no usable checkpoint in {run_paths(config.output)['checkpoints']}"
                )
            (run.initial_epoch, run.first_step), model = found
            if config.lr_schedule != "constant":
                # The schedule spans the run as configured now, so a run
                # resumed with more --epochs stretches it instead of
                # training on at the learning rate it ended with (zero).
                model.optimizer.learning_rate = learning_rate(config, steps * config.epochs)
            if run.first_step >= steps:
                raise TrainingError(
                    f"--resume: the checkpoint is {run.first_step} steps into an epoch, but an "
                    f"epoch of this data has {steps}; resume with the run's --data"
                )
        elif run.teacher is not None:
            model = student_of(
                run.teacher, config.student_steps, config.student_guidance, config.prediction,
                seed=config.seed, precision=config.precision, spacing=config.student_spacing,
            )  # fmt: skip
            compile_model(model, config, steps * config.epochs)
        else:
            autoencoder = None
            if config.latent:
                autoencoder = autoencoder_for(config, run.data, run.run_dir, run.verbose, run.chief)
            model = build_model(
                config,
                class_names_of(run.data) if config.conditional else None,
                total_steps=steps * config.epochs,
                autoencoder=autoencoder,
                text_encoder=run.text_encoder,
            )
        if config.latent and not config.flip:
            # Encoded once (flips would need the flipped images' latents too).
            run.data = encoded_once(model, run.data, run.run_dir, config.batch_size)
        if run.teacher is not None:
            attach_teacher(model, run.teacher, run.teacher_substeps)
        elif not resume:
            model.adapt(image_dataset(run.data, config.batch_size))
    run.model = model


def fit(run, stop, extra_callbacks=()):
    """Stage 5: training, with checkpoints, until the last epoch, a NaN loss
    or SIGTERM; Ctrl-C keeps the current weights in `interrupted.keras`."""
    config, model, paths, steps = run.config, run.model, run.paths, run.steps
    multiworker = is_multiworker(run.strategy)
    if run.initial_epoch or run.first_step:
        # What a stopped run logged after its checkpoint goes: the resumed run
        # logs it again, so each epoch and step is logged once.
        trim_logs(run.run_dir, run.initial_epoch, int(model.train_steps.numpy()))
    run.nan_guard = NanGuard()
    run.checkpointer = checkpointer = Checkpointer(
        paths["checkpoints"], steps, keep=config.keep_checkpoints, every=config.checkpoint_every,
        nan_guard=run.nan_guard, stop=stop, running_means=not multiworker,
    )  # fmt: skip
    callbacks = run_callbacks(
        config, paths, run.chief, run.held_out, run.nan_guard, checkpointer,
        run.data.captions if config.captions else None, run.data,
    )  # fmt: skip
    if run.line_log and not multiworker:
        callbacks.append(LineLog(config.epochs, steps, config.batch_size))
    callbacks += list(extra_callbacks)
    if stop.should_stop() and not multiworker:
        # Workers of a multi-worker run agree on stopping at their first step.
        raise Preempted(NOTHING_TO_SAVE)
    checkpointer.resume_at(run.initial_epoch, run.first_step)
    with interrupts_noted() as interrupts:
        try:
            callbacks = [*callbacks, NotedInterrupt(interrupts)]
            _fit_phases(run, model, config, steps, multiworker, callbacks, checkpointer, stop)
        except BaseException as error:
            if not (isinstance(error, KeyboardInterrupt) or interrupts):
                raise
            # Mid-epoch weights: kept for generate.py, but --resume restarts from
            # the last checkpoint so that a resumed run stays exact. (A Ctrl-C that
            # lands inside a library can surface as another error: still Ctrl-C.)
            save_model_atomically(model, paths["interrupted"])
            if isinstance(error, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from error


def _fit_phases(run, model, config, steps, multiworker, callbacks, checkpointer, stop):
    """`fit`'s loop over the phases of `fit_phases`."""
    for epoch, epochs, skip in fit_phases(run.initial_epoch, run.first_step, config.epochs):
        if multiworker:
            fit_multiworker(
                model, run.strategy, functools.partial(run.dataset, epoch, skip),
                config.batch_size, epochs=epochs, initial_epoch=epoch,
                steps_per_epoch=steps, first_step=skip, callbacks=callbacks,
                verbose=1 if run.verbose == "auto" else run.verbose, stop=stop,
            )  # fmt: skip
        else:
            model.fit(
                run.dataset(epoch, skip), epochs=epochs, initial_epoch=epoch,
                steps_per_epoch=steps - skip, callbacks=callbacks, verbose=run.verbose,
                shuffle=False,
            )  # fmt: skip
        if checkpointer.preempted or run.nan_guard.failure:
            break


def finish(run, stop):
    """Stage 6: why training stopped, the final model, and the classifier."""
    config, model, paths, checkpointer = run.config, run.model, run.paths, run.checkpointer
    if run.nan_guard.failure:
        raise TrainingError(
            f"training stopped: {run.nan_guard.failure}; the last good checkpoint in "
            f"{paths['checkpoints']} is untouched (try a lower --learning-rate)"
        )
    epoch, step = checkpointer.position
    if checkpointer.preempted and (epoch, step) != (config.epochs - 1, run.steps):
        raise Preempted(
            f"stopped by SIGTERM after step {step} of epoch {epoch + 1}; saved "
            f"{checkpointer.last_path}; --resume continues from there",
            checkpointer.last_path,
        )
    save_model_atomically(model, paths["model"])
    if config.train_classifier and stop.requested:
        raise Preempted(
            f"stopped by SIGTERM before training the classifier; {paths['model']} is saved and "
            "--resume trains the classifier"
        )
    if config.train_classifier and run.chief:
        classifier = train_classifier(model, run.data, config, run.verbose)
        save_model_atomically(classifier, paths["classifier"])
    return model


def sample_prompts(captions, count):
    """`count` prompts for sample grids: the data's first different captions
    (repeated when it has fewer)."""
    different = list(dict.fromkeys(c for c in captions if c)) or [""]
    return [different[i % len(different)] for i in range(count)]


def run_callbacks(config, paths, chief, held_out, nan_guard, checkpointer, captions=None,
                  data=None):  # fmt: skip
    """The callbacks of a training run, in the order they must run (a text
    model's sample grids draw the first of the data's `captions`; `data`, the
    training images or latents, feeds the EMA network's precise batch norm)."""
    callbacks = [
        nan_guard,
        checkpointer,
        keras.callbacks.CSVLogger(paths["history"], append=True),
        StepLog(paths["steps"]),
    ]
    if chief:
        callbacks += [
            SampleGrid(
                paths["samples"],
                num_images=config.plot_images,
                diffusion_steps=config.plot_diffusion_steps,
                seed=config.seed,
                prompts=None if captions is None else sample_prompts(captions, config.plot_images),
            ),
            keras.callbacks.TensorBoard(log_dir=paths["logs"], write_graph=False),
        ]
        if held_out is not None:
            kid = KIDMonitor(
                held_out.images,
                feature_extractor(config.kid_features, config.image_size),
                every=config.kid_every,
                diffusion_steps=config.kid_diffusion_steps,
                seed=config.seed,
            )
            # Before the CSV and TensorBoard loggers, so that they record `kid`.
            callbacks.insert(0, kid)
    if config.precise_bn_batches and data is not None:
        # First: the checkpoint, the sample grid and KID see the recomputed statistics.
        callbacks.insert(0, PreciseBatchNorm(
            data, config.precise_bn_batches, config.batch_size, config.seed,
            labels=config.conditional or config.captions,
        ))  # fmt: skip
    for callback in callbacks:
        if hasattr(callback, "epoch_is_whole") and callback is not checkpointer:
            callback.epoch_is_whole = checkpointer.epoch_is_whole
    # Last, so that it runs after the sample grid and the checkpoint.
    callbacks.append(ReleaseFreeMemory())
    return callbacks


def fit_phases(initial_epoch, first_step, epochs):
    """`(initial_epoch, epochs, first_step)` for each `fit` call a run needs:
    one for the rest of an epoch resumed mid-way (its batches counted from
    `first_step`), then one for the whole epochs after it."""
    phases = []
    if first_step and initial_epoch < epochs:
        phases.append((initial_epoch, initial_epoch + 1, first_step))
        initial_epoch += 1
    if initial_epoch < epochs:
        phases.append((initial_epoch, epochs, 0))
    return phases


def class_names_of(data):
    """The class names of labelled `data` (the label values when unnamed)."""
    if data.class_names:
        return list(data.class_names)
    return [str(i) for i in range(int(data.labels.max()) + 1)]


def train_classifier(model, data, config, verbose="auto"):
    """Trains a `NoiseClassifier` for `model` on labelled `data`, for
    `config.classifier_epochs` epochs: the U-Net's down widths, AdamW with the
    run's learning rate, the run's batch size, repetitions and flips."""

    require_labels(data)
    classifier = NoiseClassifier.for_model(
        model,
        class_names_of(data),
        widths=config.widths[:-1],
        embedding_dims=config.embedding_dims,
        seed=config.seed,
    )
    classifier.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
    )
    nan_guard = NanGuard()
    dataset = train_dataset(
        data,
        config.batch_size,
        config.dataset_repetitions,
        seed=config.seed + 1,
        flip=config.flip,
        epochs=config.classifier_epochs,
        labels=True,
    )
    classifier.fit(
        dataset,
        epochs=config.classifier_epochs,
        steps_per_epoch=steps_per_epoch(data, config.batch_size, config.dataset_repetitions),
        callbacks=[nan_guard],
        verbose=verbose,
        shuffle=False,
    )
    if nan_guard.failure:
        raise TrainingError(f"classifier training stopped: {nan_guard.failure}")
    return classifier
