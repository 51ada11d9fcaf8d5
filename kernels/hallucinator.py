"""
Fused Hallucinator generator
============================

Triton kernels for ``augcl``'s ``hallucinate`` op; the oracle is ``augcl/reference/hallucinator.py``.

Math
----
x, k [B, D]; lam [B] fp32; W1 [H, 2D], b1 [H]; W2 [H, H], b2 [H]; W3 [D, H], b3 [D] (nn.Linear layout; x's
dtype: fp32, fp16, bf16; every dot accumulates in fp32)::

    x~ = x + lam * (x - k)
    a1 = relu([x, x~] W1^T + b1)       a2 = relu(a1 W2^T + b2)       h = a2 W3^T + b3

The concat ``[x, x~]`` [B, 2D] is *virtual*: wherever a kernel loads a tile of it, column c reads x[:, c mod D]
(and, for c >= D, k[:, c - D] too) and forms ``x + [c >= D] * lam * (x - k)`` in registers. So the
extrapolation is folded into the first layer's operand loads and [B, 2D] never exists in memory.

Backward from the saved a1, a2 (no forward GEMM is recomputed)::

    dz2 = (dh W3) * [a2 > 0]       dz1 = (dz2 W2) * [a1 > 0]
    dW3 = dh^T a2   dW2 = dz2^T a1   dW1 = dz1^T [x, x~]   db* = column sums of dh, dz2, dz1
    G = dz1 W1 = [Ga | Gb]  ->  dx = Ga + (1 + lam) Gb,  dk = -lam Gb
lam is not differentiated.

Kernels and what each fuses
---------------------------
* ``_fused_fwd_kernel`` (the whole forward in ONE launch, used when the whole hidden tile fits on chip:
  H <= 128 and 2D <= 128, e.g. D <= 64 with H = 2D): one program per BLOCK_M rows loads x, k, lam, forms the
  virtual [x, x~] tile, and chains the three GEMMs with W1, W2, W3 each staged whole (padded to powers of two,
  masked), bias + ReLU in registers; it writes h and the saved a1, a2 and nothing else.
* ``_linear_fwd_kernel`` (large D, one launch per layer = 3): a tiled GEMM ``act(A W^T + b)`` whose A-operand
  prologue can form the virtual [x, x~] (layer 1) and whose epilogue adds the bias and applies the ReLU.
  Fusing all three layers into one program is not realistic there (W2 alone is 4 MiB at H = 1024).
* Backward, 6 launches (plus a deterministic torch sum of split partials, see below):
  ``_linear_dgrad_kernel`` x3: ``dz2`` with the ReLU mask of a2 in its epilogue, ``dz1`` with the mask of a1,
  and ``dx, dk`` (two accumulators Ga, Gb in one program; the (1 + lam) / -lam combination in the epilogue);
  ``_linear_wgrad_kernel`` x3: ``dW3, db3``, ``dW2, db2``, ``dW1, db1`` (B-operand prologue forms the virtual
  [x, x~] again: x~ is recomputed from x, k, lam, never stored). The bias gradient is a by-product of the weight
  gradient's sweep over the rows (the programs of the first column block sum dz).
  A single-launch backward is not done: the weight gradients reduce over all B rows, so a row-parallel fused
  backward would need atomics or [programs, H, 2D] partial buffers.

Determinism: every output element is owned by one program and reduced in a fixed order; the weight gradients
over many rows are split along B into S tile-aligned chunks (when the weight tile grid alone would leave SMs
idle), each writing an fp32 partial [S, N, K] summed by torch in a fixed order. No atomics.

Masks on every load and store; int64 row offsets (B * 2D can exceed 2^31 at large B). fp32 operands use
``input_precision="ieee"`` unless torch allows TF32 matmuls (one rule for every kernel file: kernels/_triton.py);
the interpreter computes every dot in full fp32 either way. fp64 is not supported (the C++ CPU kernel and the
reference handle it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, block_range, device_reason, dot_width, dtype_reason, input_precision as _input_precision,
    is_interpreted, launch as _launch, load_tile, num_sms, store_tile, tl, triton,
)

__all__ = ["hallucinate_fwd", "hallucinate_bwd", "supports", "uses_fused_forward"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Largest padded hidden width / virtual input width for which the single-launch forward stages every weight on
# chip: W2 at 128 x 128 is 32 KiB in fp16 (64 KiB fp32) of shared memory, within every target GPU's budget.
FUSED_MAX_WIDTH = 128
# Tiles of the per-layer GEMMs (tensor-core friendly, 64 x 64 fp32 accumulator = 16 KiB of registers).
_BLOCK_M = 64
_BLOCK_N = 64
_BLOCK_K = 32


# ----------------------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_virtual_concat(X, Kp, LAM, rows64, row_ok, cols, D, stride_xm, stride_xd, stride_km, stride_kd):
    """Tile of the virtual [x, x~] [B, 2D] at (rows, cols), fp32: column c < D is x[:, c], column c >= D is
    x~[:, c - D] = x + lam * (x - k). Out-of-range cells are 0."""
    is_b = cols >= D
    src = tl.where(is_b, cols - D, cols).to(tl.int64)
    col_ok = cols < 2 * D
    ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows64[:, None] * stride_xm + src[None, :] * stride_xd, mask=ok, other=0.0).to(tl.float32)
    kv = tl.load(Kp + rows64[:, None] * stride_km + src[None, :] * stride_kd, mask=ok & is_b[None, :],
                 other=0.0).to(tl.float32)
    lam = tl.load(LAM + rows64, mask=row_ok, other=0.0)
    scale = tl.where(is_b[None, :], lam[:, None], 0.0)
    return x + scale * (x - kv)


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _fused_fwd_kernel(
    X, Kp, LAM, W1, B1, W2, B2, W3, B3, H_OUT, A1, A2,
    M, D, H,
    stride_xm, stride_xd, stride_km, stride_kd,
    stride_w1h, stride_w1c, stride_w2o, stride_w2i, stride_w3o, stride_w3i,
    stride_hm, stride_hd, stride_a1m, stride_a1h, stride_a2m, stride_a2h,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """The whole generator for BLOCK_M rows: grid (cdiv(M, BLOCK_M),). BLOCK_C >= 2D, BLOCK_H >= H, BLOCK_D >= D
    (powers of two >= 16); every weight is loaded whole, already transposed through its strides."""
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_M, BLOCK_M, M)
    # The weights are small (whole tiles of at most FUSED_MAX_WIDTH): int32 offsets suffice.
    offs_c, c_ok, offs_c64 = block_range(0, BLOCK_C, 2 * D)
    offs_h, h_ok, offs_h64 = block_range(0, BLOCK_H, H)
    offs_d, d_ok, offs_d64 = block_range(0, BLOCK_D, D)
    dt = W1.dtype.element_ty

    xc = _load_virtual_concat(X, Kp, LAM, rows64, row_ok, offs_c, D, stride_xm, stride_xd, stride_km, stride_kd)
    w1t = load_tile(W1, offs_c, c_ok, offs_h, h_ok, stride_w1c, stride_w1h)  # [BLOCK_C, BLOCK_H] = W1^T
    b1 = tl.load(B1 + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    a1 = tl.maximum(tl.dot(xc.to(dt), w1t, input_precision=INPUT_PRECISION) + b1[None, :], 0.0).to(dt)
    store_tile(A1, rows64, row_ok, offs_h, h_ok, stride_a1m, stride_a1h, a1)

    w2t = load_tile(W2, offs_h, h_ok, offs_h, h_ok, stride_w2i, stride_w2o)  # [BLOCK_H, BLOCK_H] = W2^T
    b2 = tl.load(B2 + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    a2 = tl.maximum(tl.dot(a1, w2t, input_precision=INPUT_PRECISION) + b2[None, :], 0.0).to(dt)
    store_tile(A2, rows64, row_ok, offs_h, h_ok, stride_a2m, stride_a2h, a2)

    w3t = load_tile(W3, offs_h, h_ok, offs_d, d_ok, stride_w3i, stride_w3o)  # [BLOCK_H, BLOCK_D] = W3^T
    b3 = tl.load(B3 + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    h = tl.dot(a2, w3t, input_precision=INPUT_PRECISION) + b3[None, :]
    store_tile(H_OUT, rows64, row_ok, offs_d, d_ok, stride_hm, stride_hd, h.to(dt))


@triton.jit
def _linear_fwd_kernel(
    A, Kp, LAM, W, BIAS, OUT,
    M, N, KDIM, D,
    stride_am, stride_ak, stride_km, stride_kd, stride_wn, stride_wk, stride_om, stride_on,
    CONCAT: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """OUT[M, N] = act(A' W^T + bias) with W [N, KDIM]. A' = A [M, KDIM], or with CONCAT the virtual
    [x, x~] (A = x, Kp = k, KDIM = 2D). Grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))."""
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_M, BLOCK_M, M)
    cols, col_ok, cols64 = block_range(tl.program_id(1) * BLOCK_N, BLOCK_N, N)
    dt = W.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, KDIM, BLOCK_K):
        offs_k, k_ok, offs_k64 = block_range(k0, BLOCK_K, KDIM)
        if CONCAT:
            a = _load_virtual_concat(A, Kp, LAM, rows64, row_ok, offs_k, D, stride_am, stride_ak, stride_km,
                                     stride_kd).to(dt)
        else:
            a = load_tile(A, rows64, row_ok, offs_k64, k_ok, stride_am, stride_ak)
        wt = load_tile(W, offs_k64, k_ok, cols64, col_ok, stride_wk, stride_wn)  # [BLOCK_K, BLOCK_N] = W^T tile
        acc = tl.dot(a, wt, acc, input_precision=INPUT_PRECISION)
    acc = acc + tl.load(BIAS + cols64, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    store_tile(OUT, rows64, row_ok, cols64, col_ok, stride_om, stride_on, acc.to(OUT.dtype.element_ty))


@triton.jit
def _linear_dgrad_kernel(
    G, W, ACT, LAM, OUT, OUT2,
    M, N, KDIM, D,
    stride_gm, stride_gk, stride_wk, stride_wn, stride_actm, stride_actn, stride_om, stride_on,
    stride_o2m, stride_o2n,
    MASK: tl.constexpr, SPLIT_X: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Input gradient of a Linear: OUT[M, N] = (G[M, KDIM] W[KDIM, N]) * [ACT > 0 if MASK].

    With SPLIT_X (the first layer, W = W1 [H, 2D], N = D): Ga = G W1[:, :D] and Gb = G W1[:, D:] accumulate
    side by side and the epilogue writes OUT = dx = Ga + (1 + lam) Gb and OUT2 = dk = -lam Gb.
    Grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))."""
    rows, row_ok, rows64 = block_range(tl.program_id(0) * BLOCK_M, BLOCK_M, M)
    cols, col_ok, cols64 = block_range(tl.program_id(1) * BLOCK_N, BLOCK_N, N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, KDIM, BLOCK_K):
        offs_k, k_ok, offs_k64 = block_range(k0, BLOCK_K, KDIM)
        g = load_tile(G, rows64, row_ok, offs_k64, k_ok, stride_gm, stride_gk)
        w = load_tile(W, offs_k64, k_ok, cols64, col_ok, stride_wk, stride_wn)
        acc = tl.dot(g, w, acc, input_precision=INPUT_PRECISION)
        if SPLIT_X:
            wb = load_tile(W, offs_k64, k_ok, cols64 + D, col_ok, stride_wk, stride_wn)
            acc_b = tl.dot(g, wb, acc_b, input_precision=INPUT_PRECISION)
    if MASK:
        act = load_tile(ACT, rows64, row_ok, cols64, col_ok, stride_actm, stride_actn)
        acc = tl.where(act > 0, acc, 0.0)
    if SPLIT_X:
        lam = tl.load(LAM + rows64, mask=row_ok, other=0.0)[:, None]
        store_tile(OUT2, rows64, row_ok, cols64, col_ok, stride_o2m, stride_o2n,
                   (-lam * acc_b).to(OUT2.dtype.element_ty))
        acc = acc + (1.0 + lam) * acc_b
    store_tile(OUT, rows64, row_ok, cols64, col_ok, stride_om, stride_on, acc.to(OUT.dtype.element_ty))


