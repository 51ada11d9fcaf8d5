"""Reference for the ``contrastive`` op family, in plain PyTorch.

The whole InfoNCE / NT-Xent family is one computation. Anchors ``A`` [M, D] are compared with candidates
``C`` [Nc, D] through ``S = scale * A @ C.T`` (``scale = 1 / temperature``). Each row ``i`` has

* a set of sparse soft positives: ``pos_idx[i]`` [P] column indices (``-1`` = padding) with weights
  ``pos_weight[i]`` [P];
* a set of *included* columns, the ones its logsumexp runs over::

      incl(i) = {j : j in pos_idx[i]}  U  {j : j >= neg_start and j not in excl_idx[i]}

  ``neg_start`` masks a prefix of candidates that are never negatives (MoCo: the other keys of the batch);
  ``excl_idx[i]`` [E] lists extra excluded cells (SimCLR: the anchor itself; ``-1`` = padding). A positive is
  always included, even when it is also listed as excluded or lies below ``neg_start``.

and the per-row loss is the soft-target cross-entropy::

    loss_i = (sum_p w_ip) * lse_i - sum_p w_ip * S[i, pos_idx[i, p]],     lse_i = logsumexp_{j in incl(i)} S_ij

which is ``lse_i - sum_p w_ip S_ip`` for weights that sum to one.

The compiled backends implement only the O(M * Nc) part, ``contrastive_lse`` and its backward; the O(M * P)
positive term is shared torch code (augcl.ops.contrastive). This module computes everything in the
accumulation dtype (fp32, or fp64 for fp64 inputs) one block of rows at a time, so even the reference never
holds more than ``_CHUNK_ELEMS`` logits at once.
"""
from __future__ import annotations

import torch

from augcl._numerics import acc_dtype

# Rows per reference chunk are chosen so one chunk of logits has at most this many elements (64 MiB in fp32).
_CHUNK_ELEMS = 1 << 24


def contrastive_included_mask(
    rows: int, num_candidates: int, pos_idx: torch.Tensor, excl_idx: torch.Tensor, neg_start: int,
) -> torch.Tensor:
    """Boolean [rows, Nc] mask of ``incl(i)`` for a block of rows (``pos_idx``/``excl_idx`` of those rows)."""
    device = pos_idx.device
    cols = torch.arange(num_candidates, device=device)
    incl = (cols >= neg_start).unsqueeze(0).expand(rows, num_candidates).clone()
    # -1 padding is sent to a dummy column Nc, dropped afterwards, so scatter needs no masking.
    if excl_idx.shape[1] > 0:
        idx = torch.where(excl_idx >= 0, excl_idx, num_candidates)
        excluded = torch.zeros(rows, num_candidates + 1, dtype=torch.bool, device=device)
        excluded.scatter_(1, idx, True)
        incl &= ~excluded[:, :num_candidates]
    if pos_idx.shape[1] > 0:
        idx = torch.where(pos_idx >= 0, pos_idx, num_candidates)
        positive = torch.zeros(rows, num_candidates + 1, dtype=torch.bool, device=device)
        positive.scatter_(1, idx, True)
        incl |= positive[:, :num_candidates]
    return incl


def _row_chunks(m: int, nc: int):
    step = max(1, _CHUNK_ELEMS // max(nc, 1))
    for start in range(0, m, step):
        yield start, min(m, start + step)


def contrastive_lse_reference(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
) -> torch.Tensor:
    """``lse[i] = logsumexp_{j in incl(i)} scale * <anchors[i], candidates[j]>``.

    Shapes: anchors [M, D], candidates [Nc, D], scale 0-dim, pos_idx [M, P], excl_idx [M, E] (int64, -1 pads).
    Returns [M] in the accumulation dtype (fp32; fp64 for fp64 inputs). Differentiable by torch autograd.
    """
    acc = acc_dtype(anchors.dtype)
    a, c, s = anchors.to(acc), candidates.to(acc), scale.to(acc)
    m, nc = a.shape[0], c.shape[0]
    out = []
    for lo, hi in _row_chunks(m, nc):
        logits = s * (a[lo:hi] @ c.T)
        incl = contrastive_included_mask(hi - lo, nc, pos_idx[lo:hi], excl_idx[lo:hi], neg_start)
        out.append(torch.logsumexp(logits.masked_fill(~incl, float("-inf")), dim=1))
    if not out:
        return a.new_empty((0,))
    return torch.cat(out)


def contrastive_lse_backward_reference(
    grad_lse: torch.Tensor,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    lse: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
):
    """Explicit backward of :func:`contrastive_lse_reference` (the formula every kernel implements).

    With ``p_ij = exp(scale * <a_i, c_j> - lse_i)`` on ``incl(i)`` (0 elsewhere) and ``G_ij = grad_lse_i * p_ij``::

        grad_anchors[i]    = scale * sum_j G_ij c_j
        grad_candidates[j] = scale * sum_i G_ij a_i
        grad_scale         = sum_ij G_ij <a_i, c_j>

    Returns ``(grad_anchors, grad_candidates, grad_scale)`` in the dtypes of anchors, candidates and scale.
    """
    acc = acc_dtype(anchors.dtype)
    a, c, s = anchors.to(acc), candidates.to(acc), scale.to(acc)
    g, l = grad_lse.to(acc), lse.to(acc)
    m, nc = a.shape[0], c.shape[0]
    da = torch.zeros_like(a)
    dc = torch.zeros_like(c)
    ds = torch.zeros((), dtype=acc, device=a.device)
    for lo, hi in _row_chunks(m, nc):
        dots = a[lo:hi] @ c.T
        incl = contrastive_included_mask(hi - lo, nc, pos_idx[lo:hi], excl_idx[lo:hi], neg_start)
        p = torch.exp(s * dots - l[lo:hi, None]).masked_fill(~incl, 0.0)
        gp = g[lo:hi, None] * p
        da[lo:hi] = s * (gp @ c)
        dc += s * (gp.T @ a[lo:hi])
        ds += (gp * dots).sum()
    return da.to(anchors.dtype), dc.to(candidates.dtype), ds.to(scale.dtype)


def contrastive_loss_reference(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    pos_weight: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
):
    """Per-row soft-target InfoNCE loss and its logsumexp, both [M] in the accumulation dtype.

    ``loss_i = (sum_p w_ip) * lse_i - sum_p w_ip * scale * <a_i, c_{pos_idx[i,p]}>``; padding (-1) positives
    contribute nothing. Differentiable by torch autograd with respect to anchors, candidates and scale.
    """
    acc = acc_dtype(anchors.dtype)
    lse = contrastive_lse_reference(anchors, candidates, scale, pos_idx, excl_idx, neg_start)
    valid = pos_idx >= 0
    w = torch.where(valid, pos_weight.to(acc), 0.0)
    pos = candidates.to(acc)[pos_idx.clamp(min=0)]  # [M, P, D]
    pos_logit = scale.to(acc) * torch.einsum("md,mpd->mp", anchors.to(acc), pos)
    loss = w.sum(1) * lse - (w * pos_logit).sum(1)
    return loss, lse
