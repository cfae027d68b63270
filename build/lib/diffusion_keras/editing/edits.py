"""Editing images with a trained model: the forward process used backwards.

Three edits, one mechanism: put an existing image somewhere on the diffusion
path and run a sampler from there.

- **Image-to-image** (SDEdit, Meng et al. 2021): noise the image to a
  `strength` in (0, 1] with the forward process and sample from there. The
  result keeps the image's layout and colours and takes the model's detail;
  the higher the strength, the more the model invents.
- **Inpainting**: a `mask` says which pixels to regenerate (1, white) and
  which to keep (0, black). At every step the clean-image estimate is the
  original where the mask keeps it (`KeepKnown`; the range-null-space step of
  DDNM, Wang et al. 2023), so the sampler's next images hold the original
  noised to the step's level and a regenerated region that already agrees
  with it. `harmonize` also carries the estimate's error in the kept region
  across the border into the hole (`harmonic_fill`), so that the two meet
  without a step: on the bench model it took the seams from 1.49 to 1.17
  (docs/results/editing.md). RePaint (Lugmayr et al. 2022) instead pastes the
  original with fresh noise after each step; measured on the same model and
  masks, its seams were rougher at every setting. `resample` R > 1 adds
  RePaint's resampling: each step is taken back with the forward process
  and redone, R times in all (jumps of one step).
- **Denoising** a noisy photo: with its noise level known, the photo already
  *is* an image on the diffusion path, at the time with that signal-to-noise
  ratio; sample from there (with one step it is the network's single
  estimate).

**Strength.** `strength` s is a position on the model's schedule, measured
from no noise (0) to where generation starts (1). The start time is
`t_0 + s (1 - t_0)`, where `t_0` is the time of zero noise
(`schedules.zero_noise_time`: 0 for the cosine and linear schedules, -0.26
for the book's offset cosine, whose angle goes on linearly below t = 0). For
the book's schedule s is the noise angle over its largest: the image is noised
to signal rate cos(1.551 s) and noise rate sin(1.551 s), so s = 0.5 is about
equal parts, and s below 0.2 is less noise than the network trained on (noise
rate 0.31 at t = 0), where it changes little. The steps run from the start
time to `(1 - s) t_0` with the sampler's spacing, so `diffusion_steps` is the
number of network evaluations at every strength; at s = 1 they are exactly
generation's, from the same noise: `edit` at strength 1 without a mask
returns `generate`'s images for the same seed.
"""

import numpy as np
from keras import ops

from diffusion_keras.diffusion.schedules import log_snrs, zero_noise_time
from diffusion_keras.sampling import guidance
from diffusion_keras.sampling.inpainting import HARMONIZE, KeepKnown, harmonic_fill  # noqa: F401
from diffusion_keras.sampling.rules import sampling_times, validate_sampler, validate_spacing


def validate_strength(strength):
    strength = float(strength)
    if not (np.isfinite(strength) and 0.0 < strength <= 1.0):
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return strength


def model_zero_time(model):
    """`schedules.zero_noise_time` of `model`'s schedule."""
    return zero_noise_time(model.schedule, model.min_signal_rate, model.max_signal_rate)


def edit_times(schedule, zero_time, strength, diffusion_steps, spacing="uniform"):
    """The times an edit at `strength` visits, `(diffusion_steps + 1,)`:
    from `zero_time + strength (1 - zero_time)` towards `(1 - strength)
    zero_time`, spaced as `spacing` says (`samplers.sampling_times`)."""
    strength = validate_strength(strength)
    start = zero_time + strength * (1.0 - zero_time)
    end = (1.0 - strength) * zero_time
    return sampling_times(schedule, diffusion_steps, spacing, start=start, end=end)


