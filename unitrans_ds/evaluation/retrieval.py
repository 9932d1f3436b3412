"""Image-text (and video-text) retrieval evaluation: ITC for every pair, ITM re-ranking of the top k_test (SPEC 5).

Called by `evaluation.runner.evaluate` (trainer and `launchers/eval.py`), on every rank, with the task and this
rank's eval loader. Steps:

1. Encode this rank's images (or videos): ITC features, and vision token features kept in a `TokenStore` (half
   precision on CPU, in chunks of `eval.feature_chunk` images); encode their captions (ITC features and the
   fixed-length token ids the ITM head needs).
2. Gather the ITC features, ids and masks of every rank, and put them in the global order: images sorted by
   sample id (an order that does not depend on the number of ranks or workers), and the texts of every image in
   that order, numbered 0..M-1. `img2txt` and `txt2img` follow from it.
3. Every rank computes the same ITC similarity matrix [N, M] and the top-k_test candidates of every query in both
   directions. The ITM head then re-scores each candidate pair (image, text) on the rank that holds the image's
   tokens: rank r scores the image queries it holds (its slice of the image-to-text queries, as BLIP splits them)
   and, for the text queries, the candidates that are its images. A pair picked in both directions is scored once.
   So the token features are never gathered: a rank keeps only its own images' tokens (1/world of the split).
4. The ITM probabilities ("match" = softmax(logits)[:, 1], as BLIP's `itm_head(...)[:, 1]`) are gathered; rank 0
   fills the final matrices (ITM + `eval.itm_beta` * ITC for the top-k, -inf elsewhere), computes the metrics,
   writes the per-query rankings, and shares the metrics with every rank.

The token store is the memory peak: `n images x L tokens x D x 2 bytes` per rank, printed before the encoding.
All arithmetic on stored tokens happens in the model's dtype after the per-batch conversion (fp32 on CPU, where
half-precision matmuls are slow or missing); only storage is half.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.loaders import EvalLoader
from ..metrics.retrieval import retrieval_metrics, topk_rankings
from ..tasks.retrieval import RetrievalTask
from .distributed import all_gather_objects, all_gather_rows, on_rank0
from .inference import inference_mode

logger = logging.getLogger(__name__)

_HALF_MAX = torch.finfo(torch.float16).max


class TokenStore:
    """Vision token features [n, L, D] of this rank's images, kept in half precision on CPU in chunks.

    fp16 keeps 3 more mantissa bits than bf16, so it is the store dtype unless the model runs in bf16 or a chunk
    holds values beyond fp16's range (then that chunk is stored in bf16). `take` returns rows in store order.
    """

    def __init__(self, chunk: int, model_dtype: torch.dtype):
        if chunk < 1:
            raise ValueError(f"eval.feature_chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.dtype = torch.bfloat16 if model_dtype == torch.bfloat16 else torch.float16
        self.chunks: list[torch.Tensor] = []
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks) + self._pending_rows

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in [*self.chunks, *self._pending])

    def _half(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        if self.dtype == torch.float16 and t.abs().max() > _HALF_MAX:
            logger.warning("image token features exceed the fp16 range: this chunk is stored in bf16")
            return t.to(torch.bfloat16)
        return t.to(self.dtype)

    def add(self, tokens: torch.Tensor) -> None:
        """Append [b, L, D] token features (any dtype or device)."""
        while len(tokens):
            room = self.chunk - self._pending_rows
            self._pending.append(tokens[:room])
            self._pending_rows += len(tokens[:room])
            tokens = tokens[room:]
            if self._pending_rows == self.chunk:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.chunks.append(self._half(torch.cat(self._pending)))
        self._pending, self._pending_rows = [], 0

    def finish(self) -> TokenStore:
        self._flush()
        return self

    def take(self, rows: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Token features of store rows `rows` [P] as [P, L, D] on `device` in `dtype` (a fresh tensor)."""
        rows = rows.to("cpu")
        out = torch.empty((len(rows), *self.chunks[0].shape[1:]), dtype=dtype)
        which = rows // self.chunk
        for c in which.unique().tolist():
            sel = (which == c).nonzero().squeeze(1)
            out[sel] = self.chunks[c][rows[sel] % self.chunk].to(dtype)
        return out.to(device)


