"""Functional API of augcl: the contrastive loss family (SPEC §1).

Every loss is one call of the fused ``contrastive`` op (augcl/ops/contrastive.py): anchors against candidates,
a set of included columns per row and sparse soft positives, computed without the [M, Nc] similarity matrix.

All functions take ``backend=`` (``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"`` or ``None`` = automatic,
see augcl.dispatch) and return the loss in fp32 (fp64 for fp64 inputs), whatever the input dtype: logits are
accumulated in fp32, so fp16/bf16 inputs are safe at small temperatures.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl.ops.contrastive import contrastive_loss_rows, contrastive_lse, positive_dots
from augcl.reference.contrastive import acc_dtype as _acc_dtype
from augcl.ops.sinkhorn import sinkhorn_codes
from augcl.ops.soft_ce import soft_ce_rows, swav_ce_backend
from augcl.ops.hallucinator import hallucinate_op
from augcl.ops.unmix import MIX_INPUT_DTYPES as _MIX_INPUT_DTYPES
from augcl.ops.unmix import mix_acc_dtype as _mix_acc_dtype
from augcl.ops.unmix import mix_images_op as _mix_images_op
from augcl.ops.unmix import mix_out_dtype as _mix_out_dtype

Temperature = Union[float, torch.Tensor]

__all__ = ["contrastive_loss", "nt_xent", "nt_xent_multiview", "info_nce", "soft_info_nce", "sinkhorn", "swav_loss",
           "hallucinate", "hallucinate_moco_loss", "hallucinate_simclr_loss", "hallucinate_simsiam_loss",
           "mix_images", "unmix", "unmix_params"]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    # Same eps as F.normalize's default, i.e. lightly's and solo-learn's behaviour.
    return F.normalize(x, dim=1)


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
    return _contrastive_loss(anchors, candidates, pos_idx, pos_weight, temperature=temperature, excl_idx=excl_idx,
                             neg_start=neg_start, normalize=normalize, reduction=reduction, backend=backend)


def _contrastive_loss(anchors, candidates, pos_idx, pos_weight=None, *, temperature=0.1, excl_idx=None, neg_start=0,
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
    pos_idx = V.check_index("pos_idx", pos_idx, m, nc, anchors.device)
    weight_given = pos_weight is not None
    if pos_weight is None:
        pos_weight = torch.full(pos_idx.shape, 1.0 / pos_idx.shape[1], device=anchors.device)
    else:
        if not isinstance(pos_weight, torch.Tensor) or not pos_weight.is_floating_point():
            got = pos_weight.dtype if isinstance(pos_weight, torch.Tensor) else type(pos_weight).__name__
            raise TypeError(f"pos_weight must be a floating tensor, got {got}")
        if pos_weight.dim() == 1:
            pos_weight = pos_weight.unsqueeze(1)
        if tuple(pos_weight.shape) != tuple(pos_idx.shape):
            raise ValueError(f"pos_weight must have the shape of pos_idx {tuple(pos_idx.shape)}, got {tuple(pos_weight.shape)}")
        if pos_weight.device != anchors.device:
            raise ValueError(f"pos_weight is on {pos_weight.device} but anchors are on {anchors.device}")
    if excl_idx is None:
        excl_idx = torch.empty((m, 0), dtype=torch.long, device=anchors.device)
    else:
        excl_idx = V.check_index("excl_idx", excl_idx, m, nc, anchors.device)
    if value_inputs is None:
        value_inputs = [("anchors", anchors), ("candidates", candidates)]
        if weight_given:
            value_inputs.append(("pos_weight", pos_weight))
    return _run(anchors, candidates, temperature, pos_idx, pos_weight, excl_idx, neg_start, normalize,
                reduction, backend, value_inputs)


def _run(anchors, candidates, temperature, pos_idx, pos_weight, excl_idx, neg_start, normalize, reduction,
         backend, named_inputs, candidates_normalized=False):
    dtype = V.common_dtype([anchors, candidates])
    a, c = anchors.to(dtype), candidates.to(dtype)
    if normalize:
        a = _normalize(a)
        if not candidates_normalized:
            c = _normalize(c)
    scale = V.scale_from_temperature(temperature, a)
    loss_rows, _ = contrastive_loss_rows(a, c, scale, pos_idx, pos_weight, excl_idx, neg_start, backend)
    V.deferred_value_check(loss_rows, scale, named_inputs)
    return V.reduce(loss_rows, reduction)


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
    return _nt_xent_views(views, names, temperature, normalize=normalize, reduction=reduction,
                          gather_distributed=gather_distributed, backend=backend)


def _nt_xent_views(views, names, temperature, *, normalize, reduction, gather_distributed, backend):
    """:func:`nt_xent_multiview` of the list ``views``, whose errors call them ``names``."""
    V.check_matrix(names[0], views[0])
    b, d = views[0].shape
    for name, z in zip(names[1:], views[1:]):
        V.check_matrix(name, z, rows=b, dim=d)
    V.check_same_device(list(zip(names, views)))
    V.check_reduction(reduction)
    dtype = V.common_dtype(views)
    z = torch.cat([v.to(dtype) for v in views], dim=0)
    if normalize:
        z = _normalize(z)
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
    pos_weight = torch.full(pos_idx.shape, 1.0 / (nv - 1), device=device)
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
    V.check_matrix("z1", z1)
    V.check_matrix("z2", z2, rows=z1.shape[0], dim=z1.shape[1])
    V.check_same_device([("z1", z1), ("z2", z2)])
    # Shape errors above name z1 / z2; a non-finite value is reported as views[0] / views[1] (the [z1, z2] of
    # nt_xent_multiview), which tests/test_contrastive.py pins.
    return _nt_xent_views([z1, z2], ["views[0]", "views[1]"], temperature, normalize=normalize,
                          reduction=reduction, gather_distributed=gather_distributed, backend=backend)


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
    return _soft_info_nce(query, key, pos_idx, pos_weight, queue, temperature, normalize=normalize,
                          key_negatives=key_negatives, reduction=reduction, gather_distributed=gather_distributed,
                          backend=backend)


def _soft_info_nce(query, key, pos_idx, pos_weight, queue=None, temperature=0.1, *, normalize=True,
                   key_negatives=False, reduction="mean", gather_distributed=False, backend=None,
                   value_inputs=None, weight_checked=False):
    """:func:`soft_info_nce`; ``value_inputs`` replaces the (name, tensor) list of the deferred non-finite check
    (wrappers name their own arguments); ``weight_checked``: pos_weight is built internally (finite by
    construction or covered by ``value_inputs``), do not scan it."""
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
    pos_idx = V.check_index("pos_idx", pos_idx, bq, bk, query.device)
    if not isinstance(pos_weight, torch.Tensor) or not pos_weight.is_floating_point():
        got = pos_weight.dtype if isinstance(pos_weight, torch.Tensor) else type(pos_weight).__name__
        raise TypeError(f"pos_weight must be a floating tensor, got {got}")
    if pos_weight.dim() == 1:
        pos_weight = pos_weight.unsqueeze(1)
    if tuple(pos_weight.shape) != tuple(pos_idx.shape):
        raise ValueError(f"pos_weight must have the shape of pos_idx {tuple(pos_idx.shape)}, got {tuple(pos_weight.shape)}")
    if pos_weight.device != query.device:
        raise ValueError(f"pos_weight is on {pos_weight.device} but query is on {query.device}")
    dtype = V.common_dtype([t for _, t in named])
    q, k = query.to(dtype), key.to(dtype)
    if normalize:
        q, k = _normalize(q), _normalize(k)
    if value_inputs is None:
        value_inputs = named if weight_checked else named + [("pos_weight", pos_weight)]
    if queue is not None and not key_negatives:
        return _queue_info_nce(q, k, queue.to(dtype), temperature, pos_idx, pos_weight, reduction, backend,
                               value_inputs)
    rank, world = world_info() if gather_distributed else (0, 1)
    keys = gather_with_grad(k) if world > 1 else k
    cands = keys if queue is None else torch.cat([keys, queue.to(dtype)], dim=0)
    pos_idx = torch.where(pos_idx >= 0, pos_idx + rank * bk, pos_idx)
    neg_start = 0 if key_negatives else keys.shape[0]
    excl_idx = torch.empty((bq, 0), dtype=torch.long, device=query.device)
    return _run(q, cands, temperature, pos_idx, pos_weight, excl_idx, neg_start, False, reduction, backend,
                value_inputs)


def _queue_info_nce(q, k, queue, temperature, pos_idx, pos_weight, reduction, backend, value_inputs):
    """MoCo's case of :func:`soft_info_nce` (a queue, keys never negatives): the same value and gradients as the
    contrastive op over the candidates ``[keys; queue]`` with ``neg_start = len(keys)``, without building them.

    Row i's logsumexp runs over its positive keys and every queue row. The queue part is one pass of the fused op
    over the queue as stored (no positives, nothing excluded); the P positive logits are P row-wise dots, joined
    with a logsumexp. So there is no [B + K, D] copy of the queue per call and, under ``gather_distributed``, no
    all-gather of the other ranks' keys (never a candidate of a local row here). A key listed twice among a row's
    positives (e.g. Un-Mix's middle row, its own partner) enters the logsumexp once, as in the op (a column is
    included or not), and its weights add up."""
    acc = _acc_dtype(q.dtype)
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
    V.deferred_value_check(loss_rows, scale, value_inputs)
    return V.reduce(loss_rows, reduction)


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
    return _info_nce(query, key, queue, temperature, normalize=normalize, key_negatives=key_negatives,
                     reduction=reduction, gather_distributed=gather_distributed, backend=backend)


def _info_nce(query, key, queue=None, temperature=0.1, *, normalize=True, key_negatives=False, reduction="mean",
              gather_distributed=False, backend=None, value_inputs=None):
    """:func:`info_nce` (arguments already checked by the caller or not); ``value_inputs``: see
    :func:`_soft_info_nce`."""
    V.check_matrix("query", query)
    V.check_matrix("key", key, rows=query.shape[0], dim=query.shape[1])
    pos_idx = torch.arange(query.shape[0], device=query.device)
    pos_weight = torch.ones(query.shape[0], 1, device=query.device)
    return _soft_info_nce(query, key, pos_idx, pos_weight, queue, temperature, normalize=normalize,
                          key_negatives=key_negatives, reduction=reduction, gather_distributed=gather_distributed,
                          backend=backend, value_inputs=value_inputs, weight_checked=True)


# ------------------------------------------------------------------------------------------- SwAV (SPEC §4)
def _check_sinkhorn_args(epsilon, iterations, eps_name: str = "epsilon", it_name: str = "iterations") -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"{eps_name} must be a float, got {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"{eps_name} must be finite and > 0, got {epsilon}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"{it_name} must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"{it_name} must be >= 0, got {iterations}")


def _check_scores(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [B, K] (samples x prototypes), got shape {tuple(t.shape)}")
    if t.dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if V.checks_enabled() and not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (inf or nan)")


def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp soft codes (``distributed_sinkhorn`` of facebookresearch/swav), computed stably.

    Same math as the reference (see augcl/reference/sinkhorn.py), run in the log domain, so small ``epsilon``
    and fp16/bf16 scores do not overflow. No gradient flows through the codes.

    Args:
        scores: [B, K] similarities of samples and prototypes, any float dtype.
        epsilon: entropic regularisation, finite and > 0 (SwAV: 0.05).
        iterations: Sinkhorn iterations, an int >= 0 (SwAV: 3).
        distributed: with an initialised torch.distributed process group, normalise over every rank's samples
            (each rank passes its rows and gets the codes of its rows).
        backend: see augcl.dispatch.

    Returns:
        codes [B, K] in fp32 (fp64 for fp64 scores); each row sums to 1 when ``iterations >= 1``.
    """
    _check_scores("scores", scores)
    _check_sinkhorn_args(epsilon, iterations)
    _check_finite("scores", scores)
    return sinkhorn_codes(scores, float(epsilon), int(iterations), distributed=bool(distributed), backend=backend)


