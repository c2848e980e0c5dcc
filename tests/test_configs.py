"""TrainConfig: every shipped flag file parses into one, and bad values are clear errors."""

import dataclasses
import glob
import json
import os
import re

import pytest
from absl import app
from absl import flags

from core import options
from core.errors import UserError
from launch import cli
from launch.training.config import TrainConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "configs")
FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.flags")))


def _parse(*argv: str) -> TrainConfig:
    """Parses isic-train's config flags into a fresh FlagValues (the global FLAGS untouched)."""
    values = flags.FlagValues()
    cli.define_config_flags(TrainConfig, values)
    values(["isic-train", *argv])
    return cli.config_from_flags(TrainConfig, values)


def _named_in_docs() -> set:
    """The flag files that README.md, docs/*.md and the Makefile name."""
    root = os.path.dirname(os.path.dirname(CONFIG_DIR))
    named = set()
    for path in [
        os.path.join(root, "README.md"),
        os.path.join(root, "Makefile"),
        *glob.glob(os.path.join(root, "docs", "*.md")),
    ]:
        with open(path) as f:
            named |= set(re.findall(r"launch/configs/(\w+\.flags)", f.read()))
    return named


def test_the_docs_name_every_preset_and_only_presets_that_exist():
    shipped = {os.path.basename(f) for f in FILES}
    named = _named_in_docs()
    assert named <= shipped, f"the docs name presets that do not exist: {named - shipped}"
    assert shipped <= named, f"presets no doc mentions: {shipped - named}"


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_parses_and_documents_itself(path):
    config = _parse(f"--flagfile={path}")  # an unknown flag or a bad value raises here
    assert isinstance(config, TrainConfig) and config != TrainConfig()
    with open(path) as f:
        assert f.readline().startswith("#"), "a flag file starts with a header saying what it is"


def test_full_scale_config_is_the_original_setting_with_the_cpu_recipes_encoder():
    config = _parse(f"--flagfile={os.path.join(CONFIG_DIR, 'isic2018_full_gpu.flags')}")
    assert (config.batch_size, config.epochs) == (32, 20)
    assert config.precision == "auto"  # mixed float16 on GPUs
    cpu = _parse(f"--flagfile={os.path.join(CONFIG_DIR, 'isic2017_lite0_cpu.flags')}")
    assert (config.encoder, config.encoder_weights, config.base_filters) == (
        cpu.encoder,
        cpu.encoder_weights,
        cpu.base_filters,
    )


def test_flag_defaults_are_the_config_defaults():
    assert _parse() == TrainConfig()
    config = _parse(
        "--epochs=3", "--noaugment", "--warm_start=w.keras", "--collective_timeout=5", "--summary_images=0"
    )
    assert (config.epochs, config.augment, config.warm_start) == (3, False, "w.keras")
    assert (config.collective_timeout, config.summary_images) == (5.0, 0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch_size must be >= 1"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"steps_per_execution": -1}, "--steps_per_execution must be >= 0"),
        ({"bn_momentum": 1.0}, r"--bn_momentum must be in \[0, 1\)"),
        ({"bn_momentum": -0.1}, "--bn_momentum must be >= 0"),
        ({"lr_schedule": "linear"}, "--lr_schedule must be one of constant, cosine"),
        ({"precision": "float64"}, "--precision must be one of"),
        ({"strategy": "tpu"}, "--strategy must be one of"),
        ({"augment_strength": -1.0}, "--augment_strength must be >= 0"),
        ({"collective_timeout": -1.0}, "--collective_timeout must be >= 0"),
        ({"warmup_epochs": 1.0}, "needs --lr_schedule cosine"),
        ({"warmup_epochs": 30.0, "lr_schedule": "cosine"}, "longer than the run"),
    ],
)
def test_bad_values_are_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(TrainConfig(), **changes)


def test_bad_flag_values_are_usage_errors():
    with pytest.raises(app.UsageError, match="--epochs must be >= 1"):
        _parse("--epochs=0")


def test_config_round_trips_through_json():
    config = TrainConfig(epochs=3, warm_start="a/b", seed=7)
    assert options.from_dict(TrainConfig, json.loads(options.to_json(config))) == config
