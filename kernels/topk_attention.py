"""
Fused top-k attention (MixedAE's homologous attention)
======================================================

Triton kernels for ``augcl``'s ``topk_attention`` op (the oracle is augcl/reference/topk_attention.py). Per
(batch, head), q, k, v [L, Dh] (fp32 / fp16; bf16 on GPU; any 4-D strides), ``S = scale * q k^T``::

    K(i)  = the top_k largest S_ij, ties to the lower key index j (+ key 0 when keep_first)
    lse_i = log sum_{j in K(i)} exp(S_ij);   P_ij = exp(S_ij - lse_i) on K(i), else 0;   out = P v
    backward (K(i) constant): dv = P^T dO;  dS = P (.) (dO v^T - D), D_i = <dO_i, out_i>;  dq = s dS k;  dk = s dS^T q

Memory traffic
--------------
The eager form (torch.topk + a scattered -inf mask + softmax + matmul) writes and reads several [B, H, L, L]
tensors (logits, mask, probabilities, and their gradients in the backward). Here a program owns BLOCK_M query
rows of one head and holds their whole key row on chip (BLOCK_N = the next power of two >= L, so L <= 257 means
BLOCK_N <= 512): it computes the logit tile, selects, normalises and multiplies, and writes only out [BLOCK_M,
Dh] and lse [BLOCK_M]. The backward recomputes the logit tile and the selection (same kernel code, same tile
shapes, same dot precision as the forward, so the same bits and the same kept set) and writes dq; the dk / dv
contributions of the BLOCK_M rows, [L, Dh] each, are added into fp32 buffers with atomic adds (their order across
row blocks is not fixed: dk and dv can differ in the last bits from run to run on a GPU; dq and out cannot).

Selection without a sort
------------------------
A float's bits, read as an int32 and with the magnitude bits flipped for negative numbers
(``b ^ ((b >> 31) & 0x7fffffff)``), order like the floats (-0.0 is first turned into +0.0, so that the two tie,
as float comparison and torch.sort have it). The top_k-th largest key t of a row is the largest T with
``#{j : key_j >= T} >= top_k``: a binary search over the 2^32 int32 values, 32 count passes over the on-chip
row, for all BLOCK_M rows at once. Kept: ``key > t``, and of the ``key == t`` the first ``top_k - #{key > t}``
by index (a cumulative sum of the equality mask along the row). Columns >= L are never counted.

fp16 / bf16: the logits, softmax and all accumulations are fp32; P and dS are rounded to the input dtype for
the tensor-core products with v, k and q (as flash-attention does). fp32: tl.dot at the family's precision
(``input_precision``: exact unless torch allows TF32 or AUGCL_TRITON_FP32 says otherwise). fp64 is not
supported (the C++ and reference backends have it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, NEG_BIG, block_range, device_reason, dot_width, dtype_reason, input_precision as _input_precision,
    is_interpreted, launch as _launch, load_tile, store_tile, tl, triton,
)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: the longest sequence whose key row a program holds on chip (BLOCK_N = 512)
MAX_L = 512
_LOG2E = tl.constexpr(1.4426950408889634)
_INT32_MIN = tl.constexpr(-2147483648)
_INT32_SPAN = tl.constexpr(4294967296)


@triton.jit
def _scores(Q, K, q_base, k_base, rows64, row_ok, cols64, col_ok, d64, d_ok, stride_ql, stride_qd, stride_kl,
            stride_kd, scale, INPUT_PRECISION: tl.constexpr):
    """The logit tile ``scale * q_rows k^T`` [BLOCK_M, BLOCK_N] in fp32: the dot, then one multiply (the
    reference's rounding). Forward and backward call this same code with the same tile shapes."""
    q = load_tile(Q + q_base, rows64, row_ok, d64, d_ok, stride_ql, stride_qd)
    kT = load_tile(K + k_base, d64, d_ok, cols64, col_ok, stride_kd, stride_kl)
    return tl.dot(q, kT, input_precision=INPUT_PRECISION) * scale


@triton.jit
def _kept(s, cols, col_ok, top_k, BLOCK_M: tl.constexpr, KEEP_FIRST: tl.constexpr):
    """The kept mask [BLOCK_M, BLOCK_N] of the logit tile ``s`` (see the module docstring)."""
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0: the two tie, as in float comparison
    bits = s.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    # Invariant: #{key >= lo} >= top_k > #{key >= hi}; the span 2^32 halves exactly, so 32 steps leave hi = lo + 1
    # and lo is the top_k-th largest key. int64 bounds, int32 comparisons (mid always fits in int32).
    lo = tl.full([BLOCK_M], _INT32_MIN, tl.int64)
    hi = lo + _INT32_SPAN
    for _ in range(32):
        mid = lo + (hi - lo) // 2
        ge = (key >= mid.to(tl.int32)[:, None]) & col_ok[None, :]
        enough = tl.sum(ge.to(tl.int32), axis=1) >= top_k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    t = lo.to(tl.int32)[:, None]
    gt = (key > t) & col_ok[None, :]
    eq = (key == t) & col_ok[None, :]
    keep_eq = top_k - tl.sum(gt.to(tl.int32), axis=1)
    kept = gt | (eq & (tl.cumsum(eq.to(tl.int32), axis=1) <= keep_eq[:, None]))
    if KEEP_FIRST:
        kept = kept | (cols == 0)[None, :]
    return kept


@triton.jit
def _topk_attention_fwd_kernel(
    Q, K, V, OUT, LSE, H, L, Dh, top_k, scale,
    stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    KEEP_FIRST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_M, BLOCK_M, L)
    cols, col_ok, cols64 = block_range(0, BLOCK_N, L)
    dd, d_ok, d64 = block_range(0, BLOCK_D, Dh)
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    s = _scores(Q, K, q_base, k_base, rows64, row_ok, cols64, col_ok, d64, d_ok, stride_ql, stride_qd, stride_kl,
                stride_kd, scale, INPUT_PRECISION)
    kept = _kept(s, cols, col_ok, top_k, BLOCK_M, KEEP_FIRST)
    m = tl.max(tl.where(kept, s, NEG_BIG), axis=1)  # the row max, always kept
    p = tl.where(kept, tl.exp2((s - m[:, None]) * _LOG2E), 0.0)
    l = tl.sum(p, axis=1)
    v = load_tile(V + b * stride_vb + h * stride_vh, cols64, col_ok, d64, d_ok, stride_vl, stride_vd)
    o = tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION) / l[:, None]
    # out [B, H, L, Dh] and lse [B, H, L] are contiguous
    bh = pid_bh.to(tl.int64)
    store_tile(OUT + bh * L * Dh, rows64, row_ok, d64, d_ok, Dh, 1, o.to(OUT.dtype.element_ty))
    tl.store(LSE + bh * L + rows64, m + tl.log(l), mask=row_ok)


