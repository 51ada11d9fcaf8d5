"""The contrastive loss family: NT-Xent (SimCLR), InfoNCE (MoCo, with a queue), soft targets, the general op.

Every loss is one call of the fused ``contrastive`` op (augcl/ops/contrastive.py): anchors against candidates,
a set of included columns per row and sparse soft positives, computed without the [M, Nc] similarity matrix.

All functions take ``backend=`` (``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"`` or ``None`` = automatic,
see augcl.dispatch) and return the loss in fp32 (fp64 for fp64 inputs), whatever the input dtype: logits are
accumulated in fp32, so fp16/bf16 inputs are safe at small temperatures.

The ``*_named`` functions are the same losses with the (name, tensor) list of the deferred non-finite check given
by the caller, so a wrapper (augcl.nn, augcl.compat, the Hallucinator and Un-Mix losses) names its own arguments
in errors. They are package-internal (not in ``__all__``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from augcl import _validate as V
from augcl._numerics import acc_dtype, l2_normalize
from augcl.distributed import gather_with_grad, world_info
from augcl.ops.contrastive import contrastive_loss_rows, contrastive_lse, positive_dots

Temperature = Union[float, torch.Tensor]

__all__ = ["contrastive_loss", "nt_xent", "nt_xent_multiview", "info_nce", "soft_info_nce"]


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    pos_idx: torch.Tensor,
    pos_weight: Optional[torch.Tensor] = None,
    *,
    temperature: Temperature = 0.1,
    excl_idx: Optional[torch.Tensor] = None,
    neg_start: int = 0,
    normalize: bool = True,
    reduction: str = "mean",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """General soft-target InfoNCE: the op every other loss here is built on.

    ``loss_i = (sum_p w_ip) * lse_i - sum_p w_ip * S[i, pos_idx[i, p]]`` with ``S = A @ C.T / temperature`` and
    ``lse_i`` the logsumexp of row i over its included columns: its positives, plus every column
    ``j >= neg_start`` not listed in ``excl_idx[i]``.

    Args:
        anchors: [M, D] float16/bfloat16/float32/float64.
        candidates: [Nc, D], same device (dtypes are promoted to the wider one).
        pos_idx: [M] or [M, P] integer column indices of each row's positives; -1 pads.
        pos_weight: [M, P] weights of the positives (default: 1/P each, i.e. uniform over the P slots).
        temperature: float > 0, or a one-element tensor (learnable: gets a gradient). Default 0.1.
        excl_idx: [M] or [M, E] columns excluded from row i's logsumexp (e.g. the anchor itself); -1 pads.
        neg_start: columns below this index are never negatives (only positives there are included).
        normalize: L2-normalise anchors and candidates first (default True).
        reduction: "mean" (default), "sum" or "none" ([M] per-row losses).

    Returns the loss (0-dim, or [M] for reduction="none") in fp32 (fp64 for fp64 inputs).

    Raises TypeError / ValueError naming the argument (``augcl._validate.IndexArgumentError``, an IndexError
    and a ValueError, for indices out of range); non-finite inputs or a temperature tensor <= 0 raise ValueError
    (one deferred check, see augcl._validate).
    """
    return contrastive_loss_named(anchors, candidates, pos_idx, pos_weight, temperature=temperature, excl_idx=excl_idx,
                             neg_start=neg_start, normalize=normalize, reduction=reduction, backend=backend)


def contrastive_loss_named(anchors, candidates, pos_idx, pos_weight=None, *, temperature=0.1, excl_idx=None, neg_start=0,
                      normalize=True, reduction="mean", backend=None, value_inputs=None):
    """:func:`contrastive_loss`; ``value_inputs`` replaces the (name, tensor) list of the deferred non-finite
    check, so wrappers name their own arguments."""
    V.check_matrix("anchors", anchors)
    V.check_matrix("candidates", candidates, dim=anchors.shape[1])
    V.check_same_device([("anchors", anchors), ("candidates", candidates)])
    V.check_reduction(reduction)
    m, nc = anchors.shape[0], candidates.shape[0]
    if isinstance(neg_start, bool) or not isinstance(neg_start, int) or neg_start < 0:
        raise ValueError(f"neg_start must be an int >= 0, got {neg_start!r}")
    if neg_start > nc:
        raise ValueError(f"neg_start must be <= the number of candidates ({nc}), got {neg_start}")
    # Range checks of the indices join the one deferred check after the op (no host sync of their own).
    index_checks = []
    pos_idx = V.check_index("pos_idx", pos_idx, m, nc, anchors.device, deferred=index_checks)
    weight_given = pos_weight is not None
    if pos_weight is None:
        # in the accumulation dtype: 1/P in float32 would cap a float64 loss at float32 precision
        pos_weight = torch.full(pos_idx.shape, 1.0 / pos_idx.shape[1], dtype=acc_dtype(anchors.dtype, candidates.dtype),
                                device=anchors.device)
    else:
        pos_weight = V.check_pos_weight(pos_weight, pos_idx, "anchors", anchors.device)
    if excl_idx is None:
        excl_idx = torch.empty((m, 0), dtype=torch.long, device=anchors.device)
    else:
        excl_idx = V.check_index("excl_idx", excl_idx, m, nc, anchors.device, deferred=index_checks)
    if value_inputs is None:
        value_inputs = [("anchors", anchors), ("candidates", candidates)]
        if weight_given:
            value_inputs.append(("pos_weight", pos_weight))
    return _run(anchors, candidates, temperature, pos_idx, pos_weight, excl_idx, neg_start, normalize,
                reduction, backend, value_inputs, index_checks=index_checks)


def _run(anchors, candidates, temperature, pos_idx, pos_weight, excl_idx, neg_start, normalize, reduction,
         backend, named_inputs, candidates_normalized=False, index_checks=()):
    dtype = V.common_dtype([anchors, candidates])
    a, c = anchors.to(dtype), candidates.to(dtype)
    if normalize:
        a = l2_normalize(a)
        if not candidates_normalized:
            c = l2_normalize(c)
    scale = V.scale_from_temperature(temperature, a)
    loss_rows, lse = contrastive_loss_rows(a, c, scale, pos_idx, pos_weight, excl_idx, neg_start, backend)
    loss = V.reduce(loss_rows, reduction)
    V.deferred_value_check(loss, scale, named_inputs, lse=lse, index_checks=index_checks)
    return loss


def nt_xent_multiview(
    views: Union[Sequence[torch.Tensor], torch.Tensor],
    temperature: Temperature = 0.5,
    *,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Multi-view NT-Xent (SimCLR with V >= 2 views).

    ``Z = [z_1; ...; z_V]`` [V*B, D]; row ``v*B + b`` has the V-1 other views of sample b as positives (weight
    1/(V-1) each) and every other row of Z as a negative; the row itself is excluded. Mean over the V*B rows.

    Args:
        views: V tensors [B, D] (or one [V, B, D] tensor).
        gather_distributed: use the views of every rank as candidates (global negatives, gradients summed
            over ranks); anchors stay local and the loss averages this rank's rows.
    """
    if isinstance(views, torch.Tensor):
        if views.dim() != 3:
            raise ValueError(f"views must be [V, B, D] or a sequence of [B, D] tensors, got shape {tuple(views.shape)}")
        views = list(views.unbind(0))
    if views is None or isinstance(views, (str, bytes)) or not hasattr(views, "__iter__"):
        raise TypeError(f"views must be a [V, B, D] tensor or a sequence of [B, D] tensors, got "
                        f"{type(views).__name__}")
    views = list(views)
    if len(views) < 2:
        raise ValueError(f"views: NT-Xent needs at least 2 views, got {len(views)}")
    names = [f"views[{v}]" for v in range(len(views))]
    return nt_xent_named(views, names, temperature, normalize=normalize, reduction=reduction,
                         gather_distributed=gather_distributed, backend=backend)


