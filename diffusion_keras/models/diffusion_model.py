"""`DiffusionModel`: the book's DDIM-style denoising diffusion model in Keras 3.

The model is composed of parts it holds and hands on:
- the U-Net `network` and its EMA copy `ema_network` (`diffusion_keras.nn.unet`),
  kept up to date by `ema_updater` (`diffusion_keras.models.ema.EMA`);
- `space` (`diffusion_keras.models.spaces.Space`): normalisation, and a latent
  model's autoencoder;
- `steps` (`diffusion_keras.models.steps.TrainingStep`): `train_step` and `test_step`;
- `generator` (`diffusion_keras.models.generation.Generator`): `generate` and
  `edit`, which hand the model itself, as the denoiser, to the sampling engine
  (`diffusion_keras.sampling.loop.Sampler`).
Its settings are a `ModelConfig` (`diffusion_keras.config.model`), the one home of
their defaults, choices and help.
"""

import dataclasses
import functools

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.config import fields
from diffusion_keras.config.choices import LOSSES
from diffusion_keras.config.model import ModelConfig
from diffusion_keras.diffusion.schedules import get_schedule, validate_schedule
from diffusion_keras.diffusion.targets import PREDICTIONS, prediction_targets, split_prediction
from diffusion_keras.diffusion.weighting import (
    time_sampler,
    validate_time_sampling,
    validate_weighting,
)

# A model file holds its autoencoder and text encoder: their classes must be registered.
from diffusion_keras.models import autoencoder as _autoencoder  # noqa: F401
from diffusion_keras.models import text as _text  # noqa: F401
from diffusion_keras.models.ema import EMA
from diffusion_keras.models.generation import Generator
from diffusion_keras.models.spaces import Space
from diffusion_keras.models.steps import TrainingStep
from diffusion_keras.nn.layers import validate_batch_norm
from diffusion_keras.nn.unet import build_unet, validate_unet_args
from diffusion_keras.sampling import guidance
from diffusion_keras.utils import backend
from diffusion_keras.utils.precision import resolve_precision

