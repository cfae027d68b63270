"""The autoencoder of a latent run (`train.py --latent`): loaded, or trained first.

A latent `DiffusionModel` holds a frozen copy of its autoencoder, so its
`.keras` file is all `generate.py` needs. The run keeps the autoencoder it
trained in `RUN_DIR/autoencoder.keras`, so that a run started again before its
first checkpoint does not train it twice, and another run can reuse it with
`--autoencoder PATH`.
"""

import dataclasses
import hashlib
import json
import os

import keras
import numpy as np

from diffusion_keras.data.datasets import (
    image_dataset,
    random_crops,
    steps_per_epoch,
    train_dataset,
)
from diffusion_keras.data.image_cache import release_pages
from diffusion_keras.models.autoencoder import Autoencoder
from diffusion_keras.models.saving import load_autoencoder
from diffusion_keras.training.callbacks import save_model_atomically
from diffusion_keras.utils.errors import TrainingError

AUTOENCODER_FILE = "autoencoder.keras"
LATENTS_FILE = "latents.npy"
AUTOENCODER_LEARNING_RATE = 1e-3


def training_crop(crop, image_size, factor):
    """The square side an autoencoder for `image_size` images trains on, given
    `crop` (`TrainConfig.autoencoder_crop`): `crop` when it is smaller than the
    images, 0 (whole images) when it is 0 or at least their size, and None
    when it cannot be used: negative, or a crop that is not a multiple of the
    latent `factor`."""
    if crop < 0:
        return None
    if not 0 < crop < image_size:
        return 0
    return None if crop % factor else crop


def autoencoder_for(config, data, run_dir, verbose="auto", chief=True):
    """`config.autoencoder` loaded when given, else `RUN_DIR/autoencoder.keras`
    when an earlier start of this run saved it, else a new one trained on
    `data` for `config.autoencoder_epochs` epochs, its learning rate
    cosine-decayed to 0, on random `config.autoencoder_crop` squares of the
    images when those are larger (0: whole images), its latent scale measured
    on `data` (whole images), saved there (by the chief; atomically)."""

    path = config.autoencoder or os.path.join(run_dir, AUTOENCODER_FILE)
    if config.autoencoder or os.path.exists(path):
        autoencoder = load_autoencoder(path)
        try:
            autoencoder.latent_shape(config.image_size)
        except ValueError as error:
            raise TrainingError(f"--autoencoder {path}: {error}") from None
        return autoencoder
    autoencoder = Autoencoder(
        factor=config.latent_factor, latent_channels=config.latent_channels, seed=config.seed
    )
    autoencoder.latent_shape(config.image_size)
    dataset = train_dataset(
        data, config.batch_size, config.dataset_repetitions, seed=config.seed,
        flip=config.flip, epochs=config.autoencoder_epochs,
    )  # fmt: skip
    crop = config.autoencoder_crop
    cropped = training_crop(crop, config.image_size, config.latent_factor)
    if cropped is None:
        raise TrainingError(
            f"autoencoder_crop must be 0 or a positive multiple of the latent factor "
            f"{config.latent_factor}, got {crop}"
        )
    if cropped:
        dataset = random_crops(dataset, crop, config.seed)
    steps = steps_per_epoch(data, config.batch_size, config.dataset_repetitions)
    # The rate decays to 0 over the run: at 128x128 the last 4 epochs of a
    # decay took held-out PSNR from 26.2 to 28.3 dB (`bench/autoencoder.py`).
    rate = keras.optimizers.schedules.CosineDecay(
        AUTOENCODER_LEARNING_RATE, config.autoencoder_epochs * steps
    )
    autoencoder.compile(optimizer=keras.optimizers.Adam(rate))
    on = f"{crop}x{crop} crops" if cropped else "whole images"
    print(f"training the autoencoder: {config.autoencoder_epochs} epochs of {steps} steps on {on}")
    autoencoder.fit(
        dataset, epochs=config.autoencoder_epochs, steps_per_epoch=steps, verbose=verbose,
        shuffle=False,
    )  # fmt: skip
    autoencoder.measure_latent_scale(image_dataset(data, config.batch_size))
    if chief:
        save_model_atomically(autoencoder, path)
    return autoencoder


def _fingerprint(model, data):
    """What the cached latents depend on: the images (hashed a batch at a
    time) and the autoencoder's weights."""

    images = hashlib.blake2b(digest_size=16)
    for start in range(0, len(data.images), 256):
        images.update(np.ascontiguousarray(data.images[start : start + 256]).tobytes())
    release_pages(data.images)
    weights = hashlib.blake2b(digest_size=16)
    for weight in model.autoencoder.get_weights():
        weights.update(np.ascontiguousarray(weight).tobytes())
    return dict(count=len(data.images), image_shape=list(data.images.shape[1:]),
                latent_shape=list(model.sample_shape), images=images.hexdigest(),
                autoencoder=weights.hexdigest())  # fmt: skip


def encoded_once(model, data, run_dir, batch_size=64):
    """`data` with its images replaced by `model`'s scaled latents, encoded
    once into `RUN_DIR/latents.npy` and memory-mapped from there, so that
    training streams latents instead of encoding every batch at every step.

    A later start of the run (`--resume`) maps the same file when it was
    made from the same images with the same autoencoder (a fingerprint
    beside it says so), and encodes again otherwise. The file is written
    atomically. The latents are the posterior means, so training on them is
    training on the images (`DiffusionModel.to_space`).
    """

    path = os.path.join(run_dir, LATENTS_FILE)
    meta = path + ".json"
    fingerprint = _fingerprint(model, data)
    if os.path.exists(path) and os.path.exists(meta):
        try:
            with open(meta) as handle:
                same = json.load(handle) == fingerprint
        except (OSError, ValueError):
            same = False
        if same:
            return dataclasses.replace(data, images=np.load(path, mmap_mode="r"))
    os.makedirs(run_dir, exist_ok=True)
    temporary = os.path.join(run_dir, f".tmp_{LATENTS_FILE}")
    shape = (len(data.images),) + tuple(model.sample_shape)
    latents = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
    for start in range(0, len(data.images), batch_size):
        batch = np.asarray(data.images[start : start + batch_size], np.float32) / 255.0
        latents[start : start + len(batch)] = model.encode_images(batch, batch_size)
    release_pages(data.images)
    latents.flush()
    del latents
    os.replace(temporary, path)
    with open(meta + ".tmp", "w") as handle:
        json.dump(fingerprint, handle)
    os.replace(meta + ".tmp", meta)
    return dataclasses.replace(data, images=np.load(path, mmap_mode="r"))
