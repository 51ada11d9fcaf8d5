"""Pure-PyTorch soft-target cross-entropy of SwAV's swapped prediction: the ``soft_ce`` op's reference.

Per crop, scores ``z`` [B, K] (fp16/bf16/fp32/fp64) against targets ``t`` [B, K] (fp32/fp64, e.g. summed
Sinkhorn codes), with ``inv_temp = 1 / temperature``::

    lse_b  = logsumexp_k(z_bk * inv_temp)
    w_b    = sum_k t_bk
    rows_b = w_b * lse_b - inv_temp * <t_b, z_b>        (= -sum_k t_bk * log_softmax(z_b * inv_temp)_k)

The op returns per-row values (the caller reduces: ``loss = rows.sum()``). Backward, with ``g = grad_rows``::

    dz_bk = g_b * inv_temp * (w_b * exp(z_bk * inv_temp - lse_b) - t_bk)
    dt_bk = g_b * (lse_b - z_bk * inv_temp)

Accumulation ("acc") dtype: fp64 when z or t is fp64, else fp32; rows and lse are in it, dz in z's dtype and dt
in t's dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from augcl._numerics import acc_dtype


def soft_ce_fwd(z: torch.Tensor, t: torch.Tensor, inv_temp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rows [B], lse [B])`` in the acc dtype (see the module docstring)."""
    acc = acc_dtype(z.dtype, t.dtype)
    zs = z.to(acc) * inv_temp
    ta = t.to(acc)
    lse = torch.logsumexp(zs, dim=1)
    rows = ta.sum(dim=1) * lse - (ta * zs).sum(dim=1)
    return rows, lse


def soft_ce_bwd(grad_rows: torch.Tensor, z: torch.Tensor, t: torch.Tensor, lse: torch.Tensor, inv_temp: float,
                compute_dt: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(dz, dt)``: dz in z's dtype, dt in t's dtype (None when not ``compute_dt``)."""
    acc = acc_dtype(z.dtype, t.dtype)
    g = grad_rows.to(acc).unsqueeze(1)
    lse = lse.to(acc).unsqueeze(1)
    zs = z.to(acc) * inv_temp
    ta = t.to(acc)
    dt = (g * (lse - zs)).to(t.dtype) if compute_dt else None
    w = ta.sum(dim=1, keepdim=True)
    dz = ((g * inv_temp) * (w * torch.exp(zs - lse) - ta)).to(z.dtype)
    return dz, dt
