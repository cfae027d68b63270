"""Sample quality: KID, FID and IS as Keras metrics over a pluggable feature
extractor, and `KIDMonitor`, which measures KID during training.

The published numbers use InceptionV3 with ImageNet weights
(`feature_extractor("inception")`). Where those weights cannot be loaded (no
network, nothing cached), `feature_extractor("random")` is a documented
substitute: a fixed, seeded, untrained convolutional network. Its features
still separate good samples from bad ones (see the tests), but its values are
comparable only with each other, never with published KID or FID.
"""

import math
import os
import warnings

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.config.choices import KID_FEATURES as FEATURES
from diffusion_keras.utils import network
from diffusion_keras.utils.errors import DiffusionKerasError
from diffusion_keras.utils.seeds import derived_seed

INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
INCEPTION_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"


class FeatureError(DiffusionKerasError):
    """A feature extractor cannot be built (e.g. its weights are unavailable)."""


class FeatureExtractor:
    """Images in [0, 1] `(n, h, w, c)` to features `(n, d)` and, if the network
    has a classifier head, class probabilities `(n, k)` (for IS).

    Args:
        model: a Keras model taking images in [0, 1] and returning features,
            or a list `[features, probabilities]`.
        name: str. Shown in reports.
        batch_size: int. Images per forward pass. Defaults to 50.
    """

    def __init__(self, model, name, batch_size=50):
        self.model = model
        self.name = name
        self.batch_size = batch_size

    def __call__(self, images):
        """`(features, probabilities or None)` as float64 numpy arrays."""
        images = np.asarray(images, np.float32)
        features, probabilities = [], []
        for start in range(0, len(images), self.batch_size):
            outputs = self.model(images[start : start + self.batch_size], training=False)
            if isinstance(outputs, (list, tuple)):
                features.append(ops.convert_to_numpy(outputs[0]))
                probabilities.append(ops.convert_to_numpy(outputs[1]))
            else:
                features.append(ops.convert_to_numpy(outputs))
        features = np.concatenate(features).astype(np.float64)
        if not probabilities:
            return features, None
        return features, np.concatenate(probabilities).astype(np.float64)


def random_features(image_size=64, seed=0, channels=3):
    """The offline substitute: a fixed random convolutional network.

    Images are resized to `image_size`, then three 3x3 conv + ReLU + pooling
    stages with seeded He-normal weights (64, 128, 256 filters) end in global
    average and max pooling: 512 features of colour, edges and texture. Random
    untrained networks are a known, if weaker, stand-in for Inception
    features (Naeem et al. 2020, section 4).

    References:
    - [Naeem et al., 2020](https://arxiv.org/abs/2002.09797)
    """
    inputs = keras.Input(shape=(None, None, channels))
    x = layers.Resizing(image_size, image_size)(inputs)
    x = layers.Rescaling(2.0, offset=-1.0)(x)
    for index, filters in enumerate((64, 128, 256)):
        initializer = keras.initializers.HeNormal(seed=derived_seed(seed, 10, index))
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          kernel_initializer=initializer)(x)  # fmt: skip
        x = layers.AveragePooling2D(2)(x)
    features = layers.Concatenate()(
        [layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)]
    )
    return FeatureExtractor(keras.Model(inputs, features, name="random_features"), "random")


def inception_weights_available(timeout=3.0):
    """True when InceptionV3's ImageNet weights are cached or downloadable."""
    cached = os.path.join(
        os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models", INCEPTION_WEIGHTS
    )
    if os.path.exists(cached):
        return True

    return network.hosts_reachable([INCEPTION_URL], timeout)


def inception_features(image_size=299):
    """InceptionV3 (ImageNet weights): 2048 pooled features and 1000 class
    probabilities from one pass, on images resized to `image_size`.

    Raises `FeatureError` at once when the weights are neither cached nor
    downloadable.

    References:
    - [Szegedy et al., 2016](https://arxiv.org/abs/1512.00567)
    - [Heusel et al., 2017 (FID)](https://arxiv.org/abs/1706.08500)
    """
    if not inception_weights_available():
        raise FeatureError(
            "InceptionV3's ImageNet weights are not in ~/.keras/models and cannot be "
            "downloaded (no network?); use the 'random' feature extractor instead"
        )
    try:
        inception = keras.applications.InceptionV3(include_top=True, weights="imagenet")
    except Exception as error:  # noqa: BLE001 - download and file errors of many kinds
        raise FeatureError(f"could not load InceptionV3's weights: {error}") from None
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.Resizing(image_size, image_size)(inputs)
    x = layers.Rescaling(2.0, offset=-1.0)(x)  # Inception's [-1, 1] input
    trunk = keras.Model(
        inception.input,
        [inception.get_layer("avg_pool").output, inception.output],
    )
    features, probabilities = trunk(x)
    model = keras.Model(inputs, [features, probabilities], name="inception_features")
    return FeatureExtractor(model, "inception")


