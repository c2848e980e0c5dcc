"""How every command declares its options.

A command's options are one frozen dataclass (e.g. `launch.training.config.TrainConfig`)
whose fields are made with `option(...)`: the name, default and help are written once,
the command line's flags are generated from the fields (launch/cli.py), and validation is
the dataclass's `__post_init__`. This module imports only the standard library, so
config modules that use it keep `--help` fast and the build's worker processes light.
"""

import dataclasses
import json
import typing

from core.errors import UserError


def option(default, help: str, *, choices: tuple | None = None, lower_bound=None, upper_bound=None):
    """A config field whose default, help text and allowed values are stated once."""
    metadata = {"help": help, "choices": choices, "lower_bound": lower_bound, "upper_bound": upper_bound}
    return dataclasses.field(default=default, metadata=metadata)


def check_fields(config) -> None:
    """Raises UserError for a value outside a field's `choices` or its bounds.

    Called by each config's `__post_init__`, before its own cross-field checks.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"--{field.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
        bound = field.metadata.get("lower_bound")
        if bound is not None and value is not None and value < bound:
            raise UserError(f"--{field.name} must be >= {bound}; got {value!r}")
        bound = field.metadata.get("upper_bound")
        if bound is not None and value is not None and value > bound:
            raise UserError(f"--{field.name} must be <= {bound}; got {value!r}")


def field_types(config_cls) -> dict[str, type]:
    """{field name: resolved annotation} of a config dataclass."""
    return typing.get_type_hints(config_cls)


def to_json(config) -> str:
    """The config as indented JSON (tuples become lists), as written into output folders."""
    return json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True) + "\n"


def from_dict(config_cls, values: dict):
    """Rebuilds a config from `to_json`'s dict; unknown keys (older or newer runs) are ignored."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    types = field_types(config_cls)
    kwargs = {}
    for name, value in values.items():
        if name in known:
            kwargs[name] = tuple(value) if typing.get_origin(types[name]) is tuple else value
    return config_cls(**kwargs)
