"""The docs' flag reference, derived from the settings and the parsers:
`python -m diffusion_keras.cli.reference` writes `docs/reference/flags.md`
(train.py), `docs/reference/generate-flags.md` (generate.py) and
`docs/reference/distill-flags.md` (distill.py).

`tests/test_settings.py` checks that the committed pages are what this writes,
so the reference cannot drift from the code.
"""

import argparse
import os
import sys

from diffusion_keras.cli import distill, generate
from diffusion_keras.config import fields
from diffusion_keras.config.run import GROUPS

TRAIN_HEADER = """# train.py flags

Every setting of a training run, grouped as `python train.py --help` groups them.
Each one is written once, in `diffusion_keras/config/` (`setting(...)`): this page,
the flags, `TrainConfig` and a model's `get_config` are all derived from there.
Booleans take `--name` / `--no-name`. The network and diffusion settings are
also `DiffusionModel(...)` keyword arguments and are saved in the model file.

Besides these: `--recipe {default,book}` (the package's measured defaults, or
the book's recipe exactly), `--resume` (continue the run in `--output`),
`--verbose {0,1,2}` and `--version`.

"""

GENERATE_HEADER = """# generate.py flags

`python generate.py MODEL [flags]`, grouped as `python generate.py --help` groups them
(this page is generated from that parser). The sampler, step count and spacing left
out come from `--recipe` (the measured default: SDE-DPM-Solver++(2M), 10 log-SNR steps,
eta 1).

"""

DISTILL_HEADER = """# distill.py flags

`python distill.py MODEL --steps N --output DIR [flags]`, grouped as
`python distill.py --help` groups them (generated from that parser). The guide:
[few-step students](../guides/distillation.md).

"""


def parser_reference(parser):
    """A Markdown table per argument group of an argparse parser."""
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "arguments", "options": "options"}.get(
            group.title, group.title
        )
        lines += [f"## {title}", "", "| flag | what |", "|---|---|"]
        for action in actions:
            name = " / ".join(action.option_strings) or action.dest
            if action.choices and not isinstance(action, argparse.BooleanOptionalAction):
                name += " {" + ",".join(map(str, action.choices)) + "}"
            what = (action.help or "").replace("|", "/").replace("%%", "%")
            if isinstance(action, argparse._VersionAction):
                what = "print the version and exit"
            lines.append(f"| `{name}` | {what} |")
        lines.append("")
    return "\n".join(lines)


def pages():
    """`{path: text}` of the reference pages."""
    return {
        os.path.join("docs", "reference", "flags.md"): TRAIN_HEADER + fields.reference(GROUPS),
        os.path.join("docs", "reference", "generate-flags.md"): GENERATE_HEADER
        + parser_reference(generate.parser()),
        os.path.join("docs", "reference", "distill-flags.md"): DISTILL_HEADER
        + parser_reference(distill.parser()),
    }


def main(argv=None):
    root = (sys.argv[1:] if argv is None else argv) or ["."]
    for path, text in pages().items():
        path = os.path.join(root[0], path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
