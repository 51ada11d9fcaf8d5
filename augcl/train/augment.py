"""Batched SimCLR / MoCo augmentations written with torch ops, so they run on the tensors' device.

Every transform draws its per-sample parameters from one ``torch.Generator`` (on the images' device), so a
run is reproducible under ``--seed`` and nothing is CPU-bound when training on a GPU. The pipeline follows
torchvision's SimCLR / MoCo v2 recipe, scaled to small images:

    random resized crop (+ horizontal flip, optional small rotation) -> one ``F.grid_sample`` per view
    colour jitter (brightness, contrast, saturation, hue; p=0.8)      -> per-sample affine colour maps
    random grayscale (p=0.2)
    Gaussian blur (per-sample sigma, separable grouped conv) and Gaussian noise
    solarisation (BYOL)
    normalisation with the dataset's mean / std

Differences from torchvision: the four jitter ops are applied in a fixed order (torchvision shuffles them),
hue is shifted by a rotation of the chroma plane in YIQ space (not a round trip through HSV), and
single-channel images only get brightness / contrast (saturation, hue and grayscale are no-ops on them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["AugConfig", "View", "AUG_STRENGTHS", "preset", "weaken", "view_plan", "augment", "resize_normalize"]


@dataclass(frozen=True)
class AugConfig:
    """Parameters of the augmentation pipeline (defaults: SimCLR's, torchvision semantics).

    crop_scale: area fraction range of the random crop; crop_ratio: its aspect-ratio range.
    rotate: max absolute rotation in degrees (0 = none; used for digits, where flips are off).
    flip_p: probability of a horizontal flip.
    jitter_p: probability of colour jitter; brightness / contrast / saturation factors are drawn from
        U(1 - s, 1 + s) and the hue shift from U(-hue, hue) (fraction of a full turn).
    gray_p: probability of converting to grayscale (3-channel images only).
    blur_p: probability of a Gaussian blur with sigma ~ U(blur_sigma) pixels, kernel ~ 2 * ceil(2 sigma_max) + 1.
    noise_p / noise_std: probability of additive Gaussian noise, and its std on the [0, 1] scale.
    solarize_p: probability of solarisation (pixels >= 0.5 inverted; BYOL's second view).
    """

    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    rotate: float = 0.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.0
    noise_std: float = 0.0
    solarize_p: float = 0.0


AUG_STRENGTHS = ("standard", "weak")
MASKED_IMAGE_METHODS = ("mae", "mixedae", "mixedae-naive")  # one view each (see view_plan)


def preset(method: str, *, image_size: int, channels: int, flip: bool = True) -> AugConfig:
    """The augmentation of ``method`` scaled to ``image_size`` px images (the first view's, for BYOL).

    SimCLR: crop scale (0.08, 1), jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale 0.2, blur 0.5 (>= 64 px only,
    as SimCLR's CIFAR setting drops it). MoCo v1: crop scale (0.2, 1), jitter 0.4 on all four with p=1,
    grayscale 0.2, no blur. MoCo v2 and SimSiam (which uses MoCo v2's): MoCo v1's crop with SimCLR's jitter,
    plus blur p=0.5 (>= 64 px). BYOL: crop (0.08, 1), jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, blur p=1
    (view 1; see :func:`view_plan` for view 2). SwAV: SimCLR's, with the large crops' scale (0.14, 1).
    Blur sigma scales with the image: (0.1, 2.0) px at 224 px. ``flip=False`` (digits) turns flips off and
    uses a gentler crop with a small rotation, brightness / contrast jitter, and a little blur and noise,
    since 8x8 digits do not survive SimCLR's 8% crops.
    """
    big = image_size >= 64
    sigma = (0.1 * image_size / 224, 2.0 * image_size / 224)
    if method == "simclr":
        cfg = AugConfig(blur_p=0.5 if big else 0.0, blur_sigma=sigma)
    elif method == "moco":
        cfg = AugConfig(crop_scale=(0.2, 1.0), jitter_p=1.0, hue=0.4)
    elif method in ("mocov2", "simsiam"):
        cfg = AugConfig(crop_scale=(0.2, 1.0), blur_p=0.5 if big else 0.0, blur_sigma=sigma)
    elif method == "byol":
        cfg = AugConfig(saturation=0.2, blur_p=1.0 if big else 0.0, blur_sigma=sigma)
    elif method == "swav":
        cfg = AugConfig(crop_scale=(0.14, 1.0), blur_p=0.5 if big else 0.0, blur_sigma=sigma)
    else:
        raise ValueError(f"unknown method {method!r}")
    if not flip:
        cfg = replace(cfg, flip_p=0.0, crop_scale=(0.3, 1.0), rotate=15.0, blur_p=0.3,
                      blur_sigma=(0.1, 0.06 * image_size), noise_p=0.5, noise_std=0.05)
    if channels == 1:
        cfg = replace(cfg, saturation=0.0, hue=0.0, gray_p=0.0)
    return cfg


def weaken(cfg: AugConfig, method: str) -> AugConfig:
    """AdaInf's weak augmentation (stronger data inflation goes with weaker augmentation).

    The crop keeps at least 20% of the image (scale (0.08, 1) -> (0.2, 1)) and colour jitter is applied with
    probability 0.4 instead of 0.8; except for BYOL (which keeps its jitter strengths) the strengths become
    0.4/0.4/0.4/0.1 (AdaInf's weak setting for SimCLR / MoCo v2; ours are already that by default, so for
    them the crop and the probability are what changes). Saturation / hue stay 0 on 1-channel images.
    """
    lo = max(cfg.crop_scale[0], 0.2)
    cfg = replace(cfg, crop_scale=(lo, max(lo, cfg.crop_scale[1])), jitter_p=min(cfg.jitter_p, 0.4))
    if method != "byol":
        cfg = replace(cfg, brightness=0.4, contrast=0.4, saturation=0.4 if cfg.saturation > 0 else 0.0,
                      hue=0.1 if cfg.hue > 0 else 0.0)
    return cfg


class View(NamedTuple):
    """One augmented view of a batch: output side in px and the pipeline that makes it."""

    size: int
    cfg: AugConfig


def view_plan(method: str, *, image_size: int, channels: int, flip: bool = True, aug: str = "standard",
              small_crops: int = 0) -> List[View]:
    """The views a method trains on, in the order its ``forward(*views)`` takes them.

    Two views at ``image_size`` for every contrastive method (BYOL's are asymmetric: view 2 has blur p=0.1 and
    solarisation p=0.2); ONE view for the masked-image methods (mae, mixedae, mixedae-naive: MAE's random
    resized crop, scale (0.2, 1), with a flip and nothing else; digits (``flip=False``): scale (0.5, 1), no flip). SwAV adds ``small_crops`` small crops (multi-crop) of side ``round(image_size *
    96 / 224)`` (at least 8 px) with crop scale (0.05, 0.14), SwAV's ImageNet ratio. ``aug="weak"`` applies
    :func:`weaken` to every view (AdaInf).
    """
    if aug not in AUG_STRENGTHS:
        raise ValueError(f"unknown augmentation strength {aug!r}; expected one of {AUG_STRENGTHS}")
    if method in MASKED_IMAGE_METHODS:  # the masking is the task: a mild crop, no colour or blur
        cfg = AugConfig(crop_scale=(0.2, 1.0) if flip else (0.5, 1.0), flip_p=0.5 if flip else 0.0, jitter_p=0.0,
                        saturation=0.0, hue=0.0, gray_p=0.0)
        return [View(image_size, weaken(cfg, method) if aug == "weak" else cfg)]
    first = preset(method, image_size=image_size, channels=channels, flip=flip)
    second = first
    if method == "byol":
        second = replace(first, blur_p=0.1 if first.blur_p == 1.0 else first.blur_p, solarize_p=0.2)
    views = [View(image_size, first), View(image_size, second)]
    if method == "swav" and small_crops > 0:
        small = max(8, round(image_size * 96 / 224))
        lo, hi = (0.05, 0.14) if flip else (0.2, 0.5)  # digits: small crops that still show a stroke
        scfg = replace(first, crop_scale=(lo, hi))
        views += [View(small, scfg)] * small_crops
    if aug == "weak":
        views = [View(v.size, weaken(v.cfg, method)) for v in views]
    return views


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """[n] bool; always drawn (even for p in {0, 1}) so the random stream does not depend on p."""
    return torch.rand(n, generator=g, device=device) < p


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def random_resized_crop(x: torch.Tensor, size: int, cfg: AugConfig, g: torch.Generator) -> torch.Tensor:
    """Per-sample random resized crop (+ flip, rotation) of x [B, C, H, W] -> [B, C, size, size].

    One affine matrix per sample, then one bilinear ``grid_sample`` (reflection padding, for rotations): the
    crop's width / height fractions come from the area scale s and aspect ratio r as ``sqrt(s r)`` and
    ``sqrt(s / r)`` (clamped to 1), its centre uniformly where it fits.
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, *cfg.crop_scale, g, dev)
    log_r = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g, dev)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (_uniform(b, -1.0, 1.0, g, dev)) * (1.0 - w)  # normalised coords in [-1, 1]
    cy = (_uniform(b, -1.0, 1.0, g, dev)) * (1.0 - h)
    flip = _bernoulli(b, cfg.flip_p, g, dev)
    angle = _uniform(b, -cfg.rotate, cfg.rotate, g, dev) * (math.pi / 180.0)
    sx = torch.where(flip, -w, w)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([sx * cos, -h * sin, cx], dim=1),
        torch.stack([sx * sin, h * cos, cy], dim=1),
    ], dim=1)  # [B, 2, 3]: output grid -> input coords
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W] luma (the image itself when C == 1)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by ``2 pi shift`` [B] turns; x [B, 3, H, W]."""
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           device=x.device, dtype=x.dtype)
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    a = shift * (2 * math.pi)
    cos, sin = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rot = torch.stack([torch.stack([one, zero, zero], 1),
                       torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # [B, 3, 3]
    m = yiq2rgb @ rot @ rgb2yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x)


def color_jitter(x: torch.Tensor, cfg: AugConfig, g: torch.Generator) -> torch.Tensor:
    """Colour jitter with probability ``cfg.jitter_p`` per sample; x [B, C, H, W] in [0, 1]."""
    b, dev = x.shape[0], x.device
    apply = _bernoulli(b, cfg.jitter_p, g, dev).view(b, 1, 1, 1)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, g, dev).view(b, 1, 1, 1)
    contr = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, dev).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, g, dev).view(b, 1, 1, 1)
    hue = _uniform(b, -cfg.hue, cfg.hue, g, dev)
    y = (x * bright).clamp(0, 1)
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * contr + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _gray(y)
        y = ((y - gray) * sat + gray).clamp(0, 1)
        if cfg.hue > 0:
            y = _hue_shift(y, hue).clamp(0, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Grayscale (replicated over the channels) with probability p per sample."""
    apply = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    if x.shape[1] == 1:
        return x
    return torch.where(apply, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, sigma_range: Sequence[float], g: torch.Generator) -> torch.Tensor:
    """Per-sample Gaussian blur (sigma ~ U(sigma_range) px) with probability p: a separable grouped conv."""
    b, c, h, w = x.shape
    apply = _bernoulli(b, p, g, x.device)
    sigma = _uniform(b, *sigma_range, g, x.device).clamp(min=1e-3)
    if p <= 0:
        return x
    radius = max(1, min(math.ceil(2 * sigma_range[1]), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return torch.where(apply.view(b, 1, 1, 1), y.view(b, c, h, w), x)


def gaussian_noise(x: torch.Tensor, p: float, std: float, g: torch.Generator) -> torch.Tensor:
    apply = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    if p <= 0 or std <= 0:
        return x
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * std
    return torch.where(apply, (x + noise).clamp(0, 1), x)


def solarize(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Invert pixels >= 0.5 (x in [0, 1]) with probability p per sample."""
    apply = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    if p <= 0:
        return x
    return torch.where(apply & (x >= 0.5), 1.0 - x, x)


def augment(x: torch.Tensor, cfg: AugConfig, size: int, mean: torch.Tensor, std: torch.Tensor,
            g: torch.Generator) -> torch.Tensor:
    """One random view of a batch.

    Args:
        x: [B, C, H, W] uint8 (0..255) or float (0..1) images, on the device that does the work.
        cfg: the pipeline's parameters (see :func:`preset`).
        size: output side in pixels (the crop is resampled to ``size x size``: up- or down-sampling).
        mean, std: [C] normalisation constants on x's device.
        g: generator on x's device (all randomness comes from it).

    Returns [B, C, size, size] float32, normalised.
    """
    x = random_resized_crop(_to_float(x), size, cfg, g)
    x = color_jitter(x, cfg, g)
    x = random_grayscale(x, cfg.gray_p, g)
    x = gaussian_blur(x, cfg.blur_p, cfg.blur_sigma, g)
    x = gaussian_noise(x, cfg.noise_p, cfg.noise_std, g)
    x = solarize(x, cfg.solarize_p, g)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def resize_normalize(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The un-augmented evaluation view: x [B, C, H, W] -> bilinear resize to [B, C, size, size], normalised."""
    x = _to_float(x)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < max(x.shape[-2:]))
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
