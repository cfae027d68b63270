"""`DiffusionModel`: the book's DDIM-style denoising diffusion model in Keras 3."""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from diffusion_keras import guidance, sampling
from diffusion_keras.layers import validate_batch_norm
from diffusion_keras.pixels import images_of, pixels_in_unit_range, warn_about_pixel_range
from diffusion_keras.precision import validate_precision
from diffusion_keras.samplers import validate_sampler, validate_spacing
from diffusion_keras.sampling import Sampler
from diffusion_keras.schedules import get_schedule, validate_schedule
from diffusion_keras.unet import BOOK_WIDTHS, build_unet, validate_unet_args
from diffusion_keras.weighting import loss_weights, validate_weighting

LOSSES = ("mae", "mse")
PREDICTIONS = ("noise", "image", "velocity")


def _loss_function(name):
    if name == "mae":
        return lambda y_true, y_pred: ops.mean(ops.abs(y_true - y_pred))
    return lambda y_true, y_pred: ops.mean(ops.square(y_true - y_pred))


def _labels_of(data):
    if isinstance(data, (tuple, list)) and len(data) > 1:
        return data[1]
    if isinstance(data, dict) and "label" in data:
        return data["label"]
    return None


@keras.saving.register_keras_serializable(package="diffusion_keras")
class DiffusionModel(keras.Model):
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
        autoencoder=None,
        attention_levels=(),
        attention_heads=4,
        cross_attention=False,
        **kwargs,
    ):
        validate_precision(precision)
        kwargs.pop("dtype", None)
        # The model's own policy makes `compile` wrap the optimizer in a
        # LossScaleOptimizer under mixed_float16.
        super().__init__(dtype=precision, **kwargs)
        if autoencoder is not None and channels != 3:
            raise ValueError(f"a latent model's images have 3 channels, got channels={channels}")
        if isinstance(autoencoder, dict):
            # A saved model's own copy, frozen as it was saved; Keras loads its weights.
            autoencoder = keras.saving.deserialize_keras_object(autoencoder)
        elif autoencoder is not None:
            # A frozen, uncompiled copy (the weights and latent scale, not
            # the autoencoder's optimizer), so that the user's stays theirs.
            frozen = type(autoencoder).from_config({**autoencoder.get_config(), "trainable": False})
            frozen.set_weights(autoencoder.get_weights())
            autoencoder = frozen
        if autoencoder is not None:
            autoencoder.trainable = False
        self.autoencoder = autoencoder
        if autoencoder is not None:
            space_size, _, space_channels = autoencoder.latent_shape(int(image_size))
        else:
            space_size, space_channels = int(image_size), int(channels)
        validate_unet_args(
            space_size, widths, block_depth, space_channels, embedding_dims, num_classes
        )
        validate_schedule(schedule, min_signal_rate, max_signal_rate)
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
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes or len(set(class_names)) != num_classes:
            raise ValueError(
                f"class_names must be {num_classes} different names, got {class_names}"
            )
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
        self.loss_fn = _loss_function(loss)

        self.normalizer = layers.Normalization(name="normalizer", dtype="float32")
        self.normalizer.build((None, space_size, space_size, space_channels))
        unet_args = dict(
            image_size=space_size,
            channels=space_channels,
            widths=self.widths,
            block_depth=self.block_depth,
            embedding_dims=self.embedding_dims,
            embedding_min_frequency=self.embedding_min_frequency,
            embedding_max_frequency=self.embedding_max_frequency,
            precision=precision,
            num_classes=self.num_classes,
            batch_norm=self.batch_norm,
            remat=self.remat,
            attention_levels=self.attention_levels,
            attention_heads=self.attention_heads,
            cross_attention=self.cross_attention,
            # Built inside a multi-replica strategy's scope: batch statistics
            # over the global batch, as on one device.
            synchronized_batch_norm=tf.distribute.has_strategy()
            and tf.distribute.get_strategy().num_replicas_in_sync > 1,
        )
        self.network = build_unet(name="network", seed=self.seed, **unet_args)
        # The EMA network starts as an exact copy (the book's `clone_model`
        # re-initialised it) and is never trained directly.
        self.ema_network = build_unet(name="ema_network", **unet_args)
        self.ema_network.set_weights(self.network.get_weights())
        self.ema_network.trainable = False

        # Counters saved with the model: training steps taken (drives the EMA
        # warm-up and the training noise), and evaluation batches seen.
        self.train_steps = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            name="train_steps",
        )
        self.eval_steps = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            name="eval_steps",
        )
        self.normalizer_adapted = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="normalizer_adapted",
        )
        self.noise_loss_tracker = keras.metrics.Mean(name="n_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="i_loss")
        self.velocity_loss_tracker = keras.metrics.Mean(name="v_loss")
        # The last training step's loss (what the optimizer minimised), for
        # per-step logs; not among `metrics`, so not averaged over the epoch.
        self.step_loss_tracker = keras.metrics.Mean(name="step_loss")
        self._sampler = None
        self.built = True

    # -- configuration -------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "channels": self.channels,
            "widths": list(self.widths),
            "block_depth": self.block_depth,
            "embedding_dims": self.embedding_dims,
            "embedding_min_frequency": self.embedding_min_frequency,
            "embedding_max_frequency": self.embedding_max_frequency,
            "schedule": self.schedule,
            "min_signal_rate": self.min_signal_rate,
            "max_signal_rate": self.max_signal_rate,
            "ema": self.ema,
            "ema_warmup": self.ema_warmup,
            "loss": self.loss_name,
            "seed": self.seed,
            "precision": self.precision,
            "prediction": self.prediction,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "label_dropout": self.label_dropout,
            "batch_norm": self.batch_norm,
            "remat": self.remat,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
            "attention_levels": list(self.attention_levels),
            "attention_heads": self.attention_heads,
            "cross_attention": self.cross_attention,
            "autoencoder": None
            if self.autoencoder is None
            else keras.saving.serialize_keras_object(self.autoencoder),
        }

    @classmethod
    def from_config(cls, config):
        # Files saved before `batch_norm` existed hold Keras's BatchNormalization,
        # and files saved before `remat` existed the book's separate layers.
        return cls(**{"batch_norm": "keras", "remat": False, **config})

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

    # -- normalisation -------------------------------------------------------

    def adapt(self, dataset):
        """Computes the per-channel mean and variance of the images in `dataset`.

        Args:
            dataset: a `tf.data.Dataset` or array of images: floats in [0, 1],
                uint8, or floats in 0..255 as
                `keras.utils.image_dataset_from_directory` yields them (read as
                `pixels_in_unit_range` says, with one warning for 0..255
                floats; `fit` and `evaluate` read their batches the same
                way). Labels in `(image, label)` elements and tfds-style
                `{"image": ..., "label": ...}` dicts are ignored.
        """
        if isinstance(dataset, tf.data.Dataset):
            images = dataset.map(lambda *e: images_of(e if len(e) > 1 else e[0]))
            first = next(iter(images.take(1)), None)
            if first is None:
                raise ValueError("adapt got an empty dataset")
            warn_about_pixel_range(first)
            if self.autoencoder is None:
                dataset = images.map(pixels_in_unit_range)
            else:
                dataset = np.concatenate([self.encode_images(batch) for batch in images])
        else:
            images = images_of(dataset)
            warn_about_pixel_range(images)
            if self.autoencoder is None:
                dataset = pixels_in_unit_range(images)
            else:
                dataset = self.encode_images(images)
        self.normalizer.adapt(dataset)
        self.normalizer_adapted.assign(1)

    def _mean_and_std(self):
        # Read the normalizer's variables (not its cached `mean` tensor) so a
        # compiled function always sees the current statistics.
        mean = ops.reshape(self.normalizer.adapt_mean, (1, 1, 1, self.space_channels))
        variance = ops.reshape(self.normalizer.adapt_variance, (1, 1, 1, self.space_channels))
        return mean, ops.maximum(ops.sqrt(variance), keras.backend.epsilon())

    def normalize(self, images):
        mean, std = self._mean_and_std()
        return (ops.cast(images, "float32") - mean) / std

    def denormalize(self, images):
        mean, std = self._mean_and_std()
        if self.autoencoder is not None:
            return mean + images * std  # latents have no range to clip to
        return ops.clip(mean + images * std, 0.0, 1.0)

    # -- pixels and latents ----------------------------------------------------

    def to_space(self, images):
        """Images (as `pixels_in_unit_range` reads them) in the space the
        U-Net works in: themselves for a pixel model, their scaled latents for
        a latent model. A latent model takes a batch that already has the
        latent shape `sample_shape` as latents, so that training can stream
        latents encoded once (`encode_images`)."""
        if self.autoencoder is None:
            return pixels_in_unit_range(images)
        if tuple(images.shape[1:]) == tuple(self.sample_shape):
            return ops.cast(images, "float32")
        return self.autoencoder.encode(images)

    def encode_images(self, images, batch_size=64):
        """A latent model's scaled latents of `images` (numpy, in chunks)."""
        if self.autoencoder is None:
            raise ValueError("encode_images needs a latent model (one with an autoencoder)")
        chunks = [
            ops.convert_to_numpy(self.autoencoder.encode(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32)

    def from_space(self, samples, batch_size=64):
        """Normalised samples of the U-Net's space as images in [0, 1]:
        denormalised, and for a latent model decoded (in chunks)."""
        samples = self.denormalize(samples)
        if self.autoencoder is None:
            return ops.convert_to_numpy(samples)
        samples = ops.convert_to_numpy(samples)
        chunks = [
            ops.convert_to_numpy(self.autoencoder.decode(samples[start : start + batch_size]))
            for start in range(0, len(samples), batch_size)
        ]
        return np.concatenate(chunks)

    # -- the diffusion model -------------------------------------------------

    @property
    def null_class(self):
        """The label that means "no class": what label dropout trains and
        classifier-free guidance's unconditional half uses."""
        return self.num_classes

    def network_outputs(self, noisy_images, noise_rates, class_labels=None, training=False):
        """The raw prediction (noise, image or velocity) of the training
        network when `training`, of the EMA network otherwise. A conditional
        model given no labels predicts for the null class."""
        network = self.network if training else self.ema_network
        inputs = [noisy_images, noise_rates**2]
        if self.num_classes:
            if class_labels is None:
                class_labels = ops.full((ops.shape(noisy_images)[0],), self.null_class, "int32")
            inputs.append(ops.cast(ops.reshape(class_labels, (-1,)), "int32"))
        return ops.cast(network(inputs, training=training), "float32")

    def split_prediction(self, outputs, noisy_images, noise_rates, signal_rates):
        """The network's outputs as `(pred_noises, pred_images)`.

        With x = signal * image + noise * eps and signal**2 + noise**2 = 1 (true
        of every schedule here), a prediction of eps, of the image or of the
        velocity v = signal * eps - noise * image each gives the other two:
        image = signal * x - noise * v and eps = noise * x + signal * v.
        """
        if self.prediction == "noise":
            pred_noises = outputs
            pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        elif self.prediction == "image":
            pred_images = outputs
            pred_noises = (noisy_images - signal_rates * pred_images) / noise_rates
        else:
            pred_images = signal_rates * noisy_images - noise_rates * outputs
            pred_noises = noise_rates * noisy_images + signal_rates * outputs
        return pred_noises, pred_images

    def prediction_targets(self, images, noises, noise_rates, signal_rates):
        """What the network should output for these (normalised) images and
        noises: the loss compares this with `network_outputs`."""
        if self.prediction == "noise":
            return noises
        if self.prediction == "image":
            return images
        return signal_rates * noises - noise_rates * images

    def denoise(self, noisy_images, noise_rates, signal_rates, training, class_labels=None):
        """Splits noisy images into predicted noise and predicted clean images.

        The training network is used when `training`, the EMA network otherwise.
        """
        outputs = self.network_outputs(noisy_images, noise_rates, class_labels, training)
        return self.split_prediction(outputs, noisy_images, noise_rates, signal_rates)

    def _global_draw(self, draw, local_batch, tail_shape, seed):
        """Draws `draw(shape, seed)` for the whole global batch and keeps this
        replica's slice: under a distribution strategy each replica holds a
        slice of the global batch, and every image gets the draw it would get
        on one device."""
        replica = tf.distribute.get_replica_context()
        replicas = 1 if replica is None else replica.num_replicas_in_sync
        replica_id = 0 if replica is None else replica.replica_id_in_sync_group
        start = replica_id * local_batch
        shape = tf.concat([[local_batch * replicas], tf.cast(tail_shape, "int32")], axis=0)
        return draw(shape, seed)[start : start + local_batch]

    def _noisy_batch(self, images, seed):
        """Draws noises and diffusion times for a batch and mixes them in."""
        images = self.normalize(self.to_space(images_of(images)))
        local_batch = ops.shape(images)[0]
        noises = self._global_draw(
            tf.random.stateless_normal, local_batch, ops.shape(images)[1:], seed
        )
        diffusion_times = self._global_draw(
            tf.random.stateless_uniform, local_batch, [1, 1, 1], self._substream(seed, 1)
        )
        noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        return images, noises, noisy_images, noise_rates, signal_rates

    def _training_labels(self, data, seed, local_batch):
        """The batch's labels with `label_dropout` of them set to the null
        class; None for an unconditional model."""
        if not self.num_classes:
            return None
        labels = _labels_of(data)
        if labels is None:
            raise ValueError(
                "this model is class-conditional (num_classes > 0); train it on "
                "(images, labels) batches"
            )
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        draws = self._global_draw(
            tf.random.stateless_uniform, local_batch, [], self._substream(seed, 2)
        )
        return ops.where(draws < self.label_dropout, self.null_class, labels)

    @staticmethod
    def _substream(seed, index):
        return tf.stack([seed[0], seed[1] + index * (1 << 40)])

    def _step_seed(self, counter, stream):
        # A stateless seed from (model seed, stream, counter): the same model,
        # seed and step always draw the same noise, so a resumed run repeats an
        # uninterrupted one.
        return tf.stack([tf.constant(self.seed, "int64") * 4 + stream, tf.cast(counter, "int64")])

    def ema_decay(self):
        """The EMA decay for the next update, with the warm-up if enabled."""
        if not self.ema_warmup:
            return ops.convert_to_tensor(self.ema, "float32")
        n = ops.cast(self.train_steps, "float32")
        return ops.minimum(self.ema, (1.0 + n) / (10.0 + n))

    def update_ema(self):
        decay = self.ema_decay()
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)

    def _track(self, images, noises, pred_noises, pred_images, targets, outputs):
        self.noise_loss_tracker.update_state(self.loss_fn(noises, pred_noises))
        self.image_loss_tracker.update_state(self.loss_fn(images, pred_images))
        if self.prediction == "velocity":
            self.velocity_loss_tracker.update_state(self.loss_fn(targets, outputs))
        return {m.name: m.result() for m in self.metrics}

    def training_loss(self, targets, outputs, noise_rates, signal_rates):
        """The loss the optimizer minimises: `loss` on the prediction, each
        image weighted by its noise level as `loss_weighting` says."""
        if self.loss_weighting == "none":
            return self.loss_fn(targets, outputs)  # the book's, op for op
        errors = targets - outputs
        errors = ops.abs(errors) if self.loss_name == "mae" else ops.square(errors)
        weights = loss_weights(
            self.loss_weighting, noise_rates, signal_rates, self.prediction, self.min_snr_gamma
        )
        return ops.mean(weights * ops.mean(errors, axis=(1, 2, 3), keepdims=True))

    def train_step(self, data):
        seed = self._step_seed(self.train_steps, stream=0)
        images, noises, noisy_images, noise_rates, signal_rates = self._noisy_batch(data, seed)
        class_labels = self._training_labels(data, seed, ops.shape(images)[0])
        targets = self.prediction_targets(images, noises, noise_rates, signal_rates)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            # 1. Train the network to predict the noise (or the image, or the
            #    velocity) in the noisy images.
            outputs = self.network_outputs(noisy_images, noise_rates, class_labels, training=True)
            loss = self.training_loss(targets, outputs, noise_rates, signal_rates)
            # 2. The optimizer sums gradients over replicas, so each replica's
            #    loss is divided by their number: N replicas with global batch B
            #    take the same step as one device with batch B. `scale_loss`
            #    applies loss scaling under mixed_float16.
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        gradients = tape.gradient(scaled_loss, self.network.trainable_weights)
        self.optimizer.apply(gradients, self.network.trainable_weights)
        # 3. The EMA network follows the trained one, BatchNorm statistics too.
        self.update_ema()
        self.train_steps.assign_add(1)
        self.step_loss_tracker.reset_state()
        self.step_loss_tracker.update_state(loss)

        pred_noises, pred_images = self.split_prediction(
            outputs, noisy_images, noise_rates, signal_rates
        )
        return self._track(images, noises, pred_noises, pred_images, targets, outputs)

    def test_step(self, data):
        seed = self._step_seed(self.eval_steps, stream=1)
        images, noises, noisy_images, noise_rates, signal_rates = self._noisy_batch(data, seed)
        class_labels = None
        if self.num_classes and _labels_of(data) is not None:
            class_labels = _labels_of(data)
        outputs = self.network_outputs(noisy_images, noise_rates, class_labels, training=False)
        self.eval_steps.assign_add(1)
        targets = self.prediction_targets(images, noises, noise_rates, signal_rates)
        pred_noises, pred_images = self.split_prediction(
            outputs, noisy_images, noise_rates, signal_rates
        )
        return self._track(images, noises, pred_noises, pred_images, targets, outputs)

    # -- sampling ------------------------------------------------------------

    def guided_denoise(self, noisy_images, noise_rates, signal_rates, guide=None):
        """`denoise` with the EMA network, steered as `guide` says (see
        `diffusion_keras.guidance.guided_denoise`): what samplers call."""
        return guidance.guided_denoise(self, noisy_images, noise_rates, signal_rates, guide)

    @property
    def sample_shape(self):
        """The shape of one sample in the U-Net's space: `(image_size,
        image_size, channels)`, or a latent model's latent shape."""
        return (self.space_size, self.space_size, self.space_channels)

    @property
    def sampler(self):
        """This model's `sampling.Sampler` (its compiled loops are cached)."""
        if self._sampler is None:
            self._sampler = Sampler(self)
        return self._sampler

    def sampling_step(
        self, current_images, pred_images, step, diffusion_steps, sampler="ddim", eta=0.0,
        step_noises=None, guide=None, times=None,
    ):  # fmt: skip
        """One step of `sampler`; see `diffusion_keras.sampling.sampling_step`.
        Returns `(next_images, pred_images)`."""
        return sampling.sampling_step(
            self, current_images, pred_images, step, diffusion_steps, sampler, eta,
            step_noises, guide, times,
        )  # fmt: skip

    def ddim_step(self, current_images, step, diffusion_steps):
        """One deterministic DDIM step (eta = 0), as the book's loop takes it.
        Returns `(next_images, pred_images)`."""
        return self.sampling_step(current_images, current_images, step, diffusion_steps)

    def reverse_diffusion(self, initial_noise, diffusion_steps, sampler="ddim", eta=0.0,
                          step_noises=None, guide=None, spacing="uniform"):  # fmt: skip
        """Runs `sampler` from `initial_noise` (normalised space) in
        `diffusion_steps` steps and returns the last predicted images, as the
        book does. Eager, a Python loop; `generate` uses a compiled equivalent.
        `step_noises` `(diffusion_steps, n, size, size, channels)` is needed
        when `eta` > 0; `guide` is as in `guided_denoise`; `spacing` as in
        `generate`."""
        return sampling.reverse_diffusion(
            self, initial_noise, diffusion_steps, sampler, eta, step_noises, guide, spacing
        )

    def class_index(self, name_or_index):
        """The label of a class given by name or by index (as int or str)."""
        if not self.num_classes:
            raise ValueError("this model is not class-conditional; it takes no class")
        if isinstance(name_or_index, str) and name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        try:
            index = int(name_or_index)
        except (TypeError, ValueError):
            index = None
        if index is None or not 0 <= index < self.num_classes:
            shown = ", ".join(self.class_names[:10]) + (", ..." if self.num_classes > 10 else "")
            raise ValueError(
                f"unknown class {name_or_index!r}; this model has {self.num_classes} "
                f"classes: {shown} (or an index 0..{self.num_classes - 1})"
            )
        return index

    def generate(
        self,
        num_images=None,
        diffusion_steps=20,
        initial_noise=None,
        seed=None,
        batch_size=64,
        progress=False,
        sampler="ddim",
        eta=0.0,
        class_labels=None,
        guidance_scale=1.0,
        classifier=None,
        classifier_scale=1.0,
        spacing="uniform",
    ):
        """Generates images in [0, 1] as a numpy array `(n, size, size, channels)`.

        Args:
            num_images: int. How many images; may be omitted when
                `initial_noise` is given.
            diffusion_steps: int. Sampling steps (network evaluations).
                Defaults to 20.
            initial_noise: array or None. Starting noise `(n, size, size,
                channels)`; drawn from `seed` when None.
            seed: int or None. Same seed, same images (the fresh noise of
                `eta` > 0 included).
            batch_size: int. Images denoised at once. The result does not depend
                on it. Defaults to 64.
            progress: bool. Show a progress bar over the diffusion steps.
            sampler: str. `"ddim"` (the book's) or `"dpmpp_2m"` (second order,
                one network evaluation per step,
                closer to the exact ODE solution in few steps). Defaults to `"ddim"`.
            eta: float. For `ddim`, the share of fresh noise per step in
                [0, 1]: 0 is deterministic DDIM, 1 DDPM-like ancestral sampling.
                Defaults to 0.
            class_labels: a class name or index for every image, or one per
                image; None for unconditional images. A conditional model
                takes its own classes; an unconditional one those of
                `classifier`.
            guidance_scale: float. Classifier-free guidance weight w >= 0 for
                a conditional model: 1 is the conditional model, 0 the
                unconditional one, larger pushes harder towards the class.
                Defaults to 1.
            classifier: a `NoiseClassifier` or None. Steers sampling towards
                `class_labels` with its log-probability gradient.
            classifier_scale: float. Classifier guidance strength s >= 0.
                Defaults to 1.
            spacing: str. Where the steps fall: `"uniform"` in time (the
                book's) or `"log_snr"`, equal steps in log signal-to-noise
                ratio between the same first and last times, which gives
                better images in few steps (see the README). Defaults to
                `"uniform"`.
        """
        self._check_adapted()
        validate_sampler(sampler, eta)
        validate_spacing(spacing)
        expected = self.sample_shape
        if initial_noise is None:
            if num_images is None or int(num_images) < 1:
                raise ValueError(f"num_images must be >= 1, got {num_images}")
            initial_noise = self.make_noise(int(num_images), seed)
        initial_noise = np.asarray(initial_noise, dtype="float32")
        if initial_noise.ndim != 4 or initial_noise.shape[1:] != expected:
            raise ValueError(
                f"initial_noise must have shape (n, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {initial_noise.shape}"
            )
        if num_images is not None and int(num_images) != len(initial_noise):
            raise ValueError(
                f"num_images is {num_images} but initial_noise has {len(initial_noise)} images"
            )
        steering = guidance.steering(
            self, len(initial_noise), class_labels, guidance_scale, classifier, classifier_scale
        )
        diffusion_steps, batch_size = _positive_steps_and_batch(diffusion_steps, batch_size)
        pred_images = self.sampler.run(
            initial_noise, diffusion_steps, sampler, eta, seed, spacing=spacing,
            batch_size=batch_size, progress=progress, **steering,
        )  # fmt: skip
        return self.from_space(pred_images, batch_size)

    def edit(
        self, images, strength=None, mask=None, noise_level=None, resample=1,
        diffusion_steps=20, seed=None, sampler="ddim", eta=0.0, spacing="uniform",
        class_labels=None, guidance_scale=1.0, classifier=None, classifier_scale=1.0,
        batch_size=64, progress=False,
    ):  # fmt: skip
        """Edits existing images: image-to-image, inpainting or denoising.

        See `diffusion_keras.editing` for what each does and what strength means.

        Args:
            images: floats in [0, 1], `(n, size, size, channels)` (or one image).
            strength: float in (0, 1]. How far along the diffusion path the
                images are noised before sampling: near 0 returns them, 1 is
                plain generation (the images are not used, except where a mask
                keeps them). Defaults to 1 with a `mask`; needed otherwise.
            mask: 0 (keep) / 1 (regenerate), `(size, size)` for every image or
                one per image `(n, size, size[, 1 or channels])`; None edits the
                whole image.
            noise_level: float. Denoise instead: the standard deviation of the
                Gaussian noise already on `images` (in their [0, 1] units).
                Sampling starts at the time with that signal-to-noise ratio;
                with `diffusion_steps=1` it is the network's single estimate.
            resample: int >= 1. With a mask, how often each step is taken
                (RePaint's resampling); the cost grows with it.
            diffusion_steps, seed, sampler, eta, spacing, class_labels,
            guidance_scale, classifier, classifier_scale, batch_size,
            progress: as in `generate`. The noise is `make_noise(n, seed)`,
                the same as `generate`'s.

        Returns:
            A numpy array of images in [0, 1]; where `mask` is 0, exactly the input.
        """
        from diffusion_keras.editing import edit

        if self.autoencoder is not None:
            raise ValueError("editing works on pixel-space models; this one is a latent model")
        return edit(
            self, images, strength, mask, noise_level, resample, diffusion_steps, seed,
            sampler, eta, spacing, class_labels, guidance_scale, classifier,
            classifier_scale, batch_size, progress,
        )  # fmt: skip

    def _check_adapted(self):
        if not int(self.normalizer_adapted.numpy()):
            raise ValueError(
                "this model's normalizer was never adapted, so its images would be "
                "garbage; call model.adapt(images) before training"
            )

    def _step_noises(self, seed, indices, diffusion_steps):
        """Fresh noise for stochastic sampling, `(steps, n, size, size,
        channels)`, drawn per image from (seed, image index), so that it does
        not depend on the batch size."""
        return sampling.step_noises(self.sample_shape, seed, indices, diffusion_steps)

    def make_noise(self, num_images, seed=None):
        """Standard normal noise `(num_images, size, size, channels)` from `seed`.

        Drawn with numpy, so the same seed gives the same noise on every
        machine and for every batch size.
        """
        return sampling.make_noise(self.sample_shape, num_images, seed)


def _positive_steps_and_batch(diffusion_steps, batch_size):
    if int(diffusion_steps) < 1:
        raise ValueError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(diffusion_steps), int(batch_size)