def _check_swav_mix_args(mixed, mix_lam, mix_partner, ref: torch.Tensor):
    """Validate the Un-Mix arguments of :func:`swav_loss`; returns (mixed list, lam [B], partner [B]) or
    ([], None, None) without mixtures. ``ref`` is high_resolution_outputs[0] ([B, K])."""
    mixed = [] if mixed is None else V.check_tensor_list("mixed_outputs", mixed)
    if not mixed:
        for name, value in (("mix_lam", mix_lam), ("mix_partner", mix_partner)):
            if value is not None:
                raise ValueError(f"{name} is given but mixed_outputs is empty or None; {name} only applies to "
                                 "the Un-Mix mixtures")
        return [], None, None
    b = ref.shape[0]
    for j, t in enumerate(mixed):
        _check_scores(f"mixed_outputs[{j}]", t)
        if t.shape != ref.shape:
            raise ValueError(f"mixed_outputs[{j}] has shape {tuple(t.shape)} but high_resolution_outputs[0] has "
                             f"shape {tuple(ref.shape)}; every mixture must be [B, K]")
        if t.device != ref.device:
            raise ValueError(f"mixed_outputs[{j}] is on {t.device} but high_resolution_outputs[0] is on {ref.device}")
    if mix_lam is None:
        raise ValueError("mix_lam is required with mixed_outputs: the weight of sample i itself in mixture i, "
                         "a float or a [B] tensor in [0, 1]")
    if isinstance(mix_lam, bool):
        raise TypeError("mix_lam must be a float or a floating tensor, got bool")
    if isinstance(mix_lam, (int, float)):
        # fp64, so a float lam is exact for fp64 scores (it is cast to the accumulation dtype later)
        mix_lam = torch.full((b,), float(mix_lam), dtype=torch.float64, device=ref.device)
    elif not isinstance(mix_lam, torch.Tensor) or not mix_lam.is_floating_point():
        raise TypeError(f"mix_lam must be a float or a floating tensor, got "
                        f"{mix_lam.dtype if isinstance(mix_lam, torch.Tensor) else type(mix_lam).__name__}")
    elif mix_lam.dim() == 0:
        mix_lam = mix_lam.expand(b)
    if tuple(mix_lam.shape) != (b,):
        raise ValueError(f"mix_lam must be a float or a tensor of shape [B] = [{b}], got shape {tuple(mix_lam.shape)}")
    if mix_lam.device != ref.device:
        raise ValueError(f"mix_lam is on {mix_lam.device} but high_resolution_outputs[0] is on {ref.device}")
    if mix_partner is None:
        # Un-Mix's pairing: sample i is mixed with sample B-1-i of the same batch (the reversed batch).
        mix_partner = torch.arange(b - 1, -1, -1, device=ref.device)
    else:
        if not isinstance(mix_partner, torch.Tensor):
            raise TypeError(f"mix_partner must be an integer tensor [B], got {type(mix_partner).__name__}")
        if mix_partner.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"mix_partner must be an integer tensor, got {mix_partner.dtype}")
        if tuple(mix_partner.shape) != (b,):
            raise ValueError(f"mix_partner must have shape [B] = [{b}], got {tuple(mix_partner.shape)}")
        if mix_partner.device != ref.device:
            raise ValueError(f"mix_partner is on {mix_partner.device} but high_resolution_outputs[0] is on "
                             f"{ref.device}")
        mix_partner = mix_partner.long()
    if not torch.compiler.is_compiling():
        # One host sync for both. The partner range is always checked (the codes are indexed by it: out of range
        # it reads out of bounds on the device); mix_lam's range is a value check (augcl.set_checks(False) skips it).
        bad_partner = ((mix_partner < 0) | (mix_partner >= b)).any()
        if V.checks_enabled():
            lam_d = mix_lam.detach()
            bad_lam = ~((lam_d >= 0) & (lam_d <= 1)).all()
            flags = torch.stack((bad_partner, bad_lam)).tolist()
        else:
            flags = [bool(bad_partner), False]
        if flags[0]:
            raise V.IndexArgumentError(f"mix_partner holds indices outside [0, {b}) (partners are rows of the same "
                                       f"batch), got values in [{int(mix_partner.min())}, {int(mix_partner.max())}]")
        if flags[1]:
            raise ValueError("mix_lam must lie in [0, 1] (and not be nan)")
    return mixed, mix_lam, mix_partner