def strength_of_noise(schedule, zero_time, relative_noise):
    """The strength whose start time has noise / signal = `relative_noise`
    (a photo y = x + sigma eps in the model's normalised units has
    `relative_noise` sigma). Clamped to 1 where the schedule has no noisier
    time."""
    grid = np.linspace(zero_time, 1.0, 100_001)
    noise_rates, signal_rates = schedule(grid.astype(np.float32))
    lambdas = ops.convert_to_numpy(log_snrs(noise_rates, signal_rates)).astype(np.float64)
    wanted = -np.log(float(relative_noise))
    time = float(np.interp(wanted, lambdas[::-1], grid[::-1]))
    return float(np.clip((time - zero_time) / (1.0 - zero_time), 1e-6, 1.0))


def relative_noise_of(model, noise_level):
    """`noise_level` (the standard deviation of Gaussian noise on images in
    [0, 1]) in the model's normalised units: divided by each channel's
    standard deviation, the root mean square over channels."""
    _, std = model.space._mean_and_std()
    std = ops.convert_to_numpy(std).reshape(-1).astype(np.float64)
    return float(noise_level) * float(np.sqrt(np.mean(1.0 / std**2)))


def as_masks(mask, count, sample_shape):
    """`mask` as float32 `(count, *sample_shape)` of 0 (keep) and 1
    (regenerate). Takes one mask `(h, w)`, `(h, w, 1)` or `(h, w, c)` for
    every image, or one per image `(count, ...)`; values must be 0 and 1 (or
    booleans)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.float32)
    if not np.issubdtype(mask.dtype, np.number):
        raise ValueError(f"mask must be numbers 0 and 1, got dtype {mask.dtype}")
    height, width, channels = sample_shape
    if mask.ndim == 2 or (mask.ndim == 3 and mask.shape[:2] == (height, width)):
        mask = mask[None]  # one for every image
    if mask.ndim == 3:
        mask = mask[..., None]  # (count, h, w)
    if mask.ndim != 4 or mask.shape[1:3] != (height, width) or mask.shape[-1] not in (1, channels):
        raise ValueError(
            f"mask must be {height}x{width} like the images (one for all, or one per image), "
            f"got shape {mask.shape}"
        )
    if len(mask) not in (1, count):
        raise ValueError(f"got {len(mask)} masks for {count} images")
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise ValueError(
            f"mask must hold only 0 (keep) and 1 (regenerate), got values {shown}; "
            "threshold it first (e.g. mask > 0.5)"
        )
    return np.broadcast_to(mask.astype(np.float32), (count, height, width, channels)).copy()


def edit(
    model, images, strength=None, mask=None, noise_level=None, resample=1, diffusion_steps=20,
    seed=None, sampler="ddim", eta=0.0, spacing="uniform", class_labels=None,
    guidance_scale=1.0, classifier=None, classifier_scale=1.0, batch_size=64, progress=False,
    prompts=None, negative_prompts=None, harmonize=HARMONIZE,
):  # fmt: skip
    """Edits `images` with `model`; see `DiffusionModel.edit`."""

    model.generator._check_adapted()
    validate_sampler(sampler, eta)
    validate_spacing(spacing)
    images = np.asarray(images, dtype=np.float32)
    shape = model.sample_shape
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ValueError(
            f"images must have shape (n, {shape[0]}, {shape[1]}, {shape[2]}), got {images.shape}"
        )
    if len(images) == 0:
        raise ValueError("no images to edit")
    if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
        raise ValueError("images must be floats in [0, 1] (divide uint8 images by 255)")
    if int(resample) < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if int(harmonize) < 0:
        raise ValueError(f"harmonize must be >= 0, got {harmonize}")
    if noise_level is not None:
        if strength is not None or mask is not None:
            raise ValueError("noise_level denoises the whole image: give no strength or mask")
        noise_level = float(noise_level)
        if not (np.isfinite(noise_level) and noise_level > 0.0):
            raise ValueError(f"noise_level must be > 0, got {noise_level}")
    elif strength is None:
        if mask is None:
            raise ValueError("give a strength in (0, 1], a mask, or a noise_level")
        strength = 1.0
    count = len(images)
    masks = None if mask is None else as_masks(mask, count, shape)
    steering = guidance.steering(
        model, count, class_labels, guidance_scale, classifier, classifier_scale, prompts,
        negative_prompts,
    )  # fmt: skip
    diffusion_steps, batch_size = int(diffusion_steps), int(batch_size)
    if diffusion_steps < 1 or batch_size < 1:
        raise ValueError("diffusion_steps and batch_size must be >= 1")
    zero_time = model_zero_time(model)
    schedule = model.diffusion_schedule
    known = ops.convert_to_numpy(model.normalize(images))
    if noise_level is not None:
        strength = strength_of_noise(schedule, zero_time, relative_noise_of(model, noise_level))
    strength = validate_strength(strength)
    times = edit_times(schedule, zero_time, strength, diffusion_steps, spacing)
    rates = schedule(np.asarray(times[:1], np.float32))
    noise_rate, signal_rate = (float(ops.convert_to_numpy(r)[0]) for r in rates)
    noise = model.make_noise(count, seed)
    if noise_level is not None:
        # The photo's own noise is the forward process's: only scale it.
        initial = signal_rate * known
    elif strength == 1.0:
        initial = noise  # generation's start: pure noise, as the book samples
    else:
        initial = signal_rate * known + noise_rate * noise
    edit_args = None
    if masks is not None:
        initial = masks * initial + (1.0 - masks) * (signal_rate * known + noise_rate * noise)
        edit_args = {
            "known": known,
            "mask": masks,
            "resample": int(resample),
            "harmonize": int(harmonize),
        }
    if strength == 1.0 and masks is None:
        times = None  # exactly generation's times, computed as `generate` does
    results = model.sampler.run(
        initial, diffusion_steps, sampler, eta, seed, spacing=spacing, times=times,
        batch_size=batch_size, progress=progress, edit=edit_args, **steering,
    )  # fmt: skip
    results = ops.convert_to_numpy(model.denormalize(results))
    if masks is not None:
        # The kept pixels are the input's own, not their round trip.
        results = masks * results + (1.0 - masks) * images
    return results


# -- measures ----------------------------------------------------------------


def psnr(images, references):
    """Peak signal-to-noise ratio in dB of images in [0, 1], per image."""
    images = np.asarray(images, np.float64)
    references = np.asarray(references, np.float64)
    errors = np.mean((images - references) ** 2, axis=tuple(range(1, images.ndim)))
    return 10.0 * np.log10(1.0 / np.maximum(errors, 1e-20))


def seam_ratio(images, mask, offset=2):
    """How visible the border of an inpainted region is.

    The mean absolute difference between neighbouring pixels on opposite
    sides of the mask's border, over the same across a border of the same
    shape `offset` pixels further out, where both pixels were kept
    (horizontal and vertical neighbours, all channels). The second is the
    image's own local contrast where nothing was painted, so the ratio is
    about 1 when the seam is as smooth as the image around it, whatever the
    image shows.
    """
    images = np.asarray(images, np.float64)
    mask = np.asarray(mask)
    if mask.ndim == images.ndim:
        mask = mask[..., 0]
    mask = np.broadcast_to(mask.reshape((-1,) + mask.shape[-2:]), images.shape[:3]) > 0.5
    grown = mask.copy()
    for _ in range(int(offset)):
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        grown[:, :, 1:] |= grown[:, :, :-1].copy()
        grown[:, :, :-1] |= grown[:, :, 1:].copy()

    def across(region):
        values = []
        for axis in (1, 2):
            differences = np.abs(np.diff(images, axis=axis)).mean(axis=-1)
            first = np.take(region, range(region.shape[axis] - 1), axis=axis)
            second = np.take(region, range(1, region.shape[axis]), axis=axis)
            values.append(differences[first != second])
        return np.concatenate(values)

    seam, outside = across(mask), across(grown)
    if not len(seam) or not len(outside):
        raise ValueError(f"the mask needs a kept region at least {offset} pixels wide around it")
    return float(seam.mean() / max(outside.mean(), 1e-12))
