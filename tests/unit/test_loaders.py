"""The streaming loaders on real tar shards written by `tests/helpers/shardgen.py` (the shard schema, not the writer)."""

from __future__ import annotations

import collections
import io
import json
import logging
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.shardgen import make_image_shards, make_video_shards, video_sample, write_shards

from unitrans_ds.data.loaders import (
    build_eval_loader,
    build_train_loader,
    eval_loader_from_config,
    train_loader_from_config,
)
from unitrans_ds.data.pipeline import frame_indices, stack_pixels
from unitrans_ds.data.skips import SkipCounter, SkipTotals, describe_loss, loss_summary

SIZE = 32


def _all_captions(manifest_dir: Path) -> list[str]:
    """Captions from the manifest's own source of truth: the json inside each tar (normalized by hand-rule)."""
    out = []
    for tar in sorted(manifest_dir.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    out.extend(json.loads(tf.extractfile(m).read())["captions"])
    return out


def _texts(loader) -> list[str]:
    return [t for batch in loader for t in batch["text"]]


@pytest.fixture
def shards(tmp_path):
    """12 images x 2 captions x 2 questions in 3 shards of 4: 24 pairs, 24 questions."""
    make_image_shards(tmp_path / "s", n=12, per_shard=4, captions=2, questions=2)
    return tmp_path / "s"


def test_train_retrieval_sees_every_pair_once_per_epoch(shards):
    loader = build_train_loader(shards, task="retrieval", image_size=SIZE, micro_batch_size=4, seed=3)
    assert loader.steps_per_epoch == 6 and len(loader) == 6
    batches = list(loader)
    assert len(batches) == 6
    b = batches[0]
    assert b["pixel_values"].shape == (4, 3, SIZE, SIZE) and b["pixel_values"].dtype == torch.float32
    assert b["image_idx"].dtype == torch.int64 and b["skipped"] == {}
    texts = [t for b in batches for t in b["text"]]
    # Hand rule for the generator's "A Photo: of image i, caption j!": lowercase, ':' and '!' -> space, squeeze.
    expected = [c.lower().replace(":", "").replace("!", "").strip() for c in _all_captions(shards)]
    assert sorted(texts) == sorted(expected)
    # Captions of one image share one image_idx; different images differ.
    by_image = collections.defaultdict(set)
    for batch in batches:
        for text, idx in zip(batch["text"], batch["image_idx"].tolist()):
            by_image[text.split(",")[0]].add(idx)
    assert all(len(v) == 1 for v in by_image.values())
    assert len({next(iter(v)) for v in by_image.values()}) == 12


def test_set_epoch_reshuffles_deterministically(shards):
    kw = dict(task="retrieval", image_size=SIZE, micro_batch_size=4, seed=3)
    a, b = build_train_loader(shards, **kw), build_train_loader(shards, **kw)
    first_a, first_b = list(a), list(b)
    assert [x["text"] for x in first_a] == [x["text"] for x in first_b]
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(first_a, first_b))
    a.set_epoch(1)
    second = _texts(a)
    assert second != [t for x in first_a for t in x["text"]]
    assert sorted(second) == sorted(t for x in first_a for t in x["text"])
    b.set_epoch(1)
    assert _texts(b) == second


def test_vqa_train_gives_one_item_per_question(shards):
    loader = build_train_loader(shards, task="vqa", image_size=SIZE, micro_batch_size=6)
    batches = list(loader)
    qids = [q for b in batches for q in b["question_id"]]
    assert sorted(qids) == sorted(i * 100 + q for i in range(12) for q in range(2))
    b = batches[0]
    assert set(b) >= {"pixel_values", "question", "answers", "question_id", "skipped"}
    assert all(q.startswith("what is in image") and len(a) == 10 for q, a in zip(b["question"], b["answers"]))


def test_eval_retrieval_batch_format(shards):
    loader = build_eval_loader(shards, task="retrieval", image_size=SIZE, batch_size=5)
    batches = list(loader)
    assert [len(b["id"]) for b in batches] == [5, 5, 2] and len(loader) == 3 and loader.num_items == 12
    assert batches[0]["id"][:2] == ["img00000", "img00001"] and batches[0]["image_id"][:2] == [0, 1]
    assert batches[0]["captions"][1] == ["a photo of image 1, caption 0", "a photo of image 1, caption 1"]


@pytest.mark.slow
def test_every_rank_takes_the_same_number_of_steps_with_uneven_shards(tmp_path):
    # 23 images in 6 shards of 4 (last has 3): 46 pairs; ranks read different amounts of data.
    make_image_shards(tmp_path / "u", n=23, per_shard=4, captions=2)
    steps = []
    for rank in range(2):
        loader = build_train_loader(
            tmp_path / "u",
            task="captioning",
            image_size=SIZE,
            micro_batch_size=3,
            rank=rank,
            world_size=2,
            num_workers=2,
            seed=1,
        )
        assert loader.steps_per_epoch == 46 // 6
        steps.append(len(list(loader)))
    assert steps == [7, 7]


