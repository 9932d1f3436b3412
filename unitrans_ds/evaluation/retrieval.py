"""Image-text (and video-text) retrieval evaluation: ITC for every pair, ITM re-ranking of the top k_test (SPEC 5).

`RetrievalTask.evaluate` runs these steps on every rank, with this rank's eval loader (through
`evaluation.runner.evaluate`, for the trainer and `launchers/eval.py`). Steps:

1. Encode this rank's images (or videos): ITC features, and vision token features kept in a `TokenStore` (half
   precision on CPU, in chunks of `eval.feature_chunk` images).
2. Gather every rank's image ids and captions and number them globally: images sorted by sample id, the texts
   of every image in that order (0..M-1), from which `img2txt` and `txt2img` follow. The order does not depend on
   the number of ranks or workers.
3. Encode the distinct caption strings in fixed chunks of that global list, dealt round-robin to the ranks, and
   gather them: every rank gets the same bits for any number of ranks, and identical captions get identical
   features (an exact tie, which the metrics' tie rule then handles, instead of a tie broken by rounding noise).
4. Every rank computes the ITC similarities [N, M] and the top-k_test candidates of every query in both
   directions. The ITM head re-scores each candidate pair (image, text) on the rank that holds the image's tokens:
   rank r scores the image queries it holds (its slice of the image-to-text queries, as BLIP splits them) and,
   for the text queries, the candidates that are its images. A pair picked in both directions is scored once,
   in per-image batches whose content does not depend on the number of ranks. The token features are never
   gathered: a rank keeps only its own images' tokens (1/world of the split), not the whole split as BLIP does.
5. The ITM scores are gathered: by default (`eval.itm_score: logit`) the raw "match" logit `itm_head(...)[:, 1]`,
   as BLIP's and LAVIS's evaluators add it; `prob` takes softmax(logits)[:, 1] instead. Rank 0 fills the final
   matrices (ITM + `eval.itm_beta` * ITC for the top-k, -inf elsewhere), computes the metrics, writes the
   per-query rankings, and shares the metrics with every rank.

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
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..collectives import all_gather_rows
from ..data.loaders import EvalLoader
from ..metrics.retrieval import retrieval_metrics, topk_rankings
from ..tracking.progress import progress

if TYPE_CHECKING:  # the task class runs these steps (its `evaluate`); no import at run time
    from ..tasks.retrieval import RetrievalTask

logger = logging.getLogger(__name__)

_HALF_MAX = torch.finfo(torch.float16).max
#: Texts per text-encoder forward, as a multiple of `eval.batch_size` (images carry ~5 captions each).
TEXTS_PER_IMAGE_BATCH = 4


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
            logger.warning("image token features exceed the fp16 range: this chunk is stored in bf16 instead")
            return t.to(torch.bfloat16)
        return t.to(self.dtype)

    def add(self, tokens: torch.Tensor) -> None:
        """Append [b, L, D] token features (any dtype or device); they move to CPU half precision at once."""
        tokens = self._half(tokens)
        while len(tokens):
            room = self.chunk - self._pending_rows
            self._pending.append(tokens[:room])
            self._pending_rows += len(tokens[:room])
            tokens = tokens[room:]
            if self._pending_rows == self.chunk:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            dtypes = {t.dtype for t in self._pending}
            dtype = dtypes.pop() if len(dtypes) == 1 else torch.bfloat16  # a bf16 fallback batch decides
            self.chunks.append(torch.cat([t.to(dtype) for t in self._pending]))
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


def tokens_per_image(task: RetrievalTask) -> int:
    vc, s = task.model.config.vision_config, task.settings
    per_frame = (s.image_size // vc.patch_size) ** 2 + 1
    return per_frame * (s.num_frames if s.video else 1)


@dataclass
class LocalImages:
    """What one rank encoded (step 1): per image its id, image_id and captions; ITC features; the token store."""

    ids: list[str]
    image_ids: list
    captions: list[list[str]]
    feat: torch.Tensor  # [n, E] fp32, on the model's device
    store: TokenStore


def encode_local_images(task: RetrievalTask, loader: EvalLoader, rank: int) -> LocalImages:
    """Step 1. Needs `inference_mode` around it."""
    store = TokenStore(task.settings.feature_chunk, task.dtype)
    ids, image_ids, captions, feats = [], [], [], []
    for batch in progress(loader, total=len(loader), desc="retrieval: images", enabled=rank == 0, leave=False):
        tokens, feat = task.image_embed(batch["pixel_values"])
        store.add(tokens)
        feats.append(feat.float())
        ids += batch["id"]
        image_ids += batch["image_id"]
        captions += batch["captions"]
    width = task.model.config.image_text_hidden_size
    feat = torch.cat(feats) if feats else torch.zeros((0, width), device=task.device)
    return LocalImages(ids, image_ids, captions, feat, store.finish())


@dataclass
class GlobalIndex:
    """The global numbering (step 2).

    `image_perm[g]`: row of global image g among the gathered (rank-order) image rows; `owner[g]`: the rank that
    holds its tokens; `local_row[g]`: its row in that rank's token store. `unique_texts`: the distinct caption
    strings in order of first appearance; `canon[t]`: the entry of text t among them.
    """

    ids: list[str]
    image_ids: list
    texts: list[str]
    img2txt: list[list[int]]
    txt2img: np.ndarray
    image_perm: torch.Tensor
    owner: torch.Tensor
    local_row: torch.Tensor
    unique_texts: list[str]
    canon: torch.Tensor


def build_global_index(per_rank: list[tuple[list[str], list, list[list[str]]]], split: str) -> GlobalIndex:
    """Number images by sorted sample id and texts image by image; identical on every rank and for any world."""
    records = [
        (sid, tuple(caps), iid, r, i)
        for r, (ids, image_ids, captions) in enumerate(per_rank)
        for i, (sid, iid, caps) in enumerate(zip(ids, image_ids, captions))
    ]
    if not records:
        raise ValueError(f"{split}: the retrieval evaluation read no image at all; check the shards and the log")
    no_caption = [rec[0] for rec in records if not rec[1]]
    if no_caption:
        raise ValueError(
            f"{split}: {len(no_caption)} image(s) have no caption, e.g. {no_caption[:5]}; retrieval needs at least one "
            "caption per image (rebuild the split's shards without them, or evaluate another split)"
        )
    records.sort(key=lambda rec: (rec[0], rec[1]))
    img2txt, txt2img, texts = [], [], []
    for g, (_, caps, _, _, _) in enumerate(records):
        img2txt.append(list(range(len(texts), len(texts) + len(caps))))
        texts += caps
        txt2img += [g] * len(caps)
    first: dict[str, int] = {}
    canon = [first.setdefault(t, len(first)) for t in texts]
    offsets = np.cumsum([0] + [len(ids) for ids, _, _ in per_rank])
    return GlobalIndex(
        ids=[rec[0] for rec in records],
        image_ids=[rec[2] for rec in records],
        texts=texts,
        img2txt=img2txt,
        txt2img=np.asarray(txt2img, dtype=np.int64),
        image_perm=torch.tensor([int(offsets[rec[3]]) + rec[4] for rec in records], dtype=torch.long),
        owner=torch.tensor([rec[3] for rec in records], dtype=torch.long),
        local_row=torch.tensor([rec[4] for rec in records], dtype=torch.long),
        unique_texts=list(first),
        canon=torch.tensor(canon, dtype=torch.long),
    )


def encode_texts(
    task: RetrievalTask, texts: list[str], rank: int, world_size: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3: (ITC features [U, E] fp32, ids [U, T], masks [U, T]) of `texts`, on every rank (a collective).

    Chunk j = texts[j*chunk:(j+1)*chunk] is encoded by rank j % world_size, so every text is encoded in the same
    batch whatever the number of ranks. Needs `inference_mode` around it.
    """
    starts = list(range(0, len(texts), chunk))[rank::world_size]
    feats, ids, masks = [], [], []
    for s in progress(starts, desc="retrieval: texts", enabled=rank == 0, leave=False):
        t_ids, t_mask, t_feat = task.text_embed(texts[s : s + chunk])
        feats.append(t_feat.float())
        ids.append(t_ids)
        masks.append(t_mask)
    length, width, device = task.max_text_tokens, task.model.config.image_text_hidden_size, task.device
    feat = torch.cat(feats) if feats else torch.zeros((0, width), device=device)
    ids_t = torch.cat(ids) if ids else torch.zeros((0, length), dtype=torch.long, device=device)
    mask_t = torch.cat(masks) if masks else torch.zeros((0, length), dtype=torch.long, device=device)
    # Gathered rows come rank by rank (rank r: chunks r, r+W, ...); put them back in text order.
    owner_rows = [list(range(s, min(s + chunk, len(texts)))) for s in range(0, len(texts), chunk)]
    gathered_order = [t for r in range(world_size) for rows in owner_rows[r::world_size] for t in rows]
    perm = torch.empty(len(texts), dtype=torch.long)
    perm[torch.tensor(gathered_order, dtype=torch.long)] = torch.arange(len(texts))
    return tuple(all_gather_rows(x, world_size)[perm.to(x.device)] for x in (feat, ids_t, mask_t))


