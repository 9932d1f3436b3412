"""The ITC temperature: its own parameter group and lr, a forward that keeps its gradient, and BLIP's clamp to
[0.001, 0.5] applied in place after the optimizer step, master weights included, under real DeepSpeed engines."""

from __future__ import annotations

import pytest
import torch
from helpers.ds_inprocess import ds_world_of_one  # noqa: F401 (a fixture)

from unitrans_ds.adapters import get_state, prepare_model
from unitrans_ds.config import build_config
from unitrans_ds.engine.ds_config import resolve_ds_config
from unitrans_ds.engine.optim import build_optimizer, clamp_temperature, param_groups, temperature_param
from unitrans_ds.models.build import load_backbone
from unitrans_ds.tasks import build_task

SIZE = 32


def _task(**over):
    data = {"model": {"init_from": "tiny", "image_size": SIZE}, "method": {"rank": 4}}
    cfg = build_config(data, [f"{k}={v}" for k, v in over.items()])
    bb = load_backbone(cfg.model, "retrieval", seed=0)
    prepare_model(bb.model, cfg.method)
    return cfg, build_task(cfg, bb.model, bb.tokenizer)


def _batch():
    g = torch.Generator().manual_seed(0)
    texts = ["a red circle", "two green stars", "a small yellow triangle", "a big red ring"]
    return {"pixel_values": torch.randn(4, 3, SIZE, SIZE, generator=g), "text": texts, "image_idx": torch.arange(4)}


def test_temperature_has_its_own_group_and_lr():
    cfg, task = _task()
    opt = build_optimizer(task, cfg.optim)
    temp = get_state(task.model).temp
    groups = [g for g in opt.param_groups if any(p is temp for p in g["params"])]
    assert len(groups) == 1 and groups[0]["params"] == [temp]
    assert groups[0]["lr"] == cfg.optim.temperature_lr == 1e-5 and groups[0]["weight_decay"] == 0.0
    assert all(g["lr"] == cfg.optim.lr for g in opt.param_groups if g is not groups[0])
    assert len(param_groups(task, 0.05, 3e-4)[-1]["params"]) == 1


def test_forward_keeps_the_gradient_outside_the_range():
    """BLIP clamps in place, outside the graph: a temperature above 0.5 still gets a gradient."""
    _, task = _task()
    temp = get_state(task.model).temp
    with torch.no_grad():
        temp.fill_(0.6)
    task.training_step(_batch(), 0)["loss"].backward()
    assert temp.grad is not None and temp.grad.abs().item() > 0


@pytest.mark.parametrize(("stage", "precision"), [(0, "fp32"), (2, "bf16"), (3, "bf16")])
def test_clamp_after_step_reaches_the_master_weights(ds_world_of_one, stage, precision):  # noqa: F811
    """A large temperature lr pushes it above 0.5 in one step; the clamp after the step brings both the module's
    parameter and DeepSpeed's fp32 master to 0.5, so the next step starts from the clamped value."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    over = {"optim.temperature_lr": 1.0, "train.precision": precision, "optim.clip_grad": 0}
    cfg, task = _task(**over, **{"train.global_batch_size": 4, "train.micro_batch_size": 4})
    ds = resolve_ds_config(f"zero{stage}", cfg, 1, bf16_supported=True)
    engine, *_ = deepspeed.initialize(model=task, optimizer=build_optimizer(task, cfg.optim), config=ds)
    temp = temperature_param(engine.module)
    # Adam's first step is lr * sign(grad): a loss that rewards a larger temperature moves it by +1.0.
    engine.backward(engine(_batch(), step=0)["loss"] - 1e3 * get_state(task.model).temperature().sum())
    engine.step()
    master = safe_get_full_fp32_param(temp)
    assert (master if master is not None else temp).item() > 1.0
    clamp_temperature(temp, engine.optimizer)
    master = safe_get_full_fp32_param(temp)
    with deepspeed.zero.GatheredParameters([temp]) if stage == 3 else torch.no_grad():
        assert temp.item() == 0.5
    assert master is None or master.item() == 0.5
    # DeepSpeed writes the master back into the parameter at every step: with lr 0 the next step changes nothing,
    # so the temperature stays at 0.5 only if the master was clamped too (else it returns to ~1.07).
    for group in engine.optimizer.param_groups:
        group["lr"] = 0.0
    engine.backward(engine(_batch(), step=1)["loss"])
    engine.step()
    with deepspeed.zero.GatheredParameters([temp]) if stage == 3 else torch.no_grad():
        assert temp.item() == 0.5


def test_qasn_gets_its_own_lr_when_asked_and_joins_the_vectors_otherwise():
    cfg, task = _task(**{"optim.qasn_lr": 3e-3})
    qasn = {id(p) for n, p in task.named_parameters() if ".qasn_" in n and p.requires_grad}
    assert qasn, "unitrans wraps the fusion layers with QASN"
    opt = build_optimizer(task, cfg.optim)
    [group] = [g for g in opt.param_groups if any(id(p) in qasn for p in g["params"])]
    assert {id(p) for p in group["params"]} == qasn and group["lr"] == 3e-3 and group["weight_decay"] == 0.0
    cfg, task = _task()  # default null: QASN trains at optim.lr with the other vectors
    opt = build_optimizer(task, cfg.optim)
    qasn = {id(p) for n, p in task.named_parameters() if ".qasn_" in n and p.requires_grad}
    assert all(g["lr"] == cfg.optim.lr for g in opt.param_groups if any(id(p) in qasn for p in g["params"]))
