"""make_shards end to end on real data: every native format's real records, real COCO images and VQA v2
answers, DiDeMo paragraphs; skips, --strict, malformed annotations, output-folder refusal, and a real crash
followed by a re-run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from unitrans_ds.data.formats import AnnotationError, ParseRequest, parse
from unitrans_ds.data.shard_writer import CRASH_ENV
from unitrans_ds.make_shards import main

FIX = Path(__file__).parents[1] / "fixtures" / "make_shards"
FORMATS = FIX / "formats"


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """All samples of a shard folder, read with tarfile (independent of the writer), in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def run(*args: str) -> int:
    return main([*args, "--workers", "1", "--no-progress"])


def coco_media(tmp_path: Path) -> Path:
    """A COCO-style image root: train2014/ and val2014/ holding the real fixture images."""
    root = tmp_path / "coco"
    for image in (FIX / "coco").glob("*.jpg"):
        sub = root / image.name.split("_")[1]
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, sub / image.name)
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- real images and answers


def test_coco_karpathy_real_images(tmp_path):
    """Train rows (one per caption) merge per image; the shard keeps the original JPEG bytes."""
    media = coco_media(tmp_path)
    rows = [
        {"image": "val2014/COCO_val2014_000000262148.jpg", "caption": "A skateboarder on a ramp. ", "image_id": "coco_262148"},
        {"image": "val2014/COCO_val2014_000000393225.jpg", "caption": "A bowl of soup.", "image_id": "coco_393225"},
        {"image": "val2014/COCO_val2014_000000262148.jpg", "caption": "A man\n doing a trick", "image_id": "coco_262148"},
    ]  # fmt: skip
    ann = tmp_path / "coco_karpathy_train.json"
    ann.write_text(json.dumps(rows))
    out = tmp_path / "out"
    assert (
        run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(out)) == 0
    )
    samples = read_samples(out)
    assert list(samples) == ["COCO_val2014_000000262148", "COCO_val2014_000000393225"]
    for key, sample in samples.items():
        assert set(sample) == {"jpg", "json"}
        assert sha(sample["jpg"]) == sha((FIX / "coco" / f"{key}.jpg").read_bytes())
    meta = json.loads(samples["COCO_val2014_000000262148"]["json"])
    assert meta["captions"] == ["A skateboarder on a ramp.", "A man doing a trick"]
    assert meta["image_id"] == 262148 and meta["image"] == rows[0]["image"]
    assert (meta["dataset"], meta["split"], meta["domain"], meta["questions"]) == ("coco", "train", None, [])
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["total_samples"], manifest["num_captions"], manifest["skipped"]) == (2, 3, 0)
    assert manifest["tasks"] == ["retrieval", "captioning"]
    assert [s["sha256"] for s in manifest["shards"]] == [
        sha((out / s["name"]).read_bytes()) for s in manifest["shards"]
    ]


