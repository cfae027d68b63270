"""Writes the docs' flag reference from the settings: `python -m diffusion_keras.config`.

`docs/reference/flags.md` is this output; `tests/test_settings.py` checks that
it is up to date.
"""

import os
import sys

from diffusion_keras.config import fields
from diffusion_keras.config.run import GROUPS

HEADER = """# train.py flags

Every setting of a training run, grouped as `python train.py --help` groups them.
Each one is written once, in `diffusion_keras/config/` (`setting(...)`): this page,
the flags, `TrainConfig` and a model's `get_config` are all derived from there.
Booleans take `--name` / `--no-name`. The network and diffusion settings are
also `DiffusionModel(...)` keyword arguments and are saved in the model file.

Besides these: `--recipe {default,book}` (the package's measured defaults, or
the book's recipe exactly), `--resume` (continue the run in `--output`) and
`--verbose {0,1,2}`.

"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join("docs", "reference", "flags.md")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        handle.write(HEADER + fields.reference(GROUPS))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
