"""Generate images with a trained model: `python generate.py RUN_DIR/model.keras`.

A thin wrapper over `diffusion_keras.cli.generate`, the `diffusion-keras-generate` command.
"""

from diffusion_keras.cli.generate import PROMPT_GUIDANCE, entry, main, parser  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(entry())
