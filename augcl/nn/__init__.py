"""Drop-in loss modules: ``NTXentLoss`` (lightly-compatible), ``InfoNCELoss`` and its ``MoCoQueue``, ``SupConLoss``."""
from augcl.nn.contrastive import InfoNCELoss, MoCoQueue, NTXentLoss

__all__ = ["NTXentLoss", "InfoNCELoss", "MoCoQueue"]
from augcl.nn.supcon import SupConLoss

__all__ += ["SupConLoss"]
from augcl.nn.swav import SwaVLoss, SwaVPrototypes

__all__ += ["SwaVLoss", "SwaVPrototypes"]
from augcl.nn.hallucinator import Hallucinator

__all__ += ["Hallucinator"]

from augcl.nn.unmix import UnMix

__all__ += ["UnMix"]
from augcl.nn.mae import MAE, MixedAE, ViTEncoder

__all__ += ["MAE", "MixedAE", "ViTEncoder"]

from augcl.nn.hard_samples import DiffAugment, HardSampleDiscriminator, HardSampleGame, HardSampleGenerator

__all__ += ["HardSampleGenerator", "HardSampleDiscriminator", "DiffAugment", "HardSampleGame"]
