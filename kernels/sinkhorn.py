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
Two paths, picked by size in :func:`sinkhorn_fwd` (``path=`` forces one):

* **one program** (``path="single"``, B * K <= ``SINGLE_PROGRAM_MAX_CELLS``): ``_sinkhorn_single_program_kernel``
  runs the whole algorithm in one launch of one program: the row pass for c, then ``iterations`` column and
  row passes, then the codes, each a loop over [BLOCK_B, BLOCK_K] tiles of S. u and v live in a (B + K) fp32
  scratch vector in global memory (L1/L2-resident at these sizes); ``tl.debug_barrier()`` (a CTA-wide
  ``bar.sync``, which also makes the program's global writes visible to all its threads) separates the
  passes. Even u = 0 is written by the kernel, so the call is exactly one launch (plus empty allocations).
  Triton has no grid-wide barrier, so this only works as one program, i.e. on one SM.
* **multi launch** (``path="multi"``, larger problems): one grid per pass: ``_row_lse_kernel`` (one program
  per BLOCK_B rows, sweeping the K tiles with an online logsumexp) and ``_col_lse_kernel`` (one program per
  BLOCK_K columns, sweeping the B tiles), then ``_codes_kernel`` (2-D grid, elementwise): 2 + 2T launches
  plus a tiny torch logsumexp over the [B] row results for c.

Why the threshold is B * K = 2^17 (an estimate, not yet measured on a GPU; re-tune with
``benchmarks/bench_sinkhorn.py --sinkhorn-only`` on one): the one-program path streams the (2T + 2) passes
over S through one SM. After the first pass S is L2-resident, so a 64 x 128 tile costs roughly
0.3-0.5 us (L2 latency plus 8192 exps at 16 MUFU exps / clock / SM), i.e. about
(2T + 2) * B * K / 8192 * 0.5 us = 64 us for T = 3 at 2^17 cells. The multi-launch path at T = 3 issues
about 11 dependent launches (8 Triton kernels, logsumexp, expand/copy, zeros) at ~5 us of GPU-side launch
latency each, and 10-30 us of CPU-side launch cost each in eager mode: 50-300 us regardless of size. Below
~2^17 cells the single program wins; above, the multi-launch grid spreads the passes over all SMs. SwAV's
K = 3000 puts B <= 43 on the one-program path; the benchmark's B = 256..4096 use the multi-launch path.

Common to both:

* No [B, K] scratch buffer: every pass re-reads S (in its own dtype and strides, 2 bytes per element for fp16)
  and recomputes S / eps, instead of writing and re-reading an fp32 log-matrix (4 bytes per element, plus the
  writes). The only extra memory is u, v and the [B] row results (fp32).
* Deterministic: every u[k] / v[b] is owned by exactly one program (one loop step) and reduced in a fixed
  order; no atomics.
* int64 offsets, masks on every load and store; masked cells enter the logsumexp as exactly 0 (tl.where after
  the exponential).
* fp64 is not supported (the C++ CPU kernel handles it).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, NEG_BIG, block_range, device_reason, dtype_reason, env_choice, is_interpreted, launch as _launch,
    load_tile, store_tile, tl, triton,
)