@triton.jit
def _linear_wgrad_kernel(
    G, A, Kp, LAM, DW, DB,
    M, N, KDIM, D, rows_per_split,
    stride_gm, stride_gn, stride_am, stride_ak, stride_km, stride_kd,
    stride_dws, stride_dwn, stride_dwk, stride_dbs,
    CONCAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Weight and bias gradient of a Linear over one split of the rows: DW[s] = G[rows_s]^T A'[rows_s] [N, KDIM]
    and DB[s] = column sums of G[rows_s] (written by the programs with pid_k == 0), fp32 partials. A' = A or,
    with CONCAT, the virtual [x, x~]. Grid (cdiv(N, BLOCK_N), cdiv(KDIM, BLOCK_K), S)."""
    cols_n, n_ok, n64 = block_range(tl.program_id(0) * BLOCK_N, BLOCK_N, N)
    cols_k, k_ok, k64 = block_range(tl.program_id(1) * BLOCK_K, BLOCK_K, KDIM)
    split = tl.program_id(2)
    dt = A.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_N], dtype=tl.float32)
    m_start = split * rows_per_split
    m_end = tl.minimum(m_start + rows_per_split, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        rows, row_ok, rows64 = block_range(m0, BLOCK_M, m_end)
        gt = load_tile(G, n64, n_ok, rows64, row_ok, stride_gn, stride_gm)  # [BLOCK_N, BLOCK_M] = G^T tile
        if CONCAT:
            a = _load_virtual_concat(A, Kp, LAM, rows64, row_ok, cols_k, D, stride_am, stride_ak, stride_km,
                                     stride_kd).to(dt)
        else:
            a = load_tile(A, rows64, row_ok, k64, k_ok, stride_am, stride_ak)
        acc = tl.dot(gt, a, acc, input_precision=INPUT_PRECISION)
        dbias += tl.sum(gt.to(tl.float32), axis=1)
    store_tile(DW + split * stride_dws, n64, n_ok, k64, k_ok, stride_dwn, stride_dwk, acc)
    if tl.program_id(1) == 0:
        tl.store(DB + split * stride_dbs + n64, dbias, mask=n_ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------



def uses_fused_forward(d: int, h: int) -> bool:
    """Whether the single-launch forward runs for width D and hidden width H (see FUSED_MAX_WIDTH)."""
    return dot_width(2 * d) <= FUSED_MAX_WIDTH and dot_width(h) <= FUSED_MAX_WIDTH


def _linear(a, w, bias, out, relu, precision, k=None, lam=None, d=0):
    m, n = out.shape
    concat = k is not None
    kp = k if concat else a
    lam = lam if concat else bias
    _launch(_linear_fwd_kernel, (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N)))(
        a, kp, lam, w, bias, out, m, n, w.shape[1], d,
        a.stride(0), a.stride(1), kp.stride(0), kp.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        CONCAT=concat, RELU=relu, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, INPUT_PRECISION=precision,
    )


def hallucinate_fwd(x, k, lam, w1, b1, w2, b2, w3, b3, fused: Optional[bool] = None):
    """``(h [B, D], a1 [B, H], a2 [B, H])`` in x's dtype. Any 2-D strides; lam [B] fp32 (contiguous or not).

    ``fused``: None picks the single-launch kernel when it fits (:func:`uses_fused_forward`), False forces the
    per-layer kernels (tests cover both paths). Validation is the caller's job (only asserts here)."""
    assert x.dim() == 2 and x.shape == k.shape
    m, d = x.shape
    hdim = w1.shape[0]
    assert w1.shape == (hdim, 2 * d) and w2.shape == (hdim, hdim) and w3.shape == (d, hdim)
    lam = lam.to(torch.float32).contiguous()
    dev, dt = x.device, x.dtype
    h = torch.empty((m, d), dtype=dt, device=dev)
    a1 = torch.empty((m, hdim), dtype=dt, device=dev)
    a2 = torch.empty((m, hdim), dtype=dt, device=dev)
    if m == 0:
        return h, a1, a2
    precision = _input_precision(dt)
    if fused is None:
        fused = uses_fused_forward(d, hdim)
    if fused:
        block_m = 32
        _launch(_fused_fwd_kernel, (triton.cdiv(m, block_m),))(
            x, k, lam, w1, b1, w2, b2, w3, b3, h, a1, a2, m, d, hdim,
            x.stride(0), x.stride(1), k.stride(0), k.stride(1),
            w1.stride(0), w1.stride(1), w2.stride(0), w2.stride(1), w3.stride(0), w3.stride(1),
            h.stride(0), h.stride(1), a1.stride(0), a1.stride(1), a2.stride(0), a2.stride(1),
            BLOCK_M=block_m, BLOCK_C=dot_width(2 * d), BLOCK_H=dot_width(hdim), BLOCK_D=dot_width(d),
            INPUT_PRECISION=precision,
        )
        return h, a1, a2
    _linear(x, w1, b1, a1, True, precision, k=k, lam=lam, d=d)
    _linear(a1, w2, b2, a2, True, precision)
    _linear(a2, w3, b3, h, False, precision)
    return h, a1, a2


def _num_splits(m: int, tiles: int, device: torch.device) -> int:
    """Row splits of a weight-gradient sweep: enough programs for ~2 per SM, each split >= 4 row tiles."""
    return max(1, min(triton.cdiv(2 * num_sms(device, elsewhere=2), tiles), triton.cdiv(m, 4 * _BLOCK_M)))


def _wgrad(g, a, precision, k=None, lam=None, d=0, kdim=None):
    """(dW [N, KDIM], db [N]) of a Linear with output gradient g [M, N] and input a [M, KDIM] (or the virtual
    [x, x~] when k is given), in a's dtype."""
    m, n = g.shape
    kdim = a.shape[1] if kdim is None else kdim
    concat = k is not None
    kp = k if concat else a
    lam = lam if concat else g
    tiles = triton.cdiv(n, _BLOCK_N) * triton.cdiv(kdim, _BLOCK_K)
    splits = _num_splits(m, tiles, g.device)
    rows_per_split = triton.cdiv(triton.cdiv(m, splits), _BLOCK_M) * _BLOCK_M
    splits = triton.cdiv(m, rows_per_split)
    dw = torch.empty((splits, n, kdim), dtype=torch.float32, device=g.device)
    db = torch.empty((splits, n), dtype=torch.float32, device=g.device)
    _launch(_linear_wgrad_kernel, (triton.cdiv(n, _BLOCK_N), triton.cdiv(kdim, _BLOCK_K), splits))(
        g, a, kp, lam, dw, db, m, n, kdim, d, rows_per_split,
        g.stride(0), g.stride(1), a.stride(0), a.stride(1), kp.stride(0), kp.stride(1),
        dw.stride(0), dw.stride(1), dw.stride(2), db.stride(0),
        CONCAT=concat, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, INPUT_PRECISION=precision,
    )
    # Fixed-order sum over the splits (deterministic); a no-op reduction when there is one split.
    return dw.sum(0).to(a.dtype), db.sum(0).to(a.dtype)


def _dgrad(g, w, out, precision, act=None, lam=None, out2=None, d=0):
    m, n = out.shape
    kdim = g.shape[1]
    split_x = out2 is not None
    act_t = act if act is not None else out
    lam_t = lam if lam is not None else g
    out2_t = out2 if split_x else out
    _launch(_linear_dgrad_kernel, (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N)))(
        g, w, act_t, lam_t, out, out2_t, m, n, kdim, d,
        g.stride(0), g.stride(1), w.stride(0), w.stride(1), act_t.stride(0), act_t.stride(1),
        out.stride(0), out.stride(1), out2_t.stride(0), out2_t.stride(1),
        MASK=act is not None, SPLIT_X=split_x,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, INPUT_PRECISION=precision,
    )


