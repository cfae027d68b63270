"""Image similarity in `keras.ops`, for any backend: SSIM and PSNR.

The same arithmetic as `tf.image.ssim` and `tf.image.psnr` (Wang et al. 2004:
a Gaussian window of standard deviation 1.5, no padding, k1 = 0.01,
k2 = 0.03), which this package used before it ran on every Keras backend;
`tests/test_autoencoder.py` checks that the two agree.

References:
- [Wang et al., 2004 (SSIM)](https://doi.org/10.1109/TIP.2003.819861)
"""

import numpy as np
from keras import ops


def _gaussian_window(size, sigma, channels):
    coordinates = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    line = np.exp(-0.5 * (coordinates / sigma) ** 2)
    window = np.outer(line, line)
    window /= window.sum()
    kernel = np.tile(window[:, :, None, None], (1, 1, channels, 1))
    return ops.convert_to_tensor(kernel.astype(np.float32))


def structural_similarity(images, others, max_val=1.0, filter_size=11, filter_sigma=1.5,
                          k1=0.01, k2=0.03):  # fmt: skip
    """Per-image SSIM of two batches `(n, height, width, channels)`: the mean
    over windows and channels of luminance times contrast-structure."""
    images = ops.cast(images, "float32")
    others = ops.cast(others, "float32")
    window = _gaussian_window(filter_size, filter_sigma, int(images.shape[-1]))

    def local_mean(x):
        return ops.depthwise_conv(x, window, padding="valid")

    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    mean0, mean1 = local_mean(images), local_mean(others)
    num0 = mean0 * mean1 * 2.0
    den0 = ops.square(mean0) + ops.square(mean1)
    luminance = (num0 + c1) / (den0 + c1)
    num1 = local_mean(images * others) * 2.0
    den1 = local_mean(ops.square(images) + ops.square(others))
    contrast_structure = (num1 - num0 + c2) / (den1 - den0 + c2)
    return ops.mean(luminance * contrast_structure, axis=(1, 2, 3))


def peak_signal_to_noise(images, others, max_val=1.0):
    """Per-image PSNR in dB of two batches `(n, height, width, channels)`."""
    error = ops.mean(ops.square(ops.cast(images, "float32") - ops.cast(others, "float32")),
                     axis=(1, 2, 3))  # fmt: skip
    return 20.0 * np.log10(max_val) - 10.0 * ops.log(error) / np.log(10.0)