def feature_extractor(name="auto", image_size=64, seed=0):
    """`"inception"`, `"random"`, or `"auto"`: Inception when its weights can be
    had, otherwise `"random"` with a warning."""
    if name not in FEATURES:
        raise ValueError(f"unknown features {name!r}; choose one of: {', '.join(FEATURES)}")
    if name == "inception" or (name == "auto" and inception_weights_available()):
        return inception_features()
    if name == "auto":
        warnings.warn(
            "InceptionV3 weights unavailable (offline); KID uses the random-feature "
            "substitute, comparable only with itself",
            stacklevel=2,
        )
    return random_features(max(image_size, 32), seed)


# -- the statistics, on features --------------------------------------------


def polynomial_kernel(a, b):
    """k(x, y) = (x . y / d + 1) ** 3, KID's kernel."""
    d = ops.cast(ops.shape(a)[1], a.dtype)
    return (ops.matmul(a, ops.transpose(b)) / d + 1.0) ** 3


def kid_from_features(real_features, generated_features):
    """Unbiased MMD**2 with the cubic polynomial kernel (Binkowski et al. 2018,
    eq. 2): the kernels' means within each set leave out the diagonal.

    References:
    - [Binkowski et al., 2018](https://arxiv.org/abs/1801.01401)
    """
    # In float64 numpy, on the host: the same on every Keras backend.
    x = np.asarray(ops.convert_to_numpy(real_features), np.float64)
    y = np.asarray(ops.convert_to_numpy(generated_features), np.float64)
    m, n = float(len(x)), float(len(y))
    kxx, kyy, kxy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1.0))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1.0))
    return within_x + within_y - 2.0 * kxy.mean()


def _cubic_kernel(a, b):
    # `polynomial_kernel` in numpy.
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def frechet_distance(mean_a, covariance_a, mean_b, covariance_b):
    """||mu_a - mu_b||**2 + Tr(S_a + S_b - 2 (S_a S_b)**(1/2)).

    Tr (S_a S_b)**(1/2) is computed as the sum of square roots of the
    eigenvalues of the symmetric S_a**(1/2) S_b S_a**(1/2), which has the
    same eigenvalues as S_a S_b.

    References:
    - [Heusel et al., 2017](https://arxiv.org/abs/1706.08500)
    """
    mean_a, covariance_a, mean_b, covariance_b = (
        np.asarray(ops.convert_to_numpy(x), np.float64)
        for x in (mean_a, covariance_a, mean_b, covariance_b)
    )
    values, vectors = np.linalg.eigh(covariance_a)
    root_a = (vectors * np.sqrt(np.maximum(values, 0.0))[None, :]) @ vectors.T
    middle = root_a @ covariance_b @ root_a
    middle = (middle + middle.T) / 2.0
    trace_root = np.sqrt(np.maximum(np.linalg.eigvalsh(middle), 0.0)).sum()
    return (
        ((mean_a - mean_b) ** 2).sum()
        + np.trace(covariance_a)
        + np.trace(covariance_b)
        - 2.0 * trace_root
    )


# -- Keras metrics ----------------------------------------------------------


class KernelInceptionDistance(keras.metrics.Metric):
    """KID between real and generated images: the mean over `update_state`
    calls of the unbiased MMD**2 of each call's two sets (the paper averages
    over subsets in the same way). Lower is better; 0 for one distribution.

    The running sums are float64 numpy on the host, not Keras variables: the
    same on every backend (JAX's arrays are 32-bit unless x64 is on), and
    the features are taken outside any compiled step anyway.

    Args:
        extractor: a `FeatureExtractor` (or a callable of the same kind).
    """

    def __init__(self, extractor, name="kid", **kwargs):
        super().__init__(name=name, **kwargs)
        self.extractor = extractor
        self.reset_state()

    def update_state(self, real_images, generated_images, sample_weight=None):
        real, _ = self.extractor(real_images)
        generated, _ = self.extractor(generated_images)
        self.total += kid_from_features(real, generated)
        self.count += 1.0

    def result(self):
        return self.total / max(self.count, 1.0)

    def reset_state(self):
        self.total, self.count = 0.0, 0.0


class _FeatureMoments:
    """Running sums of features and of their outer products, in float64."""

    def __init__(self, dims):
        self.dims = dims
        self.reset()

    def add(self, features):
        features = np.asarray(ops.convert_to_numpy(features), np.float64)
        self.sum += features.sum(axis=0)
        self.outer += features.T @ features
        self.count += len(features)

    def mean_and_covariance(self):
        n = float(self.count)
        mean = self.sum / n
        covariance = (self.outer - n * mean[:, None] * mean[None, :]) / (n - 1.0)
        return mean, covariance

    def reset(self):
        self.sum = np.zeros(self.dims)
        self.outer = np.zeros((self.dims, self.dims))
        self.count = 0