def test_format_is_sniffed_and_max_side_resizes(tmp_path):
    """A PNG named .jpg is stored as png (its bytes untouched); --max-side re-encodes to a smaller JPEG."""
    media = tmp_path / "media"
    media.mkdir()
    real = Image.open(FIX / "coco" / "COCO_val2014_000000393225.jpg")
    real.save(media / "disguised.jpg", "PNG")
    shutil.copy(FIX / "coco" / "COCO_val2014_000000262148.jpg", media / "plain.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"image": "disguised.jpg", "caption": ["x"]}, {"image": "plain.jpg", "caption": ["y"]}]))
    out = tmp_path / "out"
    assert (
        run("--format", "flickr30k-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(out))
        == 0
    )
    samples = read_samples(out)
    assert set(samples["disguised"]) == {"png", "json"}
    assert samples["disguised"]["png"] == (media / "disguised.jpg").read_bytes()

    small = tmp_path / "small"
    assert run("--format", "flickr30k-karpathy", "--annotations", str(ann), "--media-root", str(media),
               "--out", str(small), "--max-side", "100") == 0  # fmt: skip
    for sample in read_samples(small).values():
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and max(image.size) == 100


def test_vqav2_official_pair_keeps_all_ten_answers(tmp_path):
    media = coco_media(tmp_path)
    out = tmp_path / "out"
    assert run("--format", "vqav2", "--questions", str(FIX / "vqav2" / "train_questions_excerpt.json"),
               "--annotations", str(FIX / "vqav2" / "train_annotations_excerpt.json"),
               "--media-root", str(media), "--out", str(out)) == 0  # fmt: skip
    samples = read_samples(out)
    assert list(samples) == ["COCO_train2014_000000458752"]
    meta = json.loads(samples["COCO_train2014_000000458752"]["json"])
    truth = json.loads((FIX / "vqav2" / "train_annotations_excerpt.json").read_text())["annotations"]
    questions = json.loads((FIX / "vqav2" / "train_questions_excerpt.json").read_text())["questions"]
    assert [q["question_id"] for q in meta["questions"]] == [q["question_id"] for q in questions]
    assert [q["question"] for q in meta["questions"]] == [q["question"] for q in questions]
    by_qid = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in truth}
    for q in meta["questions"]:
        assert len(q["answers"]) == 10 and q["answers"] == by_qid[q["question_id"]]
    assert meta["image_id"] == 458752 and meta["image"] == "train2014/COCO_train2014_000000458752.jpg"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"] == ["vqa"] and manifest["num_questions"] == 3


def test_vqav2_val_questions_without_annotations_and_blip_format(tmp_path):
    media = coco_media(tmp_path)
    out = tmp_path / "val"
    qfile = FIX / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions_excerpt.json"
    assert run("--format", "vqav2", "--questions", str(qfile), "--split", "val", "--media-root", str(media),
               "--out", str(out)) == 0  # fmt: skip
    samples = read_samples(out)
    counts = {k: len(json.loads(s["json"])["questions"]) for k, s in samples.items()}
    assert counts == {"COCO_val2014_000000262148": 3, "COCO_val2014_000000393225": 4}

    record = json.loads((FIX / "vqav2" / "v2_mscoco_val2014_annotations_record_262148000.json").read_text())
    blip = [{"question_id": record["question_id"], "question": "Where is he looking?", "dataset": "vqa",
             "image": "val2014/COCO_val2014_000000262148.jpg", "answer": [a["answer"] for a in record["answers"]]}]  # fmt: skip
    ann = tmp_path / "vqa_val.json"
    ann.write_text(json.dumps(blip))
    out2 = tmp_path / "blip"
    assert run("--format", "vqav2", "--annotations", str(ann), "--media-root", str(media), "--out", str(out2)) == 0
    (sample,) = read_samples(out2).values()
    (question,) = json.loads(sample["json"])["questions"]
    assert question["answers"] == [a["answer"] for a in record["answers"]] and len(question["answers"]) == 10


def test_didemo_paragraphs(tmp_path):
    """All descriptions of a video, in annotation order, joined into one caption; a real clip stands in for
    the first video so the sample is written, the others are counted skips."""
    ann = FIX / "didemo" / "val_data_excerpt.json"
    records = json.loads(ann.read_text())
    expected: dict[str, list[str]] = {}
    for r in records:
        expected.setdefault(r["video"], []).append(r["description"].strip())
    items = parse("didemo", ParseRequest(split="val", annotations=ann))
    assert [it.meta["video"] for it in items] == list(expected)
    for it in items:
        assert it.meta["captions"] == [" ".join(expected[it.meta["video"]])]
        assert "." not in it.key

    media = tmp_path / "videos"
    media.mkdir()
    first = next(iter(expected))
    shutil.copy(FIX / "video" / "flipping_a_pancake.mkv", media / first)
    out = tmp_path / "out"
    assert run("--format", "didemo", "--annotations", str(ann), "--media-root", str(media), "--out", str(out),
               "--split", "val", "--frames", "4") == 0  # fmt: skip
    (sample,) = read_samples(out).values()
    assert json.loads(sample["json"])["captions"] == [" ".join(expected[first])]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == len(expected) - 1 and manifest["frames"] == 4


# ---------------------------------------------------------------- every format's real records parse


def test_real_karpathy_and_flickr_records_parse():
    train = parse(
        "coco-karpathy", ParseRequest(split="train", annotations=FORMATS / "blip_coco_karpathy_train_records.json")
    )
    assert [(it.meta["image_id"], len(it.meta["captions"])) for it in train] == [(522418, 1), (328757, 1)]
    test = parse(
        "coco-karpathy", ParseRequest(split="test", annotations=FORMATS / "blip_coco_karpathy_test_record.json")
    )
    assert len(test) == 1 and len(test[0].meta["captions"]) == 5 and test[0].meta["image_id"] == 391895
    flickr = parse(
        "flickr30k-karpathy", ParseRequest(split="test", annotations=FORMATS / "blip_flickr30k_test_records.json")
    )
    raw = json.loads((FORMATS / "blip_flickr30k_test_records.json").read_text())
    assert [it.meta["image"] for it in flickr] == [r["image"] for r in raw]
    assert all(len(it.meta["captions"]) == 5 for it in flickr) and flickr[0].meta["image_id"] == 1007129816


def test_real_coco_captions_parse():
    path = FORMATS / "captions_val2014_excerpt.json"
    raw = json.loads(path.read_text())
    items = parse("coco-captions", ParseRequest(split="val", annotations=path))
    assert [it.meta["image_id"] for it in items] == [im["id"] for im in raw["images"]]
    for it in items:
        want = [" ".join(a["caption"].split()) for a in raw["annotations"] if a["image_id"] == it.meta["image_id"]]
        assert it.meta["captions"] == want and all(c == c.strip() for c in it.meta["captions"])


def test_real_coco_gt_excerpt_is_rejected_with_field_named():
    """The Karpathy test GT file is COCO-shaped but has no file names: the error says where and what."""
    path = FORMATS / "blip_coco_karpathy_test_gt_format_excerpt.json"
    with pytest.raises(AnnotationError) as err:
        parse("coco-captions", ParseRequest(split="test", annotations=path))
    assert str(path) in str(err.value) and "images[0]" in str(err.value) and "'file_name'" in str(err.value)


def test_real_msrvtt_records_parse(tmp_path):
    blip = parse("msrvtt", ParseRequest(split="test", annotations=FORMATS / "blip_msrvtt_test_jsonl_line.jsonl"))
    assert [(it.key, it.media, it.meta["captions"]) for it in blip] == [
        ("video9770", "video9770.mp4", ["a person is connecting something to system"])
    ]
    clipbert = parse(
        "msrvtt", ParseRequest(split="train", annotations=FORMATS / "clipbert_msrvtt_train_jsonl_line.jsonl")
    )
    assert clipbert[0].meta["id"] == "video2960" and len(clipbert[0].meta["captions"]) == 1

    video = json.loads((FORMATS / "msrvtt_videodatainfo_video_record.json").read_text())
    native = {"videos": [video, {**video, "video_id": "video7010", "split": "test", "id": 7010}],
              "sentences": [{"caption": "a cartoon plays", "video_id": "video0", "sen_id": 0},
                            {"caption": "a man cooks", "video_id": "video7010", "sen_id": 1},
                            {"caption": "someone talks", "video_id": "video0", "sen_id": 2}]}  # fmt: skip
    path = tmp_path / "train_val_videodatainfo.json"
    path.write_text(json.dumps(native))
    train = parse("msrvtt", ParseRequest(split="train", annotations=path))
    assert [(it.meta["id"], it.meta["captions"]) for it in train] == [("video0", ["a cartoon plays", "someone talks"])]
    split_file = tmp_path / "1kA.txt"
    split_file.write_text("video7010\nvideo0\n")
    chosen = parse("msrvtt", ParseRequest(split="test", annotations=path, split_file=split_file))
    assert [it.meta["id"] for it in chosen] == ["video7010", "video0"]


def test_msrvtt_qa_records_parse(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"video_id": 7010, "question": "what is he doing?", "answer": "cooking", "id": 5},
            {"video_id": "video7011", "question": "who talks?", "answer": "man", "question_id": 6, "answer_type": "who"}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items = parse("msrvtt-qa", ParseRequest(split="test", annotations=path))
    assert [it.media for it in items] == ["video7010.mp4", "video7011.mp4"]
    assert items[1].meta["questions"][0] == {
        "question_id": 6, "question": "who talks?", "answers": ["man"], "answer_type": "who", "question_type": None
    }  # fmt: skip


# ---------------------------------------------------------------- bad input and the output folder


def _karpathy_with_missing(tmp_path: Path) -> tuple[Path, Path]:
    media = coco_media(tmp_path)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([
        {"image": "val2014/COCO_val2014_000000262148.jpg", "caption": ["a skateboarder"]},
        {"image": "val2014/COCO_val2014_000000999999.jpg", "caption": ["not there"]},
    ]))  # fmt: skip
    return ann, media


