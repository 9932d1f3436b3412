"""A handful of samples in each paper data set's native annotation format, and the `make_shards` commands that
turn the real files (and these) into shards.

Who calls it: the dry run (`unitrans_ds.dryrun.run`) writes the samples and runs the commands; the reproduction
guide (`docs/reproducing.md`) prints the same commands for the real data (a test compares the two), so the
commands a user runs are the ones the dry run exercised.

The media are the real public images and clips in the checkout's `tests/fixtures/make_shards/` (COCO 2014
images, decord's test clips), copied under the file names each format expects; the annotation records are
real records of each format (tests/fixtures/README.md names their origin), re-attached to these few media.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "make_shards"
_COCO_IDS = (458752, 262148, 393225)  # the three real COCO 2014 images of the fixtures
_CLIPS = ("flipping_a_pancake.mkv", "video_0.mov", "video_90.mov", "video_180.mov")


@dataclass(frozen=True)
class ShardCommand:
    """One `python -m unitrans_ds.make_shards` call for `split`; `{ann}` and `{media}` are filled in."""

    split: str
    args: tuple[str, ...]
    #: --shard_size for the real data: at least 100 shards, so 16 ranks x 6 loader workers all get one
    shard_size: int

    def argv(self, ann: str, media: str, out: str) -> list[str]:
        filled = [a.format(ann=ann, media=media, split=self.split) for a in self.args]
        return [*filled, "--out", out, "--shard_size", str(self.shard_size)]

    def shell(self, ann: str, media: str, out: str) -> str:
        return "python -m unitrans_ds.make_shards " + " ".join(self.argv(ann, media, out))


def _karpathy(fmt: str, prefix: str, sizes: dict[str, int]) -> list[ShardCommand]:
    return [
        ShardCommand(s, ("--format", fmt, "--split", s, "--annotations", f"{{ann}}/{prefix}_{s}.json",
                         "--media_root", "{media}"), n)
        for s, n in sizes.items()
    ]  # fmt: skip


def _vqa(split: str, subtype: str, shard_size: int) -> ShardCommand:
    return ShardCommand(split, ("--format", "vqav2", "--split", split,
                                "--questions", f"{{ann}}/v2_OpenEnded_mscoco_{subtype}_questions.json",
                                "--annotations", f"{{ann}}/v2_mscoco_{subtype}_annotations.json",
                                "--media_root", "{media}"), shard_size)  # fmt: skip


def _video(fmt: str, split: str, files: tuple[str, ...], shard_size: int) -> ShardCommand:
    return ShardCommand(split, ("--format", fmt, "--split", split, *files, "--media_root", "{media}",
                                "--frames", "16"), shard_size)  # fmt: skip


#: data.dataset -> the make_shards commands of its splits. Sizes: COCO Karpathy 113,287 / 5,000 / 5,000 images,
#: Flickr30K 29,000 / 1,014 / 1,000, VQA v2 82,783 / 40,504 images, MSR-VTT 9,000 train / 1,000 (1k-A) videos,
#: MSRVTT-QA 6,513 / 497 / 2,990 videos, DiDeMo about 8,400 / 1,065 / 1,004 videos.
SHARD_COMMANDS: dict[str, list[ShardCommand]] = {
    "coco": _karpathy("coco-karpathy", "coco_karpathy", {"train": 1000, "val": 50, "test": 50}),
    "flickr30k": _karpathy("flickr30k-karpathy", "flickr30k", {"train": 250, "val": 10, "test": 10}),
    "vqav2": [_vqa("train", "train2014", 500), _vqa("val", "val2014", 400)],
    "msrvtt": [
        _video(
            "msrvtt",
            "train",
            ("--annotations", "{ann}/train_val_videodatainfo.json", "--split_file", "{ann}/msrvtt_train_9k_ids.txt"),
            90,
        ),  # fmt: skip
        _video("msrvtt", "test", ("--annotations", "{ann}/msrvtt_test_1k.jsonl"), 10),
    ],
    "msrvtt-qa": [
        _video("msrvtt-qa", s, ("--annotations", f"{{ann}}/{s}_qa.json"), n)
        for s, n in {"train": 64, "val": 5, "test": 30}.items()
    ],
    "didemo": [
        _video("didemo", s, ("--annotations", f"{{ann}}/{s}_data.json"), n)
        for s, n in {"train": 80, "val": 10, "test": 10}.items()
    ],
}


def _fixture(rel: str) -> Path:
    path = FIXTURES / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the dry run takes its media from the repository's tests/fixtures/make_shards/; "
            "run it from a full checkout of unitrans_ds"
        )
    return path


def _copy(rel: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_fixture(rel), dest)


def _dump(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _captions() -> list[list[str]]:
    """Five real COCO captions for each of four images (the official captions file excerpt)."""
    data = json.loads(_fixture("formats/captions_val2014_excerpt.json").read_text())
    by_image: dict[int, list[str]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    return [caps[:5] for caps in by_image.values()]


def _coco_image(image_id: int) -> str:
    prefix = "COCO_train2014" if image_id == 458752 else "COCO_val2014"
    return f"coco/{prefix}_{image_id:012d}.jpg"


def write_coco(ann: Path, media: Path) -> None:
    """BLIP/LAVIS Karpathy JSONs: train one row per caption, val/test five captions per row."""
    caps, train, evals = _captions(), [], []
    for n, image_id in enumerate(_COCO_IDS):
        image = f"val2014/COCO_val2014_{image_id:012d}.jpg"  # Karpathy train takes "restval" images from val2014
        _copy(_coco_image(image_id), media / image)
        train += [{"caption": c, "image": image, "image_id": f"coco_{image_id}"} for c in caps[n]]
        evals.append({"image": image, "caption": caps[n]})
    _dump(ann / "coco_karpathy_train.json", train)
    for split in ("val", "test"):
        _dump(ann / f"coco_karpathy_{split}.json", evals)


def write_flickr30k(ann: Path, media: Path) -> None:
    """BLIP/LAVIS Flickr30K JSONs (same layout as COCO's), with the real test records' names and captions."""
    records = json.loads(_fixture("formats/blip_flickr30k_test_records.json").read_text())
    train = []
    for rec, image_id in zip(records, _COCO_IDS, strict=True):
        _copy(_coco_image(image_id), media / rec["image"])
        stem = Path(rec["image"]).stem
        train += [{"image": rec["image"], "caption": c, "image_id": stem} for c in rec["caption"]]
    _dump(ann / "flickr30k_train.json", train)
    for split in ("val", "test"):
        _dump(ann / f"flickr30k_{split}.json", records)


def write_vqav2(ann: Path, media: Path) -> None:
    """Official questions + annotations files: the three real train questions (with their ten answers each)
    asked of each of the three images, in train2014 and in val2014."""
    questions = json.loads(_fixture("vqav2/train_questions_excerpt.json").read_text())
    answers = {a["question_id"]: a for a in json.loads(_fixture("vqav2/train_annotations_excerpt.json").read_text())[
        "annotations"]}  # fmt: skip
    for subtype in ("train2014", "val2014"):
        qs, anns = [], []
        for image_id in _COCO_IDS:
            _copy(_coco_image(image_id), media / subtype / f"COCO_{subtype}_{image_id:012d}.jpg")
            for k, q in enumerate(questions["questions"]):
                qid = image_id * 1000 + k
                qs.append({"image_id": image_id, "question": q["question"], "question_id": qid})
                a = answers[q["question_id"]]
                anns.append({**a, "question_id": qid, "image_id": image_id})
        _dump(ann / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {**questions, "data_subtype": subtype,
                                                                       "questions": qs})  # fmt: skip
        _dump(ann / f"v2_mscoco_{subtype}_annotations.json", {"data_subtype": subtype, "annotations": anns})


def _clips(media: Path, names: list[str]) -> None:
    for name, clip in zip(names, _CLIPS, strict=True):
        _copy(f"video/{clip}", media / name)


def write_msrvtt(ann: Path, media: Path) -> None:
    """Native train_val_videodatainfo.json + a 9k-style id list for train; the BLIP 1k-A jsonl for test."""
    ids = [f"video{i}" for i in range(len(_CLIPS))]
    _clips(media, [f"{v}.mp4" for v in ids])
    caps = _captions()
    videos = [{"category": 9, "url": "", "video_id": v, "start time": 0.0, "end time": 10.0, "split": "train",
               "id": i} for i, v in enumerate(ids)]  # fmt: skip
    sentences = [{"caption": c, "video_id": v, "sen_id": 5 * i + j} for i, v in enumerate(ids)
                 for j, c in enumerate(caps[i])]  # fmt: skip
    _dump(ann / "train_val_videodatainfo.json", {"videos": videos, "sentences": sentences})
    (ann / "msrvtt_train_9k_ids.txt").write_text("\n".join(ids) + "\n")
    lines = [{"caption": caps[i][0], "clip_name": v, "retrieval_key": f"ret{i}"} for i, v in enumerate(ids)]
    (ann / "msrvtt_test_1k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_msrvtt_qa(ann: Path, media: Path) -> None:
    """`{video_id, question, answer, id}` records (the original release: numeric video ids)."""
    _clips(media, [f"video{i}.mp4" for i in range(len(_CLIPS))])
    qa = [("what is a person doing", "cooking"), ("what is in the pan", "pancake"), ("who is cooking", "man")]
    for split in ("train", "val", "test"):
        rows = [{"answer": a, "id": 10 * i + k, "question": q, "video_id": i}
                for i in range(len(_CLIPS)) for k, (q, a) in enumerate(qa)]  # fmt: skip
        _dump(ann / f"{split}_qa.json", rows)


def write_didemo(ann: Path, media: Path) -> None:
    """Native DiDeMo records (the real val excerpt: four videos, their descriptions and segment times)."""
    records = json.loads(_fixture("didemo/val_data_excerpt.json").read_text())
    names = list(dict.fromkeys(r["video"] for r in records))
    _clips(media, names)
    for split in ("train", "val", "test"):
        _dump(ann / f"{split}_data.json", records)


WRITERS: dict[str, Callable[[Path, Path], None]] = {
    "coco": write_coco,
    "flickr30k": write_flickr30k,
    "vqav2": write_vqav2,
    "msrvtt": write_msrvtt,
    "msrvtt-qa": write_msrvtt_qa,
    "didemo": write_didemo,
}


#: data.dataset -> (annotation folder, media root) as the guide and the YAML comments write them
GUIDE_PATHS: dict[str, tuple[str, str]] = {
    "coco": ("$COCO_ANN", "$COCO_ROOT"),
    "flickr30k": ("$FLICKR_ANN", "$FLICKR_ROOT"),
    "vqav2": ("$VQA_ANN", "$COCO_ROOT"),
    "msrvtt": ("$MSRVTT_ANN", "$MSRVTT_VIDEOS"),
    "msrvtt-qa": ("$MSRVTTQA_ANN", "$MSRVTT_VIDEOS"),
    "didemo": ("$DIDEMO_ANN", "$DIDEMO_VIDEOS"),
}


def guide_commands(dataset: str, folders: dict[str, str]) -> list[str]:
    """The make_shards command lines for the real data of `dataset`, writing split `s` to `folders[s]`."""
    ann, media = GUIDE_PATHS[dataset]
    return [cmd.shell(ann, media, folders[cmd.split]) for cmd in SHARD_COMMANDS[dataset] if cmd.split in folders]
