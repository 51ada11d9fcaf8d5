"""
Fused masked logsumexp for the contrastive (InfoNCE / NT-Xent) family
=====================================================================

Triton kernels for the O(M * Nc) part of ``augcl``'s contrastive op: the logsumexp of every anchor row over
its *included* candidates, and its backward. The oracle is ``augcl/reference/contrastive.py``.

Math
----
Inputs: anchors ``A`` [M, D], candidates ``C`` [Nc, D] (fp32, fp16 or bf16, any 2-D strides), ``scale`` a
0-dim fp32 tensor (``1 / temperature``), ``pos_idx`` [M, P] and ``excl_idx`` [M, E] int64 column indices
(``-1`` = padding) and an int ``neg_start``. Row ``i`` runs over::

    incl(i) = {j in pos_idx[i]}  U  {j >= neg_start and j not in excl_idx[i]}     (a positive is always in)

Forward::

    lse[i] = logsumexp_{j in incl(i)} scale * <a_i, c_j>                      -> [M] fp32 (-inf if incl(i) empty)

Backward, given ``grad_lse`` [M] and the saved ``lse``::

    p_ij = exp(scale * <a_i, c_j> - lse_i)  on incl(i), else 0;   G_ij = grad_lse_i * p_ij
    dA_i   = scale * sum_j G_ij c_j          [M, D]  (dtype of A)
    dC_j   = scale * sum_i G_ij a_i          [Nc, D] (dtype of C)
    dscale = sum_ij G_ij <a_i, c_j>          0-dim fp32

computed as ``dA_i = scale * g_i * sum_j p_ij c_j`` (g after the product) and ``dC`` from ``g / max|g|``: with
fp16 inputs a mean over many rows makes g * p smaller than fp16 can hold (see the dA kernel).

Memory traffic
--------------
The naive version (the reference) materialises the logits ``S = scale * A @ C.T``, an [M, Nc] boolean mask
and, in the backward, ``P`` and ``G``, all [M, Nc]. At M = Nc = 65536 one fp32 [M, Nc] matrix is 16 GiB, and
the naive forward + backward moves roughly ten of them through HBM (write S, read S for the max and for the
exp-sum, scatter/read the mask, write/read P and G for two matmuls and the dscale reduction): O(M * Nc)
bytes, which dominates the O((M + Nc) * D) bytes of the inputs for any realistic D.

Here nothing of size [M, Nc] ever leaves the chip, in the style of flash-attention (triton tutorial 06):

* forward: one program per BLOCK_M anchor rows streams the candidate tiles and keeps an online logsumexp in
  registers. HBM traffic: A once, C once per row block (``cdiv(M, BLOCK_M) * Nc * D`` elements, mostly L2
  hits), the (P + E) small index columns of each row, and M fp32 outputs.
* backward: two kernels that *recompute* the logit tiles from A, C and the saved lse instead of storing P:
  ``_contrastive_lse_bwd_da_kernel`` (row blocks, also emits dscale partials) and
  ``_contrastive_lse_bwd_dc_kernel`` (column blocks, looping over row tiles). Each output element is owned by
  exactly one program, so there are no atomics and the result is deterministic (bitwise reproducible run to
  run for a given shape and device). The price is computing the logit tiles twice (once per kernel) -
  2 * M * Nc * D extra MACs, which is cheap next to the memory traffic it saves.
* split sweeps (flash-decoding style): MoCo has few anchors and a long queue (M = 256, Nc = 65536 is only
  4 row blocks for 132 SMs). When a kernel would launch fewer than ~2 programs per SM, its sweep (columns
  for fwd / dA, rows for dC) is cut into S tile-aligned splits on a last grid axis. Each split writes a
  partial result to a small fp32 buffer - a partial lse [S, M] (combined with torch.logsumexp), a partial
  dA [S, M, D] or dC [S, Nc, D] (summed with torch) - still without atomics.

Masks inside a tile are built from index vectors, never from an [M, Nc] mask: ``col >= neg_start``, then for
each of the E excluded indices of the BLOCK_M rows ``col != excl``, then OR ``col == pos`` for each of the P
positives (P and E are small constexprs, the loops are unrolled), then AND ``col < Nc`` and ``row < M``.
"""
from __future__ import annotations

import time
from typing import Dict, NamedTuple, Optional, Tuple

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, NEG_BIG, block_range, device_reason, dot_width, dtype_reason, env_choice,
    input_precision as _input_precision, is_interpreted, launch as _launch, load_tile, next_pow2, num_sms, store_tile,
    tl, triton,
)

__all__ = ["contrastive_lse_fwd", "contrastive_lse_bwd", "supports"]

# ----------------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------------

# The online logsumexp runs in the log2 domain: exp(x) = exp2(x * log2(e)), so scale * log2(e) is folded into a
# single multiplier of the raw dot products and the hardware exp2 (ex2.approx) is used directly.
# Module-level values read inside @triton.jit code must be tl.constexpr: compiled kernels cannot read other
# globals.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# The running max starts at NEG_BIG (kernels/_triton.py), a finite stand-in for -inf: real logits
# (|scale * dot| << 1e30) always exceed it.


