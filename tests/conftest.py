"""Shared fixtures: tiny BLIP models built from `BlipConfig` (same structure as BLIP-base, tiny sizes)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread in the test process and, through the environment, in every process it starts: the tiny models
# gain nothing from a second thread, and on a loaded 2-core machine OpenMP threads spin-wait for each other (10 steps
# of a tiny training took 135 s with 2 threads and 6 s with 1 under the same load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from unitrans_ds.engine.distributed import prefer_this_environments_ninja  # noqa: E402

# Tests that start a DeepSpeed group in this process (tests/helpers/ds_inprocess.py, test_checkpoint.py,
# test_ds_config.py) load its CPU communication op without going through `init_distributed`, which puts the
# environment's ninja first. Under `python -m pytest` without an activated environment they found the system's
# ninja, which rebuilt the op (40 to 75 s), and the next rank, with the environment's, rebuilt it again: two
# compiles in every suite run. Set once here for this process and every process it starts.
prefer_this_environments_ninja()

from unitrans_ds.config.schema import TinyModelConfig  # noqa: E402
from unitrans_ds.models.tiny import tiny_blip_config  # noqa: E402
from unitrans_ds.tasks import task_class  # noqa: E402

IMAGE_SIZE = 32


def make_tiny(task: str, seed: int = 0, **sizes) -> torch.nn.Module:
    """A deterministic tiny BLIP of the task's class, in eval mode (dropout off)."""
    torch.manual_seed(seed)
    cfg = tiny_blip_config(TinyModelConfig(**sizes), image_size=IMAGE_SIZE)
    return task_class(task).hf_model(cfg).eval()


def tiny_inputs(model, batch: int = 2, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(10, vocab, (batch, seq), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    pix = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pix}


@pytest.fixture
def tiny_factory():
    return make_tiny
