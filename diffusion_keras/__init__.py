"""diffusion_keras: the denoising diffusion model of *Generative Deep Learning*
(2nd ed.), chapter 8, for Keras 3."""

from diffusion_keras.runtime import configure_before_tensorflow

configure_before_tensorflow()  # oneDNN kernels on x86 CPUs: read once, at import

from diffusion_keras.quiet import import_tensorflow  # noqa: E402

import_tensorflow()

from diffusion_keras.autoencoder import Autoencoder  # noqa: E402
from diffusion_keras.clip import ContrastivePretrainer, train_text_encoder  # noqa: E402
from diffusion_keras.data import ImageData, load_images, train_dataset  # noqa: E402
from diffusion_keras.images import save_grid, save_images  # noqa: E402
from diffusion_keras.layers import SinusoidalEmbedding  # noqa: E402
from diffusion_keras.model import DiffusionModel  # noqa: E402
from diffusion_keras.saving import load_autoencoder, load_model, load_text_encoder  # noqa: E402
from diffusion_keras.schedules import (  # noqa: E402
    SCHEDULES,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    offset_cosine_schedule,
)
from diffusion_keras.text import TextEncoder  # noqa: E402
from diffusion_keras.training import TrainConfig, train  # noqa: E402
from diffusion_keras.unet import build_unet  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "ContrastivePretrainer",
    "DiffusionModel",
    "ImageData",
    "SCHEDULES",
    "SinusoidalEmbedding",
    "TextEncoder",
    "TrainConfig",
    "build_unet",
    "cosine_schedule",
    "get_schedule",
    "linear_schedule",
    "load_images",
    "load_autoencoder",
    "load_model",
    "load_text_encoder",
    "offset_cosine_schedule",
    "save_grid",
    "save_images",
    "train",
    "train_dataset",
    "train_text_encoder",
]
