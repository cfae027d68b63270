"""The text encoder: captions as token embeddings a U-Net can cross-attend to.

Stable Diffusion conditions its U-Net on the token embeddings of a CLIP text
encoder (Radford et al. 2021): a Transformer over the caption's tokens, trained
contrastively against an image encoder. `TextEncoder` is that encoder at toy
size, trained here (`diffusion_keras.training.clip`): Keras's own `TextVectorization`
turns a caption into word ids (its vocabulary saved with the model), a learned
start token is put before them, and pre-norm Transformer blocks, masked to the
caption's words, give one embedding per position. The start token's embedding
sums up the caption (`pooled`); an empty caption is the start token alone,
which is the "empty prompt" classifier-free guidance uses.

References:
- [Vaswani et al., 2017 (Transformer)](https://arxiv.org/abs/1706.03762)
- [Radford et al., 2021 (CLIP)](https://arxiv.org/abs/2103.00020)
"""

import collections
import re

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.utils.seeds import derived_seed

STANDARDIZE = "lower_and_strip_punctuation"


# What TextVectorization's "lower_and_strip_punctuation" removes (Keras's
# DEFAULT_STRIP_REGEX); a test checks the two read captions alike.
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')


def words_of(caption):
    """The words of `caption` as the encoder's tokenizer reads them."""
    return _PUNCTUATION.sub("", str(caption).lower()).split()


