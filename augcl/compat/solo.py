"""solo-learn shims: the loss functions of ``solo.losses`` and ``solo.utils.sinkhorn_knopp.SinkhornKnopp`` on
augcl's ops. Swap ``from solo.losses import ...`` for ``from augcl.compat.solo import ...``.

* :func:`simclr_loss_func` (``solo/losses/simclr.py``): the fused SupCon op's parts (its logsumexp, and for two
  views its class-sum positive term); any number of views, supervised labels, distributed (global batch).
* :func:`mocov2plus_loss_func` (``solo/losses/mocov2plus.py``): the fused InfoNCE op.
* :func:`swav_loss_func` (``solo/losses/swav.py``): the fused soft-target cross-entropy of
  :func:`augcl.functional.swav_loss` (one logsumexp per view, the log-softmax never stored).
* :class:`SinkhornKnopp` (``solo/utils/sinkhorn_knopp.py``): :func:`augcl.functional.sinkhorn`, the log-domain
  Sinkhorn-Knopp (C++ / Triton / reference), finite where solo's ``exp(Q / epsilon)`` overflows.
* :func:`byol_loss_func`, :func:`simsiam_loss_func` (``solo/losses/byol.py``, ``simsiam.py``): solo's cosine
  losses, restated in PyTorch (there is nothing to fuse) with augcl's input checks.

Same names, arguments, defaults and results (values and gradients) as solo-learn (repository
``vturrisi/solo-learn``, main branch; its SwAV, Sinkhorn, BYOL and SimSiam code is the same as in the 1.0.2 wheel,
which tests/test_swav_compat_solo.py also runs against when it is installed); solo-learn itself is not imported. The
contrastive losses take an extra keyword-only ``backend=`` (None = automatic), and so does
:class:`SinkhornKnopp`'s constructor. Where the results differ (solo's NaN/inf, ``ZeroDivisionError`` or
``IndexError`` become an error naming the argument; codes are fp32 for fp16/bf16 scores) the docstring says so.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl._numerics import acc_dtype, l2_normalize
from augcl.functional.contrastive import info_nce
from augcl.functional.supcon import class_ids, supcon_rows
from augcl.functional.swav import soft_target_ce
from augcl.ops.contrastive import positive_dots
from augcl.ops.sinkhorn import sinkhorn_codes

__all__ = ["simclr_loss_func", "mocov2plus_loss_func", "swav_loss_func", "SinkhornKnopp", "byol_loss_func",
           "simsiam_loss_func"]


def check_peer_labels(name: str, labels, rows: int, device: torch.device) -> Tensor:
    """Labels as solo-learn and pytorch-metric-learning take them: a real [rows] tensor on ``device`` (float
    labels compare by value, as there; bool becomes int64). Package-internal (augcl.compat.pml uses it too)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"{name} must have shape [{rows}] (one per embedding row), got {tuple(labels.shape)}")
    if labels.is_complex():
        raise TypeError(f"{name} must be a real tensor, got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
    return labels.to(torch.long) if labels.dtype == torch.bool else labels


def same_label_members(query_labels: Tensor, ref_labels: Tensor) -> Tuple[Tensor, Tensor]:
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

    ``z`` [N, D] projected features of all views (not normalised: this normalises), ``indexes`` [N] (any real
    dtype, compared by equality). Row i's positives P(i) are the other rows with ``indexes[j] == indexes[i]``, its
    negatives the rows with a different index, and (solo-learn's formula, ``s = cos / temperature``)::

        loss_i = -log( sum_{p in P(i)} exp(s_ip) / sum_{j != i} exp(s_ij) )
               = logsumexp_{j != i} s_ij - logsumexp_{p in P(i)} s_ip,          loss = mean_i loss_i

    — the log of a *sum* over the positives. Computed by :func:`augcl.functional.supcon`'s parts: the first term
    is SupCon's fused logsumexp (each row's own column excluded, no [N, N] matrix). With one positive per row
    (2 views of each id) the two logsumexps of a row are SupCon's terms and solo's loss *is* SupCon's
    (``augcl.functional.supcon(z, indexes)``, the positive dot from the class sums). With several positives it
    is not (SupCon averages the positives' logits outside the log, :func:`augcl.functional.nt_xent_multiview`
    inside it); the second term is then the logsumexp of the P positive logits, O(N * P * D), differentiated by
    autograd.

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
    indexes = check_peer_labels("indexes", indexes, n, z.device)
    rank, world = world_info()
    zn = l2_normalize(z)
    cands = gather_with_grad(zn) if world > 1 else zn
    all_indexes = gather_with_grad(indexes) if world > 1 else indexes
    rows = torch.arange(n, device=z.device) + rank * n
    ids = class_ids(all_indexes.unsqueeze(0)).reshape(-1)
    scale = V.scale_from_temperature(temperature, zn)
    loss_rows, num_pos, lse = supcon_rows(zn, cands, ids.index_select(0, rows), ids, rows, scale, backend)
    fewest, most = torch.aminmax(num_pos)
    fewest, most = torch.stack([fewest, most]).tolist()  # one sync
    if fewest < 1:
        bad = int(torch.nonzero(num_pos < 1)[0, 0])
        raise ValueError(f"simclr_loss_func: row {bad} (index {indexes[bad].item()}) has no positive: its index "
                         "appears once in the (gathered) batch; solo-learn's loss would be inf")
    if most > 1:
        acc = acc_dtype(zn.dtype)
        members, _ = same_label_members(indexes, all_indexes)
        pos_idx = _compact(torch.where(members == rows.unsqueeze(1), torch.full_like(members, -1), members))
        logits = scale.to(acc) * positive_dots(zn, cands, pos_idx, acc)  # [N, P]; -1 pads read row 0
        neg_inf = torch.full((), float("-inf"), dtype=acc, device=z.device)
        loss_rows = lse - torch.logsumexp(torch.where(pos_idx >= 0, logits, neg_inf), dim=1)
    loss = loss_rows.mean()
    V.deferred_value_check(loss, scale, [("z", z)], what="the SimCLR loss")
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


# ------------------------------------------------------------------------------------------------------ SwAV
def _view_list(name: str, seq) -> list:
    """solo indexes ``preds`` / ``assignments`` by view: a list of [B, K] tensors, or a [V, B, K] tensor."""
    if isinstance(seq, Tensor):
        if seq.dim() != 3:
            raise TypeError(f"{name} must be a list of [B, K] tensors (one per view) or a [V, B, K] tensor, got a "
                            f"single Tensor of shape {tuple(seq.shape)}")
        return list(seq.unbind(0))
    return V.check_tensor_list(name, seq)


def _sums_of_others(a: list) -> list:
    """``[sum_{u != v} a_u for v]`` from prefix and suffix sums: O(V) adds, and no ``total - a_v`` cancellation
    (for V = 2 it is the other view, exactly)."""
    n = len(a)
    prefix, suffix = [None] * (n + 1), [None] * (n + 1)
    for v in range(n):
        prefix[v + 1] = a[v] if prefix[v] is None else prefix[v] + a[v]
    for v in range(n - 1, -1, -1):
        suffix[v] = a[v] if suffix[v + 1] is None else a[v] + suffix[v + 1]
    return [suffix[1] if v == 0 else prefix[v] if v == n - 1 else prefix[v] + suffix[v + 1] for v in range(n)]


def swav_loss_func(preds, assignments, temperature: Union[float, Tensor] = 0.1) -> Tensor:
    """solo-learn's SwAV swapped-prediction loss (Caron et al. 2020, https://arxiv.org/abs/2006.09882).

    ``preds``: V >= 2 prototype scores [B, K], one per view; ``assignments``: their codes [B, K] (at least V;
    solo pairs ``assignments[v]`` with ``preds[v]`` and ignores any beyond V). Either may also be a [V, B, K]
    tensor. Over every ordered pair of distinct views (solo's formula)::

        loss = 1 / (V (V - 1)) * sum_{v1 != v2} -mean_b sum_k a_v1[b, k] * log_softmax(p_v2[b] / temperature)_k

    Cross-entropy is linear in its target, so view v2's V - 1 terms are one soft-target cross-entropy of
    ``p_v2`` against ``sum_{v1 != v2} a_v1``: V fused calls (augcl.functional's ``_soft_target_ce``,
    the one behind :func:`augcl.functional.swav_loss`: one logsumexp per row, the log-softmax never stored, the
    backward recomputes the softmax) instead of solo's V (V - 1) log-softmaxes. The codes need not sum to 1.
    Gradients flow to ``preds``, to ``assignments`` when they require grad (solo does not detach them; codes
    from :class:`SinkhornKnopp` carry none) and to a tensor ``temperature``.

    Accumulated in fp32 (fp64 when any input is fp64); returns that dtype. fp16/bf16 scores are upcast first
    (solo, outside autocast, runs its log-softmax in fp16). Differences: fewer than 2 views (solo divides by
    zero), fewer assignments than views (solo's IndexError), shapes other than every tensor equal to
    ``preds[0]`` (solo broadcasts), non-finite inputs and a temperature <= 0 (solo returns NaN, or a meaningless
    number for a negative one) raise ValueError naming the argument; a loss that overflows although every input
    is finite (scores ~1e37) raises FloatingPointError where solo returns inf.
    """
    preds = _view_list("preds", preds)
    assignments = _view_list("assignments", assignments)
    n = len(preds)
    if n < 2:
        raise ValueError(f"preds must hold at least 2 views (SwAV predicts each view's codes from the others), "
                         f"got {n}; solo-learn's loss divides by zero there")
    if len(assignments) < n:
        raise ValueError(f"assignments must hold one [B, K] tensor per view of preds ({n}), got {len(assignments)}")
    assignments = assignments[:n]
    named = [(f"preds[{v}]", t) for v, t in enumerate(preds)] + \
            [(f"assignments[{v}]", t) for v, t in enumerate(assignments)]
    ref = preds[0]
    for name, t in named:
        V.check_scores(name, t)
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but preds[0] has shape {tuple(ref.shape)}; every "
                             "view's scores and codes must be [B, K]")
    V.check_same_device(named)
    acc = torch.float64 if any(t.dtype == torch.float64 for _, t in named) else torch.float32
    scale = None
    if isinstance(temperature, Tensor):
        if temperature.numel() == 1 and temperature.device != ref.device:
            raise ValueError(f"temperature is on {temperature.device} but preds[0] is on {ref.device}")
        scale = V.scale_from_temperature(temperature, ref)  # checks it; its sign goes to the deferred check
        t_tensor = temperature.reshape(()).to(acc)  # divided by, as solo (differentiable)
        t_fused = 1.0
    else:
        V.check_temperature(temperature)
        t_fused = float(temperature)
    targets = _sums_of_others([a.to(acc) for a in assignments])
    loss = ref.new_zeros((), dtype=acc)
    for p, target in zip(preds, targets):
        z = p if scale is None else p.to(acc) / t_tensor
        loss = loss + soft_target_ce(z, target, t_fused)
    loss = loss / (ref.shape[0] * n * (n - 1))
    V.deferred_value_check(loss, scale, named, what="the SwAV loss",
                           hint="the scores overflowed at this temperature (scores of huge magnitude?)")
    return loss


