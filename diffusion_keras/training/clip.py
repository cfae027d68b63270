"""Contrastive caption-image pre-training (CLIP, Radford et al. 2021) of the text encoder.

A `ContrastivePretrainer` pairs a `TextEncoder` with a small convolutional
image encoder. Each batch of `(images, tokens)` pairs gives a matrix of
cosine similarities between every image and every caption, scaled by a learnt
temperature; the loss is the cross-entropy of finding each image's own
caption in its row and each caption's own image in its column. After it, the
text encoder is frozen and a text-conditional `DiffusionModel` cross-attends
to its token embeddings, as Stable Diffusion does with CLIP's.

`text_encoder_for` is what `train.py --captions` runs: it loads
`--text-encoder PATH`, or the run's own `RUN_DIR/text_encoder.keras`, or
trains one on the run's captions first.
"""

import os

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.data.datasets import ImageData, steps_per_epoch, train_dataset
from diffusion_keras.models.saving import load_text_encoder
from diffusion_keras.models.text import TextEncoder, build_vocabulary
from diffusion_keras.training.callbacks import save_model_atomically
from diffusion_keras.utils import backend
from diffusion_keras.utils.errors import DataError

TEXT_ENCODER_FILE = "text_encoder.keras"
CLIP_LEARNING_RATE = 1e-3
MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clips its learnt temperature at 1/100


def build_image_encoder(image_size, channels=3, dims=64, widths=(32, 64, 128), seed=None):
    """A small convolutional image encoder: strided 3x3 convolutions, global
    average pooling and a linear map to `dims`."""
    images = keras.Input((image_size, image_size, channels))
    x = images
    for i, width in enumerate(widths):
        init = keras.initializers.HeNormal(None if seed is None else seed + i)
        x = layers.Conv2D(width, 3, strides=2, padding="same", kernel_initializer=init)(x)
        x = layers.LayerNormalization(epsilon=1e-5)(x)
        x = layers.Activation("swish")(x)
    x = layers.GlobalAveragePooling2D()(x)
    init = keras.initializers.GlorotUniform(None if seed is None else seed + len(widths))
    return keras.Model(images, layers.Dense(dims, kernel_initializer=init)(x), name="image_encoder")


@keras.saving.register_keras_serializable(package="diffusion_keras")
class ContrastivePretrainer(keras.Model):
    """Trains a `TextEncoder` and an image encoder contrastively on
    `(images, tokens)` batches (images in [0, 1]).

    Args:
        text_encoder: the `TextEncoder` to train (trained in place).
        image_size: int. Height and width of the images.
        channels: int. Defaults to 3.
        embed_dims: int. Size of the shared space. Defaults to 64.
        seed: int or None. Seeds the image encoder and the projections.
    """

    def __init__(self, text_encoder, image_size, channels=3, embed_dims=64, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(text_encoder, dict):
            text_encoder = keras.saving.deserialize_keras_object(text_encoder)
        self.text_encoder = text_encoder
        self.image_size, self.channels = int(image_size), int(channels)
        self.embed_dims, self.seed = int(embed_dims), seed
        self.image_encoder = build_image_encoder(image_size, channels, embed_dims, seed=seed)
        init = keras.initializers.GlorotUniform(None if seed is None else seed + 99)
        self.text_projection = layers.Dense(embed_dims, use_bias=False, kernel_initializer=init,
                                            name="text_projection")  # fmt: skip
        self.text_projection.build((None, text_encoder.dims))
        # CLIP's initial temperature 0.07, learnt as log(1 / temperature).
        self.logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(np.log(1 / 0.07))),
            name="logit_scale",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def embed_images(self, images, training=False):
        features = self.image_encoder(ops.cast(images, "float32") * 2.0 - 1.0, training=training)
        return _unit(features)

    def embed_captions(self, tokens, training=False):
        return _unit(self.text_projection(self.text_encoder(tokens, training=training)[:, 0]))

    def logits(self, images, tokens, training=False):
        """Scaled cosine similarities `(images, captions)`."""
        scale = ops.exp(ops.minimum(self.logit_scale, MAX_LOGIT_SCALE))
        image_embeddings = self.embed_images(images, training)
        caption_embeddings = self.embed_captions(tokens, training)
        return scale * ops.matmul(image_embeddings, ops.transpose(caption_embeddings))

    def _loss(self, images, tokens, training):
        logits = self.logits(images, tokens, training)
        targets = ops.arange(ops.shape(logits)[0])
        image_loss = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        text_loss = keras.losses.sparse_categorical_crossentropy(
            targets, ops.transpose(logits), from_logits=True
        )
        loss = (ops.mean(image_loss) + ops.mean(text_loss)) / 2.0
        accuracy = ops.mean(ops.cast(ops.argmax(logits, axis=1) == targets, "float32"))
        return loss, accuracy

    def train_step(self, *args):
        # `(data)`, or under JAX `(state, data)` (`utils.backend.train_step`).
        return backend.train_step(
            self, args, lambda data: self._loss(*data, training=True), self._track
        )

    def _track(self, data, loss, accuracy):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, *args):
        return backend.test_step(
            self, args, lambda data: self._track(data, *self._loss(*data, training=False))
        )

    def retrieval_accuracy(self, images, captions):
        """The share of `captions` whose own image (same index) is the most
        similar of all `images`: caption-to-image top-1 retrieval."""
        tokens = self.text_encoder.tokenize(list(captions))
        logits = ops.convert_to_numpy(self.logits(np.asarray(images, np.float32), tokens))
        return float(np.mean(np.argmax(logits, axis=0) == np.arange(len(tokens))))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
            "image_size": self.image_size,
            "channels": self.channels,
            "embed_dims": self.embed_dims,
            "seed": self.seed,
        }


