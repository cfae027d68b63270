"""The book's U-Net noise predictor, with its sizes as arguments."""

import keras
from keras import layers

from diffusion_keras.config.model import BOOK_WIDTHS
from diffusion_keras.nn.attention import SpatialAttention
from diffusion_keras.nn.layers import (
    KernelInitializers,
    SinusoidalEmbedding,
    down_block,
    residual_block,
    up_block,
    validate_batch_norm,
)
from diffusion_keras.utils.precision import dtype_policy, validate_precision
from diffusion_keras.utils.seeds import derived_seed


def validate_unet_args(
    image_size, widths, block_depth, channels=3, embedding_dims=32, num_classes=0
):
    """Raises `ValueError` with one clear line when the U-Net cannot be built."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    widths = tuple(widths)
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(
            f"widths needs at least two positive numbers (down blocks, then the "
            f"middle), got {list(widths)}"
        )
    if block_depth < 1:
        raise ValueError(f"block depth must be >= 1, got {block_depth}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if embedding_dims < 2 or embedding_dims % 2:
        raise ValueError(f"embedding size must be even and >= 2, got {embedding_dims}")
    factor = 2 ** (len(widths) - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of {factor} "
            f"(2**{len(widths) - 1} for {len(widths) - 1} down blocks)"
        )


def build_unet(
    image_size=64,
    channels=3,
    widths=BOOK_WIDTHS,
    block_depth=2,
    embedding_dims=32,
    embedding_min_frequency=1.0,
    embedding_max_frequency=1000.0,
    name="unet",
    seed=None,
    precision="float32",
    synchronized_batch_norm=False,
    num_classes=0,
    batch_norm="fused",
    remat=False,
    attention_levels=(),
    attention_heads=4,
    cross_attention=False,
    context_shape=None,
):
    """Builds the U-Net that predicts the noise in a noisy image.

    Inputs are the noisy images `(batch, image_size, image_size, channels)` and
    their noise variances `(batch, 1, 1, 1)`. The variance is embedded with
    `SinusoidalEmbedding`, upsampled to the image size and concatenated to a 1x1
    conv of the image. `widths[:-1]` are the down blocks (each pushing
    `block_depth` outputs onto a skip list), `widths[-1]` the middle residual
    blocks, and the up blocks pop the skips in reverse. The output conv starts at
    zero, so an untrained network predicts no noise. The defaults are the book's
    network: 1,953,507 weights.

    Args:
        image_size: int. Height and width. Defaults to 64.
        channels: int. Image channels. Defaults to 3.
        widths: sequence of int. Widths of the down blocks, then the middle.
            Defaults to `(32, 64, 96, 128)`.
        block_depth: int. Residual blocks per down/up block, and in the middle.
            Defaults to 2.
        embedding_dims: int. Size of the noise embedding. Defaults to 32.
        embedding_min_frequency: float. Defaults to 1.0.
        embedding_max_frequency: float. Defaults to 1000.0.
        name: str. Model name. Defaults to `"unet"`.
        seed: int or None. Seeds the initial weights. Defaults to None.
        precision: str. `"float32"`, `"mixed_bfloat16"` or `"mixed_float16"`;
            the embedding and the output conv stay float32. Defaults to
            `"float32"`.
        synchronized_batch_norm: bool. Batch statistics over all replicas of a
            distribution strategy, so that N replicas train as one device.
            Defaults to False.
        num_classes: int. With N > 0 the network takes a third input, class
            labels `(batch,)` in 0..N, where N is the null class used for
            classifier-free guidance; each label is embedded (`embedding_dims`
            values), upsampled and concatenated as the noise embedding is.
            Defaults to 0 (unconditional, the book's).
        batch_norm: str. `"fused"` (TensorFlow's fused kernel, faster, the
            same arithmetic) or `"keras"` (Keras's `BatchNormalization`, as
            the book's code builds, and models saved before the fused layer
            hold). Defaults to `"fused"`.
        remat: bool. Each residual block is one `ResidualBlock` layer, which
            recomputes its batch norm and swish in the backward pass instead
            of keeping them: for the book's U-Net at batch 64 in bfloat16,
            about 30% less TensorFlow memory per training step for about 1.5%
            more time (2 EPYC cores), the same weights and arithmetic.
            Defaults to False (the book's graph of separate layers).
        attention_levels: sequence of int. Levels (0 is the first down block
            and the last up block, `len(widths) - 1` the middle) where each
            residual block is followed by a `SpatialAttention` block
            (self-attention over positions; LDM's attention resolutions).
            Defaults to `()` (none, the book's).
        attention_heads: int. Heads of those blocks. Defaults to 4.
        cross_attention: bool. With `num_classes`, the class is a one-token
            sequence that the attention levels cross-attend to (after their
            self-attention), instead of an embedding concatenated to the
            input. Defaults to False.
        context_shape: `(length, dims)` or None. With it the network takes a
            third input, a sequence of condition embeddings `(batch, length,
            dims)` (a caption's, from a `TextEncoder`): the attention levels
            cross-attend to it, and its first embedding (the caption's
            summary) is mapped to `embedding_dims` values and concatenated
            like the noise embedding (SDXL's pooled text conditioning).
            Needs `attention_levels`. Defaults to None.

    References:
    - [Ronneberger et al., 2015](https://arxiv.org/abs/1505.04597)
    - [Ho et al., 2020](https://arxiv.org/abs/2006.11239)
    """
    validate_unet_args(image_size, widths, block_depth, channels, embedding_dims, num_classes)
    validate_attention(attention_levels, len(widths), attention_heads, cross_attention, num_classes)
    if context_shape is not None:
        if num_classes:
            raise ValueError("a network takes classes or a context sequence, not both")
        if not attention_levels:
            raise ValueError("a context sequence needs attention levels to cross-attend from")
        context_shape = tuple(int(n) for n in context_shape)
    validate_precision(precision)
    validate_batch_norm(batch_norm)
    attention = (tuple(sorted(int(level) for level in attention_levels)), int(attention_heads),
                 bool(cross_attention))  # fmt: skip
    with dtype_policy(precision):
        return _build_unet(
            image_size, channels, [int(w) for w in widths], block_depth, embedding_dims,
            embedding_min_frequency, embedding_max_frequency, name, seed,
            synchronized_batch_norm, batch_norm, int(num_classes), bool(remat), attention,
            context_shape,
        )  # fmt: skip


def validate_attention(levels, num_widths, heads, cross_attention, num_classes):
    """Raises `ValueError` with one line for attention settings the U-Net cannot take."""
    bad = [level for level in levels if not 0 <= int(level) < num_widths]
    if bad:
        raise ValueError(
            f"attention levels must be in 0..{num_widths - 1} (one per width), got {bad}"
        )
    if int(heads) < 1:
        raise ValueError(f"attention heads must be >= 1, got {heads}")
    if cross_attention and not (levels and num_classes):
        raise ValueError("cross-attention needs attention levels and a conditional model")


def _build_unet(
    image_size, channels, widths, block_depth, embedding_dims,
    embedding_min_frequency, embedding_max_frequency, name, seed, synchronized, batch_norm,
    num_classes, remat, attention=((), 4, False), context_shape=None,
):  # fmt: skip
    attention_levels, heads, cross_attention = attention
    noisy_images = keras.Input(shape=(image_size, image_size, channels))
    noise_variances = keras.Input(shape=(1, 1, 1))
    inputs = [noisy_images, noise_variances]

    initializers = KernelInitializers(seed)
    x = layers.Conv2D(widths[0], kernel_size=1, kernel_initializer=initializers())(noisy_images)
    # The embedding is computed in float32 whatever the precision policy: its
    # highest frequencies would lose their phase in half precision.
    noise_embedding = SinusoidalEmbedding(
        embedding_dims,
        embedding_min_frequency,
        embedding_max_frequency,
        dtype="float32",
    )(noise_variances)
    noise_embedding = layers.UpSampling2D(size=image_size, interpolation="nearest")(noise_embedding)
    features = [x, noise_embedding]
    if num_classes:
        class_labels = keras.Input(shape=(), dtype="int32")
        inputs.append(class_labels)
        # One more row than classes: the last is the null class ("no label").
        class_embedding = layers.Embedding(
            num_classes + 1,
            embedding_dims,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=1.0, seed=derived_seed(seed, 1000)
            ),
        )(class_labels)
        if cross_attention:
            context = layers.Reshape((1, embedding_dims))(class_embedding)
        else:
            class_embedding = layers.Reshape((1, 1, embedding_dims))(class_embedding)
            features.append(layers.UpSampling2D(size=image_size)(class_embedding))
    if context_shape is not None:
        context = keras.Input(shape=context_shape)
        inputs.append(context)
        cross_attention = True
        summary = layers.Dense(embedding_dims, kernel_initializer=initializers())(context[:, 0])
        summary = layers.Reshape((1, 1, embedding_dims))(summary)
        features.append(layers.UpSampling2D(size=image_size)(summary))
    x = layers.Concatenate()(features)

    def attend_at(level):
        if level not in attention_levels:
            return None

        def attend(x):
            x = SpatialAttention(heads)(x)
            return SpatialAttention(heads)([x, context]) if cross_attention else x

        return attend

    skips = []
    block_args = (initializers, synchronized, batch_norm, remat)
    for level, width in enumerate(widths[:-1]):
        x = down_block(x, skips, width, block_depth, *block_args, attend=attend_at(level))
    middle = attend_at(len(widths) - 1)
    for _ in range(block_depth):
        x = residual_block(x, widths[-1], *block_args)
        x = middle(x) if middle else x
    for level in reversed(range(len(widths) - 1)):
        x = up_block(x, skips, widths[level], block_depth, *block_args, attend=attend_at(level))

    # The prediction (noise in the book; or image, or velocity), in float32 so
    # that the loss and the sampler's arithmetic stay exact under mixed precision.
    outputs = layers.Conv2D(channels, kernel_size=1, kernel_initializer="zeros", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
