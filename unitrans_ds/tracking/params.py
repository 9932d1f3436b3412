"""How values look in MLflow: params and tags written as YAML would write them (`null`, `false`, `[0.9, 0.999]`)."""

from __future__ import annotations

from typing import Any

import yaml

TRUNCATION_NOTE = "...[truncated from {n} chars]"


def param_text(value: Any) -> str:
    """The YAML spelling of a config value, so that a param reads like the `config.yaml` it came from."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, list, tuple, dict)):
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True, width=10**9)
        return text.removesuffix("\n...\n").strip()
    return str(value)


def truncate_value(value: Any, limit: int) -> str:
    """MLflow rejects param values longer than `limit`; keep the head and say how long the original was."""
    text = str(value)
    if len(text) <= limit:
        return text
    note = TRUNCATION_NOTE.format(n=len(text))
    return text[: limit - len(note)] + note


def params_as_text(params: dict[str, Any]) -> dict[str, str]:
    return {str(k): param_text(v) for k, v in params.items()}
