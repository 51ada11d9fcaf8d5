"""Pure-PyTorch reference of the Un-Mix ``mix_images`` op: the oracle of the tests and the fallback backend.

Math, per row i of x [B, C, H, W] with p = partner[i] and every pixel (c, y, w):

* mixup row (``cutmix[i]`` False):  ``v = a_i * x[i] + b_i * x[p]`` with ``a_i = lam[i]``, ``b_i = 1 - a_i``
  (both in the accumulation dtype; see :func:`augcl._numerics.acc_dtype`).
* CutMix row (``cutmix[i]`` True):  ``v = x[p]`` inside the half-open box ``boxes[i] = (y0, y1, x0, x1)``,
  ``v = x[i]`` outside. A pure copy, so every backend agrees bitwise there.
* conversion: ``v /= 255`` when x is uint8; then ``out = (v - mean[c]) / std[c]`` when mean/std are given
  (a missing mean is 0, a missing std 1). Every step is one correctly rounded operation (mul, add, div, sub), and
  every backend does the same operations in the same order: only FMA contraction of the mixup line on a GPU can
  differ by one rounding.

Gradient (x floating): with ``g' = grad_out / std[c]`` (in the accumulation dtype),
``grad_x[j] = own_j + sum_{i: partner[i] = j} cross_i`` where ``own_i = a_i g'_i`` (mixup) or ``g'_i`` outside the
box / 0 inside (CutMix), and ``cross_i = b_i g'_i`` (mixup) or ``g'_i`` inside the box / 0 outside (CutMix). The
sum runs over i in increasing order, so it is deterministic; the kernels use the same order (inverse partner lists
from a stable sort) and so agree bitwise on the CPU.
"""
from __future__ import annotations

from typing import Optional

import torch

from augcl._numerics import acc_dtype
from augcl.reference._outputs import as_output

__all__ = [
    "mix_out_dtype",
    "mix_memory_format",
    "cutmix_box_mask",
    "mix_images_reference",
    "mix_images_backward_reference",
]


def mix_out_dtype(x_dtype: torch.dtype, out_dtype: Optional[torch.dtype] = None) -> torch.dtype:
    """The output dtype: ``out_dtype`` if given, else x's dtype for floating x and float32 for uint8."""
    if out_dtype is not None:
        return out_dtype
    return x_dtype if x_dtype.is_floating_point else torch.float32


def mix_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of the output (and of a gradient): channels_last when ``x`` is channels_last-contiguous and not
    NCHW-contiguous (a tensor that is both, e.g. C == 1, counts as NCHW), NCHW-contiguous otherwise."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def cutmix_box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 1, H, W] bool: True inside the half-open box (y0, y1, x0, x1) of each row."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    y0, y1, x0, x1 = (boxes[:, k].reshape(-1, 1, 1) for k in range(4))
    inside = ((ys.view(1, -1, 1) >= y0) & (ys.view(1, -1, 1) < y1)
              & (xs.view(1, 1, -1) >= x0) & (xs.view(1, 1, -1) < x1))
    return inside.unsqueeze(1)


def _channel_vector(t: Optional[torch.Tensor], acc: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(acc).reshape(1, -1, 1, 1)


def mix_images_reference(
    x: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Mix each row of ``x`` with ``x[partner]`` (mixup or CutMix per row), converting and normalising on the way.

    Args:
        x: [B, C, H, W] float16/bfloat16/float32/float64 or uint8, any strides.
        lam: [B] float32, weight of x[i] on mixup rows.
        cutmix: [B] bool, True for CutMix rows.
        boxes: [B, 4] int64 (y0, y1, x0, x1), half-open, inside the image; read on CutMix rows only.
        partner: [B] int64 in [0, B).
        mean, std: None or [C] float tensors (torchvision convention: in [0, 1] units for uint8 x).
        out_dtype: output dtype (default: x.dtype for float x, float32 for uint8).

    Returns:
        [B, C, H, W] in ``out_dtype``, in x's memory format (:func:`mix_memory_format`).
        Differentiable w.r.t. floating x through plain autograd (the backend wraps it with the explicit backward).
    """
    B, C, H, W = x.shape
    odt = mix_out_dtype(x.dtype, out_dtype)
    acc = acc_dtype(x.dtype, odt)
    xf = x.to(acc)
    xp = xf[partner]
    a = lam.to(acc).view(B, 1, 1, 1)
    b = 1 - a
    mixed = a * xf + b * xp
    inside = cutmix_box_mask(boxes, H, W)
    cut = torch.where(inside, xp, xf)
    v = torch.where(cutmix.view(B, 1, 1, 1), cut, mixed)
    if x.dtype == torch.uint8:
        v = v / 255
    m, s = _channel_vector(mean, acc), _channel_vector(std, acc)
    if m is not None:
        v = v - m
    if s is not None:
        v = v / s
    return as_output(v, odt, mix_memory_format(x))


def mix_images_backward_reference(
    grad_out: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    std: Optional[torch.Tensor],
    x_dtype: torch.dtype,
    memory_format: Optional[torch.memory_format] = None,
) -> torch.Tensor:
    """grad_x [B, C, H, W] in ``x_dtype`` (floating) from grad_out, in grad_out's memory format (or
    ``memory_format`` when given: the reference backend's autograd passes the forward output's, decided in the
    forward, because torch 2.6's torch.compile cannot trace ``is_contiguous`` inside an autograd.Function's
    backward).

    Deterministic: the partner contributions are added with ``index_add_`` in increasing row order on the CPU
    (on a GPU, ``index_add_`` uses atomics; the kernels use inverse partner lists instead).
    """
    B, C, H, W = grad_out.shape
    acc = acc_dtype(x_dtype, grad_out.dtype)
    g = grad_out.to(acc)
    s = _channel_vector(std, acc)
    if s is not None:
        g = g / s
    a = lam.to(acc).view(B, 1, 1, 1)
    b = 1 - a
    inside = cutmix_box_mask(boxes, H, W)
    rows = cutmix.view(B, 1, 1, 1)
    zero = torch.zeros((), dtype=acc, device=g.device)
    own = torch.where(rows, torch.where(inside, zero, g), a * g)
    cross = torch.where(rows, torch.where(inside, g, zero), b * g)
    grad_x = own.contiguous().index_add_(0, partner, cross)
    return grad_x.to(x_dtype).contiguous(memory_format=memory_format or mix_memory_format(grad_out))

