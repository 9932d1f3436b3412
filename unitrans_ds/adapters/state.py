"""`UniTransState`: the adapter state that is shared across layers (banks, modality scalars, ITC temperature).

It is attached to the BLIP model as the submodule `unitrans`, so that DeepSpeed sees its parameters, they are
saved once under `unitrans.*`, and the wrappers can reference them.
"""

from __future__ import annotations

import torch
from torch import nn

from .bank import SharedBank

ATTR = "unitrans"


#: BLIP's initial ITC temperature; the start when the backbone does not carry a learned one (HF hub checkpoints).
DEFAULT_TEMPERATURE = 0.07


#: The BlipConfig attribute where the converter keeps an original checkpoint's learned `temp` (config.json).
CONFIG_TEMPERATURE_KEY = "itc_temperature"


def starting_temperature(config) -> float:
    """The ITC temperature a prepared model starts from: the learned `temp` of an original BLIP/LAVIS checkpoint,
    which `models.convert_blip` stores as `config.itc_temperature`, else BLIP's initial 0.07 (HF hub checkpoints
    dropped `temp`). Clamped to BLIP's range [0.001, 0.5]."""
    value = getattr(config, CONFIG_TEMPERATURE_KEY, None)
    return min(max(float(value), 0.001), 0.5) if value is not None else DEFAULT_TEMPERATURE


class UniTransState(nn.Module):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        self.banks = nn.ModuleDict()
        self.scales = nn.ParameterDict()
        # ITC temperature (SPEC section 5): BLIP learns it; HF's retrieval class dropped it, so it lives here.
        # Shape [1], not a 0-dim scalar: DeepSpeed broadcasts parameters as byte views, which 0-dim tensors refuse.
        self.temp = nn.Parameter(torch.tensor([float(temperature)]), requires_grad=False)

    def add_bank(self, name: str, bank: SharedBank) -> SharedBank:
        self.banks[name] = bank
        return bank

    def add_scale(self, modality: str, learnable: bool) -> None:
        if modality not in self.scales:
            self.scales[modality] = nn.Parameter(torch.ones(1), requires_grad=learnable)

    def temperature(self) -> torch.Tensor:
        """The ITC temperature as it is: the trainer clamps it to [0.001, 0.5] in place after every optimizer step
        (`engine.optim.clamp_temperature`), as BLIP does, so the forward never cuts its gradient."""
        return self.temp


def get_state(model: nn.Module) -> UniTransState:
    state = getattr(model, ATTR, None)
    if not isinstance(state, UniTransState):
        raise ValueError(
            f"{type(model).__name__} has not been prepared: call unitrans_ds.adapters.prepare_model(model, method) first"
        )
    return state
