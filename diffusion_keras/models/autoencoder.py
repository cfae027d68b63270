"""A KL-regularised convolutional autoencoder: the first stage of latent diffusion.

Latent diffusion (Rombach et al. 2022) trains the diffusion model on the
latents of an autoencoder instead of on pixels: at a downsampling `factor` of
4 a 128x128x3 image becomes a 32x32x`latent_channels` latent, and every step
of training and sampling costs what a 32x32 image costs. This is the LDM
"KL-f4/f8" kind: the encoder gives a Gaussian posterior per latent element
(`means`, `log_variances`), training decodes a sample of it, and a small KL
term toward N(0, 1) keeps the latent space smooth without a codebook.

The losses need no downloaded weights (LDM's LPIPS does): pixel L1, SSIM
(`utils.similarity.structural_similarity`), the KL term, and optionally a
patch discriminator (Isola et al. 2017, TensorFlow only) with hinge losses,
switched on after `discriminator_start` steps.

Latents handed to the diffusion model are `means * latent_scale`, where
`latent_scale` is measured on the training data (`measure_latent_scale`) so
that they have unit variance, as Stable Diffusion's 0.18215 does for its
autoencoder; it is a weight of the model, so it saves and loads with it.

Vocabulary: `images` are float pixels in [0, 1] (uint8 and 0..255 floats are
read as in `DiffusionModel`), `latents` are scaled latents.

References:
- [Rombach et al., 2022 (latent diffusion)](https://arxiv.org/abs/2112.10752)
- [Kingma & Welling, 2014 (the KL-regularised latent)](https://arxiv.org/abs/1312.6114)
- [Isola et al., 2017 (patch discriminator)](https://arxiv.org/abs/1611.07004)
- [Wang et al., 2004 (SSIM)](https://ieeexplore.ieee.org/document/1284395)
"""

import math

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.utils import backend
from diffusion_keras.utils.pixels import images_of, is_tf_dataset, pixels_in_unit_range
from diffusion_keras.utils.similarity import peak_signal_to_noise, structural_similarity

FACTORS = (4, 8)
LOG_VARIANCE_RANGE = (-30.0, 20.0)


def default_widths(factor):
    """Encoder widths, one per level (log2(factor) downsamplings + 1)."""
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
    # LDM's KL-f4 has 128, 256, 512; these are CPU-sized (about a sixteenth
    # of its cost at full resolution).
    return {4: (32, 64, 128), 8: (32, 64, 128, 128)}[factor]


def validate_autoencoder_args(factor, latent_channels, widths, block_depth, groups):
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
    if latent_channels < 1:
        raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
    levels = int(math.log2(factor)) + 1
    if len(widths) != levels:
        raise ValueError(
            f"factor {factor} needs {levels} widths (one per level), got {len(widths)}"
        )
    if block_depth < 1:
        raise ValueError(f"block_depth must be >= 1, got {block_depth}")
    bad = [w for w in widths if w < 1 or w % groups]
    if bad:
        raise ValueError(f"every width must be a positive multiple of groups={groups}, got {bad}")


def _residual(x, width, groups, name):
    """GroupNorm, swish, conv, twice, plus the input (1x1 conv when the width changes)."""
    skip = x if x.shape[-1] == width else layers.Conv2D(width, 1, name=f"{name}_skip")(x)
    for k in (1, 2):
        x = layers.GroupNormalization(groups, epsilon=1e-6, name=f"{name}_norm{k}")(x)
        x = layers.Activation("swish")(x)
        x = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv{k}")(x)
    return layers.Add(name=f"{name}_add")([x, skip])


def _head(x, channels, groups, name):
    x = layers.GroupNormalization(groups, epsilon=1e-6, name=f"{name}_norm")(x)
    x = layers.Activation("swish")(x)
    return layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv")(x)


def build_encoder(latent_channels=4, widths=(32, 64, 128), block_depth=1, groups=8):
    """Images in [-1, 1], any size divisible by 2**(len(widths) - 1), to
    `means` and `log_variances` concatenated on the channels."""
    images = keras.Input(shape=(None, None, 3), name="images")
    x = layers.Conv2D(widths[0], 3, padding="same", name="encoder_in")(images)
    for level, width in enumerate(widths):
        for block in range(block_depth):
            x = _residual(x, width, groups, f"down{level}_{block}")
        if level < len(widths) - 1:
            x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
            x = layers.Conv2D(width, 3, strides=2, name=f"down{level}_sample")(x)
    x = _residual(x, widths[-1], groups, "encoder_mid")
    moments = _head(x, 2 * latent_channels, groups, "encoder_out")
    return keras.Model(images, moments, name="encoder")


