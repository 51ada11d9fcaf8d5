"""The two losses the methods call, bound to a backend: augcl's fused ops, or plain PyTorch (``--backend eager``).

The eager versions build the full similarity matrix and call ``F.cross_entropy``, the textbook way; they are
here to compare against (speed, memory, values), not to be used.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

import augcl.functional as AF
from augcl.distributed import gather_with_grad, world_info

__all__ = ["naive_nt_xent", "naive_info_nce", "nt_xent_fn", "info_nce_fn"]


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
                  gather_distributed: bool = False) -> torch.Tensor:
    """NT-Xent of z1, z2 [B, D] via the [2B, 2B] similarity matrix (mean over the 2B rows).

    With ``gather_distributed`` (under torch.distributed) the candidates are every rank's 2B rows, gathered
    with gradient ([2B, W*2B] similarities), as ``augcl.functional.nt_xent(..., gather_distributed=True)``."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n, b = z.shape[0], z1.shape[0]
    rank, world = world_info() if gather_distributed else (0, 1)
    cands = gather_with_grad(z) if world > 1 else z
    rows = torch.arange(n, device=z.device)
    sim = (z @ cands.T) / temperature
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    self_mask[rows, rank * n + rows] = True
    sim = sim.masked_fill(self_mask, float("-inf"))
    target = rank * n + (rows + b) % n  # row i's positive: the other view of its sample
    return F.cross_entropy(sim, target)


def naive_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE of q, k [B, D] against queue [K, D] (rows used as stored), via [B, 1 + K] logits."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.float().T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nt_xent_fn(backend: Optional[str], gather_distributed: bool = False
               ) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """``loss(z1, z2, temperature)``: augcl's fused NT-Xent on ``backend`` (None = automatic), or the naive one
    for ``"eager"``; with ``gather_distributed`` the negatives are the global batch's (under DDP)."""
    if backend == "eager":
        return lambda z1, z2, temperature: naive_nt_xent(z1, z2, temperature, gather_distributed)

    def loss(z1, z2, temperature):
        return AF.nt_xent(z1, z2, temperature, gather_distributed=gather_distributed, backend=backend)

    return loss


def info_nce_fn(backend: Optional[str]) -> Callable[..., torch.Tensor]:
    """``loss(q, k, queue, temperature)``: augcl's fused InfoNCE on ``backend``, or the naive one for ``"eager"``."""
    if backend == "eager":
        return naive_info_nce

    def loss(q, k, queue, temperature):
        return AF.info_nce(q, k, queue, temperature, backend=backend)

    return loss
