"""Dense reference of the ``topk_attention`` op (MixedAE's homologous attention, arXiv 2303.17152), in plain PyTorch.

For queries ``q``, keys ``k``, values ``v`` [B, H, L, Dh] and ``S = scale * q k^T`` [B, H, L, L], each query row i
keeps the set ``K(i)`` of its ``top_k`` largest logits, ordered by (value descending, key index ascending), so that
among equal logits the lower key index is kept; with ``keep_first=True`` key 0 is added to ``K(i)`` (``top_k + 1``
keys when it was not already among them). Then::

    P_ij = exp(S_ij - lse_i) for j in K(i), 0 elsewhere;   lse_i = log sum_{j in K(i)} exp(S_ij)
    O_i  = sum_j P_ij v_j

The kept set is a constant of the backward (as ``torch.topk`` + a mask would make it): with ``dP = dO v^T`` and
``D_i = sum_d dO_id O_id``::

    dS_ij = P_ij (dP_ij - D_i);   dq = scale dS k;   dk = scale dS^T q;   dv = P^T dO

The selection is recomputed in the backward from the same logits (same order of operations, so the same set).

This builds [B, H, L, L] logits, masks and probabilities (O(L^2) memory per head): it is the tests' oracle and
the fallback backend, and the eager baseline of the benchmarks is :func:`topk_attention_eager` (torch.topk +
scatter mask + softmax + matmul, autograd through all of it). Computed in the accumulation dtype (float32 for
fp16 / bf16 / fp32, float64 for float64); the output is returned in q's dtype, the logsumexp in the accumulation
dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from augcl._numerics import acc_dtype

__all__ = ["topk_attention_reference", "topk_attention_fwd_reference", "topk_attention_bwd_reference",
           "topk_attention_kept", "topk_attention_eager", "default_scale"]


def default_scale(head_dim: int) -> float:
    """``head_dim ** -0.5``, the usual softmax-attention scale."""
    return float(head_dim) ** -0.5


def topk_attention_kept(logits: torch.Tensor, top_k: int, keep_first: bool = False) -> torch.Tensor:
    """Boolean mask [..., L] of the kept keys of each row of ``logits`` [..., L] (see the module docstring).

    A stable descending sort keeps equal logits in index order, so its first ``top_k`` positions are the top_k
    largest with ties going to the lower index. NaN logits sort first (torch's sort puts NaN above every number);
    the functional API rejects non-finite inputs before any backend runs."""
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :top_k]
    kept = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    kept.scatter_(-1, order, True)
    if keep_first:
        kept[..., 0] = True
    return kept


def _logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    acc = acc_dtype(q.dtype)
    return torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale


def topk_attention_fwd_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int,
                                 scale: Optional[float] = None,
                                 keep_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, L, Dh] in q's dtype, lse [B, H, L] in the accumulation dtype)``; not differentiable by itself
    (the reference backend pairs it with :func:`topk_attention_bwd_reference`)."""
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    acc = acc_dtype(q.dtype)
    s = _logits(q, k, scale)
    kept = topk_attention_kept(s, top_k, keep_first)
    s = s.masked_fill(~kept, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.matmul(p, v.to(acc))
    return out.to(q.dtype), lse


def topk_attention_bwd_reference(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, top_k: int, scale: Optional[float] = None,
                                 keep_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` in the dtypes of q, k, v from the saved ``out`` and ``lse`` (the backward formulas of the
    module docstring; the selection is recomputed from the logits)."""
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    acc = acc_dtype(q.dtype)
    s = _logits(q, k, scale)
    kept = topk_attention_kept(s, top_k, keep_first)
    p = torch.where(kept, torch.exp(s - lse.to(acc).unsqueeze(-1)), torch.zeros((), dtype=acc, device=s.device))
    do = grad_out.to(acc)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.to(acc).transpose(-1, -2))
    d = (do * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - d)
    dq = torch.matmul(ds, k.to(acc)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(acc)) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def topk_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int,
                             scale: Optional[float] = None, keep_first: bool = False) -> torch.Tensor:
    """Top-k attention ``out [B, H, L, Dh]`` in q's dtype, differentiable by autograd (through the masked softmax;
    the mask is a constant, as in the op). The tests' oracle: call it with float64 inputs for the reference and
    with the inputs' own dtype for the same-precision yardstick."""
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    acc = acc_dtype(q.dtype)
    s = _logits(q, k, scale)
    with torch.no_grad():
        kept = topk_attention_kept(s, top_k, keep_first)
    p = torch.softmax(s.masked_fill(~kept, float("-inf")), dim=-1)
    return torch.matmul(p, v.to(acc)).to(q.dtype)


def topk_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int,
                         scale: Optional[float] = None, keep_first: bool = False) -> torch.Tensor:
    """The eager form a user would write (the benchmarks' baseline): ``torch.topk`` of the logits, a scattered
    -inf mask, softmax, matmul, all in q's dtype. Ties are whatever ``torch.topk`` picks (not specified)."""
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    idx = s.topk(top_k, dim=-1).indices
    mask = torch.full_like(s, float("-inf")).scatter(-1, idx, 0.0)
    if keep_first:
        mask[..., 0] = 0.0
    return torch.matmul(torch.softmax(s + mask, dim=-1), v)
