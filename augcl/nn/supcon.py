"""Supervised contrastive loss module: :class:`SupConLoss`, one call of :func:`augcl.functional.supcon`."""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from augcl import _validate as V
from augcl.functional.supcon import supcon

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    """SupCon L_out (Khosla et al. 2020, https://arxiv.org/abs/2004.11362) as a module: the configuration is
    stored, ``forward(features, labels)`` is :func:`augcl.functional.supcon` (see it for the formula, what follows
    the paper and what is augcl's design, and the errors).

    Args:
        temperature: float > 0 or a one-element tensor (e.g. an ``nn.Parameter``). Default 0.1.
        normalize: L2-normalise the rows first (default True).
        reduction: ``"mean"`` (over anchors with a positive), ``"sum"`` or ``"none"``.
        gather_distributed: candidates from every rank ([N, D] features only).
        backend: augcl backend (None = automatic).

    ``forward(features, labels)``: features [N, D] with labels [N], or [G, N, D] with [G, N] (G independent
    problems). Returns float32 (float64 for float64 features). For pytorch-metric-learning's call interface and
    reducer use :class:`augcl.compat.pml.SupConLoss`.
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.1, *, normalize: bool = True, reduction: str = "mean",
                 gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        V.check_temperature(temperature)
        V.check_reduction(reduction)
        for name, flag in (("normalize", normalize), ("gather_distributed", gather_distributed)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.temperature = temperature
        self.normalize = normalize
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return supcon(features, labels, self.temperature, normalize=self.normalize, reduction=self.reduction,
                      gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, normalize={self.normalize}, reduction={self.reduction!r}, "
                f"gather_distributed={self.gather_distributed}")
