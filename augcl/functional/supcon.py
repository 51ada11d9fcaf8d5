"""Supervised contrastive loss, SupCon (Khosla et al. 2020, https://arxiv.org/abs/2004.11362), on the fused op.

For L2-normalised features ``z`` [N, D], labels ``y`` [N], ``s_ij = <z_i, z_j> / temperature`` and an anchor's
positives ``P(i) = {p != i : y_p = y_i}``::

    loss_i = logsumexp_{j != i} s_ij  -  (1 / |P(i)|) * sum_{p in P(i)} s_ip

What follows the paper: the loss is its "L_out" (eq. 2, the 1/|P(i)| average outside the log, the form the paper
recommends), every other row is a candidate of the denominator and the anchor itself is not, positives are the
rows of the same label, embeddings on the unit sphere. What is ours:

* Anchors with no positive have no term. The paper does not define them (its formula divides by |P(i)| = 0);
  here they contribute 0 and are left out of the mean: ``reduction="mean"`` divides by the number of anchors that
  have a positive (pytorch-metric-learning's ``SupConLoss`` does the same through its non-zero reducer). A batch
  with no positive pair at all then has no mean: ValueError.
* No ``temperature / base_temperature`` factor (the authors' code multiplies the loss by it; pml does not).
* The batched form [G, N, D] / [G, N] (G independent problems, e.g. MixedAE's per-sequence loss) and
  ``gather_distributed`` (candidates from every rank).
* How it is computed: the first term is the fused masked row logsumexp of augcl.ops.contrastive with each row's own
  column excluded (no [N, N] matrix: O(N * D) memory on every backend). The positive term needs no mask at all:
  ``sum_{p in P(i)} <z_i, z_p> = <z_i, S_{y_i} - z_i>`` with ``S_c`` the sum of the rows of label c, and
  ``|P(i)| = count(y_i) - 1``. The class sums come from one ``index_add`` over class ids found by sorting the
  labels (static shapes: no ``torch.unique``, no host sync, so it compiles with ``fullgraph=True``), so memory is
  O(N * D) whatever the number of positives per row (32768 rows over 10 classes: ~3277 positives a row).

Numerics: the class sums and the dots are accumulated in the accumulation dtype (fp32 for fp16 / bf16 / fp32,
fp64 for fp64), the logsumexp in fp32 (fp64). ``<z_i, S - z_i>`` is formed as ``z_i . (S - z_i)`` (own row
removed before the dot), so its rounding is that of a sum of ``count(y_i)`` unit vectors, relative to
``sum_p |z_p|``, then divided by |P(i)|: the mean positive logit is off by about one rounding unit of the logit
scale (1 / temperature) times the sum's growth factor, as in the dense ``(mask * logits).sum(1) / |P(i)|``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from augcl import _validate as V
from augcl._numerics import FLOAT_DTYPES, acc_dtype, l2_normalize
from augcl.distributed import gather_with_grad, world_info
from augcl.ops.contrastive import contrastive_lse

Temperature = Union[float, torch.Tensor]

__all__ = ["supcon"]


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: Temperature = 0.1,
    *,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """SupCon L_out (Khosla et al. 2020); see the module docstring for the formula and what is ours.

    Args:
        features: [N, D], or [G, N, D] for G independent problems of N rows each; float16 / bfloat16 / float32 /
            float64 (accumulated in float32, float64 for float64).
        labels: [N] (or [G, N]) integer class labels on the features' device; rows with equal labels (in the same
            group) are each other's positives.
        temperature: float > 0 or a one-element tensor (learnable: gets a gradient). Default 0.1.
        normalize: L2-normalise the rows first (default True).
        reduction: ``"mean"`` (default: over the anchors that have a positive, all groups together), ``"sum"``,
            or ``"none"`` (the per-anchor losses, shaped like ``labels``; 0 for anchors without positive).
        gather_distributed: candidates (and their labels) from every rank, with gradients (augcl.distributed);
            anchors stay local and the reduction runs over this rank's anchors. [N, D] features only: the
            groups of the batched form are problems local to one rank.
        backend: the fused logsumexp's backend (``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"``, None =
            automatic; see augcl.dispatch).

    The batched form runs the fused logsumexp once per group (G op calls; the class sums of all groups are one
    ``index_add``). Returns a 0-dim tensor (or ``labels``' shape for ``"none"``) in float32 (float64 for float64
    features).

    Raises TypeError / ValueError naming the argument: features not [N, D] / [G, N, D] floating or empty; labels
    not an integer tensor of the matching shape on the same device; a temperature <= 0; gather_distributed with
    batched features. Non-finite features, a temperature tensor <= 0 and, with ``reduction="mean"``, a batch with
    no positive pair raise ValueError from the one deferred value check (skipped under ``augcl.set_checks(False)``
    and torch.compile, see augcl._validate; a mean over no anchor is then NaN).
    """
    batched = _check_features("features", features)
    V.check_reduction(reduction)
    for name, flag in (("normalize", normalize), ("gather_distributed", gather_distributed)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if batched and gather_distributed:
        raise ValueError("gather_distributed=True needs features [N, D]: the G groups of batched features "
                         f"{list(features.shape)} are independent problems local to each rank")
    labels = V.check_labels("labels", labels, tuple(features.shape[:-1]), features.device, "features")
    g, n, d = features.shape if batched else (1, *features.shape)
    z = features.reshape(g * n, d)
    if normalize:
        z = l2_normalize(z)
    z = z.contiguous()
    scale = V.scale_from_temperature(temperature, z)
    rank, world = world_info() if gather_distributed else (0, 1)
    rows = torch.arange(g * n, device=z.device)
    if world > 1:
        cands = gather_with_grad(z)
        all_ids = class_ids(gather_with_grad(labels.reshape(n)).unsqueeze(0)).reshape(-1)  # one problem: W*N rows
        self_idx = rows + rank * n
        loss_rows, num_pos, _ = supcon_rows(z, cands, all_ids.index_select(0, self_idx), all_ids, self_idx, scale,
                                            backend)
    else:
        ids = class_ids(labels.reshape(g, n)).reshape(-1)
        loss_rows, num_pos, _ = supcon_rows(z, z, ids, ids, rows, scale, backend, groups=g)
    if reduction == "none":
        loss = loss_rows.reshape(labels.shape)
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() / (num_pos > 0).sum()  # NaN (0 / 0) without positives: the check below names it
    check_supcon_value(loss, scale, [("features", features)], num_pos if reduction == "mean" else None)
    return loss


def _check_features(name: str, t) -> bool:
    """``t``: a non-empty floating [N, D] or [G, N, D] tensor; returns whether it is batched (3-D)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 2:
        V.check_matrix(name, t)
        return False
    if t.dim() != 3:
        raise ValueError(f"{name} must be a 2-D tensor [N, D] or a 3-D tensor [G, N, D] (G independent groups), got "
                         f"shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: {t.shape[0]} groups of {t.shape[1]} rows (shape {tuple(t.shape)})")
    if t.shape[2] == 0:
        raise ValueError(f"{name} has 0 features (shape {tuple(t.shape)})")
    return True


