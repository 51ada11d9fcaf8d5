"""Drop-in loss modules: ``NTXentLoss`` (lightly-compatible), ``InfoNCELoss`` and its ``MoCoQueue``."""
from augcl.nn.contrastive import InfoNCELoss, MoCoQueue, NTXentLoss

__all__ = ["NTXentLoss", "InfoNCELoss", "MoCoQueue"]
from augcl.nn.swav import SwaVLoss, SwaVPrototypes

__all__ += ["SwaVLoss", "SwaVPrototypes"]
from augcl.nn.hallucinator import Hallucinator

__all__ += ["Hallucinator"]

from augcl.nn.unmix import UnMix

__all__ += ["UnMix"]