@triton.jit
def _topk_attention_bwd_kernel(
    G, Q, K, V, OUT, LSE, DQ, DK, DV, H, L, Dh, top_k, scale,
    stride_gb, stride_gh, stride_gl, stride_gd, stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd, stride_vb, stride_vh, stride_vl, stride_vd,
    KEEP_FIRST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_M, BLOCK_M, L)
    cols, col_ok, cols64 = block_range(0, BLOCK_N, L)
    dd, d_ok, d64 = block_range(0, BLOCK_D, Dh)
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    s = _scores(Q, K, q_base, k_base, rows64, row_ok, cols64, col_ok, d64, d_ok, stride_ql, stride_qd, stride_kl,
                stride_kd, scale, INPUT_PRECISION)
    kept = _kept(s, cols, col_ok, top_k, BLOCK_M, KEEP_FIRST)
    lse = tl.load(LSE + bh * L + rows64, mask=row_ok, other=0.0)
    p = tl.where(kept & row_ok[:, None], tl.exp2((s - lse[:, None]) * _LOG2E), 0.0)
    g = load_tile(G + b * stride_gb + h * stride_gh, rows64, row_ok, d64, d_ok, stride_gl, stride_gd)
    o = load_tile(OUT + bh * L * Dh, rows64, row_ok, d64, d_ok, Dh, 1)
    d = tl.sum(g.to(tl.float32) * o.to(tl.float32), axis=1)
    vT = load_tile(V + b * stride_vb + h * stride_vh, d64, d_ok, cols64, col_ok, stride_vd, stride_vl)
    dp = tl.dot(g, vT, input_precision=INPUT_PRECISION)
    ds = p * (dp - d[:, None])
    k = load_tile(K + k_base, cols64, col_ok, d64, d_ok, stride_kl, stride_kd)
    dq = tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION) * scale
    store_tile(DQ + bh * L * Dh, rows64, row_ok, d64, d_ok, Dh, 1, dq.to(DQ.dtype.element_ty))
    # dk, dv: this row block's contributions to every key, added into the fp32 [B, H, L, Dh] buffers
    q = load_tile(Q + q_base, rows64, row_ok, d64, d_ok, stride_ql, stride_qd)
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=INPUT_PRECISION) * scale
    dv = tl.dot(tl.trans(p.to(g.dtype)), g, input_precision=INPUT_PRECISION)
    ptrs = bh * L * Dh + cols64[:, None] * Dh + d64[None, :]
    ok = col_ok[:, None] & d_ok[None, :]
    tl.atomic_add(DK + ptrs, dk, mask=ok)
    tl.atomic_add(DV + ptrs, dv, mask=ok)


