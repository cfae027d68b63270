"""Train the book's diffusion model: `python train.py` (see --help).

A thin wrapper over `diffusion_keras.cli.train`, the `diffusion-keras-train` command.
"""

from diffusion_keras.cli.train import config_from_args, entry, main, parser  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(entry())