def _soft_target_ce(z: torch.Tensor, t: torch.Tensor, temperature: float, backend: Optional[str] = None
                    ) -> torch.Tensor:
    """``sum_b [ w_b * lse_b - <t_b, z_b> / T ]`` of one crop: the soft-target cross-entropy of scores z [B, K]
    against targets t [B, K] (acc dtype), ``lse_b = logsumexp_k z_bk / T``, ``w_b = sum_k t_bk``. This equals
    ``-sum_b <t_b, log_softmax(z_b / T)>`` without materialising the log-softmax. It runs the ``soft_ce`` op
    (augcl/ops/soft_ce.py: fused C++ CPU kernel, or the reference), which keeps only lse [B] for the backward and
    recomputes ``softmax = exp(z / T - lse)`` there: ``dz = g * (w * softmax - t) / T``, ``dt = g * (lse - z / T)``.
    """
    return soft_ce_rows(z, t, 1.0 / float(temperature), backend=backend).sum()


SWAV_MIX_FORMS = ("soft", "authors")


def _swav_targets(codes: List[torch.Tensor], n_crops: int, n_high: int):
    """SwAV's swapped-prediction targets: crop v (of ``n_crops``, the first ``n_high`` large) predicts the codes
    of every large crop but itself. CE is linear in its target, so these H predictions are one cross-entropy
    against the *sum* of those codes. Returns (sum of all codes, per-crop targets); a lone large crop's target
    is None (it is only a code source)."""
    total = codes[0]
    for c in codes[1:]:
        total = total + c  # a fresh tensor (codes are never written)
    targets = []
    for v in range(n_crops):
        if v < n_high:
            if n_high == 1:
                targets.append(None)
            elif n_high == 2:
                targets.append(codes[1 - v])  # the other crop's codes: no [B, K] pass, and exact
            else:
                targets.append(total - codes[v])
        else:
            targets.append(total)
    return total, targets


