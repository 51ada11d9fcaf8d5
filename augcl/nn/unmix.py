"""Un-Mix (Shen et al., "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual Representation Learning",
AAAI 2022) for a training loop: :class:`UnMix` mixes a batch and computes the Un-Mix loss, both from
:mod:`augcl.functional.unmix` (the math of the losses is documented there).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from augcl import _validate as V
from augcl.functional.unmix import UNMIX_FORMS, unmix, unmix_info_nce, unmix_nt_xent

__all__ = ["UnMix"]

Temperature = Union[float, Tensor]
Lam = Union[float, Tensor]


# ------------------------------------------------------------------------------------------------ module
def _channel_values(name: str, values, nonzero: bool) -> Optional[Tensor]:
    """UnMix's ``mean`` / ``std``: None, or a non-empty 1-D sequence / tensor of finite numbers (std: no 0), as an
    fp32 CPU tensor. The channel count is checked against the images by ``mix_images``."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got {values.dtype}")
        t = values.detach().to("cpu", torch.float32)
    else:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"{name} must be None, a sequence of floats (one per channel) or a tensor, got "
                            f"{type(values).__name__}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must hold numbers, got {type(v).__name__}")
        t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must hold one value per channel (a non-empty 1-D sequence), got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if nonzero and bool((t == 0).any()):
        raise ValueError(f"{name} must not contain 0 (it divides), got {t.tolist()}")
    return t


class UnMix(nn.Module):
    """Un-Mix for a training loop: mixes a batch (one fused pass, ``augcl.functional.unmix``) and computes the
    Un-Mix loss (:func:`unmix_info_nce` for ``objective="moco"``, :func:`unmix_nt_xent` for ``"simclr"``).

    Usage (MoCo)::

        unmix = augcl.nn.UnMix(alpha=1.0, prob_mixup=0.5, temperature=0.2)
        x_mix, lam, partner = unmix.mix(x1)                      # x1: [B, C, H, W] float or uint8
        q, q_mix = encoder_q(x1), encoder_q(x_mix)
        with torch.no_grad(): k = encoder_k(x2)
        loss = unmix.loss(q, k, q_mix, lam, partner, queue=queue)  # queue: [K, D] normalised keys

    Args:
        alpha: Beta(alpha, alpha) parameter of lam (reference: 1.0).
        prob_mixup: probability of a global (mixup) rather than a region (CutMix) mixture (reference: 0.5).
        per_sample: one (lam, box, mode) per sample instead of one per batch (the reference draws per batch).
        pairing: partner rule passed to ``unmix`` ("reverse" = sample B-1-i, the reference's).
        generator: optional torch.Generator for the draws (default: the global one).
        mean, std: optional per-channel normalisation fused into the mixing pass ([C] tensors or sequences).
        out_dtype: output dtype of the mixed images (default: x's, float32 for uint8).
        objective: "moco" (default) or "simclr".
        temperature: loss temperature (default 0.2; use 0.5 for the SimCLR form as lightly does).
        form, key_negatives, normalize: see :func:`unmix_info_nce` (form/key_negatives apply to "moco").
        gather_distributed: under torch.distributed, the keys (MoCo with ``key_negatives``) or the clean rows
            (SimCLR) of every rank are candidates; see :func:`unmix_nt_xent`.
        backend: backend of both the mixing op and the contrastive op (None = automatic).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        prob_mixup: float = 0.5,
        per_sample: bool = False,
        pairing: str = "reverse",
        generator: Optional[torch.Generator] = None,
        mean=None,
        std=None,
        out_dtype: Optional[torch.dtype] = None,
        *,
        objective: str = "moco",
        temperature: Temperature = 0.2,
        form: str = "reference",
        key_negatives: bool = False,
        normalize: bool = True,
        gather_distributed: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if objective not in ("moco", "simclr"):
            raise ValueError(f"objective must be 'moco' or 'simclr', got {objective!r}")
        if form not in UNMIX_FORMS:
            raise ValueError(f"form must be one of {UNMIX_FORMS}, got {form!r}")
        # Everything that does not need the batch is checked now, not at the first mix() / loss() call.
        V.check_unmix_args(alpha, prob_mixup, per_sample, pairing)
        V.check_temperature(temperature)
        V.check_out_dtype(out_dtype)
        V.check_torch_generator(generator)
        self.alpha = alpha
        self.prob_mixup = prob_mixup
        self.per_sample = per_sample
        self.pairing = pairing
        self.generator = generator
        self.mean = _channel_values("mean", mean, nonzero=False)
        self.std = _channel_values("std", std, nonzero=True)
        self.out_dtype = out_dtype
        self.objective = objective
        self.temperature = temperature
        self.form = form
        self.key_negatives = key_negatives
        self.normalize = normalize
        self.gather_distributed = gather_distributed
        self.backend = backend

    def mix(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(x_mix [B, C, H, W], lam [B] fp32, partner [B] int64)`` of a batch ``x`` [B, C, H, W]."""
        # the CPU tensors as they are: mix_images validates them on the host and keeps their device copies
        mean, std = self.mean, self.std
        return unmix(x, alpha=self.alpha, prob_mixup=self.prob_mixup, per_sample=self.per_sample,
                     pairing=self.pairing, generator=self.generator, mean=mean, std=std,
                     out_dtype=self.out_dtype, backend=self.backend)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Same as :meth:`mix`."""
        return self.mix(x)

    def loss(self, a: Tensor, b: Tensor, mixed: Tensor, lam: Lam, partner: Optional[Tensor] = None,
             queue: Optional[Tensor] = None) -> Tensor:
        """MoCo: ``loss(q, k, q_mix, lam, partner, queue)``; SimCLR: ``loss(z1, z2, z_mix, lam, partner)``."""
        if self.objective == "moco":
            return unmix_info_nce(a, b, mixed, lam, partner, queue, self.temperature, normalize=self.normalize,
                                  key_negatives=self.key_negatives, form=self.form,
                                  gather_distributed=self.gather_distributed, backend=self.backend)
        if queue is not None:
            raise ValueError("queue is only used by objective='moco'")
        return unmix_nt_xent(a, b, mixed, lam, partner, self.temperature, normalize=self.normalize,
                             gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, prob_mixup={self.prob_mixup}, per_sample={self.per_sample}, "
                f"pairing={self.pairing!r}, objective={self.objective!r}, temperature={self.temperature}, "
                f"form={self.form!r}")
