"""End-to-end training through the real launcher: DeepSpeed with gloo ranks, real shards, a real MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.launchers import train_in_process
from helpers.mlflow_store import fresh_sqlite_uri
from helpers.runs import assert_same_adapters, common, launch, no_gap_args, ok, shapes_shards
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return shapes_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_two_ranks_zero2_each_task_with_mlflow(task, shards, tmp_path):
    from mlflow.tracking import MlflowClient

    from unitrans_ds.data.manifest import read_manifest
    from unitrans_ds.engine.versions import git_commit
    from unitrans_ds.tracking.run_info import manifest_digest

    uri = fresh_sqlite_uri(tmp_path / "mlflow.db")
    out = tmp_path / "run"
    # Retrieval validates at every step (best-adapter selection); the generative tasks, slower to evaluate, test only.
    extra = (
        ["train.eval_every=1", "train.grad_norms=true"]
        if task == "retrieval"
        else ["data.val_shards=null", "eval.num_beams=2"]
    )
    args = [f"task={task}", "tracking.experiment=it", *common(shards, out), *extra]
    proc = launch(args, ranks=2, env={"MLFLOW_TRACKING_URI": uri})
    ok(proc)
    final = json.loads((out / "final_metrics.json").read_text())
    key = {"retrieval": "test/r_mean", "captioning": "test/cider", "vqa": "test/overall"}[task]
    assert key in final, sorted(final)
    assert (out / "adapter_final" / "adapter_model.safetensors").is_file()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("it")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert p["method.name"] == "unitrans" and p["task"] == task and p["world_size"] == "2"
    assert int(p["params.trainable"]) > 0 and int(p["params.total"]) > int(p["params.trainable"])
    assert {"version.torch", "version.transformers", "version.deepspeed", "version.unitrans_ds"} <= set(p)
    # one name per setting, YAML spellings, only settings that apply
    assert p["ds.zero_optimization.stage"] == "2" and p["train.micro_batch_size"] == "4"
    assert not {"method", "zero_stage", "ds.train_micro_batch_size_per_gpu", "git_commit"} & set(p)
    assert p["train.max_steps"] == "3" and p["train.zero_shot_eval"] == "false" and p["train.resume"] == "null"
    assert not [k for k in p if k.startswith("tracking.")]
    assert ("method.mcam_weight" in p) == (task == "retrieval") and "method.lora_alpha" not in p
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/step_time_s", "train/peak_memory_mib"} <= set(m)
    parts = {"retrieval": ["train/loss_itc", "train/loss_itm"], "captioning": ["train/loss_lm"]}.get(
        task, ["train/loss_vqa"]
    )
    assert m["train/loss"] == pytest.approx(sum(m[k] for k in parts), rel=1e-5)
    if task == "retrieval":  # MCAM is the method's own term: in the objective, not in the comparable loss
        assert m["train/objective"] == pytest.approx(m["train/loss"] + m["train/loss_mcam"], rel=1e-5)
        # train.grad_norms: each part's gradient norm, of the two ranks' averaged gradient, at every log step
        norms = {k: m[f"train/grad_norm_{k}"] for k in ("itc", "itm", "mcam")}
        assert all(0 < v < float("inf") for v in norms.values()), norms
        assert [h.step for h in client.get_metric_history(run.info.run_id, "train/grad_norm_itc")] == [1, 2, 3]
    assert key in m and f"test_info/{'n_questions' if task == 'vqa' else 'n_images'}" in m
    assert "test_info/eval_seconds" in m and not [k for k in m if k.startswith("test/n_")]
    assert tags["task"] == task and tags["method"] == "unitrans" and tags["dataset"] == "shapes-b"
    assert tags["mlflow.source.name"] == "launchers/train.py" and tags["mlflow.user"]
    assert tags.get("mlflow.source.git.commit") == git_commit()
    inputs = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    digests = {s: manifest_digest(read_manifest(shards / s).raw) for s in ("train", "test")}
    assert {("shapes-b/train", digests["train"]), ("shapes-b/test", digests["test"])} <= inputs
    # the log: a summary table, plain progress lines (no carriage returns), metrics.jsonl rows that name the run
    assert f"[unitrans_ds] results (MLflow run {run.info.run_id}" in proc.stdout and "\r" not in proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["run_id"] == run.info.run_id and len(r) > 3 for r in rows)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "ds_config.json", "adapter_final"} <= artifacts
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [h.step for h in history] == [1, 2, 3]
    if task == "retrieval":  # validated at steps 1 and 2 and at the end; the best adapter was kept
        assert [h.step for h in client.get_metric_history(run.info.run_id, "val/r_mean")] == [1, 2, 3]
        assert (out / "adapter_best" / "adapter_config.json").is_file()


@pytest.mark.slow
# ZeRO-1 differs from ZeRO-2 inside DeepSpeed's optimizer only, which test_ds_config's
# test_every_shipped_config_trains_on_two_gloo_ranks checks for every shipped config; the launcher runs here cover
# the stages the Trainer treats apart (no ZeRO optimizer; partitioned parameters gathered for export).
@pytest.mark.parametrize("stage", ["zero0", "zero3"])
def test_other_zero_stages(stage, shards, tmp_path):
    out = tmp_path / "run"
    args = [*common(shards, out, steps=2), "data.test_shards=null", "tracking.enabled=false"]
    # ZeRO-0 under the real `torchrun` (the README's other launcher; its ranks end in a real interpreter exit)
    ok(launch(args, ranks=2, ds=stage, torchrun=stage == "zero0"))
    tensors = load_file(str(out / "adapter_final" / "adapter_model.safetensors"))
    assert tensors and all(t.numel() > 0 for t in tensors.values())  # ZeRO-3 gathered full tensors
    assert "val/r_mean" in json.loads((out / "final_metrics.json").read_text())


@pytest.mark.slow
def test_grad_norms_leave_the_training_unchanged_and_zero3_refuses_them(shards, tmp_path, capsys):
    # autograd.grad before the step's backward must neither write .grad nor fire ZeRO-2's reduction hooks
    base = [*no_gap_args(shards, 4), "train.log_every=2"]
    assert train_in_process([*base, f"train.output_dir={tmp_path / 'plain'}"]) == 0
    assert train_in_process([*base, f"train.output_dir={tmp_path / 'norms'}", "train.grad_norms=true"]) == 0
    assert_same_adapters(tmp_path / "plain", tmp_path / "norms")
    rows = [json.loads(x) for x in (tmp_path / "norms" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "train/grad_norm_itc" in r}
    assert sorted(logged) == [2, 4] and all(r["train/grad_norm_mcam"] > 0 for r in logged.values())
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not [k for r in plain for k in r if "grad_norm" in k]  # off by default

    capsys.readouterr()
    rc = train_in_process([*base, f"train.output_dir={tmp_path / 'z3'}", "train.grad_norms=true"], ds="zero3")
    assert rc == 2 and "train.grad_norms needs ZeRO stage 0, 1 or 2" in capsys.readouterr().err


def test_unreachable_tracking_server_keeps_metrics(shards, tmp_path, monkeypatch, capsys, caplog):
    # In this process (the launcher's main, the trainer, DeepSpeed on one gloo rank): the tracker's behaviour, not
    # the process around it, is under test.
    out = tmp_path / "run"
    args = [*common(shards, out, steps=2), "data.val_shards=null", "data.test_shards=null"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    # a short finish_timeout_s: the run then ends without waiting 2 minutes for a server that never comes
    assert train_in_process([*args, "tracking.finish_timeout_s=3"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({x["step"] for x in lines if "train/loss" in x}) == [1, 2]
    captured = capsys.readouterr()
    assert "metrics.jsonl" in caplog.text + captured.err + captured.out  # the warning says where the metrics went


def test_lost_data_is_summarized_per_shard_and_stops_the_run_above_max_skip_fraction(shards, tmp_path, capsys):
    # in this process: the launcher's main, the trainer and DeepSpeed on one gloo rank
    train = tmp_path / "train"
    shutil.copytree(shards / "train", train)
    (train / "shard-000002.tar").write_bytes(b"")  # 16 of the 64 samples (4 captions each) gone
    args = [*no_gap_args(shards, 2), f"data.train_shards={train}", "data.max_skip_fraction=0.5"]
    assert train_in_process([*args, f"train.output_dir={tmp_path / 'run'}"]) == 0
    loss = json.loads((tmp_path / "run" / "data_loss.json").read_text())
    assert loss["shards"] == {"shard-000002.tar": {"samples": 16, "pairs": 64, "shard_read": 16}}
    assert (loss["lost_samples"], loss["total_samples"], loss["lost_pairs"]) == (16, 64, 64)
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["data/lost_samples"] == 16 and final["train/steps"] == 2

    capsys.readouterr()
    assert train_in_process([*args, "data.max_skip_fraction=0.1", f"train.output_dir={tmp_path / 'strict'}"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "data.max_skip_fraction=0.1: lost 16 of 64 training samples" in line and "shard-000002.tar" in line
    assert "Traceback" not in err
