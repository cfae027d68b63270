import math

import keras
import numpy as np
import pytest

from diffusion_keras.layers import SinusoidalEmbedding


def test_embedding_values_match_the_formula():
    layer = SinusoidalEmbedding(32, 1.0, 1000.0)
    variances = np.array([0.0, 0.25, 0.9], np.float32).reshape(3, 1, 1, 1)
    out = np.asarray(layer(variances))
    assert out.shape == (3, 1, 1, 32)
    frequencies = np.exp(np.linspace(math.log(1.0), math.log(1000.0), 16))
    angles = 2 * math.pi * frequencies * variances
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    # Angles reach 2 pi 1000 x 0.9 = 5655 rad, where float32 steps by ~5e-4.
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # At variance 0 all sines are 0 and all cosines 1.
    np.testing.assert_allclose(out[0, 0, 0], [0.0] * 16 + [1.0] * 16, atol=1e-6)


def test_embedding_config_round_trip():
    layer = SinusoidalEmbedding(16, 2.0, 500.0, name="emb")
    clone = SinusoidalEmbedding.from_config(layer.get_config())
    assert (clone.embedding_dims, clone.min_frequency, clone.max_frequency) == (16, 2.0, 500.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    x = np.full((1, 1, 1, 1), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(layer(x)))


@pytest.mark.parametrize("dims", [0, 7])
def test_embedding_refuses_odd_sizes(dims):
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(dims)
