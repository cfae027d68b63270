"""Importing TensorFlow without its C++ start-up chatter, for the CLIs."""

import os
import sys

QUIET_VARIABLE = "DIFFUSION_KERAS_QUIET"


def import_tensorflow():
    """Imports TensorFlow. When the environment variable DIFFUSION_KERAS_QUIET
    is 1 (train.py and generate.py set it), the C++ start-up lines (CPU
    features, missing CUDA; not all of them obey TF_CPP_MIN_LOG_LEVEL) go to
    /dev/null. Library users see TensorFlow's messages as usual."""
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
