"""Patch mixing of MixedAE (Chen et al., "Mixed Autoencoder for Self-supervised Visual Representation Learning",
CVPR 2023, https://arxiv.org/abs/2303.17152) and the masked-autoencoder pieces it shares with MAE (He et al. 2022).

Layout (augcl's design; the paper's exact recipe is not public, see the README's known / design split). The B
images of a batch form ``G = B / g`` groups of ``g`` consecutive images. Each group gets one random partition of
the N patch positions into g disjoint sets of N / g positions (one random permutation of the positions, split
into g consecutive parts), written as ``source`` [G, N]: the image (0 .. g-1 within its group) whose patch fills
position p of the group's mixed sequence. Then:

* :func:`mix_patches`: tokens [B, N, D] -> mixed [G, N, D], ``mixed[i, p] = tokens[i * g + source[i, p], p]``:
  one sequence of N tokens per group, so the encoder sees as many tokens per image (N / g) as MAE's visible 25%
  at g = 4; only the attention rows get longer (N instead of N / 4).
* :func:`unmix_patches`: mixed [G, N, D] -> [B, N, D], image j of group i gets ``mixed[i, p]`` where
  ``source[i, p] == j`` and ``mask_token`` elsewhere: what the per-image decoder reads.
* :func:`homology_precision`: for each query patch, the share of its top-k keys that come from its own source
  image (chance: 1 / g): the read-out of homologous attention.
* :func:`patchify` and :func:`mae_loss`: MAE's patches and its normalised-pixel MSE over the masked positions.

Memory traffic: both gathers read each token once and write it once (``index_select`` over the flattened
[rows, D] tokens with int64 row indices; their backward is an ``index_add``), O(B * N * D); no [B, N, N] or
one-hot tensor is formed. The index arithmetic is O(B * N) int64. ``unmix_patches`` gathers from the mixed rows
plus one extra row holding the mask token, so one ``index_select`` makes the whole decoder input.

Exactness: the gathers copy values, so ``unmix_patches(mix_patches(t, s, g), s, m, g)`` equals ``t`` bitwise at
each image's own positions and ``m`` at the others (every dtype).
"""
from __future__ import annotations

from typing import Optional

import torch

from augcl._numerics import FLOAT_DTYPES

__all__ = ["mix_partition", "mix_patches", "unmix_patches", "homology_precision", "patchify", "mae_loss"]


def _check_group(group) -> int:
    if isinstance(group, bool) or not isinstance(group, int):
        raise TypeError(f"group must be an int, got {type(group).__name__}")
    if group < 2:
        raise ValueError(f"group must be >= 2 (images mixed into one sequence), got {group}")
    return group


