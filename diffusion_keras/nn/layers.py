"""Layers of the book's U-Net: the sinusoidal noise embedding and the blocks.

The blocks are functions that add Keras layers to a functional graph (as in
the book). The custom layers, all serializable, are `SinusoidalEmbedding`,
`FusedBatchNormalization` and `ResidualBlock` (a residual block that trains
in less memory).
"""

import math

import keras
from keras import layers, ops

from diffusion_keras.config.choices import BATCH_NORMS
from diffusion_keras.utils.seeds import derived_seed


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
        import tensorflow as tf

        if training and self.trainable:
            outputs, mean, variance = self.normalize_with_batch_statistics(inputs)
            self.update_moving_statistics(mean, variance)
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(inputs, self.compute_dtype), *self._scale_and_offset(inputs),
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
            is_training=False,
        )  # fmt: skip
        return outputs

    def _scale_and_offset(self, inputs):
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), "float32")
        offset = self.beta if self.center else tf.zeros((channels,), "float32")
        return tf.cast(scale, "float32"), tf.cast(offset, "float32")

    def normalize_with_batch_statistics(self, inputs):
        """Training-mode normalisation without touching the moving statistics:
        `(outputs, batch mean, biased batch variance)`, for 4D channels-last
        inputs (see `update_moving_statistics`); TensorFlow only."""
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(inputs, self.compute_dtype), *self._scale_and_offset(inputs),
            epsilon=self.epsilon, is_training=True,
        )  # fmt: skip
        # The fused kernel returns the Bessel-corrected variance; Keras
        # averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        return outputs, mean, variance * (count - 1.0) / tf.maximum(count, 1.0)

    def update_moving_statistics(self, mean, variance):
        """Moves the moving mean and variance towards a batch's, as Keras does."""
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))


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
        return keras.initializers.GlorotUniform(seed=derived_seed(self.seed, 1000, self.count))


def validate_batch_norm(kind):
    if kind not in BATCH_NORMS:
        raise ValueError(f"unknown batch norm {kind!r}; choose one of: {', '.join(BATCH_NORMS)}")


def batch_norm_layer(kind="fused", synchronized=False, **kwargs):
    """The U-Net's batch norm (no scale, no centre): `"fused"`
    (`FusedBatchNormalization`) or `"keras"` (Keras's own `BatchNormalization`,
    which the book's code builds on Keras 3 and models saved before the fused
    layer hold). With `synchronized`, batch statistics are taken over all
    replicas' batches. `kwargs` go to the layer (e.g. `dtype`)."""
    validate_batch_norm(kind)
    layer = FusedBatchNormalization if kind == "fused" else layers.BatchNormalization
    return layer(center=False, scale=False, synchronized=synchronized, **kwargs)


