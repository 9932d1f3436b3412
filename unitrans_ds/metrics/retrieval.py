"""Image-text retrieval metrics: recall at 1/5/10 in both directions, as BLIP's `itm_eval` defines them.

The retrieval evaluator builds the two score matrices (ITC for every pair, ITM + beta * ITC re-scored for the top
k_test candidates of each query, -inf elsewhere) and calls `retrieval_metrics`; it also writes the per-query
ranked lists with `topk_rankings`. Nothing here touches a model.

Ranks and ties. BLIP ranks a query's candidates with `np.argsort(score)[::-1]`, so a ground-truth candidate
that ties with a wrong one wins or loses by its index. We use the pessimistic rule instead: the rank of a query
is the number of WRONG candidates that score at least as high as its best ground-truth candidate. Without ties
this is exactly BLIP's rank (position of the best ground-truth candidate in the sorted list, 0-based); with ties
every tied wrong candidate is counted ahead of the ground truth, so a constant score matrix (a collapsed model)
scores zero recall instead of whatever the index order happens to give. Ties among ground-truth captions of
the same image cost nothing, since any of them is a hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_AT = (1, 5, 10)
# Rows scored per block, so that a 25k x 5k COCO matrix never needs a second full-size temporary.
_ROW_BLOCK = 1024


def _as_score_matrix(scores: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (queries x candidates); got {scores.shape}.")
    if np.isnan(scores).any():
        rows = np.unique(np.nonzero(np.isnan(scores))[0])[:5].tolist()
        raise ValueError(
            f"{name} contains NaN (first rows: {rows}). Score candidates outside the top-k with -inf, never NaN; "
            "NaN usually means the model diverged."
        )
    return scores


def _check_mappings(img2txt: Sequence[Sequence[int]], txt2img: np.ndarray, n_img: int, n_txt: int) -> None:
    if len(img2txt) != n_img:
        raise ValueError(f"img2txt has {len(img2txt)} entries but scores_i2t has {n_img} image rows.")
    if txt2img.shape != (n_txt,):
        raise ValueError(f"txt2img has shape {txt2img.shape} but scores_t2i has {n_txt} text rows.")
    if n_txt and (txt2img.min() < 0 or txt2img.max() >= n_img):
        raise ValueError(f"txt2img holds image indices outside [0, {n_img}): min {txt2img.min()}, max {txt2img.max()}.")
    for img, txts in enumerate(img2txt):
        if len(txts) == 0:
            raise ValueError(f"Image {img} has no ground-truth caption in img2txt; drop it from the split.")
        for t in txts:
            if not 0 <= t < n_txt or txt2img[t] != img:
                raise ValueError(
                    f"img2txt[{img}] lists text {t}, but txt2img[{t}] is "
                    f"{txt2img[t] if 0 <= t < n_txt else 'out of range'}: the two mappings disagree."
                )


def i2t_ranks(scores_i2t: np.ndarray, img2txt: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based rank of each image's best ground-truth caption, pessimistic on ties (see the module docstring).

    scores_i2t: [n_img, n_txt]; img2txt[i]: the caption indices of image i. Returns int64 [n_img].
    """
    n_img, n_txt = scores_i2t.shape
    ranks = np.empty(n_img, dtype=np.int64)
    for start in range(0, n_img, _ROW_BLOCK):
        block = scores_i2t[start : start + _ROW_BLOCK]
        is_gt = np.zeros(block.shape, dtype=bool)
        for row, img in enumerate(range(start, start + len(block))):
            is_gt[row, list(img2txt[img])] = True
        best_gt = np.where(is_gt, block, -np.inf).max(axis=1)
        # A ground truth at -inf (outside the top-k) loses to every wrong candidate, -inf ones included.
        ranks[start : start + len(block)] = ((block >= best_gt[:, None]) & ~is_gt).sum(axis=1)
    return ranks


