"""Pixels or latents: the space a `DiffusionModel`'s U-Net works in.

`Space` is the part of `DiffusionModel` that takes images into that space and
back: the per-channel normalisation the model adapts to its data, and for a
latent model the frozen autoencoder's encoding and decoding. It holds no
state of its own: the normalizer and autoencoder are the model's (so that
they are saved where files have always kept them), handed to it.
"""

import keras
import numpy as np
from keras import ops

from diffusion_keras.utils.pixels import (
    images_of,
    is_tf_dataset,
    pixels_in_unit_range,
    tf_pixels_in_unit_range,
    warn_about_pixel_range,
)


class Space:
    """Normalisation and pixels-or-latents for a model: `model.space`.

    Args:
        normalizer: the model's `keras.layers.Normalization` (built).
        adapted: the model's counter that says the normalizer was adapted.
        autoencoder: a latent model's frozen `Autoencoder`, or None.
        sample_shape: one sample's shape in the U-Net's space.
    """

    def __init__(self, normalizer, adapted, autoencoder, sample_shape):
        self.normalizer, self.normalizer_adapted = normalizer, adapted
        self.autoencoder, self.sample_shape = autoencoder, tuple(sample_shape)
        self.space_channels = self.sample_shape[-1]

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
        if is_tf_dataset(dataset):
            images = dataset.map(lambda *e: images_of(e if len(e) > 1 else e[0]))
            first = next(iter(images.take(1)), None)
            if first is None:
                raise ValueError("adapt got an empty dataset")
            if self.autoencoder is None:
                warn_about_pixel_range(first)
                dataset = images.map(tf_pixels_in_unit_range)
            else:
                if not self._are_latents(first):
                    warn_about_pixel_range(first)
                dataset = np.concatenate([self._latents_of(batch) for batch in images])
        else:
            images = images_of(dataset)
            if self.autoencoder is None:
                warn_about_pixel_range(images)
                dataset = pixels_in_unit_range(images)
            else:
                if not self._are_latents(images):
                    warn_about_pixel_range(images)
                dataset = self._latents_of(images)
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
        images = ops.convert_to_tensor(images, "float32")
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
        if self._are_latents(images):
            return ops.cast(images, "float32")
        return self.autoencoder.encode(images)

    def _are_latents(self, batch):
        return tuple(batch.shape[1:]) == tuple(self.sample_shape)

    def _latents_of(self, batch):
        # A batch with the latent shape already is latents (`to_space`).
        if self._are_latents(batch):
            return np.asarray(batch, np.float32)
        return self.encode_images(batch)

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
