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

References:
- [Hang et al., 2023 (min-SNR weighting)](https://arxiv.org/abs/2303.09556)
"""

from keras import ops

WEIGHTINGS = ("none", "min_snr")


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
    clipped = ops.minimum(snrs, gamma)
    if prediction == "noise":
        return clipped / snrs
    if prediction == "velocity":
        return clipped / (snrs + 1.0)
    return clipped