def candidate_pairs(
    topk_i2t: torch.Tensor, topk_t2i: torch.Tensor, mine: torch.Tensor, canon: torch.Tensor
) -> torch.Tensor:
    """Step 4: the (image, distinct text) pairs this rank re-scores, as sorted unique codes `image * U + canon`.

    topk_i2t [N, k1] texts per image, topk_t2i [M, k2] images per text (global indices, CPU); `mine` [N] bool
    marks the images whose tokens this rank holds; `canon` [M] maps texts to distinct strings (U of them).
    """
    n_unique = int(canon.max()) + 1
    img_rows = torch.arange(topk_i2t.shape[0]).unsqueeze(1).expand_as(topk_i2t)
    i2t = (img_rows * n_unique + canon[topk_i2t])[mine]
    txt_cols = torch.arange(topk_t2i.shape[0]).unsqueeze(1).expand_as(topk_t2i)
    t2i = (topk_t2i * n_unique + canon[txt_cols])[mine[topk_t2i]]
    return torch.unique(torch.cat([i2t.flatten(), t2i.flatten()]))


def itm_match_score(
    task: RetrievalTask,
    store: TokenStore,
    store_row: int,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    score: str = "logit",
) -> torch.Tensor:
    """ITM "match" score of one stored image against texts [P, T], fp32 on CPU: [P]. `score`: `logit` =
    itm_head(...)[:, 1] (BLIP/LAVIS), `prob` = softmax(itm_head(...))[:, 1].

    Two savings over BLIP's evaluator, neither of which changes the equation:
    - The image's tokens go in once, as a batch of 1 that the cross-attention broadcasts over the P texts
      (`torch.matmul` broadcasts batch dimensions, and HF's BLIP shapes the keys and values from the encoder
      states' own batch), so its key and value projections run once per image, not once per pair. In video
      retrieval (frames x 65 tokens per clip) these projections were most of the ITM cost.
    - The texts are cut to their longest unpadded length (right padding): padded positions are masked out of
      every attention, so they change no unpadded position, and the [ENC] token is what the head reads.
    """
    tokens = store.take(torch.tensor([store_row]), task.device, task.dtype)
    length = max(int(text_mask.sum(dim=1).max()), 1)
    ids, mask = text_ids[:, :length].to(task.device), text_mask[:, :length].to(task.device)
    logits = task.itm_logits(tokens, ids, mask).float()
    if score == "prob":
        return logits.softmax(dim=-1)[:, 1].cpu()
    if score == "logit":
        return logits[:, 1].cpu()
    raise ValueError(f"eval.itm_score must be `logit` or `prob`, got {score!r}")