def nt_xent_named(views, names, temperature=0.5, *, normalize=True, reduction="mean", gather_distributed=False,
                  backend=None):
    """:func:`nt_xent_multiview` of the list ``views``, whose errors (shapes and non-finite values) call them
    ``names`` (e.g. ``("z1", "z2")`` for :func:`nt_xent`, ``("out0", "out1")`` for lightly's module)."""
    V.check_matrix(names[0], views[0])
    b, d = views[0].shape
    for name, z in zip(names[1:], views[1:]):
        V.check_matrix(name, z, rows=b, dim=d)
    V.check_same_device(list(zip(names, views)))
    V.check_reduction(reduction)
    dtype = V.common_dtype(views)
    z = torch.cat([v.to(dtype) for v in views], dim=0)
    if normalize:
        z = l2_normalize(z)
    nv, n = len(views), z.shape[0]
    rank, world = world_info() if gather_distributed else (0, 1)
    cands = gather_with_grad(z) if world > 1 else z
    offset = rank * n
    device = z.device
    rows = torch.arange(n, device=device)
    sample, view = rows % b, rows // b
    # positives of row (view, sample): the same sample in every other view, in view order.
    others = torch.arange(nv - 1, device=device)
    other_views = others.unsqueeze(0) + (others.unsqueeze(0) >= view.unsqueeze(1)).long()  # skip own view
    pos_idx = offset + other_views * b + sample.unsqueeze(1)
    pos_weight = torch.full(pos_idx.shape, 1.0 / (nv - 1), dtype=acc_dtype(dtype), device=device)
    excl_idx = (offset + rows).unsqueeze(1)
    return _run(z, cands, temperature, pos_idx, pos_weight, excl_idx, 0, False, reduction, backend,
                list(zip(names, views)))


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: Temperature = 0.5,
    *,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """NT-Xent / SimCLR loss of two views z1, z2 [B, D] (Chen et al. 2020), the loss lightly's
    ``NTXentLoss`` computes: each of the 2B rows of [z1; z2] has its other view as positive and the remaining
    2B-2 rows as negatives, mean over the 2B rows. Default temperature 0.5 (lightly's)."""
    return nt_xent_named([z1, z2], ["z1", "z2"], temperature, normalize=normalize, reduction=reduction,
                         gather_distributed=gather_distributed, backend=backend)


