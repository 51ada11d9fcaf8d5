"""Functional pieces of hard-sample generation (Wu et al., "Learn by Challenging Yourself: Contrastive Visual
Representation Learning with Hard Sample Generation", arXiv 2202.06464; AAAI 2023 "Synthetic Data Can Also
Teach"): the hinge GAN losses, the differentiable augmentation, and the hardness controller of the pairs.

What follows the paper: a generator trained jointly with the contrastive model, whose samples are made hard for
the model as it is now; pairs of similar-but-distinct generated images whose similarity is lowered over training.
What is augcl's design (the paper's method section is not available, see augcl/train/README.md):

* Hinge GAN losses (Lim & Ye 2017; Miyato et al. 2018)::

      L_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))          L_G = -mean(D(fake))

* :func:`diff_augment`: DiffAugment-style (Zhao et al. 2020) differentiable augmentation of images in [0, 1]:
  per image a brightness shift U(-0.5, 0.5) * brightness, a saturation factor 1 + U(-1, 1) * saturation (colour
  images only), a contrast factor 1 + U(-0.5, 0.5) * contrast around the image's mean, a random horizontal flip
  and an integer translation by up to ``translate * size`` pixels with zero fill (DiffAugment's
  "translation", the crop of a GAN-sized image). Every op is linear in the pixels for fixed random draws, so the
  gradient reaches the generator exactly; nothing is clamped (a clamp would zero the gradient of saturated
  pixels). Translation and flip are one gather with precomputed indices (measured against ``grid_sample``
  and kornia in benchmarks/bench_hard_samples.py).
* :func:`pair_sigma_update`: ``sigma <- clip(sigma * exp(gain * (c - s)), lo, hi)``. ``c`` is the measured
  cosine similarity of the pairs, ``s`` the target. If ``c > s`` the pairs are too similar (too easy), so sigma,
  the latent distance between the two members, grows; if ``c < s`` it shrinks. The similarity falls as sigma
  grows, so this is negative feedback and drives ``c`` toward ``s`` (tests/test_hard_samples.py tracks a moving
  target with a toy encoder).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hinge_d_loss", "hinge_g_loss", "diff_augment", "pair_sigma_update", "pair_target"]


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``; logits of any shape."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss ``-mean(D(fake))``."""
    return -fake_logits.mean()


def diff_augment(x: Tensor, *, translate: float = 0.125, flip: bool = True, brightness: float = 1.0,
                 saturation: float = 1.0, contrast: float = 1.0, generator: Optional[torch.Generator] = None
                 ) -> Tensor:
    """Random colour, flip and translation of images ``x`` [B, C, H, W] in [0, 1], differentiable in ``x``.

    Args:
        translate: largest shift as a fraction of each side (default 0.125: +-2 px at 16 px); 0 turns it off.
        flip: random horizontal flip with probability 0.5 per image (default True).
        brightness, saturation, contrast: strengths (default 1.0: DiffAugment's ranges); 0 turns one off.
            Saturation acts on images with more than one channel only.
        generator: draws every random number (None: torch's global generator); on ``x``'s device.

    Returns [B, C, H, W], ``x``'s dtype. The draws do not depend on ``x``'s values, so for a fixed generator
    state the map is linear in ``x`` (its gradient is the transposed gather / scaling).
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    for name, v in (("translate", translate), ("brightness", brightness), ("saturation", saturation),
                    ("contrast", contrast)):
        if not (isinstance(v, (int, float)) and 0.0 <= v < math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if translate >= 1.0:
        raise ValueError(f"translate is a fraction of the image side, must be < 1, got {translate}")
    b, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev, dtype=x.dtype)

    if brightness:
        x = x + (rand(b, 1, 1, 1) - 0.5) * brightness
    if saturation and c > 1:
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (1.0 + (rand(b, 1, 1, 1) * 2.0 - 1.0) * saturation) + m
    if contrast:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * (1.0 + (rand(b, 1, 1, 1) - 0.5) * contrast) + m
    return _flip_translate(x, translate, flip, generator)


def _flip_translate(x: Tensor, translate: float, flip: bool, generator: Optional[torch.Generator]) -> Tensor:
    """Per-image flip + integer shift with zero fill as ONE gather: output pixel (i, j) reads input pixel
    (i - dy, j' - dx) with j' = W-1-j when flipped; reads that fall outside the image read an appended zero."""
    b, c, h, w = x.shape
    dev = x.device
    sy, sx = int(h * translate + 0.5), int(w * translate + 0.5)
    if not (flip or sy or sx):
        return x
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), generator=generator, device=dev)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=generator, device=dev)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if flip:
        flipped = torch.rand(b, 1, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped, w - 1 - cols, cols)
    src_y = torch.arange(h, device=dev).view(1, h, 1) - dy  # [B, H, 1]
    src_x = cols - dx  # [B, 1, W]
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    # index h*w is the appended zero pixel
    idx = torch.where(inside, src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1), h * w)  # [B, H, W]
    flat = torch.cat([x.reshape(b, c, h * w), x.new_zeros(b, c, 1)], dim=2)
    return flat.gather(2, idx.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)


def diff_augment_grid(x: Tensor, *, translate: float = 0.125, flip: bool = True,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """The flip + translation of :func:`diff_augment` through ``affine_grid`` / ``grid_sample`` (bilinear at
    integer offsets, zero padding): the alternative the benchmark measures against the gather; same draws order
    as ``_flip_translate``, same output up to rounding."""
    b, c, h, w = x.shape
    dev = x.device
    sy, sx = int(h * translate + 0.5), int(w * translate + 0.5)
    dy = torch.randint(-sy, sy + 1, (b,), generator=generator, device=dev).to(x.dtype)
    dx = torch.randint(-sx, sx + 1, (b,), generator=generator, device=dev).to(x.dtype)
    sign = torch.ones(b, device=dev, dtype=x.dtype)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -sign, sign)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sign
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * dx / w  # align_corners=False: one pixel is 2 / W in grid units
    theta[:, 1, 2] = -2.0 * dy / h
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pair_target(progress: float, start: float = 0.9, end: float = 0.5) -> float:
    """The pairs' target similarity at ``progress`` in [0, 1] of training: linear from ``start`` to ``end``."""
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def pair_sigma_update(sigma: Union[float, Tensor], measured: Union[float, Tensor], target: float, *,
                      gain: float = 0.05, lo: float = 0.01, hi: float = 1.5) -> Union[float, Tensor]:
    """``clip(sigma * exp(gain * (measured - target)), lo, hi)``: sigma grows while the pairs are more similar
    than the target (too easy) and shrinks while they are less similar (too hard). Works on floats or tensors."""
    if isinstance(sigma, Tensor) or isinstance(measured, Tensor):
        return (torch.as_tensor(sigma) * torch.exp(gain * (torch.as_tensor(measured) - target))).clamp(lo, hi)
    return min(max(sigma * math.exp(gain * (measured - target)), lo), hi)