def _add_targets(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return b if a is None else a if b is None else a + b


def swav_loss(
    high_resolution_outputs: Sequence[torch.Tensor],
    low_resolution_outputs: Sequence[torch.Tensor] = (),
    queue_outputs: Optional[Sequence[torch.Tensor]] = None,
    *,
    temperature: float = 0.1,
    sinkhorn_iterations: int = 3,
    sinkhorn_epsilon: float = 0.05,
    distributed: bool = False,
    backend: Optional[str] = None,
    mixed_outputs: Optional[Sequence[torch.Tensor]] = None,
    mix_lam: Optional[Union[float, torch.Tensor]] = None,
    mix_partner: Optional[torch.Tensor] = None,
    mix_form: str = "soft",
) -> torch.Tensor:
    """SwAV's swapped prediction loss, valued as lightly 1.6.0's ``SwaVLoss``, with an optional Un-Mix term.

    For each high-resolution crop i, codes ``q_i = sinkhorn(scores_i)`` (no gradient; with ``queue_outputs``
    the queue's scores ``queue_outputs[i]`` are appended below the crop's rows and their codes dropped);
    ``loss = mean_i [ sum_{v != i} CE(q_i, scores_v) / (n_crops - 1) ]`` over every other crop v, high or low
    resolution, with ``CE(q, z) = -mean_b sum_k q_bk * log_softmax(z_b / temperature)_k``. CE is linear in q,
    so each crop is one cross-entropy against the summed codes of the other large crops: its logsumexp is
    computed once, and the log-softmax is never stored (the backward recomputes the softmax from the scores).

    **Un-Mix** (Shen et al. 2022, "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual Representation
    Learning"). ``mixed_outputs`` are the scores [B, K] of M mixed crops, mixture b of sample b (weight
    ``lam_b``) and of sample ``p(b) = mix_partner[b]`` (weight ``1 - lam_b``); ``mix_form`` says how they
    enter. Write ``S(c; q) = mean_i [ sum_{v != i} CE(q_i, c_v) / (n - 1) ]`` for the SwAV loss above of
    crops c (n of them) with codes q_i of large crop i.

    ``mix_form="soft"`` (default): each mixture is one more crop (``n_crops = H + L + M``), predicted against
    the *mixed codes* of each large crop, the soft target of Un-Mix (SPEC §3 applied to codes)::

        mix(q_i)_b = lam_b * q_i,b + (1 - lam_b) * q_i,p(b)
        loss = mean_i [ ( sum_{v in high+low, v != i} CE(q_i, scores_v)
                          + sum_{m in mixed} CE(mix(q_i), scores_m) ) / (n_crops - 1) ]

    With ``lam = 1`` (or ``partner = identity``) a mixture is an ordinary extra crop. Mixtures never produce
    codes.

    ``mix_form="authors"``: the authors' SwAV script (szq0214/Un-Mix, ``UnMix_SwAV/for_CIFAR`` and
    ``for_ImageNet/main_swav_unmix.py``, ``train`` and ``swav_loss``). Mixture j is made from crop 2j (in
    high + low order; the script mixes the first crop of every pair) and *replaces* it in two more SwAV
    losses: with ``c'`` the crops with ``c'_2j = mixed_outputs[j]`` and ``q'_i = sinkhorn(c'_i)`` (a
    replaced large crop's codes are the mixture's own Sinkhorn codes, from ``queue_outputs[i]`` too)::

        L_ori        = S(c;  q)
        L_unmix      = S(c'; q')
        L_unmix_flip = S(c'; q'')     q''_0,b = q'_0,p(b)  (crop 0's codes in partner order), q''_i = q'_i else
        loss = L_ori + lam * L_unmix + (1 - lam) * L_unmix_flip
             = S(c; q) + S(c'; q~)    q~_0,b = lam_b q'_0,b + (1 - lam_b) q'_0,p(b)   (CE is linear in q)

    so the other crops predict the lam-mix of the mixture's codes and of its partner's mixture's codes, and
    the mixture predicts the other large crops' plain codes; ``n = H + L`` (mixtures replace crops, they do not
    add). Only crop 0's codes are reordered, as in the script. The script draws one lam per batch and mixes
    with the reversed batch (the default partner); a [B] ``mix_lam`` is the per-row reading of the same
    formula: row b of L_unmix has weight ``lam_b`` and row b of L_unmix_flip ``1 - lam_b``, which gives
    ``q~`` above (a constant [B] lam equals the scalar). ``lam = 1`` (or ``partner = identity``, e.g. B = 1
    with the reversed batch) gives ``S(c; q) + S(c'; q')``: plain SwAV plus plain SwAV with crop 0 replaced
    by the mixture (twice plain SwAV when the mixture is crop 0). Differences from the script: its three loss
    calls each push the batch into its queue, so its L_unmix and L_unmix_flip see the queue advanced by one
    and two batches (with the mixture's embeddings); here the three terms share ``queue_outputs``. It takes
    codes of ``crops_for_assign`` (default the first two crops); here of every large crop (the same for
    H = 2). It reverses the mixture's scores before its Sinkhorn; Sinkhorn commutes with a row permutation,
    so reordering the codes is the same (for a partner that is not a permutation, the codes are reordered).

    Args:
        high_resolution_outputs: list of H >= 1 tensors [B, K] (scores of the large crops).
        low_resolution_outputs: list of tensors [B, K] (scores of the small crops), may be empty.
        queue_outputs: None, or a list of at least H tensors [Bq, K] (scores of queued features).
        temperature: softmax temperature (> 0).
        sinkhorn_iterations, sinkhorn_epsilon: see :func:`sinkhorn`.
        distributed: Sinkhorn over every rank's samples (lightly's ``sinkhorn_gather_distributed``).
        mixed_outputs: None or a list of M tensors [B, K], the Un-Mix mixtures' scores.
        mix_lam: required with ``mixed_outputs``: weight of sample b itself in mixture b, a float or a [B]
            float tensor, in [0, 1] (shared by every mixture).
        mix_partner: [B] integer tensor, the partner row of mixture b in [0, B) (local batch); default
            ``B - 1 - b`` (Un-Mix's reversed batch).
        mix_form: ``"soft"`` (the mixture as an extra crop predicting mixed codes) or ``"authors"`` (the
            mixture replaces crop 0 in two more SwAV losses, as main_swav_unmix.py); see above. With
            ``"authors"`` at most ``ceil((H + L) / 2)`` mixtures, and H + L >= 2.

    Returns:
        0-dim loss in fp32 (fp64 when any input is fp64).
    """
    if not isinstance(mix_form, str) or mix_form not in SWAV_MIX_FORMS:
        raise ValueError(f"mix_form must be 'soft' (the mixture as an extra crop predicting mixed codes) or "
                         f"'authors' (Un-Mix's main_swav_unmix.py), got {mix_form!r}")
    high = V.check_tensor_list("high_resolution_outputs", high_resolution_outputs)
    low = V.check_tensor_list("low_resolution_outputs", low_resolution_outputs)
    if len(high) == 0:
        raise ValueError("high_resolution_outputs must hold at least one tensor")
    crops = high + low
    names = [f"high_resolution_outputs[{i}]" for i in range(len(high))]
    names += [f"low_resolution_outputs[{i}]" for i in range(len(low))]
    for name, t in zip(names, crops):
        _check_scores(name, t)
        if t.shape != crops[0].shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but high_resolution_outputs[0] has shape "
                             f"{tuple(crops[0].shape)}; every crop must be [B, K]")
    V.check_same_device(list(zip(names, crops)))
    mixed, mix_lam, mix_partner = _check_swav_mix_args(mixed_outputs, mix_lam, mix_partner, crops[0])
    if mix_form == "authors" and mixed:
        if len(crops) < 2:
            raise ValueError("mix_form='authors': the mixture replaces crop 0 in the Un-Mix terms, so "
                             "high_resolution_outputs + low_resolution_outputs must hold at least two crops, got "
                             f"{len(crops)}")
        if len(mixed) > (len(crops) + 1) // 2:
            raise ValueError(f"mix_form='authors': mixed_outputs[j] replaces crop 2j, so {len(crops)} crops take "
                             f"at most {(len(crops) + 1) // 2} mixtures, got {len(mixed)}")
    if len(crops) + len(mixed) < 2:
        raise ValueError("swav_loss needs at least two crops in total (high_resolution_outputs + "
                         "low_resolution_outputs + mixed_outputs) to swap predictions")
    if queue_outputs is not None:
        queue_outputs = V.check_tensor_list("queue_outputs", queue_outputs)
        if len(queue_outputs) < len(high):
            raise ValueError(f"queue_outputs must hold one tensor per high-resolution crop ({len(high)}), "
                             f"got {len(queue_outputs)}")
        for i in range(len(high)):
            _check_scores(f"queue_outputs[{i}]", queue_outputs[i])
            if queue_outputs[i].shape[1] != crops[0].shape[1]:
                raise ValueError(f"queue_outputs[{i}] must have {crops[0].shape[1]} columns (prototypes), got "
                                 f"shape {tuple(queue_outputs[i].shape)}")
            if queue_outputs[i].device != crops[0].device:
                raise ValueError(f"queue_outputs[{i}] is on {queue_outputs[i].device} but "
                                 f"high_resolution_outputs[0] is on {crops[0].device}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    _check_sinkhorn_args(sinkhorn_epsilon, sinkhorn_iterations, "sinkhorn_epsilon", "sinkhorn_iterations")

    acc = torch.float64 if any(t.dtype == torch.float64 for t in crops + mixed) else torch.float32
    b = crops[0].shape[0]
    n_high = len(high)

    def codes_of(i: int, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes [B, K] (acc) of the batch scores ``scores`` in large-crop slot i (its queue appended)."""
        with torch.no_grad():
            outputs = scores.detach()
            if queue_outputs is not None:
                outputs = torch.cat((outputs.to(acc), queue_outputs[i].detach().to(acc)))
            # The op directly: every argument is checked above, and non-finite scores are caught (and named)
            # by the one deferred check at the end instead of one host sync per crop.
            return sinkhorn_codes(outputs, float(sinkhorn_epsilon), int(sinkhorn_iterations),
                                  distributed=bool(distributed), backend=backend)[:b].to(acc)

    codes = [codes_of(i, high[i]) for i in range(n_high)]
    # One (scores, target) pair per score tensor; each is one fused cross-entropy (its logsumexp computed once,
    # the log-softmax never stored, see _soft_target_ce). Targets are sums of codes (CE is linear in
    # them); a None target (a lone large crop: only a code source) is skipped.
    total_codes, targets = _swav_targets(codes, len(crops), n_high)
    pairs = list(zip(crops, targets))
    n_crops = len(crops)
    if mixed:
        lam = mix_lam.to(acc).unsqueeze(1)
        if mix_form == "soft":
            # each mixture is one more crop, predicting the mixed codes mix(q_i) of every large crop, summed
            mixed_target = lam * total_codes + (1 - lam) * total_codes[mix_partner]
            pairs += [(z, mixed_target) for z in mixed]
            n_crops += len(mixed)
        else:
            # The authors' lam L_unmix + (1 - lam) L_unmix_flip: one more SwAV loss over the crops with crop 2j
            # replaced by mixture j (a large slot's codes are then the mixture's own), whose crop-0 codes are
            # lam-mixed with themselves in partner order (L_unmix_flip's reversed codes; CE is linear in q).
            swapped = {2 * j: z for j, z in enumerate(mixed)}
            codes_u = [codes_of(i, swapped[i]) if i in swapped else codes[i] for i in range(n_high)]
            codes_u[0] = lam * codes_u[0] + (1 - lam) * codes_u[0][mix_partner]
            _, targets_u = _swav_targets(codes_u, len(crops), n_high)
            for v, t in enumerate(targets_u):
                if v in swapped:
                    pairs.append((swapped[v], t))
                else:  # the same scores in both losses: one cross-entropy against the summed targets
                    pairs[v] = (crops[v], _add_targets(pairs[v][1], t))
    loss = crops[0].new_zeros((), dtype=acc)
    for z, target in pairs:
        if target is not None:
            # backend= forces Sinkhorn's backend; the cross-entropy follows it where it can run (swav_ce_backend)
            loss = loss + _soft_target_ce(z, target, float(temperature),
                                                        backend=swav_ce_backend(backend, z, target))
    loss = loss / (b * (n_crops - 1) * n_high)
    value_inputs = list(zip(names, crops))
    if queue_outputs is not None:
        value_inputs += [(f"queue_outputs[{i}]", queue_outputs[i]) for i in range(n_high)]
    value_inputs += [(f"mixed_outputs[{j}]", z) for j, z in enumerate(mixed)]
    V.deferred_value_check(loss, None, value_inputs, what="the SwAV loss",
                           hint="the scores overflowed at this temperature (scores of huge magnitude?)")
    return loss


# ------------------------------------------------------------------------------------ Hallucinator (SPEC §2)
def _check_param(name: str, t, shape: tuple, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} ({what}), got {list(t.shape)}")


def _lam_vector(lam, b: int, x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """lam as the op's [B] tensor in the accumulation dtype ``acc``, detached."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a float or a floating tensor, got {lam.dtype}")
        if lam.dim() == 0:
            lam = lam.reshape(1).expand(b)
        elif lam.dim() != 1 or lam.shape[0] != b:
            raise ValueError(f"lam must be a float, a 0-dim tensor or a [B] = [{b}] tensor (one value per row of "
                             f"x), got shape {tuple(lam.shape)}")
        if lam.device != x.device:
            raise ValueError(f"lam is on {lam.device} but x is on {x.device}")
        return lam.detach().to(acc).contiguous()
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    return torch.full((b,), float(lam), dtype=acc, device=x.device)


def hallucinate(
    x: torch.Tensor,
    k: torch.Tensor,
    lam: Union[float, torch.Tensor],
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The Hallucinator's generator (Wu et al. 2023, SPEC §2) as one fused op: ``h = MLP([x, x + lam (x - k)])``.

    ``MLP = Linear(2D, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, D)``, weights in nn.Linear layout. The
    extrapolation is folded into the first layer (``[x, x~] W1^T = x W1a^T + x~ W1b^T``): the [B, 2D] concat is
    never built.

    Args:
        x: [B, D] anchors (float16/bfloat16/float32/float64); k: [B, D] their positives.
        lam: the extrapolation strength, a float, a 0-dim tensor or a [B] tensor (per-sample). Not
            differentiated (the reference samples it from U(0, 0.1)).
        w1: [H, 2D], b1: [H]; w2: [H, H], b2: [H]; w3: [D, H], b3: [D].
        backend: see augcl.dispatch.

    Every tensor is computed in one dtype: the autocast dtype when autocast is on for x's device (what
    ``nn.Linear`` does there), else the widest dtype among x, k and the weights. Accumulation is fp32 (fp64 for
    fp64). Gradients flow to x, k and every weight and bias (in their own dtypes).

    Returns:
        h [B, D] in the compute dtype.

    Non-finite x, k, lam or weights raise ValueError naming them (one deferred check after the op, one host
    sync; ``augcl.set_checks(False)`` skips it, as does ``torch.compile`` tracing).
    """
    return _hallucinate(x, k, lam, (w1, b1, w2, b2, w3, b3), backend=backend, check=True)


_HALLUCINATE_WEIGHT_NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")


def _hallucinate(x, k, lam, weights, *, backend=None, check=True, weight_names=_HALLUCINATE_WEIGHT_NAMES):
    """:func:`hallucinate` with the weights as a tuple; ``check=False`` skips the deferred value check (the
    Hallucinator losses fold it into their own single check); ``weight_names`` name the weights in errors."""
    w1, b1, w2, b2, w3, b3 = weights
    n_w1, n_b1, n_w2, n_b2, n_w3, n_b3 = weight_names
    V.check_matrix("x", x)
    b, d = x.shape
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k must be a torch.Tensor, got {type(k).__name__}")
    if tuple(k.shape) != (b, d):
        raise ValueError(f"k must have the shape of x {list(x.shape)} (one positive per anchor), got {list(k.shape)}")
    V.check_matrix("k", k, rows=b, dim=d)
    if not isinstance(w1, torch.Tensor):
        raise TypeError(f"{n_w1} must be a torch.Tensor, got {type(w1).__name__}")
    if w1.dim() != 2 or w1.shape[1] != 2 * d or w1.shape[0] == 0:
        raise ValueError(f"{n_w1} must have shape [H, 2D] = [H, {2 * d}] (the generator's input is [x, x~], twice "
                         f"x's width D = {d}), got {list(w1.shape)}")
    hdim = w1.shape[0]
    _check_param(n_w1, w1, (hdim, 2 * d), "[H, 2D]")
    _check_param(n_b1, b1, (hdim,), "[H]")
    _check_param(n_w2, w2, (hdim, hdim), "[H, H]")
    _check_param(n_b2, b2, (hdim,), "[H]")
    _check_param(n_w3, w3, (d, hdim), "[D, H]")
    _check_param(n_b3, b3, (d,), "[D]")
    named = [("x", x), ("k", k)] + list(zip(weight_names, weights))
    V.check_same_device(named)
    tensors = [t for _, t in named]
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = V.common_dtype(tensors)
    lam_vec = _lam_vector(lam, b, x, torch.float64 if dtype == torch.float64 else torch.float32)
    args = [t.to(dtype) for t in tensors]
    xc, kc, w1c, b1c, w2c, b2c, w3c, b3c = args
    with torch.autocast(x.device.type, enabled=False):
        h = hallucinate_op(xc, kc, lam_vec, w1c, b1c, w2c, b2c, w3c, b3c, backend=backend)
    if check:
        V.deferred_value_check(h, None, named[:2] + [("lam", lam_vec)] + named[2:], what="the hallucinated h",
                               hint="the generator MLP overflowed (inputs or weights of huge magnitude, or "
                                    "beyond the float16 range?)")
    return h


from augcl.nn.hallucinator import (  # noqa: E402  (defined with the module; re-exported here)
    hallucinate_moco_loss,
    hallucinate_simclr_loss,
    hallucinate_simsiam_loss,
)


# ---------------------------------------------------------------------------------------------------- Un-Mix
# SPEC §3. mix_images is the lower-level op (explicit lam, modes, boxes, partners); unmix draws them.

UNMIX_PAIRINGS = ("reverse", "roll", "random")


def _check_images(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _MIX_INPUT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32, float64 or uint8, got {x.dtype}")
    if x.numel() == 0:
        # An empty batch is an error, as everywhere in augcl: nothing can be mixed and it is almost surely a bug.
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); B, C, H and W must all be >= 1")


def _check_row_tensor(name: str, t, shape, kind: str, device: torch.device) -> torch.Tensor:
    """``t`` must be a tensor of ``shape`` on ``device``; kind: 'float' (-> fp32), 'bool', 'int' (-> int64)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(t.shape)}")
    if kind == "float":
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor (float32), got {t.dtype}")
    elif kind == "bool":
        if t.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor (True = CutMix row), got {t.dtype}")
    elif t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor (int64), got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; move them to one device")
    if kind == "float":
        return t.to(torch.float32).contiguous()
    if kind == "int":
        return t.to(torch.int64).contiguous()
    return t.contiguous()


def _channel_stats(name: str, values, channels: int, dtype: torch.dtype, device: torch.device,
                   nonzero: bool) -> Optional[torch.Tensor]:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.shape[0] != channels:
            raise ValueError(f"{name} must hold {channels} values (one per channel), got shape {tuple(values.shape)}")
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got {values.dtype}")
        t = values.to(device=device, dtype=dtype).contiguous()
        if not torch.compiler.is_compiling():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite, got {values.tolist()}")
            if nonzero and bool((t == 0).any()):
                raise ValueError(f"{name} must not contain 0 (it divides), got {values.tolist()}")
        return t
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be None, a sequence of {channels} floats or a tensor, got "
                        f"{type(values).__name__}")
    vals = list(values)
    if len(vals) != channels:
        raise ValueError(f"{name} must hold {channels} values (one per channel), got {len(vals)}")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must hold numbers, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {vals}")
        if nonzero and v == 0:
            raise ValueError(f"{name} must not contain 0 (it divides), got {vals}")
    return torch.tensor(vals, dtype=dtype, device=device)


