"""One home for each setting: `setting` writes its default, type, choices and
help once, on a dataclass field, and everything else is derived from it.

- `check` validates a config built in Python with the same types the flags use;
- `add_flags` makes an argparse group of flags for a config class, one per field
  (`--time-sampling` for `time_sampling`), with the default and choices in its help;
- `given_flags` reads back the flags a user gave (None is "not given");
- `config_dict` / `from_dict` are the JSON form a run or a model file keeps.

tensorflow/models' config dataclasses and diffusers' `register_to_config` are
the idea; nothing here imports TensorFlow, so the CLIs parse without it.
"""

import argparse
import dataclasses
import json
import os

from diffusion_keras.config import types

NO_FLAG = "no flag"


MISSING = dataclasses.MISSING


def setting(default, help, *, type=None, choices=None, flag=None, resumable=False,
            legacy_model=MISSING, legacy_run=MISSING, metavar=None):  # fmt: skip
    """A dataclass field for one setting.

    Args:
        default: the value when none is given.
        help: what it does, for `--help` and the docs (the default is added).
        type: a function of `diffusion_keras.config.types`: parses the flag's text
            and checks a value; bools need none.
        choices: the fixed set (from `diffusion_keras.config.choices`).
        flag: the flag's name when it is not `--` + the field's name with
            dashes, or `NO_FLAG` for a setting that is derived (not a flag).
        resumable: whether `train.py --resume` may change it.
        legacy_model: what a model file saved before the setting existed
            was made with (it loads with that).
        legacy_run: the same for a run's `config.json`.
    """
    metadata = dict(help=help, type=type, choices=choices, flag=flag, resumable=resumable,
                    legacy_model=legacy_model, legacy_run=legacy_run, metavar=metavar)  # fmt: skip
    return dataclasses.field(default=default, metadata=metadata)


def settings_of(cls):
    """The `dataclasses.Field`s of a config class, in order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def own_settings(cls):
    """The fields a config class defines itself (not those it inherits)."""
    own = cls.__dict__.get("__annotations__", {})
    return [f for f in settings_of(cls) if f.name in own]


def flag_name(field):
    flag = field.metadata["flag"]
    if flag == NO_FLAG:
        return None
    return flag or "--" + field.name.replace("_", "-")


def is_bool(field):
    return field.type in (bool, "bool")


def check_value(field, value):
    """`value` as the setting holds it (tuples for lists), or ValueError in one line."""
    kind = field.metadata["type"]
    try:
        if is_bool(field):
            value = types.boolean(value)
        elif kind is not None:
            value = kind(value)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{field.name}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{field.name}: {error}") from None
    choices = field.metadata["choices"]
    if choices is not None and value not in choices:
        shown = ", ".join(map(str, choices))
        raise ValueError(f"unknown {field.name} {value!r}; choose one of: {shown}")
    return value


def check(config):
    """Validates and normalises every setting of a config instance in place."""
    for field in settings_of(type(config)):
        value = getattr(config, field.name)
        object.__setattr__(config, field.name, check_value(field, value))


def shown_default(field):
    """A setting's default as a person reads it: `32,64,96,128`, `on`, `none`."""
    default = field.default
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    if is_bool(field):
        return "on" if default else "off"
    return "none" if default == "" else str(default)


def describe(field):
    """The help text with its default, as `--help` shows it."""
    return f"{field.metadata['help']} (default {shown_default(field)})"


def add_flags(parser, cls, title=None):
    """Adds a flag group for `cls`'s own settings; their defaults stay None so
    that `given_flags` can tell what the user gave."""
    group = parser.add_argument_group(title or getattr(cls, "TITLE", cls.__name__))
    for field in own_settings(cls):
        name = flag_name(field)
        if name is None:
            continue
        kwargs = dict(dest=field.name, default=None, help=describe(field))
        if is_bool(field):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = field.metadata["type"] or types.text
            if field.metadata["choices"] is not None:
                kwargs["choices"] = field.metadata["choices"]
            if field.metadata["metavar"]:
                kwargs["metavar"] = field.metadata["metavar"]
        group.add_argument(name, **kwargs)
    return group


def given_flags(args, cls):
    """`{name: value}` of `cls`'s settings that `args` holds a value for."""
    return {
        f.name: getattr(args, f.name)
        for f in settings_of(cls)
        if getattr(args, f.name, None) is not None
    }


def config_dict(config):
    """The JSON form: every setting, lists for tuples."""
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in settings_of(type(config))
    }


def known_and_legacy(cls, data, legacy_key):
    """`data`'s settings of `cls`, with each missing setting's legacy value
    (what files from before it existed were made with) where it has one."""
    fields = {f.name: f for f in settings_of(cls)}
    known = {k: v for k, v in data.items() if k in fields}
    for name, field in fields.items():
        legacy = field.metadata[legacy_key]
        if name not in known and legacy is not dataclasses.MISSING:
            known[name] = legacy
    return known


def save_json(config, path):
    """Writes a config's settings as JSON, atomically (a run's or a
    distillation's `config.json`)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(config_dict(config), handle, indent=2)
    os.replace(temporary, path)


def load_json(cls, path):
    """Reads a config that `save_json` wrote; a file from before a setting
    existed gets the value it was run with (`setting(legacy_run=...)`)."""
    with open(path) as handle:
        data = json.load(handle)
    return cls(**known_and_legacy(cls, data, "legacy_run"))


def split(cls, kwargs):
    """`(settings, rest)`: the keyword arguments that are `cls`'s settings, and the others."""
    names = {f.name for f in settings_of(cls)}
    return (
        {k: v for k, v in kwargs.items() if k in names},
        {k: v for k, v in kwargs.items() if k not in names},
    )


def reference(classes):
    """A Markdown table per config class: flag, default, choices, help (the docs'
    flag reference is this)."""
    lines = []
    for cls in classes:
        rows = [f for f in own_settings(cls) if flag_name(f)]
        if not rows:
            continue
        lines += [f"### {getattr(cls, 'TITLE', cls.__name__)}", "", "| flag | default | what |",
                  "|---|---|---|"]  # fmt: skip
        for field in rows:
            name = flag_name(field)
            if is_bool(field):
                name = f"{name} / --no-{name[2:]}"
            choices = field.metadata["choices"]
            what = field.metadata["help"] + (
                f" Choices: {', '.join(map(str, choices))}." if choices else ""
            )
            lines.append(f"| `{name}` | `{shown_default(field)}` | {what.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
