"""The pixel ranges Keras users feed `adapt` and `fit`: uint8, float 0..255
(`keras.utils.image_dataset_from_directory`), float [0, 1], numpy arrays,
`(image, label)` and tfds-style dicts all train the same model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, blob_images, write_png_folder
from diffusion_keras import DiffusionModel
from diffusion_keras.utils.pixels import pixels_in_unit_range

UINT8 = np.round(blob_images(32, 16, seed=0) * 255).astype(np.uint8)
UNIT = UINT8.astype("float32") / np.float32(255)  # what every other form should become


def test_every_range_becomes_unit_floats():
    as_unit = lambda x: np.asarray(pixels_in_unit_range(x))
    np.testing.assert_array_equal(as_unit(UNIT), UNIT)  # [0, 1] floats are left as they are
    # Divided by 255: exactly on TensorFlow and PyTorch, within one float32
    # ulp under JAX (XLA multiplies by the reciprocal).
    np.testing.assert_array_max_ulp(as_unit(UINT8.astype("float32")), UNIT, maxulp=1)
    np.testing.assert_array_max_ulp(as_unit(UINT8.astype("float64")), UNIT, maxulp=1)
    np.testing.assert_array_max_ulp(as_unit(UINT8), UNIT, maxulp=2)
    np.testing.assert_array_max_ulp(as_unit(UINT8.astype("uint16") * 257), UNIT, maxulp=2)
    # Augmented [0, 1] images that overshoot a little are not mistaken for 0..255.
    np.testing.assert_array_equal(as_unit(UNIT * 1.2), UNIT * 1.2)


def train(data, steps=4, validation_data=None, **model_kwargs):
    """A tiny model adapted to and trained on `data` (a dataset or an array);
    returns `(model, seeded samples, last losses)`."""
    model = DiffusionModel(**TINY, seed=0, **model_kwargs)
    model.adapt(data)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    fit_args = dict(epochs=1, verbose=0, validation_data=validation_data)
    if isinstance(data, np.ndarray):
        history = model.fit(data, batch_size=8, shuffle=False, **fit_args)
    else:
        history = model.fit(data, steps_per_epoch=steps, **fit_args)
    return model, model.generate(4, 5, seed=0), {k: v[-1] for k, v in history.history.items()}


def batched(images, labels=None):
    elements = images if labels is None else (images, labels)
    return tf.data.Dataset.from_tensor_slices(elements).batch(8)


@pytest.fixture(scope="module")
def unit_runs():
    """The reference: [0, 1] floats, as a dataset and as a numpy array (the
    normalizer's statistics over batches and over one array differ in the
    last bits, so each form has its own reference)."""
    return {"dataset": train(batched(UNIT))[1:], "numpy": train(UNIT)[1:]}


@pytest.mark.slow
def test_image_dataset_from_directory_trains_as_the_data_divided_by_255(tmp_path):
    # The first thing a Keras user writes: float32 pixels in 0..255.
    write_png_folder(tmp_path / "images", 32, size=16)
    load = lambda: keras.utils.image_dataset_from_directory(
        tmp_path / "images", labels=None, image_size=(16, 16), batch_size=8, shuffle=False
    )
    assert float(next(iter(load())).numpy().max()) > 1.5
    with pytest.warns(UserWarning, match="pixels in 0..255"):
        model, images, losses = train(load())
    _, divided, divided_losses = train(load().map(lambda x: x / 255.0))
    if keras.backend.backend() == "jax":
        # XLA divides by multiplying with the reciprocal: the last bit may differ.
        np.testing.assert_allclose(images, divided, atol=1e-4)
        assert losses == pytest.approx(divided_losses, rel=1e-5)
    else:
        np.testing.assert_array_equal(images, divided)
        assert losses == divided_losses
    # What made the samples garbage before: a normalizer fitted to 0..255.
    mean = np.asarray(model.normalizer.adapt_mean).ravel()
    np.testing.assert_allclose(mean, UNIT.mean(axis=(0, 1, 2)), atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, data, exact",
    [
        ("float 0..255", batched(UINT8.astype("float32")), True),
        ("uint8 tensors", batched(UINT8), False),
        ("tfds-style dicts", batched({"image": UINT8, "label": np.zeros(32, "int64")}), False),
        ("numpy float 0..255", UINT8.astype("float32"), True),
        ("numpy uint8", UINT8, False),
    ],
)
def test_every_pixel_range_trains_the_same_model(unit_runs, name, data, exact):
    _, images, losses = train(data)
    expected_images, expected_losses = unit_runs["numpy" if "numpy" in name else "dataset"]
    if exact and keras.backend.backend() != "jax":  # XLA: see the first test
        # Divided by 255 in the graph as numpy divides: the same bits.
        np.testing.assert_array_equal(images, expected_images, err_msg=name)
        assert losses == expected_losses, name
        return
    # uint8 / 255 in a graph may round the last bit unlike numpy; four steps of
    # training keep that near float32 rounding.
    np.testing.assert_allclose(images, expected_images, atol=1e-4, err_msg=name)
    for key, value in expected_losses.items():
        assert losses[key] == pytest.approx(value, rel=1e-5), (name, key)


@pytest.mark.slow
def test_conditional_image_label_batches_and_validation_data_take_uint8():
    labels = np.arange(32, dtype="int32") % 2
    conditional = dict(num_classes=2, class_names=["a", "b"])
    _, images, losses = train(
        batched(UINT8, labels), validation_data=batched(UINT8, labels), **conditional
    )
    _, unit_images, unit_losses = train(
        batched(UNIT, labels), validation_data=batched(UNIT, labels), **conditional
    )
    np.testing.assert_allclose(images, unit_images, atol=1e-4)
    assert losses["val_n_loss"] == pytest.approx(unit_losses["val_n_loss"], rel=1e-5)
    assert 0.0 < losses["val_n_loss"] < 2.0
