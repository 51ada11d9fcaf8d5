"""Dense reference of the ``supcon`` loss (supervised contrastive, Khosla et al. 2020, "L_out"), in plain PyTorch.

For features ``z`` [N, D] (L2-normalised unless ``normalize=False``) and labels ``y`` [N], with
``s_ij = <z_i, z_j> / temperature`` and ``P(i) = {p != i : y_p = y_i}`` (the anchor's positives)::

    loss_i = logsumexp_{j != i} s_ij  -  (1 / |P(i)|) * sum_{p in P(i)} s_ip

which is Khosla et al.'s eq. 2, ``-1/|P(i)| sum_p log( exp(s_ip) / sum_{a != i} exp(s_ia) )``. Anchors with no
positive (``|P(i)| = 0``) have no term: their loss is reported as 0 and they are left out of the mean, so
``reduction="mean"`` is the sum over anchors with a positive divided by their number. The batched form
``z`` [G, N, D], ``y`` [G, N] is G independent problems (row i of group g is compared with group g only); its
mean runs over the anchors with a positive of every group together.

This builds the [N, N] logits and masks (O(N^2) memory): it is the tests' oracle for small N and the dense
baseline of the benchmarks, not a fallback (augcl.functional.supcon never builds them, on any backend). It
computes in the accumulation dtype (float64 for float64 inputs), so float64 inputs give float64 results.
"""
from __future__ import annotations

from typing import Union

import torch

from augcl._numerics import acc_dtype, l2_normalize

__all__ = ["supcon_reference", "supcon_rows_reference"]


def supcon_rows_reference(features: torch.Tensor, labels: torch.Tensor,
                          temperature: Union[float, torch.Tensor] = 0.1, *, normalize: bool = True):
    """Per-anchor SupCon losses and positive counts: ``(loss [..., N], num_positives [..., N])``.

    ``features`` [N, D] or [G, N, D] (any float dtype), ``labels`` [N] or [G, N] (compared by equality);
    ``temperature`` a float or a 0-dim tensor (differentiable). ``loss`` is in the accumulation dtype, 0 where an
    anchor has no positive; ``num_positives`` is int64. Differentiable by autograd w.r.t. features and a tensor
    temperature."""
    batched = features.dim() == 3
    z = features if batched else features.unsqueeze(0)
    y = labels if batched else labels.unsqueeze(0)
    g, n, d = z.shape
    if normalize:
        # as the fused path: normalised in the input dtype (fp16/bf16 via fp32, rounded once), then accumulated
        z = l2_normalize(z.reshape(g * n, d)).reshape(g, n, d)
    acc = acc_dtype(features.dtype)
    z = z.to(acc)
    scale = 1.0 / (temperature.to(acc) if isinstance(temperature, torch.Tensor) else temperature)
    logits = scale * torch.bmm(z, z.transpose(1, 2))  # [G, N, N]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (y.unsqueeze(2) == y.unsqueeze(1)) & ~eye  # [G, N, N]
    num_pos = positive.sum(2)
    has_pos = num_pos > 0
    # An anchor without positive gets a harmless row (all of its logits) instead of its masked one: a group of one
    # row would otherwise take the logsumexp of nothing (-inf), whose backward is NaN even where its weight is 0.
    keep = ~eye | ~has_pos.unsqueeze(2)
    lse = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), dim=2)
    pos_mean = (logits * positive).sum(2) / num_pos.clamp(min=1)
    loss = torch.where(has_pos, lse - pos_mean, torch.zeros((), dtype=acc, device=z.device))
    if not batched:
        loss, num_pos = loss[0], num_pos[0]
    return loss, num_pos


def supcon_reference(features: torch.Tensor, labels: torch.Tensor, temperature: Union[float, torch.Tensor] = 0.1,
                     *, normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    """SupCon L_out (see the module docstring). ``reduction``: ``"mean"`` over the anchors with a positive (NaN if
    there is none: the reference does not validate), ``"sum"``, or ``"none"`` (the per-anchor losses, 0 for
    anchors without positive)."""
    loss, num_pos = supcon_rows_reference(features, labels, temperature, normalize=normalize)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (num_pos > 0).sum()
