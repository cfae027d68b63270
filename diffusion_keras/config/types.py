"""The value types of settings: each parses a flag's text (or checks a value
given in Python) and raises `argparse.ArgumentTypeError` with one line.

`diffusion_keras.config.fields` uses the same type to parse a `train.py` flag and
to check a config built in Python, so a setting is checked in one place.
"""

import argparse
import math


def _int_from(lowest):
    """A whole number >= `lowest`."""

    def parse(text):
        if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected a number >= {lowest}, got {value}")
        return value

    parse.__name__ = "positive_int" if lowest == 1 else "non_negative_int"
    return parse


positive_int = _int_from(1)
non_negative_int = _int_from(0)


def any_int(text):
    """Any whole number (a seed)."""
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _finite_float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _float_in(accept, description):
    """A finite float for which `accept(value)` holds."""

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
# EDM2's relative EMA lengths: its exponent is above 0 up to sqrt(1/12).
ema_length = _float_in(lambda v: 0.0 <= v <= 0.28, "a number in [0, 0.28]")
strength = _float_in(lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def _whole_numbers(text):
    if isinstance(text, (list, tuple)):
        values = text
    else:
        values = [v for v in str(text).split(",") if v.strip()]
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def level_list(text):
    """Comma-separated whole numbers >= 0 (U-Net levels); empty for none."""
    values = _whole_numbers(text)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return tuple(values)


def int_list(text):
    """Comma-separated whole numbers >= 1 (U-Net widths)."""
    values = _whole_numbers(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return tuple(values)


def text(value):
    """Any text (a path, a data source)."""
    return str(value)


def boolean(value):
    """True or False (a flag's `--name` / `--no-name`)."""
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")
    return value


def parse_checkpoint_every(text):
    """`"500"` (steps), `"10m"` (minutes) or `"0"` (epoch ends only) to
    `("steps", 500)`, `("minutes", 10.0)` or None; ValueError otherwise."""
    text = str(text).strip().lower()
    try:
        if text.endswith("m"):
            minutes = float(text[:-1])
            if minutes > 0 and minutes != float("inf"):
                return ("minutes", minutes)
        elif int(text) >= 0:
            return ("steps", int(text)) if int(text) else None
    except ValueError:
        pass
    raise ValueError(
        f"checkpoint_every must be a number of steps (500), of minutes (10m) or 0, got {text!r}"
    )


def checkpoint_every(text):
    """How often to checkpoint inside epochs: steps (500), minutes (10m) or 0."""
    try:
        parse_checkpoint_every(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected steps (500), minutes (10m) or 0, got {text!r}"
        ) from None
    return str(text).strip().lower()