class SinkhornKnopp(torch.nn.Module):
    """solo-learn's ``SinkhornKnopp`` (SwAV's codes, ``solo/utils/sinkhorn_knopp.py``) on
    :func:`augcl.functional.sinkhorn`: ``forward(Q)`` maps scores [B, K] to codes [B, K], without gradient.

    Same iteration as solo (``Q = exp(Q / epsilon)``, normalise the total, then ``num_iters`` times per
    prototype and per sample; every row of the codes sums to 1 when ``num_iters >= 1``), computed in the log
    domain by the C++ / Triton / reference kernels (``backend=``, None = automatic). On inputs where solo's
    ``exp`` does not overflow the codes agree to rounding; where it overflows (``Q / epsilon > 88`` in fp32,
    e.g. cosine scores with ``epsilon=0.01``; ``> 11`` for fp16 ``Q`` outside autocast) solo returns NaN codes
    and these are finite, the codes of the exact computation.

    Distributed: like solo, the total and per-prototype sums are all-reduced whenever torch.distributed is
    initialised with more than one rank, whatever ``world_size`` says; solo uses ``world_size`` only in a
    factor ``B = batch * world_size`` that cancels after one iteration (kept here for ``num_iters=0``, where
    the codes are ``B * softmax`` over all entries; ranks are assumed to hold equal batches, as solo does).
    Multi-rank runs use the reference backend (the kernels are single-process).

    Differences: codes are fp32 for fp16/bf16 ``Q`` (solo's dtype is ``Q``'s outside autocast; under CUDA
    autocast its ``exp`` already returns fp32), fp64 for fp64; non-finite scores raise ValueError (solo returns
    NaN); arguments are validated at construction and again at each call (solo's attributes are public).
    """

    def __init__(self, num_iters: int = 3, epsilon: float = 0.05, world_size: int = 1, *,
                 backend: Optional[str] = None):
        super().__init__()
        V.check_sinkhorn_args(epsilon, num_iters, "epsilon", "num_iters")
        V.check_int("world_size", world_size, lo=1)
        self.num_iters = num_iters
        self.epsilon = epsilon
        self.world_size = world_size
        self.backend = backend

    @torch.no_grad()
    def forward(self, Q: Tensor) -> Tensor:
        V.check_sinkhorn_args(self.epsilon, self.num_iters, "epsilon", "num_iters")
        V.check_int("world_size", self.world_size, lo=1)
        V.check_scores("Q", Q)
        V.check_finite("Q", Q)
        world = world_info()[1]
        codes = sinkhorn_codes(Q, float(self.epsilon), int(self.num_iters), distributed=world > 1,
                               backend=self.backend)
        if self.num_iters == 0 and self.world_size != world:
            codes = codes * (self.world_size / world)  # solo's B = batch * world_size (ours: batch * ranks)
        return codes

    def extra_repr(self) -> str:
        return f"num_iters={self.num_iters}, epsilon={self.epsilon}, world_size={self.world_size}"