def _check_mix_values(B: int, H: int, W: int, lam: torch.Tensor, boxes: torch.Tensor,
                      partner: torch.Tensor) -> None:
    """Value checks of mix_images' arguments, in one host sync (skipped while torch.compile traces): partner
    indices out of range would read out of bounds in the kernels, so this is not switched off by set_checks.
    x itself is not scanned for non-finite values: the mix is a memory-bound pass that reads x once, and a scan
    would read it a second time (1.5x the traffic); a NaN pixel propagates to its own mixtures, elementwise, and
    the contrastive losses downstream name non-finite embeddings."""
    if torch.compiler.is_compiling():
        return
    y0, y1, x0, x1 = boxes.unbind(1)
    bad_partner = (partner < 0) | (partner >= B)
    bad_box = (y0 < 0) | (y0 > y1) | (y1 > H) | (x0 < 0) | (x0 > x1) | (x1 > W)
    bad_lam = ~torch.isfinite(lam)
    bad_range = (lam < 0) | (lam > 1)
    flags = torch.stack((bad_partner.any(), bad_box.any(), bad_lam.any(), bad_range.any())).tolist()
    if flags[0]:
        raise V.IndexArgumentError(f"partner has values in [{int(partner.min())}, {int(partner.max())}] but must "
                                   f"lie in [0, {B}) (the batch size)")
    if flags[1]:
        row = int(bad_box.nonzero()[0, 0])
        raise ValueError(f"boxes[{row}] = {boxes[row].tolist()} is not a box (y0, y1, x0, x1) with "
                         f"0 <= y0 <= y1 <= {H} and 0 <= x0 <= x1 <= {W}")
    if flags[2]:
        raise ValueError("lam contains non-finite values (NaN or Inf)")
    if flags[3]:
        raise ValueError(f"lam must lie in [0, 1] (the weight of x[i] itself), got values in "
                         f"[{float(lam.min())}, {float(lam.max())}]")


