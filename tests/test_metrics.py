"""KID, FID and IS against direct numpy computations, and the feature
extractors (offline: nothing is downloaded)."""

import time

import keras
import numpy as np
import pytest

from conftest import blob_images
from diffusion_keras import metrics
from diffusion_keras.metrics import (
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


def test_kid_and_fid_match_numpy():
    extractor = small_extractor()
    real, generated = (
        blob_images(120, 16, seed=5),
        np.clip(blob_images(120, 16, seed=6) * 1.2, 0, 1),
    )
    x, y = extractor(real)[0], extractor(generated)[0]
    kid = KernelInceptionDistance(extractor)
    kid.update_state(real[:60], generated[:60])
    kid.update_state(real[60:], generated[60:])
    expected = (numpy_kid(x[:60], y[:60]) + numpy_kid(x[60:], y[60:])) / 2
    np.testing.assert_allclose(float(kid.result()), expected, rtol=1e-9, atol=1e-12)
    fid = FrechetInceptionDistance(extractor, dims=16)
    fid.update_state(real[:50], generated[:70])
    fid.update_state(real[50:], generated[70:])  # streamed in pieces of any size
    np.testing.assert_allclose(float(fid.result()), numpy_fid(x, y), rtol=1e-6)
    assert numpy_fid(x, y) > 0
    fid.reset_state()
    fid.update_state(real, real)
    assert abs(float(fid.result())) < 1e-6


def test_inception_score_matches_numpy_and_needs_probabilities(extractor):
    probabilities_extractor = small_extractor(classes=5)
    images = blob_images(80, 16, seed=7)
    p = probabilities_extractor(images)[1]
    marginal = p.mean(0)
    expected = np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean())
    score = InceptionScore(probabilities_extractor, classes=5)
    score.update_state(images[:30])
    score.update_state(images[30:])
    np.testing.assert_allclose(float(score.result()), expected, rtol=1e-9)
    assert 1.0 <= expected <= 5.0
    with pytest.raises(metrics.FeatureError, match="no class probabilities"):
        InceptionScore(extractor).update_state(images)


def test_inception_fails_fast_offline_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    import diffusion_keras.data

    monkeypatch.setattr(diffusion_keras.data, "_hosts_reachable", lambda urls, timeout=3.0: False)
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
