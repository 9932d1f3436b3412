"""Task classes on tiny BLIP with the demo tokenizer: losses, gradients, video mode, inference helpers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers.adapters import _randomize_adapters

from unitrans_ds.adapters import prepare_model
from unitrans_ds.config import ConfigError, build_config
from unitrans_ds.data.loaders import build_train_loader
from unitrans_ds.data.manifest import read_manifest
from unitrans_ds.models.build import load_backbone, task_model_class
from unitrans_ds.tasks import TASKS, Dist, TaskSettings, VQATask, answer_weights, build_task, task_class

SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


def _task(task: str, method: str = "unitrans", **over):
    cfg = build_config(
        {
            "task": task,
            "method": {"name": method, "rank": 4},
            "model": {"init_from": "tiny", "image_size": SIZE},
            "eval": {"num_beams": 2},
        },
        [f"{k}={v}" for k, v in over.items()],
    )
    bb = load_backbone(cfg.model, task, seed=0)
    bb.model.eval()
    prepare_model(bb.model, cfg.method)
    return build_task(cfg, bb.model, bb.tokenizer)


def _batch(task: str, b: int = 4, frames: int | None = None):
    g = torch.Generator().manual_seed(0)
    shape = (b, frames, 3, SIZE, SIZE) if frames else (b, 3, SIZE, SIZE)
    batch = {"pixel_values": torch.randn(shape, generator=g)}
    texts = ["a red circle left of a blue square", "two green stars", "a small yellow triangle", "a big red ring"][:b]
    if task == "vqa":
        batch["question"] = ["what color is the circle", "how many stars", "is there a triangle", "what shape"][:b]
        batch["answers"] = [["red"] * 10, ["2"] * 7 + ["3"] * 3, ["yes"] * 10, ["ring", "circle"] * 5][:b]
    else:
        batch["text"] = texts
        batch["image_idx"] = torch.tensor([0, 0, 1, 2][:b])
    return batch


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_training_step_is_finite_and_reaches_adapters(task):
    t = _task(task)
    out = t(_batch(task), step=0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [n for n, p in t.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    assert any("vcra_b" in n for n in grads), "VCRA vectors get no gradient"
    if task == "retrieval":
        assert any(n.endswith("unitrans.temp") for n in grads)
        assert {"loss_itc", "loss_itm", "loss_mcam"} <= set(out)


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_adapted_loss_equals_frozen_loss_at_init(task):
    a = _task(task, "unitrans")
    f = _task(task, "frozen")
    la, lf = a(_batch(task), 0), f(_batch(task), 0)
    key = "loss_itm" if task == "retrieval" else "loss"
    torch.testing.assert_close(la[key], lf[key])


def test_video_with_one_frame_equals_image_path():
    t = _task("retrieval")
    img = _batch("retrieval")
    vid = dict(img, pixel_values=img["pixel_values"][:, None])
    with torch.no_grad():
        ti, fi = t.image_embed(img["pixel_values"])
        tv, fv = t.image_embed(vid["pixel_values"])
    assert torch.equal(ti, tv) and torch.equal(fi, fv)
    with torch.no_grad():
        tv3, fv3 = t.image_embed(torch.randn(2, 3, 3, SIZE, SIZE))
    assert tv3.shape[1] == 3 * ti.shape[1] and fv3.shape == (2, fi.shape[1])


def test_video_path_does_not_see_frame_order():
    """BLIP's video transfer (SPEC): frames through the ViT one by one, ITC on the mean of their CLS features, the
    fusion layers over all frame tokens concatenated, no temporal position. So a clip and the same clip played
    backwards score alike in every task, adapters and QASN included: questions and captions that only frame order
    answers (the scenes world's direction / toward questions) are out of reach of every method (README, Evidence).
    When a temporal position is added this test fails, and that README paragraph has to change with it."""
    clip = torch.randn(2, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    backwards = clip.flip(1)
    r = _task("retrieval")
    _randomize_adapters(r.model)
    ids, mask, _ = r.text_embed(["a red circle moves left", "a red circle moves right"])
    with torch.no_grad():
        (tok_f, feat_f), (tok_b, feat_b) = r.image_embed(clip), r.image_embed(backwards)
        itm_f, itm_b = r.itm_logits(tok_f, ids, mask), r.itm_logits(tok_b, ids, mask)
    assert not torch.allclose(tok_f, tok_b)  # the tokens themselves do come in another order
    torch.testing.assert_close(feat_f, feat_b)
    torch.testing.assert_close(itm_f, itm_b)
    v = _task("vqa")
    _randomize_adapters(v.model)
    q = ["does the red circle move left", "which way does the star move"]
    with torch.no_grad():
        nll_f = v.answer_nll(*v.encode_questions(clip, q), ["yes", "left"])
        nll_b = v.answer_nll(*v.encode_questions(backwards, q), ["yes", "left"])
    torch.testing.assert_close(nll_f, nll_b)


def test_vqa_answer_weights_blip_by_default_soft_score_as_option():
    answers = ["2"] * 7 + ["3"] * 2 + ["4"]
    uniq, w = answer_weights(answers)  # BLIP: count / number of answers, summing to 1
    assert uniq == ["2", "3", "4"] and w == [pytest.approx(0.7), pytest.approx(0.2), pytest.approx(0.1)]
    uniq, w = answer_weights(answers, "soft-score")
    assert uniq == ["2", "3", "4"] and w == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]


@pytest.mark.parametrize(("scheme", "smoothing"), [(None, 0.1), ("soft-score", 0.0)])
def test_vqa_loss_is_blips_weighted_label_smoothed_answer_loss(scheme, smoothing):
    """The loss by hand from the decoder's log-probabilities: per answer the token-summed cross-entropy with
    label smoothing eps, (1 - eps) * -log p(label) + eps * mean over the vocabulary of -log p, weighted per
    question, summed, divided by the questions."""
    t = _task("vqa", **({"train.vqa_loss": scheme} if scheme else {}))
    batch = _batch("vqa")
    with torch.no_grad():
        loss = t.training_step(batch, 0)["loss"]
        states, smask = t.encode_questions(batch["pixel_values"], batch["question"])
        total = 0.0
        for i, answers in enumerate(batch["answers"]):
            uniq, weights = answer_weights(answers, scheme or "blip")
            ids, mask = t.tokenize(uniq, max_length=t.max_answer_tokens, first_token=t.bos_id)
            logits = t.model.text_decoder(
                input_ids=ids,
                attention_mask=mask,
                encoder_hidden_states=states[i : i + 1].expand(len(uniq), -1, -1),
                encoder_attention_mask=smask[i : i + 1].expand(len(uniq), -1),
                return_logits=True,
            )
            logp = logits.float().log_softmax(-1)
            labels, keep = ids[:, 1:], mask[:, 1:].bool()
            nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            per_token = (1 - smoothing) * nll + smoothing * -logp.mean(-1)
            per_answer = (per_token * keep).sum(1)
            total += (torch.tensor(weights) * per_answer).sum()
    torch.testing.assert_close(loss, total / len(batch["answers"]), rtol=1e-5, atol=1e-5)


def test_inference_helpers():
    v = _task("vqa")
    b = _batch("vqa")
    ans = v.rank_answers(b["pixel_values"], b["question"], ["red", "2", "yes", "ring", "blue"], k=3)
    assert len(ans) == 4 and all(a in {"red", "2", "yes", "ring", "blue"} for a in ans)
    gen = v.generate_answers(b["pixel_values"], b["question"])
    assert len(gen) == 4 and all(isinstance(x, str) for x in gen)
    c = _task("captioning")
    caps = c.generate(_batch("captioning")["pixel_values"])
    assert len(caps) == 4 and all(isinstance(x, str) for x in caps)


def test_rank_answers_prefers_the_likelier_answer():
    # Make "yes" much likelier by training a few steps on it; rank inference must then pick it.
    v = _task("vqa", "full")
    b = _batch("vqa", b=1)
    b["answers"] = [["yes"] * 10]
    opt = torch.optim.AdamW([p for p in v.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(10):
        v(copy.deepcopy(b), 0)["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert v.rank_answers(b["pixel_values"], b["question"], ["no", "red", "yes", "ring"], k=4) == ["yes"]


def test_gradient_checkpointing_trains_and_matches():
    plain, ckpt = _task("retrieval"), _task("retrieval", **{"model.gradient_checkpointing": "true"})
    plain.train()
    ckpt.train()
    a, b = plain(_batch("retrieval"), 0), ckpt(_batch("retrieval"), 0)
    a["loss"].backward()
    b["loss"].backward()
    torch.testing.assert_close(a["loss"], b["loss"])
    ga = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    gb = {n: p.grad for n, p in ckpt.named_parameters() if p.grad is not None}
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_a_task_is_told_its_settings_and_ranks_not_the_config(task):
    t = _task(task, **{"train.seed": 7})
    assert not hasattr(t, "cfg") and isinstance(t.settings, TaskSettings) and t.dist == Dist(0, 1)
    assert type(t.settings) is not TaskSettings  # each task has its own settings dataclass
    assert t.settings.seed == 7 and t.settings.image_size == SIZE


def test_best_metric_comes_from_the_task_and_a_wrong_name_is_one_config_error():
    for task, default in (("retrieval", "r_mean"), ("captioning", "CIDEr"), ("vqa", "overall")):
        cfg = build_config({"task": task})
        assert cfg.train.best_metric is None and task_class(task).best_metric(None) == default
    build_config({"task": "captioning", "train": {"best_metric": "cider"}})  # any case: configs say CIDEr
    with pytest.raises(
        ConfigError, match=r"`train.best_metric` must be a captioning metric, one of CIDEr, .* got 'r_mean'"
    ):
        build_config({"task": "captioning", "train": {"best_metric": "r_mean"}})  # no silent swap to CIDEr


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="`task` must be one of retrieval, captioning, vqa, got 'ocr'"):
        build_config({"task": "ocr"})
    with pytest.raises(ValueError, match="task must be one of retrieval, captioning, vqa, got 'ocr'"):
        task_class("ocr")


class QuizTask(VQATask):
    """A task added the documented way: one class (here a variant of VQA) and one registry entry."""

    name = "quiz"
    supports_video = False
    default_best_metric = "accuracy"
    metrics = ("accuracy",)


def test_a_registered_task_is_known_to_every_module(monkeypatch):
    monkeypatch.setitem(TASKS, QuizTask.name, QuizTask)
    cfg = build_config({"task": "quiz", "model": {"init_from": "tiny", "image_size": SIZE}})
    with pytest.raises(ConfigError, match="`video: true` is supported for retrieval and vqa, not quiz"):
        build_config({"task": "quiz", "video": True})
    with pytest.raises(ConfigError, match="must be a quiz metric, one of accuracy"):
        build_config({"task": "quiz", "train": {"best_metric": "overall"}})
    assert task_model_class("quiz") is QuizTask.hf_model  # the backbone builder
    shards = read_manifest(ROOT / "shards/demo/image_b/train")  # the loaders count the task's items: questions
    loader = build_train_loader(shards, task="quiz", image_size=SIZE, micro_batch_size=10)
    assert loader.steps_per_epoch == shards.num_questions // 10 != shards.num_captions // 10
    bb = load_backbone(cfg.model, "quiz", seed=0)
    prepare_model(bb.model, cfg.method)
    task = build_task(cfg, bb.model, bb.tokenizer)
    assert type(task) is QuizTask and task.settings.inference == "rank"


@pytest.mark.parametrize("name", list(TASKS))
def test_hf_parts_are_the_top_level_modules_of_the_task_class(name):
    """The checkpoint converter keeps an original key only under these prefixes: a missing part would drop weights
    silently, an extra one would keep another class's."""
    from transformers import BlipConfig

    cls = task_class(name)
    with torch.device("meta"):
        model = cls.hf_model(BlipConfig())
    assert sorted(cls.hf_parts) == sorted(f"{child}." for child, _ in model.named_children())


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_prices_its_training_and_evaluation_for_the_dry_run(name):
    from transformers import BlipConfig

    from unitrans_ds.dryrun.plan import forward_flops

    cfg = build_config({"task": name})
    pieces = forward_flops(cfg, BlipConfig())
    cls = task_class(name)
    assert cls.train_passes and set(cls.train_passes) <= set(pieces)
    settings = cls.settings_from(cfg)
    one, two = (cls.eval_flops(pieces, n, n, settings) for n in (100, 200))
    assert one > 0 and two == pytest.approx(2 * one)  # linear in the split's size