def _unit(x):
    x = ops.cast(x, "float32")
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-6)


def train_text_encoder(
    images, captions, epochs=10, batch_size=64, seed=0, sequence_length=24, dims=64, depth=2,
    heads=4, learning_rate=CLIP_LEARNING_RATE, verbose="auto",
):  # fmt: skip
    """A new `TextEncoder` over the words of `captions`, trained
    contrastively against the uint8 `images` (one caption each). Returns the
    `(text_encoder, pretrainer)`; the pretrainer measures retrieval."""

    if len(images) != len(captions):
        raise DataError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < batch_size:
        raise DataError(
            f"contrastive training needs at least one batch of {batch_size} captioned images, "
            f"got {len(images)}"
        )
    vocabulary = build_vocabulary(captions)
    if not vocabulary:
        raise DataError("the captions have no words; a text encoder cannot learn from them")
    encoder = TextEncoder(vocabulary, sequence_length, dims, depth, heads, seed=seed)
    pretrainer = ContrastivePretrainer(encoder, images.shape[1], images.shape[3], dims, seed=seed)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=1e-4))
    # The diffusion model's pipeline: seeded shuffles, `(images in [0, 1], tokens)`.
    pairs = ImageData(images, encoder.tokenize(captions), source="captions")
    steps = steps_per_epoch(pairs, batch_size, 1)
    dataset = train_dataset(pairs, batch_size, 1, seed=seed, epochs=epochs, labels=True)
    if epochs:  # 0 leaves the encoder as initialised (to be trained jointly from scratch)
        pretrainer.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=verbose,
                       shuffle=False)  # fmt: skip
    return encoder, pretrainer


def text_encoder_for(config, data, run_dir, verbose="auto", chief=True):
    """`config.text_encoder` loaded when given, else `RUN_DIR/text_encoder.keras`
    when an earlier start of this run saved it, else one trained on `data`'s
    captions for `config.text_encoder_epochs` epochs and saved there."""

    path = config.text_encoder or os.path.join(run_dir, TEXT_ENCODER_FILE)
    if config.text_encoder or os.path.exists(path):
        return load_text_encoder(path)
    print(f"training the text encoder: {config.text_encoder_epochs} epochs (CLIP)")
    encoder, _ = train_text_encoder(
        data.images, data.captions, epochs=config.text_encoder_epochs,
        batch_size=config.batch_size, seed=config.seed, verbose=verbose,
    )  # fmt: skip
    if chief:
        save_model_atomically(encoder, path)
    return encoder
