"""
Un-Mix image mixtures (``mix_images``)
======================================

Triton kernels for ``augcl``'s ``mix_images`` op and its backward.

Math
----
x [B, C, H, W] (fp16/fp32, bf16 on GPU, or uint8), row i, p = partner[i], per element (c, y, w)::

    mixup row:   v = a_i * x[i] + b_i * x[p]          a_i = lam[i], b_i = 1 - a_i (fp32)
    CutMix row:  v = x[p] if (y0 <= y < y1 and x0 <= w < x1) else x[i]     (boxes[i] = (y0, y1, x0, x1))
    v = v / 255 (uint8);  v = v - mean[c];  v = v / std[c];  out = v in out's dtype

Backward (x floating), g' = grad_out / std[c]::

    grad_x[j] = own_j + sum_{i: partner[i] = j, increasing i} cross_i
    own_i = a_i g'_i | (0 inside, g'_i outside);   cross_i = b_i g'_i | (g'_i inside, 0 outside)

Memory traffic
--------------
The naive PyTorch composition (x.float(), x[partner], two products, a sum, where, /255, -mean, /std, .to) reads and
writes a [B, C, H, W] fp32 temporary about ten times. Here: each output element reads x[i] and x[p] once (a CutMix
element reads only the one it copies: the other load is masked off) and writes once, in x's own dtype (1 byte per
uint8 pixel). The op is memory-bound; nothing here is compute-heavy.

Design
------
* One launch, grid (cdiv(C*H*W, BLOCK), B): axis 1 is the row, axis 0 a block of the row's C*H*W elements. A row
  is one contiguous block in both NCHW and channels_last (only the decoding of (c, y, w) from the offset
  differs), so the loads are contiguous and vectorisable in either layout. Rows sit on axis 1 (at most 65535).
* int64 offsets (row * C*H*W overflows int32 for large batches of large images), masks on every load and store.
* Divisions are ``div_rn`` (IEEE round-to-nearest, as torch and the C++ kernels): Triton's plain ``/`` on fp32 is
  an approximate division on GPUs. The mixup line may be contracted to an FMA by the GPU compiler (one rounding
  fewer than the reference); on CutMix rows every backend agrees bitwise.
* Backward: grid as the forward, over grad_x rows j; the rows i with partner[i] == j come from a stable sort of
  partner (CSR lists; ``start`` by a binary search in the sorted partners, no host sync), so each grad_x element
  is written by one program, with no atomics, in a fixed order: deterministic, and the same order as the
  reference's index_add_ on CPU. For an involution (reverse pairing) each list holds one row: a plain gather.
* fp64 is not supported (the C++ CPU kernel and the reference handle it); neither is bf16 under the interpreter.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import (  # noqa: F401  (stand-ins when triton is missing)
    HAS_TRITON, block_range, device_reason, dtype_reason, is_interpreted, launch as _launch, tl, triton,
)

__all__ = ["mix_images_fwd", "mix_images_bwd", "supports"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# 1024 elements per program: 4 KiB of fp32 per load, enough to keep HBM busy; the grid has B * cdiv(CHW, 1024)
# programs (about 150 per 224x224x3 image).
_BLOCK = 1024
_MAX_GRID_1 = 65535  # CUDA's limit on grid axis 1 (the rows)


@triton.jit
def _decode(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(c, y, w) of the element at offset ``offs`` inside a row's C*H*W block."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        y = offs // (C * W)
    else:
        hw = H * W
        c = offs // hw
        y = (offs % hw) // W
        w = offs % W
    return c, y, w


@triton.jit
def _in_box(BOXES, i, y, w):
    """Whether (y, w) lies inside row i's half-open CutMix box (y0, y1, x0, x1) = BOXES[4 i : 4 i + 4]."""
    return ((y >= tl.load(BOXES + 4 * i)) & (y < tl.load(BOXES + 4 * i + 1))
            & (w >= tl.load(BOXES + 4 * i + 2)) & (w < tl.load(BOXES + 4 * i + 3)))


