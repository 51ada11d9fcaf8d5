"""solo-learn shims: ``solo.losses.simclr_loss_func`` and ``solo.losses.mocov2plus_loss_func`` on augcl's ops.

Same names, arguments, defaults and results (values and gradients) as solo-learn's functions (repository
``vturrisi/solo-learn``, ``solo/losses/simclr.py`` and ``solo/losses/mocov2plus.py``); solo-learn itself is not
imported. Each takes an extra keyword-only ``backend=`` (None = automatic).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl.functional import _contrastive_loss, info_nce
from augcl.reference.contrastive import acc_dtype

__all__ = ["simclr_loss_func", "mocov2plus_loss_func"]


def _check_labels(name: str, labels, rows: int, device: torch.device) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"{name} must have shape [{rows}] (one per embedding row), got {tuple(labels.shape)}")
    if labels.is_complex():
        raise TypeError(f"{name} must be a real tensor, got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
    return labels.to(torch.long) if labels.dtype == torch.bool else labels


def _same_label_members(query_labels: Tensor, ref_labels: Tensor) -> Tuple[Tensor, Tensor]:
    """For each query label, the ref rows with an equal label, ascending: ``(members [Nq, W], count [Nq])``
    with -1 padding, W = the largest group. Sort + binary search: O((Nq + Nr) log Nr), no [Nq, Nr] mask."""
    ref_sorted, order = torch.sort(ref_labels, stable=True)
    query_labels = query_labels.to(ref_sorted.dtype)
    start = torch.searchsorted(ref_sorted, query_labels, side="left")
    count = torch.searchsorted(ref_sorted, query_labels, side="right") - start
    width = int(count.max()) if count.numel() else 0
    slots = torch.arange(width, device=query_labels.device)
    cols = (start.unsqueeze(1) + slots).clamp(max=max(ref_labels.shape[0] - 1, 0))
    valid = slots.unsqueeze(0) < count.unsqueeze(1)
    members = torch.where(valid, order[cols], torch.full_like(cols, -1))
    return members, count


def _compact(idx: Tensor) -> Tensor:
    """Move the -1 padding of each row to the end and drop all-padding columns (valid entries stay >= 0)."""
    idx = torch.sort(idx, dim=1, descending=True).values
    width = int((idx >= 0).sum(1).max()) if idx.numel() else 0
    return idx[:, :max(width, 1)]


def simclr_loss_func(
    z: Tensor,
    indexes: Tensor,
    temperature: Union[float, Tensor] = 0.1,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """solo-learn's SimCLR loss (Chen et al. 2020, https://arxiv.org/abs/2002.05709), any number of views,
    unsupervised (``indexes`` = sample ids) or supervised (``indexes`` = class labels, SupCon-style).

    ``z`` [N, D] projected features of all views (not normalised: this normalises), ``indexes`` [N]. Row i's
    positives P(i) are the other rows with ``indexes[j] == indexes[i]``, its negatives the rows with a different
    index, and (solo-learn's formula, ``s = cos / temperature``)::

        loss_i = -log( sum_{p in P(i)} exp(s_ip) / sum_{j != i} exp(s_ij) ),   loss = mean_i loss_i

    — the log of a *sum* over the positives. With one positive per row (2 views) this is the usual NT-Xent.
    With several positives it is not the soft-target average ``-(1/|P|) sum_p log softmax_ip`` of
    :func:`augcl.functional.nt_xent_multiview`; it is reproduced exactly here: with ``q_ip = softmax_{p in P(i)}
    (s_ip)``, ``log sum_p exp(s_ip) = sum_p q_ip s_ip + H(q_i)`` (H the entropy), so
    ``loss_i = [lse_i - sum_p q_ip s_ip] - H(q_i)``: the soft-target op with weights ``q`` (held constant)
    minus the constant ``H(q_i)``. By the envelope theorem the gradient of the bracket with ``q`` held constant
    is the exact gradient of solo's loss (w.r.t. ``z`` and a tensor ``temperature``), so values and gradients
    match for any number of views. Only the P positive similarities per row are computed for ``q``
    (O(N * P * D)); the logsumexp is the fused kernel.

    Distributed (torch.distributed initialised, W > 1): like solo-learn's current ``full_gather`` version,
    the result is the mean over the *global* batch of W*N rows, the same value on every rank, and the
    gradient of the local rows is ``W x d(global mean)/dz_local`` (what solo's all-reduced gather produces; DDP's
    averaging of parameter gradients then yields the gradient of the global mean). Internally each rank
    computes only its N rows against the gathered candidates; the value is all-reduced.

    Differences: a row whose index appears only once (no positive; solo returns inf/NaN) raises ValueError.
    Returns fp32 (fp64 for fp64 ``z``).
    """
    V.check_matrix("z", z)
    V.check_temperature(temperature)
    if isinstance(temperature, Tensor) and temperature.device != z.device:
        raise ValueError(f"temperature is on {temperature.device} but z is on {z.device}")
    n = z.shape[0]
    indexes = _check_labels("indexes", indexes, n, z.device)
    rank, world = world_info()
    zn = F.normalize(z, dim=1)
    cands = gather_with_grad(zn) if world > 1 else zn
    all_indexes = gather_with_grad(indexes) if world > 1 else indexes
    rows = torch.arange(n, device=z.device) + rank * n
    members, count = _same_label_members(indexes, all_indexes)
    if bool((count < 2).any()):
        bad = int(torch.nonzero(count < 2)[0, 0])
        raise ValueError(f"simclr_loss_func: row {bad} (index {indexes[bad].item()}) has no positive: its index "
                         "appears once in the (gathered) batch; solo-learn's loss would be inf")
    pos_idx = _compact(torch.where(members == rows.unsqueeze(1), torch.full_like(members, -1), members))
    if pos_idx.shape[1] == 1:
        loss_rows = _contrastive_loss(zn, cands, pos_idx, temperature=temperature, excl_idx=rows,
                                      normalize=False, reduction="none", backend=backend, value_inputs=[("z", z)])
    else:
        with torch.no_grad():
            acc = torch.promote_types(acc_dtype(zn.dtype), torch.float32)
            t = temperature.detach().reshape(()) if isinstance(temperature, Tensor) else temperature
            valid = pos_idx >= 0
            pos_rows = cands.detach()[pos_idx.clamp(min=0)].to(acc)  # [N, P, D]
            s = torch.einsum("nd,npd->np", zn.detach().to(acc), pos_rows) / t
            s = s.masked_fill(~valid, float("-inf"))
            q = torch.softmax(s, dim=1)
            entropy = -(q * torch.log(q.clamp_min(torch.finfo(acc).tiny))).masked_fill(~valid, 0).sum(1)
        loss_rows = _contrastive_loss(zn, cands, pos_idx, q, temperature=temperature, excl_idx=rows,
                                      normalize=False, reduction="none", backend=backend, value_inputs=[("z", z)])
        loss_rows = loss_rows - entropy.to(loss_rows.dtype)
    loss = loss_rows.mean()
    if world > 1:
        total = loss.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        loss = loss + (total / world - loss.detach())  # value: the global mean; gradient: the local one
    return loss


def mocov2plus_loss_func(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    temperature: Union[float, Tensor] = 0.1,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """solo-learn's MoCo v2+ loss (He et al. 2020 / Chen et al. 2020, https://arxiv.org/abs/2003.04297).

    ``query``, ``key`` [N, D]; ``queue`` [D, K] (solo-learn's layout: features first). Like solo-learn it does
    NOT normalise anything (solo's model normalises ``z`` before the call and keeps normalised keys in the
    queue): ``loss = mean_i -log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.queue[:, j]/t)) )``.
    Gradients flow to ``query``, ``key`` (and ``queue`` if it requires grad). Returns fp32 (fp64 for fp64).
    """
    V.check_matrix("query", query)
    if not isinstance(queue, Tensor):
        raise TypeError(f"queue must be a torch.Tensor [D, K] (solo-learn's layout), got {type(queue).__name__}")
    if queue.dim() != 2:
        raise ValueError(f"queue must be a 2-D tensor [D, K] (solo-learn's layout), got shape {tuple(queue.shape)}")
    if queue.shape[0] != query.shape[1]:
        raise ValueError(f"queue must be [D, K] with D = {query.shape[1]} (the query width), got shape "
                         f"{tuple(queue.shape)}")
    return info_nce(query, key, queue.t(), temperature, normalize=False, key_negatives=False, backend=backend)
