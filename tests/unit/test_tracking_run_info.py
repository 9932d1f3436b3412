"""What runs tell MLflow and people: params that apply, metric names, plain progress lines, the summary table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unitrans_ds.config import load_config
from unitrans_ds.tracking.journal import MetricsFile, recorded_run_id
from unitrans_ds.tracking.params import param_text
from unitrans_ds.tracking.run_info import run_params, split_metrics
from unitrans_ds.tracking.summary import summary_table

REPO = Path(__file__).resolve().parents[2]
DS = {
    "train_batch_size": 8,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 2},
}


def test_params_only_apply_and_are_not_duplicated(tmp_path):
    counts = {"method": "lora", "params.trainable": 10, "params.total": 100}
    folder = tmp_path / "pretrained"
    cfg = load_config(None, ["method.name=lora", f"model.init_from={folder}", "task=captioning"])
    p = run_params(cfg, DS, counts, world_size=2)
    assert not [k for k in p if k.startswith(("model.tiny.", "tracking.", "method.qasn_", "method.mcam_", "eval.vqa_"))]
    assert p["method.name"] == "lora" and "method" not in p and p["method.lora_alpha"] == 16.0
    assert p["ds.zero_optimization.stage"] == 2 and not {"ds.train_batch_size", "ds.gradient_clipping"} & set(p)
    assert p["params.trainable"] == 10 and p["world_size"] == 2 and "version.torch" in p
    tiny = run_params(load_config(None, ["method.name=unitrans", "model.init_from=tiny"]), DS, counts, world_size=1)
    assert (
        tiny["model.tiny.vision_width"] == 64 and "method.qasn_activation" in tiny and "method.lora_alpha" not in tiny
    )
    assert "method.mcam_weight" in tiny and "eval.k_test" in tiny


@pytest.mark.parametrize(
    "value,text",
    [(None, "null"), (False, "false"), (True, "true"), ([0.9, 0.999], "[0.9, 0.999]"), ({}, "{}"), (3, "3")],
)
def test_param_values_are_spelled_as_in_yaml(value, text):
    assert param_text(value) == text


def test_training_and_eval_name_metrics_alike():
    evaluator = {"CIDEr": 1.2, "Bleu_4": 0.3, "r_mean": 50.0, "n_images": 12, "eval_seconds": 3.5, "note": "x"}
    assert split_metrics("test", evaluator) == {
        "test/cider": 1.2,
        "test/bleu_4": 0.3,
        "test/r_mean": 50.0,
        "test_info/n_images": 12.0,
        "test_info/eval_seconds": 3.5,
    }


def test_summary_table_reads_as_a_table():
    metrics = {"val_before/r_mean": 10.0, "val/r_mean": 40.5, "test/r_mean": 39.25, "test/cider": 0.5}
    metrics["test_info/n_images"] = 12.0
    text = summary_table(metrics, "runs/x", "abc123")
    assert text.splitlines() == [
        "[unitrans_ds] results (MLflow run abc123, see `mlflow ui`)",
        "  metric  val_before         val        test",
        "  cider            -           -         0.5",
        "  r_mean          10        40.5       39.25",
        "[unitrans_ds] run folder: runs/x",
    ]


def test_metrics_file_skips_empty_records_and_names_the_run(tmp_path):
    f = MetricsFile(tmp_path)
    f.append({}, step=2)
    f.append({"loss": 1.0}, step=3, run_id="r1")
    rows = [json.loads(line) for line in f.path.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["run_id"] == "r1" and rows[0]["step"] == 3
    assert recorded_run_id(tmp_path) == "r1"


PROGRESS = """
import time
from unitrans_ds.tracking.progress import labelled, progress
bar = progress(total=30, desc="train", unit="step")
for _ in range(30):
    time.sleep(0.01)
    bar.update(1)
bar.close()
with labelled("test"):
    for _ in progress(range(5), desc="retrieval: images"):
        pass
"""


def test_progress_off_a_terminal_is_a_few_plain_lines():
    env = {"PYTHONPATH": str(REPO), "UNITRANS_PROGRESS_INTERVAL_S": "0.1", "PATH": ""}
    proc = subprocess.run([sys.executable, "-c", PROGRESS], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and 2 <= len(lines) <= 6, lines
    assert lines[-2].startswith("train: 30/30 step (100%)")
    assert lines[-1].startswith("test retrieval: images: 5/5 it (100%)")
