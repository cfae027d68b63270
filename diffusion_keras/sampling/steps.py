"""Sampling steps and seeded noise streams, for any denoiser.

A *denoiser* is anything with
- `guided_denoise(noisy_images, noise_rates, signal_rates, guide)` returning
  `(pred_noises, pred_images)` in its own normalised space,
- `diffusion_schedule(diffusion_times)` returning `(noise_rates, signal_rates)`,
- `sample_shape`, the shape of one sample `(height, width, channels)`.

This module holds the sampling step that every sampler shares
(`sampling_step`), the eager loop the book writes (`reverse_diffusion`) and
the seeded noise streams. The update rules are in `diffusion_keras.sampling.rules`,
the compiled loop in `diffusion_keras.sampling.loop`.
"""

import numpy as np
from keras import ops

from diffusion_keras.diffusion.schedules import log_snrs
from diffusion_keras.sampling import noise
from diffusion_keras.sampling.rules import (
    churn_update,
    ddim_update,
    dpmpp_2m_update,
    heun_update,
    sampling_times,
)


def sampling_step(
    denoiser, current_images, pred_images, step, diffusion_steps, sampler="ddim", eta=0.0,
    step_noises=None, guide=None, times=None,
):  # fmt: skip
    """One step of `sampler` from step `step` of `diffusion_steps`: one
    network evaluation, or two for `heun` (but in its last step).

    `pred_images` is the previous step's clean-image estimate (used by the
    multistep `dpmpp_2m`). `guide` steers the prediction (see
    `DiffusionModel.guided_denoise`). `times` `(diffusion_steps + 1,)` are the
    diffusion times to visit (`samplers.sampling_times`); None is the book's
    uniform steps. Returns `(next_images, pred_images)`.
    """
    batch_size = ops.shape(current_images)[0]
    ones = ops.ones((batch_size, 1, 1, 1))
    if times is None:
        step_size = 1.0 / ops.cast(diffusion_steps, "float32")
        diffusion_times = ones - ops.cast(step, "float32") * step_size
        next_times = diffusion_times - step_size
        previous_times = diffusion_times + step_size
    else:
        step = ops.cast(step, "int32")
        time = ops.take(times, step)
        next_time = ops.take(times, step + 1)
        # Before the first step, a time as far back as the next is ahead
        # (only the multistep solver looks, and not at its first step).
        previous_time = ops.where(
            step > 0, ops.take(times, ops.maximum(step - 1, 0)), 2.0 * time - next_time
        )
        diffusion_times = ones * time
        next_times, previous_times = ones * next_time, ones * previous_time
    schedule = denoiser.diffusion_schedule
    noise_rates, signal_rates = schedule(diffusion_times)
    if sampler == "heun" and step_noises is not None:
        top_noise_rates, top_signal_rates = schedule(ones)
        current_images, noise_rates, signal_rates = churn_update(
            current_images, noise_rates, signal_rates,
            top_noise_rates / ops.maximum(top_signal_rates, 1e-6), eta, step_noises,
        )  # fmt: skip
    previous_pred_images = pred_images
    pred_noises, pred_images = denoiser.guided_denoise(
        current_images, noise_rates, signal_rates, guide
    )
    next_noise_rates, next_signal_rates = schedule(next_times)
    if sampler == "heun":
        next_images = _heun_step(
            denoiser, guide, pred_noises, pred_images, noise_rates, signal_rates,
            next_noise_rates, next_signal_rates,
            last=_is_last(step, diffusion_steps),
        )  # fmt: skip
    elif sampler == "ddim":
        next_images = ddim_update(
            pred_noises, pred_images, noise_rates, signal_rates, next_noise_rates,
            next_signal_rates, eta, step_noises,
        )  # fmt: skip
    else:
        previous_noise_rates, previous_signal_rates = schedule(previous_times)
        next_images = dpmpp_2m_update(
            current_images, pred_images, previous_pred_images,
            log_snrs(noise_rates, signal_rates),
            log_snrs(next_noise_rates, next_signal_rates),
            log_snrs(previous_noise_rates, previous_signal_rates),
            noise_rates, next_noise_rates, next_signal_rates,
            first_step=ops.cast(step, "float32") == 0.0, eta=eta, step_noises=step_noises,
        )  # fmt: skip
    return next_images, pred_images