def soft_info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    pos_idx: torch.Tensor,
    pos_weight: torch.Tensor,
    queue: Optional[torch.Tensor] = None,
    temperature: Temperature = 0.1,
    *,
    normalize: bool = True,
    key_negatives: bool = False,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """MoCo-style InfoNCE with sparse soft targets over the keys (Un-Mix: mixture row i has positives
    {key i: lam_i, key partner_i: 1 - lam_i}).

    Args:
        query: [B, D] anchors; key: [Bk, D] keys (usually from the momentum encoder); queue: [K, D] negatives
            (used as stored: MoCo's queue holds already-normalised keys) or None.
        pos_idx: [B] or [B, P] indices into this rank's keys; pos_weight: same shape, the soft targets.
        key_negatives: if False (MoCo), keys are candidates only as positives; if True, every key that is not a
            positive of the row is a negative too (MoCo v3 / CLIP style).
        gather_distributed: candidates are the keys of every rank (indices are shifted to this rank's block).
            Only meaningful with ``key_negatives``: with a queue and ``key_negatives=False`` (MoCo) other ranks'
            keys are never a local row's candidate, so nothing is gathered, and the queue is read in place (one
            fused pass over it; no [B + K, D] candidate buffer is built).

    With ``queue=None`` and ``key_negatives=False`` no row has a negative: ValueError (as :func:`info_nce`).
    """
    return soft_info_nce_named(query, key, pos_idx, pos_weight, queue, temperature, normalize=normalize,
                          key_negatives=key_negatives, reduction=reduction, gather_distributed=gather_distributed,
                          backend=backend)


def soft_info_nce_named(query, key, pos_idx, pos_weight, queue=None, temperature=0.1, *, normalize=True,
                   key_negatives=False, reduction="mean", gather_distributed=False, backend=None,
                   value_inputs=None, weight_checked=False, pos_idx_checked=False):
    """:func:`soft_info_nce`; ``value_inputs`` replaces the (name, tensor) list of the deferred non-finite check
    (wrappers name their own arguments); ``weight_checked``: pos_weight is built internally (finite by
    construction or covered by ``value_inputs``), do not scan it; ``pos_idx_checked``: pos_idx is built
    internally and in range (MoCo's arange), do not check it."""
    V.check_matrix("query", query)
    V.check_matrix("key", key, dim=query.shape[1])
    named = [("query", query), ("key", key)]
    if queue is not None:
        V.check_matrix("queue", queue, dim=query.shape[1])
        named.append(("queue", queue))
    V.check_same_device(named)
    V.check_reduction(reduction)
    if queue is None and not key_negatives:
        raise ValueError("soft_info_nce: with queue=None and key_negatives=False no row has a negative; pass a "
                         "queue [K, D] or key_negatives=True")
    bq, bk = query.shape[0], key.shape[0]
    index_checks = []  # joined with the deferred value check after the op (no host sync of their own)
    if pos_idx_checked:
        pos_idx = pos_idx.reshape(bq, -1)
    else:
        pos_idx = V.check_index("pos_idx", pos_idx, bq, bk, query.device, deferred=index_checks)
    pos_weight = V.check_pos_weight(pos_weight, pos_idx, "query", query.device)
    dtype = V.common_dtype([t for _, t in named])
    q, k = query.to(dtype), key.to(dtype)
    if normalize:
        q, k = l2_normalize(q), l2_normalize(k)
    if value_inputs is None:
        value_inputs = named if weight_checked else named + [("pos_weight", pos_weight)]
    if queue is not None and not key_negatives:
        return _queue_info_nce(q, k, queue.to(dtype), temperature, pos_idx, pos_weight, reduction, backend,
                               value_inputs, index_checks)
    rank, world = world_info() if gather_distributed else (0, 1)
    keys = gather_with_grad(k) if world > 1 else k
    cands = keys if queue is None else torch.cat([keys, queue.to(dtype)], dim=0)
    pos_idx = torch.where(pos_idx >= 0, pos_idx + rank * bk, pos_idx)
    neg_start = 0 if key_negatives else keys.shape[0]
    excl_idx = torch.empty((bq, 0), dtype=torch.long, device=query.device)
    return _run(q, cands, temperature, pos_idx, pos_weight, excl_idx, neg_start, False, reduction, backend,
                value_inputs, index_checks=index_checks)