def t2i_ranks(scores_t2i: np.ndarray, txt2img: np.ndarray) -> np.ndarray:
    """0-based rank of each text's ground-truth image, pessimistic on ties. scores_t2i: [n_txt, n_img]."""
    n_txt = scores_t2i.shape[0]
    ranks = np.empty(n_txt, dtype=np.int64)
    for start in range(0, n_txt, _ROW_BLOCK):
        block = scores_t2i[start : start + _ROW_BLOCK]
        gt_cols = txt2img[start : start + len(block)]
        gt_score = block[np.arange(len(block)), gt_cols]
        # Minus one: the ground truth itself always satisfies `>=`.
        ranks[start : start + len(block)] = (block >= gt_score[:, None]).sum(axis=1) - 1
    return ranks


def _recalls(ranks: np.ndarray) -> list[float]:
    return [100.0 * float(np.mean(ranks < k)) for k in RECALL_AT]


def retrieval_metrics(
    scores_i2t: np.ndarray,
    scores_t2i: np.ndarray,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int] | np.ndarray,
) -> dict[str, float]:
    """Recall@1/5/10 for text retrieval (image -> text) and image retrieval (text -> image), in percent.

    scores_i2t: [n_img, n_txt], higher is better; scores_t2i: [n_txt, n_img]. Entries may be -inf (candidates
    outside a query's top-k_test) but not NaN. img2txt[i] lists the caption indices of image i; txt2img[t] is
    the image of caption t; the two must agree. Returns txt_r1, txt_r5, txt_r10, txt_r_mean, img_r1, img_r5,
    img_r10, img_r_mean and r_mean (the mean of the two means), BLIP's keys and definitions, with the
    pessimistic tie rule of this module.
    """
    txt2img_arr = np.asarray(txt2img, dtype=np.int64).reshape(-1)
    s_i2t = np.asarray(scores_i2t)
    if s_i2t.ndim != 2:
        raise ValueError(f"scores_i2t must be 2-D [n_img, n_txt]; got shape {s_i2t.shape}.")
    n_img, n_txt = s_i2t.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"Cannot compute retrieval metrics on an empty pool ({n_img} images, {n_txt} texts).")
    s_i2t = _as_score_matrix(s_i2t, "scores_i2t", (n_img, n_txt))
    s_t2i = _as_score_matrix(scores_t2i, "scores_t2i", (n_txt, n_img))
    _check_mappings(img2txt, txt2img_arr, n_img, n_txt)

    tr1, tr5, tr10 = _recalls(i2t_ranks(s_i2t, img2txt))
    ir1, ir5, ir10 = _recalls(t2i_ranks(s_t2i, txt2img_arr))
    tr_mean = (tr1 + tr5 + tr10) / 3
    ir_mean = (ir1 + ir5 + ir10) / 3
    return {
        "txt_r1": tr1,
        "txt_r5": tr5,
        "txt_r10": tr10,
        "txt_r_mean": tr_mean,
        "img_r1": ir1,
        "img_r5": ir5,
        "img_r10": ir10,
        "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
    }


def topk_rankings(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates of every query row, best first, for the per-query ranked output files.

    scores: [n_query, n_cand]. Returns (indices int64 [n_query, k'], values [n_query, k']) with
    k' = min(k, n_cand): asking for more candidates than the pool holds (k_test 256 on a small split) returns
    the whole pool. Equal scores are listed lowest candidate index first, so the output is deterministic.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_query, n_cand]; got shape {scores.shape}.")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    n_query, n_cand = scores.shape
    k = min(k, n_cand)
    if np.isnan(scores).any():
        raise ValueError("scores contains NaN; score excluded candidates with -inf instead.")
    indices = np.empty((n_query, k), dtype=np.int64)
    for start in range(0, n_query, _ROW_BLOCK):
        block = scores[start : start + _ROW_BLOCK]
        # The k-th largest value bounds the candidates; ties at that bound are then settled by a stable sort.
        kth = np.partition(block, n_cand - k, axis=1)[:, n_cand - k]
        for row in range(len(block)):
            cand = np.flatnonzero(block[row] >= kth[row])
            order = np.argsort(-block[row, cand], kind="stable")[:k]
            indices[start + row] = cand[order]
    values = np.take_along_axis(scores, indices, axis=1)
    return indices, values
