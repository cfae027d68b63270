"""Attention for the U-Net: self-attention over positions, cross-attention to tokens.

`SpatialAttention` treats a feature map `(batch, height, width, channels)` as
`height * width` tokens: normalised, attended by multi-head attention (to
themselves, or with `context` to a sequence of condition tokens), projected
and added back to the input. The output projection starts at zero, so a new
block is the identity and a network with attention starts as the one
without it. Latent diffusion puts self-attention after the residual blocks
at chosen resolutions and cross-attends there to the condition (a class
becomes a one-token sequence; text, a sequence of token embeddings).

References:
- [Vaswani et al., 2017 (attention)](https://arxiv.org/abs/1706.03762)
- [Rombach et al., 2022 (cross-attention conditioning)](https://arxiv.org/abs/2112.10752)
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="diffusion_keras")
class SpatialAttention(layers.Layer):
    """Multi-head attention over the positions of a feature map, with a residual.

    Call with `x` `(batch, height, width, channels)` for self-attention, or
    `[x, context]` with `context` `(batch, tokens, context_channels)` for
    cross-attention. `attention_scores(...)` returns the weights
    `(batch, heads, height * width, keys)` for pictures of what attends where.

    Args:
        num_heads: int. Attention heads. Defaults to 4.
        key_dim: int or None. Size of each head; None is channels / heads.
            Defaults to None.
    """

    def __init__(self, num_heads=4, key_dim=None, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_heads = int(num_heads)
        self.key_dim = None if key_dim is None else int(key_dim)

    def build(self, input_shape):
        cross = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        x_shape = input_shape[0] if cross else input_shape
        channels = int(x_shape[-1])
        key_dim = self.key_dim or max(channels // self.num_heads, 1)
        self.norm = layers.LayerNormalization(epsilon=1e-5, dtype=self.dtype_policy)
        self.attention = layers.MultiHeadAttention(
            self.num_heads, key_dim, output_shape=channels, dtype=self.dtype_policy
        )
        self.projection = layers.Dense(
            channels, kernel_initializer="zeros", dtype=self.dtype_policy
        )
        tokens = (x_shape[0], None, channels)
        self.norm.build(tokens)
        context = (input_shape[1][0], None, int(input_shape[1][-1])) if cross else tokens
        self.attention.build(tokens, context, context)
        self.projection.build(tokens)

    def _tokens(self, inputs):
        x, context = (inputs[0], inputs[1]) if isinstance(inputs, (list, tuple)) else (inputs, None)
        shape = ops.shape(x)
        tokens = self.norm(ops.reshape(x, (shape[0], shape[1] * shape[2], shape[3])))
        return x, shape, tokens, (tokens if context is None else context)

    def call(self, inputs):
        x, shape, tokens, context = self._tokens(inputs)
        attended = self.projection(self.attention(tokens, context, context))
        return x + ops.reshape(attended, shape)

    def attention_scores(self, inputs):
        """The attention weights `(batch, heads, height * width, keys)`."""
        if not self.built:
            self(inputs)
        _, _, tokens, context = self._tokens(inputs)
        _, scores = self.attention(tokens, context, context, return_attention_scores=True)
        return scores

    def compute_output_shape(self, input_shape):
        cross = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        return tuple(input_shape[0]) if cross else tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim)
        return config


def cross_attention_maps(model, prompts, noisy_images, noise_rates):
    """Where a text-conditional model's EMA U-Net looks for each token of the
    prompts, at every cross-attention block.

    Args:
        model: a `DiffusionModel` with a text encoder.
        prompts: a str, or one str per image.
        noisy_images: `(batch, size, size, channels)` in the model's space
            (normalised pixels, or latents), at `noise_rates`.
        noise_rates: `(batch, 1, 1, 1)`.

    Returns:
        A list of `(layer name, maps)`, from the first block to the last;
        `maps` is a numpy array `(batch, height, width, keys)`: the attention
        weights averaged over heads, which sum to 1 over the keys at each
        position. Key 0 is the start token, keys 1.. the prompt's words
        (`text.words_of`), then padding.
    """
    import numpy as np

    if getattr(model, "text_encoder", None) is None:
        raise ValueError("attention maps need a text-conditional model (a text encoder)")
    network = model.ema_network
    blocks = [
        layer
        for layer in network.layers
        if isinstance(layer, SpatialAttention) and isinstance(layer.input, (list, tuple))
    ]
    if isinstance(prompts, str):
        prompts = [prompts] * len(noisy_images)
    if len(prompts) != len(noisy_images):
        raise ValueError(f"got {len(prompts)} prompts for {len(noisy_images)} images")
    tokens = model.text_encoder.tokenize(list(prompts))
    inputs = model.network_inputs(
        ops.convert_to_tensor(noisy_images, "float32"),
        ops.convert_to_tensor(noise_rates, "float32"),
        tokens,
    )
    probe = keras.Model(network.inputs, [tensor for layer in blocks for tensor in layer.input])
    captured = probe(inputs, training=False)
    maps = []
    for index, layer in enumerate(blocks):
        x, context = captured[2 * index], captured[2 * index + 1]
        scores = ops.mean(ops.cast(layer.attention_scores([x, context]), "float32"), axis=1)
        height, width = int(x.shape[1]), int(x.shape[2])
        maps.append(
            (
                layer.name,
                np.reshape(ops.convert_to_numpy(scores), (-1, height, width, scores.shape[-1])),
            )
        )
    return maps
