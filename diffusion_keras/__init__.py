"""diffusion_keras: the denoising diffusion model of *Generative Deep Learning*
(2nd ed.), chapter 8, for Keras 3.

The public API is re-exported here (`dk.DiffusionModel`, `dk.train`,
`dk.load_model`, ...). It is imported on first use, so that `import
diffusion_keras` and the command-line tools start without TensorFlow: the
CLIs parse their arguments before anything heavy loads. The Keras classes are
registered as soon as Keras is imported, so `keras.models.load_model` reads
this package's files after `import diffusion_keras`.

The sub-packages, lowest layer first (each imports only from those before it;
`tests/test_layout.py` checks it):

| sub-package | holds |
|---|---|
| `utils` | errors, precision, pixels, image files, quiet imports, CPU runtime, Keras backends |
| `config` | every setting: name, default, choices, help (no TensorFlow) |
| `diffusion` | schedules, training-time sampling and loss weighting, prediction targets |
| `nn` | layers, attention, the U-Net |
| `data` | image folders, tfds, built-in flowers and captions, the image cache |
| `sampling` | update rules, steps and noise streams, inpainting steps, the loop, guidance |
| `editing` | image-to-image, inpainting, denoising; edit files |
| `models` | `DiffusionModel` and its parts, autoencoder, text encoder, classifier, saving |
| `metrics` | KID, FID, Inception score |
| `training` | runs, callbacks, checkpoints, preemption, distribution |
| `cli` | `train.py`, `generate.py` |
"""

import importlib
import importlib.util
import sys

from diffusion_keras.utils.runtime import configure_before_tensorflow

configure_before_tensorflow()  # oneDNN kernels on x86 CPUs: read once, at TensorFlow's import

__version__ = "0.3.0"

# Public name -> the module that defines it.
_API = {
    "Autoencoder": "diffusion_keras.models.autoencoder",
    "ContrastivePretrainer": "diffusion_keras.training.clip",
    "DiffusionModel": "diffusion_keras.models.diffusion_model",
    "ImageData": "diffusion_keras.data.datasets",
    "NoiseClassifier": "diffusion_keras.models.classifier",
    "SCHEDULES": "diffusion_keras.diffusion.schedules",
    "SinusoidalEmbedding": "diffusion_keras.nn.layers",
    "TextEncoder": "diffusion_keras.models.text",
    "TrainConfig": "diffusion_keras.config.run",
    "build_unet": "diffusion_keras.nn.unet",
    "cosine_schedule": "diffusion_keras.diffusion.schedules",
    "get_schedule": "diffusion_keras.diffusion.schedules",
    "linear_schedule": "diffusion_keras.diffusion.schedules",
    "load_autoencoder": "diffusion_keras.models.saving",
    "load_classifier": "diffusion_keras.models.saving",
    "load_images": "diffusion_keras.data.datasets",
    "load_model": "diffusion_keras.models.saving",
    "load_text_encoder": "diffusion_keras.models.saving",
    "offset_cosine_schedule": "diffusion_keras.diffusion.schedules",
    "save_grid": "diffusion_keras.utils.images",
    "save_images": "diffusion_keras.utils.images",
    "train": "diffusion_keras.training.run",
    "train_dataset": "diffusion_keras.data.datasets",
    "train_text_encoder": "diffusion_keras.training.clip",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffusion_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


def register_keras_classes():
    """Imports every module that registers a Keras class of this package
    (`diffusion_keras>DiffusionModel` and the others), so that Keras's own
    loaders find them."""
    importlib.import_module("diffusion_keras.models.saving")


class _RegisterAfterKeras:
    """A one-shot import hook: once `keras` has been imported, register this
    package's Keras classes (importing them before would import TensorFlow)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            # Unless one of this package's modules is importing Keras itself
            # (it then registers its own classes as it loads).
            if not any(
                name.startswith("diffusion_keras.")
                and getattr(getattr(loaded, "__spec__", None), "_initializing", False)
                for name, loaded in list(sys.modules.items())
            ):
                register_keras_classes()

        spec.loader.exec_module = exec_and_register
        return spec


if "keras" in sys.modules:
    register_keras_classes()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
