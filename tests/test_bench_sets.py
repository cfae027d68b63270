"""The real-data benches: their data sets come from installed files, seeded,
and their scores measure what they say they do."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))

from real_sets import PHOTOS, class_count, set_images  # noqa: E402
from recipe_race import parse_recipe, sampler_settings, spearman  # noqa: E402
from set_scores import coverage, degraded, frechet_distance, kernel_distance  # noqa: E402


@pytest.mark.parametrize("name", ["photos", "landscapes"])
def test_bench_sets_are_seeded_labelled_images(name):
    images, labels = set_images(name, 40, 32, seed=5)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < class_count(name)
    again, same_labels = set_images(name, 40, 32, seed=5)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(same_labels, labels)
    other, _ = set_images(name, 40, 32, seed=6)
    assert np.abs(other.astype(int) - images).mean() > 10
    # Not a flat colour: real structure in every image.
    assert images.reshape(40, -1, 3).std(axis=1).mean() > 5


def test_photos_are_crops_of_the_photographs_scikit_image_ships():
    import skimage

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    assert all(os.path.exists(os.path.join(folder, name)) for name in PHOTOS)
    images, labels = set_images("photos", 400, 16)
    assert set(labels) == set(range(len(PHOTOS)))  # every photograph is drawn
    # The Hubble deep field (3) is dark, the retina (6) is red.
    means = {k: images[labels == k].reshape(-1, 3).mean(0) for k in range(len(PHOTOS))}
    assert means[3].mean() < 60
    assert means[6][0] > 2 * means[6][2]


def test_landscapes_have_an_up_and_a_down():
    images, labels = set_images("landscapes", 64, 32)
    assert len(set(labels)) > 10
    flipped = images[:, ::-1]
    # The sky (top) and the land (bottom) differ, so an upside-down scene
    # is far from its upright self.
    assert np.abs(flipped.astype(int) - images).mean() > 20


def test_scores_see_what_they_measure():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 8))
    b = rng.standard_normal((4000, 8))
    assert frechet_distance(a, b) < 0.05
    assert frechet_distance(a, b + 1.0) == pytest.approx(8.0, abs=0.3)  # the means' distance
    assert abs(kernel_distance(a, b)) < 0.02 < kernel_distance(a, b + 1.0)
    even = np.zeros((9, 3))
    even[np.arange(9), np.arange(9) % 3] = 10.0
    assert coverage(even) == pytest.approx(1.0, abs=1e-3)
    one_class = np.zeros((9, 3))
    one_class[:, 0] = 10.0
    assert coverage(one_class) == pytest.approx(1 / 3, abs=1e-3)


def test_degraded_images_are_spoilt_and_in_range():
    images = set_images("landscapes", 20, 32)[0].astype(np.float32) / 255.0
    spoilt = degraded(images, np.random.default_rng(0))
    assert spoilt.shape == images.shape and spoilt.min() >= 0 and spoilt.max() <= 1
    assert (np.abs(spoilt - images).mean(axis=(1, 2, 3)) > 0.005).all()


def test_race_settings_read_as_documented():
    assert parse_recipe("book_ema_warmup@1176", 392) == ("book_ema_warmup", 1176)
    assert parse_recipe("default", 392) == ("default", 392)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    from diffusion_keras.config.sampling import SAMPLING_RECIPES

    assert sampler_settings("default") == SAMPLING_RECIPES["default"]  # generate.py's
    assert sampler_settings("ddim 20 eta 1") == dict(sampler="ddim", diffusion_steps=20,
                                                     spacing="uniform", eta=1.0)  # fmt: skip
