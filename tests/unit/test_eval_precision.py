"""One evaluation precision for every ZeRO stage: the same adapter scores the same at ZeRO-2 and ZeRO-3, with real
DeepSpeed engines training in bf16 (in-process, one gloo rank) and the real retrieval evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.ds_inprocess import ds_world_of_one  # noqa: F401 (a fixture)

from unitrans_ds import make_shards
from unitrans_ds.adapters import prepare_model, zero3_register_external
from unitrans_ds.config import build_config
from unitrans_ds.engine.ds_config import resolve_ds_config
from unitrans_ds.engine.eval_model import EvalModel
from unitrans_ds.engine.optim import build_optimizer
from unitrans_ds.evaluation import evaluate
from unitrans_ds.models.build import load_backbone
from unitrans_ds.tasks import build_task

SIZE = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("precision_shards") / "test"
    args = ["--format", "shapes", "--domain", "b", "--split", "test", "--num-samples", "8", "--seed", "2",
            "--shard-size", "8", "--task-set", "image", "--image-size", str(SIZE), "--workers", "1",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert make_shards.main(args) == 0
    return out


def _evaluate(stage: int, precision: str, shards: Path, out: Path) -> tuple[dict, list]:
    over = {"train.precision": "bf16", "eval.precision": precision, "eval.k_test": 4, "eval.batch_size": 4}
    data = {"model": {"init_from": "tiny", "image_size": SIZE}, "method": {"rank": 4}}
    data["train"] = {"global_batch_size": 4, "micro_batch_size": 4}
    cfg = build_config(data, [f"{k}={v}" for k, v in over.items()])
    bb = load_backbone(cfg.model, "retrieval", seed=cfg.train.seed)  # as the trainer (and the copy) builds it
    prepare_model(bb.model, cfg.method)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the same trained-looking adapter for both stages
        for p in bb.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    task = build_task(cfg, bb.model, bb.tokenizer)
    import deepspeed

    ds = resolve_ds_config(f"zero{stage}", cfg, 1, bf16_supported=True)
    engine, *_ = deepspeed.initialize(model=task, optimizer=build_optimizer(task, cfg.optim), config=ds)
    if stage == 3:
        zero3_register_external(task.model)
    eval_model = EvalModel(cfg, engine, stage)
    metrics = evaluate(eval_model.task(), cfg, shards, out_dir=out)
    scores = [json.loads(line)["scores"] for line in (out / "i2t_topk.jsonl").read_text().splitlines()]
    metrics.pop("eval_seconds")
    return metrics, scores


@pytest.mark.slow
def test_zero2_and_zero3_score_the_same_adapter_the_same(ds_world_of_one, shards, tmp_path):  # noqa: F811
    results = {
        (stage, precision): _evaluate(stage, precision, shards, tmp_path / f"z{stage}_{precision}")
        for precision in ("fp32", "train")
        for stage in (2, 3)
    }
    for precision in ("fp32", "train"):
        assert results[(2, precision)] == results[(3, precision)], precision
    # The precision does change the scores, so a stage that evaluated in another precision would show.
    assert results[(2, "fp32")][1] != results[(2, "train")][1]
