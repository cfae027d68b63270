import keras
import numpy as np
import pytest

from diffusion_keras.unet import build_unet


def test_book_unet_has_the_books_weight_count_and_shapes():
    unet = build_unet()
    assert unet.count_params() == 1_953_507
    assert [tuple(i.shape) for i in unet.inputs] == [(None, 64, 64, 3), (None, 1, 1, 1)]
    assert tuple(unet.output.shape) == (None, 64, 64, 3)
    names = [type(layer).__name__ for layer in unet.layers]
    assert "Lambda" not in names
    assert names.count("AveragePooling2D") == 3
    assert names.count("UpSampling2D") == 4  # the embedding's, then 3 up blocks


def test_untrained_unet_predicts_no_noise():
    unet = build_unet(image_size=16, widths=(8, 16), block_depth=1)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    variances = np.full((2, 1, 1, 1), 0.5, np.float32)
    np.testing.assert_array_equal(np.asarray(unet([images, variances])), 0.0)


def test_unet_clones_and_reloads(tmp_path):
    unet = build_unet(image_size=16, widths=(8, 16), block_depth=1)
    clone = keras.models.clone_model(unet)
    assert clone.count_params() == unet.count_params()
    path = str(tmp_path / "unet.keras")
    unet.save(path)
    assert keras.models.load_model(path).count_params() == unet.count_params()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30), "multiple of 8"),
        (dict(widths=(32,)), "at least two"),
        (dict(block_depth=0), "block depth"),
    ],
)
def test_impossible_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**kwargs)
