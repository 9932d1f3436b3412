"""Evaluators on tiny BLIP and real shapes shards: retrieval (ITM re-ranking, 2 gloo ranks == 1 rank, k_test below
the pool), merged == unmerged inference, captioning through pycocoevalcap, VQA rank/generate, video, no ground truth."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.forked_ranks import spawn_ranks
from helpers.shardgen import image_sample, write_shards

from unitrans_ds import make_shards
from unitrans_ds.adapters import prepare_model
from unitrans_ds.collectives import RemoteError, all_gather_objects, all_gather_rows, on_rank0
from unitrans_ds.config import build_config
from unitrans_ds.data.loaders import build_eval_loader, eval_loader_from_config
from unitrans_ds.data.text import normalize_answer_text, pre_caption
from unitrans_ds.evaluation import (
    NoGroundTruthError,
    TokenStore,
    evaluate,
    inference_mode,
)
from unitrans_ds.evaluation.vqa import distinct_images, iter_shard_meta
from unitrans_ds.metrics.retrieval import retrieval_metrics
from unitrans_ds.metrics.vqa import vqa_accuracy
from unitrans_ds.models.build import load_backbone
from unitrans_ds.tasks import Dist, build_task

SIZE = 32


def eval_loader(cfg, folder, rank: int, world: int):
    return eval_loader_from_config(cfg, folder, rank=rank, world_size=world)


CAPTION_KEYS = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}


def _shapes(out: Path, split: str, n: int, shard_size: int, seed: int, task_set: str = "image") -> Path:
    folder = out / split
    args = ["--format", "shapes", "--domain", "b", "--split", split, "--num-samples", str(n), "--seed", str(seed),
            "--shard-size", str(shard_size), "--task-set", task_set, "--image-size", str(SIZE), "--frames", "4",
            "--workers", "1", "--out", str(folder), "--no-progress"]  # fmt: skip
    assert make_shards.main(args) == 0
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_shards")
    _shapes(root, "train", 16, 8, seed=0)
    _shapes(root, "test", 12, 3, seed=2)  # 4 shards: 2 ranks x 2 workers or 4 ranks
    _shapes(root / "video", "test", 4, 2, seed=3, task_set="video")
    return root


def make_cfg(shards: Path, task: str, method: str = "unitrans", **over):
    data = {
        "task": task,
        "method": {"name": method, "rank": 4},
        "model": {"init_from": "tiny", "image_size": SIZE},
        "data": {"train_shards": str(shards / "train"), "test_shards": str(shards / "test"), "num_frames": 4},
        "eval": {"k_test": 4, "batch_size": 5, "num_beams": 2, "max_length": 10, "min_length": 3, "vqa_k_test": 4},
    }
    return build_config(data, [f"{k}={v}" for k, v in over.items()])


def randomize(model: torch.nn.Module, seed: int = 7, std: float = 0.3) -> None:
    """Move every adapter away from its identity init, so adapted outputs differ from the frozen model's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and any(k in name for k in ("vcra_b", "qasn_b", "lora_B", "vcra_a")):
                p.add_(torch.randn(p.shape, generator=g) * std)


def spread_vision(model: torch.nn.Module, seed: int = 3, std: float = 0.1) -> None:
    """BLIP's vision config initialises the ViT with std 1e-10, so a random tiny ViT gives every image nearly the
    same features and every score ties to 1e-7 (rounding noise would then decide the rankings). Re-draw the ViT
    matrices so that images differ, as they do in a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.vision_model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make_task(cfg, rank: int = 0, world: int = 1, random_adapter: bool = True):
    bb = load_backbone(cfg.model, cfg.task, seed=0)
    spread_vision(bb.model)
    prepare_model(bb.model, cfg.method)
    if random_adapter:
        randomize(bb.model)
    return build_task(cfg, bb.model, bb.tokenizer, rank, world)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- retrieval
def brute_force_scores(task, loader, k: int, beta: float, itm_score: str = "logit"):
    """ITM for EVERY pair through the task's own helpers, then BLIP's rule: ITM + beta*ITC on the ITC top-k of each
    query, the ITM term being the raw match logit itm_head(...)[:, 1] (or its softmax probability with `prob`),
    -inf elsewhere. Images in sorted-id order, texts image by image; tokens rounded to fp16 as stored.
    One big batch here against the evaluator's chunks: agreement also shows that batching does not matter."""
    items = []
    with torch.no_grad():
        task.eval()
        for b in loader:
            tokens, feat = task.image_embed(b["pixel_values"])
            for i in range(len(b["id"])):
                items.append((b["id"][i], b["captions"][i], tokens[i].half().float(), feat[i]))
    items.sort(key=lambda x: x[0])
    texts = [c for it in items for c in it[1]]
    txt2img = np.array([g for g, it in enumerate(items) for _ in it[1]])
    img2txt = [list(np.flatnonzero(txt2img == g)) for g in range(len(items))]
    unique = list(dict.fromkeys(texts))  # identical captions must tie exactly, as in the evaluator
    canon = torch.tensor([unique.index(t) for t in texts])
    with torch.no_grad():
        ids, mask, tfeat = task.text_embed(unique)
        ifeat = torch.stack([it[3] for it in items])
        itc = (ifeat @ tfeat.t())[:, canon]
        itm = torch.empty_like(itc)
        for g, it in enumerate(items):
            tok = it[2].unsqueeze(0).expand(len(unique), -1, -1)
            logits = task.itm_logits(tok, ids, mask)
            itm[g] = (logits.softmax(-1) if itm_score == "prob" else logits)[:, 1][canon]
    final = itm + beta * itc
    s_i2t = torch.full_like(itc, float("-inf"))
    top = itc.topk(min(k, itc.shape[1]), dim=1).indices
    s_i2t.scatter_(1, top, final.gather(1, top))
    s_t2i = torch.full_like(itc.t(), float("-inf"))
    top = itc.t().topk(min(k, itc.shape[0]), dim=1).indices
    s_t2i.scatter_(1, top, final.t().gather(1, top))
    return s_i2t.numpy(), s_t2i.numpy(), img2txt, txt2img


