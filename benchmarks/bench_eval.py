"""Benchmark the evaluators on the BLIP-base architecture (random weights, CPU), in one run of a few minutes.

    python benchmarks/bench_eval.py [--images 8] [--image_size 384] [--k_test 2] [--repeats 3]

1. Retrieval evaluation throughput: `RetrievalTask.evaluate` (ViT, text encoder, ITC, ITM re-ranking of the top
   k_test per query, metrics, output files) on synthetic `shapes` shards at `--image_size` px with 4 captions per
   image, a UniTrans model (VCRA + QASN) merged for inference. Reports queries/s (image + text queries) and ITM
   pairs/s, plus the wall time of each step.
2. Merged vs unmerged inference: the same ViT forward (`image_embed`) and ITM forward (`itm_logits`) timed for the
   frozen model, UniTrans with VCRA merged into the weights (QASN still runs), and UniTrans unmerged. Runs are
   interleaved, on one thread, in CPU seconds (not wall time), because the CPU may be shared. Goal: merged / frozen = 1.00 within noise.
3. ITM re-ranking of one image's candidates (`--pairs` texts, real shard captions): BLIP's way (the image's tokens
   repeated per pair, texts padded to 35 tokens) against the evaluator's `itm_match_score` (the image once,
   broadcast by the cross-attention; texts cut to their longest), interleaved, 1 thread, CPU seconds, with the
   largest difference of the scores.

The defaults fit a 2-core CPU in about 3 minutes; on a GPU or a bigger CPU raise --images and --k_test (SPEC
values: k_test 256 COCO, 128 Flickr30K).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_json_arg, interleaved, machine_line, ratio, write_results  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import BlipConfig, BlipForImageTextRetrieval  # noqa: E402

from unitrans_ds import make_shards  # noqa: E402
from unitrans_ds.adapters import prepare_model  # noqa: E402
from unitrans_ds.cli import ArgumentParser  # noqa: E402
from unitrans_ds.config import build_config  # noqa: E402
from unitrans_ds.data.loaders import eval_loader_from_config  # noqa: E402
from unitrans_ds.evaluation import inference_mode  # noqa: E402
from unitrans_ds.evaluation.retrieval import TokenStore, itm_match_score, token_store_estimate  # noqa: E402
from unitrans_ds.models.tiny import demo_tokenizer  # noqa: E402
from unitrans_ds.tasks import Dist, build_task  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images in the retrieval pool (4 captions each)")
    p.add_argument("--image_size", type=int, default=384, help="image side in pixels (BLIP retrieval: 384)")
    p.add_argument("--k_test", type=int, default=2, help="ITM re-ranked candidates per query")
    p.add_argument("--rank", type=int, default=64, help="VCRA / QASN rank r")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant in the merged/unmerged test")
    p.add_argument("--timing_images", type=int, default=1, help="images per ViT forward in the merged/unmerged test")
    p.add_argument("--timing_pairs", type=int, default=4, help="pairs per ITM forward in the merged/unmerged test")
    p.add_argument("--pairs", type=int, default=16, help="texts per ITM forward in the re-ranking test (k_test)")
    add_json_arg(p, __file__)
    return p.parse_args(argv)


def build(method: str, args: argparse.Namespace, shards: Path):
    """A BLIP-base retrieval task with random weights (seed 0), prepared for `method`, adapters randomized."""
    cfg = build_config(
        {
            "task": "retrieval",
            "method": {"name": method, "rank": args.rank},
            "model": {"image_size": args.image_size},
            "data": {"test_shards": str(shards)},
            "eval": {"k_test": args.k_test, "batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(BlipConfig(vision_config={"image_size": args.image_size})).eval()
    prepare_model(model, cfg.method)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the identity init, so merging really changes the weights
        for name, p in model.named_parameters():
            if p.requires_grad and ("vcra_b" in name or "qasn_b" in name):
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return build_task(cfg, model, demo_tokenizer()), cfg


def bench_retrieval(args: argparse.Namespace, shards: Path, out: Path) -> dict:
    task, cfg = build("unitrans", args, shards)
    loader = eval_loader_from_config(cfg, shards, rank=0, world_size=1)
    start, cpu = time.perf_counter(), time.process_time()
    metrics = task.evaluate(loader, Dist(0, 1), out, merge=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    queries = metrics["n_images"] + metrics["n_texts"]
    pairs = metrics["n_itm_pairs"]
    print(
        f"\n[retrieval] {int(metrics['n_images'])} images x 4 captions at {args.image_size} px, k_test {args.k_test}: "
        f"{wall:.1f} s, {queries / wall:.2f} queries/s ({queries:.0f} image + text queries), "
        f"{pairs:.0f} ITM pairs ({pairs / wall:.2f} pairs/s), r_mean {metrics['r_mean']:.1f} (random weights); "
        f"{cpu:.1f} CPU s on {torch.get_num_threads()} threads"
    )
    vc = task.model.config.vision_config
    tokens = (args.image_size // vc.patch_size) ** 2 + 1
    estimate = token_store_estimate(5000, tokens, vc.hidden_size)
    print(f"[retrieval] at COCO 5k test scale: {estimate} (one rank)")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "queries_per_s": queries / wall,
        "itm_pairs_per_s": pairs / wall,
        "metrics": metrics,
        "coco5k_token_store": str(estimate),
    }


def bench_merge(args: argparse.Namespace, shards: Path) -> dict:
    frozen, _ = build("frozen", args, shards)
    adapted, _ = build("unitrans", args, shards)
    g = torch.Generator().manual_seed(2)
    pix = torch.randn(args.timing_images, 3, args.image_size, args.image_size, generator=g)
    ids = torch.randint(1000, 2000, (args.timing_pairs, 35), generator=g)
    mask = torch.ones_like(ids)

    def forward(task) -> tuple[float, float]:
        start = time.process_time()
        tokens, _ = task.image_embed(pix)
        mid = time.process_time()
        task.itm_logits(tokens[:1].expand(args.timing_pairs, -1, -1), ids, mask)
        return mid - start, time.process_time() - mid

    variants = [("frozen", frozen, False), ("merged", adapted, True), ("unmerged", adapted, False)]
    # One thread and CPU time, not wall time: other processes on a shared CPU then cannot move the numbers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for _, task, merge in variants:  # warm-up, not timed
        with inference_mode(task, merge):
            forward(task)
    for _ in tqdm(range(args.repeats), desc="merged vs unmerged"):
        for name, task, merge in variants:  # interleaved, so load from other processes hits every variant alike
            with inference_mode(task, merge):
                times[name].append(forward(task))
    torch.set_num_threads(threads)
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    spread = {k: max(t[0] + t[1] for t in v) / min(t[0] + t[1] for t in v) - 1 for k, v in times.items()}
    print(
        f"\n[merge] CPU seconds on 1 thread, median of {args.repeats}: ViT on {args.timing_images} image(s) at "
        f"{args.image_size} px, ITM on {args.timing_pairs} pairs"
    )
    for k, (vit, itm) in med.items():
        print(f"[merge] {k:<9} ViT {vit:.3f} s  ITM {itm:.3f} s  (max/min - 1 over repeats: {100 * spread[k]:.1f}%)")
    for k in ("merged", "unmerged"):
        vit, itm = med[k][0] / med["frozen"][0], med[k][1] / med["frozen"][1]
        total = sum(med[k]) / sum(med["frozen"])
        print(f"[merge] {k} / frozen: ViT {vit:.3f}, ITM {itm:.3f}, both {total:.3f} (ITM includes QASN, kept)")
    return {
        "cpu_s_vit_itm": times,
        "ratio_vs_frozen": {k: sum(med[k]) / sum(med["frozen"]) for k in ("merged", "unmerged")},
    }


def bench_itm_rerank(args: argparse.Namespace, shards: Path) -> dict:
    """BLIP's per-pair ITM forward against `itm_match_score` (one image broadcast, texts cut), same inputs."""
    task, cfg = build("unitrans", args, shards)
    loader = eval_loader_from_config(cfg, shards, rank=0, world_size=1)
    captions = [c for batch in loader for caps in batch["captions"] for c in caps]
    texts = (captions * (args.pairs // len(captions) + 1))[: args.pairs]
    g = torch.Generator().manual_seed(3)
    pix = torch.randn(1, 3, args.image_size, args.image_size, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with inference_mode(task, True):
        tokens, _ = task.image_embed(pix)
        store = TokenStore(chunk=1, model_dtype=task.dtype)
        store.add(tokens)
        store.finish()
        ids, mask, _ = task.text_embed(texts)  # padded to the fixed length, as the evaluator gathers them
        out: dict[str, torch.Tensor] = {}

        def blip() -> None:  # BLIP's evaluator: the image's tokens repeated per pair, the texts at full length
            each = store.take(torch.zeros(len(texts), dtype=torch.long), task.device, task.dtype)
            out["blip"] = task.itm_logits(each, ids, mask)[:, 1].float()

        def ours() -> None:
            out["ours"] = itm_match_score(task, store, 0, ids, mask)

        times = interleaved({"blip": blip, "ours": ours}, args.repeats, warmup=1, desc="ITM re-ranking")
    torch.set_num_threads(threads)
    r = ratio(times["ours"], times["blip"], "cpu")
    diff = float((out["ours"] - out["blip"]).abs().max())
    length = int(mask.sum(1).max())
    print(
        f"\n[itm] one image x {len(texts)} texts (longest {length} of {ids.shape[1]} tokens) at {args.image_size} px, "
        f"1 thread, CPU s median of {args.repeats}: BLIP's way {times['blip'].median('cpu'):.3f}, evaluator "
        f"{times['ours'].median('cpu'):.3f}; evaluator / BLIP {r}; largest score difference {diff:.2e}"
    )
    return {
        "pairs": len(texts),
        "longest_text_tokens": length,
        "cpu_s": {k: v.cpu for k, v in times.items()},
        "ratio_evaluator_over_blip": vars(r),
        "max_abs_score_difference": diff,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "test"
        make_shards.main(
            ["--format", "shapes", "--domain", "b", "--split", "test", "--num_samples", str(args.images),
             "--shard_size", str(args.images), "--image_size", str(args.image_size), "--workers", "1",
             "--out", str(shards), "--no_progress"]
        )  # fmt: skip
        result = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}}
        result["retrieval"] = bench_retrieval(args, shards, Path(tmp) / "out")
        result["merge"] = bench_merge(args, shards)
        result["itm_rerank"] = bench_itm_rerank(args, shards)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
