"""DeepSpeed JSON configs: "auto" filling, one error for all mismatches, DeepSpeed accepts the result.

The slow test runs every shipped config for one optimizer step on 2 real gloo ranks and checks the step equals a
plain AdamW step over the same global batch (`_worker`, in two ranks forked by tests/helpers/forked_ranks.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.ds_inprocess import forget_deepspeed_groups
from helpers.forked_ranks import spawn_ranks
from helpers.ports import free_port

from unitrans_ds.config import build_config
from unitrans_ds.engine.ds_config import (
    DeepSpeedConfigError,
    gradient_accumulation_steps,
    load_ds_config,
    resolve_ds_config,
    resolve_precision,
    shipped_ds_configs,
)

SHIPPED = ["zero0", "zero1", "zero2", "zero2_offload", "zero3"]


def test_all_expected_configs_are_shipped():
    assert set(SHIPPED) <= set(shipped_ds_configs())


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("world_size", [1, 2])
def test_shipped_config_resolves_with_defaults(name, world_size):
    cfg = build_config({"train": {"global_batch_size": 32, "micro_batch_size": 4, "precision": "auto"}})
    ds = resolve_ds_config(name, cfg, world_size, bf16_supported=False)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["train_batch_size"] == 32
    assert ds["gradient_accumulation_steps"] * 4 * world_size == 32
    assert ds["gradient_clipping"] == cfg.optim.clip_grad
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)
    assert "optimizer" not in ds and "scheduler" not in ds


def test_default_config_resolves_every_shipped_json():
    cfg = build_config({})  # global 16 = micro 8: accumulation 2 on one rank, 1 on two ranks
    for name in SHIPPED:
        assert resolve_ds_config(name, cfg, 1, bf16_supported=False)["gradient_accumulation_steps"] == 2
        assert resolve_ds_config(name, cfg, 2, bf16_supported=False)["gradient_accumulation_steps"] == 1
        # three ranks cannot split a global batch of 16 into micro batches of 8: a clear error, not a guess
        with pytest.raises(DeepSpeedConfigError, match="global_batch_size=16 is not a multiple of"):
            resolve_ds_config(name, cfg, 3, bf16_supported=False)


def test_zero3_and_offload_specifics():
    assert load_ds_config("zero3")["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    offload = load_ds_config("zero2_offload.json")["zero_optimization"]
    assert offload["stage"] == 2 and offload["offload_optimizer"]["device"] == "cpu"


def test_precision_auto_follows_device():
    cfg = build_config({"train": {"precision": "auto"}})
    assert resolve_ds_config("zero2", cfg, 1, bf16_supported=True)["bf16"]["enabled"] is True
    assert resolve_ds_config("zero2", cfg, 1, bf16_supported=False)["bf16"]["enabled"] is False
    assert resolve_precision("auto", True) == "bf16"
    assert resolve_precision("auto", False) == "fp32"
    fp32 = build_config({"train": {"precision": "fp32"}})
    assert resolve_ds_config("zero2", fp32, 1, bf16_supported=True)["bf16"]["enabled"] is False


def test_input_dict_is_not_modified():
    ds = load_ds_config("zero1")
    before = json.dumps(ds, sort_keys=True)
    resolve_ds_config(ds, build_config({}), 1, bf16_supported=False)
    assert json.dumps(ds, sort_keys=True) == before


def test_all_mismatches_reported_in_one_error():
    cfg = build_config(
        {"train": {"global_batch_size": 32, "micro_batch_size": 4, "precision": "fp32"}, "optim": {"clip_grad": 1.0}}
    )
    ds = load_ds_config("zero2")
    ds.update(
        train_micro_batch_size_per_gpu=8,
        train_batch_size=64,
        gradient_accumulation_steps=3,
        gradient_clipping=0.5,
        bf16={"enabled": True},
        fp16={"enabled": True},
        optimizer={"type": "AdamW", "params": {"lr": 1e-4}},
    )
    ds["zero_optimization"]["reduce_bucket_size"] = "auto"
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config(ds, cfg, 2, bf16_supported=False)
    msg = str(err.value)
    for needle in (
        "`train_micro_batch_size_per_gpu` is 8",
        "`train_batch_size` is 64",
        "`gradient_accumulation_steps` is 3",
        "`gradient_clipping` is 0.5",
        "`bf16.enabled` is true",
        "no bf16 support",
        "`fp16.enabled` is true",
        "`optimizer` section",
        "zero_optimization.reduce_bucket_size",
    ):
        assert needle in msg, f"{needle!r} missing from:\n{msg}"
    assert msg.count("\n  - ") == 8


def test_bf16_requested_without_device_support():
    cfg = build_config({"train": {"precision": "bf16"}})
    with pytest.raises(DeepSpeedConfigError, match="train.precision is bf16 but this device has no bf16"):
        resolve_ds_config("zero0", cfg, 1, bf16_supported=False)
    assert resolve_ds_config("zero0", cfg, 1, bf16_supported=True)["bf16"]["enabled"] is True


def test_indivisible_batch_names_all_three_numbers():
    cfg = build_config({"train": {"global_batch_size": 20, "micro_batch_size": 4}})
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config("zero2", cfg, 3, bf16_supported=False)
    msg = str(err.value)
    assert "global_batch_size=20" in msg and "micro_batch_size=4" in msg and "world size 3" in msg
    assert "multiple of 12" in msg
    with pytest.raises(DeepSpeedConfigError, match="multiple of 12"):
        gradient_accumulation_steps(cfg, 3)
    assert gradient_accumulation_steps(cfg, 1) == 5


def test_matching_hard_coded_values_are_accepted():
    cfg = build_config({"train": {"global_batch_size": 16, "micro_batch_size": 4, "precision": "fp32"}})
    ds = {"train_micro_batch_size_per_gpu": 4, "train_batch_size": 16, "gradient_accumulation_steps": 2,
          "gradient_clipping": 1, "bf16": {"enabled": False}, "some_future_key": {"x": 1}}  # fmt: skip
    out = resolve_ds_config(ds, cfg, 2, bf16_supported=False)
    assert out["some_future_key"] == {"x": 1}
    assert out["fp16"] == {"enabled": False}


def test_missing_file_lists_shipped_configs(tmp_path):
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config(tmp_path / "nope.json", build_config({}), 1, bf16_supported=False)
    for name in SHIPPED:
        assert f"{name}.json" in str(err.value)
    with pytest.raises(DeepSpeedConfigError, match="zero2_offload.json"):
        load_ds_config("zero4")


def test_invalid_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(DeepSpeedConfigError, match="bad.json is not valid JSON"):
        load_ds_config(bad)


class _DataParallel:
    """The `mpu` interface DeepSpeedConfig reads the data-parallel world size from."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