@pytest.mark.parametrize(("k_test", "itm_score"), [(3, None), (1000, None), (3, "prob")])
def test_retrieval_matches_brute_force_itm_rerank(shards, tmp_path, k_test, itm_score):
    """k_test below the pool re-scores only the ITC top-k; k_test above it re-scores the whole pool. The default
    ITM term is the raw logit (BLIP/LAVIS); `eval.itm_score=prob` adds the match probability instead."""
    over = {"eval.k_test": k_test, "eval.itm_beta": 0.5, **({"eval.itm_score": itm_score} if itm_score else {})}
    cfg = make_cfg(shards, "retrieval", **over)
    task = make_task(cfg)
    loader = eval_loader(cfg, shards / "test", 0, 1)
    metrics = task.evaluate(loader, Dist(0, 1), tmp_path)
    s_i2t, s_t2i, img2txt, txt2img = brute_force_scores(task, loader, k_test, 0.5, itm_score or "logit")
    want = retrieval_metrics(s_i2t, s_t2i, img2txt, txt2img)
    assert {k: metrics[k] for k in want} == pytest.approx(want)
    assert metrics["n_images"] == 12 and metrics["n_texts"] == len(txt2img)
    k = min(k_test, len(txt2img))
    for row in read_jsonl(tmp_path / "i2t_topk.jsonl"):
        q = row["query"]
        assert len(row["texts"]) == k
        want_order = np.argsort(-s_i2t[q], kind="stable")[:k]
        np.testing.assert_allclose(row["scores"], s_i2t[q][want_order], atol=2e-4)
    for row in read_jsonl(tmp_path / "t2i_topk.jsonl"):
        assert len(row["images"]) == min(k_test, 12)
        finite = np.isfinite(row["scores"]).sum()
        assert finite == min(k_test, 12)
    index = json.loads((tmp_path / "retrieval_index.json").read_text())
    assert [im["id"] for im in index["images"]] == sorted(im["id"] for im in index["images"])
    assert [t["image"] for t in index["texts"]] == txt2img.tolist()


def test_retrieval_prints_token_store_estimate(shards, tmp_path, capsys):
    cfg = make_cfg(shards, "retrieval", **{"eval.feature_chunk": 5})
    task = make_task(cfg)
    task.evaluate(eval_loader(cfg, shards / "test", 0, 1), Dist(0, 1), tmp_path)
    tokens = (SIZE // 16) ** 2 + 1
    mib = 12 * tokens * 64 * 2 / 2**20
    assert f"image token store: 12 images x {tokens} tokens x 64 x 2 bytes = {mib:.1f} MiB" in capsys.readouterr().out


def test_token_store_takes_rows_across_chunks_in_half_precision():
    store = TokenStore(chunk=3, model_dtype=torch.float32)
    data = torch.randn(8, 5, 4)
    store.add(data[:2])
    store.add(data[2:7])
    store.add(data[7:])
    store.finish()
    assert len(store) == 8 and [len(c) for c in store.chunks] == [3, 3, 2]
    assert all(c.dtype == torch.float16 for c in store.chunks)
    rows = torch.tensor([7, 0, 4, 4, 2])
    got = store.take(rows, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(got, data[rows].half().float())
    assert store.nbytes == 8 * 5 * 4 * 2
    big = TokenStore(chunk=4, model_dtype=torch.float32)
    big.add(torch.ones(2, 1, 1))
    big.add(torch.full((2, 1, 1), 1e6))  # beyond fp16's range: the chunk falls back to bf16
    assert big.finish().chunks[0].dtype == torch.bfloat16
    got = big.take(torch.arange(4), torch.device("cpu"), torch.float32).flatten()
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 1e6, 1e6]), rtol=1e-2, atol=0)


