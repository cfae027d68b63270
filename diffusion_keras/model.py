"""`DiffusionModel`: the book's DDIM-style denoising diffusion model in Keras 3."""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from diffusion_keras.generation import Generation
from diffusion_keras.layers import validate_batch_norm
from diffusion_keras.precision import validate_precision
from diffusion_keras.schedules import get_schedule, validate_schedule
from diffusion_keras.spaces import Spaces
from diffusion_keras.training_steps import TrainingSteps
from diffusion_keras.unet import BOOK_WIDTHS, build_unet, validate_unet_args
from diffusion_keras.weighting import LOG_SNR_MEAN, LOG_SNR_STD, time_sampler, validate_weighting

LOSSES = ("mae", "mse")
# `get_config`'s keys that are attributes of the same name (besides name,
# trainable, loss and the sub-models).
CONFIG_KEYS = (
    "image_size", "channels", "widths", "block_depth", "embedding_dims",
    "embedding_min_frequency", "embedding_max_frequency", "schedule", "min_signal_rate",
    "max_signal_rate", "ema", "ema_warmup", "seed", "precision", "prediction", "num_classes",
    "class_names", "label_dropout", "batch_norm", "remat", "loss_weighting", "min_snr_gamma",
    "attention_levels", "attention_heads", "cross_attention", "time_sampling", "log_snr_mean",
    "log_snr_std", "train_text_encoder",
)  # fmt: skip
PREDICTIONS = ("noise", "image", "velocity")


def _loss_function(name):
    if name == "mae":
        return lambda y_true, y_pred: ops.mean(ops.abs(y_true - y_pred))
    return lambda y_true, y_pred: ops.mean(ops.square(y_true - y_pred))