@triton.jit
def _mix_images_fwd_kernel(
    X, OUT, LAM, CUT, BOXES, PARTNER, MEAN, STD, C, H, W, CHW,
    IS_UINT8: tl.constexpr, HAS_MEAN: tl.constexpr, HAS_STD: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(1).to(tl.int64)
    offs, ok, offs64 = block_range(tl.program_id(0).to(tl.int64) * BLOCK, BLOCK, CHW)  # int64 already
    p = tl.load(PARTNER + i)
    is_cut = tl.load(CUT + i) != 0
    is_mix = tl.load(CUT + i) == 0
    c, y, w = _decode(offs, C, H, W, CHANNELS_LAST)
    inside = _in_box(BOXES, i, y, w)
    outside = ~inside
    # Which of x[i], x[p] this element needs: both for mixup, exactly one for CutMix (each read once).
    need_i = ok & (is_mix | outside)
    need_p = ok & (is_mix | inside)
    xi = tl.load(X + i * CHW + offs, mask=need_i, other=0).to(tl.float32)
    xp = tl.load(X + p * CHW + offs, mask=need_p, other=0).to(tl.float32)
    a = tl.load(LAM + i)
    b = 1.0 - a
    v = tl.where(is_cut, tl.where(inside, xp, xi), a * xi + b * xp)
    if IS_UINT8:
        v = tl.math.div_rn(v, tl.full(v.shape, 255.0, tl.float32))
    if HAS_MEAN:
        v = v - tl.load(MEAN + c, mask=ok, other=0.0)
    if HAS_STD:
        v = tl.math.div_rn(v, tl.load(STD + c, mask=ok, other=1.0))
    tl.store(OUT + i * CHW + offs, v.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _mix_images_bwd_kernel(
    G, GX, LAM, CUT, BOXES, START, ROWS, STD, C, H, W, CHW,
    HAS_STD: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    j = tl.program_id(1).to(tl.int64)
    offs, ok, offs64 = block_range(tl.program_id(0).to(tl.int64) * BLOCK, BLOCK, CHW)  # int64 already
    c, y, w = _decode(offs, C, H, W, CHANNELS_LAST)
    if HAS_STD:
        sd = tl.load(STD + c, mask=ok, other=1.0)
    # Own term of row j.
    g = tl.load(G + j * CHW + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_STD:
        g = tl.math.div_rn(g, sd)
    acc = tl.where(tl.load(CUT + j) != 0, tl.where(_in_box(BOXES, j, y, w), 0.0, g), tl.load(LAM + j) * g)
    # Cross terms of the rows i with partner[i] == j, in increasing i.
    q0 = tl.load(START + j)
    q1 = tl.load(START + j + 1)
    for q in range(q0, q1):
        i = tl.load(ROWS + q)
        gi = tl.load(G + i * CHW + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_STD:
            gi = tl.math.div_rn(gi, sd)
        b = 1.0 - tl.load(LAM + i)
        acc = acc + tl.where(tl.load(CUT + i) != 0, tl.where(_in_box(BOXES, i, y, w), gi, 0.0), b * gi)
    tl.store(GX + j * CHW + offs, acc.to(GX.dtype.element_ty), mask=ok)



def _layout(t: torch.Tensor):
    """(tensor in the kernel's layout, channels_last flag): the rule of augcl.reference.unmix.mix_memory_format."""
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    fmt = torch.channels_last if cl else torch.contiguous_format
    return t.contiguous(memory_format=fmt), cl, fmt


def _channel_vector(t: Optional[torch.Tensor], ref: torch.Tensor):
    """[C] fp32 contiguous, or (when None) a 1-element dummy pointer that the kernel never reads."""
    if t is None:
        return ref.new_empty((1,), dtype=torch.float32), False
    return t.to(device=ref.device, dtype=torch.float32).contiguous(), True


def mix_images_fwd(x, lam, cutmix, boxes, partner, mean, std, out_dtype) -> torch.Tensor:
    """Forward of ``mix_images`` (see the module docstring); validation is the caller's job (asserts only)."""
    assert x.dim() == 4 and out_dtype in _OUT_DTYPES
    B, C, H, W = x.shape
    xc, cl, fmt = _layout(x)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device, memory_format=fmt)
    CHW = C * H * W
    if out.numel() == 0:
        return out
    assert B <= _MAX_GRID_1
    mean_t, has_mean = _channel_vector(mean, x)
    std_t, has_std = _channel_vector(std, x)
    _launch(_mix_images_fwd_kernel, (triton.cdiv(CHW, _BLOCK), B))(
        xc, out, lam.to(torch.float32).contiguous(), cutmix.to(torch.int8).contiguous(),
        boxes.to(torch.int64).contiguous(), partner.to(torch.int64).contiguous(), mean_t, std_t, C, H, W, CHW,
        IS_UINT8=x.dtype == torch.uint8, HAS_MEAN=has_mean, HAS_STD=has_std, CHANNELS_LAST=cl, BLOCK=_BLOCK,
    )
    return out


def mix_images_bwd(grad_out, lam, cutmix, boxes, partner, std, x_dtype) -> torch.Tensor:
    """grad_x of ``mix_images`` in ``x_dtype``, in grad_out's memory format (deterministic, no atomics)."""
    assert grad_out.dim() == 4 and x_dtype in _OUT_DTYPES
    B, C, H, W = grad_out.shape
    g, cl, fmt = _layout(grad_out)
    gx = torch.empty(grad_out.shape, dtype=x_dtype, device=grad_out.device, memory_format=fmt)
    CHW = C * H * W
    if gx.numel() == 0:
        return gx
    assert B <= _MAX_GRID_1
    # CSR inverse of partner: rows sorted by partner (ties in increasing row), start[j] = the number of partners
    # < j, found by a binary search of 0..B in the sorted partners on the device. A bincount would size its output
    # from the largest partner, read back to the host: one sync per backward.
    sorted_partner, rows = torch.sort(partner.to(torch.int64), stable=True)
    start = torch.searchsorted(sorted_partner, torch.arange(B + 1, dtype=torch.int64, device=grad_out.device))
    std_t, has_std = _channel_vector(std, grad_out)
    _launch(_mix_images_bwd_kernel, (triton.cdiv(CHW, _BLOCK), B))(
        g, gx, lam.to(torch.float32).contiguous(), cutmix.to(torch.int8).contiguous(),
        boxes.to(torch.int64).contiguous(), start, rows.contiguous(), std_t, C, H, W, CHW,
        HAS_STD=has_std, CHANNELS_LAST=cl, BLOCK=_BLOCK,
    )
    return gx


# The build mode of every kernel of this module (interpreted or compiled), fixed when it was imported; a constant
# that supports() can use while torch.compile traces it.
_INTERPRETED = is_interpreted(_mix_images_fwd_kernel)


def supports(x: torch.Tensor, out_dtype: torch.dtype) -> Optional[str]:
    """None if these kernels can run ``mix_images`` on ``x`` with output ``out_dtype``, else why not."""
    if not HAS_TRITON:
        return "triton is not installed"
    reason = dtype_reason(("x dtype", x.dtype, _SUPPORTED_DTYPES), ("out_dtype", out_dtype, _OUT_DTYPES))
    if reason is not None:
        return reason
    if x.dim() == 4 and x.shape[0] > _MAX_GRID_1:
        return f"batch size {x.shape[0]} exceeds the grid limit of {_MAX_GRID_1} rows"
    dtype = torch.bfloat16 if torch.bfloat16 in (x.dtype, out_dtype) else torch.float32
    return device_reason(_INTERPRETED, x.device, dtype, "augcl.kernels.unmix")
