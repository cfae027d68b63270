"""Sampler update rules: from the network's predictions at one diffusion time
to the images at the next, earlier time.

Symbols, in this package's names and the papers':

| here | DDIM / DPM-Solver | meaning |
|---|---|---|
| `signal_rates` | sqrt(alpha-bar_t), alpha_t | how much of the image is left at time t |
| `noise_rates` | sqrt(1 - alpha-bar_t), sigma_t | how much noise there is |
| `pred_images` | x_0 estimate, x_theta | the clean image the network sees |
| `pred_noises` | epsilon_theta | the noise the network sees |
| `lambdas` | lambda_t = log(alpha_t / sigma_t) | log signal-to-noise ratio (halved) |

Every sampler steps through times that run from 1 (noise) towards 0 and, as
the book does, returns the clean-image estimate of the last step. `ddim` and
`dpmpp_2m` evaluate the network once per step; `heun` (EDM's sampler) twice,
but once in its last step: `network_evaluations`. Where the steps fall is the
`spacing` (`sampling_times`): the book's `uniform` steps of 1 /
diffusion_steps, or `log_snr`, equal steps in lambda between the same first
and last times (Lu et al. 2022, section 3.3), which puts more of them where
the image is mostly noise, or `karras`, EDM's steps equal in sigma^(1 / 7),
sigma = noise / signal, between the two, or `log_snr_span`, equal steps in
lambda over the schedule's whole span (t = 1 to t = 0, lambda kept within
-5 and 5), whose N-step times are every other time of its 2N-step ones:
the grid of distilled students (`diffusion_keras.models.distillation`).
"""

import numpy as np
from keras import ops

from diffusion_keras.config.choices import SAMPLERS, SPACINGS
from diffusion_keras.config.sampling import SAMPLING_RECIPES, sampling_settings  # noqa: F401
from diffusion_keras.diffusion.schedules import log_snrs

# The noisiest log-SNR a `log_snr` grid starts at. The cosine schedule's
# signal vanishes at t = 1 (lambda = -inf); -5 is where DDPM's linear schedule
# ends (signal rate 0.0067). The book's offset cosine starts at -3.9.
MIN_LOG_SNR = -5.0


# The least noisy log-SNR a `log_snr_span` grid ends at, for schedules whose
# noise vanishes at t = 0 (the linear and cosine ones; the book's offset
# cosine ends at 1.1).
MAX_LOG_SNR = 5.0

# The `karras` spacing's rho: EDM's (Karras et al. 2022, eq. 5).
KARRAS_RHO = 7.0


def validate_spacing(spacing):
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")


