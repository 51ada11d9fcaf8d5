"""Drop-in loss modules: ``NTXentLoss`` (lightly-compatible), ``InfoNCELoss`` and its ``MoCoQueue``."""
from augcl.nn.contrastive import InfoNCELoss, MoCoQueue, NTXentLoss

__all__ = ["NTXentLoss", "InfoNCELoss", "MoCoQueue"]