def score_pairs(
    task: RetrievalTask,
    store: TokenStore,
    index: GlobalIndex,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    rank: int,
) -> torch.Tensor:
    """ITM scores (`eval.itm_score`) of the sorted pair `codes` (step 4), image by image in chunks of
    max(k_test, batch) texts."""
    settings = task.settings
    n_unique = len(index.unique_texts)
    per_forward = max(settings.k_test, settings.batch_size)
    out = torch.empty(len(codes), dtype=torch.float32)
    images, counts = torch.unique_consecutive(codes // n_unique, return_counts=True)
    start = 0
    for img, n in progress(
        zip(images.tolist(), counts.tolist()), total=len(images), desc="retrieval: ITM", enabled=rank == 0, leave=False
    ):
        row = int(index.local_row[img])
        for s in range(start, start + n, per_forward):
            e = min(s + per_forward, start + n)
            txt = codes[s:e] % n_unique
            out[s:e] = itm_match_score(task, store, row, text_ids[txt], text_mask[txt], settings.itm_score)
        start += n
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


@dataclass
class Candidates:
    """Step 5's input, the same on every rank: the top-k candidates of every query in both directions, the ITC
    similarities [N, M], and every rank's scored pair codes with their ITM scores."""

    topk_i2t: torch.Tensor
    topk_t2i: torch.Tensor
    sims: torch.Tensor
    codes: torch.Tensor
    itm: torch.Tensor


def score_and_write(c: Candidates, index: GlobalIndex, beta: float, k: int, out_dir: Path) -> dict[str, float]:
    """Step 5, on rank 0: the final matrices (ITM + beta * ITC on the candidates), the metrics, the rankings."""
    n_unique = len(index.unique_texts)
    order = torch.argsort(c.codes)
    codes_sorted, itm_sorted = c.codes[order], c.itm[order]

    def itm_of(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return itm_sorted[torch.searchsorted(codes_sorted, img * n_unique + index.canon[txt])]

    n_img, n_txt = c.sims.shape
    s_i2t = _final_scores(c.topk_i2t, c.sims, itm_of, beta, (n_img, n_txt))
    s_t2i = _final_scores(c.topk_t2i, c.sims.t(), lambda t, i: itm_of(i, t), beta, (n_txt, n_img))
    metrics = retrieval_metrics(s_i2t, s_t2i, index.img2txt, index.txt2img)
    itc_only = retrieval_metrics(c.sims.numpy(), c.sims.t().numpy(), index.img2txt, index.txt2img)
    # ITC alone, before re-ranking: what the ITM head adds is the difference (issue 10's bar on the backbones)
    metrics.update(
        itc_r_mean=itc_only["r_mean"],
        itc_txt_r1=itc_only["txt_r1"],
        itc_img_r1=itc_only["img_r1"],
        n_images=float(n_img),
        n_texts=float(n_txt),
    )
    metrics["n_itm_pairs"] = float(len(c.codes))
    _write_outputs(out_dir, index, s_i2t, s_t2i, k)
    return metrics