# ------------------------------------------------------------------------------------------ BYOL, SimSiam
def _cosine_mean(p, z, simplified: bool, what: str) -> Tensor:
    """Mean over rows of cos(p_i, z_i), ``z`` detached (solo's two spellings: ``F.cosine_similarity``
    (eps 1e-8 on the norms) when ``simplified``, else ``F.normalize`` (eps 1e-12) and a dot product)."""
    V.check_matrix("p", p)
    V.check_matrix("z", z, rows=p.shape[0], dim=p.shape[1])
    V.check_same_device([("p", p), ("z", z)])
    if not isinstance(simplified, bool):
        raise TypeError(f"simplified must be a bool, got {type(simplified).__name__}")
    z = z.detach()
    if simplified:
        cos = F.cosine_similarity(p, z, dim=-1)
    else:
        cos = (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=1)
    mean = cos.mean()
    V.deferred_value_check(mean, None, [("p", p), ("z", z)], what=what, hint="the norms overflowed")
    return mean


def byol_loss_func(p: Tensor, z: Tensor, simplified: bool = True) -> Tensor:
    """solo-learn's BYOL loss (Grill et al. 2020, https://arxiv.org/abs/2006.07733): ``2 - 2 * mean_i
    cos(p_i, z_i)`` with ``z`` (the momentum branch) detached. ``p``, ``z`` [N, D]; ``simplified`` picks solo's
    spelling of the cosine (the values agree except for rows of norm ~0). Returns ``p``'s dtype (promoted with
    ``z``'s), as solo. Non-finite inputs raise ValueError naming the argument (solo returns NaN)."""
    return 2 - 2 * _cosine_mean(p, z, simplified, "the BYOL loss")


def simsiam_loss_func(p: Tensor, z: Tensor, simplified: bool = True) -> Tensor:
    """solo-learn's SimSiam loss (Chen & He 2021, https://arxiv.org/abs/2011.10566): ``-mean_i cos(p_i, z_i)``
    with ``z`` detached (the stop-gradient). ``p``, ``z`` [N, D]; see :func:`byol_loss_func`."""
    return -_cosine_mean(p, z, simplified, "the SimSiam loss")