def validate_training_args(ema, loss, prediction, label_dropout):
    """Raises `ValueError` with one line for training settings out of range."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; choose one of: {', '.join(PREDICTIONS)}"
        )
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")


def checked_class_names(class_names, num_classes):
    """`num_classes` different names as str (`"0"`, `"1"`... when None)."""
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes or len(set(class_names)) != num_classes:
        raise ValueError(f"class_names must be {num_classes} different names, got {class_names}")
    return class_names


@keras.saving.register_keras_serializable(package="diffusion_keras")
class DiffusionModel(Spaces, Generation, TrainingSteps, keras.Model):
    """A denoising diffusion model with an EMA copy of its U-Net.

    Training (`fit`) adds noise at a random diffusion time to each image and
    teaches the U-Net to predict that noise. Sampling (`generate`) starts from
    pure noise and runs the deterministic DDIM reverse process with the EMA
    network. The defaults are the book's model.

    Args:
        image_size: int. Height and width of the images. Defaults to 64.
        channels: int. Image channels. Defaults to 3.
        widths: sequence of int. U-Net widths (down blocks, then the middle).
            Defaults to `(32, 64, 96, 128)`.
        block_depth: int. Residual blocks per level. Defaults to 2.
        embedding_dims: int. Noise embedding size. Defaults to 32.
        embedding_min_frequency: float. Defaults to 1.0.
        embedding_max_frequency: float. Defaults to 1000.0.
        schedule: str. `"offset_cosine"`, `"cosine"` or `"linear"`.
            Defaults to `"offset_cosine"`.
        min_signal_rate: float. Signal rate at t=1. Defaults to 0.02.
        max_signal_rate: float. Signal rate at t=0. Defaults to 0.95.
        ema: float. Decay of the exponential moving average of the weights,
            in [0, 1). Defaults to 0.999.
        ema_warmup: bool. Grow the decay as `min(ema, (1 + n) / (10 + n))` with
            the step count `n`, so the EMA network is useful from the first
            epoch. Defaults to True.
        loss: str. `"mae"` (the book's) or `"mse"` on the prediction.
            Defaults to `"mae"`.
        prediction: str. What the network predicts: `"noise"` (the book's),
            `"image"` (the clean image) or `"velocity"` (v = signal_rate *
            noise - noise_rate * image, Salimans & Ho 2022). The loss is taken
            on it; `denoise` turns any of them into noise and image. Defaults
            to `"noise"`.
        num_classes: int. With N > 0 the model is class-conditional: batches
            are `(images, labels)` with labels in 0..N-1, and `generate` takes
            `class_labels` and a classifier-free `guidance_scale`. Defaults to
            0 (unconditional, the book's).
        class_names: list of str or None. A name for each class, saved with
            the model, so `generate` takes names. Defaults to `"0"`, `"1"`...
        label_dropout: float. In [0, 1): the share of training labels
            replaced by the null class, so that one network learns both the
            conditional and the unconditional model. Defaults to 0.1.
        batch_norm: str. The U-Net's batch norm: `"fused"`
            (`FusedBatchNormalization`, faster, the same arithmetic) or
            `"keras"` (Keras's `BatchNormalization`; what files saved before
            the fused layer hold, and how they load). Defaults to `"fused"`.
        remat: bool. Residual blocks as `ResidualBlock` layers that
            recompute their batch norm and swish in the backward pass instead
            of keeping them: less training memory for a little time, the same
            weights and arithmetic. Saved with the model; files saved before
            it existed load as the book's separate layers (False). Defaults
            to True.
        loss_weighting: str. `"none"` (the book's) or `"min_snr"`: each
            image's loss weighted by its noise level (min-SNR-gamma, Hang et
            al. 2023; see `diffusion_keras.weighting`). Defaults to `"none"`.
        min_snr_gamma: float. The gamma of `"min_snr"`. Defaults to 5.
        time_sampling: str. How training draws `diffusion_times`: `"uniform"`
            (the book's) or `"log_normal"` (log-SNR normal with
            `log_snr_mean` and `log_snr_std`, as EDM draws its noise levels;
            see `diffusion_keras.weighting`). Defaults to `"log_normal"`
            (measured faster to quality); files saved before it existed
            load as `"uniform"`, as they were trained.
        log_snr_mean, log_snr_std: float. Of `"log_normal"`. Default -1.5
            (noisier than EDM's 1.0; measured) and 2.4 (EDM's, for
            unit-variance data).
        autoencoder: an `Autoencoder` (or its serialized config) or None.
            With one, the model is a latent diffusion model (Rombach et al.
            2022): the U-Net works on the autoencoder's scaled latents,
            `(image_size / factor, image_size / factor, latent_channels)`,
            training encodes images (or takes latents, see `to_space`), and
            `generate` decodes. The autoencoder is frozen and saved in the
            same file. Defaults to None (pixel space, the book's).
        attention_levels: sequence of int. U-Net levels with self-attention
            after each residual block (see `build_unet`). Defaults to `()`.
        attention_heads: int. Heads of the attention blocks. Defaults to 4.
        cross_attention: bool. A conditional model's class as a one-token
            sequence the attention levels cross-attend to. Defaults to False.
        text_encoder: a `TextEncoder` (or its serialized config) or None.
            With one, the model is text-conditional (Stable Diffusion's
            structure): its labels are caption tokens (`(batch, words)`,
            `TextEncoder.tokenize`), the attention levels cross-attend to
            the encoder's token embeddings (frozen unless
            `train_text_encoder`), `label_dropout` of the training captions
            become the empty prompt, and `generate` takes `prompts`. Saved
            in the same file. Needs `attention_levels`.
            Defaults to None.
        train_text_encoder: bool. Train the text encoder jointly with the
            U-Net on the diffusion loss (GLIDE's way) instead of keeping it
            frozen (Stable Diffusion's); sampling then uses an EMA copy of it,
            as it does of the U-Net. Needs `text_encoder`. Defaults to False.
        seed: int or None. Seeds the initial weights and the training noise;
            training is then reproducible and resumable. Defaults to a random seed, which is
            saved with the model.
        precision: str. `"float32"`, `"mixed_bfloat16"` or `"mixed_float16"`.
            Defaults to `"float32"`. `with_precision` converts a model.

    References:
    - [Song et al., 2020 (DDIM)](https://arxiv.org/abs/2010.02502)
    - [Ho et al., 2020 (DDPM)](https://arxiv.org/abs/2006.11239)
    - [Salimans & Ho, 2022 (velocity)](https://arxiv.org/abs/2202.00512)
    - [Ho & Salimans, 2022 (classifier-free guidance)](https://arxiv.org/abs/2207.12598)
    - [Rombach et al., 2022 (latent diffusion)](https://arxiv.org/abs/2112.10752)
    """

    def __init__(
        self,
        image_size=64,
        channels=3,
        widths=BOOK_WIDTHS,
        block_depth=2,
        embedding_dims=32,
        embedding_min_frequency=1.0,
        embedding_max_frequency=1000.0,
        schedule="offset_cosine",
        min_signal_rate=0.02,
        max_signal_rate=0.95,
        ema=0.999,
        ema_warmup=True,
        loss="mae",
        seed=None,
        precision="float32",
        prediction="noise",
        num_classes=0,
        class_names=None,
        label_dropout=0.1,
        batch_norm="fused",
        remat=True,
        loss_weighting="none",
        min_snr_gamma=5.0,
        time_sampling="log_normal",
        log_snr_mean=LOG_SNR_MEAN,
        log_snr_std=LOG_SNR_STD,
        autoencoder=None,
        attention_levels=(),
        attention_heads=4,
        cross_attention=False,
        text_encoder=None,
        train_text_encoder=False,
        **kwargs,
    ):
        validate_precision(precision)
        kwargs.pop("dtype", None)
        # The model's own policy makes `compile` wrap the optimizer in a
        # LossScaleOptimizer under mixed_float16.
        super().__init__(dtype=precision, **kwargs)
        if train_text_encoder and text_encoder is None:
            raise ValueError("train_text_encoder needs a text_encoder")
        self.train_text_encoder = bool(train_text_encoder)
        autoencoder = _owned(autoencoder)
        text_encoder = _owned(text_encoder, trainable=self.train_text_encoder)
        space_size, space_channels = _space_shape(
            image_size, channels, autoencoder, text_encoder, num_classes, attention_levels
        )
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        validate_unet_args(
            space_size, widths, block_depth, space_channels, embedding_dims, num_classes
        )
        validate_schedule(schedule, min_signal_rate, max_signal_rate)
        validate_training_args(ema, loss, prediction, label_dropout)
        class_names = checked_class_names(class_names, num_classes)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.image_size = int(image_size)
        self.channels = int(channels)
        # The space the U-Net works in: the images, or the autoencoder's latents.
        self.space_size, self.space_channels = space_size, space_channels
        self.widths = [int(w) for w in widths]
        self.block_depth = int(block_depth)
        self.embedding_dims = int(embedding_dims)
        self.embedding_min_frequency = float(embedding_min_frequency)
        self.embedding_max_frequency = float(embedding_max_frequency)
        self.schedule = schedule
        self.min_signal_rate = float(min_signal_rate)
        self.max_signal_rate = float(max_signal_rate)
        self.ema = float(ema)
        self.ema_warmup = bool(ema_warmup)
        self.loss_name = loss
        validate_weighting(loss_weighting, min_snr_gamma)
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.time_sampling = time_sampling
        self.log_snr_mean, self.log_snr_std = float(log_snr_mean), float(log_snr_std)
        self.seed = int(seed)
        self.precision = precision
        self.prediction = prediction
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.label_dropout = float(label_dropout)
        validate_batch_norm(batch_norm)
        self.batch_norm = batch_norm
        self.remat = bool(remat)
        self.attention_levels = [int(level) for level in attention_levels]
        self.attention_heads = int(attention_heads)
        self.cross_attention = bool(cross_attention)

        self.diffusion_schedule = get_schedule(schedule, min_signal_rate, max_signal_rate)
        self.time_sampler = time_sampler(
            time_sampling, self.diffusion_schedule, self.log_snr_mean, self.log_snr_std
        )
        self.loss_fn = _loss_function(loss)

        self.normalizer = layers.Normalization(name="normalizer", dtype="float32")
        self.normalizer.build((None, space_size, space_size, space_channels))
        unet_args = _unet_args(self)
        self.network = build_unet(name="network", seed=self.seed, **unet_args)
        # The EMA network starts as an exact copy (the book's `clone_model`
        # re-initialised it) and is never trained directly.
        self.ema_network = build_unet(name="ema_network", **unet_args)
        self.ema_network.set_weights(self.network.get_weights())
        self.ema_network.trainable = False
        # A jointly trained text encoder has an EMA copy that samples with
        # the EMA network; a frozen one serves both.
        self.ema_text_encoder = _owned(text_encoder) if self.train_text_encoder else None

        # Counters saved with the model: training steps taken (drives the EMA
        # warm-up and the training noise), and evaluation batches seen.
        self.train_steps = self._counter("train_steps", "int64")
        self.eval_steps = self._counter("eval_steps", "int64")
        self.normalizer_adapted = self._counter("normalizer_adapted", "int32")
        self.noise_loss_tracker = keras.metrics.Mean(name="n_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="i_loss")
        self.velocity_loss_tracker = keras.metrics.Mean(name="v_loss")
        # The last training step's loss (what the optimizer minimised), for
        # per-step logs; not among `metrics`, so not averaged over the epoch.
        self.step_loss_tracker = keras.metrics.Mean(name="step_loss")
        self._sampler = None
        self.built = True

    def _counter(self, name, dtype):
        return self.add_weight(
            shape=(), dtype=dtype, initializer="zeros", trainable=False, name=name
        )

    # -- configuration -------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "loss": self.loss_name}
        for key in CONFIG_KEYS:
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, (list, tuple)) else value
        for key in ("autoencoder", "text_encoder"):
            submodel = getattr(self, key)
            config[key] = (
                None if submodel is None else keras.saving.serialize_keras_object(submodel)
            )
        return config

    @classmethod
    def from_config(cls, config):
        # Files saved before `batch_norm` existed hold Keras's BatchNormalization,
        # and files saved before `remat` existed the book's separate layers.
        # Files saved before `time_sampling` were trained with uniform times.
        return cls(**{"batch_norm": "keras", "remat": False, "time_sampling": "uniform", **config})

    def with_precision(self, precision):
        """This model (weights, EMA, normalizer, counters) in another precision.

        Returns `self` when the precision is the same; otherwise a new,
        uncompiled model with the same weights.
        """
        validate_precision(precision)
        if precision == self.precision:
            return self
        model = type(self).from_config({**self.get_config(), "precision": precision})
        model.set_weights(self.get_weights())
        return model

    @property
    def metrics(self):
        trackers = [self.noise_loss_tracker, self.image_loss_tracker]
        if self.prediction == "velocity":
            trackers.append(self.velocity_loss_tracker)
        return trackers

    # -- the diffusion model -------------------------------------------------

    @property
    def null_class(self):
        """The label that means "no class": what label dropout trains and
        classifier-free guidance's unconditional half uses."""
        return self.num_classes

    @property
    def conditional(self):
        """Whether the model takes labels: classes, or a caption's tokens."""
        return bool(self.num_classes) or self.text_encoder is not None

    @property
    def label_shape(self):
        """The shape of one image's label: `()` for a class, `(words,)` for
        a caption's tokens (`TextEncoder.tokenize`)."""
        return () if self.text_encoder is None else (self.text_encoder.sequence_length,)

    def null_labels(self, count):
        """`count` labels that mean "no condition": the null class, or the
        empty prompt's tokens (all padding)."""
        if self.text_encoder is not None:
            return ops.zeros((count,) + self.label_shape, "int32")
        return ops.full((count,), self.null_class, "int32")

    def network_inputs(self, noisy_images, noise_rates, class_labels=None, training=False):
        """What the U-Net takes for these noisy images: the images, their
        noise variances, and for a conditional model the labels (the null
        labels when None) or a text model's caption embeddings (from the
        trained text encoder when `training`, else from its EMA copy)."""
        inputs = [noisy_images, noise_rates**2]
        if self.conditional:
            if class_labels is None:
                class_labels = self.null_labels(ops.shape(noisy_images)[0])
            labels = ops.cast(ops.reshape(class_labels, (-1,) + self.label_shape), "int32")
            if self.text_encoder is not None:
                ema = self.ema_text_encoder
                encoder = self.text_encoder if training or ema is None else ema
                labels = encoder(labels, training=training and self.train_text_encoder)
            inputs.append(labels)
        return inputs

    def network_outputs(self, noisy_images, noise_rates, class_labels=None, training=False):
        """The raw prediction (noise, image or velocity) of the training
        network when `training`, of the EMA network otherwise. A conditional
        model given no labels predicts for the null class (the empty prompt
        for a text model, whose labels are caption tokens)."""
        network = self.network if training else self.ema_network
        inputs = self.network_inputs(noisy_images, noise_rates, class_labels, training)
        return ops.cast(network(inputs, training=training), "float32")

    def split_prediction(self, outputs, noisy_images, noise_rates, signal_rates):
        """The network's outputs as `(pred_noises, pred_images)` (the module-level
        `split_prediction`, for this model's `prediction`)."""
        return split_prediction(self.prediction, outputs, noisy_images, noise_rates, signal_rates)

    def prediction_targets(self, images, noises, noise_rates, signal_rates):
        """What the network should output for these (normalised) images and
        noises: the loss compares this with `network_outputs`."""
        return prediction_targets(self.prediction, images, noises, noise_rates, signal_rates)

    def denoise(self, noisy_images, noise_rates, signal_rates, training, class_labels=None):
        """Splits noisy images into predicted noise and predicted clean images.

        The training network is used when `training`, the EMA network otherwise.
        """
        outputs = self.network_outputs(noisy_images, noise_rates, class_labels, training)
        return self.split_prediction(outputs, noisy_images, noise_rates, signal_rates)


def split_prediction(prediction, outputs, noisy_images, noise_rates, signal_rates):
    """A network's `outputs` (a `prediction` of "noise", "image" or
    "velocity") as `(pred_noises, pred_images)`.

    With x = signal * image + noise * eps and signal**2 + noise**2 = 1 (true
    of every schedule here), a prediction of eps, of the image or of the
    velocity v = signal * eps - noise * image each gives the other two:
    image = signal * x - noise * v and eps = noise * x + signal * v.
    """
    if prediction == "noise":
        return outputs, (noisy_images - noise_rates * outputs) / signal_rates
    if prediction == "image":
        return (noisy_images - signal_rates * outputs) / noise_rates, outputs
    return (
        noise_rates * noisy_images + signal_rates * outputs,
        signal_rates * noisy_images - noise_rates * outputs,
    )


def prediction_targets(prediction, images, noises, noise_rates, signal_rates):
    """What a network predicting `prediction` should output."""
    if prediction == "noise":
        return noises
    if prediction == "image":
        return images
    return signal_rates * noises - noise_rates * images


def _unet_args(model):
    """The `build_unet` arguments of a `DiffusionModel`'s two networks."""
    return dict(
        image_size=model.space_size,
        channels=model.space_channels,
        widths=model.widths,
        block_depth=model.block_depth,
        embedding_dims=model.embedding_dims,
        embedding_min_frequency=model.embedding_min_frequency,
        embedding_max_frequency=model.embedding_max_frequency,
        precision=model.precision,
        num_classes=model.num_classes,
        batch_norm=model.batch_norm,
        remat=model.remat,
        attention_levels=model.attention_levels,
        attention_heads=model.attention_heads,
        cross_attention=model.cross_attention,
        context_shape=None if model.text_encoder is None else model.text_encoder.context_shape,
        # Built inside a multi-replica strategy's scope: batch statistics
        # over the global batch, as on one device.
        synchronized_batch_norm=tf.distribute.has_strategy()
        and tf.distribute.get_strategy().num_replicas_in_sync > 1,
    )


def _space_shape(image_size, channels, autoencoder, text_encoder, num_classes, attention_levels):
    """`(size, channels)` of the space the U-Net works in (the images, or an
    autoencoder's latents); raises `ValueError` for sub-models that do not go
    together."""
    if autoencoder is not None and channels != 3:
        raise ValueError(f"a latent model's images have 3 channels, got channels={channels}")
    if text_encoder is not None and num_classes:
        raise ValueError("a model is conditioned on classes or on text, not both")
    if text_encoder is not None and not attention_levels:
        raise ValueError(
            "a text-conditional model cross-attends to the caption; give it attention "
            "levels (--attention-levels)"
        )
    if autoencoder is not None:
        size, _, latent_channels = autoencoder.latent_shape(int(image_size))
        return size, latent_channels
    return int(image_size), int(channels)


def _owned(submodel, trainable=False):
    """A sub-model (autoencoder, text encoder) of a `DiffusionModel`, frozen
    unless `trainable`: a saved model's own copy as it was saved (Keras then
    loads its weights), or an uncompiled copy of a user's model (weights and
    settings, not its optimizer), so that theirs stays theirs."""
    if submodel is None:
        return None
    if isinstance(submodel, dict):
        submodel = keras.saving.deserialize_keras_object(submodel)
    else:
        copy = type(submodel).from_config({**submodel.get_config(), "trainable": trainable})
        copy.set_weights(submodel.get_weights())
        submodel = copy
    if trainable:
        return submodel
    submodel.trainable = False
    # A subclassed model does not pass `trainable` on to its layers, and an
    # owner gathers its trainable variables from those: freeze each one.
    for variable in submodel.weights:
        variable.trainable = False
    return submodel
