"""Every config key with its help text and default, generated from the schema dataclasses (for `--help`).

The schema is the one place a setting is documented; the launchers print this as their epilog so a user sees
what `key=value` overrides exist without opening `schema.py`.
"""

from __future__ import annotations

import dataclasses
import textwrap

import yaml

from .schema import Config


def _yaml_value(value: object) -> str:
    """A default as it is written in a YAML file or an override (`null`, `true`, `[0.9, 0.999]`, `{}`)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def config_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, help text, default in YAML form) for every leaf field of the config tree, in schema order."""
    out = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.extend(config_keys(type(default), key + "."))
        else:
            out.append((key, f.metadata.get("help", ""), _yaml_value(default)))
    return out


def config_help(width: int = 118) -> str:
    """The `config keys` section of `--help`: `key = default`, then the help text wrapped under it."""
    lines = ["config keys (set them in the --config YAML or as key=value overrides; shown with their defaults):"]
    for key, text, default in config_keys():
        lines.append(f"  {key} = {default}")
        if text:
            lines.append(textwrap.fill(text, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
