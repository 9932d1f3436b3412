"""`runs.jsonl`: one JSON line per finished benchmark run, appended as runs finish (the benchmark resumes from it).

Every line carries task, method, seed, split, metric, value, trainable and total parameters, and what else decides
the run (lr, rank, steps, phase, budget, and the fingerprint of the backbone it started from) so that a rerun with
other settings or other backbones never reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RunRecord:
    task: str
    method: str  # the variant's name (a table row), e.g. `vcra (frozen A/B)`
    seed: int
    split: str
    metric: str
    value: float
    trainable: int
    total: int
    lr: float | None
    rank: int
    steps: int
    phase: str  # `select` (lr grid on val) or `report` (chosen lr on test)
    budget: str
    seconds: float = 0.0  # wall time of the run (a paused or shared machine inflates it)
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # CPU time of the process that ran it (one thread): what the run cost, whatever else the machine did meanwhile
    cpu_seconds: float | None = None
    # `backbone_fingerprint` of the pretrained folder the run started from: a run on other weights is another result
    backbone: str | None = None

    def key(self) -> tuple:
        return (self.phase, self.task, self.method, self.seed, self.rank, self.lr, self.split)


def backbone_fingerprint(folder: Path) -> str:
    """The first 16 hex digits of the SHA-256 over a save_pretrained folder's `config.json` and weights: what a
    record's `backbone` holds, so that retrained or other backbones never reuse the runs of these."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(folder) / name
        if path.is_file():  # a folder saved as pytorch_model.bin has no safetensors: its config still counts
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def split_by_backbone(records: list[RunRecord], backbones: dict[str, str]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(records made on `backbones[task]`, records made on other weights) for the tasks `backbones` names; records of
    other tasks count as matching. A record without a fingerprint (written before records had one) never matches."""
    same, other = [], []
    for r in records:
        (other if r.task in backbones and r.backbone != backbones[r.task] else same).append(r)
    return same, other


def load_records(path: Path, budget: str) -> list[RunRecord]:
    """The records of `path` made at `budget` (lines of other budgets stay in the file, unused)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("budget") == budget:
                out.append(RunRecord(**row))
    return out


def append_record(path: Path, record: RunRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(asdict(record)) + "\n")
