"""What a run tells MLflow about itself: params that apply, MLflow's standard tags, the shards as datasets,
and one naming of evaluation metrics shared by the trainer and `launchers/eval.py`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..config.schema import Config

#: DeepSpeed settings the training config owns (the resolver fills them from `train.*` / `optim.*`)
_DS_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_clipping")
#: evaluation outputs that count or time rather than score: logged under `<split>_info/`, apart from the scores
INFO_METRICS = re.compile(r"^(n_\w+|eval_seconds)$")


def _applies(key: str, cfg: Config) -> bool:
    """False for settings the run ignores, which would only clutter the comparison of runs."""
    from ..tasks.registry import TASKS  # the tasks say which keys only they read; asked at call time

    m = cfg.method
    rules = {
        "model.tiny.": cfg.model.init_from == "tiny",
        "method.lora_": m.name == "lora",
        "method.qasn_": m.uses_qasn,
        "method.mcam_": m.uses_mcam,
        "data.num_frames": cfg.video,
        "tracking.": False,  # where and how to log, not what was run
    }
    for name, cls in TASKS.items():
        for prefix in cls.own_config_keys:
            rules[prefix] = rules.get(prefix, True) and name == cfg.task
    return all(ok for prefix, ok in rules.items() if key.startswith(prefix))


def run_params(cfg: Config, ds_cfg: dict, parameter_counts: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Flat params: the config keys that apply, DeepSpeed's own settings (`ds.*`), parameter counts, versions."""
    from ..config import flatten, to_dict
    from ..engine.versions import collect_versions

    params = {k: v for k, v in flatten(to_dict(cfg)).items() if _applies(k, cfg)}
    params.update({f"ds.{k}": v for k, v in flatten(ds_cfg).items() if k not in _DS_OWNED})
    params.update({k: v for k, v in parameter_counts.items() if k != "method"})  # `method.name` says it
    params.update({f"version.{k}": v for k, v in collect_versions().items()})
    params["world_size"] = world_size
    return params


def standard_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own tags (shown in its UI's Source, User and Git commit columns)."""
    from .. import __version__
    from ..engine.versions import git_commit, git_dirty

    tags = {
        "mlflow.source.name": entry_point,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
        "unitrans_ds.version": __version__,
        "unitrans_ds.command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000],
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["unitrans_ds.git_dirty"] = str(bool(git_dirty())).lower()
    return tags


def manifest_digest(manifest_raw: dict) -> str:
    """A short digest of a shards manifest (its canonical JSON), as MLflow shows dataset digests."""
    return hashlib.sha256(json.dumps(manifest_raw, sort_keys=True).encode()).hexdigest()[:16]


def shard_datasets(cfg: Config, manifests: dict | None = None) -> list[dict[str, Any]]:
    """The run's train/val/test shards as MLflow dataset inputs (name, manifest digest, source, counts).
    `manifests`: the splits' `Manifest`s the run read already (`data.manifest.read_splits`); others are read."""
    from ..data.manifest import read_manifest

    out = []
    for context in ("train", "val", "test"):
        folder = getattr(cfg.data, f"{context}_shards")
        if not folder:
            continue
        manifest = (manifests or {}).get(context) or read_manifest(folder)
        out.append(
            {
                "name": f"{cfg.data.dataset}/{context}",
                "digest": manifest_digest(manifest.raw),
                "source_type": "local" if "://" not in str(folder) else str(folder).split("://")[0],
                "source": {"uri": str(folder), "manifest": "manifest.json"},
                "profile": {
                    "shards": len(manifest.shards),
                    "samples": manifest.total_samples,
                    "captions": manifest.num_captions,
                    "questions": manifest.num_questions,
                },
                "context": context,
            }
        )
    return out


def metric_key(name: str) -> str:
    """One case convention: lower case (`CIDEr` -> `cider`, `Bleu_4` -> `bleu_4`), as `img_r1` and `r_mean` are."""
    return name.lower()


def split_metrics(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """`{"r_mean": .., "n_images": ..}` -> `{"test/r_mean": .., "test_info/n_images": ..}`: scores under the split,
    counts and timings apart (so MLflow's metric columns start with the scores). Numbers only.
    """
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = metric_key(name)
        out[f"{split}_info/{key}" if INFO_METRICS.match(key) else f"{split}/{key}"] = float(value)
    return out