def build_decoder(latent_channels=4, widths=(32, 64, 128), block_depth=1, groups=8):
    """Unscaled latents to images in about [-1, 1], the encoder mirrored."""
    latents = keras.Input(shape=(None, None, latent_channels), name="latents")
    x = layers.Conv2D(widths[-1], 3, padding="same", name="decoder_in")(latents)
    x = _residual(x, widths[-1], groups, "decoder_mid")
    for level in reversed(range(len(widths))):
        for block in range(block_depth + 1):
            x = _residual(x, widths[level], groups, f"up{level}_{block}")
        if level > 0:
            x = layers.UpSampling2D(2, interpolation="nearest")(x)
            x = layers.Conv2D(widths[level - 1], 3, padding="same", name=f"up{level}_sample")(x)
    images = _head(x, 3, groups, "decoder_out")
    return keras.Model(latents, images, name="decoder")


def build_patch_discriminator(width=32, depth=3):
    """PatchGAN: a logit per overlapping patch of an image in [-1, 1]."""
    images = keras.Input(shape=(None, None, 3), name="images")
    x = images
    for level in range(depth):
        x = layers.Conv2D(width * 2**level, 4, strides=2, padding="same")(x)
        if level:
            x = layers.GroupNormalization(min(8, width), epsilon=1e-6)(x)
        x = layers.LeakyReLU(0.2)(x)
    logits = layers.Conv2D(1, 4, padding="same")(x)
    return keras.Model(images, logits, name="discriminator")


def kl_divergences(means, log_variances):
    """Per-image mean over latent elements of KL(N(mean, var) || N(0, 1))."""
    terms = ops.square(means) + ops.exp(log_variances) - 1.0 - log_variances
    return 0.5 * ops.mean(terms, axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="diffusion_keras")