def recompute(function):
    """`function` with a gradient that recomputes it from its inputs in the
    backward pass instead of keeping its intermediate tensors (gradient
    checkpointing, as `tf.recompute_grad`). The recomputation waits for the
    incoming gradients through control dependencies, so it runs when they
    arrive, late in the backward pass; `tf.recompute_grad` adds a zero to
    every input for that, a full elementwise pass over each.

    `function` takes and returns tensors (a tuple for several); the
    variables it reads get gradients too. For graph mode (`tf.function`),
    where unused recomputed tensors are pruned. TensorFlow only: on the
    other backends `ResidualBlock` trains as separate layers would.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def wrapped(*inputs):
        outputs = function(*inputs)

        def gradient(*output_gradients, variables=None):
            flat_outputs = tf.nest.flatten(outputs)
            output_gradients = [
                tf.zeros_like(y) if g is None else g for y, g in zip(flat_outputs, output_gradients)
            ]
            with tf.control_dependencies(output_gradients):
                replayed = [tf.identity(x) for x in inputs]
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(replayed)
                tape.watch(variables)
                recomputed = tf.nest.flatten(function(*replayed))
            gradients = tape.gradient(
                recomputed,
                replayed + variables,
                output_gradients=output_gradients,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            input_gradients = gradients[: len(replayed)]
            if not variables:
                return input_gradients
            return input_gradients, gradients[len(replayed) :]

        return outputs, gradient

    # Called as is: AutoGraph would convert the function under the custom
    # gradient and lose the gradient.
    @tf.autograph.experimental.do_not_convert
    def call(*inputs):
        return wrapped(*inputs)

    return call


@keras.saving.register_keras_serializable(package="diffusion_keras")
class ResidualBlock(layers.Layer):
    """`residual_block` as one layer that can train in less memory.

    The same layers and arithmetic: batch norm (no scale, no centre), a 3x3
    conv and swish, a 3x3 conv, plus the input (through a 1x1 conv when the
    widths differ). The difference is what training keeps for the backward
    pass. Built as separate layers, each keeps its input: the block input,
    the normalised input, the first conv's output and its swish, four
    activations per block (and an up block's upsampled and concatenated
    input besides). With `remat`, training keeps the block's inputs as they
    arrive and the first conv's output. The backward pass recomputes the
    upsampling, concatenation, batch norm and swish from them (cheap
    elementwise work); the convolutions are
    not recomputed, because their gradients need only their inputs
    (TensorFlow prunes the recomputed conv outputs, which nothing reads).
    The moving statistics are updated once, outside the recomputed part.

    Recomputation needs the fused batch norm on 4D inputs; with Keras's
    `BatchNormalization` (`batch_norm="keras"` or `synchronized`) the block
    trains as separate layers would.

    Args:
        width: int. Output channels.
        batch_norm: str. `"fused"` or `"keras"`, as in `batch_norm_layer`.
        synchronized: bool. Batch statistics over all replicas.
        remat: bool. Recompute the batch norm and swish in the backward pass.
            Defaults to True.
        kernel_initializers: three initializers (the 1x1 conv's, used only
            when the widths differ, then the two 3x3 convs'); not saved, since
            loading replaces the weights. Defaults to Glorot uniform.
        upsample: bool. The block takes `[x, skip]` (an up block's first
            block): `x` is upsampled 2x (bilinear) and concatenated with
            `skip` first. Without it, a list input is concatenated as is.
            Defaults to False.

    References:
    - [Chen et al., 2016](https://arxiv.org/abs/1604.06174)
    """

    def __init__(
        self,
        width,
        batch_norm="fused",
        synchronized=False,
        remat=True,
        kernel_initializers=None,
        upsample=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_batch_norm(batch_norm)
        self.width = int(width)
        self.batch_norm = batch_norm
        self.synchronized = bool(synchronized)
        self.remat = bool(remat)
        self.upsample = bool(upsample)
        initializers = list(kernel_initializers or [None] * 3)
        initializers = [i if i is not None else "glorot_uniform" for i in initializers]
        self._projection_initializer = initializers[0]
        policy = self.dtype_policy
        self.norm = batch_norm_layer(batch_norm, synchronized, dtype=policy)
        self.conv1 = layers.Conv2D(
            width,
            3,
            padding="same",
            activation="swish",
            kernel_initializer=initializers[1],
            dtype=policy,
        )
        self.conv2 = layers.Conv2D(
            width, 3, padding="same", kernel_initializer=initializers[2], dtype=policy
        )
        self.projection = None
        self.upsampling = None
        if self.upsample:
            self.upsampling = layers.UpSampling2D(2, interpolation="bilinear", dtype=policy)

    def build(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        shape = tuple(shapes[-1][:-1]) + (sum(int(s[-1]) for s in shapes),)
        if self.upsampling is not None:
            self.upsampling.build(tuple(shapes[0]))
        if shape[-1] != self.width:
            self.projection = layers.Conv2D(
                self.width,
                1,
                kernel_initializer=self._projection_initializer,
                dtype=self.dtype_policy,
            )
            self.projection.build(shape)
        self.norm.build(shape)
        self.conv1.build(shape)
        self.conv2.build(shape[:-1] + (self.width,))

    @staticmethod
    def _convolve(conv, inputs):
        # `conv(inputs)` without its activation, with `bias_add`, whose
        # gradient needs no input shape: nothing then reads the recomputed
        # convolution, and TensorFlow prunes it (a broadcasting add's
        # gradient would read its shape).
        import tensorflow as tf

        dtype = conv.compute_dtype
        outputs = tf.nn.convolution(
            ops.cast(inputs, dtype), ops.cast(conv.kernel, dtype), padding="SAME"
        )
        return tf.nn.bias_add(outputs, ops.cast(conv.bias, dtype))

    def _join(self, inputs):
        # Upsampling of the first input and concatenation (up blocks).
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if self.upsampling is not None:
            inputs[0] = self.upsampling(inputs[0])
        return inputs[0] if len(inputs) == 1 else ops.concatenate(inputs, axis=-1)

    def _first_half(self, *inputs):
        # Upsampling, concatenation, 1x1 conv, batch norm and the first conv
        # (its pre-activation), recomputed from `inputs` in the backward pass.
        x = self._join(inputs)
        normalized, mean, variance = self.norm.normalize_with_batch_statistics(x)
        outputs = (self._convolve(self.conv1, normalized), mean, variance)
        if self.projection is not None:
            outputs += (self._convolve(self.projection, x),)
        return outputs

    def _second_half(self, features):
        # Swish and the second conv, recomputed from `features`.
        return self._convolve(self.conv2, ops.silu(features))

    def recomputes(self, inputs, training):
        """Whether a call with these arguments trains with recomputation."""
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return bool(
            training
            and self.remat
            and self.norm.trainable
            and isinstance(self.norm, FusedBatchNormalization)
            and all(self.norm._fusable(x, None) for x in inputs)
        )

    def call(self, inputs, training=None):
        if self.recomputes(inputs, training):
            inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            features, mean, variance, *projected = recompute(self._first_half)(*inputs)
            self.norm.update_moving_statistics(mean, variance)
            x = recompute(self._second_half)(features)
            residual = projected[0] if projected else inputs[0]
        else:
            # The book's layers in order (the first conv with its swish).
            inputs = self._join(inputs)
            residual = inputs if self.projection is None else self.projection(inputs)
            x = self.conv2(self.conv1(self.norm(inputs, training=training)))
        return ops.add(x, ops.cast(residual, x.dtype))

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        return tuple(shapes[-1][:-1]) + (self.width,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width": self.width,
                "batch_norm": self.batch_norm,
                "synchronized": self.synchronized,
                "remat": self.remat,
                "upsample": self.upsample,
            }
        )
        return config


def residual_block(
    x, width, initializers=None, synchronized=False, batch_norm="fused", remat=False,
    upsample=False,
):  # fmt: skip
    """Batch norm (no scale, no centre), two 3x3 convs, and a skip connection.

    `x` is a tensor, or a list of tensors concatenated first (an up block's
    input and skip); with `upsample`, the first is upsampled 2x (bilinear)
    before that. A 1x1 conv matches the skip's width to `width` when they
    differ. `synchronized` and `batch_norm` are as in `batch_norm_layer`.
    Without `remat` the block is separate layers, as in the book; with it,
    one `ResidualBlock` that trains in less memory (the same weights, drawn
    from the same initializers, and the same arithmetic).
    """
    initializers = initializers or KernelInitializers()
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    input_width = sum(part.shape[-1] for part in parts)
    if remat:
        projection = initializers() if input_width != width else None
        block = ResidualBlock(
            width,
            batch_norm,
            synchronized,
            remat=True,
            kernel_initializers=(projection, initializers(), initializers()),
            upsample=upsample,
        )
        return block(parts if len(parts) > 1 else parts[0])
    if upsample:
        parts[0] = layers.UpSampling2D(size=2, interpolation="bilinear")(parts[0])
    x = layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
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
    x, skips, width, block_depth, initializers=None, synchronized=False, batch_norm="fused",
    remat=False, attend=None,
):  # fmt: skip
    """`block_depth` residual blocks (each followed by `attend`, if given),
    each pushing its output onto `skips`, then 2x2 average pooling."""
    for _ in range(block_depth):
        x = residual_block(x, width, initializers, synchronized, batch_norm, remat)
        x = attend(x) if attend else x
        skips.append(x)
    return layers.AveragePooling2D(pool_size=2)(x)


def up_block(
    x, skips, width, block_depth, initializers=None, synchronized=False, batch_norm="fused",
    remat=False, attend=None,
):  # fmt: skip
    """2x bilinear upsampling, then `block_depth` residual blocks (each
    followed by `attend`, if given), each taking the last entry popped from
    `skips`."""
    for i in range(block_depth):
        x = residual_block(
            [x, skips.pop()], width, initializers, synchronized, batch_norm, remat, upsample=i == 0
        )
        x = attend(x) if attend else x
    return x