class FrechetInceptionDistance(keras.metrics.Metric):
    """FID between all real and all generated images seen: the Fréchet
    distance between Gaussians fitted to their features (sample covariance,
    n - 1), with float64 sums on the host. Lower is better.

    Args:
        extractor: a `FeatureExtractor`.
        dims: int. Feature size (2048 for Inception, 512 for `random`).
    """

    def __init__(self, extractor, dims, name="fid", **kwargs):
        super().__init__(name=name, **kwargs)
        self.extractor = extractor
        self.real = _FeatureMoments(dims)
        self.generated = _FeatureMoments(dims)

    def update_state(self, real_images, generated_images, sample_weight=None):
        self.real.add(self.extractor(real_images)[0])
        self.generated.add(self.extractor(generated_images)[0])

    def result(self):
        return frechet_distance(
            *self.real.mean_and_covariance(), *self.generated.mean_and_covariance()
        )

    def reset_state(self):
        self.real.reset()
        self.generated.reset()


class InceptionScore(keras.metrics.Metric):
    """IS of the generated images seen: exp(E_x KL(p(y|x) || p(y))), over all
    of them as one split, with float64 sums on the host. Needs an extractor
    with class probabilities (Inception); higher is better, at most the
    number of classes.

    References:
    - [Salimans et al., 2016](https://arxiv.org/abs/1606.03498)
    """

    def __init__(self, extractor, classes=1000, name="is", **kwargs):
        super().__init__(name=name, **kwargs)
        self.extractor = extractor
        self.classes = classes
        self.reset_state()

    def update_state(self, generated_images, sample_weight=None):
        _, probabilities = self.extractor(generated_images)
        if probabilities is None:
            raise FeatureError(
                f"the {getattr(self.extractor, 'name', '')} features have no class "
                "probabilities; the Inception Score needs Inception"
            )
        p = np.asarray(ops.convert_to_numpy(probabilities), np.float64)
        self.probability_sum += p.sum(axis=0)
        self.negative_entropy_sum += float((p * np.log(p + 1e-16)).sum())
        self.count += len(p)

    def result(self):
        # E_x KL = E_x[sum p log p] - sum p_mean log p_mean.
        marginal = self.probability_sum / self.count
        mean_kl = (
            self.negative_entropy_sum / self.count - (marginal * np.log(marginal + 1e-16)).sum()
        )
        return np.exp(mean_kl)

    def reset_state(self):
        self.probability_sum = np.zeros(self.classes)
        self.negative_entropy_sum, self.count = 0.0, 0


def measure_kid(model, real_images, extractor, diffusion_steps=5, seed=0, subset=100, **kwargs):
    """KID between `real_images` (float in [0, 1] or uint8) and as many
    images generated by `model`, averaged over subsets of `subset`."""
    real_images = np.asarray(real_images)
    if real_images.dtype == np.uint8:
        real_images = real_images.astype(np.float32) / 255.0
    generated = model.generate(len(real_images), diffusion_steps, seed=seed, **kwargs)
    metric = KernelInceptionDistance(extractor)
    subset = max(2, min(subset, len(real_images)))
    for start in range(0, len(real_images) - subset + 1, subset):
        metric.update_state(real_images[start : start + subset], generated[start : start + subset])
    return float(metric.result())


class KIDMonitor(keras.callbacks.Callback):
    """Measures KID against held-out images every `every` epochs and adds it to
    the epoch's logs as `kid` (NaN in epochs it skips), so that the CSV and
    TensorBoard logs record it.

    Args:
        images: uint8 or float images the model never trained on.
        extractor: a `FeatureExtractor`.
        every: int. Measure after every `every` epochs.
        diffusion_steps: int. Sampling steps for the generated images
            (few: this runs during training). Defaults to 5.
        seed: int. Seeds the generated images.
    """

    def __init__(self, images, extractor, every=1, diffusion_steps=5, seed=0):
        super().__init__()
        self.images = images
        self.extractor = extractor
        self.every = every
        self.diffusion_steps = diffusion_steps
        self.seed = seed
        self.history = {}
        # Set to `Checkpointer.epoch_is_whole` to skip epochs cut short.
        self.epoch_is_whole = None

    def on_epoch_end(self, epoch, logs=None):
        value = math.nan
        whole = self.epoch_is_whole is None or self.epoch_is_whole(epoch)
        if (epoch + 1) % self.every == 0 and whole:
            value = measure_kid(
                self.model, self.images, self.extractor, self.diffusion_steps, self.seed
            )
            self.history[epoch + 1] = value
            print(f"\nepoch {epoch + 1}: KID {value:.4f} ({self.extractor.name} features)")
        if logs is not None:
            logs["kid"] = value
