"""
Log-domain Sinkhorn-Knopp of SwAV (single process)
==================================================

Triton kernels for ``augcl``'s ``sinkhorn`` op: the equipartitioned soft codes of SwAV computed from the
prototype scores. Codes carry no gradient, so there is only a forward.

Math
----
``scores`` S [B, K] (fp32 or fp16; bf16 on GPU), ``epsilon`` > 0, ``iterations`` >= 0. SwAV's algorithm::

    Q = exp(S / eps).T                                          [K, B]
    Q /= sum(Q)
    repeat iterations times:
        Q /= Q.sum(dim=1, keepdim=True); Q /= K                 (per prototype k, over samples)
        Q /= Q.sum(dim=0, keepdim=True); Q /= B                 (per sample b, over prototypes)
    codes = (Q * B).T                                           [B, K] fp32

overflows for small eps (exp(1 / 0.01) > fp32 max), so it is computed in the log domain, which is the same
math. Rather than rewriting the [B, K] log-matrix in every pass, the kernels keep it *implicitly* as::

    L[b, k] = S[b, k] / eps - u[k] - v[b]

with two fp32 dual vectors u [K] and v [B]. Each normalisation of SwAV subtracts a per-column (per-row)
logsumexp of the current L, i.e. it adds that logsumexp to u (v), and the old value cancels::

    init:   v[b] = c = logsumexp_{b,k} S / eps     u[k] = 0         (Q /= sum(Q))
    column: u[k] = logsumexp_b (S[b, k] / eps - v[b]) + log K
    row:    v[b] = logsumexp_k (S[b, k] / eps - u[k]) + log B
    codes[b, k] = exp(S[b, k] / eps - u[k] - v[b] + log B)

This is the log-domain algorithm (``L -= logsumexp``) with the subtractions regrouped; it is not the per-sample
max shift, which is not equivalent after finitely many iterations.

Design and trade-offs
---------------------
* One launch per pass, each a grid over tiles: ``_row_lse_kernel`` (one program per BLOCK_B rows, sweeping the
  K tiles with an online logsumexp) and ``_col_lse_kernel`` (one program per BLOCK_K columns, sweeping the B
  tiles), then ``_codes_kernel`` (2-D grid, elementwise). ``iterations`` = T costs 2 + 2T launches plus a tiny
  torch logsumexp over the [B] row results for c. A single persistent program doing everything in one launch
  would run on one SM and serialise B * K * (2T + 2) exponentials there; at SwAV's sizes (B ~ 256-4096,
  K ~ 3000, T = 3) the launch overhead of ~10 small launches is far below that, so the multi-launch design was
  chosen.
* No [B, K] scratch buffer: every pass re-reads S (in its own dtype and strides, 2 bytes per element for fp16)
  and recomputes S / eps, instead of writing and re-reading an fp32 log-matrix (4 bytes per element, plus the
  writes). The only extra memory is u, v and the [B] row results (fp32).
* Deterministic: every u[k] / v[b] is owned by exactly one program and reduced in a fixed order; no atomics.
* int64 offsets, masks on every load and store; masked cells enter the logsumexp as exactly 0 (tl.where after
  the exponential).
* fp64 is not supported (the C++ CPU kernel handles it).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._triton import HAS_TRITON, device_reason, is_interpreted, tl, triton  # noqa: F401  (stand-ins when triton is missing)

__all__ = ["sinkhorn_fwd", "supports"]

# Finite stand-in for -inf as the initial running max of the online logsumexp (see kernels/contrastive.py):
# exp(m_old - m_new) never becomes exp(-inf - -inf) = nan.
NEG_BIG = tl.constexpr(-1.0e30)

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tile sizes: the sweeps stream [BLOCK_B, BLOCK_K] tiles; 64 x 64 fp32 is 16 KiB of registers per program.
_BLOCK_B = 64
_BLOCK_K = 64


@triton.jit
def _row_lse_kernel(
    S, U, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk,
    HAS_U: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[b] = logsumexp_k (S[b, k] * inv_eps - U[k]) + add_const  (U taken as 0 unless HAS_U).

    Grid (cdiv(B, BLOCK_B),): each program owns BLOCK_B rows and sweeps all K columns.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    m_i = tl.full([BLOCK_B], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        cols64 = cols.to(tl.int64)
        ok = row_ok[:, None] & col_ok[None, :]
        s = tl.load(S + rows64[:, None] * stride_sb + cols64[None, :] * stride_sk, mask=ok, other=0.0)
        x = s.to(tl.float32) * inv_eps
        if HAS_U:
            u = tl.load(U + cols64, mask=col_ok, other=0.0)
            x = x - u[None, :]
        m_new = tl.maximum(m_i, tl.max(tl.where(ok, x, NEG_BIG), axis=1))
        p = tl.where(ok, tl.exp(x - m_new[:, None]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=1)
        m_i = m_new
    tl.store(OUT + rows64, m_i + tl.log(l_i) + add_const, mask=row_ok)


@triton.jit
def _col_lse_kernel(
    S, V, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[k] = logsumexp_b (S[b, k] * inv_eps - V[b]) + add_const.

    Grid (cdiv(K, BLOCK_K),): each program owns BLOCK_K columns and sweeps all B rows.
    """
    pid = tl.program_id(0)
    cols = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    cols64 = cols.to(tl.int64)
    m_i = tl.full([BLOCK_K], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_K], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        rows64 = rows.to(tl.int64)
        ok = row_ok[:, None] & col_ok[None, :]
        s = tl.load(S + rows64[:, None] * stride_sb + cols64[None, :] * stride_sk, mask=ok, other=0.0)
        v = tl.load(V + rows64, mask=row_ok, other=0.0)
        x = s.to(tl.float32) * inv_eps - v[:, None]
        m_new = tl.maximum(m_i, tl.max(tl.where(ok, x, NEG_BIG), axis=0))
        p = tl.where(ok, tl.exp(x - m_new[None, :]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=0)
        m_i = m_new
    tl.store(OUT + cols64, m_i + tl.log(l_i) + add_const, mask=col_ok)


@triton.jit
def _codes_kernel(
    S, U, V, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk, stride_ob, stride_ok,
    HAS_U: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[b, k] = exp(S[b, k] * inv_eps - U[k] - V[b] + add_const). Grid (cdiv(B, BLOCK_B), cdiv(K, BLOCK_K))."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    col_ok = cols < K
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    ok = row_ok[:, None] & col_ok[None, :]
    s = tl.load(S + rows64[:, None] * stride_sb + cols64[None, :] * stride_sk, mask=ok, other=0.0)
    v = tl.load(V + rows64, mask=row_ok, other=0.0)
    x = s.to(tl.float32) * inv_eps - v[:, None]
    if HAS_U:
        u = tl.load(U + cols64, mask=col_ok, other=0.0)
        x = x - u[None, :]
    codes = tl.exp(x + add_const)
    tl.store(OUT + rows64[:, None] * stride_ob + cols64[None, :] * stride_ok, codes, mask=ok)


def _launch(kernel, grid):
    # Through torch.library.wrap_triton, so the launcher can be wrapped in torch.library.triton_op and traced by
    # torch.compile (eager calls go straight to kernel[grid]).
    return torch.library.wrap_triton(kernel)[grid]


def sinkhorn_fwd(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's single-process Sinkhorn-Knopp codes [B, K] fp32 from ``scores`` [B, K] (any 2-D strides).

    Validation is the caller's job (only asserts here).
    """
    assert scores.dim() == 2
    assert epsilon > 0 and iterations >= 0
    B, K = scores.shape
    dev = scores.device
    codes = torch.empty((B, K), dtype=torch.float32, device=dev)
    if B == 0 or K == 0:
        return codes
    # x = s * (1 / eps) in fp32: inv_eps is passed as a Python float (fp32 kernel argument).
    inv_eps = 1.0 / float(epsilon)
    log_b = math.log(B)
    log_k = math.log(K)
    ssb, ssk = scores.stride(0), scores.stride(1)
    grid_b = (triton.cdiv(B, _BLOCK_B),)
    grid_k = (triton.cdiv(K, _BLOCK_K),)

    # Q /= sum(Q): c = logsumexp over all cells, carried as v[b] = c for every b.
    row = torch.empty((B,), dtype=torch.float32, device=dev)
    _launch(_row_lse_kernel, grid_b)(
        scores, row, row, B, K, inv_eps, 0.0, ssb, ssk,
        HAS_U=False, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
    )
    v = torch.logsumexp(row, dim=0).expand(B).contiguous()
    u = torch.zeros((K,), dtype=torch.float32, device=dev)
    for _ in range(iterations):
        _launch(_col_lse_kernel, grid_k)(
            scores, v, u, B, K, inv_eps, log_k, ssb, ssk,
            BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
        )
        _launch(_row_lse_kernel, grid_b)(
            scores, u, v, B, K, inv_eps, log_b, ssb, ssk,
            HAS_U=True, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
        )
    _launch(_codes_kernel, (triton.cdiv(B, _BLOCK_B), triton.cdiv(K, _BLOCK_K)))(
        scores, u, v, codes, B, K, inv_eps, log_b, ssb, ssk, codes.stride(0), codes.stride(1),
        HAS_U=iterations > 0, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K,
    )
    return codes


def _interpreted() -> bool:
    """Whether the kernels were built for the triton interpreter (decided when this module was imported)."""
    return is_interpreted(_row_lse_kernel)


def supports(scores: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on ``scores``, else a human-readable reason why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    if scores.dim() != 2:
        return f"scores must be 2-D [B, K], got shape {tuple(scores.shape)}"
    if scores.dtype == torch.float64:
        return "float64 is not supported by the triton kernels"
    if scores.dtype not in _SUPPORTED_DTYPES:
        return f"scores dtype {scores.dtype} is not supported by the triton kernels (float32, float16, bfloat16)"
    return device_reason(_row_lse_kernel, scores.device, scores.dtype, "augcl.kernels.sinkhorn")