def token_store_estimate(n_images: int, tokens: int, width: int, bytes_per: int = 2) -> str:
    """The line printed before encoding: what the token store will hold on this rank."""
    mib = n_images * tokens * width * bytes_per / 2**20
    return f"image token store: {n_images} images x {tokens} tokens x {width} x {bytes_per} bytes = {mib:.1f} MiB"


def _tokens_per_image(task: RetrievalTask) -> int:
    vc = task.model.config.vision_config
    per_frame = (task.cfg.model.image_size // vc.patch_size) ** 2 + 1
    return per_frame * (task.cfg.data.num_frames if task.cfg.video else 1)


@dataclass
class LocalEncoding:
    """What one rank encoded: per image its id, image_id and captions; ITC features; text ids and masks."""

    ids: list[str]
    image_ids: list
    captions: list[list[str]]
    image_feat: torch.Tensor  # [n, E] fp32
    text_feat: torch.Tensor  # [m, E] fp32, captions of image 0, then image 1, ...
    text_ids: torch.Tensor  # [m, T] long
    text_mask: torch.Tensor  # [m, T] long
    store: TokenStore


def encode_local(task: RetrievalTask, loader: EvalLoader, rank: int) -> LocalEncoding:
    """Step 1: this rank's images and their captions. Needs `inference_mode` around it."""
    store = TokenStore(task.cfg.eval.feature_chunk, task.dtype)
    ids, image_ids, captions, img_feats, txt_feats, txt_ids, txt_masks = [], [], [], [], [], [], []
    for batch in tqdm(loader, total=len(loader), desc="retrieval: encode", disable=rank != 0, leave=False):
        tokens, feat = task.image_embed(batch["pixel_values"])
        store.add(tokens)
        img_feats.append(feat.float())
        ids += batch["id"]
        image_ids += batch["image_id"]
        captions += batch["captions"]
        texts = [c for caps in batch["captions"] for c in caps]
        if texts:
            t_ids, t_mask, t_feat = task.text_embed(texts)
            txt_feats.append(t_feat.float())
            txt_ids.append(t_ids)
            txt_masks.append(t_mask)
    device, width = task.device, task.model.config.image_text_hidden_size
    length = task.max_text_tokens
    empty_long = torch.zeros((0, length), dtype=torch.long, device=device)
    return LocalEncoding(
        ids=ids,
        image_ids=image_ids,
        captions=captions,
        image_feat=torch.cat(img_feats) if img_feats else torch.zeros((0, width), device=device),
        text_feat=torch.cat(txt_feats) if txt_feats else torch.zeros((0, width), device=device),
        text_ids=torch.cat(txt_ids) if txt_ids else empty_long,
        text_mask=torch.cat(txt_masks) if txt_masks else empty_long.clone(),
        store=store.finish(),
    )


@dataclass
class GlobalIndex:
    """The global numbering (step 2). `image_perm[g]` is the position of global image g in the gathered (rank
    order) rows; `text_perm[t]` likewise for texts; `owner[g]` the rank holding image g, `local_row[g]` its row
    in that rank's token store."""

    ids: list[str]
    image_ids: list
    texts: list[str]
    img2txt: list[list[int]]
    txt2img: np.ndarray
    image_perm: torch.Tensor
    text_perm: torch.Tensor
    owner: torch.Tensor
    local_row: torch.Tensor


def build_global_index(per_rank: list[tuple[list[str], list, list[list[str]]]], split: str) -> GlobalIndex:
    """Number images by sorted sample id and texts image by image; identical on every rank and for any world."""
    records = []  # (id, captions, image_id, rank, local row, first text row in gathered order)
    text_row = 0
    for r, (ids, image_ids, captions) in enumerate(per_rank):
        for i, (sid, iid, caps) in enumerate(zip(ids, image_ids, captions)):
            records.append((sid, tuple(caps), iid, r, i, text_row))
            text_row += len(caps)
    if not records:
        raise ValueError(f"{split}: the retrieval evaluation read no image at all; check the shards and the log")
    no_caption = [rec[0] for rec in records if not rec[1]]
    if no_caption:
        raise ValueError(
            f"{split}: {len(no_caption)} image(s) have no caption, e.g. {no_caption[:5]}; retrieval needs at least one "
            "caption per image (rebuild the split's shards without them, or evaluate another split)"
        )
    records.sort(key=lambda rec: (rec[0], rec[1]))
    img2txt, txt2img, texts, text_perm = [], [], [], []
    for g, (_, caps, _, _, _, first) in enumerate(records):
        img2txt.append(list(range(len(texts), len(texts) + len(caps))))
        texts += caps
        txt2img += [g] * len(caps)
        text_perm += range(first, first + len(caps))
    offsets = np.cumsum([0] + [len(ids) for ids, _, _ in per_rank])
    return GlobalIndex(
        ids=[rec[0] for rec in records],
        image_ids=[rec[2] for rec in records],
        texts=texts,
        img2txt=img2txt,
        txt2img=np.asarray(txt2img, dtype=np.int64),
        image_perm=torch.tensor([int(offsets[rec[3]]) + rec[4] for rec in records], dtype=torch.long),
        text_perm=torch.tensor(text_perm, dtype=torch.long),
        owner=torch.tensor([rec[3] for rec in records], dtype=torch.long),
        local_row=torch.tensor([rec[4] for rec in records], dtype=torch.long),
    )


def candidate_pairs(topk_i2t: torch.Tensor, topk_t2i: torch.Tensor, mine: torch.Tensor, n_txt: int) -> torch.Tensor:
    """Step 3: the (image, text) pairs this rank re-scores, as sorted unique codes `image * n_txt + text`.

    topk_i2t [N, k1] texts per image, topk_t2i [M, k2] images per text (global indices, on CPU); `mine` [N] bool
    marks the images whose tokens this rank holds.
    """
    n_img = topk_i2t.shape[0]
    img_rows = torch.arange(n_img).unsqueeze(1).expand_as(topk_i2t)
    i2t = (img_rows * n_txt + topk_i2t)[mine]
    txt_cols = torch.arange(topk_t2i.shape[0]).unsqueeze(1).expand_as(topk_t2i)
    t2i = (topk_t2i * n_txt + txt_cols)[mine[topk_t2i]]
    return torch.unique(torch.cat([i2t.flatten(), t2i.flatten()]))


def itm_match_prob(
    task: RetrievalTask,
    store: TokenStore,
    store_rows: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """ITM "match" probability softmax(itm_head)[:, 1] for pairs (store row, text), fp32 on CPU: [P].

    A batched pair scorer over the token store: `RetrievalTask.itm_logits` takes image tokens already expanded
    per pair, which for a whole split would not fit in memory.
    """
    tokens = store.take(store_rows, task.device, task.dtype)
    logits = task.itm_logits(tokens, text_ids.to(task.device), text_mask.to(task.device))
    return logits.float().softmax(dim=-1)[:, 1].cpu()


def _score_pairs(
    task: RetrievalTask, enc: LocalEncoding, index: GlobalIndex, codes: torch.Tensor, ids_all, mask_all, rank: int
) -> torch.Tensor:
    n_txt = len(index.texts)
    per_forward = max(task.cfg.eval.k_test, task.cfg.eval.batch_size)
    out = torch.empty(len(codes), dtype=torch.float32)
    starts = range(0, len(codes), per_forward)
    for s in tqdm(starts, desc="retrieval: ITM re-rank", disable=rank != 0, leave=False):
        c = codes[s : s + per_forward]
        img, txt = c // n_txt, c % n_txt
        out[s : s + len(c)] = itm_match_prob(task, enc.store, index.local_row[img], ids_all[txt], mask_all[txt])
    return out


def _final_scores(
    topk: torch.Tensor,
    itc: torch.Tensor,
    itm_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    beta: float,
    shape: tuple[int, int],
) -> np.ndarray:
    scores = torch.full(shape, float("-inf"), dtype=torch.float32)
    rows = torch.arange(shape[0]).unsqueeze(1).expand_as(topk)
    scores[rows, topk] = itm_of(rows, topk) + beta * itc.gather(1, topk)
    return scores.numpy()


def _write_outputs(out_dir: Path, index: GlobalIndex, s_i2t: np.ndarray, s_t2i: np.ndarray, k: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [{"index": g, "id": sid, "image_id": iid} for g, (sid, iid) in enumerate(zip(index.ids, index.image_ids))]
    texts = [{"index": t, "image": int(index.txt2img[t]), "text": text} for t, text in enumerate(index.texts)]
    (out_dir / "retrieval_index.json").write_text(json.dumps({"images": images, "texts": texts}))
    for name, scores, what in (("i2t_topk.jsonl", s_i2t, "texts"), ("t2i_topk.jsonl", s_t2i, "images")):
        idx, val = topk_rankings(scores, k)
        with (out_dir / name).open("w") as f:
            for q, (row_i, row_v) in enumerate(zip(idx.tolist(), val.tolist())):
                f.write(json.dumps({"query": q, what: row_i, "scores": [round(v, 6) for v in row_v]}) + "\n")


def evaluate_retrieval(
    task: RetrievalTask,
    loader: EvalLoader,
    rank: int,
    world_size: int,
    out_dir: str | Path,
    merge: bool = True,
) -> dict[str, float]:
    """Retrieval metrics of `task` on the loader's split (a collective: every rank calls it with its loader).

    Returns txt_r1/5/10, txt_r_mean, img_r1/5/10, img_r_mean, r_mean (BLIP's definitions, percent), itc_r_mean
    (the same before ITM re-ranking), n_images and n_texts, equal on every rank. Rank 0 writes into `out_dir`:
    `retrieval_index.json` (global image and text numbering), `i2t_topk.jsonl` and `t2i_topk.jsonl` (per query
    its top-k_test candidates, best first, with final scores).
    """
    e = task.cfg.eval
    split = str(loader.manifest.folder)
    if rank == 0:
        print(
            f"[unitrans_ds] {token_store_estimate(loader.num_items, _tokens_per_image(task), task.model.config.vision_config.hidden_size)}"
            f" (rank 0 of {world_size}; each rank holds its own images)",
            flush=True,
        )
    with inference_mode(task, merge):
        enc = encode_local(task, loader, rank)
        index = build_global_index(all_gather_objects((enc.ids, enc.image_ids, enc.captions), world_size), split)
        image_feat = all_gather_rows(enc.image_feat, world_size)[index.image_perm.to(enc.image_feat.device)]
        text_feat = all_gather_rows(enc.text_feat, world_size)[index.text_perm.to(enc.text_feat.device)]
        ids_all = all_gather_rows(enc.text_ids, world_size).cpu()[index.text_perm]
        mask_all = all_gather_rows(enc.text_mask, world_size).cpu()[index.text_perm]

        sims = (image_feat @ text_feat.t()).float().cpu()  # [N, M]
        n_img, n_txt = sims.shape
        topk_i2t = sims.topk(min(e.k_test, n_txt), dim=1).indices
        topk_t2i = sims.t().topk(min(e.k_test, n_img), dim=1).indices
        codes = candidate_pairs(topk_i2t, topk_t2i, index.owner == rank, n_txt)
        probs = _score_pairs(task, enc, index, codes, ids_all, mask_all, rank)

    all_codes = all_gather_rows(codes.to(enc.image_feat.device), world_size).cpu()
    all_probs = all_gather_rows(probs.to(enc.image_feat.device), world_size).cpu()

    def finish() -> dict[str, float]:
        order = torch.argsort(all_codes)
        codes_sorted, probs_sorted = all_codes[order], all_probs[order]

        def itm_of(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
            pos = torch.searchsorted(codes_sorted, img * n_txt + txt)
            return probs_sorted[pos]

        s_i2t = _final_scores(topk_i2t, sims, itm_of, e.itm_beta, (n_img, n_txt))
        s_t2i = _final_scores(topk_t2i, sims.t(), lambda t, i: itm_of(i, t), e.itm_beta, (n_txt, n_img))
        metrics = retrieval_metrics(s_i2t, s_t2i, index.img2txt, index.txt2img)
        metrics["itc_r_mean"] = retrieval_metrics(sims.numpy(), sims.t().numpy(), index.img2txt, index.txt2img)[
            "r_mean"
        ]
        metrics.update(n_images=float(n_img), n_texts=float(n_txt))
        _write_outputs(Path(out_dir), index, s_i2t, s_t2i, e.k_test)
        return metrics

    return on_rank0(finish, rank, world_size)