__all__ = ["sinkhorn_fwd", "supports", "select_path", "SINGLE_PROGRAM_MAX_CELLS"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tile sizes: the sweeps stream [BLOCK_B, BLOCK_K] tiles; 64 x 64 fp32 is 16 KiB of registers per program.
_BLOCK_B = 64
_BLOCK_K = 64

# Candidate tiles of the multi-launch path, timed by the first GPU run (benchmarks/gpu_candidates.py): at
# B = 4096, K = 3000 the default 64 x 64 launches 64 row programs and 47 column programs, on 132 SMs of an H100 /
# H200; "32x32" launches 128 and 94, "16x32" 256 and 94 (smaller tiles: less work per program, every SM busy).
# Switch AUGCL_SINKHORN_TILES, read at every call; unset = 64x64.
TILES_ENV = "AUGCL_SINKHORN_TILES"
TILE_CANDIDATES = {"64x64": (64, 64), "32x32": (32, 32), "16x32": (16, 32), "32x64": (32, 64)}

# The one-program path: larger tiles (more loads in flight for the one SM), 8 warps = 32 fp32 per thread.
_SINGLE_BLOCK_B = 64
_SINGLE_BLOCK_K = 128
_SINGLE_NUM_WARPS = 8
# B * K up to which one program does the whole Sinkhorn (see "Why the threshold" in the module docstring).
SINGLE_PROGRAM_MAX_CELLS = 1 << 17
_PATHS = ("single", "multi")


@triton.jit
def _row_lse_tile(
    S, U, rows, row_ok, K, inv_eps, stride_sb, stride_sk,
    HAS_U: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """logsumexp_k (S[b, k] * inv_eps - U[k]) for the BLOCK_B rows ``rows`` (U taken as 0 unless HAS_U):
    a sweep over the K tiles with an online logsumexp. Returns [BLOCK_B] fp32 (junk where not row_ok)."""
    rows64 = rows.to(tl.int64)
    m_i = tl.full([BLOCK_B], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
        ok = row_ok[:, None] & col_ok[None, :]
        s = load_tile(S, rows64, row_ok, cols64, col_ok, stride_sb, stride_sk)
        x = s.to(tl.float32) * inv_eps
        if HAS_U:
            u = tl.load(U + cols64, mask=col_ok, other=0.0)
            x = x - u[None, :]
        m_new = tl.maximum(m_i, tl.max(tl.where(ok, x, NEG_BIG), axis=1))
        p = tl.where(ok, tl.exp(x - m_new[:, None]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=1)
        m_i = m_new
    return m_i + tl.log(l_i)


@triton.jit
def _col_lse_tile(
    S, V, cols, col_ok, B, inv_eps, stride_sb, stride_sk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """logsumexp_b (S[b, k] * inv_eps - V[b]) for the BLOCK_K columns ``cols``: a sweep over the B tiles.
    Returns [BLOCK_K] fp32 (junk where not col_ok)."""
    cols64 = cols.to(tl.int64)
    m_i = tl.full([BLOCK_K], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_K], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows, row_ok, rows64 = block_range(b0, BLOCK_B, B)
        ok = row_ok[:, None] & col_ok[None, :]
        s = load_tile(S, rows64, row_ok, cols64, col_ok, stride_sb, stride_sk)
        v = tl.load(V + rows64, mask=row_ok, other=0.0)
        x = s.to(tl.float32) * inv_eps - v[:, None]
        m_new = tl.maximum(m_i, tl.max(tl.where(ok, x, NEG_BIG), axis=0))
        p = tl.where(ok, tl.exp(x - m_new[None, :]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=0)
        m_i = m_new
    return m_i + tl.log(l_i)


@triton.jit
def _codes_tile(
    S, U, V, OUT, rows, cols, B, K, inv_eps, add_const, stride_sb, stride_sk, stride_ob, stride_ok,
    HAS_U: tl.constexpr,
):
    """OUT[b, k] = exp(S[b, k] * inv_eps - U[k] - V[b] + add_const) on one [BLOCK_B, BLOCK_K] tile."""
    row_ok = rows < B
    col_ok = cols < K
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    s = load_tile(S, rows64, row_ok, cols64, col_ok, stride_sb, stride_sk)
    v = tl.load(V + rows64, mask=row_ok, other=0.0)
    x = s.to(tl.float32) * inv_eps - v[:, None]
    if HAS_U:
        u = tl.load(U + cols64, mask=col_ok, other=0.0)
        x = x - u[None, :]
    codes = tl.exp(x + add_const)
    store_tile(OUT, rows64, row_ok, cols64, col_ok, stride_ob, stride_ok, codes)


# ------------------------------------------------------------------------------------- multi-launch path
@triton.jit
def _row_lse_kernel(
    S, U, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk,
    HAS_U: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[b] = logsumexp_k (S[b, k] * inv_eps - U[k]) + add_const  (U taken as 0 unless HAS_U).

    Grid (cdiv(B, BLOCK_B),): each program owns BLOCK_B rows and sweeps all K columns.
    """
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    lse = _row_lse_tile(S, U, rows, row_ok, K, inv_eps, stride_sb, stride_sk, HAS_U, BLOCK_B, BLOCK_K)
    tl.store(OUT + rows64, lse + add_const, mask=row_ok)


@triton.jit
def _col_lse_kernel(
    S, V, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[k] = logsumexp_b (S[b, k] * inv_eps - V[b]) + add_const.

    Grid (cdiv(K, BLOCK_K),): each program owns BLOCK_K columns and sweeps all B rows.
    """
    cols, col_ok, cols64 = block_range(tl.program_id(0) * BLOCK_K, BLOCK_K, K)
    lse = _col_lse_tile(S, V, cols, col_ok, B, inv_eps, stride_sb, stride_sk, BLOCK_B, BLOCK_K)
    tl.store(OUT + cols64, lse + add_const, mask=col_ok)


@triton.jit
def _codes_kernel(
    S, U, V, OUT, B, K, inv_eps, add_const, stride_sb, stride_sk, stride_ob, stride_ok,
    HAS_U: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[b, k] = exp(S[b, k] * inv_eps - U[k] - V[b] + add_const). Grid (cdiv(B, BLOCK_B), cdiv(K, BLOCK_K))."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    _codes_tile(S, U, V, OUT, rows, cols, B, K, inv_eps, add_const, stride_sb, stride_sk, stride_ob, stride_ok,
                HAS_U)


# -------------------------------------------------------------------------------------- one-program path
@triton.jit
def _sinkhorn_single_program_kernel(
    S, U, V, OUT, B, K, iterations, inv_eps, log_b, log_k, stride_sb, stride_sk, stride_ob, stride_ok,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The whole single-process Sinkhorn in one program (grid (1,)). U [K] and V [B] are fp32 scratch that the
    kernel initialises itself; OUT [B, K] fp32 receives the codes. Same passes as the multi-launch path, with a
    CTA-wide barrier between passes instead of a kernel boundary."""
    # Q /= sum(Q): the per-row logsumexps of S / eps into V (c is reduced from them below); u = 0.
    for b0 in range(0, B, BLOCK_B):
        rows, row_ok, rows64 = block_range(b0, BLOCK_B, B)
        lse = _row_lse_tile(S, U, rows, row_ok, K, inv_eps, stride_sb, stride_sk, False, BLOCK_B, BLOCK_K)
        tl.store(V + rows64, lse, mask=row_ok)
    for k0 in range(0, K, BLOCK_K):
        cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
        tl.store(U + cols64, tl.zeros([BLOCK_K], dtype=tl.float32), mask=col_ok)
    tl.debug_barrier()
    # c = logsumexp_b V[b], per lane first (online), then across the lanes; untouched lanes add l = 0.
    m_i = tl.full([BLOCK_B], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows, row_ok, rows64 = block_range(b0, BLOCK_B, B)
        r = tl.load(V + rows64, mask=row_ok, other=NEG_BIG)
        m_new = tl.maximum(m_i, r)
        l_i = l_i * tl.exp(m_i - m_new) + tl.where(row_ok, tl.exp(r - m_new), 0.0)
        m_i = m_new
    m_all = tl.max(m_i, axis=0)
    c = m_all + tl.log(tl.sum(l_i * tl.exp(m_i - m_all), axis=0))
    tl.debug_barrier()  # every read of the row results precedes the overwrite below
    for b0 in range(0, B, BLOCK_B):
        rows, row_ok, rows64 = block_range(b0, BLOCK_B, B)
        tl.store(V + rows64, tl.zeros([BLOCK_B], dtype=tl.float32) + c, mask=row_ok)
    tl.debug_barrier()
    for it in range(iterations):  # noqa: B007  (the loop index is unused)
        # per prototype: u[k] = logsumexp_b (S / eps - v[b]) + log K
        for k0 in range(0, K, BLOCK_K):
            cols, col_ok, cols64 = block_range(k0, BLOCK_K, K)
            lse = _col_lse_tile(S, V, cols, col_ok, B, inv_eps, stride_sb, stride_sk, BLOCK_B, BLOCK_K)
            tl.store(U + cols64, lse + log_k, mask=col_ok)
        tl.debug_barrier()
        # per sample: v[b] = logsumexp_k (S / eps - u[k]) + log B
        for b0 in range(0, B, BLOCK_B):
            rows, row_ok, rows64 = block_range(b0, BLOCK_B, B)
            lse = _row_lse_tile(S, U, rows, row_ok, K, inv_eps, stride_sb, stride_sk, True, BLOCK_B, BLOCK_K)
            tl.store(V + rows64, lse + log_b, mask=row_ok)
        tl.debug_barrier()
    for b0 in range(0, B, BLOCK_B):
        for k0 in range(0, K, BLOCK_K):
            rows = b0 + tl.arange(0, BLOCK_B)
            cols = k0 + tl.arange(0, BLOCK_K)
            _codes_tile(S, U, V, OUT, rows, cols, B, K, inv_eps, log_b, stride_sb, stride_sk, stride_ob,
                        stride_ok, True)



def select_path(B: int, K: int, path: Optional[str] = None) -> str:
    """``"single"`` (one program, one launch) when B * K <= SINGLE_PROGRAM_MAX_CELLS, else ``"multi"``;
    ``path`` forces one of the two."""
    if path is None:
        return "single" if B * K <= SINGLE_PROGRAM_MAX_CELLS else "multi"
    if path not in _PATHS:
        raise ValueError(f"path must be None, 'single' or 'multi', got {path!r}")
    return path


def sinkhorn_fwd(scores: torch.Tensor, epsilon: float, iterations: int, path: Optional[str] = None) -> torch.Tensor:
    """SwAV's single-process Sinkhorn-Knopp codes [B, K] fp32 from ``scores`` [B, K] (any 2-D strides).

    ``path``: None picks by size (:func:`select_path`); ``"single"`` / ``"multi"`` force the one-program or the
    multi-launch path. Validation is the caller's job (only asserts here).
    """
    assert scores.dim() == 2
    assert epsilon > 0 and iterations >= 0
    B, K = scores.shape
    path = select_path(B, K, path)
    dev = scores.device
    codes = torch.empty((B, K), dtype=torch.float32, device=dev)
    if B == 0 or K == 0:
        return codes
    # x = s * (1 / eps) in fp32: inv_eps is passed as a Python float (fp32 kernel argument).
    inv_eps = 1.0 / float(epsilon)
    log_b = math.log(B)
    log_k = math.log(K)
    ssb, ssk = scores.stride(0), scores.stride(1)

    if path == "single":
        scratch = torch.empty((K + B,), dtype=torch.float32, device=dev)  # u | v, written by the kernel
        _launch(_sinkhorn_single_program_kernel, (1,))(
            scores, scratch[:K], scratch[K:], codes, B, K, int(iterations), inv_eps, log_b, log_k, ssb, ssk,
            codes.stride(0), codes.stride(1),
            BLOCK_B=_SINGLE_BLOCK_B, BLOCK_K=_SINGLE_BLOCK_K, num_warps=_SINGLE_NUM_WARPS,
        )
        return codes

    bb, bk = TILE_CANDIDATES[env_choice(TILES_ENV, tuple(TILE_CANDIDATES), "64x64")]
    grid_b = (triton.cdiv(B, bb),)
    grid_k = (triton.cdiv(K, bk),)
    # Q /= sum(Q): c = logsumexp over all cells, carried as v[b] = c for every b.
    row = torch.empty((B,), dtype=torch.float32, device=dev)
    _launch(_row_lse_kernel, grid_b)(
        scores, row, row, B, K, inv_eps, 0.0, ssb, ssk,
        HAS_U=False, BLOCK_B=bb, BLOCK_K=bk,
    )
    v = torch.logsumexp(row, dim=0).expand(B).contiguous()
    u = torch.zeros((K,), dtype=torch.float32, device=dev)
    for _ in range(iterations):
        _launch(_col_lse_kernel, grid_k)(
            scores, v, u, B, K, inv_eps, log_k, ssb, ssk,
            BLOCK_B=bb, BLOCK_K=bk,
        )
        _launch(_row_lse_kernel, grid_b)(
            scores, u, v, B, K, inv_eps, log_b, ssb, ssk,
            HAS_U=True, BLOCK_B=bb, BLOCK_K=bk,
        )
    _launch(_codes_kernel, (triton.cdiv(B, bb), triton.cdiv(K, bk)))(
        scores, u, v, codes, B, K, inv_eps, log_b, ssb, ssk, codes.stride(0), codes.stride(1),
        HAS_U=iterations > 0, BLOCK_B=bb, BLOCK_K=bk,
    )
    return codes


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_row_lse_kernel)


def _interpreted() -> bool:
    """Whether the kernels were built for the triton interpreter (decided when this module was imported)."""
    return _INTERPRETED


def supports(scores: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on ``scores``, else a human-readable reason why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    if scores.dim() != 2:
        return f"scores must be 2-D [B, K], got shape {tuple(scores.shape)}"
    reason = dtype_reason(("scores dtype", scores.dtype, _SUPPORTED_DTYPES))
    if reason is not None:
        return reason
    return device_reason(_INTERPRETED, scores.device, scores.dtype, "augcl.kernels.sinkhorn")
