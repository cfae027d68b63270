import math

import keras
import numpy as np
import pytest

from conftest import tensorflow_only
from diffusion_keras.nn.layers import SinusoidalEmbedding


def test_embedding_values_match_the_formula():
    layer = SinusoidalEmbedding(32, 1.0, 1000.0)
    variances = np.array([0.0, 0.25, 0.9], np.float32).reshape(3, 1, 1, 1)
    out = np.asarray(layer(variances))
    assert out.shape == (3, 1, 1, 32)
    frequencies = np.exp(np.linspace(math.log(1.0), math.log(1000.0), 16))
    angles = 2 * math.pi * frequencies * variances
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    # Angles reach 2 pi 1000 x 0.9 = 5655 rad, where float32 steps by ~5e-4
    # and a float32 `exp` within a few ulps of the frequency moves the angle
    # by up to ~2e-3 (XLA's, under JAX: 1.8e-3).
    np.testing.assert_allclose(out, expected, atol=2.5e-3)
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


FUSED = "FusedBatchNormalization fuses with TensorFlow's kernel (Keras's own layer elsewhere)"


@tensorflow_only(FUSED)
@pytest.mark.parametrize("center_and_scale", [False, True])
def test_fused_batch_norm_computes_what_keras_batch_norm_does(center_and_scale):
    import tensorflow as tf

    from diffusion_keras.nn.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 6, 6, 5)).astype(np.float32))
    options = dict(center=center_and_scale, scale=center_and_scale, momentum=0.9)
    fused, plain = FusedBatchNormalization(**options), keras.layers.BatchNormalization(**options)
    for layer in (fused, plain):
        layer.build(x.shape)
        if center_and_scale:
            layer.gamma.assign(rng.uniform(0.5, 2.0, 5).astype(np.float32))
            layer.beta.assign(rng.normal(size=5).astype(np.float32))
    fused.set_weights(plain.get_weights())
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(x))  # a gradient that is not trivially 0
        results.append((y, tape.gradient(loss, x), layer.moving_mean, layer.moving_variance))
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The moving statistics moved (biased variance, as Keras averages).
    assert np.abs(np.asarray(fused.moving_mean)).min() > 0.05
    np.testing.assert_allclose(
        np.asarray(fused(x, training=False)), np.asarray(plain(x, training=False)), atol=1e-5
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fused))
    assert type(restored) is FusedBatchNormalization and restored.momentum == 0.9


@tensorflow_only(FUSED)
def test_fused_batch_norm_keeps_bfloat16_and_falls_back_where_it_cannot_fuse():
    import tensorflow as tf

    from diffusion_keras.nn.layers import FusedBatchNormalization

    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    y = layer(x, training=True)
    assert y.dtype == tf.bfloat16
    expected = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + layer.epsilon)
    np.testing.assert_allclose(np.asarray(tf.cast(y, "float32")), expected, atol=0.05)
    assert layer(x, training=False).dtype == tf.bfloat16
    # Rank 2: Keras's own code.
    flat = FusedBatchNormalization()
    assert not flat._fusable(tf.zeros((4, 3)), None)
    assert flat(np.ones((4, 3), np.float32), training=True).shape == (4, 3)


def test_recompute_gives_the_same_values_and_gradients():
    import tensorflow as tf

    from diffusion_keras.nn.layers import recompute

    weight = tf.Variable(np.random.default_rng(2).normal(size=(3, 3)).astype(np.float32))
    x = tf.constant(np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32))

    def function(inputs):
        hidden = tf.nn.silu(inputs @ weight)
        return hidden * 2.0, tf.reduce_mean(hidden, axis=0)  # the second output unused

    @tf.function
    def gradients(wrapped):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(tf.square(wrapped(x)[0]))
        return [value] + tape.gradient(value, [x, weight])

    plain, rematerialized = gradients(function), gradients(recompute(function))
    for a, b in zip(plain, rematerialized):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert float(tf.reduce_sum(tf.abs(plain[2]))) > 0


def test_residual_block_config_round_trip():
    from diffusion_keras.nn.layers import ResidualBlock

    block = ResidualBlock(8, remat=True, upsample=True, name="block")
    restored = ResidualBlock.from_config(block.get_config())
    assert (restored.width, restored.remat, restored.upsample) == (8, True, True)
    x = np.zeros((1, 4, 4, 6), np.float32), np.zeros((1, 8, 8, 2), np.float32)
    assert tuple(restored(list(x)).shape) == (1, 8, 8, 8)
