"""KID, FID and IS against direct numpy computations, and the feature
extractors (offline: nothing is downloaded)."""

import time

import keras
import numpy as np
import pytest

from conftest import blob_images
from diffusion_keras.metrics import kid as metrics
from diffusion_keras.metrics.kid import (
    FeatureExtractor,
    FrechetInceptionDistance,
    InceptionScore,
    KernelInceptionDistance,
    random_features,
)


@pytest.fixture(scope="module")
def extractor():
    return random_features(32, seed=0)


def small_extractor(classes=None):
    """16 features (and `classes` softmax probabilities) from a seeded
    pooling + dense network: few dimensions, so that covariances are full rank."""
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling2D()(inputs), keras.layers.GlobalMaxPooling2D()(inputs)]
    )
    init = keras.initializers.GlorotNormal(seed=3)
    features = keras.layers.Dense(16, activation="tanh", kernel_initializer=init)(pooled)
    if classes is None:
        return FeatureExtractor(keras.Model(inputs, features), "small")
    probabilities = keras.layers.Dense(
        classes, activation="softmax", kernel_initializer=keras.initializers.GlorotNormal(seed=4)
    )(features)
    return FeatureExtractor(keras.Model(inputs, [features, probabilities]), "small")


def numpy_kid(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * k(x, y).mean()
    )


def numpy_fid(x, y):
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # Tr sqrt(Sx Sy) from the eigenvalues of the (non-symmetric) product.
    eigenvalues = np.linalg.eigvals(sx @ sy)
    trace_root = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return ((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * trace_root


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift(extractor):
    real, same = blob_images(200, 16, seed=1), blob_images(200, 16, seed=2)
    values = {}
    for name, other in [("same", same), ("shifted", np.clip(same + 0.15, 0, 1)),
                        ("noise", np.random.default_rng(0).uniform(size=same.shape))]:  # fmt: skip
        kid = KernelInceptionDistance(extractor)
        for start in (0, 100):
            kid.update_state(real[start : start + 100], other[start : start + 100])
        values[name] = float(kid.result())
    print(f"KID (random features), 2 subsets of 100: {values}")
    assert abs(values["same"]) < 0.01
    assert values["shifted"] > 10 * max(abs(values["same"]), 1e-3)
    assert values["noise"] > values["shifted"]


def extracted_as_the_metric_sees_them(extractor, images, pieces, output=0):
    """The extractor's features (`output` 0) or class probabilities (1) of
    `images`, extracted piece by piece as a metric updated with those pieces
    extracts them.

    The same image's float32 features can differ in the last bits with the
    batch it is extracted in (the matmul kernels block the rows differently on
    different CPUs and batch sizes: seen at 1-2 ulps with oneDNN off), so a
    numpy reference must be fed the features the metric saw; with those, only
    float64 arithmetic separates the two.
    """
    bounds = np.cumsum([0] + list(pieces))
    return np.concatenate([extractor(images[a:b])[output] for a, b in zip(bounds, bounds[1:])])


def float64_sum_bound(terms):
    """Worst-case rounding error of summing `terms` in float64 in any order:
    n * eps * sum |terms| (Higham, Accuracy and Stability, eq. 4.4)."""
    terms = np.abs(np.asarray(terms, np.float64)).ravel()
    return len(terms) * np.finfo(np.float64).eps * terms.sum()


def test_kid_and_fid_match_numpy():
    extractor = small_extractor()
    real, generated = (
        blob_images(120, 16, seed=5),
        np.clip(blob_images(120, 16, seed=6) * 1.2, 0, 1),
    )
    kid = KernelInceptionDistance(extractor)
    expected, bound = [], 0.0
    for piece in (slice(0, 60), slice(60, 120)):
        kid.update_state(real[piece], generated[piece])
        x, y = extractor(real[piece])[0], extractor(generated[piece])[0]
        expected.append(numpy_kid(x, y))
        # Each of the three kernel means is a float64 sum of at most 60 * 60
        # terms; their rounding errors add up, and the average halves them.
        kernels = [(a @ b.T / x.shape[1] + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        bound += (
            sum(float64_sum_bound(k) / k.size for k in kernels[:2])
            + 2 * float64_sum_bound(kernels[2]) / kernels[2].size
        )
    np.testing.assert_allclose(float(kid.result()), np.mean(expected), rtol=0, atol=bound / 2)
    assert bound / 2 < 1e-8 * abs(np.mean(expected))  # the check is tight
    fid = FrechetInceptionDistance(extractor, dims=16)
    fid.update_state(real[:50], generated[:70])
    fid.update_state(real[50:], generated[70:])  # streamed in pieces of any size
    x = extracted_as_the_metric_sees_them(extractor, real, [50, 70])
    y = extracted_as_the_metric_sees_them(extractor, generated, [70, 50])
    # Two eigenvalue routes to Tr sqrt(Sx Sy) (numpy's of the product, ours of
    # a symmetric matrix): they agree to about the eigensolvers' accuracy.
    np.testing.assert_allclose(float(fid.result()), numpy_fid(x, y), rtol=1e-6)
    assert numpy_fid(x, y) > 0
    fid.reset_state()
    fid.update_state(real, real)
    assert abs(float(fid.result())) < 1e-6


def test_inception_score_matches_numpy_and_needs_probabilities(extractor):
    probabilities_extractor = small_extractor(classes=5)
    images = blob_images(80, 16, seed=7)
    score = InceptionScore(probabilities_extractor, classes=5)
    score.update_state(images[:30])
    score.update_state(images[30:])
    p = extracted_as_the_metric_sees_them(probabilities_extractor, images, [30, 50], output=1)
    marginal = p.mean(0)
    expected = np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean())
    np.testing.assert_allclose(float(score.result()), expected, rtol=1e-9)
    assert 1.0 <= expected <= 5.0
    with pytest.raises(metrics.FeatureError, match="no class probabilities"):
        InceptionScore(extractor).update_state(images)


def test_inception_fails_fast_offline_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    from diffusion_keras.utils import network

    monkeypatch.setattr(network, "hosts_reachable", lambda urls, timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(metrics.FeatureError, match="cannot be downloaded"):
        metrics.feature_extractor("inception")
    assert time.monotonic() - start < 5
    with pytest.warns(UserWarning, match="random-feature substitute"):
        fallback = metrics.feature_extractor("auto", image_size=16)
    assert fallback.name == "random"
    with pytest.raises(ValueError, match="unknown features 'vgg'"):
        metrics.feature_extractor("vgg")


def test_random_features_are_seeded_and_size_agnostic():
    images = blob_images(4, 16)
    a, _ = random_features(32, seed=0)(images)
    b, _ = random_features(32, seed=0)(images)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 512)
    c, _ = random_features(32, seed=0)(blob_images(4, 40))  # other sizes are resized
    assert c.shape == (4, 512)