@pytest.fixture(scope="module")
def gloo_group():
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    import deepspeed

    # DeepSpeedConfig asks deepspeed.comm (not torch.distributed) for the rank; this wraps the group above
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()
    forget_deepspeed_groups()


@pytest.mark.parametrize("world_size", [1, 2])
def test_deepspeed_own_parser_accepts_resolved_configs(gloo_group, world_size):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = build_config({"train": {"global_batch_size": 16, "micro_batch_size": 2}})
    for name in SHIPPED:
        ds = resolve_ds_config(name, cfg, world_size, bf16_supported=False)
        parsed = DeepSpeedConfig(ds, mpu=_DataParallel(world_size))
        assert parsed.train_batch_size == 16
        assert parsed.train_micro_batch_size_per_gpu == 2
        assert parsed.gradient_accumulation_steps == 16 // (2 * world_size)
        assert parsed.zero_optimization_stage == load_ds_config(name)["zero_optimization"]["stage"]
        assert parsed.gradient_clipping == cfg.optim.clip_grad
        assert not parsed.bfloat16_config.enabled and not parsed.float16_config.enabled


# ---- the 2-rank end-to-end check ------------------------------------------------------------------------------

GLOBAL, MICRO, LR = 8, 2, 0.05
# AdamW's first step is lr * sign(grad) with a tiny eps, blind to how the batch was split; eps = 1 makes the
# step depend on the gradient's size, so a wrong accumulation or rank average shows up


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model[0].weight.requires_grad_(False)  # a frozen backbone weight, as in PETL
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL, 6, generator=g), torch.randn(GLOBAL, 1, generator=g), torch.randn(5, 6, generator=g)


def _reference_output() -> list[list[float]]:
    """One AdamW step over the whole global batch, with the same clipping, in one process."""
    model, (x, y, probe) = _model(), _data()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, eps=1.0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), build_config({}).optim.clip_grad)
    opt.step()
    with torch.no_grad():
        return model(probe).tolist()


def _worker(out_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = build_config({"train": {"global_batch_size": GLOBAL, "micro_batch_size": MICRO, "precision": "auto"}})
    x, y, probe = _data()
    results = {}
    for name in SHIPPED:
        ds = resolve_ds_config(name, cfg, world, bf16_supported=False)
        model = _model()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LR, eps=1.0)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds, model_parameters=params)
        steps = ds["gradient_accumulation_steps"]
        for i in range(steps):
            # rank r sees its own slice of the global batch, micro batch by micro batch
            start = (rank * steps + i) * MICRO
            loss = torch.nn.functional.mse_loss(engine(x[start : start + MICRO]), y[start : start + MICRO])
            engine.backward(loss)
            engine.step()
        with torch.no_grad():
            results[name] = {"steps": engine.global_steps, "out": engine(probe).tolist()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()  # a group left to interpreter exit can abort the process (issue 17)


@pytest.mark.slow
def test_every_shipped_config_trains_on_two_gloo_ranks(tmp_path):
    # two ranks with torchrun's environment, forked from the preloading server (tests/helpers/forked_ranks.py)
    spawn_ranks(_worker, (str(tmp_path),), nprocs=2, torchrun_env=True)
    expected = torch.tensor(_reference_output())
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(results) == set(SHIPPED)
        for name, res in results.items():
            assert res["steps"] == 1, name
            torch.testing.assert_close(torch.tensor(res["out"]), expected, rtol=1e-4, atol=1e-5, msg=name)
