"""Shared pieces of the command-line tools: one-line errors and exit codes."""

import argparse
import os
import sys
import warnings

from diffusion_keras.errors import DiffusionKerasError, UsageError  # noqa: F401

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are a single line on stderr."""

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


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def unit_interval(text):
    """A float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values