# The settings the model keeps as attributes of another name (Keras's `Model`
# has a `loss` of its own).
_ATTRIBUTE = {"loss": "loss_name"}


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
class DiffusionModel(keras.Model):
    """A denoising diffusion model with an EMA copy of its U-Net.

    Training (`fit`) adds noise at a random diffusion time to each image and
    teaches the U-Net to predict that noise. Sampling (`generate`) starts from
    pure noise and runs the reverse process with the EMA network. The network
    defaults are the book's; the training defaults the package's measured recipe.

    Args:
        **settings: any setting of `diffusion_keras.config.ModelConfig`: the
            network's (`image_size`, `widths`, `block_depth`, `embedding_dims`,
            `attention_levels`, ...) and the diffusion's (`schedule`,
            `prediction`, `loss`, `time_sampling`, `ema`, `label_dropout`,
            ...). Each one's default, choices and meaning are written there
            (and in the docs' flag reference); files saved before a setting
            existed load with what they were made with.
        num_classes: int. With N > 0 the model is class-conditional: batches
            are `(images, labels)` with labels in 0..N-1, and `generate` takes
            `class_labels` and a classifier-free `guidance_scale`. Defaults to
            0 (unconditional, the book's).
        class_names: list of str or None. A name for each class, saved with
            the model, so `generate` takes names. Defaults to `"0"`, `"1"`...
        autoencoder: an `Autoencoder` (or its serialized config) or None.
            With one, the model is a latent diffusion model (Rombach et al.
            2022): the U-Net works on the autoencoder's scaled latents,
            training encodes images (or takes latents, see `to_space`), and
            `generate` decodes. Frozen and saved in the same file.
        text_encoder: a `TextEncoder` (or its serialized config) or None.
            With one, the model is text-conditional (Stable Diffusion's
            structure): labels are caption tokens, the attention levels
            cross-attend to the encoder's token embeddings, and `generate`
            takes `prompts`. Needs `attention_levels`.
        train_text_encoder: bool. Train the text encoder jointly with the
            U-Net (GLIDE's way) instead of keeping it frozen (Stable
            Diffusion's); sampling then uses an EMA copy of it.
        seed: int or None. Seeds the initial weights and the training noise;
            training is then reproducible and resumable. Defaults to a random
            seed, which is saved with the model.
        precision: str. `"float32"`, `"mixed_bfloat16"` or `"mixed_float16"`.
            Defaults to `"float32"`. `with_precision` converts a model.

    References:
    - [Song et al., 2020 (DDIM)](https://arxiv.org/abs/2010.02502)
    - [Ho et al., 2020 (DDPM)](https://arxiv.org/abs/2006.11239)
    - [Salimans & Ho, 2022 (velocity)](https://arxiv.org/abs/2202.00512)
    - [Ho & Salimans, 2022 (classifier-free guidance)](https://arxiv.org/abs/2207.12598)
    - [Rombach et al., 2022 (latent diffusion)](https://arxiv.org/abs/2112.10752)
    """

    def __init__(self, *, num_classes=0, class_names=None, autoencoder=None, text_encoder=None,
                 train_text_encoder=False, seed=None, precision="float32", **kwargs):  # fmt: skip
        given, kwargs = fields.split(ModelConfig, kwargs)
        precision = resolve_precision(precision)
        kwargs.pop("dtype", None)
        # The model's own policy makes `compile` wrap the optimizer in a
        # LossScaleOptimizer under mixed_float16.
        super().__init__(dtype=precision, **kwargs)
        values = {**{f.name: f.default for f in fields.settings_of(ModelConfig)}, **given}
        if train_text_encoder and text_encoder is None:
            raise ValueError("train_text_encoder needs a text_encoder")
        self.train_text_encoder = bool(train_text_encoder)
        autoencoder = _owned(autoencoder)
        text_encoder = _owned(text_encoder, trainable=self.train_text_encoder)
        space_size, space_channels = _space_shape(
            values["image_size"], values["channels"], autoencoder, text_encoder, num_classes,
            values["attention_levels"],
        )  # fmt: skip
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        # These checks say in one line what is wrong with a value; `ModelConfig`
        # then checks every setting against its type and choices.
        validate_unet_args(
            space_size, values["widths"], values["block_depth"], space_channels,
            values["embedding_dims"], num_classes,
        )  # fmt: skip
        validate_schedule(values["schedule"], values["min_signal_rate"], values["max_signal_rate"])
        validate_training_args(
            values["ema"], values["loss"], values["prediction"], values["label_dropout"]
        )
        validate_weighting(values["loss_weighting"], values["min_snr_gamma"])
        validate_batch_norm(values["batch_norm"])
        validate_time_sampling(values["time_sampling"], values["log_snr_std"])
        self.settings = ModelConfig(**given)
        for name, value in dataclasses.asdict(self.settings).items():
            value = list(value) if isinstance(value, tuple) else value
            setattr(self, _ATTRIBUTE.get(name, name), value)
        self.class_names = checked_class_names(class_names, num_classes)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.seed = int(seed)
        self.precision = precision
        self.num_classes = int(num_classes)
        # The space the U-Net works in: the images, or the autoencoder's latents.
        self.space_size, self.space_channels = space_size, space_channels

        self.diffusion_schedule = get_schedule(
            self.schedule, self.min_signal_rate, self.max_signal_rate
        )
        self.time_sampler = time_sampler(
            self.time_sampling, self.diffusion_schedule, self.log_snr_mean, self.log_snr_std
        )
        self.loss_fn = _loss_function(self.loss_name)

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
        self.train_steps = self._counter("train_steps", backend.counter_dtype())
        self.eval_steps = self._counter("eval_steps", backend.counter_dtype())
        self.normalizer_adapted = self._counter("normalizer_adapted", "int32")
        self.noise_loss_tracker = keras.metrics.Mean(name="n_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="i_loss")
        self.velocity_loss_tracker = keras.metrics.Mean(name="v_loss")
        # The last training step's loss (what the optimizer minimised), for
        # per-step logs; not among `metrics`, so not averaged over the epoch.
        self.step_loss_tracker = keras.metrics.Mean(name="step_loss")

        # The parts, handed what they work on.
        self.space = Space(self.normalizer, self.normalizer_adapted, autoencoder,
                           self.sample_shape)  # fmt: skip
        self.ema_updater = EMA(
            self._ema_pairs, self.ema, self.ema_warmup, self.train_steps, self.ema_length
        )
        self.steps = TrainingStep(self)
        self.generator = Generator(self)
        self.built = True

    def _counter(self, name, dtype):
        return self.add_weight(
            shape=(), dtype=dtype, initializer="zeros", trainable=False, name=name
        )

    def _ema_pairs(self):
        pairs = list(zip(self.network.weights, self.ema_network.weights))
        if self.train_text_encoder:
            pairs += zip(self.text_encoder.weights, self.ema_text_encoder.weights)
        return pairs

    # -- configuration -------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(fields.config_dict(self.settings))
        config.update(seed=self.seed, precision=self.precision, num_classes=self.num_classes,
                      class_names=list(self.class_names),
                      train_text_encoder=self.train_text_encoder)  # fmt: skip
        for key in ("autoencoder", "text_encoder"):
            submodel = getattr(self, key)
            config[key] = (
                None if submodel is None else keras.saving.serialize_keras_object(submodel)
            )
        return config

    @classmethod
    def from_config(cls, config):
        # A file saved before a setting existed loads with what it was made
        # with (`setting(legacy_model=...)`): Keras's BatchNormalization, the
        # book's separate layers, uniform times.
        return cls(**{**fields.known_and_legacy(ModelConfig, {}, "legacy_model"), **config})

    def with_precision(self, precision):
        """This model (weights, EMA, normalizer, counters) in another precision.

        Returns `self` when the precision is the same; otherwise a new,
        uncompiled model with the same weights.
        """
        precision = resolve_precision(precision)
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

    @property
    def metrics_variables(self):
        # The last step's loss too: JAX's `fit` keeps only the state it is
        # handed, and the per-step log reads it.
        variables = [v for metric in self.metrics for v in metric.variables]
        return variables + list(self.step_loss_tracker.variables)

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

    # -- the parts' work, as the model's API ---------------------------------

    @property
    def sample_shape(self):
        """The shape of one sample in the U-Net's space: `(image_size,
        image_size, channels)`, or a latent model's latent shape."""
        return (self.space_size, self.space_size, self.space_channels)

    def guided_denoise(self, noisy_images, noise_rates, signal_rates, guide=None):
        """`denoise` with the EMA network, steered as `guide` says (see
        `diffusion_keras.sampling.guidance.guided_denoise`): what samplers call."""
        return guidance.guided_denoise(self, noisy_images, noise_rates, signal_rates, guide)

    # Keras calls these with `(data)`, or under JAX with `(state, data)`.
    def train_step(self, *args):
        return self.steps.train_step(*args)

    def test_step(self, *args):
        return self.steps.test_step(*args)

    def training_loss(self, targets, outputs, noise_rates, signal_rates):
        """See `TrainingStep.training_loss`."""
        return self.steps.training_loss(targets, outputs, noise_rates, signal_rates)

    def ema_decay(self):
        """The EMA decay for the next update (`EMA.current_decay`)."""
        return self.ema_updater.current_decay()

    def update_ema(self):
        self.ema_updater.update()

    def adapt(self, dataset):
        """Adapts the normalizer to `dataset`'s images (`Space.adapt`)."""
        self.space.adapt(dataset)

    def normalize(self, images):
        return self.space.normalize(images)

    def denormalize(self, images):
        return self.space.denormalize(images)

    def to_space(self, images):
        """Images in the U-Net's space (`Space.to_space`)."""
        return self.space.to_space(images)

    def from_space(self, samples, batch_size=64):
        """Normalised samples as images in [0, 1] (`Space.from_space`)."""
        return self.space.from_space(samples, batch_size)

    def encode_images(self, images, batch_size=64):
        """A latent model's scaled latents of `images` (`Space.encode_images`)."""
        return self.space.encode_images(images, batch_size)

    @property
    def sampler(self):
        """This model's `Sampler` (its compiled loops are cached)."""
        return self.generator.sampler

    def sampling_defaults(self):
        """How `generate` samples unless told otherwise
        (`Generator.sampling_defaults`): a student in its own steps."""
        return self.generator.sampling_defaults()

    @functools.wraps(Generator.generate)
    def generate(self, *args, **kwargs):
        # `Generator.generate`'s signature and docstring, for help() and IDEs.
        return self.generator.generate(*args, **kwargs)

    @functools.wraps(Generator.edit)
    def edit(self, *args, **kwargs):
        # `Generator.edit`'s signature and docstring, for help() and IDEs.
        return self.generator.edit(*args, **kwargs)

    def make_noise(self, num_images, seed=None):
        """Standard normal noise `(num_images, *sample_shape)` from `seed` (numpy)."""
        return self.generator.make_noise(num_images, seed)

    def class_index(self, name_or_index):
        """The label of a class given by name or by index (as int or str)."""
        return self.generator.class_index(name_or_index)

    @functools.wraps(Generator.sampling_step)
    def sampling_step(self, *args, **kwargs):
        # `Generator.sampling_step`'s signature and docstring, for help() and IDEs.
        return self.generator.sampling_step(*args, **kwargs)

    def ddim_step(self, current_images, step, diffusion_steps):
        """One deterministic DDIM step, as the book's loop takes it."""
        return self.generator.ddim_step(current_images, step, diffusion_steps)

    @functools.wraps(Generator.reverse_diffusion)
    def reverse_diffusion(self, *args, **kwargs):
        # `Generator.reverse_diffusion`'s signature and docstring, for help() and IDEs.
        return self.generator.reverse_diffusion(*args, **kwargs)


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
        synchronized_batch_norm=_in_multi_replica_strategy(),
    )


def _in_multi_replica_strategy():
    if backend.name() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


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