# ------------------------------------------------------------------------------------------- merged == unmerged
@pytest.mark.parametrize("method", ["unitrans", "lora"])
def test_merged_and_unmerged_inference_agree_and_weights_come_back_exactly(shards, tmp_path, method):
    cfg = make_cfg(shards, "retrieval", method)
    task = make_task(cfg)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    loader = eval_loader(cfg, shards / "test", 0, 1)
    with inference_mode(task, merge=True) as merged:
        assert merged > 0
        inside = {k: v.clone() for k, v in task.model.state_dict().items()}
    changed = [k for k in before if not torch.equal(before[k], inside[k])]
    assert changed, "merging folded nothing into the weights"
    m_merged = task.evaluate(loader, Dist(0, 1), tmp_path / "merged", merge=True)
    m_plain = task.evaluate(loader, Dist(0, 1), tmp_path / "plain", merge=False)
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored bit for bit"
    assert task.training  # train mode restored (make_task's model starts in train mode)
    a, b = read_jsonl(tmp_path / "merged" / "i2t_topk.jsonl"), read_jsonl(tmp_path / "plain" / "i2t_topk.jsonl")
    np.testing.assert_allclose([r["scores"] for r in a], [r["scores"] for r in b], atol=1e-4)
    assert m_merged["r_mean"] == m_plain["r_mean"]
    # The adapters matter (so the comparison above could fail): the frozen model embeds differently.
    frozen = make_task(make_cfg(shards, "retrieval", "frozen"), random_adapter=False)
    batch = next(iter(loader))
    with inference_mode(task, merge=False), inference_mode(frozen, merge=False):
        texts = [c for caps in batch["captions"] for c in caps]
        assert not torch.allclose(task.text_embed(texts)[2], frozen.text_embed(texts)[2], atol=1e-3)
        assert not torch.allclose(
            task.image_embed(batch["pixel_values"])[1], frozen.image_embed(batch["pixel_values"])[1], atol=1e-3
        )


def test_merge_is_undone_when_evaluation_raises(shards):
    cfg = make_cfg(shards, "retrieval")
    task = make_task(cfg)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), inference_mode(task, merge=True):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in task.model.state_dict().items())
    assert task.training


