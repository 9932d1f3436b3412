"""One entry point that prepares a BLIP model for a method of SPEC section 7, and reports what trains."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config.schema import METHODS, MethodConfig
from .bank import SharedBank
from .qasn import QASNLayer, SideState
from .shared_down import SharedDown
from .state import ATTR, UniTransState, get_state, starting_temperature
from .targets import BANK_OF, AttentionTarget, TargetError, find_targets
from .vcra_layer import VCRALinear

DECODER_STACK = "text_decoder.bert.encoder.layer"

# Seed offsets so that every bank is re-creatable from `method.seed` alone.
_BANK_SEED = {"enc": 0, "dec": 1, "V": 10, "T": 11, "C": 12, "D": 13}


def task_of(model: nn.Module):
    """The task class (`tasks.Task`) whose HF BLIP class `model` is: its facts say where QASN goes."""
    from ..tasks.registry import task_of_model  # the task classes build on adapters: asked at call time

    return task_of_model(model)


@dataclass
class ParamReport:
    """Trainable and total parameter counts, broken down by part."""

    method: str
    trainable: int
    total: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def as_dict(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = {
            "method": self.method,
            "params.trainable": self.trainable,
            "params.total": self.total,
        }
        out.update({f"params.{k}": v for k, v in self.parts.items()})
        return out

    def table(self) -> str:
        rows = [f"{'part':<22}{'trainable':>12}"] + [f"{k:<22}{v:>12,}" for k, v in sorted(self.parts.items())]
        rows.append(f"{'total trainable':<22}{self.trainable:>12,}  of {self.total:,} ({self.percent:.4f}%)")
        return "\n".join(rows)


def _bank_name(method: MethodConfig, modality: str) -> str:
    return modality if method.name == "scaling-vectors" else BANK_OF[modality]


def _linear_widths(target: AttentionTarget) -> tuple[int, list[int]]:
    """Input width and the output widths of the chunks of one attention block."""
    if target.fused:
        q = target.module.qkv
        return q.in_features, [q.out_features // 3] * 3
    lin = target.linears
    return max(lin["key"].in_features, lin["query"].in_features), [lin[n].out_features for n in lin]


def _build_banks(
    state: UniTransState, method: MethodConfig, targets: list[AttentionTarget], qasn_widths: dict[str, int]
) -> None:
    sizes: dict[str, list[int]] = {}
    for t in targets:
        d_in, outs = _linear_widths(t)
        s = sizes.setdefault(_bank_name(method, t.modality), [0, 0])
        s[0], s[1] = max(s[0], d_in), max(s[1], *outs)
    for name, width in qasn_widths.items():
        s = sizes.setdefault(name, [0, 0])
        s[0], s[1] = max(s[0], width), max(s[1], width)
    # VeRA-style ablation: its per-modality banks stay random and frozen (only the vectors learn).
    trainable = method.train_shared and method.name != "scaling-vectors"
    for name, (d_in, d_out) in sizes.items():
        bank = SharedBank(method.rank, d_in, d_out, seed=method.seed + _BANK_SEED[name], trainable=trainable)
        state.add_bank(name, bank)


def _wrap_block(target: AttentionTarget, state: UniTransState, method: MethodConfig) -> None:
    bank = state.banks[_bank_name(method, target.modality)]
    r = method.rank
    if target.fused:
        base = target.module.qkv
        d = base.out_features // 3
        w = VCRALinear(base, bank, state.scales, target.modality)
        keys = ["q", "kv", "kv"] if method.share_kv else ["q", "k", "v"]
        for key in dict.fromkeys(keys):
            w.add_vectors(key, r, d)
        for i, key in enumerate(keys):
            w.add_chunk(key, i * d, (i + 1) * d)
        target.module.qkv = w
        return
    wrappers = {}
    for name, base in target.linears.items():
        wrappers[name] = VCRALinear(base, bank, state.scales, target.modality)
    q, k, v = wrappers["query"], wrappers["key"], wrappers["value"]
    q.add_vectors("q", r, q.out_features)
    q.add_chunk("q", 0, q.out_features)
    if method.share_kv:
        k.add_vectors("kv", r, k.out_features)
        k.add_chunk("kv", 0, k.out_features)
        v.add_chunk("kv", 0, v.out_features, owner=k)
    else:
        k.add_vectors("k", r, k.out_features)
        k.add_chunk("k", 0, k.out_features)
        v.add_vectors("v", r, v.out_features)
        v.add_chunk("v", 0, v.out_features)
    shared = SharedDown(target.module)
    for name, w in wrappers.items():
        w.shared_down, w.role = shared, name
        setattr(target.module, name, w)


def _qasn_stacks(model: nn.Module, method: MethodConfig) -> list[tuple[str, str]]:
    """(stack path, bank name) pairs that get a side network: the task's fusion stacks, and the decoder's."""
    task = task_of(model)
    stacks = [(p, "enc") for p in task.fusion_stacks]
    if method.qasn_decoder:
        if not hasattr(model, "text_decoder"):
            raise ValueError(f"`method.qasn_decoder: true` needs a text decoder; the {task.name} model has none")
        stacks.append((DECODER_STACK, "dec"))
    return stacks


def _wrap_qasn(model: nn.Module, path: str, bank: SharedBank, activation: str) -> None:
    layers: nn.ModuleList = model.get_submodule(path)
    side = SideState()
    width = model.config.text_config.hidden_size
    for i in range(len(layers)):
        layers[i] = QASNLayer(layers[i], i, i == len(layers) - 1, width, bank, side, activation)


def _inject_lora(model: nn.Module, method: MethodConfig, targets: list[AttentionTarget]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    names = [f"{t.name}.{n}" for t in targets for n in t.linears]
    regex = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    cfg = LoraConfig(
        r=method.rank, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout, target_modules=regex
    )
    # peft marks only its own layers trainable; the temperature must keep its setting.
    temp = get_state(model).temp
    want_temp = temp.requires_grad
    inject_adapter_in_model(cfg, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    temp.requires_grad_(want_temp)


def _set_trainable(model: nn.Module, patterns: list[str], trainable: bool, key: str) -> None:
    """`requires_grad = trainable` for every parameter of the modules whose names fullmatch a pattern."""
    for pattern in patterns:
        rx = re.compile(pattern)
        hit = False
        for name, module in model.named_modules():
            if name and rx.fullmatch(name):
                hit = True
                for p in module.parameters():
                    p.requires_grad_(trainable)
        if not hit:
            raise TargetError(f"method.{key} pattern {pattern!r} matched no module of {type(model).__name__}")


def prepare_model(model: nn.Module, method: MethodConfig) -> ParamReport:
    """Freeze the backbone, inject the method's adapters in place, and report what trains.

    `model` is any of the three BLIP task classes. Afterwards every backbone weight has `requires_grad=False`
    (except for `full` and `method.unfreeze`, less `method.freeze`), the shared adapter state sits at
    `model.unitrans`, and at init the adapted model computes exactly what the frozen model computes (Λb = 0, QASN
    filters give 0).
    """
    if method.name not in METHODS:
        raise ValueError(f"unknown method {method.name!r}; use one of {', '.join(METHODS)}")
    if hasattr(model, ATTR):
        raise ValueError("this model is already prepared; build a fresh base model to prepare it again")
    task = task_of(model)  # also rejects a model that is no task's BLIP class, before anything changes
    for p in model.parameters():
        p.requires_grad_(method.name == "full")
    ref = next(model.parameters())
    state = UniTransState(starting_temperature(model.config)).to(device=ref.device)
    model.add_module(ATTR, state)
    state.temp.requires_grad_(task.uses_temperature and method.name != "frozen" and method.train_temperature)

    if method.name in ("lora",) or method.uses_vcra:
        targets = find_targets(model, method.targets or None)
        if not targets:
            raise TargetError(f"no attention block of {type(model).__name__} matches the target patterns")
    if method.name == "lora":
        _inject_lora(model, method, targets)
    elif method.uses_vcra:
        qasn = _qasn_stacks(model, method) if method.uses_qasn else []
        width = model.config.text_config.hidden_size
        _build_banks(state, method, targets, {bank: width for _, bank in qasn})
        for t in targets:
            state.add_scale(t.modality, method.learn_scale)
            _wrap_block(t, state, method)
        for path, bank in qasn:
            _wrap_qasn(model, path, state.banks[bank], method.qasn_activation)
    _set_trainable(model, method.unfreeze, True, "unfreeze")
    _set_trainable(model, method.freeze, False, "freeze")
    return parameter_report(model, method.name)


def adapter_layers(model: nn.Module) -> Iterator[VCRALinear]:
    for m in model.modules():
        if isinstance(m, VCRALinear):
            yield m


def parameter_report(model: nn.Module, method: str = "") -> ParamReport:
    """Count trainable parameters by part: vectors per modality, shared matrices per bank, scales, QASN, ..."""
    parts: dict[str, int] = {}
    seen: set[int] = set()

    def add(part: str, p: nn.Parameter) -> None:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            parts[part] = parts.get(part, 0) + p.numel()

    for m in model.modules():
        if isinstance(m, VCRALinear):
            for p in [*m.vcra_a.values(), *m.vcra_b.values()]:
                add(f"vectors.{m.modality}", p)
        elif isinstance(m, QASNLayer):
            for p in (m.qasn_a, m.qasn_b, m.qasn_alpha, m.qasn_beta):
                add("qasn", p)
        elif isinstance(m, UniTransState):
            for name, bank in m.banks.items():
                for p in bank.parameters():
                    add(f"shared.{name}", p)
            for p in m.scales.values():
                add("scales", p)
            add("temperature", m.temp)
    for name, p in model.named_parameters():
        add("lora" if "lora_" in name else "backbone", p)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ParamReport(method, sum(parts.values()), total, {k: v for k, v in parts.items() if v})


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter by its full name, detached: what an adapter export holds."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def mergeable_layers(model: nn.Module) -> list[nn.Module]:
    """VCRA wrappers and peft LoRA layers: both fold their update into the frozen weight (`base_layer`)."""
    return [m for m in model.modules() if isinstance(m, VCRALinear) or (hasattr(m, "merge") and hasattr(m, "lora_A"))]


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold every VCRA / LoRA update into the frozen weights. Returns the number of merged layers."""
    layers = mergeable_layers(model)
    for m in layers:
        m.merge()
    return len(layers)


@torch.no_grad()
def unmerge_adapters(model: nn.Module) -> int:
    """Take every folded update back out of the frozen weights."""
    layers = mergeable_layers(model)
    for m in layers:
        m.unmerge()
    return len(layers)


def has_side_network(model: nn.Module) -> bool:
    return any(isinstance(m, QASNLayer) for m in model.modules())


def zero3_register_external(model: nn.Module) -> None:
    """Tell ZeRO-3 which parameters a wrapper uses without owning them (banks, scalars, shared KV vectors)."""
    import deepspeed

    register_external_parameter = deepspeed.zero.register_external_parameter

    for m in model.modules():
        if isinstance(m, (VCRALinear, QASNLayer)):
            for p in m.external_parameters():
                register_external_parameter(m, p)


__all__ = [
    "ParamReport",
    "adapter_layers",
    "get_state",
    "has_side_network",
    "merge_adapters",
    "mergeable_layers",
    "parameter_report",
    "prepare_model",
    "task_of",
    "trainable_state_dict",
    "unmerge_adapters",
    "zero3_register_external",
]
