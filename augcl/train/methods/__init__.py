"""Self-supervised methods of the training driver: ``build_method(name, backbone, ...)``.

Each method is an ``nn.Module`` whose ``forward(x1, x2)`` takes two augmented views [B, C, S, S] and returns
the scalar loss; ``method.backbone`` is the encoder that is evaluated. The augcl op is called in one place per
method (look for the "augcl op" comment).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from augcl.train.methods.moco import MoCo
from augcl.train.methods.simclr import SimCLR

__all__ = ["METHODS", "DEFAULT_TEMPERATURE", "SimCLR", "MoCo", "build_method"]

METHODS = ("simclr", "moco", "mocov2")
DEFAULT_TEMPERATURE = {"simclr": 0.2, "moco": 0.07, "mocov2": 0.2}


def build_method(name: str, backbone: nn.Module, feat_dim: int, *, temperature: Optional[float] = None,
                 backend: Optional[str] = None, queue_size: int = 4096, momentum: float = 0.99) -> nn.Module:
    """SimCLR, MoCo v1 (linear head, temperature 0.07) or MoCo v2 (MLP head, temperature 0.2)."""
    t = DEFAULT_TEMPERATURE[name] if temperature is None else temperature
    hidden = max(512, feat_dim)
    if name == "simclr":
        return SimCLR(backbone, feat_dim, t, backend, hidden_dim=hidden)
    if name in ("moco", "mocov2"):
        head = "linear" if name == "moco" else "mlp"
        return MoCo(backbone, feat_dim, head, t, queue_size, momentum, backend, hidden_dim=hidden)
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
