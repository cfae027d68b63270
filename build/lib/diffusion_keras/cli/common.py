"""Shared pieces of the command-line tools: one-line errors, exit codes, `--version`.

Nothing here imports TensorFlow: the tools parse their arguments first.
"""

import argparse
import os
import sys
import warnings

from diffusion_keras import __version__
from diffusion_keras.config.types import (  # noqa: F401  (the tools' argument types)
    closed_unit_interval,
    finite_float,
    int_list,
    level_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    strength,
    unit_interval,
)
from diffusion_keras.utils.errors import DiffusionKerasError, UsageError  # noqa: F401

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are a single line on stderr, with `--version`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def run(main, argv=None):
    """Runs `main(argv)`; known errors become one line and exit code 2."""
    prog = os.path.basename(sys.argv[0])
    # Warnings (skipped files, say) as one line each, without the source line.
    warnings.formatwarning = lambda message, *args, **kwargs: f"{prog}: warning: {message}\n"
    try:
        return main(argv)
    except (DiffusionKerasError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
