"""Class-conditional models, classifier-free guidance and classifier guidance,
on two classes that differ in colour (red and blue)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    one_line_error,
    red_minus_blue,
    run_script,
    tiny_model,
    two_colour_images,
    write_png_folder,
    write_two_colour_folder,
)
from diffusion_keras.models.classifier import NoiseClassifier
from diffusion_keras.models.saving import load_classifier, load_model

STEPS = 150


def labelled_dataset(images, labels):
    return tf.data.Dataset.from_tensor_slices((images, labels)).repeat().shuffle(64, seed=0)


@pytest.fixture(scope="module")
def data():
    return two_colour_images(64)


@pytest.fixture(scope="module")
def conditional(data):
    images, labels = data
    model = tiny_model(num_classes=2, class_names=["red", "blue"])
    model.adapt(images)
    model.optimizer.learning_rate.assign(3e-3)
    model.fit(labelled_dataset(images, labels).batch(16), steps_per_epoch=STEPS, verbose=0)
    return model


@pytest.fixture(scope="module")
def guided(data):
    """An unconditional model and a noisy-image classifier for it."""
    images, labels = data
    model = tiny_model()
    model.adapt(images)
    model.optimizer.learning_rate.assign(3e-3)
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().shuffle(64, seed=0).batch(16)
    model.fit(dataset, steps_per_epoch=STEPS, verbose=0)
    classifier = NoiseClassifier.for_model(
        model, ["red", "blue"], widths=(8, 16), embedding_dims=8, seed=0
    )
    classifier.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4))
    history = classifier.fit(
        labelled_dataset(images, labels).batch(16), steps_per_epoch=STEPS, verbose=0
    )
    assert history.history["accuracy"][-1] > 0.8, history.history
    return model, classifier


@pytest.mark.slow
def test_classifier_free_guidance_generates_the_requested_colour(conditional):
    separation = {}
    for scale in (0.0, 1.0, 3.0):
        red = conditional.generate(16, 10, seed=0, class_labels="red", guidance_scale=scale)
        blue = conditional.generate(16, 10, seed=0, class_labels=1, guidance_scale=scale)
        separation[scale] = (red_minus_blue(red), red_minus_blue(blue))
    print(f"mean red - blue of 16 images per class, by guidance scale: {separation}")
    assert separation[3.0][0] > 0.3 and separation[3.0][1] < -0.3
    # Stronger guidance, further apart; w = 0 ignores the class altogether.
    gaps = {w: r - b for w, (r, b) in separation.items()}
    assert gaps[3.0] > gaps[1.0] > gaps[0.0] == 0.0
    unconditional = conditional.generate(16, 10, seed=0)
    np.testing.assert_array_equal(
        conditional.generate(16, 10, seed=0, class_labels="red", guidance_scale=0.0),
        unconditional,
    )


@pytest.mark.slow
def test_classifier_guidance_generates_the_requested_colour(guided):
    model, classifier = guided
    separation = {}
    for scale in (0.0, 3.0):
        red, blue = (
            model.generate(
                16, 10, seed=0, class_labels=c, classifier=classifier, classifier_scale=scale
            )  # fmt: skip
            for c in ("red", "blue")
        )
        separation[scale] = (red_minus_blue(red), red_minus_blue(blue))
    print(f"mean red - blue with classifier guidance, by scale: {separation}")
    assert separation[0.0][0] == separation[0.0][1]
    red, blue = separation[3.0]
    assert red > separation[0.0][0] + 0.2 and blue < separation[0.0][1] - 0.2
    assert red - blue > 0.5


@pytest.mark.parametrize("settings", [dict(guidance_scale=3.0), dict(guidance_scale=1.0)])
def test_guided_compiled_sampler_equals_eager_and_chunks(conditional, settings):
    noise = conditional.make_noise(5, 2)
    labels = np.array([0, 1, 0, 1, 1], np.int32)
    compiled = conditional.generate(initial_noise=noise, diffusion_steps=4, class_labels=labels,
                                    **settings)  # fmt: skip
    scale = settings["guidance_scale"]
    guide = {
        "class_labels": tf.constant(labels),
        "guidance_scale": None if scale == 1.0 else scale,
        "classifier": None,
        "classifier_scale": 0.0,
    }
    eager = conditional.denormalize(conditional.reverse_diffusion(noise, 4, guide=guide))
    # Guidance multiplies the float32 round-off of (conditional - unconditional)
    # by w at every step, so the graph and eager orders of summation differ more.
    tolerance = 1e-5 if scale == 1.0 else 1e-3
    np.testing.assert_allclose(compiled, np.asarray(eager), atol=tolerance)
    chunked = conditional.generate(initial_noise=noise, diffusion_steps=4, class_labels=labels,
                                   batch_size=2, **settings)  # fmt: skip
    np.testing.assert_allclose(chunked, compiled, atol=tolerance)
    stepped = conditional.generate(initial_noise=noise, diffusion_steps=4, class_labels=labels,
                                   progress=True, **settings)  # fmt: skip
    np.testing.assert_allclose(stepped, compiled, atol=tolerance)


def test_conditional_model_and_classifier_reload(conditional, guided, tmp_path):
    conditional.save(tmp_path / "model.keras")
    loaded = load_model(str(tmp_path / "model.keras"))
    assert loaded.class_names == ["red", "blue"] and loaded.num_classes == 2
    kwargs = dict(seed=1, class_labels="blue", guidance_scale=2.0)
    np.testing.assert_array_equal(
        loaded.generate(3, 4, **kwargs), conditional.generate(3, 4, **kwargs)
    )
    model, classifier = guided
    classifier.save(tmp_path / "classifier.keras")
    reloaded = load_classifier(str(tmp_path / "classifier.keras"))
    images = two_colour_images(6, seed=3)[0]
    np.testing.assert_allclose(reloaded.classify(images), classifier.classify(images), atol=1e-6)
    assert (reloaded.classify(images).argmax(axis=1) == np.arange(6) % 2).all()


@pytest.mark.slow
def test_label_dropout_trains_the_null_class(data):
    """Without label dropout the null-class embedding only feels AdamW's weight
    decay; with it, the null class is trained like the others."""
    images, labels = data
    rows = {}
    for dropout in (0.0, 0.5):
        model = tiny_model(num_classes=2, label_dropout=dropout)
        table = [w for w in model.network.weights if "embeddings" in w.path][0]
        initial = np.asarray(table)[2].copy()
        model.fit(labelled_dataset(images, labels).batch(16), steps_per_epoch=5, verbose=0)
        rows[dropout] = float(np.abs(np.asarray(table)[2] - initial).max())
    assert rows[0.0] < 1e-5 and rows[0.5] > 100 * rows[0.0], rows


def test_bad_guidance_requests_are_refused(conditional, guided, data):
    with pytest.raises(ValueError, match="unknown class 'green'.*red, blue"):
        conditional.generate(2, 2, class_labels="green")
    with pytest.raises(ValueError, match="guidance_scale needs class_labels"):
        conditional.generate(2, 2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        conditional.generate(2, 2, class_labels=0, guidance_scale=-1.0)
    model, classifier = guided
    with pytest.raises(ValueError, match="not class-conditional; give a classifier"):
        model.generate(2, 2, class_labels="red")
    with pytest.raises(ValueError, match="guidance_scale needs a class-conditional model"):
        model.generate(2, 2, class_labels="red", guidance_scale=2.0, classifier=classifier)
    other = tiny_model()  # adapted to other images: another normalisation
    with pytest.raises(ValueError, match="trained for another model's data"):
        other.generate(2, 2, class_labels="red", classifier=classifier)
    with pytest.raises(ValueError, match="conditional.*\\(images, labels\\) batches"):
        tiny_model(num_classes=2).fit(data[0], batch_size=16, epochs=1, verbose=0)


@pytest.mark.slow
def test_train_and_generate_clis_condition_and_guide(tmp_path):
    folder = write_two_colour_folder(str(tmp_path / "colours"), 32)
    run = tmp_path / "run"
    result = run_script(
        "train.py", "--data", folder, "--image-size", 16, "--widths", "8,16", "--block-depth", 1,
        "--embedding-dims", 8, "--batch-size", 16, "--epochs", 1, "--dataset-repetitions", 2,
        "--conditional", "--train-classifier", "--classifier-epochs", 1, "--kid-every", 1,
        "--kid-images", 8, "--kid-features", "random", "--prediction", "velocity", "--output", run,
        "--verbose", 0,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (run / "classifier.keras").exists() and (run / "model.keras").exists()
    history = (run / "history.csv").read_text().splitlines()
    assert "kid" in history[0].split(",") and len(history) == 2
    for flags in (["--class", "red", "--guidance-scale", "3"],
                  ["--class", "blue", "--classifier-scale", "2"]):  # fmt: skip
        out = tmp_path / "out.png"
        result = run_script("generate.py", run / "model.keras", "--num-images", 2, "--steps", 2,
                            "--seed", 0, "--output", out, "--no-progress", *flags)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert out.exists()
    line = one_line_error(
        run_script("generate.py", run / "model.keras", "--class", "green", "--no-progress")
    )
    assert "unknown class 'green'" in line
    flat = tmp_path / "flat"
    write_png_folder(str(flat), count=8, nested=False)
    line = one_line_error(
        run_script("train.py", "--data", flat, "--conditional", "--output", tmp_path / "x")
    )
    assert "class labels come from subfolders" in line


def test_heun_with_guidance_compiled_equals_eager(conditional):
    """EDM's sampler guides both of its evaluations per step, compiled or eager."""
    noise = conditional.make_noise(4, 2)
    labels = np.array([0, 1, 1, 0], np.int32)
    settings = dict(diffusion_steps=3, sampler="heun", spacing="karras", eta=1.0, seed=7)
    compiled = conditional.generate(initial_noise=noise, class_labels=labels,
                                    guidance_scale=3.0, **settings)  # fmt: skip
    guide = {"class_labels": tf.constant(labels), "guidance_scale": 3.0, "classifier": None,
             "classifier_scale": 0.0}  # fmt: skip
    step_noises = conditional.generator._step_noises(7, range(4), 3)
    eager = conditional.reverse_diffusion(noise, 3, "heun", 1.0, step_noises, guide=guide,
                                          spacing="karras")  # fmt: skip
    np.testing.assert_allclose(compiled, np.asarray(conditional.denormalize(eager)), atol=2e-3)
    unguided = conditional.generate(initial_noise=noise, class_labels=labels, **settings)
    assert np.abs(unguided - compiled).mean() > 1e-3  # the guidance reached the images
