"""Importing TensorFlow without its C++ start-up chatter, for the CLIs."""

import json
import os
import sys

QUIET_VARIABLE = "DIFFUSION_KERAS_QUIET"


def configured_backend():
    """The Keras backend this process will run on, as Keras decides it
    (`KERAS_BACKEND`, else `keras.json` in `KERAS_HOME` or `~/.keras`, else
    TensorFlow), without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def import_tensorflow(needed=False):
    """Imports TensorFlow, when the Keras backend is TensorFlow or `needed`
    (training's `tf.data` pipeline is needed on every backend; generating on
    JAX or PyTorch runs without TensorFlow installed). When the environment
    variable DIFFUSION_KERAS_QUIET is 1 (train.py and generate.py set it), the
    C++ start-up lines (CPU features, missing CUDA; not all of them obey
    TF_CPP_MIN_LOG_LEVEL) go to /dev/null. Library users see TensorFlow's
    messages as usual."""
    if not needed and configured_backend() != "tensorflow":
        return
    if "tensorflow" in sys.modules or os.environ.get(QUIET_VARIABLE) != "1":
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
