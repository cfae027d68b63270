"""Exporting a trained model to run without this package: `export_saved_model`."""

from diffusion_keras.export.saved_model import export_saved_model

__all__ = ["export_saved_model"]
