"""What the transfer benchmark runs: its tasks, its method rows (variants), their learning-rate grids, and the
ablation steps whose paired differences it reports.

A *variant* is a row of the tables: a `method.name` plus overrides. `vcra (frozen A/B)` is `vcra` with
`method.train_shared=false`, the control that separates what sharing A/B across modalities gives from what
training A and B gives. A variant that needs a component a task does not have is n/a for that task, not run:
captioning has no fusion branch (no QASN), and MCAM is a retrieval loss.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchTask:
    """One benchmark task: the model class and pretrained backbone, the shards, the headline metric."""

    name: str
    label: str
    task: str
    video: bool
    backbone: str  # the pretrained task class the run starts from (folder `tiny-blip-<backbone>`)
    shards: str  # folder under the shards root holding train/ val/ test/ (domain B)
    metric: str
    fusion: bool  # has a fusion branch (image-grounded text encoder) that QASN feeds
    overrides: tuple[str, ...] = ()


TASKS: dict[str, BenchTask] = {
    t.name: t
    for t in (
        BenchTask("image_retrieval", "image retrieval", "retrieval", False, "retrieval", "image_b", "r_mean", True),
        BenchTask(
            "captioning",
            "captioning",
            "captioning",
            False,
            "captioning",
            "image_b",
            "cider",  # the trainer logs metric names in lower case (`tracking.run_info.metric_key`)
            False,
            ("eval.max_length=40", "eval.min_length=8", "eval.prompt=a picture of "),
        ),  # fmt: skip
        BenchTask("vqa", "VQA", "vqa", False, "vqa", "image_b", "overall", True),
        BenchTask(
            "video_retrieval",
            "video retrieval",
            "retrieval",
            True,
            "retrieval",
            "video_b",
            "r_mean",
            True,
            ("data.num_frames=4",),
        ),  # fmt: skip
        BenchTask("video_qa", "video QA", "vqa", True, "vqa", "video_b", "accuracy", True, ("data.num_frames=4",)),
    )
}


@dataclass(frozen=True)
class Variant:
    """One row: a method with overrides, the components it needs, and the learning-rate grid it is tuned on."""

    name: str
    method: str
    lr_grid: tuple[float, ...]
    overrides: tuple[str, ...] = ()
    needs_fusion: bool = False  # QASN
    retrieval_only: bool = False  # MCAM

    @property
    def slug(self) -> str:
        """The name as a folder name: `vcra (frozen A/B)` -> `vcra-frozen-ab`."""
        return "-".join("".join(c if c.isalnum() or c == "+" else " " for c in self.name.lower()).split())

    def applies_to(self, task: BenchTask) -> bool:
        return (task.fusion or not self.needs_fusion) and (task.task == "retrieval" or not self.retrieval_only)

    def runs_as(self, task: BenchTask) -> str:
        """The row whose runs stand for this one on `task`: itself, or, for `unitrans` on a task that lacks one of
        its components, the row with the same training (captioning: no fusion branch and no MCAM, so `vcra`; VQA:
        no MCAM, so `vcra+qasn`). The trainer builds the same model and loss for both, so the runs would repeat
        each other to the bit (checked: captioning's unitrans and vcra lr grids gave the same CIDEr at every lr)."""
        if self.name != "unitrans":
            return self.name
        qasn, mcam = task.fusion, task.task == "retrieval"
        return {(True, True): "unitrans", (True, False): "vcra+qasn", (False, True): "vcra+mcam"}.get(
            (qasn, mcam), "vcra"
        )

    def runs_on(self, task: BenchTask) -> bool:
        """Whether the benchmark runs this row on `task`: it applies there and no other row stands for it."""
        return self.applies_to(task) and self.runs_as(task) == self.name


#: Learning-rate grids, one decade in half-decade steps around each family's usual value: full fine-tuning moves
#: every weight (small steps), LoRA's B starts at zero, the VCRA family trains vectors that start at 0 and 1.
FULL_GRID = (3e-5, 1e-4, 3e-4)
LORA_GRID = (3e-4, 1e-3, 3e-3)
VECTOR_GRID = (3e-3, 1e-2, 3e-2)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("frozen", "frozen", ()),
        Variant("full", "full", FULL_GRID),
        Variant("lora", "lora", LORA_GRID),
        Variant("scaling-vectors", "scaling-vectors", VECTOR_GRID),
        Variant("vcra (frozen A/B)", "vcra", VECTOR_GRID, ("method.train_shared=false",)),
        Variant("vcra", "vcra", VECTOR_GRID),
        Variant("vcra+qasn", "vcra+qasn", VECTOR_GRID, needs_fusion=True),
        Variant("vcra+mcam", "vcra+mcam", VECTOR_GRID, retrieval_only=True),
        Variant("unitrans", "unitrans", VECTOR_GRID),
    )
}

#: The ablation ladder: (from, to) pairs whose paired difference over seeds the report gives, per task.
ABLATION_STEPS: tuple[tuple[str, str], ...] = (
    ("scaling-vectors", "vcra (frozen A/B)"),
    ("vcra (frozen A/B)", "vcra"),
    ("vcra", "vcra+qasn"),
    ("vcra", "vcra+mcam"),
    ("vcra", "unitrans"),
    ("lora", "unitrans"),
    ("full", "unitrans"),
)

#: The rank sweep: these variants at these ranks, on image retrieval, at the main table's seeds.
SWEEP_VARIANTS = ("unitrans", "lora")
SWEEP_RANKS = (2, 4, 8, 16, 32)