def sampling_times(schedule, diffusion_steps, spacing="uniform", start=1.0, end=0.0):
    """The diffusion times a sampler visits, float32 `(diffusion_steps + 1,)`:
    the network is evaluated at the first `diffusion_steps`; the last is the
    time the final update aims at (its result is not returned).

    `uniform` is the book's 1 - step / diffusion_steps. `log_snr` keeps the
    first and last evaluation times of `uniform` (t = 1 and t = 1 /
    diffusion_steps; the first moved to lambda = MIN_LOG_SNR if the schedule
    starts noisier) and spaces the evaluations between them equally in
    lambda; `karras` spaces them between the same ends equally in sigma^(1 /
    7), sigma = noise / signal (EDM's discretization, Karras et al. 2022, eq.
    5): shorter in sigma as the noise falls, longer in lambda, so between
    `log_snr` and `uniform`. `log_snr_span` spaces all `diffusion_steps` + 1
    times equally in lambda from `start` to `end` (lambda kept within
    MIN_LOG_SNR and MAX_LOG_SNR), so its ends do not depend on the step
    count and its N-step times are every other one of its 2N-step times.
    The schedule is inverted numerically on a fine grid of times, so any
    schedule with a decreasing lambda works.

    `start` and `end` (1 and 0 for generation) run the same spacing over
    another span of times; editing starts later (`diffusion_keras.editing.edits`),
    and may end below t = 0 where the schedule goes on to zero noise.
    """
    validate_spacing(spacing)
    steps = int(diffusion_steps)
    start, end = float(start), float(end)
    span = np.arange(steps + 1, dtype=np.float64) * ((start - end) / steps)
    uniform = (start - span).astype(np.float32)
    if start == 1.0 and end == 0.0:
        uniform = (1.0 - np.arange(steps + 1, dtype=np.float64) / steps).astype(np.float32)
    if spacing == "uniform" or (steps == 1 and spacing != "log_snr_span"):
        return uniform
    grid = np.linspace(min(end, 0.0), 1.0, 100_001)
    noise_rates, signal_rates = schedule(grid.astype(np.float32))
    lambdas = ops.convert_to_numpy(log_snrs(noise_rates, signal_rates)).astype(np.float64)
    first_lambda = float(np.interp(start, grid, lambdas))
    first = max(first_lambda, MIN_LOG_SNR)
    if spacing == "log_snr_span":
        last_lambda = float(np.interp(end, grid, lambdas))
        wanted = np.linspace(first, min(last_lambda, MAX_LOG_SNR), steps + 1)
        times = np.interp(wanted, lambdas[::-1], grid[::-1])
        times[0] = start if first_lambda >= MIN_LOG_SNR else times[0]
        times[-1] = end if last_lambda <= MAX_LOG_SNR else times[-1]
        return times.astype(np.float32)
    last = float(np.interp(end + (start - end) / steps, grid, lambdas))
    if spacing == "log_snr":
        wanted = np.linspace(first, last, steps)
    else:
        # karras: equal steps in sigma^(1 / rho), sigma = exp(-lambda).
        roots = np.linspace(np.exp(-first / KARRAS_RHO), np.exp(-last / KARRAS_RHO), steps)
        wanted = -KARRAS_RHO * np.log(roots)
    # np.interp needs increasing x: lambda falls with time, so reverse both.
    times = np.interp(wanted, lambdas[::-1], grid[::-1])
    times[0] = start if first_lambda >= MIN_LOG_SNR else times[0]
    return np.append(times, end).astype(np.float32)


def validate_sampler(sampler, eta=0.0):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")


def ddim_update(
    pred_noises, pred_images, noise_rates, signal_rates, next_noise_rates, next_signal_rates,
    eta=0.0, step_noises=None,
):  # fmt: skip
    """DDIM (Song et al. 2020, eq. 12 and 16).

    Without `step_noises` it is deterministic (eta = 0): x_next = next_signal
    * x_0 + next_noise * eps. With them, a fraction of the noise is drawn afresh,
    sigma = eta sqrt((1 - a_next) / (1 - a)) sqrt(1 - a / a_next) with a =
    signal_rates**2; eta = 1 is DDPM's ancestral sampling.

    References:
    - [Song et al., 2020](https://arxiv.org/abs/2010.02502)
    """
    if step_noises is None:
        return next_signal_rates * pred_images + next_noise_rates * pred_noises
    pred_noises, pred_images, signal_rates, next_noise_rates, next_signal_rates, step_noises = (
        ops.convert_to_tensor(x) for x in (pred_noises, pred_images, signal_rates,
                                           next_noise_rates, next_signal_rates, step_noises)
    )  # fmt: skip
    alpha_bars, next_alpha_bars = signal_rates**2, next_signal_rates**2
    sigmas = (
        eta
        * ops.sqrt((1.0 - next_alpha_bars) / (1.0 - alpha_bars))
        * ops.sqrt(ops.maximum(1.0 - alpha_bars / next_alpha_bars, 0.0))
    )
    directions = ops.sqrt(ops.maximum(next_noise_rates**2 - sigmas**2, 0.0)) * pred_noises
    return next_signal_rates * pred_images + directions + sigmas * step_noises


