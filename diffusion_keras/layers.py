"""Layers of the book's U-Net: the sinusoidal noise embedding and the blocks.

The blocks are functions that add built-in Keras layers to a functional graph
(as in the book), so the U-Net saves and clones with no custom code besides
`SinusoidalEmbedding`.
"""

import math

import keras
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


def residual_block(x, width, initializers=None, synchronized=False):
    """Batch norm (no scale, no centre), two 3x3 convs, and a skip connection.

    A 1x1 conv matches the skip's width to `width` when they differ. With
    `synchronized`, batch statistics are taken over all replicas' batches.
    """
    initializers = initializers or KernelInitializers()
    input_width = x.shape[-1]
    if input_width == width:
        residual = x
    else:
        residual = layers.Conv2D(width, kernel_size=1, kernel_initializer=initializers())(x)
    x = layers.BatchNormalization(center=False, scale=False, synchronized=synchronized)(x)
    x = layers.Conv2D(
        width,
        kernel_size=3,
        padding="same",
        activation="swish",
        kernel_initializer=initializers(),
    )(x)
    x = layers.Conv2D(width, kernel_size=3, padding="same", kernel_initializer=initializers())(x)
    return layers.Add()([x, residual])


def down_block(x, skips, width, block_depth, initializers=None, synchronized=False):
    """`block_depth` residual blocks, each pushing its output onto `skips`, then
    2x2 average pooling."""
    for _ in range(block_depth):
        x = residual_block(x, width, initializers, synchronized)
        skips.append(x)
    return layers.AveragePooling2D(pool_size=2)(x)


def up_block(x, skips, width, block_depth, initializers=None, synchronized=False):
    """2x bilinear upsampling, then `block_depth` residual blocks, each taking
    the last entry popped from `skips`."""
    x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
    for _ in range(block_depth):
        x = layers.Concatenate()([x, skips.pop()])
        x = residual_block(x, width, initializers, synchronized)
    return x
