"""The Hallucinator (Wu et al., "Hallucination improves the performance of unsupervised visual representation
learning", ICCV 2023) as a drop-in module.

:class:`Hallucinator` — the generator: ``forward(x, k, lam=None) -> [x; h]`` [2B, D], with the fused
:func:`augcl.functional.hallucinate` op inside. Submodules ``fc1``, ``fc2``, ``fc3`` (the reference's names), so
a reference ``Generator``'s state_dict loads (its duplicate ``MLP.*`` keys are accepted too). Its losses
(MoCo, SimCLR, SimSiam placements) are :func:`augcl.functional.hallucinate_moco_loss` and siblings.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from augcl import _validate as V
from augcl._numerics import l2_normalize
from augcl.functional.hallucinator import hallucinate_named

__all__ = ["Hallucinator"]

Lam = Union[None, float, Tensor]

_FC_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")


class Hallucinator(nn.Module):
    """Feature-space positive generator: ``x~ = x + lam (x - k)``, ``h = MLP([x, x~])``, output ``[x; h]``.

    ``MLP = fc1: Linear(2 dim, hidden) -> ReLU -> fc2: Linear(hidden, hidden) -> ReLU -> fc3: Linear(hidden,
    dim)``, nn.Linear's default initialisation (the reference's). Trained by the main loss (it has no loss of its
    own): put its parameters in the optimizer.

    Args:
        dim: embedding width D of x and k.
        hidden: width H of the hidden layers (default 2 * dim, the reference's ``inner_dim = in_dim``).
        lam_range: (lo, hi), lam ~ U(lo, hi) when ``forward`` is not given one (default (0.0, 0.1), the
            reference's ``random.uniform(0, 0.1)``).
        per_sample: draw one lam per row ([B]) instead of one per call (the reference draws one per call).
        normalize_input: L2-normalise x before the extrapolation (and in the returned ``[x; h]``). The reference's
            MoCo does not normalise q while its keys k are normalised; True makes both unit-norm.
        backend: augcl backend for the fused op (None = automatic, see augcl.dispatch).

    ``forward(x, k, lam=None, generator=None)``: x, k [B, D]; lam a float, 0-dim or [B] tensor, or None to draw
    it from ``lam_range`` with ``torch.rand`` (optionally from a ``torch.Generator``). Returns [2B, D].
    Non-finite x, k, lam or parameters raise ValueError naming them (see :func:`augcl.functional.hallucinate`;
    the Hallucinator losses of augcl.functional fold that check into their own, one host sync per call).
    """

    def __init__(self, dim: int, hidden: Optional[int] = None, lam_range: Tuple[float, float] = (0.0, 0.1),
                 per_sample: bool = False, normalize_input: bool = False, backend: Optional[str] = None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        hidden = 2 * dim if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1 (or None for 2 * dim), got {hidden!r}")
        lo, hi = _check_lam_range(lam_range)
        self.dim, self.hidden = dim, hidden
        self.lam_range = (lo, hi)
        self.per_sample = bool(per_sample)
        self.normalize_input = bool(normalize_input)
        self.backend = backend
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, dim)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, lam_range={self.lam_range}, per_sample={self.per_sample}, "
                f"normalize_input={self.normalize_input}")

    def sample_lam(self, batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
        """lam ~ U(lam_range): a [batch] fp32 tensor if ``per_sample`` else a 0-dim one (on ``device``; no host
        sync)."""
        V.check_int("batch", batch, lo=1)
        V.check_torch_generator(generator)
        lo, hi = self.lam_range
        shape = (batch,) if self.per_sample else ()
        u = torch.rand(shape, generator=generator, device=device if generator is None else generator.device)
        return (lo + (hi - lo) * u).to(device)

    def hallucinate(self, x: Tensor, k: Tensor, lam: Lam = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Only the hallucinated rows h [B, D] (x normalised first if ``normalize_input``)."""
        x = self._check(x, k)
        return self._h(x, k, lam, generator, check=True)

    def forward(self, x: Tensor, k: Tensor, lam: Lam = None, generator: Optional[torch.Generator] = None, *,
                check: bool = True) -> Tensor:
        """``[x; h]`` [2B, D]. ``check=False`` leaves the non-finite check of the inputs to the caller (the loss
        functions in augcl.functional.hallucinator fold it into their own single deferred check, one host sync per loss instead of two); they
        still call the module (``generator(...)``), so forward hooks, ``module.compile()`` and wrappers apply."""
        x = self._check(x, k)
        h = self._h(x, k, lam, generator, check)
        return torch.cat((x.to(h.dtype), h), 0)

    def _check(self, x: Tensor, k: Tensor) -> Tensor:
        for name, t in (("x", x), ("k", k)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{name} must be a 2-D tensor [B, D], got shape {tuple(t.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x has width {x.shape[1]} but this Hallucinator was built for dim={self.dim}")
        if tuple(k.shape) != tuple(x.shape):
            raise ValueError(f"k must have the shape of x {list(x.shape)} (one positive per anchor), got "
                             f"{list(k.shape)}")
        return l2_normalize(x) if self.normalize_input else x

    def _h(self, x: Tensor, k: Tensor, lam: Lam, generator: Optional[torch.Generator], check: bool = True) -> Tensor:
        V.check_torch_generator(generator)
        if lam is None:
            lam = self.sample_lam(x.shape[0], x.device, generator)
        return hallucinate_named(x, k, lam, (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                             self.fc3.weight, self.fc3.bias),
                                 backend=self.backend, check=check, weight_names=_FC_NAMES)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The reference Generator also registers its fc layers inside ``MLP = Sequential(fc1, ReLU, fc2, ReLU,
        # fc3)``, so its state_dict holds every weight twice (MLP.0/2/4.* alias fc1/2/3.*). Accept those keys:
        # use them where the fc key is missing, drop them otherwise.
        for i, fc in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
            for p in ("weight", "bias"):
                alias = f"{prefix}MLP.{i}.{p}"
                if alias in state_dict:
                    value = state_dict.pop(alias)
                    state_dict.setdefault(f"{prefix}{fc}.{p}", value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _check_lam_range(lam_range) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in lam_range)
    except (TypeError, ValueError):
        raise TypeError(f"lam_range must be a pair of floats (lo, hi), got {lam_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"lam_range must be finite with lo <= hi, got {lam_range!r}")
    return lo, hi