def check_supcon_value(loss: torch.Tensor, scale: Optional[torch.Tensor], named_inputs,
                       num_pos: Optional[torch.Tensor]) -> None:
    """The deferred value check of augcl._validate (one host sync), plus SupCon's own failure: with ``num_pos``
    given (a mean was taken), a batch in which no anchor has a positive makes the mean 0 / 0, which is named here
    instead of being reported as an overflow."""
    if not (V.checks_enabled() and V.inspectable(loss)):
        return
    try:
        V.deferred_value_check(loss, scale, named_inputs, what="the SupCon loss")
    except FloatingPointError:
        if num_pos is not None and not bool((num_pos > 0).any()):
            raise ValueError("labels: no anchor has a positive (no two rows share a label), so the mean over "
                             "anchors with a positive is undefined; pass reduction='sum' or 'none' to get 0 "
                             "instead") from None
        raise


# --------------------------------------------------------------------------------------------- the parts
def class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Class ids of labels [G, L] (any real dtype, compared by equality): int64 [G, L] in ``[0, G * L)``, equal
    exactly for the rows of one group with equal labels (group g's ids lie in ``[g * L, (g + 1) * L)``).

    One stable sort per group and a running count of label changes: every shape is static (no ``torch.unique``,
    whose output size is data-dependent), so the ids need no host sync and trace under ``fullgraph=True``. A NaN
    label equals nothing, not even another NaN: each NaN row gets an id of its own."""
    g, length = labels.shape
    sorted_labels, order = torch.sort(labels, dim=1, stable=True)
    first = torch.ones((g, 1), dtype=torch.bool, device=labels.device)
    starts = torch.cat([first, sorted_labels[:, 1:] != sorted_labels[:, :-1]], dim=1)
    ids = starts.cumsum(1) - 1 + torch.arange(g, device=labels.device).unsqueeze(1) * length
    return torch.empty_like(ids).scatter_(1, order, ids)


def positive_sums(anchors: torch.Tensor, candidates: torch.Tensor, anchor_ids: torch.Tensor,
                  cand_ids: torch.Tensor, self_idx: Optional[torch.Tensor], num_ids: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sum_{p in P(i)} <a_i, c_p> [M], |P(i)| [M] int64)`` without any [M, Nc] mask, in the accumulation dtype.

    ``P(i)`` = the candidates whose id equals ``anchor_ids[i]``, minus candidate ``self_idx[i]`` (the anchor's own
    row among the candidates; None: the anchor is not among them). Ids lie in ``[0, num_ids)``. The class sums
    ``S`` [num_ids, D] are one ``index_add`` (its backward a gather), and ``<a_i, S_{id_i} - c_self>`` one row dot."""
    acc = acc_dtype(anchors.dtype, candidates.dtype)
    c = candidates.to(acc)
    sums = c.new_zeros((num_ids, c.shape[1])).index_add(0, cand_ids, c)
    counts = torch.zeros(num_ids, dtype=torch.long, device=c.device).index_add(
        0, cand_ids, torch.ones_like(cand_ids))
    rows = sums.index_select(0, anchor_ids)
    num_pos = counts.index_select(0, anchor_ids)
    if self_idx is not None:
        # the anchor's own row leaves its class sum before the dot: <a_i, S - c_i>, not <a_i, S> - <a_i, c_i>,
        # whose two large terms would cancel to the small positive sum of a class of two far-apart rows
        rows = rows - c.index_select(0, self_idx)
        num_pos = num_pos - 1
    # one conversion when anchors are the candidates: half the fp32 copies, and for fp16 / bf16 inputs one rounding
    # of the positive term's gradient back to the input dtype instead of two summed there
    a = c if anchors is candidates else anchors.to(acc)
    return (a * rows).sum(1), num_pos


def supcon_rows(anchors: torch.Tensor, candidates: torch.Tensor, anchor_ids: torch.Tensor, cand_ids: torch.Tensor,
                self_idx: Optional[torch.Tensor], scale: torch.Tensor, backend: Optional[str] = None,
                groups: int = 1, num_ids: Optional[int] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor SupCon losses ``(loss [M], |P(i)| [M] int64, lse [M])`` of already normalised anchors against
    candidates, in the accumulation dtype; ``loss`` is 0 for anchors without positive, ``lse`` the first term
    (``logsumexp`` over the anchor's candidates but itself; -inf where there is none). The building block of :func:`supcon`
    and of the compat shims (pml's reference set, solo-learn's instance ids).

    ``anchors`` [G*M, D] and ``candidates`` [G*Nc, D] are group-major: the M anchors of group g are compared with
    the Nc candidates of group g only (one fused logsumexp call per group). ``anchor_ids`` [G*M] / ``cand_ids``
    [G*Nc]: class ids (distinct across groups, see :func:`class_ids`) below ``num_ids`` (default G*Nc); ``self_idx``
    [G*M]: the anchor's own row in ``candidates`` (excluded from its logsumexp and from its positives), or None.
    ``scale`` = 1 / temperature (0-dim, may require grad)."""
    acc = acc_dtype(anchors.dtype, candidates.dtype)
    m, nc = anchors.shape[0] // groups, candidates.shape[0] // groups
    dots, num_pos = positive_sums(anchors, candidates, anchor_ids, cand_ids, self_idx,
                                  candidates.shape[0] if num_ids is None else num_ids)
    no_pos = torch.full((m, 1), -1, dtype=torch.long, device=anchors.device)
    lses = []
    for g in range(groups):
        if self_idx is None:
            excl = torch.empty((m, 0), dtype=torch.long, device=anchors.device)
        else:
            excl = (self_idx[g * m:(g + 1) * m] - g * nc).unsqueeze(1)
        a = anchors[g * m:(g + 1) * m]
        c = candidates if groups == 1 else candidates[g * nc:(g + 1) * nc]
        if candidates is anchors:
            c = a
        lses.append(contrastive_lse(a, c, scale, no_pos, excl, 0, backend))
    lse = (lses[0] if groups == 1 else torch.cat(lses)).to(acc)
    has_pos = num_pos > 0
    pos_mean = scale.to(acc) * dots / num_pos.clamp(min=1).to(acc)
    # where, not a product with has_pos: a row without anything to contrast has lse = -inf (a group of one row)
    loss = torch.where(has_pos, lse - pos_mean, torch.zeros((), dtype=acc, device=anchors.device))
    return loss, num_pos, lse