def _queue_info_nce(q, k, queue, temperature, pos_idx, pos_weight, reduction, backend, value_inputs,
                    index_checks=()):
    """MoCo's case of :func:`soft_info_nce` (a queue, keys never negatives): the same value and gradients as the
    contrastive op over the candidates ``[keys; queue]`` with ``neg_start = len(keys)``, without building them.

    Row i's logsumexp runs over its positive keys and every queue row. The queue part is one pass of the fused op
    over the queue as stored (no positives, nothing excluded); the P positive logits are P row-wise dots, joined
    with a logsumexp. So there is no [B + K, D] copy of the queue per call and, under ``gather_distributed``, no
    all-gather of the other ranks' keys (never a candidate of a local row here). A key listed twice among a row's
    positives (e.g. Un-Mix's middle row, its own partner) enters the logsumexp once, as in the op (a column is
    included or not), and its weights add up."""
    acc = acc_dtype(q.dtype)
    bq = q.shape[0]
    scale = V.scale_from_temperature(temperature, q)
    no_pos = torch.full((bq, 1), -1, dtype=torch.long, device=q.device)
    no_excl = torch.empty((bq, 0), dtype=torch.long, device=q.device)
    neg_lse = contrastive_lse(q, queue, scale, no_pos, no_excl, 0, backend).to(acc)  # [B]
    valid = pos_idx >= 0
    w = torch.where(valid, pos_weight.to(acc), torch.zeros((), dtype=acc, device=q.device))
    pos_dot = positive_dots(q, k, pos_idx, acc)
    if pos_idx.shape[1] == 1:
        first = valid
    else:
        # slot p counts in the logsumexp unless an earlier slot holds the same key
        same = pos_idx.unsqueeze(2) == pos_idx.unsqueeze(1)  # [B, P, P]: slot p == slot r
        earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=q.device).tril(-1)  # r < p
        first = valid & ~(same & earlier).any(2)
    logits = scale.to(acc) * pos_dot  # [B, P]
    neg_inf = torch.full((), float("-inf"), dtype=acc, device=q.device)
    lse = torch.logsumexp(torch.cat([neg_lse.unsqueeze(1), torch.where(first, logits, neg_inf)], 1), 1)
    loss_rows = w.sum(1) * lse - (w * logits).sum(1)
    loss = V.reduce(loss_rows, reduction)
    V.deferred_value_check(loss, scale, value_inputs, lse=lse, index_checks=index_checks)
    return loss


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: Optional[torch.Tensor] = None,
    temperature: Temperature = 0.1,
    *,
    normalize: bool = True,
    key_negatives: bool = False,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """MoCo InfoNCE (He et al. 2020): query i's positive is key i, the negatives are the queue rows.

    ``loss_i = -log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.queue_j/t)) )``, mean over the batch.

    Args:
        query: [B, D]; key: [B, D] (positives, row-aligned with query); queue: [K, D] or None (rows used as
            stored; MoCo keeps normalised keys there).
        temperature: 0.1 by default (solo-learn's MoCo v2+; MoCo v2 used 0.2).
        key_negatives: also use the other keys of the batch as negatives (MoCo v3 / CLIP-style InfoNCE, where
            with gather_distributed=True the negatives are all keys of the global batch and no queue).
    """
    V.check_matrix("query", query)
    V.check_matrix("key", key, rows=query.shape[0], dim=query.shape[1])
    if queue is None and not key_negatives:
        raise ValueError("info_nce: with queue=None and key_negatives=False every row has no negatives; "
                         "pass a queue [K, D] or key_negatives=True")
    return info_nce_named(query, key, queue, temperature, normalize=normalize, key_negatives=key_negatives,
                     reduction=reduction, gather_distributed=gather_distributed, backend=backend)


def info_nce_named(query, key, queue=None, temperature=0.1, *, normalize=True, key_negatives=False, reduction="mean",
              gather_distributed=False, backend=None, value_inputs=None):
    """:func:`info_nce` (arguments already checked by the caller or not); ``value_inputs``: see
    :func:`soft_info_nce_named`."""
    V.check_matrix("query", query)
    V.check_matrix("key", key, rows=query.shape[0], dim=query.shape[1])
    pos_idx = torch.arange(query.shape[0], device=query.device)
    pos_weight = torch.ones(query.shape[0], 1, dtype=acc_dtype(query.dtype, key.dtype), device=query.device)
    return soft_info_nce_named(query, key, pos_idx, pos_weight, queue, temperature, normalize=normalize,
                          key_negatives=key_negatives, reduction=reduction, gather_distributed=gather_distributed,
                          backend=backend, value_inputs=value_inputs, weight_checked=True, pos_idx_checked=True)

