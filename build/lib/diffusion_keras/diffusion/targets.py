"""What the network predicts: noise, the clean image or the velocity, and how
each one gives the other two.

With x = signal_rates * images + noise_rates * noises and
signal_rates**2 + noise_rates**2 = 1 (true of every schedule here):

| prediction | the network outputs | reference |
|---|---|---|
| `"noise"` | the noise eps (the book's) | Ho et al. 2020 |
| `"image"` | the clean image | |
| `"velocity"` | v = signal_rates * eps - noise_rates * image | Salimans & Ho 2022 |

References:
- [Salimans & Ho, 2022](https://arxiv.org/abs/2202.00512)
"""

from diffusion_keras.config.choices import PREDICTIONS  # noqa: F401


def split_prediction(prediction, outputs, noisy_images, noise_rates, signal_rates):
    """A network's `outputs` (a `prediction` of "noise", "image" or
    "velocity") as `(pred_noises, pred_images)`.

    With x = signal * image + noise * eps and signal**2 + noise**2 = 1 (true
    of every schedule here), a prediction of eps, of the image or of the
    velocity v = signal * eps - noise * image each gives the other two:
    image = signal * x - noise * v and eps = noise * x + signal * v.
    """
    if prediction == "noise":
        return outputs, (noisy_images - noise_rates * outputs) / signal_rates
    if prediction == "image":
        return (noisy_images - signal_rates * outputs) / noise_rates, outputs
    return (
        noise_rates * noisy_images + signal_rates * outputs,
        signal_rates * noisy_images - noise_rates * outputs,
    )


def prediction_targets(prediction, images, noises, noise_rates, signal_rates):
    """What a network predicting `prediction` should output."""
    if prediction == "noise":
        return noises
    if prediction == "image":
        return images
    return signal_rates * noises - noise_rates * images
