"""``--hallucinate`` and ``--unmix``: what the methods share to use the Hallucinator (Wu et al. 2023) and
Un-Mix (Shen et al. 2022).

Which method takes which, as the papers used them:

| flag            | methods                          | paper                                                      |
|-----------------|----------------------------------|------------------------------------------------------------|
| ``--hallucinate`` | simclr, moco, mocov2, simsiam  | Wu et al., ICCV 2023 (MoCo v1/v2, SimCLR, SimSiam)         |
| ``--unmix``       | simclr, moco, mocov2, byol, swav | Shen et al., AAAI 2022 (SimCLR, BYOL, MoCo v1/v2, SwAV)  |

Both flags together: simclr, moco and mocov2 (the methods both papers share). Anything else is a ConfigError
(one line, exit 2) naming the methods that support the flag.

:class:`AugmentedMethod` is the mixin of the methods: it holds the optional ``hallucinator``
(augcl.nn.Hallucinator, a submodule, so its parameters are in ``method.parameters()``, hence in the optimizer,
and in the checkpoint) and the Un-Mix settings, and draws every random number (Un-Mix's lam / box / mode, the
Hallucinator's lam) from ``self.rng``, a torch.Generator the trainer re-seeds at every epoch from (seed, epoch,
rank): runs reproduce, and a resumed run draws what an uninterrupted one would have.

Un-Mix mixes the first view x1 with its reversed batch (``augcl.functional.unmix``, pairing "reverse", as the
reference's ``torch.flip(x[0], (0,))``) and the mixture gets its own encoder pass (the reference calls the
encoder on it separately, so the clean views' BatchNorm statistics are those of the run without Un-Mix) —
except SwAV with ``--unmix-swav-form authors``, whose mixture shares the encoder batch with the two views as in
the authors' main_swav_unmix.py (methods/swav.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

import augcl.functional as AF
from augcl.nn import Hallucinator

__all__ = ["HALLUCINATE_METHODS", "UNMIX_METHODS", "BOTH_METHODS", "AugmentedMethod", "check_flags",
           "op_backend"]

HALLUCINATE_METHODS = ("simclr", "moco", "mocov2", "simsiam")
UNMIX_METHODS = ("simclr", "moco", "mocov2", "byol", "swav")
BOTH_METHODS = tuple(m for m in HALLUCINATE_METHODS if m in UNMIX_METHODS)


def _names(methods) -> str:
    return ", ".join(methods[:-1]) + " and " + methods[-1]


def check_flags(method: str, hallucinate: bool, unmix: bool) -> Optional[str]:
    """None if ``method`` supports the requested flags, else the reason (one line, for a ConfigError)."""
    if hallucinate and method not in HALLUCINATE_METHODS:
        return (f"--hallucinate: the Hallucinator is used with {_names(HALLUCINATE_METHODS)} (the paper's "
                f"placements), not with --method {method}")
    if unmix and method not in UNMIX_METHODS:
        return (f"--unmix: Un-Mix is used with {_names(UNMIX_METHODS)} (the paper's methods), not with "
                f"--method {method}")
    return None


def op_backend(backend: Optional[str]) -> Optional[str]:
    """The augcl backend of the Hallucinator / Un-Mix ops for the driver's ``backend``: ``--backend eager``
    runs augcl's pure-PyTorch reference of each op (there is no second eager implementation in the driver)."""
    return "reference" if backend == "eager" else backend


class AugmentedMethod(nn.Module):
    """Mixin of the methods: optional Hallucinator and Un-Mix, random numbers from ``self.rng``.

    Call :meth:`setup_extras` in ``__init__``; the trainer calls :meth:`set_rng` at every epoch.
    """

    hallucinator: Optional[Hallucinator]

    def setup_extras(self, hallucinate_dim: Optional[int] = None, unmix: Optional[dict] = None,
                     backend: Optional[str] = None) -> None:
        """``hallucinate_dim``: build a Hallucinator(dim) (the width of the embeddings it extends), or None.
        ``unmix``: None, or dict(alpha=, prob_mixup=, per_sample=) for ``augcl.functional.unmix``."""
        self.op_backend = op_backend(backend)
        self.hallucinator = (Hallucinator(hallucinate_dim, backend=self.op_backend)
                             if hallucinate_dim is not None else None)
        self.unmix_cfg = dict(unmix) if unmix else None
        self.rng: Optional[torch.Generator] = None

    def set_rng(self, generator: Optional[torch.Generator]) -> None:
        """The generator of this epoch's Un-Mix and Hallucinator draws (None: torch's global one)."""
        self.rng = generator

    def _rng_for(self, device: torch.device) -> Optional[torch.Generator]:
        g = self.rng
        return g if g is not None and g.device.type == device.type else None

    def mix(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Un-Mix of a view x [B, C, S, S]: ``(mixed, lam [B], partner [B])``, sample i mixed with B-1-i."""
        c = self.unmix_cfg
        return AF.unmix(x, alpha=c["alpha"], prob_mixup=c["prob_mixup"], per_sample=c["per_sample"],
                        pairing="reverse", generator=self._rng_for(x.device), backend=self.op_backend)

    def hallucinate_lam(self, batch: int, device: torch.device) -> Tensor:
        """One draw of the Hallucinator's lam ~ U(0, 0.1) (0-dim; the reference draws one per call)."""
        return self.hallucinator.sample_lam(batch, device, generator=self._rng_for(device))
