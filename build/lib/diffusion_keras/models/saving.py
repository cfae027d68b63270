"""Loading model files safely, with one-line errors."""

import json
import os
import zipfile

import keras

from diffusion_keras.models.autoencoder import Autoencoder
from diffusion_keras.models.classifier import NoiseClassifier
from diffusion_keras.models.diffusion_model import DiffusionModel
from diffusion_keras.models.text import TextEncoder
from diffusion_keras.utils.errors import ModelFileError
from diffusion_keras.utils.precision import resolve_precision


def load_model(path, compile=True, precision=None):
    """Loads a `DiffusionModel` saved with `model.save("x.keras")`.

    With `precision` (`"float32"`, `"mixed_bfloat16"`, `"mixed_float16"` or
    `"auto"`), the model is converted to it (uncompiled) when it was saved in
    another one.

    Keras's `safe_mode` stays on, so a shared model file cannot run code.
    Raises `ModelFileError` with one line when the file is missing, is not a
    `.keras` archive, is truncated, or holds some other model.
    """
    model = _load(path, DiffusionModel, compile)
    if precision is not None:
        model = model.with_precision(resolve_precision(precision))
    return model


def load_classifier(path, compile=False):
    """Loads a `NoiseClassifier` (`RUN_DIR/classifier.keras`), with the same
    checks and one-line `ModelFileError`s as `load_model`."""
    return _load(path, NoiseClassifier, compile)


def load_autoencoder(path, compile=False):
    """Loads an `Autoencoder` (`RUN_DIR/autoencoder.keras`), with the same
    checks and one-line `ModelFileError`s as `load_model`."""
    return _load(path, Autoencoder, compile)


def load_text_encoder(path):
    """Loads a `TextEncoder` (`RUN_DIR/text_encoder.keras`), with the same
    checks and one-line `ModelFileError`s as `load_model`."""

    return _load(path, TextEncoder, False)


def _load(path, cls, compile):
    if not os.path.exists(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise ModelFileError(
            f"{path!r} is a folder; pass the .keras file (e.g. RUN_DIR/model.keras)"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path!r} is not a Keras model file (.keras archive); is it truncated?"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, OSError):
        raise ModelFileError(f"{path!r} is a damaged or truncated Keras model file") from None
    name = f"{config.get('module', '')}>{config.get('class_name', '')}"
    registered = config.get("registered_name") or ""
    if registered != f"diffusion_keras>{cls.__name__}":
        raise ModelFileError(
            f"{path!r} holds a {registered or name!r}, not a diffusion_keras {cls.__name__}"
        )
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds here
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"could not load {path!r}: {first}") from None
    if not isinstance(model, cls):
        raise ModelFileError(f"{path!r} is not a {cls.__name__}")
    return model