def build_vocabulary(captions, max_words=5000):
    """The words of `captions`, most frequent first, ties in alphabetical
    order (so the same captions always give the same word ids), at most
    `max_words` of them."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    counts = collections.Counter(word for caption in captions for word in words_of(caption))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:max_words]]


@keras.saving.register_keras_serializable(package="diffusion_keras")
class TransformerBlock(layers.Layer):
    """A pre-norm Transformer encoder block: masked self-attention, then an MLP,
    each added to its input."""

    def __init__(self, dims, heads=4, mlp_ratio=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        if dims < 1 or heads < 1 or dims % heads:
            raise ValueError(f"dims must be a positive multiple of heads, got {dims} and {heads}")
        self.dims, self.heads, self.mlp_ratio, self.seed = int(dims), int(heads), mlp_ratio, seed
        init = lambda k: keras.initializers.GlorotUniform(None if seed is None else seed + k)  # noqa: E731
        self.attention_norm = layers.LayerNormalization(epsilon=1e-5, name="attention_norm")
        self.attention = layers.MultiHeadAttention(
            heads, dims // heads, kernel_initializer=init(0), name="attention"
        )
        self.mlp_norm = layers.LayerNormalization(epsilon=1e-5, name="mlp_norm")
        self.mlp_in = layers.Dense(dims * mlp_ratio, activation="gelu", kernel_initializer=init(1),
                                   name="mlp_in")  # fmt: skip
        self.mlp_out = layers.Dense(dims, kernel_initializer=init(2), name="mlp_out")

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.dims * self.mlp_ratio,))
        self.built = True

    def call(self, x, key_mask=None):
        """`x` `(batch, length, dims)`; `key_mask` `(batch, length)`, True
        where a position may be attended to."""
        attention_mask = None if key_mask is None else ops.expand_dims(key_mask, 1)
        h = self.attention_norm(x)
        x = x + self.attention(h, h, attention_mask=attention_mask)
        return x + self.mlp_out(self.mlp_in(self.mlp_norm(x)))

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio, "seed": self.seed}  # fmt: skip


@keras.saving.register_keras_serializable(package="diffusion_keras")
class TextEncoder(keras.Model):
    """Captions to token embeddings `(batch, sequence_length + 1, dims)`.

    Args:
        vocabulary: list of str. The words it knows (`build_vocabulary`);
            others read as one unknown word. Saved with the model.
        sequence_length: int. Words kept per caption (longer ones are cut).
            Defaults to 24.
        dims: int. Embedding size. Defaults to 64.
        depth: int. Transformer blocks. Defaults to 2.
        heads: int. Attention heads. Defaults to 4.
        seed: int or None. Seeds the initial weights.
    """

    def __init__(self, vocabulary, sequence_length=24, dims=64, depth=2, heads=4, seed=None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        vocabulary = [str(word) for word in vocabulary]
        if not vocabulary or len(set(vocabulary)) != len(vocabulary) or "" in vocabulary:
            raise ValueError("vocabulary must be a list of different, non-empty words")
        if sequence_length < 1 or depth < 1:
            raise ValueError(
                f"sequence_length and depth must be >= 1, got {sequence_length} and {depth}"
            )
        self.vocabulary = vocabulary
        self.sequence_length, self.dims, self.depth = int(sequence_length), int(dims), int(depth)
        self.heads, self.seed = int(heads), seed
        self.tokenizer = layers.TextVectorization(
            standardize=STANDARDIZE,
            vocabulary=vocabulary,
            output_sequence_length=self.sequence_length,
            name="tokenizer",
        )
        normal = lambda k: keras.initializers.RandomNormal(  # noqa: E731
            stddev=0.02, seed=derived_seed(seed, 100, k)
        )
        # Word ids: 0 pads, 1 is an unknown word, then the vocabulary.
        self.token_embedding = layers.Embedding(
            len(vocabulary) + 2, self.dims, embeddings_initializer=normal(0), name="tokens"
        )
        self.start = self.add_weight(shape=(1, 1, self.dims), initializer=normal(1), name="start")
        self.positions = self.add_weight(
            shape=(1, self.sequence_length + 1, self.dims), initializer=normal(2), name="positions"
        )
        self.blocks = [
            TransformerBlock(
                self.dims,
                self.heads,
                seed=derived_seed(seed, 1, 10 * i),
                name=f"block_{i}",
            )  # fmt: skip
            for i in range(self.depth)
        ]
        self.final_norm = layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.build((None, self.sequence_length))

    def build(self, input_shape):
        # The tokenizer has no weights; built, so that JAX's and PyTorch's
        # `fit` find every layer of a model that holds this one built.
        self.tokenizer.build((None,))
        self.tokenizer._lookup_layer.built = True
        self.token_embedding.build((None, self.sequence_length))
        shape = (None, self.sequence_length + 1, self.dims)
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)
        self.built = True

    @property
    def context_shape(self):
        """The shape of one caption's embeddings: `(sequence_length + 1, dims)`."""
        return (self.sequence_length + 1, self.dims)

    def tokenize(self, captions):
        """Word ids int32 `(n, sequence_length)` of a caption or a list of them
        (0 pads; the empty caption is all zeros)."""
        if isinstance(captions, str):
            captions = [captions]
        captions = [str(caption) for caption in captions]
        if not captions:
            return np.zeros((0, self.sequence_length), np.int32)
        return ops.convert_to_numpy(self.tokenizer(np.array(captions, dtype=object))).astype(
            np.int32
        )

    def call(self, tokens):
        tokens = ops.cast(tokens, "int32")
        batch = ops.shape(tokens)[0]
        start = ops.broadcast_to(ops.cast(self.start, "float32"), (batch, 1, self.dims))
        x = ops.concatenate([start, ops.cast(self.token_embedding(tokens), "float32")], axis=1)
        x = x + ops.cast(self.positions, "float32")
        mask = ops.concatenate([ops.ones((batch, 1), "bool"), ops.not_equal(tokens, 0)], axis=1)
        for block in self.blocks:
            x = block(x, key_mask=mask)
        return self.final_norm(x)

    def pooled(self, tokens):
        """One vector per caption `(batch, dims)`: the start token's embedding."""
        return self(tokens)[:, 0]

    def encode(self, captions):
        """`tokenize`, then the embeddings, as a numpy array."""
        return ops.convert_to_numpy(self(self.tokenize(captions)))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary": list(self.vocabulary),
            "sequence_length": self.sequence_length,
            "dims": self.dims,
            "depth": self.depth,
            "heads": self.heads,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
