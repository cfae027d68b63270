"""Layers of the book's U-Net: the sinusoidal noise embedding and the blocks.

The blocks are functions that add Keras layers to a functional graph (as in
the book); the only custom layers are `SinusoidalEmbedding` and
`FusedBatchNormalization`, both serializable.
"""

import math

import keras
import tensorflow as tf
from keras import layers, ops


@keras.saving.register_keras_serializable(package="diffusion_keras")
class SinusoidalEmbedding(layers.Layer):
    """Embeds a scalar (the noise variance) as sines and cosines.

    Frequencies are spaced logarithmically from `min_frequency` to
    `max_frequency`; the output concatenates `sin(2 pi f x)` then `cos(2 pi f x)`
    on the last axis. It replaces the book's `Lambda(sinusoidal_embedding)`,
    which cannot be cloned or saved in Keras 3.

    Args:
        embedding_dims: int. Output size, even. Defaults to 32.
        min_frequency: float. Lowest frequency. Defaults to 1.0.
        max_frequency: float. Highest frequency. Defaults to 1000.0.

    References:
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    - [Mildenhall et al., 2020](https://arxiv.org/abs/2003.08934)
    """

    def __init__(self, embedding_dims=32, min_frequency=1.0, max_frequency=1000.0, **kwargs):
        super().__init__(**kwargs)
        if embedding_dims < 2 or embedding_dims % 2:
            raise ValueError(f"embedding_dims must be an even number >= 2, got {embedding_dims}")
        if not 0 < min_frequency <= max_frequency:
            raise ValueError(
                "frequencies must satisfy 0 < min_frequency <= max_frequency, "
                f"got {min_frequency} and {max_frequency}"
            )
        self.embedding_dims = embedding_dims
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency

    def angular_speeds(self):
        frequencies = ops.exp(
            ops.linspace(
                math.log(self.min_frequency),
                math.log(self.max_frequency),
                self.embedding_dims // 2,
            )
        )
        return 2.0 * math.pi * ops.cast(frequencies, self.compute_dtype)

    def call(self, inputs):
        angles = self.angular_speeds() * ops.cast(inputs, self.compute_dtype)
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embedding_dims,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dims": self.embedding_dims,
                "min_frequency": self.min_frequency,
                "max_frequency": self.max_frequency,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="diffusion_keras")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's `BatchNormalization` with TensorFlow's fused kernel for images.

    Keras 3 normalises with separate ops (moments, then normalise) and upcasts
    bfloat16 and float16 inputs to float32 on the way; Keras 2, which the book
    ran on, used TensorFlow's fused batch norm. This layer does the same
    arithmetic as Keras 3's (batch statistics in float32, the biased variance
    in the moving average, the same momentum and epsilon) in one fused op per
    direction, in the input's precision, for 4D channels-last inputs; anything
    else (masks, renorm, `synchronized` statistics across replicas, other
    axes or backends) goes to Keras's own code. On a CPU it made the U-Net's
    training step 1.2x (float32) to 1.4x (bfloat16) faster (`bench/speed.py`).
    """

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3, [3], [-1])
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), "float32")
        offset = self.beta if self.center else tf.zeros((channels,), "float32")
        scale, offset = tf.cast(scale, "float32"), tf.cast(offset, "float32")
        inputs = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True
            )
            # The fused kernel returns the Bessel-corrected variance; Keras
            # averages the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
                is_training=False,
            )  # fmt: skip
        return outputs


class KernelInitializers:
    """Hands out Glorot-uniform initializers, each seeded from `seed` and a
    counter, so that the same seed builds the same network. With `seed=None`
    they are unseeded, as Keras's default."""

    def __init__(self, seed=None):
        self.seed = seed
        self.count = 0

    def __call__(self):
        if self.seed is None:
            return "glorot_uniform"
        self.count += 1
        return keras.initializers.GlorotUniform(seed=self.seed * 1000 + self.count)


BATCH_NORMS = ("fused", "keras")


def validate_batch_norm(kind):
    if kind not in BATCH_NORMS:
        raise ValueError(f"unknown batch norm {kind!r}; choose one of: {', '.join(BATCH_NORMS)}")


def batch_norm_layer(kind="fused", synchronized=False):
    """The U-Net's batch norm (no scale, no centre): `"fused"`
    (`FusedBatchNormalization`) or `"keras"` (Keras's own `BatchNormalization`,
    which the book's code builds on Keras 3 and models saved before the fused
    layer hold). With `synchronized`, batch statistics are taken over all
    replicas' batches."""
    validate_batch_norm(kind)
    layer = FusedBatchNormalization if kind == "fused" else layers.BatchNormalization
    return layer(center=False, scale=False, synchronized=synchronized)


def residual_block(x, width, initializers=None, synchronized=False, batch_norm="fused"):
    """Batch norm (no scale, no centre), two 3x3 convs, and a skip connection.

    A 1x1 conv matches the skip's width to `width` when they differ.
    `synchronized` and `batch_norm` are as in `batch_norm_layer`.
    """
    initializers = initializers or KernelInitializers()
    input_width = x.shape[-1]
    if input_width == width:
        residual = x
    else:
        residual = layers.Conv2D(width, kernel_size=1, kernel_initializer=initializers())(x)
    x = batch_norm_layer(batch_norm, synchronized)(x)
    x = layers.Conv2D(
        width,
        kernel_size=3,
        padding="same",
        activation="swish",
        kernel_initializer=initializers(),
    )(x)
    x = layers.Conv2D(width, kernel_size=3, padding="same", kernel_initializer=initializers())(x)
    return layers.Add()([x, residual])


def down_block(
    x, skips, width, block_depth, initializers=None, synchronized=False, batch_norm="fused"
):
    """`block_depth` residual blocks, each pushing its output onto `skips`, then
    2x2 average pooling."""
    for _ in range(block_depth):
        x = residual_block(x, width, initializers, synchronized, batch_norm)
        skips.append(x)
    return layers.AveragePooling2D(pool_size=2)(x)


def up_block(
    x, skips, width, block_depth, initializers=None, synchronized=False, batch_norm="fused"
):
    """2x bilinear upsampling, then `block_depth` residual blocks, each taking
    the last entry popped from `skips`."""
    x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
    for _ in range(block_depth):
        x = layers.Concatenate()([x, skips.pop()])
        x = residual_block(x, width, initializers, synchronized, batch_norm)
    return x