def hallucinate_bwd(grad_h, x, k, lam, w1, w2, w3, a1, a2) -> Tuple[torch.Tensor, ...]:
    """``(dx, dk, dw1, db1, dw2, db2, dw3, db3)`` from the saved a1, a2 (6 launches, see the module docstring)."""
    m, d = x.shape
    hdim = w1.shape[0]
    lam = lam.to(torch.float32).contiguous()
    dev, dt = x.device, x.dtype
    precision = _input_precision(dt)
    dz2 = torch.empty((m, hdim), dtype=dt, device=dev)
    dz1 = torch.empty((m, hdim), dtype=dt, device=dev)
    dx = torch.empty((m, d), dtype=dt, device=dev)
    dk = torch.empty((m, d), dtype=dt, device=dev)
    _dgrad(grad_h, w3, dz2, precision, act=a2)
    dw3, db3 = _wgrad(grad_h, a2, precision)
    _dgrad(dz2, w2, dz1, precision, act=a1)
    dw2, db2 = _wgrad(dz2, a1, precision)
    _dgrad(dz1, w1, dx, precision, lam=lam, out2=dk, d=d)
    dw1, db1 = _wgrad(dz1, x, precision, k=k, lam=lam, d=d, kdim=2 * d)
    return dx, dk, dw1, db1, dw2, db2, dw3, db3


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_linear_fwd_kernel)


def supports(x: torch.Tensor) -> Optional[str]:
    """None if these kernels can run on ``x`` (and weights of its dtype and device), else why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    reason = dtype_reason(("dtype", x.dtype, _SUPPORTED_DTYPES))
    if reason is not None:
        return reason
    return device_reason(_INTERPRETED, x.device, x.dtype, "augcl.kernels.hallucinator")
