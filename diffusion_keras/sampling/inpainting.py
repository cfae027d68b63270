"""Inpainting steps: a sampling step that keeps the known part of an image.

The sampling loop (`diffusion_keras.sampling.loop`) takes these steps when it
edits; `diffusion_keras.editing` chooses the start times, masks and settings.
"""

import numpy as np
from keras import ops

from diffusion_keras.sampling.steps import sampling_step

# Sweeps of `harmonic_fill` per step when inpainting (docs/results/editing.md: 8, 16
# and 32 left seams alike on the bench model; 0 is DDNM alone).
HARMONIZE = 16


def _neighbour_sums(images):
    """The sum of each pixel's neighbours above, below, left and right (three
    at an edge, two in a corner)."""
    cross = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)
    kernel = np.tile(cross[:, :, None, None], (1, 1, images.shape[-1], 1))
    return ops.depthwise_conv(images, ops.convert_to_tensor(kernel), padding="same")


def harmonic_fill(values, masks, iterations):
    """`values` where `masks` is 0, carried into the regions where it is 1.

    `iterations` Jacobi sweeps of Laplace's equation with the kept values as
    its boundary, from zero in the regions: each sweep sets every masked pixel
    to the mean of its neighbours. A few sweeps carry the values at a region's
    border a few pixels in and fade towards zero further inside (the exact
    membrane would take about the region's width squared); 0 sweeps give zero
    there.
    """
    values, masks = ops.convert_to_tensor(values), ops.convert_to_tensor(masks)
    kept = (1.0 - masks) * values
    counts = _neighbour_sums(ops.ones_like(values[:1]))

    def sweep(i, filled):
        return i + 1, kept + masks * _neighbour_sums(filled) / counts

    _, filled = ops.while_loop(
        lambda i, _: i < iterations, sweep, (ops.convert_to_tensor(0, "int32"), kept)
    )
    return filled


class KeepKnown:
    """A denoiser whose clean-image estimate is `known` where `mask` is 0.

    Wraps another denoiser (`diffusion_keras.sampling.loop`); the noise estimate
    stays the network's. Any sampler stepping with it moves the kept region
    to the original noised with the noise the sampler carries, and the
    regenerated region with an estimate that already agrees with the kept one
    (the range-null-space step of DDNM, Wang et al. 2023, for a mask).

    With `harmonize` N > 0 the regenerated region's estimate is also moved
    by the estimate's error in the kept region, carried across the border
    with `harmonic_fill` (N sweeps): the estimate then meets the original at
    the border instead of stepping to it, the way Poisson blending (Perez et
    al. 2003) pastes a region, and the network's next step starts from the
    joined image.
    """

    def __init__(self, denoiser, known, mask, harmonize=0):
        self.denoiser, self.known, self.mask = denoiser, known, mask
        self.harmonize = harmonize
        self.diffusion_schedule = denoiser.diffusion_schedule
        self.sample_shape = denoiser.sample_shape

    def guided_denoise(self, noisy_images, noise_rates, signal_rates, guide=None):
        pred_noises, pred_images = self.denoiser.guided_denoise(
            noisy_images, noise_rates, signal_rates, guide
        )
        correction = harmonic_fill(self.known - pred_images, self.mask, self.harmonize)
        return pred_noises, self.mask * (pred_images + correction) + (1.0 - self.mask) * self.known


def inpainting_step(
    denoiser, current_images, pred_images, step, diffusion_steps, sampler, eta, step_noises,
    guide, times, known, mask, renoises, resample, harmonize, sample_shape,
):  # fmt: skip
    """One sampling step that keeps the `known` images where `mask` is 0.

    The sampler steps with `KeepKnown(denoiser, known, mask, harmonize)`. With
    `resample` R > 1 (RePaint's resampling, jumps of one step) the result is
    taken back to this step's time with the forward process, x_t = (a_t /
    a_next) x_next + sqrt(1 - (a_t / a_next)^2) z (a: signal rates; z fresh
    noise, row `step * resample + repeat` of `renoises`, drawn per image
    by `steps.resample_noises`), and
    the step is taken again, R times in all. Returns `(next_images,
    pred_images)`.
    """
    step = ops.cast(step, "int32")
    schedule = denoiser.diffusion_schedule
    _, signal_rate = schedule(ops.take(times, step))
    _, next_signal_rate = schedule(ops.take(times, step + 1))
    keeper = KeepKnown(denoiser, known, mask, harmonize)
    previous_pred_images = pred_images

    def one_pass(repeat, images, *_):
        next_images, new_pred_images = sampling_step(
            keeper, images, previous_pred_images, step, diffusion_steps, sampler, eta,
            step_noises, guide, times,
        )  # fmt: skip
        ratio = signal_rate / next_signal_rate
        row = ops.minimum(step * resample + repeat, ops.shape(renoises)[0] - 1)
        fresh = ops.take(renoises, row, axis=0)
        renoised = ratio * next_images + ops.sqrt(ops.maximum(1.0 - ratio**2, 0.0)) * fresh
        return repeat + 1, renoised, next_images, new_pred_images

    def more(repeat, *_):
        return repeat < resample

    _, _, next_images, pred_images = ops.while_loop(
        more,
        one_pass,
        (ops.convert_to_tensor(0, "int32"), current_images, current_images, pred_images),
    )
    return next_images, pred_images