def _check_float(name: str, t, dim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor {what}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def _check_source(source, groups: Optional[int], n: int, device: torch.device, ref: str) -> None:
    if not isinstance(source, torch.Tensor):
        raise TypeError(f"source must be a torch.Tensor, got {type(source).__name__}")
    if source.dtype != torch.int64:
        raise TypeError(f"source must be an int64 tensor (from mix_partition), got {source.dtype}")
    if source.dim() != 2 or source.shape[1] != n or (groups is not None and source.shape[0] != groups):
        want = f"[{groups if groups is not None else 'G'}, {n}]"
        raise ValueError(f"source must have shape {want} to match {ref}, got {list(source.shape)}")
    if source.device != device:
        raise ValueError(f"source is on {source.device} but {ref} is on {device}")


def mix_partition(batch: int, num_patches: int, group: int = 4, *, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """A random partition of the patch positions of every group: ``source`` int64 [batch / group, num_patches].

    For each group, one random permutation of the ``num_patches`` positions split into ``group`` consecutive
    parts: the positions of part j take image j's patches, so every image owns exactly ``num_patches / group``
    positions. ``generator`` (on ``device``; default torch's global one) makes the draw reproducible.

    Raises TypeError for non-int sizes and ValueError when ``group < 2``, ``batch`` is not a positive multiple
    of ``group`` or ``num_patches`` is not a positive multiple of ``group``.
    """
    group = _check_group(group)
    for name, v in (("batch", batch), ("num_patches", num_patches)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < group or v % group:
            raise ValueError(f"{name} {v} must be a positive multiple of group {group} (g images per mixed "
                             f"sequence, N / g positions per image)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                              else torch.device("cpu"))
    groups = batch // group
    # argsort of uniform noise = one uniform random permutation per row (MAE's masking draws the same way)
    noise = torch.rand(groups, num_patches, generator=generator, device=device)
    perm = noise.argsort(dim=1)
    part = torch.arange(num_patches, device=device).div(num_patches // group, rounding_mode="floor")
    return torch.empty_like(perm).scatter_(1, perm, part.expand(groups, -1))


def mix_patches(tokens: torch.Tensor, source: torch.Tensor, group: int = 4) -> torch.Tensor:
    """One mixed sequence per group: tokens [B, N, D] -> [G, N, D], G = B / ``group``.

    ``mixed[i, p] = tokens[i * g + source[i, p], p]`` with g = ``group`` (consecutive images form a group).
    ``source``: int64 [G, N] from :func:`mix_partition` (values in [0, g); not re-checked, which would cost a host
    sync). Differentiable in ``tokens`` (the gradient is scattered back to the positions read).
    """
    g = _check_group(group)
    _check_float("tokens", tokens, 3, "[B, N, D]")
    b, n, d = tokens.shape
    if b % g:
        raise ValueError(f"tokens' batch {b} must be a multiple of group {g}")
    groups = b // g
    _check_source(source, groups, n, tokens.device, f"tokens {list(tokens.shape)} in groups of {g}")
    rows = torch.arange(groups, device=tokens.device).unsqueeze(1) * g + source  # [G, N] image of each slot
    idx = rows * n + torch.arange(n, device=tokens.device)  # its row in tokens viewed as [B * N, D]
    return tokens.reshape(b * n, d).index_select(0, idx.reshape(-1)).reshape(groups, n, d)


def unmix_patches(mixed: torch.Tensor, source: torch.Tensor, mask_token: torch.Tensor, group: int) -> torch.Tensor:
    """Back to one sequence per image: mixed [G, N, D] -> [G * group, N, D].

    Image j of group i gets ``mixed[i, p]`` at the positions p with ``source[i, p] == j`` and ``mask_token``
    ([D], or anything with D elements; cast to mixed's dtype) at the others. Differentiable in ``mixed`` and
    ``mask_token``.
    """
    group = _check_group(group)
    _check_float("mixed", mixed, 3, "[G, N, D]")
    groups, n, d = mixed.shape
    _check_source(source, groups, n, mixed.device, "mixed [G, N, D]")
    if not isinstance(mask_token, torch.Tensor) or mask_token.numel() != d:
        raise ValueError(f"mask_token must be a tensor of {d} elements (the token width), got "
                         f"{tuple(mask_token.shape) if isinstance(mask_token, torch.Tensor) else type(mask_token)}")
    if mask_token.device != mixed.device:
        raise ValueError(f"mask_token is on {mask_token.device} but mixed is on {mixed.device}")
    # row groups * n of the table is the mask token: one index_select builds every image's sequence
    table = torch.cat([mixed.reshape(groups * n, d), mask_token.reshape(1, d).to(mixed.dtype)])
    own = source.unsqueeze(1) == torch.arange(group, device=mixed.device).view(1, group, 1)  # [G, g, N]
    flat = torch.arange(groups * n, device=mixed.device).view(groups, 1, n)
    idx = torch.where(own, flat, groups * n)
    return table.index_select(0, idx.reshape(-1)).reshape(groups * group, n, d)


@torch.no_grad()
def homology_precision(scores: torch.Tensor, source: torch.Tensor, top_k: int, *,
                       first_is_cls: bool = False) -> torch.Tensor:
    """Share of each query patch's kept keys that come from its own source image; chance is 1 / g.

    Args:
        scores: attention logits [G, L, L] or [G, H, L, L] of the mixed sequences (L = N, or N + 1 with a class
            token first).
        source: int64 [G, N], the source image of every position (from :func:`mix_partition`).
        top_k: keys kept per query, chosen as ``augcl.functional.topk_attention`` does: the top_k largest
            logits over all L keys, ties toward the lower key index.
        first_is_cls: position 0 is a class token: it is not a query here, and a kept class-token key is
            neither a hit nor counted (so the share is over the kept patch keys).

    Returns a 0-dim float32 tensor: the mean over (group, head, query patch) of
    ``|kept patch keys with the query's source| / |kept patch keys|`` (queries whose kept keys are all the class
    token are left out). The query's own key counts as a hit when kept (it is one of the N / g keys of its
    source, so uniform choices score 1 / g on average).
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (3, 4) or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"scores must be [G, L, L] or [G, H, L, L], got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    off = 1 if first_is_cls else 0
    n = scores.shape[-1] - off
    _check_source(source, scores.shape[0], n, scores.device, f"scores {tuple(scores.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n + off:
        raise ValueError(f"top_k must be an int in [1, {n + off}] (the keys per query), got {top_k}")
    s = scores if scores.dim() == 4 else scores.unsqueeze(1)
    g_, h, length = s.shape[0], s.shape[1], s.shape[-1]
    # a stable descending sort keeps the lower key index first among equal logits: the op's tie rule
    kept = torch.sort(s[:, :, off:, :].float(), dim=-1, descending=True, stable=True).indices[..., :top_k]
    key_src = torch.cat([source.new_full((g_, off), -1), source], dim=1)  # [G, L]; -1: the class token
    key_src = key_src.view(g_, 1, 1, length).expand(g_, h, n, length).gather(-1, kept)  # [G, H, N, k]
    is_patch = key_src >= 0
    hits = (key_src == source.view(g_, 1, n, 1)).sum(-1).float()
    count = is_patch.sum(-1).float()
    valid = count > 0
    return (hits[valid] / count[valid]).mean()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images [B, C, H, W] -> patches [B, N, patch_size**2 * C], N = (H / p) (W / p) in row-major order, each
    patch flattened as (row, column, channel) (MAE's order)."""
    _check_float("images", images, 4, "[B, C, H, W]")
    b, c, h, w = images.shape
    p = patch_size
    if isinstance(p, bool) or not isinstance(p, int) or p < 1 or h % p or w % p:
        raise ValueError(f"patch_size {p!r} must be an int >= 1 dividing the image size {h} x {w}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss: the per-patch MSE averaged over the masked patches.

    Args:
        pred: [B, N, P] predicted patches.
        target: [B, N, P] patches of the input image (:func:`patchify`).
        mask: [B, N], 1 (True) where the patch was hidden from the encoder: only those count.
        norm_pix: normalise each target patch by its own mean and variance first (MAE's ``norm_pix_loss``, the
            setting of its best results; default True).
        eps: added to the patch variance (MAE's 1e-6).

    Returns a 0-dim tensor (float32 for half inputs): ``sum_bn mask * mean_P (pred - t)^2 / sum_bn mask``.
    """
    _check_float("pred", pred, 3, "[B, N, P]")
    if not isinstance(target, torch.Tensor) or target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {tuple(pred.shape)}, got "
                         f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    if not isinstance(mask, torch.Tensor) or mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(pred.shape[:2])}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    t = target.to(acc)
    if norm_pix:
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True)  # unbiased, as MAE's
        t = (t - mean) / (var + eps).sqrt()
    per_patch = (pred.to(acc) - t).pow(2).mean(dim=-1)
    m = mask.to(acc)
    return (per_patch * m).sum() / m.sum()
