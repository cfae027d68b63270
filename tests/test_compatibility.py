"""Files written by earlier versions of the package keep working.

`tests/fixtures/` holds model files and a run folder written on 2026-12-04 by the
code of that day (before the package was split into sub-packages), with the
images they generated (`make_fixtures.py` wrote them). Loading them must give
a working `DiffusionModel` of the same class and the same images from the same
noise, and the run must resume. (What noise a seed draws changed once since:
numpy's default generator then, Philox now, `sampling.noise`; the images are
compared from the noise the seed drew that day.)
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_script

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SAMPLING = dict(num_images=2, diffusion_steps=3, seed=7)
# Another CPU's kernels may round differently: well under one 8-bit level.
TOLERANCE = 1e-3


@pytest.mark.parametrize("name", ["pixel", "classes", "velocity", "latent", "text"])
def test_model_files_of_earlier_versions_load_and_give_the_same_images(name):
    import diffusion_keras as dk

    model = dk.load_model(os.path.join(FIXTURES, f"{name}.keras"))
    assert type(model) is dk.DiffusionModel
    kwargs = dict(SAMPLING)
    if name == "classes":
        kwargs.update(class_labels=["red", "blue"], guidance_scale=2.0)
    if name == "text":
        kwargs.update(prompts=["a red flower", "a blue flower"])
    expected = np.load(os.path.join(FIXTURES, "expected_images.npz"))[name]
    kwargs["initial_noise"] = noise_of_that_day(model, kwargs["num_images"], kwargs.pop("seed"))
    np.testing.assert_allclose(model.generate(**kwargs), expected, atol=TOLERANCE)


def noise_of_that_day(model, count, seed):
    """What `make_noise(count, seed)` gave on 2026-12-04: numpy's default generator."""
    shape = (count, *model.sample_shape)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_registered_keras_names_are_unchanged():
    import keras

    import diffusion_keras  # noqa: F401  (registers the classes)

    names = keras.saving.get_custom_objects()
    for name in ["DiffusionModel", "Autoencoder", "TextEncoder", "NoiseClassifier",
                 "SinusoidalEmbedding", "ResidualBlock"]:  # fmt: skip
        assert f"diffusion_keras>{name}" in names, name


@pytest.mark.slow
def checksums(folder):
    """`{relative path: bytes}` of every file below `folder`."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), folder)] = handle.read()
    return found


def test_a_run_folder_of_an_earlier_version_resumes(tmp_path):
    from fixtures.make_fixtures import blobs

    run = tmp_path / "run"
    original = checksums(os.path.join(FIXTURES, "run"))
    shutil.copytree(os.path.join(FIXTURES, "run"), run)
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(blobs(16, 20)):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(images / f"img_{i:02d}.png")
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(images)
    (run / "config.json").write_text(json.dumps(config))
    result = run_script("train.py", "--output", run, "--resume", "--epochs", 2, "--verbose", 0)
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoints" / "epoch_002.keras").exists()
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["output"] == str(run)
    epochs = [row.split(",")[0] for row in (run / "history.csv").read_text().split()[1:]]
    assert epochs == ["0", "1"]
    # The copy resumed where it is: the fixture, whose config names another
    # folder, is untouched.
    assert checksums(os.path.join(FIXTURES, "run")) == original
