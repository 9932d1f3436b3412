"""Retrieval recall on hand-built score matrices; every expected number is worked out in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from unitrans_ds.metrics.retrieval import retrieval_metrics, topk_rankings

NEG = -np.inf


def test_several_captions_per_image_and_ties_worked_by_hand():
    # Image 0 has captions 0, 1, 2; image 1 has captions 3, 4.
    img2txt = [[0, 1, 2], [3, 4]]
    txt2img = [0, 0, 0, 1, 1]
    scores_i2t = np.array(
        [
            # Best ground truth is caption 1 (0.9); wrong captions 3 (0.95) and 4 (0.1): one is >= 0.9 -> rank 1.
            [0.2, 0.9, 0.4, 0.95, 0.1],
            # Best ground truth is caption 3 (0.35); wrong captions 0.3, 0.2, 0.1 are all below -> rank 0.
            [0.3, 0.2, 0.1, 0.35, 0.05],
        ]
    )
    scores_t2i = np.array(
        [
            [0.7, 0.2],  # caption 0 -> image 0 wins: rank 0
            [0.5, 0.5],  # caption 1 -> image 0 TIES image 1: pessimistic rank 1 (BLIP's argsort may say 0)
            [0.1, 0.6],  # caption 2 -> image 0 loses: rank 1
            [0.0, 0.4],  # caption 3 -> image 1 wins: rank 0
            [0.3, 0.3],  # caption 4 -> image 1 ties: rank 1
        ]
    )
    m = retrieval_metrics(scores_i2t, scores_t2i, img2txt, txt2img)
    # Text ranks [1, 0]: R@1 = 1/2 = 50, R@5 = R@10 = 100, mean 250/3.
    assert m["txt_r1"] == pytest.approx(50.0)
    assert m["txt_r5"] == pytest.approx(100.0)
    assert m["txt_r10"] == pytest.approx(100.0)
    assert m["txt_r_mean"] == pytest.approx(250.0 / 3)
    # Image ranks [0, 1, 1, 0, 1]: R@1 = 2/5 = 40, R@5 = R@10 = 100, mean 80.
    assert m["img_r1"] == pytest.approx(40.0)
    assert m["img_r5"] == pytest.approx(100.0)
    assert m["img_r10"] == pytest.approx(100.0)
    assert m["img_r_mean"] == pytest.approx(80.0)
    # r_mean = (250/3 + 80) / 2 = 81.666...
    assert m["r_mean"] == pytest.approx((250.0 / 3 + 80.0) / 2)


def test_ties_among_ground_truth_captions_cost_nothing_but_ties_with_wrong_ones_do():
    img2txt = [[0, 1], [2, 3]]
    txt2img = [0, 0, 1, 1]
    scores_i2t = np.array(
        [
            [0.5, 0.5, 0.2, 0.1],  # the two ground truths tie with each other at the top: rank 0
            [0.5, 0.1, 0.5, 0.0],  # ground truth 2 ties wrong caption 0 at 0.5: rank 1
        ]
    )
    scores_t2i = np.eye(4, 2)[[0, 0, 1, 1]]  # every caption's own image scores 1, the other 0: all rank 0
    m = retrieval_metrics(scores_i2t, scores_t2i, img2txt, txt2img)
    assert m["txt_r1"] == pytest.approx(50.0)
    assert m["img_r1"] == pytest.approx(100.0)


def test_constant_scores_give_zero_recall_whatever_the_index_order():
    # A collapsed model scores every pair the same. With 12 one-to-one pairs each ground truth ties the 11 wrong
    # candidates, so its pessimistic rank is 11: a miss even at R@10. Index order must not turn ties into wins.
    n = 12
    scores = np.zeros((n, n))
    m = retrieval_metrics(scores, scores, [[i] for i in range(n)], list(range(n)))
    assert all(m[k] == 0.0 for k in m)


def test_k_test_smaller_than_pool_with_minus_inf():
    # 12 images, 12 captions, caption t belongs to image t. Only k_test = 3 candidates per text are re-scored;
    # the other 9 stay -inf, as the evaluator leaves them.
    n = 12
    t2i = np.full((n, n), NEG)
    t2i[0, [0, 3, 7]] = [5.0, 4.0, 3.0]  # ground truth first: rank 0
    t2i[1, [4, 2, 1]] = [9.0, 8.0, 7.0]  # ground truth third of three: rank 2
    t2i[2, [5, 6, 9]] = [1.0, 0.5, 0.2]  # ground truth not in the top 3, so -inf: all 11 wrong are >= it: rank 11
    for t in range(3, n):
        t2i[t, [t, (t + 1) % n, (t + 2) % n]] = [1.0, 0.5, 0.2]  # rank 0
    i2t = np.full((n, n), NEG)
    np.fill_diagonal(i2t, 1.0)  # every image's caption re-scored and ahead of nine -inf: rank 0
    m = retrieval_metrics(i2t, t2i, [[i] for i in range(n)], np.arange(n))
    # Image ranks [0, 2, 11, 0 x 9]: R@1 = 10/12, R@5 = R@10 = 11/12 (rank 11 misses even at 10).
    assert m["img_r1"] == pytest.approx(100.0 * 10 / 12)
    assert m["img_r5"] == pytest.approx(100.0 * 11 / 12)
    assert m["img_r10"] == pytest.approx(100.0 * 11 / 12)
    assert m["txt_r1"] == pytest.approx(100.0)
    # BLIP fills the non-top-k entries with -100 instead of -inf: same ranks, same numbers.
    m_blip_fill = retrieval_metrics(
        np.where(np.isinf(i2t), -100.0, i2t),
        np.where(np.isinf(t2i), -100.0, t2i),
        [[i] for i in range(n)],
        np.arange(n),
    )
    assert m_blip_fill == pytest.approx(m)


def _argsort_recalls(scores: np.ndarray, gts: list[list[int]]) -> list[float]:
    # The definition read straight off BLIP's itm_eval: sort descending, the rank is the best position of a
    # ground truth. Only valid without ties, which random floats guarantee.
    ranks = []
    for row, gt in zip(scores, gts):
        order = list(np.argsort(-row))
        ranks.append(min(order.index(g) for g in gt))
    ranks = np.array(ranks)
    return [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]


def test_matches_argsort_definition_without_ties():
    rng = np.random.default_rng(0)
    n_img, per_img = 40, 5
    img2txt = [list(range(i * per_img, (i + 1) * per_img)) for i in range(n_img)]
    txt2img = np.repeat(np.arange(n_img), per_img)
    sim = rng.normal(size=(n_img, n_img * per_img))
    sim[txt2img, np.arange(len(txt2img))] += 1.5  # make the ground truth likelier, so recalls are not all ~0
    m = retrieval_metrics(sim, sim.T.copy(), img2txt, txt2img)
    tr = _argsort_recalls(sim, img2txt)
    ir = _argsort_recalls(sim.T, [[g] for g in txt2img])
    assert [m["txt_r1"], m["txt_r5"], m["txt_r10"]] == pytest.approx(tr)
    assert [m["img_r1"], m["img_r5"], m["img_r10"]] == pytest.approx(ir)
    assert 0 < m["txt_r1"] < 100 and 0 < m["img_r1"] < 100


def test_topk_rankings_orders_ties_by_index_and_clips_k():
    scores = np.array(
        [
            [0.1, 0.5, 0.5, NEG, 0.3],
            [1.0, 0.0, 1.0, 1.0, 0.0],
            [NEG, NEG, NEG, NEG, NEG],
        ]
    )
    idx, val = topk_rankings(scores, 3)
    # Row 0: 0.5 (1), 0.5 (2), 0.3 (4). Row 1: the three 1.0 at 0, 2, 3. Row 2: all -inf, lowest indices first.
    assert idx.tolist() == [[1, 2, 4], [0, 2, 3], [0, 1, 2]]
    assert val[0].tolist() == [0.5, 0.5, 0.3]
    # Row 1 with k = 2: the tie at the boundary keeps the lowest indices, 0 and 2.
    assert topk_rankings(scores[1:2], 2)[0].tolist() == [[0, 2]]
    # k larger than the pool returns the whole pool, -inf last.
    idx, val = topk_rankings(scores[:1], 256)
    assert idx.tolist() == [[1, 2, 4, 0, 3]]
    assert val[0, -1] == NEG


def test_bad_inputs_raise_clear_errors():
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 3), np.nan), s.T, [[0], [1, 2]], [0, 1, 1])
    with pytest.raises(ValueError, match="disagree"):
        retrieval_metrics(s, s.T, [[0], [1, 2]], [0, 0, 1])
    with pytest.raises(ValueError, match="no ground-truth caption"):
        retrieval_metrics(s, s.T, [[0, 1, 2], []], [0, 0, 0])
    with pytest.raises(ValueError, match=r"scores_t2i must have shape \(3, 2\)"):
        retrieval_metrics(s, s, [[0], [1, 2]], [0, 1, 1])
    with pytest.raises(ValueError, match="k must be at least 1"):
        topk_rankings(s, 0)
