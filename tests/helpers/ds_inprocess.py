"""A real one-rank gloo group with DeepSpeed initialised in the test process, for tests that build DeepSpeed
engines in-process (several ZeRO stages in one test, bf16 on CPU). Import the fixture into a test module."""

from __future__ import annotations

import os

import pytest

from .ports import free_port


def forget_deepspeed_groups() -> None:
    """Drop the process groups DeepSpeed caches at module level (`deepspeed.utils.groups._WORLD_GROUP`, ...).

    A test process that destroys its group and makes a new one later (another module's fixture) would otherwise
    hand the destroyed group to the next engine: "Group ... is not registered". Call it after destroying a group.
    """
    import torch.distributed as dist
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.endswith("_GROUP") and isinstance(value, dist.ProcessGroup):
            setattr(groups, name, None)


@pytest.fixture(scope="module")
def ds_world_of_one():
    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1")  # deepspeed.initialize asks for them
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    yield
    if created:
        dist.destroy_process_group()
        forget_deepspeed_groups()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