def dpmpp_2m_update(
    current_images, pred_images, previous_pred_images, lambdas, next_lambdas, previous_lambdas,
    noise_rates, next_noise_rates, next_signal_rates, first_step, eta=0.0, step_noises=None,
):  # fmt: skip
    """DPM-Solver++(2M), the second-order multistep solver of the probability
    flow ODE in its data-prediction form (Lu et al. 2022, algorithm 2), and
    with `eta` > 0 and `step_noises` its SDE form (SDE-DPM-Solver++(2M),
    the same paper's section 5; eta = 1 is the reverse SDE).

    With h = next_lambda - lambda and r = (lambda - previous_lambda) / h:
    D = (1 + 1 / (2r)) x_0 - 1 / (2r) x_0,previous (D = x_0 at the first step),
    x_next = (next_sigma / sigma) exp(-eta h) x_t
             + next_alpha (1 - exp(-(1 + eta) h)) D
             + next_sigma sqrt(1 - exp(-2 eta h)) z,
    which for eta = 0 is the ODE solver's
    x_next = (next_sigma / sigma) x_t - next_alpha (exp(-h) - 1) D.

    References:
    - [Lu et al., 2022](https://arxiv.org/abs/2211.01095)
    """
    h = next_lambdas - lambdas
    r = (lambdas - previous_lambdas) / h
    corrected = (1.0 + 0.5 / r) * pred_images - (0.5 / r) * previous_pred_images
    estimate = ops.where(first_step, pred_images, corrected)
    current_images, estimate, h, noise_rates, next_noise_rates, next_signal_rates = (
        ops.convert_to_tensor(x, "float32") for x in (current_images, estimate, h, noise_rates,
                                                      next_noise_rates, next_signal_rates)
    )  # fmt: skip
    if step_noises is None:
        return (next_noise_rates / noise_rates) * current_images - next_signal_rates * (
            ops.exp(-h) - 1.0
        ) * estimate
    step_noises = ops.convert_to_tensor(step_noises, "float32")
    churn = ops.exp(-eta * h)
    return (
        (next_noise_rates / noise_rates) * churn * current_images
        + next_signal_rates * (1.0 - ops.exp(-(1.0 + eta) * h)) * estimate
        + next_noise_rates * ops.sqrt(ops.maximum(1.0 - churn**2, 0.0)) * step_noises
    )


# EDM's largest churn per step (Karras et al. 2022, algorithm 2: gamma is at
# most sqrt(2) - 1, which at most doubles the noise variance). `heun`'s eta is
# the share of it: gamma = eta x HEUN_MAX_CHURN.
HEUN_MAX_CHURN = 2.0**0.5 - 1.0


def network_evaluations(sampler, diffusion_steps):
    """How many times `sampler` evaluates the network in `diffusion_steps`
    steps (with classifier-free guidance each is a batch of two halves)."""
    steps = int(diffusion_steps)
    return 2 * steps - 1 if sampler == "heun" else steps


def churn_update(current_images, noise_rates, signal_rates, top_sigmas, eta, step_noises):
    """The churn of EDM's stochastic sampler (Karras et al. 2022, algorithm
    2, lines 5-6) in this package's rates: the images at sigma = noise /
    signal are noised afresh up to sigma_hat = (1 + gamma) sigma, gamma = eta
    x (sqrt(2) - 1), but never past `top_sigmas` (the schedule's sigma at t =
    1, where the network was trained; a step already there is not churned).
    Returns `(images, noise_rates, signal_rates)` at sigma_hat, which the
    network is then evaluated at.

    References:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364)
    """
    signal_rates = ops.maximum(signal_rates, 1e-6)
    sigmas = noise_rates / signal_rates
    wanted = sigmas * (1.0 + eta * HEUN_MAX_CHURN)
    sigma_hats = ops.maximum(sigmas, ops.minimum(wanted, top_sigmas))
    hat_signal_rates = 1.0 / ops.sqrt(1.0 + sigma_hats**2)
    added = ops.sqrt(ops.maximum(sigma_hats**2 - sigmas**2, 0.0))
    images = hat_signal_rates * (current_images / signal_rates + added * step_noises)
    return images, sigma_hats * hat_signal_rates, hat_signal_rates


def heun_update(pred_noises, pred_images, later_pred_noises, noise_rates, signal_rates,
                next_noise_rates, next_signal_rates):  # fmt: skip
    """EDM's second-order step (Karras et al. 2022, algorithm 1, lines 7-8)
    in sigma = noise / signal, where x / signal = x_0 + sigma eps moves along
    d = eps: the Euler step to the next sigma (which is DDIM's, and where
    `later_pred_noises` were predicted) corrected by the mean of the two
    slopes,
    x_next / next_signal = x_0 + sigma eps + (next_sigma - sigma) (eps + eps_later) / 2.

    References:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364)
    """
    mean_noises = 0.5 * (pred_noises + later_pred_noises)
    sigmas = noise_rates / ops.maximum(signal_rates, 1e-6)
    return (
        next_signal_rates * pred_images
        + next_noise_rates * mean_noises
        + next_signal_rates * sigmas * (pred_noises - mean_noises)
    )
