"""`NoiseClassifier`: a classifier of noisy images for classifier guidance."""

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.diffusion.schedules import get_schedule, validate_schedule
from diffusion_keras.nn.layers import (
    KernelInitializers,
    SinusoidalEmbedding,
    residual_block,
    validate_batch_norm,
)
from diffusion_keras.sampling.guidance import find_class
from diffusion_keras.utils import backend
from diffusion_keras.utils.pixels import pixels_in_unit_range

CLASSIFIER_WIDTHS = (32, 64, 96)


def build_classifier_network(
    image_size, channels, num_classes, widths, block_depth, embedding_dims, seed=None,
    name="classifier_network", batch_norm="fused",
):  # fmt: skip
    """The U-Net's downsampling half with a classification head: noisy images
    and their noise variances in, class logits out."""
    noisy_images = keras.Input(shape=(image_size, image_size, channels))
    noise_variances = keras.Input(shape=(1, 1, 1))
    initializers = KernelInitializers(seed)
    x = layers.Conv2D(widths[0], kernel_size=1, kernel_initializer=initializers())(noisy_images)
    embedding = SinusoidalEmbedding(embedding_dims, dtype="float32")(noise_variances)
    embedding = layers.UpSampling2D(size=image_size)(embedding)
    x = layers.Concatenate()([x, embedding])
    for level, width in enumerate(widths):
        for _ in range(block_depth):
            x = residual_block(x, width, initializers, batch_norm=batch_norm)
        if level < len(widths) - 1:
            x = layers.AveragePooling2D(pool_size=2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(num_classes, kernel_initializer=initializers(), dtype="float32")(x)
    return keras.Model([noisy_images, noise_variances], logits, name=name)


@keras.saving.register_keras_serializable(package="diffusion_keras")
class NoiseClassifier(keras.Model):
    """Classifies noisy images x_t at any diffusion time: p(y | x_t).

    It is trained on the diffusion model's forward process (same schedule,
    same normalised image space), so that its log-probability gradient can
    steer that model's sampler towards a class (classifier guidance). Build
    one for a model with `NoiseClassifier.for_model`.

    Args:
        image_size: int. Defaults to 64.
        channels: int. Defaults to 3.
        num_classes: int. At least 2.
        class_names: list of str or None. Defaults to `"0"`, `"1"`...
        widths: sequence of int. Widths of the levels. Defaults to
            `(32, 64, 96)`.
        block_depth: int. Residual blocks per level. Defaults to 1.
        embedding_dims: int. Noise embedding size. Defaults to 32.
        schedule, min_signal_rate, max_signal_rate: the diffusion model's.
        mean, variance: lists of per-channel statistics of the diffusion
            model's normalizer.
        seed: int. Seeds the weights and the training noise. Defaults to 0.

    References:
    - [Dhariwal & Nichol, 2021](https://arxiv.org/abs/2105.05233)
    """

    def __init__(
        self,
        image_size=64,
        channels=3,
        num_classes=2,
        class_names=None,
        widths=CLASSIFIER_WIDTHS,
        block_depth=1,
        embedding_dims=32,
        schedule="offset_cosine",
        min_signal_rate=0.02,
        max_signal_rate=0.95,
        mean=None,
        variance=None,
        seed=0,
        batch_norm="fused",
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_batch_norm(batch_norm)
        self.batch_norm = batch_norm
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        validate_schedule(schedule, min_signal_rate, max_signal_rate)
        class_names = [str(i) for i in range(num_classes)] if class_names is None else class_names
        if len(class_names) != num_classes:
            raise ValueError(f"class_names must be {num_classes} names, got {class_names}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names]
        self.widths = [int(w) for w in widths]
        self.block_depth = int(block_depth)
        self.embedding_dims = int(embedding_dims)
        self.schedule = schedule
        self.min_signal_rate = float(min_signal_rate)
        self.max_signal_rate = float(max_signal_rate)
        self.mean = [0.0] * self.channels if mean is None else [float(m) for m in mean]
        self.variance = [1.0] * self.channels if variance is None else [float(v) for v in variance]
        self.seed = int(seed)
        self.diffusion_schedule = get_schedule(schedule, min_signal_rate, max_signal_rate)
        self.network = build_classifier_network(
            self.image_size, self.channels, self.num_classes, self.widths, self.block_depth,
            self.embedding_dims, self.seed, batch_norm=batch_norm,
        )  # fmt: skip
        self.train_steps = self.add_weight(
            shape=(), dtype=backend.counter_dtype(), initializer="zeros", trainable=False,
            name="train_steps"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.built = True

    @classmethod
    def for_model(cls, model, class_names, **kwargs):
        """A classifier for `model`'s image size, schedule and normalisation."""
        mean = np.asarray(model.normalizer.adapt_mean).reshape(-1).tolist()
        variance = np.asarray(model.normalizer.adapt_variance).reshape(-1).tolist()
        return cls(
            image_size=model.image_size,
            channels=model.channels,
            num_classes=len(class_names),
            class_names=list(class_names),
            schedule=model.schedule,
            min_signal_rate=model.min_signal_rate,
            max_signal_rate=model.max_signal_rate,
            mean=mean,
            variance=variance,
            **kwargs,
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "widths": list(self.widths),
            "block_depth": self.block_depth,
            "embedding_dims": self.embedding_dims,
            "schedule": self.schedule,
            "min_signal_rate": self.min_signal_rate,
            "max_signal_rate": self.max_signal_rate,
            "mean": list(self.mean),
            "variance": list(self.variance),
            "seed": self.seed,
            "batch_norm": self.batch_norm,
        }

    @classmethod
    def from_config(cls, config):
        # Files saved before `batch_norm` existed hold Keras's BatchNormalization.
        return cls(**{"batch_norm": "keras", **config})

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def check_compatible(self, model):
        """Raises `ValueError` unless this classifier sees `model`'s images
        as it was trained to: same size, channels and normalisation."""
        if (model.image_size, model.channels) != (self.image_size, self.channels):
            raise ValueError(
                f"the classifier takes {self.image_size}x{self.image_size}x{self.channels} "
                f"images but the model makes {model.image_size}x{model.image_size}x"
                f"{model.channels}"
            )
        mean = np.asarray(model.normalizer.adapt_mean).reshape(-1)
        variance = np.asarray(model.normalizer.adapt_variance).reshape(-1)
        if not (
            np.allclose(mean, self.mean, atol=1e-4)
            and np.allclose(variance, self.variance, atol=1e-4)
        ):
            raise ValueError(
                "the classifier was trained for another model's data (its normalisation "
                "statistics differ); train one with train.py --train-classifier"
            )

    def class_index(self, name_or_index):
        index = find_class(self.class_names, name_or_index)
        if index is None:
            raise ValueError(
                f"unknown class {name_or_index!r}; the classifier's classes are: "
                + ", ".join(self.class_names)
            )
        return index

    def normalize(self, images):
        mean = ops.reshape(ops.convert_to_tensor(self.mean, "float32"), (1, 1, 1, -1))
        variance = ops.reshape(ops.convert_to_tensor(self.variance, "float32"), (1, 1, 1, -1))
        images = pixels_in_unit_range(images)
        return (images - mean) / ops.maximum(ops.sqrt(variance), 1e-7)

    def call(self, inputs, training=False):
        noisy_images, noise_rates = inputs
        return self.network([noisy_images, noise_rates**2], training=training)

    def log_probability_gradients(self, noisy_images, noise_rates, class_labels):
        """grad_x log p(y | x_t) for each image (normalised space)."""
        labels = ops.cast(ops.reshape(class_labels, (-1, 1)), "int32")

        def log_probabilities(images):
            logits = self([images, noise_rates], training=False)
            log_probabilities = ops.log_softmax(ops.cast(logits, "float32"))
            return ops.take_along_axis(log_probabilities, labels, axis=1)

        # Images are independent (batch norm in inference mode), so the
        # gradient of the sum is each image's own gradient.
        return backend.input_gradients(log_probabilities, noisy_images)

    def classify(self, images, diffusion_times=0.0):
        """Class probabilities of clean images in [0, 1] (numpy), seen at
        `diffusion_times` (0: as little noise as the schedule allows)."""
        images = self.normalize(images)
        times = ops.full((ops.shape(images)[0], 1, 1, 1), float(diffusion_times))
        noise_rates, signal_rates = self.diffusion_schedule(times)
        logits = self([signal_rates * images, noise_rates], training=False)
        return ops.convert_to_numpy(ops.softmax(logits))

    def train_step(self, *args):
        # `(data)`, or under JAX `(state, data)` (`utils.backend.train_step`).
        return backend.train_step(
            self, args, self._forward, self._finish, self.network.trainable_weights
        )

    def _labels(self, data):
        return ops.cast(ops.reshape(data[1], (-1,)), "int32")

    def _forward(self, data):
        images, labels = self.normalize(data[0]), self._labels(data)
        batch = ops.shape(images)[0]
        seed = backend.step_seed(self.seed, 3, self.train_steps)
        noises = backend.stateless_normal(ops.shape(images), seed)
        times = backend.stateless_uniform((batch, 1, 1, 1), backend.substream(seed, 1))
        noise_rates, signal_rates = self.diffusion_schedule(times)
        noisy_images = signal_rates * images + noise_rates * noises
        logits = ops.cast(self([noisy_images, noise_rates], training=True), "float32")
        loss = ops.mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
        return loss, logits

    def _finish(self, data, loss, logits):
        self.train_steps.assign_add(1)
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(self._labels(data), logits)
        return {m.name: m.result() for m in self.metrics}
