"""DeepSpeed JSON configs: find them, and fill their `"auto"` values from the training config.

The shipped files in `ds_configs/` (zero0, zero1, zero2, zero2_offload, zero3) hold only what is DeepSpeed's
business (ZeRO stage, buckets, offload). Everything the training config owns is `"auto"` and filled here, the
way HF transformers' `integrations/deepspeed.py` does it:

| DeepSpeed key                     | filled from                                                  |
| --------------------------------- | ------------------------------------------------------------ |
| `train_micro_batch_size_per_gpu`  | `train.micro_batch_size`                                     |
| `gradient_accumulation_steps`     | `train.global_batch_size / (micro_batch_size * world_size)`  |
| `train_batch_size`                | `train.global_batch_size`                                    |
| `gradient_clipping`               | `optim.clip_grad` (0 disables)                               |
| `bf16.enabled`, `fp16.enabled`    | `train.precision` (`auto` = bf16 where supported, else fp32) |

A value written as a number instead of `"auto"` must agree with the training config; every disagreement is
collected and reported in one `DeepSpeedConfigError`, so a user fixes them all in one go.

Optimizer and schedule: the JSON files have NO `optimizer` or `scheduler` section. The trainer builds AdamW
itself (weight decay off for the scaling vectors, scalars and temperature, which DeepSpeed's optimizer section
cannot express) with its warmup + cosine schedule from `optim.*`, and hands both to `deepspeed.initialize`.
A JSON with either section is rejected, because DeepSpeed would then silently train with a second, different
optimizer. `zero2_offload.json` sets `zero_force_ds_cpu_optimizer: false` for the same reason: DeepSpeed
otherwise refuses a client optimizer when the optimizer state lives on the CPU.

Top-level keys this module does not know are left to DeepSpeed, which validates them itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..config.schema import Config

AUTO = "auto"


class DeepSpeedConfigError(ValueError):
    """The DeepSpeed JSON disagrees with the training config, or cannot be read. The message lists every problem."""


def shipped_ds_config_dir() -> Path:
    """`ds_configs/` at the root of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "ds_configs"


def shipped_ds_configs() -> list[str]:
    """Names (without `.json`) of the DeepSpeed configs shipped in `ds_configs/`."""
    folder = shipped_ds_config_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def find_ds_config(name_or_path: str | Path) -> Path:
    """A path to an existing JSON file, or the name of a shipped one (`zero2` or `zero2.json`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_ds_config_dir() / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(f"{n}.json" for n in shipped_ds_configs()) or "none found"
    raise DeepSpeedConfigError(
        f"DeepSpeed config {name_or_path} does not exist. Shipped configs in {shipped_ds_config_dir()}: {names}. "
        "Pass one of these names or a path to your own JSON file."
    )


def load_ds_config(name_or_path: str | Path) -> dict:
    """Read a DeepSpeed JSON file (see `find_ds_config` for what may be passed)."""
    path = find_ds_config(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeepSpeedConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {path} must hold a JSON object at the top level")
    return data


def bf16_supported() -> bool:
    """True on a CUDA device with bf16 support. CPUs count as unsupported: training there runs in fp32."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, bf16_ok: bool) -> str:
    """`train.precision` -> `bf16`, `fp16` or `fp32`. `auto` picks bf16 where supported, else fp32."""
    if precision == AUTO:
        return "bf16" if bf16_ok else "fp32"
    return precision


def gradient_accumulation_steps(cfg: Config, world_size: int) -> int:
    """`global_batch / (micro_batch * world_size)`; raises DeepSpeedConfigError when it does not divide."""
    problem, steps = _accumulation(cfg, world_size)
    if problem:
        raise DeepSpeedConfigError(problem)
    return steps


