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

Times run from 1 (noise) down to 0 in `diffusion_steps` equal steps; every
sampler evaluates the network once per step at t = 1 - step / diffusion_steps
and, as the book does, returns the clean-image estimate of the last step.
"""

from keras import ops

SAMPLERS = ("ddim", "dpmpp_2m")


def validate_sampler(sampler, eta=0.0):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler != "ddim" and float(eta) != 0.0:
        raise ValueError(f"eta applies to the ddim sampler only, not {sampler!r}")


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
    noise_rates, next_noise_rates, next_signal_rates, first_step,
):  # fmt: skip
    """DPM-Solver++(2M), the second-order multistep solver of the probability
    flow ODE in its data-prediction form (Lu et al. 2022, algorithm 2).

    With h = next_lambda - lambda and r = (lambda - previous_lambda) / h:
    D = (1 + 1 / (2r)) x_0 - 1 / (2r) x_0,previous (D = x_0 at the first step),
    x_next = (next_sigma / sigma) x_t - next_alpha (exp(-h) - 1) D.

    References:
    - [Lu et al., 2022](https://arxiv.org/abs/2211.01095)
    """
    h = next_lambdas - lambdas
    r = (lambdas - previous_lambdas) / h
    corrected = (1.0 + 0.5 / r) * pred_images - (0.5 / r) * previous_pred_images
    estimate = ops.where(first_step, pred_images, corrected)
    return (next_noise_rates / noise_rates) * current_images - next_signal_rates * (
        ops.exp(-h) - 1.0
    ) * estimate
