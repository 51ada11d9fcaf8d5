"""
Fused soft-target cross-entropy of SwAV's swapped prediction
============================================================

Triton kernels for ``augcl``'s ``soft_ce`` op (see augcl/reference/soft_ce.py for the math). Per crop, scores
``z`` [B, K] (fp32 / fp16; bf16 on GPU) against targets ``t`` [B, K] (fp32), ``x = z * inv_temp``::

    lse_b  = logsumexp_k x_bk                    rows_b = (sum_k t_bk) * lse_b - sum_k t_bk x_bk
    dz_bk  = g_b * inv_temp * (w_b * exp(x_bk - lse_b) - t_bk)          dt_bk = g_b * (lse_b - x_bk)

Forward: one program per BLOCK_B rows, a sweep over the K tiles with an online logsumexp in fp32 (the dot and
the weight sum in the same sweep); writes rows and lse [B] (fp32). Backward: one program per BLOCK_B rows, a
sweep summing w, then a sweep recomputing ``exp(x - lse)`` and writing dz (z's dtype) and, if asked, dt (fp32).
Masked loads everywhere (masked lanes are -1e30 for the max, 0 for the sums), int64 offsets, any 2-D strides.
fp64 is not supported (the dispatcher uses the C++ or reference backend for it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, NEG_BIG, block_range, device_reason, dtype_reason, is_interpreted, launch as _launch, load_tile,
    store_tile, tl, triton,
)

_Z_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK_B = 4
_BLOCK_K = 512


@triton.jit
def _soft_ce_fwd_kernel(
    Z, T, ROWS, LSE, B, K, inv_temp, stride_zb, stride_zk, stride_tb, stride_tk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    m_i = tl.full([BLOCK_B], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_B], dtype=tl.float32)
    dot = tl.zeros([BLOCK_B], dtype=tl.float32)
    w = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
        ok = row_ok[:, None] & col_ok[None, :]
        z = load_tile(Z, rows64, row_ok, cols64, col_ok, stride_zb, stride_zk)
        t = load_tile(T, rows64, row_ok, cols64, col_ok, stride_tb, stride_tk)
        x = z.to(tl.float32) * inv_temp
        t = t.to(tl.float32)
        dot += tl.sum(t * x, axis=1)
        w += tl.sum(t, axis=1)
        xm = tl.where(ok, x, NEG_BIG)
        m_new = tl.maximum(m_i, tl.max(xm, axis=1))
        p = tl.where(ok, tl.exp(xm - m_new[:, None]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=1)
        m_i = m_new
    lse = m_i + tl.log(tl.where(row_ok, l_i, 1.0))
    tl.store(LSE + rows64, lse, mask=row_ok)
    tl.store(ROWS + rows64, w * lse - dot, mask=row_ok)


@triton.jit
def _soft_ce_bwd_kernel(
    G, Z, T, LSE, DZ, DT, B, K, inv_temp, stride_zb, stride_zk, stride_tb, stride_tk,
    COMPUTE_DT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    w = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
        t = load_tile(T, rows64, row_ok, cols64, col_ok, stride_tb, stride_tk)
        w += tl.sum(t.to(tl.float32), axis=1)
    g = tl.load(G + rows64, mask=row_ok, other=0.0).to(tl.float32)
    lse = tl.load(LSE + rows64, mask=row_ok, other=0.0).to(tl.float32)
    c1 = g * inv_temp * w
    c2 = g * inv_temp
    for k0 in range(0, K, BLOCK_K):
        cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
        ok = row_ok[:, None] & col_ok[None, :]
        z = load_tile(Z, rows64, row_ok, cols64, col_ok, stride_zb, stride_zk)
        t = load_tile(T, rows64, row_ok, cols64, col_ok, stride_tb, stride_tk)
        x = z.to(tl.float32) * inv_temp
        p = tl.exp(tl.where(ok, x - lse[:, None], NEG_BIG))
        dz = c1[:, None] * p - c2[:, None] * t.to(tl.float32)
        # The outputs are contiguous [B, K].
        store_tile(DZ, rows64, row_ok, cols64, col_ok, K, 1, dz.to(DZ.dtype.element_ty))
        if COMPUTE_DT:
            store_tile(DT, rows64, row_ok, cols64, col_ok, K, 1, g[:, None] * (lse[:, None] - x))



def soft_ce_fwd(z: torch.Tensor, t: torch.Tensor, inv_temp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rows [B], lse [B])`` fp32 (any 2-D strides). Validation is the caller's job (only asserts here)."""
    assert z.dim() == 2 and z.shape == t.shape
    B, K = z.shape
    rows = torch.empty((B,), dtype=torch.float32, device=z.device)
    lse = torch.empty((B,), dtype=torch.float32, device=z.device)
    if B == 0:
        return rows, lse
    _launch(_soft_ce_fwd_kernel, (triton.cdiv(B, _BLOCK_B),))(
        z, t, rows, lse, B, K, float(inv_temp), z.stride(0), z.stride(1), t.stride(0), t.stride(1),
        BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
    )
    return rows, lse


def soft_ce_bwd(grad_rows: torch.Tensor, z: torch.Tensor, t: torch.Tensor, lse: torch.Tensor, inv_temp: float,
                compute_dt: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dz, dt)``: dz contiguous in z's dtype, dt contiguous fp32 (an empty [0] tensor unless compute_dt)."""
    B, K = z.shape
    dz = torch.empty((B, K), dtype=z.dtype, device=z.device)
    dt = torch.empty((B, K) if compute_dt else (0,), dtype=t.dtype, device=t.device)
    if B == 0 or K == 0:
        return dz, dt
    grad_rows = grad_rows.to(torch.float32).contiguous()
    lse = lse.to(torch.float32).contiguous()
    _launch(_soft_ce_bwd_kernel, (triton.cdiv(B, _BLOCK_B),))(
        grad_rows, z, t, lse, dz, dt if compute_dt else dz, B, K, float(inv_temp),
        z.stride(0), z.stride(1), t.stride(0), t.stride(1),
        COMPUTE_DT=bool(compute_dt), BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
    )
    return dz, dt


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_soft_ce_fwd_kernel)


def supports(z: torch.Tensor, t: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on ``(z, t)``, else a human-readable reason why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    if z.dim() != 2:
        return f"z must be 2-D [B, K], got shape {tuple(z.shape)}"
    reason = dtype_reason(("z dtype", z.dtype, _Z_DTYPES), ("t dtype", t.dtype, (torch.float32,)))
    if reason is not None:
        return reason
    if t.device != z.device:
        return f"z is on {z.device} but t on {t.device}"
    return device_reason(_INTERPRETED, z.device, z.dtype, "augcl.kernels.soft_ce")