class Autoencoder(keras.Model):
    """Encoder and decoder of a KL-regularised latent, with its own training step.

    `fit` takes images (float [0, 1], uint8 or 0..255 floats, or
    `(images, labels)` pairs whose labels it ignores). Call
    `measure_latent_scale(images)` after training, before the latents are used.

    Args:
        factor: int. Downsampling factor, 4 or 8. Defaults to 4.
        latent_channels: int. Channels of the latent. Defaults to 4.
        widths: tuple of int or None. Encoder widths per level, `log2(factor) + 1`
            of them (the decoder mirrors them). Defaults to `default_widths(factor)`.
        block_depth: int. Residual blocks per encoder level (the decoder has
            one more, as in LDM). Defaults to 1.
        groups: int. Group normalization groups. Defaults to 8.
        kl_weight: float. Weight of the mean KL term against the mean L1.
            Defaults to 1e-6.
        ssim_weight: float. Weight of `1 - SSIM`. Defaults to 0.2.
        discriminator_weight: float. Weight of the patch discriminator's
            generator loss; 0 builds no discriminator. Defaults to 0.0.
        discriminator_start: int. Training steps before the discriminator's
            losses start. Defaults to 0.
        seed: int. Seed of the posterior samples drawn in training. Defaults to 0.
    """

    def __init__(
        self,
        factor=4,
        latent_channels=4,
        widths=None,
        block_depth=1,
        groups=8,
        kl_weight=1e-6,
        ssim_weight=0.2,
        discriminator_weight=0.0,
        discriminator_start=0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        widths = tuple(widths or default_widths(factor))
        validate_autoencoder_args(factor, latent_channels, widths, block_depth, groups)
        if kl_weight < 0 or ssim_weight < 0 or discriminator_weight < 0:
            raise ValueError("kl_weight, ssim_weight and discriminator_weight must be >= 0")
        self.factor = factor
        self.latent_channels = latent_channels
        self.widths = widths
        self.block_depth = block_depth
        self.groups = groups
        self.kl_weight = kl_weight
        self.ssim_weight = ssim_weight
        self.discriminator_weight = discriminator_weight
        self.discriminator_start = discriminator_start
        self.seed = seed
        self.encoder = build_encoder(latent_channels, widths, block_depth, groups)
        self.decoder = build_decoder(latent_channels, widths, block_depth, groups)
        self.discriminator = build_patch_discriminator() if discriminator_weight > 0 else None
        self.discriminator_optimizer = None
        # A frozen autoencoder (loaded as part of a latent model) freezes its
        # parts, which it builds after Keras set its own `trainable`.
        for part in (self.encoder, self.decoder, self.discriminator):
            if part is not None:
                part.trainable = self.trainable
        self.latent_scale = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="latent_scale"
        )
        self.train_steps = self.add_weight(
            shape=(), initializer="zeros", dtype=backend.counter_dtype(), trainable=False,
            name="train_steps"
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = ["loss", "l1", "ssim", "kl", "psnr"]
        if self.discriminator is not None:
            names.append("discriminator_loss")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer="adam", discriminator_optimizer=None, **kwargs):
        """`discriminator_optimizer` defaults to Adam(1e-4, beta_1=0.5) when
        there is a discriminator."""
        super().compile(optimizer=optimizer, **kwargs)
        if self.discriminator is not None:
            self.discriminator_optimizer = discriminator_optimizer or keras.optimizers.Adam(
                1e-4, beta_1=0.5
            )
            self.discriminator_optimizer.build(self.discriminator.trainable_weights)

    def compile_from_config(self, config):
        """Recompiles a loaded model with its saved optimizer, built for the
        weights it updates, so that its saved state loads too."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(optimizer=config.get("optimizer") or "adam")
        self.optimizer.build(self.encoder.trainable_weights + self.decoder.trainable_weights)

    # --- the two halves -------------------------------------------------

    def moments(self, images):
        """`(means, log_variances)` of the posterior for images in [0, 1]."""
        moments = self.encoder(2.0 * pixels_in_unit_range(images) - 1.0)
        means, log_variances = ops.split(ops.cast(moments, "float32"), 2, axis=-1)
        return means, ops.clip(log_variances, *LOG_VARIANCE_RANGE)

    def encode(self, images, sample=False, seed=None):
        """Scaled latents of `images`: the posterior means times
        `latent_scale`, or with `sample=True` a seeded sample of the posterior."""
        means, log_variances = self.moments(images)
        if sample:
            noise = keras.random.normal(ops.shape(means), seed=seed)
            means = means + ops.exp(0.5 * log_variances) * noise
        return means * self.latent_scale

    def decode(self, latents):
        """Images in [0, 1] from scaled latents."""
        images = self.decoder(ops.convert_to_tensor(latents, "float32") / self.latent_scale)
        return ops.clip((ops.cast(images, "float32") + 1.0) / 2.0, 0.0, 1.0)

    def call(self, images):
        return self.decode(self.encode(images))

    def latent_shape(self, image_size):
        if image_size % self.factor:
            raise ValueError(
                f"image size {image_size} is not divisible by the autoencoder's "
                f"factor {self.factor}"
            )
        return (image_size // self.factor, image_size // self.factor, self.latent_channels)

    def measure_latent_scale(self, images, batch_size=64):
        """Sets `latent_scale` to 1 / the standard deviation of the posterior
        means over `images` (an array or a dataset of batches); returns it."""
        total, total_squares, count = 0.0, 0.0, 0
        batches = (
            images
            if is_tf_dataset(images)
            else (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        )
        for batch in batches:
            means = ops.convert_to_numpy(self.moments(images_of(batch))[0]).astype(np.float64)
            total += means.sum()
            total_squares += np.square(means).sum()
            count += means.size
        if not count:
            raise ValueError("measure_latent_scale needs at least one image")
        variance = total_squares / count - (total / count) ** 2
        scale = 1.0 / math.sqrt(max(variance, 1e-12))
        self.latent_scale.assign(scale)
        return scale

    # --- training ---------------------------------------------------------

    def _reconstruction_terms(self, images, reconstructions):
        """Per-batch L1 (in [-1, 1] units, as LDM), SSIM and PSNR (in [0, 1])."""
        targets = 2.0 * images - 1.0
        l1 = ops.mean(ops.abs(reconstructions - targets))
        pixels = ops.clip((reconstructions + 1.0) / 2.0, 0.0, 1.0)
        ssim = ops.mean(structural_similarity(pixels, images, filter_size=7))
        psnr = ops.mean(peak_signal_to_noise(pixels, images))
        return l1, ssim, psnr

    def _reconstruction_loss(self, l1, ssim, kl):
        return l1 + self.ssim_weight * (1.0 - ssim) + self.kl_weight * kl

    def train_step(self, *args):
        # `(data)`, or under JAX `(state, data)` (`utils.backend.train_step`).
        if self.discriminator is not None:
            backend.require_tensorflow("an autoencoder with a patch discriminator")
            return self._adversarial_train_step(*args)
        weights = self.encoder.trainable_weights + self.decoder.trainable_weights
        return backend.train_step(self, args, self._forward, self._finish, weights)

    def _forward(self, data):
        images = pixels_in_unit_range(images_of(data))
        # 1. Decode a sample of the posterior (the reparameterisation
        # trick), so that the decoder learns to tolerate the spread the KL
        # term asks for.
        means, log_variances = self.moments(images)
        noise = keras.random.normal(ops.shape(means), seed=self.seed_generator)
        latents = means + ops.exp(0.5 * log_variances) * noise
        reconstructions = ops.cast(self.decoder(latents), "float32")
        self._last_reconstructions = reconstructions  # the adversarial step's
        l1, ssim, psnr = self._reconstruction_terms(images, reconstructions)
        kl = ops.mean(kl_divergences(means, log_variances))
        loss = self._reconstruction_loss(l1, ssim, kl)
        return loss, dict(loss=loss, l1=l1, ssim=ssim, kl=kl, psnr=psnr)

    def _finish(self, data, loss, values):
        self.train_steps.assign_add(1)
        return self._update(values)

    def _adversarial_train_step(self, data):
        import tensorflow as tf

        images = pixels_in_unit_range(images_of(data))
        started = ops.cast(self.train_steps >= self.discriminator_start, "float32")
        with tf.GradientTape() as tape:
            loss, values = self._forward(data)
            # 2. The generator's hinge loss: make the patches look real.
            reconstructions = self._last_reconstructions
            fake_logits = ops.cast(self.discriminator(reconstructions), "float32")
            loss = loss - started * self.discriminator_weight * ops.mean(fake_logits)
            scaled_loss = self.optimizer.scale_loss(loss)
        weights = self.encoder.trainable_weights + self.decoder.trainable_weights
        self.optimizer.apply(tape.gradient(scaled_loss, weights), weights)
        values["loss"] = loss
        # 3. The discriminator's hinge loss on real images and on the
        # (fixed) reconstructions; no update before the start step.
        with tf.GradientTape() as tape:
            real = ops.cast(self.discriminator(2.0 * images - 1.0), "float32")
            fake = ops.cast(self.discriminator(ops.stop_gradient(reconstructions)), "float32")
            d_loss = ops.mean(ops.relu(1.0 - real)) + ops.mean(ops.relu(1.0 + fake))
        d_weights = self.discriminator.trainable_weights
        gradients = [started * g for g in tape.gradient(d_loss, d_weights)]
        self.discriminator_optimizer.apply(gradients, d_weights)
        values["discriminator_loss"] = d_loss
        self.train_steps.assign_add(1)
        return self._update(values)

    def test_step(self, *args):
        return backend.test_step(self, args, self._evaluate)

    def _evaluate(self, data):
        images = pixels_in_unit_range(images_of(data))
        means, log_variances = self.moments(images)
        reconstructions = ops.cast(self.decoder(means), "float32")
        l1, ssim, psnr = self._reconstruction_terms(images, reconstructions)
        kl = ops.mean(kl_divergences(means, log_variances))
        loss = self._reconstruction_loss(l1, ssim, kl)
        return self._update(dict(loss=loss, l1=l1, ssim=ssim, kl=kl, psnr=psnr))

    def _update(self, values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: self.trackers[name].result() for name in values}

    def get_config(self):
        config = super().get_config()
        config.update(
            factor=self.factor,
            latent_channels=self.latent_channels,
            widths=list(self.widths),
            block_depth=self.block_depth,
            groups=self.groups,
            kl_weight=self.kl_weight,
            ssim_weight=self.ssim_weight,
            discriminator_weight=self.discriminator_weight,
            discriminator_start=self.discriminator_start,
            seed=self.seed,
        )
        return config