def test_missing_image_is_skipped_or_fatal_under_strict(tmp_path, capsys):
    ann, media = _karpathy_with_missing(tmp_path)
    out = tmp_path / "out"
    assert (
        run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(out)) == 0
    )
    assert "skipped 1 (1 image file not found)" in capsys.readouterr().out
    (skip,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skip["id"] == "COCO_val2014_000000999999" and skip["reason"] == "image file not found"
    assert skip["path"].endswith("val2014/COCO_val2014_000000999999.jpg")

    strict = tmp_path / "strict"
    rc = run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(strict), "--strict")  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "COCO_val2014_000000999999.jpg" in err and "--strict" in err
    assert not (strict / "manifest.json").exists()


def test_undecodable_image_is_skipped_with_reason(tmp_path):
    media = tmp_path / "m"
    media.mkdir()
    data = (FIX / "coco" / "COCO_val2014_000000262148.jpg").read_bytes()
    (media / "cut.jpg").write_bytes(data[: len(data) // 2])
    (media / "whole.jpg").write_bytes(data)  # one good image: a run that skips everything exits 2
    ann = tmp_path / "a.json"
    ann.write_text(
        json.dumps([{"image": "cut.jpg", "caption": ["half an image"]}, {"image": "whole.jpg", "caption": ["ok"]}])
    )
    out = tmp_path / "out"
    assert (
        run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(out)) == 0
    )
    (skip,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skip["reason"].startswith("undecodable image") and "truncated" in skip["reason"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '[{"image": "a.jpg", "caption": "ok"}, {"image": "b.jpg", "caption": 7}]',
            ["record 1", "'b.jpg'", "'caption'", "got int"],
        ),
        ('[{"image": "a.jpg", "caption": "ok"}, {"caption": "no image"}]', ["record 1", "missing field 'image'"]),
        ('[{"image": "a.jpg", "caption": "ok"},\n {"image": "b.jpg" "caption": 1}]', ["not valid JSON", "line 2"]),
    ],
)
def test_malformed_annotation_names_file_record_and_field(tmp_path, capsys, content, expected):
    ann = tmp_path / "broken_annotations.json"
    ann.write_text(content)
    rc = run("--format", "coco-karpathy", "--annotations", str(ann), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(ann) in err
    for text in expected:
        assert text in err


def test_cli_exits_2_without_traceback_in_a_real_process(tmp_path):
    ann = tmp_path / "bad.json"
    ann.write_text('{"images": [{"id": 1}], "annotations": []}')
    proc = subprocess.run(
        [sys.executable, "-m", "unitrans_ds.make_shards", "--format", "coco-captions", "--annotations", str(ann),
         "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "images[0] (id=1): missing field 'file_name'" in proc.stderr


def test_non_empty_output_is_refused_without_overwrite(tmp_path, capsys):
    args = [
        "--format",
        "shapes",
        "--domain",
        "a",
        "--num-samples",
        "6",
        "--shard-size",
        "4",
        "--out",
        str(tmp_path / "o"),
    ]
    assert run(*args) == 0
    first = (tmp_path / "o" / "manifest.json").read_text()
    capsys.readouterr()
    assert run(*args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(*args, "--overwrite") == 0
    assert (tmp_path / "o" / "manifest.json").read_text() == first

    stranger = tmp_path / "s"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert run("--format", "shapes", "--domain", "a", "--num-samples", "2", "--out", str(stranger)) == 2
    assert "not empty" in capsys.readouterr().err


# ---------------------------------------------------------------- crash and re-run


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unitrans_ds.make_shards", *args, "--no-progress"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_crash_then_rerun_gives_the_clean_manifest(tmp_path):
    """A run SIGKILLed half way through its second shard, re-run, ends with the same manifest and the same
    shard bytes as a clean run (also with another --workers), and keeps the first shard it had finished."""
    common = ["--format", "shapes", "--domain", "b", "--num-samples", "30", "--shard-size", "8", "--seed", "3"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert _cli([*common, "--out", str(clean), "--workers", "1"]).returncode == 0

    proc = _cli([*common, "--out", str(crashed), "--workers", "2"], env={CRASH_ENV: "11"})
    assert proc.returncode == -9, proc.stderr  # killed, not a clean exit
    names = sorted(p.name for p in crashed.iterdir())
    assert names == [".in_progress.json", "shard-000000.tar", "shard-000001.tar.tmp"]
    first_inode = (crashed / "shard-000000.tar").stat().st_ino

    refused = _cli([*common, "--seed", "4", "--out", str(crashed)])
    assert refused.returncode == 2 and "unfinished run of a different command" in refused.stderr

    assert _cli([*common, "--out", str(crashed), "--workers", "1"]).returncode == 0
    assert (crashed / "manifest.json").read_text() == (clean / "manifest.json").read_text()
    assert sorted(p.name for p in crashed.iterdir()) == sorted(p.name for p in clean.iterdir())
    for shard in clean.glob("shard-*.tar"):
        assert (crashed / shard.name).read_bytes() == shard.read_bytes()
    assert (crashed / "shard-000000.tar").stat().st_ino == first_inode


@pytest.mark.slow
def test_rerun_redoes_a_damaged_shard(tmp_path):
    """A finished shard whose bytes changed before the re-run is rewritten, not trusted."""
    common = ["--format", "shapes", "--domain", "a", "--num-samples", "20", "--shard-size", "5"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert _cli([*common, "--out", str(clean)]).returncode == 0
    assert _cli([*common, "--out", str(crashed)], env={CRASH_ENV: "16"}).returncode == -9
    with open(crashed / "shard-000001.tar", "r+b") as f:
        f.seek(600)
        f.write(b"XXXX")
    assert _cli([*common, "--out", str(crashed)]).returncode == 0
    assert (crashed / "manifest.json").read_text() == (clean / "manifest.json").read_text()
    assert (crashed / "shard-000001.tar").read_bytes() == (clean / "shard-000001.tar").read_bytes()


def test_arguments_the_format_never_reads_are_refused(tmp_path, capsys):
    assert (
        run(
            "--format",
            "shapes",
            "--domain",
            "a",
            "--num-samples",
            "2",
            "--max-side",
            "32",
            "--out",
            str(tmp_path / "o"),
        )
        == 2
    )
    assert "--max_side not used by --format shapes" in capsys.readouterr().err
    ann = FORMATS / "blip_flickr30k_test_records.json"
    assert (
        run("--format", "flickr30k-karpathy", "--annotations", str(ann), "--domain", "b", "--out", str(tmp_path / "p"))
        == 2
    )
    assert "--domain not used" in capsys.readouterr().err


def test_wrong_media_root_exits_2_without_a_manifest_and_many_skips_warn(tmp_path, capsys):
    ann, media = _karpathy_with_missing(tmp_path)
    out = tmp_path / "out"
    rc = run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(tmp_path / "nowhere"), "--out", str(out))  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "no sample was written" in err and "--media_root" in err and "image file not found" in err
    assert not (out / "manifest.json").exists()
    # some items found, one skipped: a manifest, and a warning above the 1% threshold
    assert run("--format", "coco-karpathy", "--annotations", str(ann), "--media-root", str(media), "--out", str(tmp_path / "ok")) == 0  # fmt: skip
    assert "make_shards: warning: skipped 1 of" in capsys.readouterr().err
