"""Trains a tiny model, or samples every kind of image from one, on the Keras
backend of this process (`KERAS_BACKEND`): the worker of `test_backends.py`.

    KERAS_BACKEND=jax python tests/backend_images.py train MODEL.keras
    KERAS_BACKEND=torch python tests/backend_images.py images MODEL.keras OUT.npz

`train` fits a tiny class-conditional model for a few steps and saves it;
`images` loads a model file and writes 16 images of each kind of sampling to
`OUT.npz`: the default solver, the book's DDIM, stochastic DDIM,
classifier-free guidance, image-to-image, inpainting with RePaint's
resampling, and denoising.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `conftest`, run as a script

import numpy as np  # noqa: E402

from conftest import blob_images, tiny_model  # noqa: E402

COUNT = 16


def train(path):
    import keras

    images = blob_images(64)
    labels = (images[..., 0].mean(axis=(1, 2)) > images[..., 2].mean(axis=(1, 2))).astype("int32")
    model = tiny_model(num_classes=2, seed=5)
    model.adapt(images)
    model.optimizer.learning_rate.assign(3e-3)
    model.fit(images, labels, batch_size=16, epochs=2, verbose=0, shuffle=False)
    model.save(path)
    print(keras.backend.backend(), "trained", int(keras.ops.convert_to_numpy(model.train_steps)))


def images(path, out):
    import keras

    import diffusion_keras as dk

    model = dk.load_model(path)
    size = model.image_size
    originals = blob_images(COUNT, size, seed=9)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    classes = [i % 2 for i in range(COUNT)]
    results = {
        "default": model.generate(COUNT, 5, seed=1, sampler="dpmpp_2m", spacing="log_snr"),
        "ddim_20": model.generate(COUNT, 20, seed=1),
        "ddim_eta_1": model.generate(COUNT, 10, seed=1, eta=1.0),
        "guidance": model.generate(COUNT, 5, seed=1, sampler="dpmpp_2m", spacing="log_snr",
                                   class_labels=classes, guidance_scale=3.0),  # fmt: skip
        "image_to_image": model.edit(originals, strength=0.6, diffusion_steps=10, seed=1),
        "inpainting": model.edit(originals, mask=mask, resample=2, diffusion_steps=10, seed=1),
        "denoising": model.edit(np.clip(originals + 0.1, 0, 1), noise_level=0.1,
                                diffusion_steps=4, seed=1),  # fmt: skip
    }
    np.savez(out, **results)
    print(keras.backend.backend(), "wrote", sorted(results))


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    {"train": train, "images": images}[command](*paths)
