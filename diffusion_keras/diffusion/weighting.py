"""Loss weighting by noise level: pure functions of the rates, chosen by name.

Each returns per-image weights `(batch, 1, 1, 1)` for the loss on the
network's prediction, given `noise_rates`, `signal_rates` and what the network
predicts. With SNR = signal_rates**2 / noise_rates**2:

- `"none"`: 1 for every image (the book's).
- `"min_snr"`: min-SNR-gamma (Hang et al. 2023). Weighting the loss on the
  clean image by min(SNR, gamma) stops the nearly-clean images, whose SNR is
  huge, from dominating the gradient. Expressed on the prediction actually
  trained: min(SNR, gamma) / SNR for noise, min(SNR, gamma) / (SNR + 1) for
  velocity, and min(SNR, gamma) for the image.
- `"edm"`: EDM's weighting (Karras et al. 2022, eq. 8 and table 1) for data of
  unit variance: SNR + 1 on the clean-image loss, the weighting under which
  EDM's preconditioned network sees unit-weighted targets. On the prediction
  trained it is 1 for velocity (so velocity with "none" is already EDM's),
  (SNR + 1) / SNR for noise and SNR + 1 for the image.

Both are derived for the squared error; with `loss="mae"` the same weights
apply to the absolute error.

Where the noise levels are drawn weighs them too (`time_sampler`):

- `"uniform"`: diffusion times uniform in [0, 1] (the book's).
- `"log_normal"`: log-SNR normal with mean `log_snr_mean` and standard
  deviation `log_snr_std`, kept to the schedule's range: the noise / signal
  ratio is log-normal, as in EDM's training (Karras et al. 2022, whose P_mean
  -1.2 and P_std 1.2 for data of standard deviation 0.5 are log-SNR mean
  2 (1.2 - ln 2) = 1.01 and standard deviation 2.4 for our unit-variance
  data). The default mean, `LOG_SNR_MEAN` = -1.5, is noisier than EDM's:
  with noise prediction and the book's MAE, after 392 steps it came within
  0.005 of the KID the book's recipe reaches after 1176 on the flowers (and
  below it on the glyphs with two samplers of three, in random features),
  where uniform times stayed 0.05-0.10 above it and EDM's mean further
  (docs/results/time-to-quality.md). With the book's offset cosine, uniform times
  spend 30% of the steps at noise rates above 0.92 (t > 0.7); EDM's mean
  spends 18% there and the default 48%.

References:
- [Hang et al., 2023 (min-SNR weighting)](https://arxiv.org/abs/2303.09556)
- [Karras et al., 2022 (EDM)](https://arxiv.org/abs/2206.00364)
"""

import math

import numpy as np
from keras import ops

from diffusion_keras.config.choices import LOSS_WEIGHTINGS as WEIGHTINGS
from diffusion_keras.config.choices import TIME_SAMPLINGS
from diffusion_keras.config.model import LOG_SNR_MEAN, LOG_SNR_STD
from diffusion_keras.diffusion.schedules import log_snrs


def validate_weighting(name, gamma=5.0):
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of: {', '.join(WEIGHTINGS)}")
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")


def loss_weights(name, noise_rates, signal_rates, prediction, gamma=5.0):
    """Per-image loss weights for `prediction` ("noise", "image" or "velocity")."""
    if name == "none":
        return ops.ones_like(noise_rates)
    snrs = ops.square(signal_rates) / ops.maximum(ops.square(noise_rates), 1e-12)
    # The weight on the clean image's squared error ...
    image_weights = ops.minimum(snrs, gamma) if name == "min_snr" else snrs + 1.0
    # ... moved onto the prediction's: the image error is the noise error
    # times noise / signal (a factor 1 / SNR squared) and the velocity error
    # times the noise rate (1 / (SNR + 1) squared, the rates being
    # variance-preserving).
    if prediction == "noise":
        return image_weights / snrs
    if prediction == "velocity":
        return image_weights / (snrs + 1.0)
    return image_weights


def validate_time_sampling(name, log_snr_std=LOG_SNR_STD):
    if name not in TIME_SAMPLINGS:
        raise ValueError(
            f"unknown time sampling {name!r}; choose one of: {', '.join(TIME_SAMPLINGS)}"
        )
    if not log_snr_std > 0:
        raise ValueError(f"log_snr_std must be > 0, got {log_snr_std}")


def time_sampler(name, schedule, log_snr_mean=LOG_SNR_MEAN, log_snr_std=LOG_SNR_STD, grid=4097):
    """A function from uniform draws in [0, 1) to training `diffusion_times`.

    `"uniform"` is the identity. `"log_normal"` inverts the cumulative
    distribution over the times of a log-SNR normal with `log_snr_mean` and
    `log_snr_std`, cut to the log-SNRs `schedule` reaches between t = 0 and 1
    (tabulated on `grid` times, linear in between): a seeded draw gives the
    same time on every run.
    """
    validate_time_sampling(name, log_snr_std)
    if name == "uniform":
        return lambda draws: draws
    times = np.linspace(0.0, 1.0, grid)
    # `samplers.log_snrs` is log(signal / noise), half the log-SNR.
    halves = ops.convert_to_numpy(log_snrs(*schedule(times.astype("float32"))))
    # log-SNR falls with t: the mass up to t is the normal's above log_snr(t).
    above = np.array([0.5 * math.erfc((2.0 * v - log_snr_mean) / (log_snr_std * math.sqrt(2.0)))
                      for v in np.asarray(halves, np.float64)])  # fmt: skip
    cdf = above - above[0]
    if not cdf[-1] > 0:
        raise ValueError("log_normal time sampling: no probability on the schedule's range")
    cdf = cdf / cdf[-1]
    cdf = np.maximum.accumulate(cdf + np.linspace(0.0, 1e-9, grid))  # strictly rising
    cdf = (cdf / cdf[-1]).astype(np.float32)
    times = times.astype(np.float32)

    def sample(draws):
        table, grid_times = ops.convert_to_tensor(cdf), ops.convert_to_tensor(times)
        flat = ops.reshape(ops.cast(draws, "float32"), (-1,))
        index = ops.searchsorted(table, flat, side="right")
        index = ops.clip(ops.cast(index, "int32") - 1, 0, grid - 2)
        low, high = ops.take(table, index), ops.take(table, index + 1)
        fraction = ops.clip((flat - low) / ops.maximum(high - low, 1e-12), 0.0, 1.0)
        sampled = ops.take(grid_times, index) + fraction * (1.0 / (grid - 1))
        return ops.reshape(sampled, ops.shape(draws))

    return sample
