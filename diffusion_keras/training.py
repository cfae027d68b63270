"""Training runs: a documented configuration and `train`, which `train.py` wraps.

A run directory holds `config.json`, `checkpoints/epoch_NNN.keras`,
`samples/epoch_NNN.png`, TensorBoard `logs/` and the final `model.keras`.
"""

import dataclasses
import json
import os

import keras

from diffusion_keras.callbacks import (
    EpochCheckpoint,
    NanGuard,
    SampleGrid,
    list_checkpoints,
    save_model_atomically,
)
from diffusion_keras.data import image_dataset, load_images, steps_per_epoch, train_dataset
from diffusion_keras.errors import TrainingError
from diffusion_keras.model import DiffusionModel
from diffusion_keras.unet import BOOK_WIDTHS


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; saved as `RUN_DIR/config.json`.

    The defaults are the book's.
    """

    # data
    data: str = "builtin:flowers"
    image_size: int = 64
    batch_size: int = 64
    dataset_repetitions: int = 5
    flip: bool = True
    center_crop: bool = False
    # architecture
    widths: tuple = BOOK_WIDTHS
    block_depth: int = 2
    embedding_dims: int = 32
    schedule: str = "offset_cosine"
    min_signal_rate: float = 0.02
    max_signal_rate: float = 0.95
    # optimization
    epochs: int = 50
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    ema: float = 0.999
    ema_warmup: bool = True
    loss: str = "mae"
    seed: int = 42
    # outputs
    output: str = "runs/flowers"
    plot_images: int = 10
    plot_diffusion_steps: int = 20
    keep_checkpoints: int = 3

    def save(self, path):
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        temporary = path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path):
        with open(path) as handle:
            data = json.load(handle)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["widths"] = tuple(data.get("widths", BOOK_WIDTHS))
        return cls(**data)


def build_model(config):
    """A fresh, compiled `DiffusionModel` for `config` (normalizer not adapted)."""
    model = DiffusionModel(
        image_size=config.image_size,
        widths=config.widths,
        block_depth=config.block_depth,
        embedding_dims=config.embedding_dims,
        schedule=config.schedule,
        min_signal_rate=config.min_signal_rate,
        max_signal_rate=config.max_signal_rate,
        ema=config.ema,
        ema_warmup=config.ema_warmup,
        loss=config.loss,
        seed=config.seed,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
    )
    return model


def latest_checkpoint(run_dir):
    """`(epoch, path)` of the newest checkpoint of a run, or None."""
    found = list_checkpoints(os.path.join(run_dir, "checkpoints"))
    return found[-1] if found else None


def run_paths(run_dir):
    return {
        "config": os.path.join(run_dir, "config.json"),
        "checkpoints": os.path.join(run_dir, "checkpoints"),
        "samples": os.path.join(run_dir, "samples"),
        "logs": os.path.join(run_dir, "logs"),
        "model": os.path.join(run_dir, "model.keras"),
    }


def train(config, resume=False, verbose="auto", data=None, extra_callbacks=()):
    """Trains a model as `config` says and writes the run directory.

    Args:
        config: `TrainConfig`.
        resume: bool. Continue from the newest checkpoint in `config.output`
            (weights, EMA, normalizer, optimizer state, step counters, epoch).
        verbose: passed to `fit`.
        data: `ImageData` or None. Already loaded images; loaded from
            `config.data` when None.
        extra_callbacks: more Keras callbacks.

    Returns:
        The trained `DiffusionModel`.
    """
    paths = run_paths(config.output)
    os.makedirs(config.output, exist_ok=True)
    checkpoint = latest_checkpoint(config.output) if resume else None
    if resume and checkpoint is None:
        raise TrainingError(f"--resume: no checkpoint found in {paths['checkpoints']}")

    if data is None:
        data = load_images(config.data, config.image_size, center_crop=config.center_crop)
    steps = steps_per_epoch(data, config.batch_size, config.dataset_repetitions)
    dataset_check = train_dataset(data, config.batch_size, config.dataset_repetitions)
    del dataset_check  # raises DataError early when there is less than a batch

    if checkpoint is not None:
        initial_epoch, path = checkpoint
        model = keras.models.load_model(path)
    else:
        initial_epoch = 0
        model = build_model(config)
        model.adapt(image_dataset(data, config.batch_size))
    config.save(paths["config"])

    nan_guard = NanGuard()
    callbacks = [
        nan_guard,
        SampleGrid(
            paths["samples"],
            num_images=config.plot_images,
            diffusion_steps=config.plot_diffusion_steps,
            seed=config.seed,
        ),
        EpochCheckpoint(paths["checkpoints"], keep=config.keep_checkpoints, nan_guard=nan_guard),
        keras.callbacks.TensorBoard(log_dir=paths["logs"], write_graph=False),
        *extra_callbacks,
    ]
    dataset = train_dataset(
        data,
        config.batch_size,
        config.dataset_repetitions,
        seed=config.seed,
        flip=config.flip,
        first_epoch=initial_epoch,
        epochs=config.epochs,
    )
    if initial_epoch < config.epochs:
        model.fit(
            dataset,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
    if nan_guard.failure:
        raise TrainingError(
            f"training stopped: {nan_guard.failure}; the last good checkpoint in "
            f"{paths['checkpoints']} is untouched (try a lower --learning-rate)"
        )
    save_model_atomically(model, paths["model"])
    return model
