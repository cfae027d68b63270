"""Diffusion schedules: pure functions of `diffusion_times` in [0, 1].

Every schedule returns `(noise_rates, signal_rates)` with
`noise_rates**2 + signal_rates**2 == 1`; `signal_rates**2` is the DDPM paper's
alpha-bar. Schedules are chosen by name with `get_schedule`.
"""

import math

from keras import ops

from diffusion_keras.config.choices import SCHEDULES

# DDPM (Ho et al. 2020) betas rise linearly from 1e-4 to 0.02 over T=1000 steps.
DDPM_MIN_BETA = 1e-4
DDPM_MAX_BETA = 0.02
DDPM_STEPS = 1000


def linear_schedule(
    diffusion_times,
    min_beta=DDPM_MIN_BETA,
    max_beta=DDPM_MAX_BETA,
    steps=DDPM_STEPS,
):
    """The DDPM linear schedule in continuous time.

    The book computes `cumprod(1 - betas)` over whatever vector of times it is
    given, so its value depends on the batch. Here the sum of betas up to time
    `t` is integrated in closed form, so the rates depend on `t` alone:
    `signal_rates**2 = exp(-T * (b0 * t + (b1 - b0) * t**2 / 2))`.

    References:
    - [Ho et al., 2020](https://arxiv.org/abs/2006.11239)
    """
    diffusion_times = ops.convert_to_tensor(diffusion_times, dtype="float32")
    integrated_betas = steps * (
        min_beta * diffusion_times + (max_beta - min_beta) * ops.square(diffusion_times) / 2.0
    )
    alpha_bars = ops.exp(-integrated_betas)
    signal_rates = ops.sqrt(alpha_bars)
    noise_rates = ops.sqrt(1.0 - alpha_bars)
    return noise_rates, signal_rates


def cosine_schedule(diffusion_times):
    """The cosine schedule: `signal_rates = cos(t * pi / 2)`.

    References:
    - [Nichol & Dhariwal, 2021](https://arxiv.org/abs/2102.09672)
    """
    diffusion_times = ops.convert_to_tensor(diffusion_times, dtype="float32")
    angles = diffusion_times * (math.pi / 2.0)
    return ops.sin(angles), ops.cos(angles)


def offset_cosine_schedule(diffusion_times, min_signal_rate=0.02, max_signal_rate=0.95):
    """The book's offset cosine schedule.

    The angle moves linearly from `acos(max_signal_rate)` at t=0 to
    `acos(min_signal_rate)` at t=1, so the signal never vanishes (the network
    always sees some of the image) and never is perfectly clean.

    References:
    - [Nichol & Dhariwal, 2021](https://arxiv.org/abs/2102.09672)
    """
    diffusion_times = ops.convert_to_tensor(diffusion_times, dtype="float32")
    start_angle = math.acos(max_signal_rate)
    end_angle = math.acos(min_signal_rate)
    angles = start_angle + diffusion_times * (end_angle - start_angle)
    return ops.sin(angles), ops.cos(angles)


def validate_schedule(name, min_signal_rate=0.02, max_signal_rate=0.95):
    """Raises `ValueError` with one clear line when the options are not valid."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if not 0.0 <= min_signal_rate < max_signal_rate <= 1.0:
        raise ValueError(
            "signal rates must satisfy 0 <= min_signal_rate < max_signal_rate <= 1, "
            f"got {min_signal_rate} and {max_signal_rate}"
        )


def get_schedule(name, min_signal_rate=0.02, max_signal_rate=0.95):
    """Returns the schedule called `name` as a function of `diffusion_times`.

    Args:
        name: str. One of `"linear"`, `"cosine"`, `"offset_cosine"`.
        min_signal_rate: float. Signal rate at t=1 (offset cosine only).
            Defaults to 0.02.
        max_signal_rate: float. Signal rate at t=0 (offset cosine only).
            Defaults to 0.95.
    """
    validate_schedule(name, min_signal_rate, max_signal_rate)
    if name == "linear":
        return linear_schedule
    if name == "cosine":
        return cosine_schedule

    def schedule(diffusion_times):
        return offset_cosine_schedule(diffusion_times, min_signal_rate, max_signal_rate)

    return schedule


def zero_noise_time(name, min_signal_rate=0.02, max_signal_rate=0.95):
    """The diffusion time at which the schedule `name` has no noise left.

    0 for the linear and cosine schedules. The offset cosine keeps some noise
    at t = 0 (noise rate sqrt(1 - max_signal_rate**2), 0.31 for the book's);
    its angle, linear in t, reaches 0 at t = -acos(max) / (acos(min) -
    acos(max)), -0.26 for the book's. Editing (`diffusion_keras.editing.edits`)
    continues the schedule down to this time; the network has not been
    trained there, but the noise it removes is small.
    """
    validate_schedule(name, min_signal_rate, max_signal_rate)
    if name != "offset_cosine":
        return 0.0
    start_angle, end_angle = math.acos(max_signal_rate), math.acos(min_signal_rate)
    return -start_angle / (end_angle - start_angle)


def log_snrs(noise_rates, signal_rates):
    """lambda = log(signal_rates / noise_rates), finite at the ends."""
    tiny = 1e-12
    return ops.log(ops.maximum(signal_rates, tiny)) - ops.log(ops.maximum(noise_rates, tiny))
