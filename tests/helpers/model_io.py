"""What a test compares between two models: every output a task class produces, including generate()."""

from __future__ import annotations

import torch
from conftest import tiny_inputs


@torch.no_grad()
def outputs(model, task: str, generate: bool = True) -> dict[str, torch.Tensor]:
    x = tiny_inputs(model)
    out = {}
    if task == "retrieval":
        out["itm"] = model(**x, use_itm_head=True).itm_score
        out["itc"] = model(**x, use_itm_head=False).itm_score
    elif task == "captioning":
        out["logits"] = model(**x).logits
        if generate:
            out["gen"] = model.generate(pixel_values=x["pixel_values"], num_beams=2, max_length=8, min_length=3)
    else:
        labels = x["input_ids"].clone()
        out["loss"] = model(**x, labels=labels).loss
        if generate:
            out["gen"] = model.generate(
                input_ids=x["input_ids"],
                pixel_values=x["pixel_values"],
                attention_mask=x["attention_mask"],
                max_length=6,
            )
    return out