@pytest.mark.slow
def test_resume_mid_epoch_replays_the_rest_of_the_epoch_exactly(tmp_path):
    make_image_shards(tmp_path / "r", n=20, per_shard=4, captions=2)
    kw = dict(task="retrieval", image_size=SIZE, micro_batch_size=3, num_workers=2, seed=5)
    full = build_train_loader(tmp_path / "r", **kw)
    full.set_epoch(2)
    reference = list(full)
    resumed = build_train_loader(tmp_path / "r", **kw)
    for start in (3, 4):
        resumed.set_epoch(2, start_step=start)
        rest = list(resumed)
        assert len(rest) == len(reference) - start == len(resumed)
        assert [b["text"] for b in rest] == [b["text"] for b in reference[start:]]
        assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(rest, reference[start:]))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "vqa"])
def test_eval_covers_every_sample_exactly_once_over_2_ranks_x_2_workers(tmp_path, task):
    make_image_shards(tmp_path / "e", n=19, per_shard=4, captions=2, questions=2)  # 5 shards, uneven
    seen, runs = [], []
    for rank in range(2):
        loader = build_eval_loader(
            tmp_path / "e", task=task, image_size=SIZE, batch_size=3, rank=rank, world_size=2, num_workers=2
        )
        batches = list(loader)
        key = "question_id" if task == "vqa" else "id"
        got = [x for b in batches for x in b[key]]
        assert len(got) == loader.num_items and len(batches) == len(loader)
        assert [x for b in loader for x in b[key]] == got  # deterministic order
        seen += got
        runs.append(loader.total_items)
    expected = (
        [i * 100 + q for i in range(19) for q in range(2)] if task == "vqa" else [f"img{i:05d}" for i in range(19)]
    )
    assert sorted(seen) == sorted(expected) and runs == [len(expected)] * 2


def test_fails_early_with_fewer_shards_than_readers(shards):
    with pytest.raises(ValueError, match=r"3 shard\(s\).*2 rank\(s\) x 2 worker\(s\) = 4"):
        build_eval_loader(shards, task="retrieval", image_size=SIZE, batch_size=2, world_size=2, num_workers=2)
    with pytest.raises(ValueError, match="data.resampled"):
        build_train_loader(shards, task="retrieval", image_size=SIZE, micro_batch_size=2, world_size=2, num_workers=2)
    # Resampled training draws shards with replacement: any number of readers is fine.
    loader = build_train_loader(
        shards, task="retrieval", image_size=SIZE, micro_batch_size=2, world_size=4, resampled=True
    )
    assert len(list(loader)) == loader.steps_per_epoch == 3


def test_missing_manifest_says_how_to_make_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="python -m unitrans_ds.make_shards"):
        build_train_loader(tmp_path / "empty", task="retrieval", image_size=SIZE, micro_batch_size=2)


def test_too_small_data_and_mode_mismatch_are_errors(shards):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        build_train_loader(shards, task="retrieval", image_size=SIZE, micro_batch_size=25)
    with pytest.raises(ValueError, match="image shards but the loader was asked for video"):
        build_eval_loader(shards, task="retrieval", image_size=SIZE, batch_size=2, video=True)


