"""VQA (image and video): weighted answer LM loss (`train.vqa_loss`); rank and generate inference.

`blip` (default, BLIP's `blip_vqa.py` + `vqa_dataset.py`): each unique answer of a question is weighted by its
count / the number of answers (the weights of a question sum to 1), and the decoder's token loss uses label
smoothing 0.1 (BLIP's `med.py`). `soft-score`: weight min(1, count/3), the VQA soft score, without smoothing.
Either way the per-answer loss is summed over its tokens and the weighted sum is divided by the questions.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BlipForQuestionAnswering

from ..collectives import all_gather_objects, on_rank0
from ..config.schema import Config
from ..data.loaders import EvalLoader
from ..evaluation import vqa as ev
from ..evaluation.inference import inference_mode
from .base import Dist, Task, TaskSettings

#: `train.vqa_loss` -> label smoothing of the answer decoder's token loss.
LABEL_SMOOTHING = {"blip": 0.1, "soft-score": 0.0}


def answer_weights(answers: list[str], scheme: str = "blip") -> tuple[list[str], list[float]]:
    """Unique (non-empty) answers of one question, most frequent first, with their loss weights.

    `blip`: count / number of answers, summing to 1; `soft-score`: min(1, count/3) (SPEC section 5).
    """
    counts = Counter(a for a in answers if a)
    uniq = sorted(counts, key=lambda a: (-counts[a], a))
    if scheme == "blip":
        total = sum(counts.values())
        return uniq, [counts[a] / total for a in uniq]
    if scheme == "soft-score":
        return uniq, [min(1.0, counts[a] / 3.0) for a in uniq]
    raise ValueError(f"train.vqa_loss must be `blip` or `soft-score`, got {scheme!r}")


@dataclass(frozen=True)
class VQASettings(TaskSettings):
    vqa_loss: str  # train.vqa_loss
    num_beams: int  # `generate` inference
    inference: str  # eval.vqa_inference: `rank` or `generate`
    k_test: int  # eval.vqa_k_test
    evaluator: str  # eval.vqa_evaluator
    answer_list: str | None  # data.answer_list
    train_shards: str  # data.train_shards: the answer list's fallback source


class VQATask(Task):
    name = "vqa"
    hf_model = BlipForQuestionAnswering
    fusion_stacks = ("text_encoder.encoder.layer",)
    item_unit = "questions"
    eval_unit = "questions"
    default_best_metric = "overall"
    metrics = ("overall", "accuracy", "acc_yes_no", "acc_number", "acc_other")
    task_loss_parts = ("loss_vqa",)
    max_text_tokens = 35
    max_answer_tokens = 10
    own_config_keys = ("eval.vqa_", "data.answer_list")
    hf_parts = ("vision_model.", "text_encoder.", "text_decoder.")
    train_passes = {"image": 1, "pair": 1, "answer": 1}  # the answer decoder attends to the question states
    settings: VQASettings

    @classmethod
    def eval_flops(cls, pieces: dict[str, float], images: int, texts: int, settings: VQASettings) -> float:  # noqa: ARG003 (the interface's)
        """Per question: its image, the question over it, and `k_test` candidate answers re-scored (rank)."""
        return images * (pieces["image"] + pieces["pair"] + settings.k_test * pieces["answer"])

    def __init__(self, model, tokenizer, settings: VQASettings, dist: Dist):
        super().__init__(model, tokenizer, settings, dist)
        self.candidate_answers: list[str] | None = None  # rank inference's candidates, resolved at the first evaluation

    @classmethod
    def settings_from(cls, cfg: Config) -> VQASettings:
        e = cfg.eval
        return VQASettings(
            **TaskSettings.common(cfg),
            vqa_loss=cfg.train.vqa_loss,
            num_beams=e.num_beams,
            inference=e.vqa_inference,
            k_test=e.vqa_k_test,
            evaluator=e.vqa_evaluator,
            answer_list=cfg.data.answer_list,
            train_shards=cfg.data.train_shards,
        )

    def encode_questions(
        self, pixel_values: torch.Tensor, questions: list[str], image_of: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-grounded question states [B, Lq, D] (with QASN, when on) and their mask. `image_of` [B]: question
        i asks about image `image_of[i]` of `pixel_values` (evaluation passes each distinct image once)."""
        image_tokens, _ = self.encode_images(pixel_values)
        if image_of is not None:
            image_tokens = image_tokens[image_of.to(image_tokens.device)]
        ids, mask = self.tokenize(questions, first_token=self.enc_id)
        out = self.model.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self.image_mask(image_tokens),
        )
        return out.last_hidden_state, mask

    def answer_nll(
        self, states: torch.Tensor, states_mask: torch.Tensor, answers: list[str], label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """Summed negative log-likelihood of each answer given its question states: [N] (with `label_smoothing`,
        the smoothed token cross-entropy, summed the same way)."""
        ids, mask = self.tokenize(answers, max_length=self.max_answer_tokens, first_token=self.bos_id)
        labels = ids.masked_fill(ids == self.pad_id, -100)
        logits = self.model.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=states,
            encoder_attention_mask=states_mask,
            return_logits=True,
        )
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            labels[:, 1:].flatten(),
            ignore_index=-100,
            reduction="none",
            label_smoothing=label_smoothing,
        )
        return nll.view(len(answers), -1).sum(1)

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:  # noqa: ARG002 (the interface's)
        states, smask = self.encode_questions(batch["pixel_values"], batch["question"])
        flat, weights, owner = [], [], []
        for i, answers in enumerate(batch["answers"]):
            uniq, w = answer_weights(answers, self.settings.vqa_loss)
            flat += uniq
            weights += w
            owner += [i] * len(uniq)
        if not flat:
            raise ValueError("a VQA training batch has no answers; check that the training shards carry answers")
        owner_t = torch.tensor(owner, device=self.device)
        nll = self.answer_nll(states[owner_t], smask[owner_t], flat, LABEL_SMOOTHING[self.settings.vqa_loss])
        loss = (torch.tensor(weights, device=self.device) * nll).sum() / len(batch["answers"])
        return {"loss": loss, "loss_vqa": loss.detach()}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rank_answers(
        self,
        pixel_values: torch.Tensor,
        questions: list[str],
        answer_list: list[str],
        k: int,
        image_of: torch.Tensor | None = None,
    ) -> list[str]:
        """BLIP's rank inference: the k answers with the highest first-token probability are re-scored by their
        full likelihood; the best one wins. `image_of` as in `encode_questions`."""
        states, smask = self.encode_questions(pixel_values, questions, image_of)
        a_ids, a_mask = self.tokenize(answer_list, max_length=self.max_answer_tokens, first_token=self.bos_id)
        n = states.shape[0]
        start = torch.full((n, 1), self.bos_id, device=self.device, dtype=torch.long)
        first = self.model.text_decoder(
            input_ids=start, encoder_hidden_states=states, encoder_attention_mask=smask, return_logits=False
        ).logits[:, 0]
        prob_first = first.float().softmax(-1).index_select(1, a_ids[:, 1])
        k = min(k, len(answer_list))
        top_p, top_i = prob_first.topk(k, dim=1)
        flat = top_i.flatten()
        ids, mask = a_ids[flat], a_mask[flat]
        rep = torch.arange(n, device=self.device).repeat_interleave(k)
        labels = ids.masked_fill(ids == self.pad_id, -100)
        logits = self.model.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=states[rep],
            encoder_attention_mask=smask[rep],
            return_logits=True,
        )
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
        ).view(n * k, -1)
        score = -nll.sum(1).view(n, k)
        best = top_i.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
        return [answer_list[i] for i in best.tolist()]

    @torch.no_grad()
    def generate_answers(
        self, pixel_values: torch.Tensor, questions: list[str], image_of: torch.Tensor | None = None
    ) -> list[str]:
        states, smask = self.encode_questions(pixel_values, questions, image_of)
        bos = torch.full((states.shape[0], 1), self.bos_id, device=self.device, dtype=torch.long)
        out = self.model.text_decoder.generate(
            input_ids=bos,
            eos_token_id=self.tokenizer.sep_token_id,
            pad_token_id=self.pad_id,
            encoder_hidden_states=states,
            encoder_attention_mask=smask,
            num_beams=self.settings.num_beams,
            max_length=self.max_answer_tokens,
            min_length=1,
            do_sample=False,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def evaluate(self, loader: EvalLoader, dist: Dist, out_dir: str | Path, merge: bool = True) -> dict[str, float]:
        """VQA accuracy on the loader's split (a collective; `evaluation/vqa.py` has the steps).

        Returns `accuracy` (percent; also under `overall`, the official evaluator's key, which configs and the
        trainer may name as best metric) and, for image VQA, `acc_<answer type>` (e.g. acc_yes_no, acc_number,
        acc_other), plus n_questions; equal on every rank. Rank 0 writes `vqa_results.json`,
        `vqa_per_question.json` and, for rank inference, `answer_list.json` into `out_dir`. Raises
        `NoGroundTruthError` (after writing the results) when no question of the split has answers.
        """
        s, rank, world = self.settings, dist.rank, dist.world_size
        if s.inference not in ev.INFERENCE:
            raise ValueError(f"eval.vqa_inference must be one of {ev.INFERENCE}, got {s.inference!r}")
        answer_list = None
        if s.inference == "rank":
            if self.candidate_answers is None:  # read once per run: the training split's answers do not change
                self.candidate_answers = on_rank0(
                    lambda: ev.resolve_answer_list(s.answer_list, s.train_shards), rank, world
                )
            answer_list = self.candidate_answers
            if rank == 0:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                (Path(out_dir) / ev.ANSWER_LIST_FILE).write_text(json.dumps(answer_list))
        with inference_mode(self, merge):
            local = ev.answer_questions(self, loader, rank, answer_list)
        records = ev.merge_ranks(all_gather_objects(local, world))
        split = str(loader.manifest.folder)
        return on_rank0(lambda: ev.score_and_write(records, Path(out_dir), split, s.video, s.evaluator), rank, world)
