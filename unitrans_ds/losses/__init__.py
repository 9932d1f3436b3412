"""Losses as modules told their rank and world size: ITC, MCAM (JS rank consistency) and ITM."""

from .itc import ITCLoss
from .itm import ITMLoss
from .mcam import MCAMLoss, js_divergence

__all__ = ["ITCLoss", "ITMLoss", "MCAMLoss", "js_divergence"]
