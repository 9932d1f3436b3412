"""Build a `Config` from defaults, then a YAML file, then dotted `key=value` overrides.

Unknown keys and wrong types are `ConfigError`s raised before any model is built. All problems found in one
pass are reported together, each naming the key, the bad value and what is expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .schema import (
    EVAL_PRECISIONS,
    ITM_SCORES,
    METHODS,
    PRECISIONS,
    QASN_ACTIVATIONS,
    VQA_EVALUATORS,
    VQA_LOSSES,
    Config,
)


class ConfigError(ValueError):
    """A user-facing configuration problem. The message lists every problem found."""


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return the (possibly converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, errors)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"`{key}` must be a mapping of {tp.__name__} fields, got {value!r}")
            return tp()
        return _build(tp, value, key + ".", errors)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            errors.append(f"`{key}` must be a list, got {value!r}")
            return []
        return [_coerce(v, args[0], f"{key}[{i}]", errors) for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"`{key}` must be a mapping, got {value!r}")
            return {}
        return {str(k): _coerce(v, args[1], f"{key}.{k}", errors) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(f"`{key}` must be true or false, got {value!r}")
        return False
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append(f"`{key}` must be an integer, got {value!r}")
        return 0
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        errors.append(f"`{key}` must be a number, got {value!r}")
        return 0.0
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append(f"`{key}` must be a string, got {value!r}")
        return ""
    return value


def _build(cls: type, data: dict, prefix: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join('`' + prefix + c + '`' for c in sorted(close))}?)" if close else ""
            errors.append(f"unknown key `{prefix}{key}`{hint}")
    kwargs = {}
    for k, v in data.items():
        if k in names:
            before = len(errors)
            value = _coerce(v, hints[k], prefix + k, errors)
            if len(errors) == before:  # a value of the wrong type is reported once, not checked again below
                kwargs[k] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # the dataclass's own checks (`__post_init__`), one problem per line
        errors.extend(str(e).splitlines())
        return cls()


def _parse_scalar(text: str) -> Any:
    """Parse an override value as YAML so `lr=1e-4`, `video=true`, `unfreeze=[itm_head]` get their types."""
    value = yaml.safe_load(text) if text != "" else ""
    # YAML reads `1e-4` as a string (no dot); numbers people type on a command line should be numbers.
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return float(value)
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings onto a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` is not of the form key=value (for example `optim.lr=1e-4`)")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override `{item}`: `{part}` is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def _task_problems(cfg: Config) -> list[str]:
    """`task`, its video mode and `train.best_metric`, checked against the task's class."""
    from ..tasks.registry import TASKS  # the task classes build on the config: asked at call time

    cls = TASKS.get(cfg.task)
    if cls is None:
        return [f"`task` must be one of {', '.join(TASKS)}, got {cfg.task!r}"]
    errs = []
    if cfg.video and not cls.supports_video:
        video = [name for name, c in TASKS.items() if c.supports_video]
        errs.append(f"`video: true` is supported for {' and '.join(video)}, not {cfg.task}")
    try:
        cls.best_metric(cfg.train.best_metric)
    except ValueError as e:
        errs.append(str(e))
    return errs


def validate(cfg: Config) -> list[str]:
    """Cross-field checks. Returns a list of problems (empty when the config is sound)."""
    errs = _task_problems(cfg)
    m = cfg.method
    if m.name not in METHODS:
        errs.append(f"`method.name` must be one of {', '.join(METHODS)}, got {m.name!r}")
    if m.rank < 1:
        errs.append(f"`method.rank` must be >= 1, got {m.rank}")
    if m.qasn_activation not in QASN_ACTIVATIONS:
        errs.append(f"`method.qasn_activation` must be one of {', '.join(QASN_ACTIVATIONS)}, got {m.qasn_activation!r}")
    for mod in m.targets:
        if mod not in ("V", "T", "C", "D"):
            errs.append(f"`method.targets` keys are modalities V, T, C, D; got {mod!r}")
    if m.mcam_weight < 0:
        errs.append(f"`method.mcam_weight` must be >= 0, got {m.mcam_weight}")
    t = cfg.train
    if t.precision not in PRECISIONS:
        errs.append(f"`train.precision` must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        errs.append("`train.micro_batch_size` and `train.global_batch_size` must be >= 1")
    if t.epochs < 1:
        errs.append(f"`train.epochs` must be >= 1, got {t.epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        errs.append(f"`train.max_steps` must be >= 1 or null, got {t.max_steps}")
    if t.keep_last < 1:
        errs.append(f"`train.keep_last` must be >= 1, got {t.keep_last}")
    for key in ("save_every", "eval_every"):
        if getattr(t, key) < 0:
            errs.append(f"`train.{key}` must be >= 0 (0 = only at the end), got {getattr(t, key)}")
    if t.log_every < 1:
        errs.append(f"`train.log_every` must be >= 1, got {t.log_every}")
    tr = cfg.tracking
    if tr.system_metrics_interval_s is not None and not tr.system_metrics_interval_s > 0:
        errs.append(f"`tracking.system_metrics_interval_s` must be > 0 or null, got {tr.system_metrics_interval_s}")
    if not tr.finish_timeout_s >= 0:
        errs.append(f"`tracking.finish_timeout_s` must be >= 0, got {tr.finish_timeout_s}")
    if cfg.eval.vqa_inference not in ("rank", "generate"):
        errs.append(f"`eval.vqa_inference` must be `rank` or `generate`, got {cfg.eval.vqa_inference!r}")
    for key, value, allowed in (
        ("eval.itm_score", cfg.eval.itm_score, ITM_SCORES),
        ("eval.vqa_evaluator", cfg.eval.vqa_evaluator, VQA_EVALUATORS),
        ("eval.precision", cfg.eval.precision, EVAL_PRECISIONS),
        ("train.vqa_loss", t.vqa_loss, VQA_LOSSES),
    ):
        if value not in allowed:
            errs.append(f"`{key}` must be one of {', '.join(allowed)}, got {value!r}")
    if cfg.data.num_frames < 1:
        errs.append(f"`data.num_frames` must be >= 1, got {cfg.data.num_frames}")
    if cfg.model.image_size % cfg.model.tiny.patch_size and cfg.model.init_from == "tiny":
        errs.append(
            f"`model.image_size` ({cfg.model.image_size}) must be a multiple of `model.tiny.patch_size` "
            f"({cfg.model.tiny.patch_size})"
        )
    return errs


def build_config(data: dict | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- `data` (a nested dict, e.g. from YAML) <- `overrides`. Raises ConfigError listing all problems."""
    data = apply_overrides(dict(data or {}), list(overrides or []))
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    if not errors:
        errors = validate(cfg)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then the YAML at `path` (if any), then `overrides`."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (see configs/ for the shipped ones)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    try:
        return build_config(data, overrides)
    except ConfigError as e:
        where = f" (from {path})" if path else ""
        raise ConfigError(f"{e}{where}") from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
