"""Shared pieces of the command-line tools: one-line errors and exit codes."""

import argparse
import math
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


def _int_from(lowest):
    """An argparse type: a whole number >= `lowest`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected a number >= {lowest}, got {value}")
        return value

    return parse


positive_int = _int_from(1)
non_negative_int = _int_from(0)


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _float_in(accept, description):
    """An argparse type: a finite float for which `accept(value)` holds."""

    def parse(text):
        value = _finite_float(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text}")
        return value

    return parse


finite_float = _float_in(lambda v: True, "a finite number")
positive_float = _float_in(lambda v: v > 0, "a positive number")
non_negative_float = _float_in(lambda v: v >= 0, "a number >= 0")
unit_interval = _float_in(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
closed_unit_interval = _float_in(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
strength = _float_in(lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def _whole_numbers(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def level_list(text):
    """Comma-separated whole numbers >= 0 (U-Net levels); empty for none."""
    values = _whole_numbers(text)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return values


def int_list(text):
    values = _whole_numbers(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values