def _corrupt(folder: Path) -> tuple[str, set[str]]:
    """Garbage bytes for one image of shard 0; shard 1 cut in the middle of its 3rd image. Returns
    (garbage id, ids lost with the truncated shard)."""
    shard0 = folder / "shard-000000.tar"
    with tarfile.open(shard0) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard0, "w") as tf:
        for m, data in members:
            if m.name == "img00001.jpg":
                data = b"this is not a jpeg" * 10
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    shard1 = folder / "shard-000001.tar"
    with tarfile.open(shard1) as tf:
        third = next(m for m in tf.getmembers() if m.name == "img00006.jpg")
    raw = shard1.read_bytes()
    shard1.write_bytes(raw[: third.offset_data + third.size // 2])
    return "img00001", {"img00006", "img00007"}


def test_corrupt_samples_are_skipped_and_counted_while_the_rest_comes_out(shards, caplog):
    garbage, lost = _corrupt(shards)
    with caplog.at_level(logging.WARNING, logger="unitrans_ds.data.skips"):
        ev = build_eval_loader(shards, task="retrieval", image_size=SIZE, batch_size=4)
        batches = list(ev)
    ids = [x for b in batches for x in b["id"]]
    assert sorted(ids) == sorted({f"img{i:05d}" for i in range(12)} - {garbage} - lost)
    assert batches[-1]["skipped"]["image_decode"] == 1 and batches[-1]["skipped"]["shard_read"] >= 1
    assert any("image_decode" in r.getMessage() and garbage in r.getMessage() for r in caplog.records)

    train = build_train_loader(shards, task="retrieval", image_size=SIZE, micro_batch_size=4, seed=1)
    totals = SkipTotals()
    texts = []
    for batch in train:
        totals.update(batch)
        texts += batch["text"]
    assert len(texts) == train.steps_per_epoch * 4  # still full epochs: short workers top up from the next round
    images = {t.split(",")[0] for t in texts}
    assert images == {f"a photo of image {i}" for i in range(12) if f"img{i:05d}" not in lost | {garbage}}
    assert totals.totals()["image_decode"] >= 1 and totals.totals()["shard_read"] >= 1
    # Counted in what was lost, against the manifest: the bad JPEG once (with its 2 captions), the truncated
    # shard's 2 unread samples (4 captions), however many times each shard was read to top up the epoch.
    summary = loss_summary(totals.ledger, 12, 24, "captions")
    assert summary["shards"] == {
        "shard-000000.tar": {"samples": 1, "pairs": 2, "image_decode": 1},
        "shard-000001.tar": {"samples": 2, "pairs": 4, "shard_read": 2},
    }
    assert (summary["lost_samples"], summary["lost_pairs"], summary["kinds"]) == (
        3,
        6,
        {"image_decode": 1, "shard_read": 2},
    )
    assert "shard-000001.tar: 2 samples, 4 captions (shard_read 2)" in describe_loss(summary)


def test_zero_byte_shard_is_named_with_all_its_samples(shards):
    (shards / "shard-000002.tar").write_bytes(b"")
    train = build_train_loader(shards, task="vqa", image_size=SIZE, micro_batch_size=4, seed=1)
    totals = SkipTotals()
    for batch in train:
        totals.update(batch)
    summary = loss_summary(totals.ledger, 12, 24, "questions")
    assert summary["shards"] == {"shard-000002.tar": {"samples": 4, "pairs": 8, "shard_read": 4}}
    assert summary["lost_fraction"] == 4 / 12


def test_skip_warnings_are_rate_limited_per_kind(caplog):
    with caplog.at_level(logging.WARNING, logger="unitrans_ds.data.skips"):
        counter = SkipCounter(warn_interval=3600)
        for i in range(5):
            counter.skip("image_decode", f"sample {i}")
        counter.skip("shard_read", "shard x")
    assert counter.snapshot() == {"image_decode": 5, "shard_read": 1}
    assert len(caplog.records) == 2
    totals = SkipTotals()
    totals.update({"worker_id": 0, "skipped": {"image_decode": 2}})
    totals.update({"worker_id": 0, "skipped": {"image_decode": 3}})  # cumulative: replaces, not adds
    totals.update({"worker_id": 1, "skipped": {"shard_read": 1}})
    totals.end_epoch()
    totals.update({"worker_id": 0, "skipped": {"image_decode": 1}})
    assert totals.totals() == {"image_decode": 4, "shard_read": 1}


def test_frame_indices_take_one_per_segment():
    assert frame_indices(6, 3, None) == [1, 3, 5]
    assert frame_indices(8, 8, None) == list(range(8))
    assert frame_indices(2, 4, None) == [0, 0, 1, 1]
    for seed in range(50):
        picks = frame_indices(10, 3, random.Random(seed))
        assert 0 <= picks[0] <= 3 and 3 <= picks[1] <= 6 and 6 <= picks[2] <= 9


def test_video_batches_carry_frames_and_times(tmp_path):
    make_video_shards(tmp_path / "v", n=4, per_shard=2, frames=6)
    ev = build_eval_loader(tmp_path / "v", task="retrieval", image_size=SIZE, batch_size=4, num_frames=3)
    (batch,) = list(ev)
    assert batch["pixel_values"].shape == (4, 3, 3, SIZE, SIZE)
    assert batch["frame_times"].tolist() == [[0.5, 1.5, 2.5]] * 4  # segment centres of 6 frames at 0.5 s
    tr = build_train_loader(tmp_path / "v", task="retrieval", image_size=SIZE, micro_batch_size=2, num_frames=3)
    for batch in tr:
        assert batch["pixel_values"].shape == (2, 3, 3, SIZE, SIZE)
        for times in batch["frame_times"].tolist():
            assert times[0] in (0.0, 0.5) and times[1] in (1.0, 1.5) and times[2] in (2.0, 2.5)


def test_frames_of_one_clip_share_crop_flip_and_augmentation(tmp_path):
    sample = video_sample(0, random.Random(0), frames=4)
    for f in range(1, 4):
        sample[f"f{f:03d}.jpg"] = sample["f000.jpg"]  # a still clip
    write_shards(tmp_path / "still", [sample], per_shard=1, frames=4)
    tr = build_train_loader(tmp_path / "still", task="captioning", image_size=SIZE, micro_batch_size=1, num_frames=4)
    for batch in tr:
        clip = batch["pixel_values"][0]
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, 4))