# ----------------------------------------------------------------------------------------- 2 gloo ranks == 1
def _rank_worker(rank: int, world: int, init_file: str, shards: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = make_cfg(Path(shards), "retrieval")
        task = make_task(cfg, rank, world)
        loader = eval_loader(cfg, Path(shards) / "test", rank, world)
        metrics = task.evaluate(loader, Dist(rank, world), Path(out) / "eval")
        # The gather helpers on uneven data, and a rank-0 failure seen by every rank.
        rows = all_gather_rows(torch.full((rank * 2 + 1, 2), float(rank)), world)
        objs = all_gather_objects({"rank": rank}, world)
        try:
            on_rank0(lambda: 1 / 0, rank, world)
            err = None
        except (ZeroDivisionError, RemoteError) as e:
            err = type(e).__name__
        torch.save({"metrics": metrics, "rows": rows, "objs": objs, "err": err}, os.path.join(out, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_give_exactly_the_one_rank_metrics(shards, tmp_path):
    cfg = make_cfg(shards, "retrieval")
    one = make_task(cfg).evaluate(eval_loader(cfg, shards / "test", 0, 1), Dist(0, 1), tmp_path / "one")
    with tempfile.TemporaryDirectory() as d:
        spawn_ranks(_rank_worker, (2, os.path.join(d, "init"), str(shards), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"r{k}.pt") for k in range(2))
    assert r0["metrics"] == one and r1["metrics"] == one
    a = read_jsonl(tmp_path / "one" / "t2i_topk.jsonl")
    b = read_jsonl(tmp_path / "eval" / "t2i_topk.jsonl")
    assert [r["images"] for r in a] == [r["images"] for r in b]
    np.testing.assert_allclose([r["scores"] for r in a], [r["scores"] for r in b], atol=1e-5)
    torch.testing.assert_close(r1["rows"], torch.tensor([[0.0, 0.0]] + [[1.0, 1.0]] * 3))
    assert r0["objs"] == [{"rank": 0}, {"rank": 1}]
    assert (r0["err"], r1["err"]) == ("ZeroDivisionError", "RemoteError")


# ---------------------------------------------------------------------------------------------------- captioning
def test_captioning_writes_coco_results_of_generate_and_scores_them(shards, tmp_path, capsys):
    cfg = make_cfg(shards, "captioning")
    task = make_task(cfg)
    metrics = evaluate(task, cfg, shards / "test", 0, 1, tmp_path)
    assert set(metrics) >= CAPTION_KEYS and all(isinstance(v, float) for v in metrics.values())
    assert 0.0 <= metrics["Bleu_1"] <= 1.0 and metrics["n_images"] == 12
    if "SPICE" not in metrics:
        assert "SPICE not computed" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["CIDEr"] == metrics["CIDEr"]
    # One result per image, with the caption that beam search gives for that image.
    loader = build_eval_loader(shards / "test", task="captioning", image_size=SIZE, batch_size=12)
    (batch,) = list(loader)
    with inference_mode(task):
        direct = dict(zip(batch["image_id"], task.generate(batch["pixel_values"])))
    got = {r["image_id"]: r["caption"] for r in json.loads((tmp_path / "caption_results.json").read_text())}
    assert got == direct and all(got.values())
    # References are aligned with their images: the shard json's captions, normalized as BLIP does, uncut.
    refs: dict = {}
    for a in json.loads((tmp_path / "caption_references.json").read_text())["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    for m in iter_shard_meta(shards / "test"):
        assert [pre_caption(c, 10_000) for c in m["captions"]] == refs[m["image_id"]]


# ----------------------------------------------------------------------------------------------------------- VQA
def _ground_truth(folder: Path) -> dict:
    return {
        q["question_id"]: {"answers": [normalize_answer_text(a) for a in q["answers"]], "answer_type": q["answer_type"]}
        for m in iter_shard_meta(folder)
        for q in m["questions"]
    }


def test_vqa_rank_inference_uses_the_train_answer_list_and_official_accuracy(shards, tmp_path):
    cfg = make_cfg(shards, "vqa", **{"eval.batch_size": 20})
    task = make_task(cfg)
    metrics = evaluate(task, cfg, shards / "test", 0, 1, tmp_path)
    counts = Counter(
        normalize_answer_text(a)
        for m in iter_shard_meta(shards / "train")
        for q in m["questions"]
        for a in q["answers"]
    )
    answer_list = json.loads((tmp_path / "answer_list.json").read_text())
    assert answer_list == sorted(counts, key=lambda a: (-counts[a], a))
    results = json.loads((tmp_path / "vqa_results.json").read_text())
    gt = _ground_truth(shards / "test")
    assert sorted(r["question_id"] for r in results) == sorted(gt)
    assert all(r["answer"] in answer_list for r in results)
    want = vqa_accuracy(results, gt)
    assert metrics["accuracy"] == pytest.approx(want["overall"]) and metrics["overall"] == metrics["accuracy"]
    for t, v in want["per_answer_type"].items():
        assert metrics["acc_" + t.replace("/", "_")] == pytest.approx(v)
    assert metrics["n_questions"] == len(gt)


def test_vqa_encodes_each_distinct_image_once_with_the_same_answers(shards):
    """Evaluation batches hold one item per question; the ViT runs once per distinct sample id and the question
    states are the same as with every question's own copy of its image."""
    cfg = make_cfg(shards, "vqa", **{"eval.batch_size": 20})
    task = make_task(cfg)
    batch = next(iter(eval_loader(cfg, shards / "test", 0, 1)))
    pixels, image_of = distinct_images(batch)
    assert len(pixels) == len(set(batch["id"])) < len(batch["id"])  # the fixture has several questions per image
    assert torch.equal(pixels[image_of], batch["pixel_values"])  # every question keeps its own image
    # only neighbours with the same id merge, and an item without an id never does
    fake = {"id": ["a", "a", "None", "None", "b", "a"], "pixel_values": torch.arange(6)}
    rows, index = distinct_images(fake)
    assert rows.tolist() == [0, 2, 3, 4, 5] and index.tolist() == [0, 0, 1, 2, 3, 4]
    with torch.no_grad():
        task.eval()
        states, mask = task.encode_questions(pixels, batch["question"], image_of)
        want_states, want_mask = task.encode_questions(batch["pixel_values"], batch["question"])
        answers = ["yes", "no", "one", "two", "three", "red", "blue"]
        got = task.rank_answers(pixels, batch["question"], answers, 3, image_of)
        want = task.rank_answers(batch["pixel_values"], batch["question"], answers, 3)
    torch.testing.assert_close(states, want_states, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, want_mask) and got == want


def test_vqa_answer_list_file_and_generate_mode(shards, tmp_path):
    listed = tmp_path / "answers.json"
    listed.write_text(json.dumps(["yes", "no", "two"]))
    cfg = make_cfg(shards, "vqa", **{"data.answer_list": str(listed), "eval.batch_size": 20})
    evaluate(make_task(cfg), cfg, shards / "test", 0, 1, tmp_path / "rank")
    assert {r["answer"] for r in json.loads((tmp_path / "rank" / "vqa_results.json").read_text())} <= {
        "yes",
        "no",
        "two",
    }

    cfg = make_cfg(shards, "vqa", **{"eval.vqa_inference": "generate", "eval.batch_size": 20})
    metrics = evaluate(make_task(cfg), cfg, shards / "test", 0, 1, tmp_path / "gen")
    results = json.loads((tmp_path / "gen" / "vqa_results.json").read_text())
    assert len(results) == len(_ground_truth(shards / "test")) and not (tmp_path / "gen" / "answer_list.json").exists()
    assert metrics["accuracy"] == pytest.approx(vqa_accuracy(results, _ground_truth(shards / "test"))["overall"])


def test_vqa_without_answer_list_or_training_split_says_what_to_set(shards, tmp_path):
    cfg = make_cfg(shards, "vqa", **{"data.train_shards": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="needs an answer list.*data.answer_list"):
        evaluate(make_task(cfg), cfg, shards / "test", 0, 1, tmp_path)


def test_video_retrieval_and_video_qa_exact_match(shards, tmp_path):
    video = shards / "video" / "test"
    cfg = make_cfg(shards, "retrieval", video="true")
    m = evaluate(make_task(cfg), cfg, video, 0, 1, tmp_path / "ret")
    assert m["n_images"] == 4 and 0 <= m["r_mean"] <= 100
    cfg = make_cfg(shards, "vqa", video="true", **{"data.train_shards": str(video)})
    m = evaluate(make_task(cfg), cfg, video, 0, 1, tmp_path / "qa")
    assert "accuracy" in m and not any(k.startswith("acc_") for k in m)
    results = {r["question_id"]: r["answer"] for r in json.loads((tmp_path / "qa" / "vqa_results.json").read_text())}
    gt = {qid: Counter(e["answers"]).most_common(1)[0][0] for qid, e in _ground_truth(video).items()}
    assert m["accuracy"] == pytest.approx(100 * np.mean([results[q] == gt[q] for q in gt]))


# ------------------------------------------------------------------------------------------- no ground truth
@pytest.fixture(scope="module")
def no_gt_shards(tmp_path_factory) -> Path:
    import random

    folder = tmp_path_factory.mktemp("no_gt") / "test"
    rng = random.Random(0)
    samples = []
    for i in range(4):
        s = image_sample(i, rng, captions=0, questions=2, size=(SIZE, SIZE))
        meta = json.loads(s["json"])
        for q in meta["questions"]:
            q["answers"] = []
        s["json"] = json.dumps(meta).encode()
        samples.append(s)
    write_shards(folder, samples, per_shard=2)
    return folder


def test_vqa_without_answers_writes_results_then_fails_clearly(shards, no_gt_shards, tmp_path):
    cfg = make_cfg(shards, "vqa", **{"eval.vqa_inference": "generate"})
    with pytest.raises(NoGroundTruthError, match="has no answers .ground truth.*official server"):
        make_task(cfg).evaluate(eval_loader(cfg, no_gt_shards, 0, 1), Dist(0, 1), tmp_path)
    assert len(json.loads((tmp_path / "vqa_results.json").read_text())) == 8


def test_captioning_without_captions_fails_clearly(shards, no_gt_shards, tmp_path):
    cfg = make_cfg(shards, "captioning")
    with pytest.raises(NoGroundTruthError, match="no reference captions"):
        make_task(cfg).evaluate(eval_loader(cfg, no_gt_shards, 0, 1), Dist(0, 1), tmp_path)
    assert len(json.loads((tmp_path / "caption_results.json").read_text())) == 4


def test_retrieval_without_captions_fails_clearly(shards, no_gt_shards, tmp_path):
    cfg = make_cfg(shards, "retrieval")
    with pytest.raises(ValueError, match="have no caption"):
        make_task(cfg).evaluate(eval_loader(cfg, no_gt_shards, 0, 1), Dist(0, 1), tmp_path)
