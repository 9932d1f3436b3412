"""VQA (image and video): answer LM loss weighted by the VQA soft score; rank and generate inference."""

from __future__ import annotations

from collections import Counter

import torch

from .base import Task


def answer_weights(answers: list[str]) -> tuple[list[str], list[float]]:
    """Unique answers of one question with their VQA soft score min(1, count/3) (SPEC section 5)."""
    counts = Counter(a for a in answers if a)
    uniq = sorted(counts, key=lambda a: (-counts[a], a))
    return uniq, [min(1.0, counts[a] / 3.0) for a in uniq]


class VQATask(Task):
    name = "vqa"
    task_loss_parts = ("loss_vqa",)
    max_text_tokens = 35
    max_answer_tokens = 10

    def encode_questions(self, pixel_values: torch.Tensor, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-grounded question states [B, Lq, D] (with QASN, when on) and their mask."""
        image_tokens, _ = self.encode_images(pixel_values)
        ids, mask = self.tokenize(questions, first_token=self.enc_id)
        out = self.model.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self.image_mask(image_tokens),
        )
        return out.last_hidden_state, mask

    def answer_nll(self, states: torch.Tensor, states_mask: torch.Tensor, answers: list[str]) -> torch.Tensor:
        """Summed negative log-likelihood of each answer given its question states: [N]."""
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
            logits.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
        )
        return nll.view(len(answers), -1).sum(1)

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        states, smask = self.encode_questions(batch["pixel_values"], batch["question"])
        flat, weights, owner = [], [], []
        for i, answers in enumerate(batch["answers"]):
            uniq, w = answer_weights(answers)
            flat += uniq
            weights += w
            owner += [i] * len(uniq)
        if not flat:
            raise ValueError("a VQA training batch has no answers; check that the training shards carry answers")
        owner_t = torch.tensor(owner, device=self.device)
        nll = self.answer_nll(states[owner_t], smask[owner_t], flat)
        loss = (torch.tensor(weights, device=self.device) * nll).sum() / len(batch["answers"])
        return {"loss": loss, "loss_vqa": loss.detach()}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rank_answers(
        self, pixel_values: torch.Tensor, questions: list[str], answer_list: list[str], k: int
    ) -> list[str]:
        """BLIP's rank inference: the k answers with the highest first-token probability are re-scored by their
        full likelihood; the best one wins."""
        states, smask = self.encode_questions(pixel_values, questions)
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
    def generate_answers(self, pixel_values: torch.Tensor, questions: list[str]) -> list[str]:
        states, smask = self.encode_questions(pixel_values, questions)
        bos = torch.full((states.shape[0], 1), self.bos_id, device=self.device, dtype=torch.long)
        out = self.model.text_decoder.generate(
            input_ids=bos,
            eos_token_id=self.tokenizer.sep_token_id,
            pad_token_id=self.pad_id,
            encoder_hidden_states=states,
            encoder_attention_mask=smask,
            num_beams=self.cfg.eval.num_beams,
            max_length=self.max_answer_tokens,
            min_length=1,
            do_sample=False,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
