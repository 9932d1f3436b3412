"""Losses as modules told what they use of the process group (world size; ITM also its rank): ITC, MCAM (JS rank
consistency) and ITM."""

from .itc import ITCLoss
from .itm import ITMLoss
from .mcam import MCAMLoss, js_divergence

__all__ = ["ITCLoss", "ITMLoss", "MCAMLoss", "js_divergence"]
