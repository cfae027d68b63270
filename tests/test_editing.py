"""Editing existing images: image-to-image, inpainting, denoising (issue 15)."""

import numpy as np
import pytest
from PIL import Image

from conftest import in_process_error, run_script, smooth_images, tiny_model, two_colour_images
from diffusion_keras.diffusion.schedules import SCHEDULES, get_schedule, zero_noise_time
from diffusion_keras.editing.edits import (
    as_masks,
    edit_times,
    harmonic_fill,
    psnr,
    seam_ratio,
    strength_of_noise,
)
from diffusion_keras.sampling.rules import sampling_times

CENTRE = np.zeros((16, 16), np.float32)
CENTRE[4:12, 4:12] = 1.0


@pytest.fixture(scope="module")
def model():
    """A tiny model trained on smooth colour blends (500 steps, about 10 s)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = tiny_model()
    data = smooth_images(256)
    model.adapt(data)
    model.optimizer.learning_rate.assign(3e-3)
    dataset = tf.data.Dataset.from_tensor_slices(data).repeat().shuffle(256, seed=0).batch(16)
    model.fit(dataset, steps_per_epoch=500, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def images():
    return smooth_images(6, seed=9)


# -- strength --------------------------------------------------------------------


@pytest.mark.slow
def test_strength_near_zero_returns_the_input_and_more_strength_changes_more(model, images):
    changes = []
    for strength in (1e-3, 0.3, 0.7):
        edited = model.edit(images, strength=strength, diffusion_steps=5, seed=0)
        changes.append(np.abs(edited - images).mean())
    assert changes[0] < 1.0 / 255.0
    assert changes[0] < changes[1] < changes[2]


@pytest.mark.parametrize(
    "settings",
    [
        dict(sampler="ddim"),
        dict(sampler="ddim", eta=0.5),
        dict(sampler="dpmpp_2m", spacing="log_snr"),
    ],
)
def test_strength_one_is_generate_from_the_same_seed(model, images, settings):
    edited = model.edit(images, strength=1.0, diffusion_steps=6, seed=4, **settings)
    np.testing.assert_array_equal(edited, model.generate(6, 6, seed=4, **settings))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_edit_times_run_from_the_strength_to_zero_noise(schedule):
    function = get_schedule(schedule)
    zero = zero_noise_time(schedule)
    noise_rates, _ = function(np.array([zero], np.float32))
    assert float(noise_rates[0]) < 1e-6  # the schedule has no noise left there
    for spacing in ("uniform", "log_snr"):
        # Strength 1 visits generation's times.
        np.testing.assert_allclose(
            edit_times(function, zero, 1.0, 8, spacing), sampling_times(function, 8, spacing),
            atol=1e-6,
        )  # fmt: skip
        times = edit_times(function, zero, 0.4, 8, spacing)
        assert times[0] == pytest.approx(zero + 0.4 * (1.0 - zero), abs=1e-6)
        assert times[-1] == pytest.approx(0.6 * zero, abs=1e-6)
        assert np.all(np.diff(times) < 0)


@pytest.mark.parametrize("relative_noise", [0.1, 0.5, 2.0])
def test_a_noise_level_starts_at_the_time_with_that_signal_to_noise_ratio(relative_noise):
    function = get_schedule("offset_cosine")
    zero = zero_noise_time("offset_cosine")
    strength = strength_of_noise(function, zero, relative_noise)
    time = zero + strength * (1.0 - zero)
    noise_rates, signal_rates = function(np.array([time], np.float32))
    assert float(noise_rates[0] / signal_rates[0]) == pytest.approx(relative_noise, rel=1e-3)


# -- inpainting ------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(sampler="ddim", eta=1.0),
        dict(sampler="ddim", resample=3),
        dict(sampler="dpmpp_2m", spacing="log_snr"),
    ],
)
def test_inpainting_keeps_the_known_region_and_fills_the_hole(model, images, settings):
    edited = model.edit(images, mask=CENTRE, diffusion_steps=8, seed=1, **settings)
    kept = CENTRE == 0
    assert np.abs(edited - images)[:, kept].max() < 1.0 / 255.0
    assert np.abs(edited - images)[:, ~kept].mean() > 1e-3  # the hole was regenerated
    assert np.isfinite(edited).all() and edited.min() >= 0.0 and edited.max() <= 1.0


def test_inpainting_is_seeded_and_independent_of_batches_and_progress(model, images):
    settings = dict(mask=CENTRE, diffusion_steps=5, seed=2, eta=1.0, resample=2)
    edited = model.edit(images, **settings)
    np.testing.assert_array_equal(edited, model.edit(images, **settings))
    np.testing.assert_allclose(edited, model.edit(images, batch_size=4, **settings), atol=1e-5)
    np.testing.assert_allclose(edited, model.edit(images, progress=True, **settings), atol=1e-5)
    assert not np.array_equal(edited, model.edit(images, **dict(settings, seed=3)))


def test_inpainting_leaves_a_seam_far_smoother_than_pasting_a_sample(model, images):
    pasted = (
        CENTRE[None, :, :, None] * model.generate(6, 20, seed=1)
        + (1.0 - CENTRE[None, :, :, None]) * images
    )
    edited = model.edit(images, mask=CENTRE, diffusion_steps=20, seed=1, eta=1.0)
    assert seam_ratio(images, CENTRE) == pytest.approx(1.0, abs=0.1)  # the measure's baseline
    seam, pasted_seam = seam_ratio(edited, CENTRE), seam_ratio(pasted, CENTRE)
    assert seam < 0.15 * pasted_seam, (seam, pasted_seam)


def test_harmonizing_leaves_no_seam_and_smooths_the_one_a_sampler_leaves(model, images):
    """The jump across the border is no larger than the contrast just inside the
    regenerated square (the tiny model draws rougher blends than its data, so the
    kept side is the smoother one); DPM-Solver++ in 5 steps leaves a seam that
    `harmonize` removes."""
    fast = dict(mask=CENTRE, diffusion_steps=5, sampler="dpmpp_2m", spacing="log_snr", seed=1)
    for settings in (dict(mask=CENTRE, diffusion_steps=20, eta=1.0, seed=1), fast):
        edited = model.edit(images, **settings)
        assert seam_ratio(edited, 1.0 - CENTRE) < 1.2, settings  # against the inside
    seam, unharmonized = (seam_ratio(model.edit(images, harmonize=h, **fast), CENTRE)
                          for h in (16, 0))  # fmt: skip
    assert seam < 0.5 * unharmonized, (seam, unharmonized)


def test_harmonic_fill_keeps_the_kept_values_and_carries_them_across_a_hole():
    import keras

    ys, xs = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    plane = np.stack([xs + 2.0 * ys, np.full_like(xs, 3.0)], axis=-1)[None].astype(np.float32)
    masks = np.broadcast_to(CENTRE[None, :, :, None], plane.shape).astype(np.float32)
    hole = CENTRE == 1

    def fill(iterations):
        return keras.ops.convert_to_numpy(harmonic_fill(plane, masks, iterations))[0]

    np.testing.assert_array_equal(fill(5)[~hole], plane[0][~hole])
    assert not fill(0)[hole].any()
    # A plane is harmonic: enough sweeps rebuild it inside the hole, a constant too.
    np.testing.assert_allclose(fill(400)[hole], plane[0][hole], atol=1e-2)
    # A few sweeps carry half the border's value one pixel in, less further in.
    few = fill(4)[..., 1]
    assert few[4, 6] > 1.5 and 0.0 < few[6, 6] < few[5, 6] < few[4, 6]


@pytest.mark.slow
def test_inpainting_works_with_classifier_free_guidance():
    import tensorflow as tf

    conditional = tiny_model(num_classes=2, class_names=["red", "blue"])
    coloured, labels = two_colour_images(64)
    conditional.adapt(coloured)
    dataset = tf.data.Dataset.from_tensor_slices((coloured, labels)).repeat().batch(16)
    conditional.fit(dataset, steps_per_epoch=30, epochs=1, verbose=0)
    images = smooth_images(4, seed=3)
    edited = conditional.edit(images, mask=CENTRE, diffusion_steps=3, seed=0,
                              class_labels="blue", guidance_scale=3.0)  # fmt: skip
    np.testing.assert_allclose(edited[:, CENTRE == 0], images[:, CENTRE == 0], atol=1e-6)
    unguided = conditional.edit(images, mask=CENTRE, diffusion_steps=3, seed=0,
                                class_labels="blue")  # fmt: skip
    assert not np.allclose(edited, unguided)


def test_seam_ratio_is_about_one_for_a_smooth_image_and_large_for_a_pasted_square():
    image = smooth_images(1, seed=1)
    assert seam_ratio(image, CENTRE) == pytest.approx(1.0, abs=0.1)
    pasted = image.copy()
    pasted[:, 4:12, 4:12] = 1.0 - pasted[:, 4:12, 4:12]
    assert seam_ratio(pasted, CENTRE) > 5.0


# -- denoising -------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 5])
def test_denoising_raises_the_psnr_by_more_than_3_db(model, images, steps):
    rng = np.random.default_rng(0)
    for sigma in (0.1, 0.2):
        noisy = np.clip(images + sigma * rng.standard_normal(images.shape), 0, 1)
        noisy = noisy.astype(np.float32)
        denoised = model.edit(noisy, noise_level=sigma, diffusion_steps=steps, seed=0)
        assert psnr(denoised, images).mean() > psnr(noisy, images).mean() + 3.0


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strength=0.0), "strength must be in (0, 1]"),
        (dict(strength=1.5), "strength must be in (0, 1]"),
        (dict(strength=float("nan")), "strength must be in (0, 1]"),
        (dict(), "give a strength in (0, 1], a mask, or a noise_level"),
        (dict(mask=np.zeros((8, 8))), "mask must be 16x16"),
        (dict(mask=np.full((16, 16), 0.5)), "mask must hold only 0 (keep) and 1"),
        (dict(mask=np.zeros((3, 16, 16))), "got 3 masks for 2 images"),
        (dict(noise_level=0.1, strength=0.5), "give no strength or mask"),
        (dict(noise_level=-1.0), "noise_level must be > 0"),
        (dict(strength=0.5, resample=0), "resample must be >= 1"),
        (dict(mask=CENTRE, harmonize=-1), "harmonize must be >= 0"),
    ],
)
def test_edit_rejects_bad_arguments_in_one_line(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError) as error:
        model.edit(smooth_images(2), **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_edit_rejects_images_outside_the_unit_range_and_of_the_wrong_size():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"images must be floats in \[0, 1\]"):
        model.edit(smooth_images(2) * 255.0, strength=0.5)
    with pytest.raises(ValueError, match="images must have shape"):
        model.edit(np.zeros((2, 8, 8, 3), np.float32), strength=0.5)


def test_masks_broadcast_from_one_for_all_or_one_per_image():
    assert as_masks(CENTRE, 3, (16, 16, 3)).shape == (3, 16, 16, 3)
    assert as_masks(CENTRE[..., None] > 0, 3, (16, 16, 3)).shape == (3, 16, 16, 3)
    per_image = np.stack([CENTRE, 1.0 - CENTRE])
    masks = as_masks(per_image, 2, (16, 16, 3))
    np.testing.assert_array_equal(masks[1, ..., 0], 1.0 - CENTRE)


# -- generate.py -----------------------------------------------------------------


def _png(path, array, mode=None):
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


@pytest.mark.slow
def test_generate_edits_folders_with_masks_and_names_each_output(model, tmp_path):
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    inputs, masks = tmp_path / "in", tmp_path / "masks"
    inputs.mkdir()
    masks.mkdir()
    pictures = np.round(smooth_images(3, size=24, seed=5) * 255).astype(np.uint8)
    _png(inputs / "a.png", pictures[0])
    _png(inputs / "b.png", pictures[1], "L")  # grayscale: becomes RGB
    _png(inputs / "c.png", pictures[2], "RGBA")  # transparency: over white
    hole = np.zeros((24, 24), np.uint8)
    hole[6:18, 6:18] = 255
    for name in "abc":
        _png(masks / f"{name}.png", hole)
    done = run_script(
        "generate.py", model_path, "--init-image", inputs, "--mask", masks, "--variations", 2,
        "--seed", 0, "--steps", 3, "--output", tmp_path / "grid.png",
        "--output-dir", tmp_path / "out", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_0.png", "a_1.png", "b_0.png", "b_1.png", "c_0.png", "c_1.png"]
    # Each row: the masked input, then its variations, at the model's size.
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 18 + 2, 3 * 18 + 2, 3)
    # Outside the hole the output is the input (resized to 16x16 like training images).
    out = np.asarray(Image.open(tmp_path / "out" / "a_0.png")).astype(int)
    resized = np.asarray(Image.fromarray(pictures[0]).resize((16, 16), Image.BILINEAR))
    assert np.abs(out[:2] - resized[:2].astype(int)).max() <= 1

    grey = hole.copy()
    grey[0, 0] = 128
    _png(tmp_path / "grey.png", grey)
    _png(tmp_path / "small.png", hole[:20, :20])
    image = str(inputs / "a.png")
    for mask, message in (("grey.png", "is not black and white"),
                          ("small.png", "is 20x20 but its image is 24x24")):  # fmt: skip
        line = in_process_error([model_path, "--init-image", image, "--mask", tmp_path / mask])
        assert message in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--init-image", "x.png"], "say what to do with it"),
        (["--mask", "m.png"], "--mask edits an image: give it with --init-image"),
        (["--init-image", "x.png", "--strength", "1.5"], "--strength: expected a number in (0, 1]"),
        (["--init-image", "x", "--strength", "0.5", "--noise-level", "9"], "give no --strength"),
        (["--harmonize", "4"], "--harmonize edits an image: give it with --init-image"),
        (["--init-image", "x", "--strength", "0.5", "--resample", "2"], "--resample is for inp"),
        (["--init-image", "x", "--mask", "m.png", "--harmonize", "-1"], "expected a number >= 0"),
    ],
)
def test_generate_rejects_bad_edit_flags_in_one_line(args, message):
    assert message in in_process_error(["model.keras", *args])