def _config(L: int, Dh: int) -> Tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)``: the whole key row (BLOCK_N) and head width (BLOCK_D) on chip;
    fewer query rows per program as the row grows, so the [BLOCK_M, BLOCK_N] fp32 logit and int32 key tiles stay
    at 8K elements each."""
    block_n, block_d = dot_width(L), dot_width(Dh)
    block_m = max(16, min(64, 8192 // block_n))
    return block_m, block_n, block_d, 4 if block_n * block_d <= 128 * 64 else 8


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def topk_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, scale: float,
                       keep_first: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, L, Dh] contiguous in q's dtype, lse [B, H, L] fp32)``. Validation is the caller's job."""
    assert q.dim() == 4 and q.shape == k.shape == v.shape
    B, H, L, Dh = q.shape
    out = torch.empty((B, H, L, Dh), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    block_m, block_n, block_d, warps = _config(L, Dh)
    _launch(_topk_attention_fwd_kernel, (triton.cdiv(L, block_m), B * H))(
        q, k, v, out, lse, H, L, Dh, int(top_k), float(scale), *_strides(q), *_strides(k), *_strides(v),
        KEEP_FIRST=bool(keep_first), INPUT_PRECISION=_input_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
    )
    return out, lse


def topk_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, top_k: int, scale: float,
                       keep_first: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` contiguous in the inputs' dtype, from the forward's contiguous ``out`` and fp32 ``lse``."""
    B, H, L, Dh = q.shape
    dq = torch.empty((B, H, L, Dh), dtype=q.dtype, device=q.device)
    dk = torch.zeros((B, H, L, Dh), dtype=torch.float32, device=q.device)
    dv = torch.zeros((B, H, L, Dh), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return dq, dk.to(k.dtype), dv.to(v.dtype)
    out = out.contiguous()
    lse = lse.to(torch.float32).contiguous()
    grad_out = grad_out.to(q.dtype)
    block_m, block_n, block_d, warps = _config(L, Dh)
    _launch(_topk_attention_bwd_kernel, (triton.cdiv(L, block_m), B * H))(
        grad_out, q, k, v, out, lse, dq, dk, dv, H, L, Dh, int(top_k), float(scale),
        *_strides(grad_out), *_strides(q), *_strides(k), *_strides(v),
        KEEP_FIRST=bool(keep_first), INPUT_PRECISION=_input_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
    )
    return dq, dk.to(k.dtype), dv.to(v.dtype)


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_topk_attention_fwd_kernel)


def shared_bytes_estimate(L: int, Dh: int, dtype: torch.dtype) -> int:
    """Upper estimate of the larger of the two kernels' shared memory at ``_config(L, Dh)``: 1.5 x the whole
    [BLOCK_N, BLOCK_D] key/value row tile, two [BLOCK_M, BLOCK_N] layout-conversion buffers and 2 KiB. Fitted
    to what ptxas reported in benchmarks/preflight.py (triton 3.8, sm_80/86/90), e.g. L 65, Dh 128 fp32 163840 B
    (estimate 165888), L 197, Dh 128 fp16 131072 B (133120), L 257, Dh 128 fp16 152576 B (231424), L 257, Dh 64
    fp32 201728 B (264192: declined on an H100 although it would fit). preflight.py compares the two for every
    case and fails a case the estimate lets through that does not fit."""
    block_m, block_n, block_d, _ = _config(L, Dh)
    elem = 4 if dtype == torch.float32 else 2
    return (3 * block_n * block_d * elem) // 2 + 2 * block_m * block_n * elem + 2048


@torch.compiler.assume_constant_result
def _shared_limit(index: Optional[int]) -> Optional[int]:
    """The GPU's per-block opt-in shared memory in bytes (None when torch does not report it)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
    return getattr(props, "shared_memory_per_block_optin", None)


def shared_reason(L: int, Dh: int, dtype: torch.dtype, limit: Optional[int]) -> Optional[str]:
    """Why a compiled kernel cannot launch at (L, Dh, dtype) on a GPU with ``limit`` bytes of shared memory per
    block (None: it fits, or the limit is unknown). The kernels keep a whole key row on chip, so the longest rows
    and widest heads in float32 exceed it (L > 256 with Dh 128: ~330 KB against an H100's 227 KiB; ptxas's
    "out of resource" at the first launch otherwise); those calls go to another backend."""
    if limit is None:
        return None
    need = shared_bytes_estimate(L, Dh, dtype)
    if need <= limit:
        return None
    return (f"L = {L}, Dh = {Dh} in {str(dtype).replace('torch.', '')} needs ~{need // 1024} KiB of shared memory "
            f"per block, this GPU allows {limit // 1024} KiB")


def supports(q: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on q [B, H, L, Dh] (k and v have q's shape, dtype and device: the functional
    API checks that), else a human-readable reason why not. The length limits are judged on 4-D inputs only (a
    probe of another shape, as ``python -m augcl.info`` sends, gets the dtype and device verdict)."""
    if not HAS_TRITON:
        return "triton is not installed"
    reason = dtype_reason(("q dtype", q.dtype, _DTYPES))
    if reason is not None:
        return reason
    if q.dim() == 4 and q.shape[2] > MAX_L:
        return f"L = {q.shape[2]} > {MAX_L}: the kernels hold a whole key row on chip"
    if q.dim() == 4 and q.shape[3] > 256:
        return f"Dh = {q.shape[3]} > 256: the kernels hold a whole head row on chip"
    reason = device_reason(_INTERPRETED, q.device, q.dtype, "augcl.kernels.topk_attention")
    if reason is None and q.dim() == 4 and q.device.type == "cuda" and not _INTERPRETED:
        reason = shared_reason(q.shape[2], q.shape[3], q.dtype, _shared_limit(q.device.index))
    return reason
