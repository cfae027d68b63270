"""Every setting has one home (`diffusion_keras.config`): a flag of train.py
whose default is the config's, and whose other values reach the run and,
for the network and diffusion settings, the built model."""

import dataclasses
import json

import pytest

from diffusion_keras.cli import train
from diffusion_keras.config import fields
from diffusion_keras.config.model import DiffusionConfig, ModelConfig, NetworkConfig
from diffusion_keras.config.run import GROUPS, TrainConfig

SETTINGS = fields.settings_of(TrainConfig)
FLAGGED = [f for f in SETTINGS if fields.flag_name(f)]
MODEL_SETTINGS = {f.name for f in fields.settings_of(ModelConfig)}
# Small enough to build in a moment; each test value below goes on top.
TINY = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--embedding-dims", "8"]
# A value other than the default, for the settings where "default + 1" or
# "the other choice" would not be a valid run.
OTHER = {
    "image_size": "32", "widths": "8,16,24", "block_depth": "3", "embedding_dims": "16",
    "attention_levels": "1", "min_signal_rate": "0.05", "max_signal_rate": "0.9",
    "ema": "0.99", "ema_length": "0.1", "label_dropout": "0.2", "log_snr_mean": "0.5",
    "adam_beta_2": "0.99",
    "data": "builtin:flowers:64", "output": "runs/other", "autoencoder": "ae.keras",
    "text_encoder": "te.keras", "checkpoint_every": "10m", "seed": "7", "latent_factor": "8",
    "precision": "float32", "schedule": "cosine",
}  # fmt: skip
# What a setting needs beside it to be used.
NEEDS = {
    "cross_attention": ["--conditional", "--attention-levels", "1"],
    "label_dropout": ["--conditional"],
    "attention_heads": ["--attention-levels", "1"],
}


def other_value(field):
    """A flag's text for a value other than `field`'s default."""
    if field.name in OTHER:
        return [fields.flag_name(field), OTHER[field.name]]
    if fields.is_bool(field):
        name = fields.flag_name(field)
        return [name if not field.default else f"--no-{name[2:]}"]
    choices = field.metadata["choices"]
    if choices:
        return [fields.flag_name(field), str(next(c for c in choices if c != field.default))]
    if isinstance(field.default, int):
        return [fields.flag_name(field), str(field.default + 1)]
    if isinstance(field.default, float):
        return [fields.flag_name(field), str(field.default * 2 or 0.5)]
    raise AssertionError(f"no other value for {field.name}")


def config_of(*flags):
    return train.config_from_args(train.parser().parse_args([*map(str, flags)]))


def test_every_setting_is_a_flag_in_a_group_or_said_to_be_derived():
    groups = {f.name for cls in GROUPS for f in fields.own_settings(cls)}
    assert groups == {f.name for f in SETTINGS}
    derived = {f.name for f in SETTINGS if not fields.flag_name(f)}
    # The images' RGB (from the data), and what distill.py makes a student.
    assert derived == {"channels", "student_steps", "student_spacing", "student_guidance"}
    help_text = train.parser().format_help()
    for cls in GROUPS:
        assert cls.TITLE in help_text
    for field in FLAGGED:
        assert fields.flag_name(field) in help_text


@pytest.mark.parametrize("field", FLAGGED, ids=lambda f: f.name)
def test_a_flag_left_out_is_the_configs_default(field):
    assert getattr(config_of(), field.name) == field.default
    assert getattr(TrainConfig(), field.name) == field.default
    if field.name in MODEL_SETTINGS:
        model_field = {f.name: f for f in fields.settings_of(ModelConfig)}[field.name]
        assert model_field.default == field.default  # one field, not two


@pytest.mark.parametrize("field", FLAGGED, ids=lambda f: f.name)
def test_a_flag_given_reaches_the_run_config_and_its_file(field, tmp_path):
    flags = other_value(field)
    config = config_of(*flags, *NEEDS.get(field.name, []))
    expected = fields.check_value(field, flags[1] if len(flags) > 1 else not field.default)
    assert expected != field.default
    assert getattr(config, field.name) == expected
    path = str(tmp_path / "config.json")
    config.save(path)
    assert getattr(TrainConfig.load(path), field.name) == expected
    assert json.load(open(path))[field.name] == fields.config_dict(config)[field.name]


MODEL_FLAGS = [f for f in FLAGGED if f.name in MODEL_SETTINGS]


@pytest.mark.parametrize("field", MODEL_FLAGS, ids=lambda f: f.name)
def test_a_network_or_diffusion_flag_reaches_the_built_model(field):
    from diffusion_keras.training.run import build_model

    flags = TINY + other_value(field) + NEEDS.get(field.name, [])
    config = config_of(*flags)
    classes = ["a", "b"] if config.conditional else None
    model = build_model(config, class_names=classes)
    saved = model.get_config()[field.name]
    expected = fields.config_dict(config)[field.name]
    assert saved == expected and expected != fields.config_dict(TrainConfig())[field.name]
    # And the model's file keeps it.
    assert type(model).from_config(model.get_config()).get_config()[field.name] == saved


def test_the_model_and_the_run_share_the_network_and_diffusion_fields():
    for cls in (NetworkConfig, DiffusionConfig):
        for field in dataclasses.fields(cls):
            assert field in dataclasses.fields(ModelConfig)
            assert field.name in {f.name for f in SETTINGS}


def test_the_flag_references_in_the_docs_are_the_configs_and_the_parsers():
    import os

    from diffusion_keras.cli import reference

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path, text in reference.pages().items():
        with open(os.path.join(root, path)) as handle:
            expected = handle.read()
        assert expected == text, f"regenerate {path}: python -m diffusion_keras.cli.reference"