def test_config_entry_points_follow_the_config(shards):
    from unitrans_ds.config.schema import Config

    cfg = Config()
    cfg.task, cfg.model.image_size = "vqa", SIZE
    cfg.data.train_shards, cfg.data.val_shards, cfg.data.test_shards = str(shards), str(shards), None
    cfg.train.micro_batch_size, cfg.eval.batch_size = 8, 10
    train = train_loader_from_config(cfg, rank=0, world_size=1)
    assert train.steps_per_epoch == 24 // 8
    assert next(iter(train))["pixel_values"].shape == (8, 3, SIZE, SIZE)
    val = eval_loader_from_config(cfg, cfg.data.val_shards, rank=0, world_size=1)
    assert val.num_items == 24 and len(val) == 3


def test_a_run_reads_each_manifest_once_and_hands_it_on(shards):
    from unitrans_ds.config import ConfigError
    from unitrans_ds.config.schema import Config
    from unitrans_ds.data.manifest import read_splits

    cfg = Config()
    cfg.model.image_size = SIZE
    cfg.data.train_shards, cfg.data.val_shards, cfg.data.test_shards = str(shards), str(shards), None
    cfg.train.micro_batch_size = 8
    manifests = read_splits(cfg.data)
    assert set(manifests) == {"train", "val"}
    (shards / "manifest.json").unlink()  # from here on, reading it again would fail
    assert read_splits(cfg.data, manifests) == manifests
    train = train_loader_from_config(cfg, rank=0, world_size=1, manifest=manifests["train"])
    assert train.steps_per_epoch == 24 // 8 and len(next(iter(train))["text"]) == 8
    val = eval_loader_from_config(cfg, manifests["val"], rank=0, world_size=1)
    assert val.num_items == 12
    with pytest.raises(ConfigError, match=r"data.train_shards: .* holds no manifest.json"):
        read_splits(cfg.data)


def test_shards_with_nothing_usable_fail_instead_of_looping_forever(tmp_path):
    make_image_shards(tmp_path / "g", n=4, per_shard=2, captions=1)
    for tar in (tmp_path / "g").glob("*.tar"):
        with tarfile.open(tar) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
        with tarfile.open(tar, "w") as tf:
            for m, data in members:
                if m.name.endswith(".jpg"):
                    data = b"garbage" * 20
                    m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
    loader = build_train_loader(tmp_path / "g", task="retrieval", image_size=SIZE, micro_batch_size=2)
    with pytest.raises(RuntimeError, match="in a row could not be decoded"):
        list(loader)
    for tar in (tmp_path / "g").glob("*.tar"):
        tar.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(RuntimeError, match="gave no valid sample"):
        list(build_train_loader(tmp_path / "g", task="retrieval", image_size=SIZE, micro_batch_size=2))


def test_device_option_gives_the_same_batches(shards):
    kw = dict(task="retrieval", image_size=SIZE, micro_batch_size=4, seed=2)
    plain = next(iter(build_train_loader(shards, **kw)))
    on_device = next(iter(build_train_loader(shards, device="cpu", **kw)))
    assert torch.equal(plain["pixel_values"], on_device["pixel_values"])


class _Stacks(torch.utils.data.IterableDataset):
    """Yields (stack_pixels of some arrays, np.stack of the same arrays, whether the first is in shared memory)."""

    def __iter__(self):
        rng = np.random.default_rng(0)
        for _ in range(2):
            arrays = [rng.integers(0, 256, (5, 6, 3), dtype=np.uint8) for _ in range(4)]
            out = stack_pixels(arrays)
            yield out, torch.from_numpy(np.stack(arrays)), out.is_shared()


def test_pixels_are_stacked_into_shared_memory_in_a_worker_and_equal_np_stack():
    batches = list(torch.utils.data.DataLoader(_Stacks(), batch_size=None, num_workers=1))
    assert len(batches) == 2
    for got, want, shared in batches:
        assert shared and got.dtype == torch.uint8 and torch.equal(got, want)
    assert not stack_pixels([np.zeros((2, 2, 3), np.uint8)]).is_shared()  # the main process keeps plain memory