def _accumulation(cfg: Config, world_size: int) -> tuple[str | None, int]:
    g, m = cfg.train.global_batch_size, cfg.train.micro_batch_size
    per_step = m * world_size
    if world_size < 1:
        return f"world size must be >= 1, got {world_size}", 1
    if g % per_step == 0:
        return None, g // per_step
    lower = max(per_step, g // per_step * per_step)
    return (
        f"train.global_batch_size={g} is not a multiple of train.micro_batch_size={m} x world size {world_size} "
        f"= {per_step}, so gradient accumulation steps would not be whole. Set train.global_batch_size to a "
        f"multiple of {per_step} (e.g. {lower} or {lower + per_step}), or change train.micro_batch_size or the "
        "number of ranks.",
        1,
    )


class _Filler:
    """Replaces `"auto"` with the training config's value, or records a mismatch (HF's `fill_match`)."""

    def __init__(self, ds: dict):
        self.ds = ds
        self.problems: list[str] = []

    def fill(self, key: str, value: Any, owner: str, create: bool = True) -> None:
        node = self.ds
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                self.problems.append(f"`{part}` must be a JSON object, got {node[part]!r}")
                return
            node = node.setdefault(part, {}) if create else node.get(part)
            if node is None:
                return
        current = node.get(leaf)
        if current is None:
            if create:
                node[leaf] = value
        elif current == AUTO:
            node[leaf] = value
        elif not _same(current, value):
            self.problems.append(
                f"`{key}` is {current!r} in the DeepSpeed config but {owner} gives {value!r}: "
                f'set it to "auto" or change {owner.split(" ")[0]}'
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _leftover_autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _leftover_autos(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == AUTO else []


def resolve_ds_config(ds: dict | str | Path, cfg: Config, world_size: int, bf16_supported: bool) -> dict:
    """Fill every `"auto"` of a DeepSpeed config from `cfg`, check every hard-coded value against it.

    Args:
        ds: the DeepSpeed config as a dict (not modified), a JSON path, or a shipped name such as `zero2`.
        cfg: the training config; it owns batch sizes, clipping and precision.
        world_size: number of data-parallel ranks.
        bf16_supported: whether the device trains in bf16 (see `bf16_supported()`; False on CPU).

    Returns a new dict ready for `deepspeed.initialize(config=...)`. Raises `DeepSpeedConfigError` listing
    every mismatch found. Called by the trainer on every rank, before the engine is built.
    """
    source = "(dict)" if isinstance(ds, dict) else str(find_ds_config(ds))
    out = copy.deepcopy(ds) if isinstance(ds, dict) else load_ds_config(ds)
    filler = _Filler(out)
    problems = filler.problems

    for section in ("optimizer", "scheduler"):
        if section in out:
            problems.append(
                f"`{section}` section found: the trainer builds AdamW and its warmup + cosine schedule from "
                f"`optim.*` itself and passes them to DeepSpeed; remove `{section}` and set `optim.*` instead"
            )

    t = cfg.train
    accumulation_problem, steps = _accumulation(cfg, world_size)
    if accumulation_problem:
        problems.append(accumulation_problem)
    filler.fill("train_micro_batch_size_per_gpu", t.micro_batch_size, "train.micro_batch_size")
    if not accumulation_problem:
        filler.fill("gradient_accumulation_steps", steps, "train.global_batch_size / (micro_batch_size x world size)")
        filler.fill("train_batch_size", t.global_batch_size, "train.global_batch_size")
    filler.fill("gradient_clipping", float(cfg.optim.clip_grad), "optim.clip_grad")

    precision = resolve_precision(t.precision, bf16_supported)
    if precision == "bf16" and not bf16_supported:
        problems.append(
            "train.precision is bf16 but this device has no bf16 support (CPU, or a GPU older than Ampere): "
            "set train.precision to auto or fp32"
        )
    for dtype in ("bf16", "fp16"):
        if out.get(dtype, {}).get("enabled") is True and precision != dtype:
            problems.append(
                f"`{dtype}.enabled` is true in the DeepSpeed config but train.precision resolves to {precision}"
                + (" (this device has no bf16 support)" if dtype == "bf16" and not bf16_supported else "")
                + f': set `{dtype}.enabled` to "auto", or train.precision to {dtype} where the device supports it'
            )
        else:
            filler.fill(f"{dtype}.enabled", precision == dtype, "train.precision")

    unfilled = {"gradient_accumulation_steps", "train_batch_size"} if accumulation_problem else set()
    leftovers = [k for k in _leftover_autos(out) if k not in unfilled]
    if leftovers:
        problems.append(
            f'`{"`, `".join(leftovers)}` {"is" if len(leftovers) == 1 else "are"} "auto" but the training config '
            "does not own that value: write a number"
        )
    if problems:
        raise DeepSpeedConfigError(
            f"DeepSpeed config {source} does not agree with the training config "
            f"(world size {world_size}):\n  - " + "\n  - ".join(problems)
        )
    return out