def _heun_step(denoiser, guide, pred_noises, pred_images, noise_rates, signal_rates,
               next_noise_rates, next_signal_rates, last):  # fmt: skip
    """EDM's Heun step (`rules.heun_update`): the network's second evaluation,
    at the Euler step's images, in every step but the last, whose images
    nobody reads (the book returns its clean-image estimate)."""

    def euler():
        return ddim_update(pred_noises, pred_images, noise_rates, signal_rates,
                           next_noise_rates, next_signal_rates)  # fmt: skip

    def corrected():
        later_pred_noises, _ = denoiser.guided_denoise(
            euler(), next_noise_rates, next_signal_rates, guide
        )
        return heun_update(
            pred_noises, pred_images, later_pred_noises, noise_rates, signal_rates,
            next_noise_rates, next_signal_rates,
        )  # fmt: skip

    if isinstance(last, bool):
        return euler() if last else corrected()
    return ops.cond(last, euler, corrected)


def _is_last(step, diffusion_steps):
    """Whether `step` is the last: a bool in an eager loop over Python ints
    (JAX's `cond` would trace both branches), else a tensor."""
    if isinstance(step, int) and isinstance(diffusion_steps, int):
        return step + 1 >= diffusion_steps
    return ops.cast(step, "int32") + 1 >= ops.cast(diffusion_steps, "int32")


def visit_times(denoiser, diffusion_steps, spacing):
    """The times to visit (float32 numpy), or None for the book's uniform
    steps (computed in the step itself, exactly as the book does)."""
    if spacing == "uniform":
        return None
    times = sampling_times(denoiser.diffusion_schedule, diffusion_steps, spacing)
    return np.asarray(ops.convert_to_numpy(times), np.float32)


def reverse_diffusion(
    denoiser, initial_noise, diffusion_steps, sampler="ddim", eta=0.0, step_noises=None,
    guide=None, spacing="uniform",
):  # fmt: skip
    """Runs `sampler` from `initial_noise` (normalised space) in
    `diffusion_steps` steps and returns the last predicted images, as the
    book does. Eager, a Python loop; `Sampler` runs a compiled equivalent."""
    current_images = ops.convert_to_tensor(initial_noise, "float32")
    pred_images = current_images
    times = visit_times(denoiser, diffusion_steps, spacing)
    times = None if times is None else ops.convert_to_tensor(times)
    for step in range(diffusion_steps):
        current_images, pred_images = sampling_step(
            denoiser, current_images, pred_images, step, diffusion_steps, sampler, eta,
            None if step_noises is None else step_noises[step], guide, times,
        )  # fmt: skip
    return pred_images


# -- seeded noise ------------------------------------------------------------
# Drawn by `diffusion_keras.sampling.noise` (Philox and Box-Muller in numpy),
# so that every machine, batch size and Keras backend, and an exported graph,
# give the same noise for the same seed.


def make_noise(sample_shape, num_images, seed=None):
    """Standard normal noise `(num_images, *sample_shape)` from `seed`
    (`noise.initial_noise`): image i's depends only on the seed and i."""
    return noise.initial_noise(sample_shape, num_images, seed)


def step_noises(sample_shape, seed, indices, diffusion_steps):
    """Fresh noise for stochastic sampling, `(steps, n, *sample_shape)`, for
    the consecutive images numbered `indices` (`noise.step_noises`)."""
    return noise.step_noises(sample_shape, seed, indices, diffusion_steps)


def resample_noises(sample_shape, seed, indices, diffusion_steps, resample):
    """The fresh noise of RePaint's resampling (`inpainting_step`),
    `(steps * resample, n, *sample_shape)` (`noise.resample_noises`); a
    single row of zeros when `resample` is 1, which draws none."""
    return noise.resample_noises(sample_shape, seed, indices, diffusion_steps, resample)
