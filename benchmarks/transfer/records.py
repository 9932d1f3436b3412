"""`runs.jsonl`: one JSON line per finished benchmark run, appended as runs finish (the benchmark resumes from it).

Every line carries task, method, seed, split, metric, value, trainable and total parameters, and what else decides
the run (lr, rank, steps, phase, budget) so that a rerun with other settings never reuses it.
"""

from __future__ import annotations

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

    def key(self) -> tuple:
        return (self.phase, self.task, self.method, self.seed, self.rank, self.lr, self.split)


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
