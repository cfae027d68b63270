"""Pixel ranges: what Keras pipelines give, and how the models read them.

`keras.utils.image_dataset_from_directory` yields float32 pixels in 0..255,
tensorflow-datasets and `tf.io.decode_*` yield uint8, and this package's own
pipelines yield float32 in [0, 1]. The models take all three, and read them
the same way in `adapt`, `fit` and `evaluate`.
"""

import sys
import warnings

import keras
import numpy as np
from keras import ops

# A float batch whose largest value is above this holds 0..255 pixels. Images
# in [0, 1] never reach it (brightness or contrast augmentation overshoots 1
# by a little); 0..255 images stay below it only when every pixel is 0 or 1,
# which is black either way.
FLOAT_0_255_THRESHOLD = 1.5


def images_of(data):
    """The images of what a Keras pipeline yields: images, `(images, labels)`,
    or a tfds-style `{"image": ..., "label": ...}` dict."""
    if isinstance(data, (tuple, list)):
        return data[0]
    if isinstance(data, dict):
        return data["image"]
    return data


def pixels_in_unit_range(images):
    """Images as float32 pixels in [0, 1], whatever range a Keras pipeline
    gives them in: uint8 (and uint16) by their type's largest value, floats
    as they are when in [0, 1], or divided by 255 when the batch's largest
    value is above 1.5 (`keras.utils.image_dataset_from_directory` yields
    float32 0..255). Other integer types are read as 0..255 numbers.
    Works in a compiled step: the decision is taken per batch in the graph.
    """
    # The type as given: a backend may hold uint16 in a wider type (PyTorch).
    dtype = keras.backend.standardize_dtype(getattr(images, "dtype", "float32"))
    images = ops.convert_to_tensor(images)
    if dtype in ("uint8", "uint16"):
        return ops.cast(images, "float32") / float(np.iinfo(dtype).max)
    images = ops.cast(images, "float32")
    divisor = ops.where(ops.max(images) > FLOAT_0_255_THRESHOLD, 255.0, 1.0)
    return images / divisor


def tf_pixels_in_unit_range(images):
    """`pixels_in_unit_range` in TensorFlow ops, for `tf.data` pipelines,
    which run TensorFlow whatever the Keras backend."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if images.dtype in (tf.uint8, tf.uint16):
        return tf.cast(images, "float32") / float(images.dtype.max)
    images = tf.cast(images, "float32")
    divisor = tf.where(tf.reduce_max(images) > FLOAT_0_255_THRESHOLD, 255.0, 1.0)
    return images / divisor


def warn_about_pixel_range(images):
    """One warning when `images` are floats in 0..255 (uint8 is unambiguous)."""
    images = np.asarray(images)
    if images.dtype.kind == "f" and images.size and images.max() > FLOAT_0_255_THRESHOLD:
        warnings.warn(
            f"images are {images.dtype} pixels in 0..255 (as "
            "keras.utils.image_dataset_from_directory gives them); DiffusionModel "
            "divides every batch whose largest value is above 1.5 by 255",
            stacklevel=3,
        )


def is_tf_dataset(data):
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)
