"""The autoencoder of a latent run (`train.py --latent`): loaded, or trained first.

A latent `DiffusionModel` holds a frozen copy of its autoencoder, so its
`.keras` file is all `generate.py` needs. The run keeps the autoencoder it
trained in `RUN_DIR/autoencoder.keras`, so that a run started again before its
first checkpoint does not train it twice, and another run can reuse it with
`--autoencoder PATH`.
"""

import os

import keras

from diffusion_keras.autoencoder import Autoencoder
from diffusion_keras.callbacks import save_model_atomically
from diffusion_keras.data import image_dataset, steps_per_epoch, train_dataset
from diffusion_keras.errors import TrainingError

AUTOENCODER_FILE = "autoencoder.keras"
AUTOENCODER_LEARNING_RATE = 1e-3


def autoencoder_for(config, data, run_dir, verbose="auto", chief=True):
    """`config.autoencoder` loaded when given, else `RUN_DIR/autoencoder.keras`
    when an earlier start of this run saved it, else a new one trained on
    `data` for `config.autoencoder_epochs` epochs, its latent scale measured
    on `data`, saved there (by the chief; atomically)."""
    from diffusion_keras.saving import load_autoencoder

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
    autoencoder.compile(optimizer=keras.optimizers.Adam(AUTOENCODER_LEARNING_RATE))
    dataset = train_dataset(
        data, config.batch_size, config.dataset_repetitions, seed=config.seed,
        flip=config.flip, epochs=config.autoencoder_epochs,
    )  # fmt: skip
    steps = steps_per_epoch(data, config.batch_size, config.dataset_repetitions)
    print(f"training the autoencoder: {config.autoencoder_epochs} epochs of {steps} steps")
    autoencoder.fit(
        dataset, epochs=config.autoencoder_epochs, steps_per_epoch=steps, verbose=verbose,
        shuffle=False,
    )  # fmt: skip
    autoencoder.measure_latent_scale(image_dataset(data, config.batch_size))
    if chief:
        save_model_atomically(autoencoder, path)
    return autoencoder
