"""Pure-PyTorch Sinkhorn-Knopp of SwAV: the stable log-domain reference and the literal oracle.

SwAV's ``distributed_sinkhorn`` (facebookresearch/swav, ``main_swav.py``) on scores ``S`` [B, K]:

    Q = exp(S / eps).T                       # [K, B]
    Q /= sum(Q)                              # total, summed over ranks
    repeat `iterations` times:
        Q /= Q.sum(dim=1, keepdim=True)      # per prototype, summed over ranks
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)      # per sample
        Q /= B * W
    Q *= B * W
    return Q.T                               # codes [B, K]

``exp(S / eps)`` overflows for small eps (fp32: S / eps > 88; fp16 long before). :func:`sinkhorn_reference` runs
the same steps on ``log Q``: every division by a sum becomes the subtraction of a logsumexp, so no exponential
of an unshifted score is ever formed. A per-sample max shift is not equivalent to the reference after a finite
number of iterations (only a global shift is); the log domain is exact.

After at least one iteration every row of the codes (one sample) sums to 1. With ``iterations == 0`` the codes
are ``B * W * softmax over all entries`` (the reference's value).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from augcl._numerics import acc_dtype

__all__ = ["sinkhorn_reference", "sinkhorn_naive_reference"]


def _logsumexp_across_ranks(lse: torch.Tensor, group) -> torch.Tensor:
    """``log(sum over ranks of exp(lse))`` elementwise: an all-reduce MAX, then an all-reduce SUM of the shifted
    exponentials (both work on NCCL and gloo)."""
    m = lse.detach().clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    s = torch.exp(lse - m)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return m + torch.log(s)


@torch.no_grad()
def sinkhorn_reference(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    distributed: bool = False,
    group: Optional["dist.ProcessGroup"] = None,
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes [B, K] of ``scores`` [B, K], computed in the log domain (no gradient).

    Args:
        scores: [B, K] float tensor (any float dtype; computed in fp32, fp64 for fp64).
        epsilon: entropic regularisation (> 0).
        iterations: number of Sinkhorn iterations (>= 0).
        distributed: when True and torch.distributed is initialised, the total and per-prototype sums run over
            every rank's samples (each rank passes its own rows and gets the codes of its rows). The number of
            samples is the sum of every rank's B (= B * W for equal batches).
        group: process group (default: the world).
    """
    acc = acc_dtype(scores.dtype)
    logq = scores.detach().to(acc) / epsilon  # [B, K]; kept untransposed: prototypes are columns here
    k = scores.shape[1]
    world = 1
    if distributed and dist.is_available() and dist.is_initialized():
        world = dist.get_world_size(group)

    if world > 1:
        total = _logsumexp_across_ranks(torch.logsumexp(logq.reshape(-1), dim=0).reshape(1), group)[0]
        n = torch.tensor([float(scores.shape[0])], dtype=torch.float64, device=scores.device)
        dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
        log_n = math.log(n.item())
    else:
        total = torch.logsumexp(logq.reshape(-1), dim=0)
        log_n = math.log(scores.shape[0])
    logq = logq - total
    log_k = math.log(k)

    for _ in range(iterations):
        # Per prototype (a column here, a row of the reference's Q): sum over every rank's samples.
        per_proto = torch.logsumexp(logq, dim=0, keepdim=True)  # [1, K]
        if world > 1:
            per_proto = _logsumexp_across_ranks(per_proto, group)
        logq = logq - (per_proto + log_k)
        # Per sample: local.
        logq = logq - (torch.logsumexp(logq, dim=1, keepdim=True) + log_n)

    return torch.exp(logq + log_n)


@torch.no_grad()
def sinkhorn_naive_reference(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The literal single-process reference algorithm (SwAV's ``distributed_sinkhorn`` with W = 1) in ``dtype``
    (float64 by default: the test oracle). It overflows for small epsilon in narrow dtypes, by design."""
    q = torch.exp(scores.detach().to(dtype) / epsilon).t()  # [K, B]
    q = q / torch.sum(q)
    k, b = q.shape
    for _ in range(iterations):
        q = q / torch.sum(q, dim=1, keepdim=True)
        q = q / k
        q = q / torch.sum(q, dim=0, keepdim=True)
        q = q / b
    q = q * b
    return q.t()