def _check_out_dtype(out_dtype) -> None:
    if out_dtype is not None and out_dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be None, float16, bfloat16, float32 or float64, got {out_dtype}")


def mix_images(
    x: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    *,
    mean=None,
    std=None,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Mix every image with a partner image of the same batch, by mixup or CutMix per row (Un-Mix, SPEC §3), with
    optional fused uint8 -> float conversion and mean/std normalisation, in one pass.

    Row i, partner p = partner[i]: mixup rows give ``lam[i] * x[i] + (1 - lam[i]) * x[p]``; CutMix rows give
    ``x[p]`` inside ``boxes[i]`` and ``x[i]`` outside. Then ``v / 255`` for uint8 x, then ``(v - mean[c]) / std[c]``.

    Args:
        x: [B, C, H, W] float16/bfloat16/float32/float64 or uint8, NCHW-contiguous or channels_last (other strides
            are accepted and copied first).
        lam: [B] float (converted to float32) in [0, 1]: weight of x[i] on mixup rows; ignored on CutMix rows
            (but still checked).
        cutmix: [B] bool: True = CutMix row, False = mixup row.
        boxes: [B, 4] integer (y0, y1, x0, x1), half-open, with 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W;
            ignored on mixup rows (but still checked).
        partner: [B] integer in [0, B): the row each row mixes with (any index vector).
        mean, std: None, or C numbers / a [C] tensor (torchvision convention: in [0, 1] units for uint8 x).
            A missing mean is 0 and a missing std is 1; std must not contain 0.
        out_dtype: float16/bfloat16/float32/float64; default x.dtype for float x, float32 for uint8.
        backend: see augcl.dispatch.

    Returns:
        [B, C, H, W] in ``out_dtype``, channels_last when x is (see augcl.reference.unmix.mix_memory_format).
        Differentiable w.r.t. floating x (the mix is linear); the backward is deterministic.

    Raises:
        TypeError / ValueError naming the argument; ``augcl._validate.IndexArgumentError`` (an IndexError and a
        ValueError) for a partner out of range. B == 0 (or any empty dimension) is a ValueError. All value checks
        share one host sync. Non-finite values in x are not checked (that would read x twice): they propagate to
        the rows that mix them.
    """
    _check_images("x", x)
    _check_out_dtype(out_dtype)
    B, C, H, W = x.shape
    dev = x.device
    lam = _check_row_tensor("lam", lam, (B,), "float", dev)
    cutmix = _check_row_tensor("cutmix", cutmix, (B,), "bool", dev)
    boxes = _check_row_tensor("boxes", boxes, (B, 4), "int", dev)
    partner = _check_row_tensor("partner", partner, (B,), "int", dev)
    _check_mix_values(B, H, W, lam, boxes, partner)
    acc = _mix_acc_dtype(x.dtype, _mix_out_dtype(x.dtype, out_dtype))
    mean_t = _channel_stats("mean", mean, C, acc, dev, nonzero=False)
    std_t = _channel_stats("std", std, C, acc, dev, nonzero=True)
    return _mix_images_op(x, lam, cutmix, boxes, partner, mean_t, std_t, out_dtype, backend=backend)


def _check_unmix_args(alpha, prob_mixup, per_sample, pairing) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be finite and > 0 (the Beta(alpha, alpha) parameter), got {alpha}")
    if isinstance(prob_mixup, bool) or not isinstance(prob_mixup, (int, float)):
        raise TypeError(f"prob_mixup must be a number, got {type(prob_mixup).__name__}")
    if not (0.0 <= prob_mixup <= 1.0):
        raise ValueError(f"prob_mixup must lie in [0, 1], got {prob_mixup}")
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {type(per_sample).__name__}")
    if pairing not in UNMIX_PAIRINGS:
        raise ValueError(f"pairing must be one of {UNMIX_PAIRINGS}, got {pairing!r}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # A CUDA generator reports cuda:0 while a tensor may say cuda:0 or (from torch.device("cuda")) no index.
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    ia = a.index if a.index is not None else torch.cuda.current_device() if a.type == "cuda" else 0
    ib = b.index if b.index is not None else torch.cuda.current_device() if b.type == "cuda" else 0
    return ia == ib


def unmix_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    alpha: float = 1.0,
    prob_mixup: float = 0.5,
    per_sample: bool = False,
    pairing: str = "reverse",
    generator: Optional[torch.Generator] = None,
    device=None,
):
    """Draw Un-Mix's random parameters without mixing (the input of :func:`mix_images`).

    With n = batch_size if ``per_sample`` else 1 draws, from ``generator`` (or the default generator of
    ``device``), in this order: lam ~ Beta(alpha, alpha) [n] (float64, as the first coordinate of a Dirichlet),
    u ~ U[0, 1) [n] with mixup where u < prob_mixup, box centres cy ~ U{0..H-1} [n] then cx ~ U{0..W-1} [n], then
    (pairing="random") a permutation. Per batch, the one draw is shared by every row (the Un-Mix reference).
    CutMix box: side ``int(H * sqrt(1 - lam))`` by ``int(W * sqrt(1 - lam))``, rows
    ``[clip(cy - cut_h // 2), clip(cy + cut_h // 2))`` (the CutMix reference's convention), same for columns.

    Args:
        batch_size, height, width: ints >= 1.
        alpha: Beta parameter, finite > 0 (default 1.0).
        prob_mixup: chance of mixup (else CutMix), in [0, 1] (default 0.5).
        per_sample: one draw per row instead of one per batch (default False).
        pairing: "reverse" (partner B-1-i, Un-Mix), "roll" (partner (i-1) mod B, torchvision.transforms.v2
            MixUp/CutMix, whose ``batch.roll(1, 0)`` puts row i-1 at i), "random" (a permutation).
        generator: a torch.Generator on ``device`` for reproducible draws.
        device: where the tensors go (default: the generator's device, else cpu).

    Returns:
        (lam [B] float32 (the drawn lam), cutmix [B] bool, boxes [B, 4] int64 (y0, y1, x0, x1), partner [B] int64,
        lam_effective [B] float32: the weight of x itself, i.e. lam on mixup rows and the exact kept pixel
        fraction 1 - box_area / (H * W) on CutMix rows).
    """
    for name, v in (("batch_size", batch_size), ("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    _check_unmix_args(alpha, prob_mixup, per_sample, pairing)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:  # torch's message lists every device type
        raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', got "
                         f"{device!r}") from e
    if generator is not None and not _same_device(generator.device, device):
        raise ValueError(f"generator is on {generator.device} but the images are on {device}; "
                         f"create it with torch.Generator(device={str(device)!r})")
    B, H, W = batch_size, height, width
    n = B if per_sample else 1
    conc = torch.full((n, 2), float(alpha), dtype=torch.float64, device=device)
    lam64 = torch._sample_dirichlet(conc, generator=generator)[:, 0]
    is_mixup = torch.rand(n, generator=generator, dtype=torch.float64, device=device) < prob_mixup
    cy = torch.randint(0, H, (n,), generator=generator, device=device)
    cx = torch.randint(0, W, (n,), generator=generator, device=device)
    if pairing == "random":
        partner = torch.randperm(B, generator=generator, device=device)
    elif pairing == "roll":
        partner = (torch.arange(B, device=device) - 1) % B
    else:
        partner = torch.arange(B - 1, -1, -1, device=device)
    if not per_sample:
        lam64, is_mixup, cy, cx = (t.expand(B) for t in (lam64, is_mixup, cy, cx))
    cut = torch.sqrt(1.0 - lam64)
    cut_h = torch.floor(H * cut).to(torch.int64)
    cut_w = torch.floor(W * cut).to(torch.int64)
    y0 = (cy - cut_h // 2).clamp(0, H)
    y1 = (cy + cut_h // 2).clamp(0, H)
    x0 = (cx - cut_w // 2).clamp(0, W)
    x1 = (cx + cut_w // 2).clamp(0, W)
    boxes = torch.stack((y0, y1, x0, x1), dim=1).contiguous()
    cutmix = (~is_mixup).contiguous()
    lam = lam64.to(torch.float32).contiguous()
    kept = 1.0 - ((y1 - y0) * (x1 - x0)).to(torch.float64) / (H * W)
    lam_effective = torch.where(cutmix, kept, lam.to(torch.float64)).to(torch.float32)
    return lam, cutmix, boxes, partner.contiguous(), lam_effective


def unmix(
    x: torch.Tensor,
    *,
    alpha: float = 1.0,
    prob_mixup: float = 0.5,
    per_sample: bool = False,
    pairing: str = "reverse",
    generator: Optional[torch.Generator] = None,
    mean=None,
    std=None,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
):
    """Un-Mix's image mixture (Shen et al., "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual
    Representation Learning", AAAI 2022; szq0214/Un-Mix): draw the parameters with :func:`unmix_params` and mix
    with :func:`mix_images`.

    Args:
        x: [B, C, H, W] float16/bfloat16/float32/float64 or uint8 (NCHW or channels_last).
        alpha, prob_mixup, per_sample, pairing, generator: see :func:`unmix_params` (the generator must be on
            x's device).
        mean, std, out_dtype, backend: see :func:`mix_images`.

    Returns:
        (mixed [B, C, H, W], lam [B] float32: the effective weight of x[i] itself (CutMix-corrected to the exact
        kept pixel fraction), partner [B] int64: the row each row was mixed with). With pairing="reverse" and odd
        B, the middle row pairs with itself (and so is returned unchanged, up to the conversion).
    """
    _check_images("x", x)
    _check_unmix_args(alpha, prob_mixup, per_sample, pairing)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and not _same_device(generator.device, x.device):
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}; "
                         f"create it with torch.Generator(device={str(x.device)!r})")
    B, _, H, W = x.shape
    lam, cutmix, boxes, partner, lam_eff = unmix_params(
        B, H, W, alpha=alpha, prob_mixup=prob_mixup, per_sample=per_sample, pairing=pairing,
        generator=generator, device=x.device)
    mixed = mix_images(x, lam, cutmix, boxes, partner, mean=mean, std=std, out_dtype=out_dtype, backend=backend)
    return mixed, lam_eff, partner


# ------------------------------------------------------------------------------------- Un-Mix loss (SPEC §3)
# Defined in augcl/nn/unmix.py (next to the UnMix module), re-exported here: imported last, so augcl.nn.unmix
# sees this module's names already bound.
from augcl.nn.unmix import unmix_info_nce, unmix_nt_xent  # noqa: E402

__all__ += ["unmix_info_nce", "unmix_nt_xent"]