# ----------------------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_dot_chunked(
    X, Y, x_idx, x_ok, y_idx, y_ok, D, stride_xr, stride_xd, stride_yr, stride_yd,
    BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """``X[x_idx] @ Y[y_idx].T`` as a [BLOCK_X, BLOCK_Y] fp32 tile, looping over D in masked BLOCK_D chunks.

    Used when D does not fit in one BLOCK_D chunk. ``x_idx``/``y_idx`` are int64 row indices (row * stride can
    overflow int32). Out-of-range rows and the D tail load 0, so they add nothing to the dot.
    """
    acc = tl.zeros([BLOCK_X, BLOCK_Y], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d, d_ok, offs_d64 = block_range(d0, BLOCK_D, D)
        x = load_tile(X, x_idx, x_ok, offs_d64, d_ok, stride_xr, stride_xd)
        yT = load_tile(Y, offs_d64, d_ok, y_idx, y_ok, stride_yd, stride_yr)  # [BLOCK_D, BLOCK_Y], already transposed
        acc = tl.dot(x, yT, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _included_mask(
    POS, EXCL, rows64, row_ok, cols, NC, neg_start, stride_pm, stride_pp, stride_em, stride_ee,
    P: tl.constexpr, E: tl.constexpr, COLS_FIRST: tl.constexpr,
):
    """Boolean ``incl(i, j)`` for a tile: [BLOCK_M, BLOCK_N], or [BLOCK_N, BLOCK_M] when COLS_FIRST.

    Built from the rows' P positive and E excluded indices, each a [BLOCK_M] vector broadcast against the
    [BLOCK_N] column vector. The index vectors are re-read for every tile: they are tiny (BLOCK_M * (P + E)
    int64) and stay in L1, while holding a variable number of them in registers across the loop would need
    a [BLOCK_M, P] tile and a 3-D comparison. ``-1`` padding never equals a column (cols >= 0). Indices are
    compared as int32: the caller validates them to lie in [-1, Nc) and Nc < 2**31.
    """
    if COLS_FIRST:
        c2 = cols[:, None]
    else:
        c2 = cols[None, :]
    incl = c2 >= neg_start
    for e in tl.static_range(E):
        ex = tl.load(EXCL + rows64 * stride_em + e * stride_ee, mask=row_ok, other=-1).to(tl.int32)
        if COLS_FIRST:
            incl = incl & (c2 != ex[None, :])
        else:
            incl = incl & (c2 != ex[:, None])
    # Positives after exclusions: a positive is included even if it is also excluded or below neg_start.
    for p in tl.static_range(P):
        po = tl.load(POS + rows64 * stride_pm + p * stride_pp, mask=row_ok, other=-1).to(tl.int32)
        if COLS_FIRST:
            incl = incl | (c2 == po[None, :])
        else:
            incl = incl | (c2 == po[:, None])
    # Out-of-range rows / columns last, so nothing above can re-include them.
    if COLS_FIRST:
        incl = incl & (c2 < NC) & row_ok[None, :]
    else:
        incl = incl & (c2 < NC) & row_ok[:, None]
    return incl


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _contrastive_lse_fwd_kernel(
    A, C, SCALE, POS, EXCL, LSE,
    M, NC, D, neg_start,
    stride_am, stride_ad, stride_cn, stride_cd,
    stride_pm, stride_pp, stride_em, stride_ee, stride_lse, stride_ls, cols_per_split,
    P: tl.constexpr, E: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(M, BLOCK_M), S): program (pid_m, pid_s) computes the lse of rows
    [pid_m * BLOCK_M, (pid_m + 1) * BLOCK_M) over the candidates [pid_s * cols_per_split, ...) of its split
    and stores it at LSE + pid_s * stride_ls (S == 1: the final lse; S > 1: a partial row of an [S, M] buffer).
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows, row_ok, rows64 = block_range(pid_m * BLOCK_M, BLOCK_M, M)
    # scale is read from memory (not a kernel scalar argument): a new temperature never recompiles the kernel
    # and the host never has to sync to read it.
    qk_scale = tl.load(SCALE).to(tl.float32) * LOG2E

    offs_d, d_ok, offs_d64 = block_range(0, BLOCK_D, D)
    if SINGLE_D:
        # D fits in one chunk: load the anchor tile once and keep it on chip for the whole candidate sweep
        # (like Q in flash-attention).
        a = load_tile(A, rows64, row_ok, offs_d64, d_ok, stride_am, stride_ad)

    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)  # running max, log2 domain
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    # Splits are whole tiles (cols_per_split is a multiple of BLOCK_N), so a tile never straddles two splits.
    n_lo = pid_s * cols_per_split
    n_hi = tl.minimum(NC, n_lo + cols_per_split)
    for start_n in range(n_lo, n_hi, BLOCK_N):
        cols, col_ok, cols64 = block_range(start_n, BLOCK_N, NC)
        if SINGLE_D:
            cT = load_tile(C, offs_d64, d_ok, cols64, col_ok, stride_cd, stride_cn)  # [BLOCK_D, BLOCK_N]
            dots = tl.dot(a, cT, input_precision=INPUT_PRECISION)
        else:
            dots = _tile_dot_chunked(A, C, rows64, row_ok, cols64, col_ok, D, stride_am, stride_ad, stride_cn,
                                     stride_cd, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        incl = _included_mask(POS, EXCL, rows64, row_ok, cols, NC, neg_start, stride_pm, stride_pp, stride_em,
                              stride_ee, P, E, False)
        s = dots * qk_scale
        m_new = tl.maximum(m_i, tl.max(tl.where(incl, s, NEG_BIG), axis=1))
        # tl.where after exp2: masked cells are exactly 0 whatever their (finite or not) logit is.
        p = tl.where(incl, tl.math.exp2(s - m_new[:, None]), 0.0)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    # log2(0) = -inf for a row with nothing included, which is the reference's logsumexp of an empty set.
    lse = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(LSE + pid_s.to(tl.int64) * stride_ls + rows64 * stride_lse, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _contrastive_lse_bwd_da_kernel(
    A, C, SCALE, POS, EXCL, LSE, GRAD, DA, DS_PARTIAL,
    M, NC, D, neg_start,
    stride_am, stride_ad, stride_cn, stride_cd,
    stride_pm, stride_pp, stride_em, stride_ee, stride_lse, stride_g,
    stride_das, stride_dam, stride_dad, cols_per_split,
    P: tl.constexpr, E: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
    SINGLE_D: tl.constexpr, INPUT_PRECISION: tl.constexpr, P_SCALE: tl.constexpr,
):
    """dA and dscale partials. Grid (cdiv(M, BLOCK_M), cdiv(D, BLOCK_DO), S).

    Program (pid_m, pid_d, pid_s) owns dA[rows, pid_d * BLOCK_DO : (pid_d + 1) * BLOCK_DO] restricted to the
    candidates of split pid_s. It sweeps those candidate tiles, recomputes the full-D logits (in BLOCK_D
    chunks when D is large), rebuilds p and G and accumulates G @ C[:, d-out chunk], stored at
    DA + pid_s * stride_das (S == 1: dA itself; S > 1: an fp32 [S, M, D] buffer). The pid_d == 0 programs
    also write sum(G * dot) of their rows and split to DS_PARTIAL[pid_s * cdiv(M, BLOCK_M) + pid_m].
    With SINGLE_D the whole of D is one chunk (BLOCK_DO == BLOCK_D >= D, one program along axis 1) and the
    candidate tile loaded for the logits is reused for the G @ C product.
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    rows, row_ok, rows64 = block_range(pid_m * BLOCK_M, BLOCK_M, M)
    scale = tl.load(SCALE).to(tl.float32)
    qk_scale = scale * LOG2E
    # Out-of-range rows get g = 0 and lse = 0; the mask zeroes them anyway.
    lse2 = tl.load(LSE + rows64 * stride_lse, mask=row_ok, other=0.0) * LOG2E
    g = tl.load(GRAD + rows64 * stride_g, mask=row_ok, other=0.0).to(tl.float32)

    offs_do, do_ok, offs_do64 = block_range(pid_d * BLOCK_DO, BLOCK_DO, D)
    if SINGLE_D:
        a = load_tile(A, rows64, row_ok, offs_do64, do_ok, stride_am, stride_ad)

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    ds_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_lo = pid_s * cols_per_split
    n_hi = tl.minimum(NC, n_lo + cols_per_split)
    for start_n in range(n_lo, n_hi, BLOCK_N):
        cols, col_ok, cols64 = block_range(start_n, BLOCK_N, NC)
        if SINGLE_D:
            cT = load_tile(C, offs_do64, do_ok, cols64, col_ok, stride_cd, stride_cn)  # [BLOCK_DO, BLOCK_N]
            dots = tl.dot(a, cT, input_precision=INPUT_PRECISION)
        else:
            dots = _tile_dot_chunked(A, C, rows64, row_ok, cols64, col_ok, D, stride_am, stride_ad, stride_cn,
                                     stride_cd, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        incl = _included_mask(POS, EXCL, rows64, row_ok, cols, NC, neg_start, stride_pm, stride_pp, stride_em,
                              stride_ee, P, E, False)
        p = tl.where(incl, tl.math.exp2(dots * qk_scale - lse2[:, None]), 0.0)
        ds_acc += tl.sum(p * dots, axis=1)
        # p (not G = g * p) is cast to the input dtype for the tensor-core product (fp16/bf16 inputs), as
        # flash-attention does with P, and g multiplies each row after the product, in fp32: with a mean over
        # 2N = 65536 rows g is 1.5e-5 and g * p falls below fp16's smallest subnormal (6e-8), which zeroed the
        # negatives' gradient. p <= 1 is scaled by P_SCALE (256 for fp16) so that small probabilities stay out of
        # fp16's subnormals too. Accumulation stays fp32; for fp32 inputs the cast is a no-op.
        if SINGLE_D:
            acc = tl.dot((p * P_SCALE).to(cT.dtype), tl.trans(cT), acc, input_precision=INPUT_PRECISION)
        else:
            c_out = load_tile(C, cols64, col_ok, offs_do64, do_ok, stride_cn, stride_cd)
            acc = tl.dot((p * P_SCALE).to(c_out.dtype), c_out, acc, input_precision=INPUT_PRECISION)

    acc = acc * (g * (scale / P_SCALE))[:, None]
    ds_acc = ds_acc * g
    store_tile(DA + pid_s.to(tl.int64) * stride_das, rows64, row_ok, offs_do64, do_ok, stride_dam, stride_dad,
               acc.to(DA.dtype.element_ty))
    if pid_d == 0:
        # One partial per (split, row block), not an atomic add: deterministic, summed by torch in the launcher.
        tl.store(DS_PARTIAL + pid_s * tl.num_programs(0) + pid_m, tl.sum(ds_acc, axis=0))


@triton.jit
def _contrastive_lse_bwd_dc_kernel(
    A, C, SCALE, POS, EXCL, LSE, GRAD, GRAD_MAX, DC,
    M, NC, D, neg_start,
    stride_am, stride_ad, stride_cn, stride_cd,
    stride_pm, stride_pp, stride_em, stride_ee, stride_lse, stride_g,
    stride_dcs, stride_dcn, stride_dcd, rows_per_split,
    P: tl.constexpr, E: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
    SINGLE_D: tl.constexpr, INPUT_PRECISION: tl.constexpr, P_SCALE: tl.constexpr,
):
    """dC. Grid (cdiv(Nc, BLOCK_N), cdiv(D, BLOCK_DO), S).

    Program (pid_n, pid_d, pid_s) owns dC[cols, d-out chunk] restricted to the anchor rows of split pid_s,
    stored at DC + pid_s * stride_dcs (S == 1: dC itself; S > 1: an fp32 [S, Nc, D] buffer). It sweeps those
    row tiles and works on transposed tiles ([BLOCK_N, BLOCK_M]: logits^T = C_tile @ A_tile^T), so G^T feeds
    the G^T @ A product directly. The mask is re-evaluated from each row tile's own pos/excl indices
    (COLS_FIRST orientation).
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    cols, col_ok, cols64 = block_range(pid_n * BLOCK_N, BLOCK_N, NC)
    scale = tl.load(SCALE).to(tl.float32)
    qk_scale = scale * LOG2E

    offs_do, do_ok, offs_do64 = block_range(pid_d * BLOCK_DO, BLOCK_DO, D)
    if SINGLE_D:
        c = load_tile(C, cols64, col_ok, offs_do64, do_ok, stride_cn, stride_cd)

    acc = tl.zeros([BLOCK_N, BLOCK_DO], dtype=tl.float32)
    m_lo = pid_s * rows_per_split
    m_hi = tl.minimum(M, m_lo + rows_per_split)
    for start_m in range(m_lo, m_hi, BLOCK_M):
        rows, row_ok, rows64 = block_range(start_m, BLOCK_M, M)
        lse2 = tl.load(LSE + rows64 * stride_lse, mask=row_ok, other=0.0) * LOG2E
        g = tl.load(GRAD + rows64 * stride_g, mask=row_ok, other=0.0).to(tl.float32)
        if SINGLE_D:
            aT = load_tile(A, offs_do64, do_ok, rows64, row_ok, stride_ad, stride_am)  # [BLOCK_DO, BLOCK_M]
            dotsT = tl.dot(c, aT, input_precision=INPUT_PRECISION)
        else:
            dotsT = _tile_dot_chunked(C, A, cols64, col_ok, rows64, row_ok, D, stride_cn, stride_cd, stride_am,
                                      stride_ad, BLOCK_N, BLOCK_M, BLOCK_D, INPUT_PRECISION)
        inclT = _included_mask(POS, EXCL, rows64, row_ok, cols, NC, neg_start, stride_pm, stride_pp, stride_em,
                               stride_ee, P, E, True)
        pT = tl.where(inclT, tl.math.exp2(dotsT * qk_scale - lse2[None, :]), 0.0)
        # g varies along this product's reduction (the rows), so it cannot wait until after it as in the dA
        # kernel: GRAD holds g / max|g| (the launcher's), which keeps G^T in fp16's normal range whatever the
        # loss's reduction; max|g| and 1 / P_SCALE are applied to the fp32 result.
        GT = g[None, :] * pT * P_SCALE
        if SINGLE_D:
            acc = tl.dot(GT.to(aT.dtype), tl.trans(aT), acc, input_precision=INPUT_PRECISION)
        else:
            a_out = load_tile(A, rows64, row_ok, offs_do64, do_ok, stride_am, stride_ad)
            acc = tl.dot(GT.to(a_out.dtype), a_out, acc, input_precision=INPUT_PRECISION)

    acc = acc * (scale * tl.load(GRAD_MAX).to(tl.float32) / P_SCALE)
    store_tile(DC + pid_s.to(tl.int64) * stride_dcs, cols64, col_ok, offs_do64, do_ok, stride_dcn, stride_dcd,
               acc.to(DC.dtype.element_ty))


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


class _Config(NamedTuple):
    BLOCK_M: int  # anchor rows per tile
    BLOCK_N: int  # candidate columns per tile
    BLOCK_D: int  # D chunk of the logit dot products
    BLOCK_DO: int  # output D chunk of dA / dC (== BLOCK_D when one chunk covers D)
    fwd_warps: int
    fwd_stages: int
    bwd_warps: int
    bwd_stages: int
    bwd_single_d: bool = True  # False: the backward takes the chunked-D code path even when one chunk covers D


_TRITON_BEFORE_3_3 = HAS_TRITON and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 3)


# Performance candidates the first GPU run times side by side (benchmarks/gpu_candidates.py), each a switch read
# at every launch; unset = the default heuristic below.
#
# AUGCL_CONTRASTIVE_TILES: the (BLOCK_M, BLOCK_N, warps) of every kernel. "64x64" is the default's tile; the
# larger ones give each program more work per loaded tile (fewer re-reads of A and C through L2) at the price of
# registers, the usual choice for sm_90 tensor cores; "autotune" times them (below).
TILES_ENV = "AUGCL_CONTRASTIVE_TILES"
TILE_CANDIDATES = {"64x64": (64, 64, 4), "128x64": (128, 64, 8), "64x128": (64, 128, 8), "128x128": (128, 128, 8)}
# AUGCL_CONTRASTIVE_BWD_DO: the output D chunk of the chunked-D backward (D > one logit chunk): "128" (default);
# "256" or "512" recompute the logits fewer times, (1 + cdiv(D, BLOCK_DO)) * M * Nc * D multiply-adds per backward
# kernel: 5 at D = 512 with 128, 3 with 256, 2 with 512, for a [BLOCK_M, BLOCK_DO] fp32 accumulator per program.
# "autotune": each candidate is timed once per (D, dtype, precision, device, power-of-two bucket of M and Nc,
# index widths) on the first call's inputs (forward + backward), and the fastest is kept for the process.
AUTOTUNE = "autotune"
TILE_CHOICES = tuple(TILE_CANDIDATES) + (AUTOTUNE,)
_FWD_SHARED_BYTES = 160 * 1024
BWD_DO_ENV = "AUGCL_CONTRASTIVE_BWD_DO"
BWD_DO_CANDIDATES = ("128", "256", "512")


def _pick_config(D: int, dtype: torch.dtype, input_precision: str) -> _Config:
    """:func:`_default_config`, with the candidates of the switches above applied ("autotune" is resolved by the
    launchers, which have the inputs to time, see :func:`_tiles_for`; here it means the default tiles)."""
    return _config(D, dtype, input_precision, env_choice(TILES_ENV, TILE_CHOICES, ""))


def _config(D: int, dtype: torch.dtype, input_precision: str, tiles: str) -> _Config:
    """:func:`_pick_config` with the tile candidate ``tiles`` (a key of TILE_CANDIDATES, or "" / "autotune": the
    default's)."""
    cfg = _default_config(D, dtype, input_precision)
    if tiles and tiles != AUTOTUNE:
        bm, bn, warps = TILE_CANDIDATES[tiles]
        # The forward keeps the [BLOCK_M, BLOCK_D] anchor tile in shared memory and pipelines fwd_stages candidate
        # tiles: at most _FWD_SHARED_BYTES (fits an A100's 164 KiB; benchmarks/preflight.py found 128 x 128 fp32
        # at D = 128 with 3 stages at 257 KiB, over even an H100's 227 KiB).
        esize = torch.finfo(dtype).bits // 8
        fit = (_FWD_SHARED_BYTES - bm * cfg.BLOCK_D * esize) // (bn * cfg.BLOCK_D * esize)
        cfg = cfg._replace(BLOCK_M=bm, BLOCK_N=bn, fwd_warps=warps, bwd_warps=max(warps, cfg.bwd_warps),
                           fwd_stages=max(1, min(cfg.fwd_stages, fit)))
    do = env_choice(BWD_DO_ENV, BWD_DO_CANDIDATES, "")
    if do and cfg.BLOCK_D < D:
        cfg = cfg._replace(BLOCK_DO=min(int(do), next_pow2(D)))
    return cfg


def _default_config(D: int, dtype: torch.dtype, input_precision: str) -> _Config:
    """Block sizes by a small heuristic on D, dtype and dot precision (for H100; not autotuned on hardware).

    The choices were checked by compiling every kernel for sm_90 (no GPU needed) and reading ptxas' register /
    spill report at D in {16, 33, 64, 128, 130, 512}: no spills for fp16 / bf16 / tf32, at most 8 bytes
    in the exact-fp32 dC kernel. They were not timed on hardware.

    * Tensor-core dots (fp16 / bf16, or fp32 with tf32 allowed), D <= 128: 64 x 64 tiles and one D chunk of
      next_pow2(D) (>= 16, the tensor-core minimum). The anchor tile (fwd, dA) or candidate tile (dC) is loaded
      once per program, the logit tile is a single tl.dot, and the backward reuses that tile for the gradient
      product, so no grid over D is needed.
    * Tensor-core dots, D > 128: same 64 x 64 tiles, logits accumulated over 64-wide D chunks (32-wide for
      tf32; a [64, D] operand would not fit on chip), gradient outputs split into 128-wide chunks along a
      second grid axis. Each output chunk recomputes the logits: (1 + cdiv(D, 128)) * M * Nc * D MACs per
      backward kernel instead of 2 * M * Nc * D - the price of staying atomic-free with a [64, 128] fp32
      accumulator per program.
    * Exact fp32 ("ieee", torch's default since allow_tf32 is False): tl.dot runs on FMA units with both
      operands in registers, so the logits use 32-wide D chunks (64 x 64 x 128 in one piece spills heavily)
      and the gradient outputs 128-wide chunks; 8 warps spread the register tiles.
    * Warps: 4 for the tensor-core forward at D <= 128, 8 elsewhere (the [64, BLOCK_DO] fp32 accumulators of
      the backward, the chunked forward). Stages: 3 in the forward (pipelines the candidate tile loads; at most
      ~130 KiB of shared memory, fp32/tf32 at D = 128), 2 in the backward (larger live state).
    """
    if dtype == torch.float32 and input_precision == "ieee":
        bd = min(32, dot_width(D))
        # triton 3.2 fails to compile the exact-fp32 single-chunk backward (an arith.select layout mismatch in
        # the mask's index loads; found by benchmarks/preflight.py, fixed in 3.3): the chunked path compiles.
        return _Config(64, 64, bd, bd if bd >= D else min(128, next_pow2(D)), 8, 3, 8, 2,
                       bwd_single_d=not _TRITON_BEFORE_3_3)
    if D <= 128:
        bd = dot_width(D)
        return _Config(64, 64, bd, bd, 8 if dtype == torch.float32 and bd >= 128 else 4, 3, 8, 2)
    # fp32 (tf32) operands are twice as wide: 32-wide D chunks keep the backward from spilling.
    # triton 3.2 (torch 2.6) aborts the whole process compiling the fp16/bf16 chunked-D backward with 8 warps
    # for sm_90 (LinearLayout::reshapeOuts assertion; found by benchmarks/preflight.py, fixed in triton 3.3):
    # 4 warps compile there (255 registers, no spills).
    bwd_warps = 4 if _TRITON_BEFORE_3_3 and dtype != torch.float32 else 8
    return _Config(64, 64, 32 if dtype == torch.float32 else 64, 128, 8, 3, bwd_warps, 2)


# fp16 backward: the softmax probabilities p <= 1 enter the tensor-core products as p * 256, so that p down to
# 2.4e-10 stays a normal fp16 number (6.1e-5 / 256); the fp32 result is divided back. bf16 and fp32 have fp32's
# exponent range and need no scaling.
_P_SCALE_FP16 = 256.0

# A kernel whose grid has fewer programs than _PROGRAMS_PER_SM * (number of SMs) splits its sweep (see
# _split_plan); each split streams at least _MIN_TILES_PER_SPLIT tiles so the partial buffers stay small next to
# the work they save.
_PROGRAMS_PER_SM = 2
_MIN_TILES_PER_SPLIT = 4


def _num_sms(device: torch.device) -> int:
    return num_sms(device, elsewhere=4)  # under the interpreter any small number: it only sets the split count


def _split_plan(programs: int, n_tiles: int, device: torch.device) -> Tuple[int, int]:
    """(S, tiles per split) for a kernel launching ``programs`` programs per split over ``n_tiles`` sweep tiles.

    S == 1 (one pass over the sweep, results written directly) unless the grid is too small to fill the GPU,
    e.g. MoCo's few anchor rows against a long queue. Splits are whole tiles and none is empty.
    """
    target = _PROGRAMS_PER_SM * _num_sms(device)
    if programs >= target or n_tiles < 2 * _MIN_TILES_PER_SPLIT:
        return 1, max(n_tiles, 1)
    splits = min(triton.cdiv(target, programs), n_tiles // _MIN_TILES_PER_SPLIT)
    tiles = triton.cdiv(n_tiles, splits)
    return triton.cdiv(n_tiles, tiles), tiles



def _index_args(idx: torch.Tensor) -> Tuple[torch.Tensor, int, int, int]:
    """(pointer, stride_m, stride_k, K) for a [M, K] index tensor. With K == 0 the tensor itself is passed as a
    dummy pointer (never dereferenced: the unrolled K loops are empty) with zero strides."""
    k = idx.shape[1]
    if k == 0:
        return idx, 0, 0, 0
    return idx, idx.stride(0), idx.stride(1), k


def contrastive_lse_fwd(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
) -> torch.Tensor:
    """``lse[i] = logsumexp_{j in incl(i)} scale * <anchors[i], candidates[j]>`` as [M] fp32.

    Inputs as in :func:`augcl.reference.contrastive.contrastive_lse_reference`; any 2-D strides. Validation is
    the caller's job (only asserts here).
    """
    tiles = _tiles_for(anchors, candidates, scale, pos_idx, excl_idx, neg_start)
    return _lse_fwd(anchors, candidates, scale, pos_idx, excl_idx, neg_start, tiles)


def _lse_fwd(anchors, candidates, scale, pos_idx, excl_idx, neg_start, tiles: str) -> torch.Tensor:
    assert anchors.dim() == 2 and candidates.dim() == 2 and anchors.shape[1] == candidates.shape[1]
    assert anchors.dtype == candidates.dtype
    M, D = anchors.shape
    NC = candidates.shape[0]
    assert pos_idx.dim() == 2 and excl_idx.dim() == 2 and pos_idx.shape[0] == M and excl_idx.shape[0] == M
    dev = anchors.device
    lse = torch.empty((M,), dtype=torch.float32, device=dev)
    if M == 0:
        return lse
    precision = _input_precision(anchors.dtype)
    cfg = _config(D, anchors.dtype, precision, tiles) if tiles else _pick_config(D, anchors.dtype, precision)
    pos, spm, spp, P = _index_args(pos_idx)
    excl, sem, see, E = _index_args(excl_idx)
    grid_m = triton.cdiv(M, cfg.BLOCK_M)
    splits, tiles = _split_plan(grid_m, triton.cdiv(NC, cfg.BLOCK_N), dev)
    # S > 1: every split writes its own partial lse row, combined below.
    out = lse if splits == 1 else torch.empty((splits, M), dtype=torch.float32, device=dev)
    _launch(_contrastive_lse_fwd_kernel, (grid_m, splits))(
        anchors, candidates, scale, pos, excl, out,
        M, NC, D, neg_start,
        anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1),
        spm, spp, sem, see, out.stride(-1), out.stride(0) if splits > 1 else 0, tiles * cfg.BLOCK_N,
        P=P, E=E,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=cfg.BLOCK_D,
        SINGLE_D=cfg.BLOCK_D >= D, INPUT_PRECISION=precision,
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    if splits > 1:
        lse = torch.logsumexp(out, dim=0)  # a split with nothing included contributes -inf, i.e. nothing
    return lse


def contrastive_lse_bwd(
    grad_lse: torch.Tensor,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    lse: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`contrastive_lse_fwd`: ``(dA, dC, dscale)`` in the dtypes of anchors, candidates, fp32.

    ``grad_lse`` and ``lse`` are [M] fp32 with any stride (an expanded, stride-0 ``grad_lse`` is fine).
    """
    tiles = _tiles_for(anchors, candidates, scale, pos_idx, excl_idx, neg_start)
    return _lse_bwd(grad_lse, anchors, candidates, scale, lse, pos_idx, excl_idx, neg_start, tiles)


def _lse_bwd(grad_lse, anchors, candidates, scale, lse, pos_idx, excl_idx, neg_start, tiles: str):
    assert anchors.dim() == 2 and candidates.dim() == 2 and anchors.shape[1] == candidates.shape[1]
    assert anchors.dtype == candidates.dtype
    M, D = anchors.shape
    NC = candidates.shape[0]
    assert grad_lse.shape == (M,) and lse.shape == (M,)
    assert pos_idx.dim() == 2 and excl_idx.dim() == 2 and pos_idx.shape[0] == M and excl_idx.shape[0] == M
    dev = anchors.device
    precision = _input_precision(anchors.dtype)
    cfg = _config(D, anchors.dtype, precision, tiles) if tiles else _pick_config(D, anchors.dtype, precision)
    n_do = max(1, triton.cdiv(D, cfg.BLOCK_DO))  # max(1, .) so D == 0 still writes the dscale partials
    grid_m = triton.cdiv(M, cfg.BLOCK_M)
    grid_n = triton.cdiv(NC, cfg.BLOCK_N)
    pos, spm, spp, P = _index_args(pos_idx)
    excl, sem, see, E = _index_args(excl_idx)
    common = dict(
        P=P, E=E, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=cfg.BLOCK_D, BLOCK_DO=cfg.BLOCK_DO,
        SINGLE_D=cfg.BLOCK_D >= D and cfg.bwd_single_d, INPUT_PRECISION=precision,
        P_SCALE=_P_SCALE_FP16 if anchors.dtype == torch.float16 else 1.0,
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )

    # dA and dscale: row blocks x output D chunks x column splits. Empty grids are skipped; with Nc == 0 the
    # kernel still runs, its sweep is empty and it writes the zero gradient.
    s_a, tiles_a = _split_plan(grid_m * n_do, grid_n, dev)
    if s_a == 1:
        da = da_out = torch.empty((M, D), dtype=anchors.dtype, device=dev)
    else:
        da_out = torch.empty((s_a, M, D), dtype=torch.float32, device=dev)
    ds_partial = torch.empty((s_a * grid_m,), dtype=torch.float32, device=dev)  # every entry is written
    if M > 0:
        _launch(_contrastive_lse_bwd_da_kernel, (grid_m, n_do, s_a))(
            anchors, candidates, scale, pos, excl, lse, grad_lse, da_out, ds_partial,
            M, NC, D, neg_start,
            anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1),
            spm, spp, sem, see, lse.stride(0), grad_lse.stride(0),
            da_out.stride(0) if s_a > 1 else 0, da_out.stride(-2), da_out.stride(-1), tiles_a * cfg.BLOCK_N,
            **common,
        )
    if s_a > 1:
        da = da_out.sum(dim=0).to(anchors.dtype)

    # dC: column blocks x output D chunks x row splits.
    s_c, tiles_c = _split_plan(grid_n * n_do, grid_m, dev)
    if s_c == 1:
        dc = dc_out = torch.empty((NC, D), dtype=candidates.dtype, device=dev)
    else:
        dc_out = torch.empty((s_c, NC, D), dtype=torch.float32, device=dev)
    if NC > 0:
        # The dC product sums g_i * p_ij over rows: it gets g / max|g| (all of it on the device, no sync), see the
        # kernel. An all-zero gradient keeps a divisor of 1.
        g_max = grad_lse.abs().amax() if M > 0 else torch.ones((), dtype=torch.float32, device=dev)
        g_max = torch.where(g_max > 0, g_max, torch.ones_like(g_max)).to(torch.float32)
        g_unit = grad_lse.to(torch.float32) / g_max
        _launch(_contrastive_lse_bwd_dc_kernel, (grid_n, n_do, s_c))(
            anchors, candidates, scale, pos, excl, lse, g_unit, g_max, dc_out,
            M, NC, D, neg_start,
            anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1),
            spm, spp, sem, see, lse.stride(0), g_unit.stride(0),
            dc_out.stride(0) if s_c > 1 else 0, dc_out.stride(-2), dc_out.stride(-1), tiles_c * cfg.BLOCK_M,
            **common,
        )
    if s_c > 1:
        dc = dc_out.sum(dim=0).to(candidates.dtype)

    dscale = ds_partial.sum()  # 0-dim fp32; 0 when M == 0
    return da, dc, dscale


# The tiles "autotune" chose, by key (see TILE_CHOICES); filled on first use in each process.
_TUNED: Dict[tuple, str] = {}


def _tiles_for(anchors, candidates, scale, pos_idx, excl_idx, neg_start) -> str:
    """The tile candidate of this call: AUGCL_CONTRASTIVE_TILES's ("" = the default's), or with "autotune" the
    fastest candidate for these inputs' key, timed on the first call with that key. Inputs without data (fake or
    meta tensors: torch.compile's tracing) cannot be timed and get the default tiles."""
    tiles = env_choice(TILES_ENV, TILE_CHOICES, "")
    if tiles != AUTOTUNE:
        return tiles
    if not _has_data(anchors) or not _has_data(candidates) or anchors.shape[0] == 0 or candidates.shape[0] == 0:
        return ""
    M, D = anchors.shape
    key = (D, anchors.dtype, _input_precision(anchors.dtype), str(anchors.device), next_pow2(M),
           next_pow2(candidates.shape[0]), pos_idx.shape[1], excl_idx.shape[1])
    if key not in _TUNED:
        _TUNED[key] = _tune_tiles(anchors, candidates, scale, pos_idx, excl_idx, neg_start)
    return _TUNED[key]


def _has_data(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    return not (t.is_meta or is_fake(t) or isinstance(t, FunctionalTensor) or torch.compiler.is_compiling())


def _tune_tiles(anchors, candidates, scale, pos_idx, excl_idx, neg_start) -> str:
    """The candidate with the fastest forward + backward on these inputs (a candidate that cannot launch on this GPU,
    e.g. out of shared memory, is left out)."""
    grad = torch.ones(anchors.shape[0], dtype=torch.float32, device=anchors.device)
    times = {}
    for name in TILE_CANDIDATES:
        def run(name=name):
            lse = _lse_fwd(anchors, candidates, scale, pos_idx, excl_idx, neg_start, name)
            _lse_bwd(grad, anchors, candidates, scale, lse, pos_idx, excl_idx, neg_start, name)

        try:
            times[name] = _time_ms(run, anchors.device)
        except Exception:  # noqa: BLE001 - a candidate this GPU cannot run is simply not chosen
            continue
    return min(times, key=times.get) if times else ""


def _time_ms(fn, device: torch.device) -> float:
    """Median milliseconds of ``fn`` (CUDA events through triton's do_bench; one timed call on the CPU, where the
    interpreter runs the kernels)."""
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


# ----------------------------------------------------------------------------------------------------------------
# Capability check
# ----------------------------------------------------------------------------------------------------------------

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_contrastive_lse_fwd_kernel)


def _interpreted() -> bool:
    """Whether the kernels were built for the triton interpreter (decided when this module was imported)."""
    return _INTERPRETED


def supports(anchors: torch.Tensor, candidates: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on ``anchors``/``candidates``, else a human-readable reason why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    reason = dtype_reason(("anchors dtype", anchors.dtype, _SUPPORTED_DTYPES),
                          ("candidates dtype", candidates.dtype, _SUPPORTED_DTYPES))
    if reason is not None:
        return reason
    if anchors.dtype != candidates.dtype:
        return f"anchors ({anchors.dtype}) and candidates ({candidates.dtype}) must have the same dtype"
    if anchors.device != candidates.device:
        return f"anchors ({anchors.device}) and candidates ({candidates.device}) are on different devices"
    return device_reason(_INTERPRETED, anchors.device, anchors.dtype, "augcl.kernels.contrastive")
