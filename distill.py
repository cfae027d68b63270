"""Distil a trained model into a few-step student: `python distill.py MODEL --steps N --output DIR`.

A thin wrapper over `diffusion_keras.cli.distill`, the `diffusion-keras-distill` command.
"""

from diffusion_keras.cli.distill import config_from_args, entry, main, parser  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(entry())
