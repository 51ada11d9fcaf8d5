"""pytorch-metric-learning shims: ``NTXentLoss`` and ``SupConLoss`` with pml's call interface, computed by augcl's
fused ops (pytorch-metric-learning 2.9.0's semantics, default distance and reducer).

``pml.losses.SelfSupervisedLoss`` accepts a wrapped loss by its class *name* and calls it as
``loss(embeddings, labels)`` (symmetric, the default) or
``loss(embeddings=..., labels=..., ref_emb=..., ref_labels=...)``; both classes answer both, so
``SelfSupervisedLoss(augcl.compat.pml.NTXentLoss())`` works (and so does ``SupConLoss``, which pml lists among
its supported losses). pytorch-metric-learning is not imported.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from augcl import _validate as V
from augcl.compat.solo import check_peer_labels, same_label_members
from augcl._numerics import l2_normalize
from augcl.functional.contrastive import contrastive_loss_named
from augcl.functional.supcon import class_ids, supcon_rows

__all__ = ["NTXentLoss", "SupConLoss"]


def _pml_inputs(cls: str, embeddings, labels, indices_tuple, ref_emb, ref_labels):
    """pml's ``forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)`` arguments, checked (errors name
    them): returns ``(embeddings, labels, ref_emb, ref_labels, same_object, value_inputs)`` with ref_emb / ref_labels
    defaulted to the batch, ``same_object`` pml's identity test (the reference labels ARE the labels: the diagonal
    a == p is then no pair) and ``value_inputs`` the (name, tensor) list of the deferred non-finite check."""
    if indices_tuple is not None:
        raise ValueError(f"augcl.compat.pml.{cls}: indices_tuple (miner output) is not supported; pass labels")
    if labels is None:
        raise ValueError(f"augcl.compat.pml.{cls}: labels are required (pml: labels or indices_tuple)")
    V.check_matrix("embeddings", embeddings)
    n = embeddings.shape[0]
    # pml removes the diagonal (a == p) iff the reference labels are the very same object as labels.
    same_object = ref_labels is None or ref_labels is labels
    labels = check_peer_labels("labels", labels, n, embeddings.device)
    if ref_emb is None:
        ref_emb = embeddings
    V.check_matrix("ref_emb", ref_emb, dim=embeddings.shape[1])
    V.check_same_device([("embeddings", embeddings), ("ref_emb", ref_emb)])
    nr = ref_emb.shape[0]
    if same_object and nr != n:
        raise ValueError(f"ref_emb has {nr} rows but labels {n}: pass ref_labels for a reference set of "
                         "another size")
    if ref_labels is None:
        ref_labels = labels
    ref_labels = check_peer_labels("ref_labels", ref_labels, nr, embeddings.device)
    if V.checks_enabled() and not torch.compiler.is_compiling():
        # NaN labels equal nothing (not even themselves): they would silently drop every pair of their rows.
        for name, lab in (("labels", labels), ("ref_labels", ref_labels)):
            if lab.is_floating_point() and not bool(torch.isfinite(lab).all()):
                raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    value_inputs = [("embeddings", embeddings)]
    if ref_emb is not embeddings:
        value_inputs.append(("ref_emb", ref_emb))
    return embeddings, labels, ref_emb, ref_labels, same_object, value_inputs


def _configure(loss: nn.Module, temperature, backend: Optional[str], kwargs: dict) -> None:
    """The constructor both losses share: only ``temperature`` and ``backend``; any other pml option (distance,
    reducer, regularizers, ...) is a TypeError naming the class."""
    if kwargs:
        raise TypeError(f"augcl.compat.pml.{type(loss).__name__} supports only temperature= and backend=; pml "
                        f"options {sorted(kwargs)} (distance, reducer, regularizers...) are not supported")
    V.check_temperature(temperature)  # a float must be finite and > 0, a tensor have one element
    loss.temperature = temperature
    loss.backend = backend


class NTXentLoss(nn.Module):
    """pytorch-metric-learning's ``NTXentLoss`` (NT-Xent / InfoNCE per positive pair; Chen et al. 2020,
    https://arxiv.org/abs/2002.05709), same values and gradients, default distance (cosine) and reducer (mean).

    Args:
        temperature: default 0.07 (pml's). A float > 0 or a one-element tensor.
        backend: augcl backend (keyword only; None = automatic).

    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``: embeddings [N, D],
    labels [N]; ref_emb [Nr, D] and ref_labels [Nr] default to embeddings / labels. pml's semantics: the pairs
    (a, p) with ``labels[a] == ref_labels[p]`` are positives — excluding ``p == a`` when the reference is the
    batch itself (``ref_labels`` omitted or the very same tensor object as ``labels``, pml's identity test) —
    and the pairs with different labels are negatives. Every positive pair is one row::

        loss_ap = -log( exp(s_ap) / (exp(s_ap) + sum_{n: label differs} exp(s_an)) ),   s = cos / temperature

    (other positives of ``a`` are neither in the numerator nor the denominator), and the loss is the mean over
    all positive pairs (pml's MeanReducer, reduction type "pos_pair"). With no positive or no negative pair
    (or at most one of each) the result is pml's zero loss ``(embeddings * 0).sum()``.

    With ``SelfSupervisedLoss`` (symmetric): embeddings = [emb; ref], labels = [arange(B); arange(B)]: each of
    the 2B rows has its other view as the single positive and the 2B - 2 others as negatives: this is
    :func:`augcl.functional.nt_xent` at temperature 0.07.

    Differences: pml computes ``-log(ratio + tiny)`` (tiny = the dtype's smallest normal, ~1e-38 in fp32), which
    only matters when a ratio underflows; ``indices_tuple`` (miners), distances, reducers and regularizers are
    not supported (ValueError / TypeError); fp16/bf16 inputs give an fp32 loss.
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.07, *, backend: Optional[str] = None, **kwargs):
        super().__init__()
        _configure(self, temperature, backend, kwargs)

    def forward(
        self,
        embeddings: Tensor,
        labels: Optional[Tensor] = None,
        indices_tuple=None,
        ref_emb: Optional[Tensor] = None,
        ref_labels: Optional[Tensor] = None,
    ) -> Tensor:
        embeddings, labels, ref_emb, ref_labels, same_object, value_inputs = _pml_inputs(
            "NTXentLoss", embeddings, labels, indices_tuple, ref_emb, ref_labels)
        n, nr = embeddings.shape[0], ref_emb.shape[0]

        members, count = same_label_members(labels, ref_labels)  # [N, W] same-label ref rows, ascending
        slot_ok = members >= 0
        if same_object:
            slot_ok &= members != torch.arange(n, device=members.device).unsqueeze(1)
        n_pos = int(slot_ok.sum())
        n_neg = int((nr - count).sum())
        if n_pos == 0 or n_neg == 0 or (n_pos <= 1 and n_neg <= 1):
            zero = torch.sum(embeddings * 0)
            V.deferred_value_check(zero, None, value_inputs, what="the zero loss")
            return zero
        a, k = torch.nonzero(slot_ok, as_tuple=True)  # row-major: pml's torch.where(matches) order
        p = members[a, k]
        # each pair's row sees its own positive and the anchor's negatives: exclude the anchor's other
        # same-label columns (including the anchor itself when the reference is the batch)
        excl = members[a].clone()
        excl[torch.arange(a.shape[0], device=a.device), k] = -1
        return contrastive_loss_named(embeddings[a], ref_emb, p, temperature=self.temperature, excl_idx=excl,
                                 backend=self.backend, value_inputs=value_inputs)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class SupConLoss(nn.Module):
    """pytorch-metric-learning's ``SupConLoss`` (supervised contrastive, Khosla et al. 2020,
    https://arxiv.org/abs/2004.11362), same values and gradients, default distance (cosine) and reducer
    (``AvgNonZeroReducer``), computed by :func:`augcl.functional.supcon`'s parts (the fused logsumexp and class
    sums: no [N, Nr] matrix).

    Args:
        temperature: default 0.1 (pml's). A float > 0 or a one-element tensor.
        backend: augcl backend (keyword only; None = automatic).

    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``: embeddings [N, D],
    labels [N] (any real dtype, compared by equality); ref_emb [Nr, D] and ref_labels [Nr] default to embeddings /
    labels. pml's pairs: ``(a, p)`` with ``labels[a] == ref_labels[p]`` are positives, pairs with different labels
    negatives, and when the reference is the batch (``ref_labels`` omitted or the very same tensor object as
    ``labels``, pml's identity test) the diagonal ``a == p`` is neither. With ``s = cos / temperature``, row a's
    loss is::

        loss_a = logsumexp_{j: (a, j) a pair} s_aj  -  mean_{p: (a, p) positive} s_ap

    (0 for a row without positive), and the result is the mean of the row losses that are > 0 (pml's
    ``AvgNonZeroReducer``: rows without positive drop out, and so would a row whose loss rounds to 0 or below).
    With no positive or no negative pair in the batch (or at most one of each), or no row loss > 0, the result is
    pml's zero loss ``(embeddings * 0).sum()``.

    Differences: ``indices_tuple`` (miners), distances, reducers and regularizers are not supported (ValueError /
    TypeError); fp16/bf16 inputs give an fp32 loss (pml computes in the input dtype); non-finite inputs raise
    ValueError naming the argument. Values and gradients agree with pml to rounding, except that a row whose loss
    is within rounding of 0 may be counted by one and not the other (the reducer's threshold is a discontinuity).
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.1, *, backend: Optional[str] = None, **kwargs):
        super().__init__()
        _configure(self, temperature, backend, kwargs)

    def forward(
        self,
        embeddings: Tensor,
        labels: Optional[Tensor] = None,
        indices_tuple=None,
        ref_emb: Optional[Tensor] = None,
        ref_labels: Optional[Tensor] = None,
    ) -> Tensor:
        embeddings, labels, ref_emb, ref_labels, same_object, value_inputs = _pml_inputs(
            "SupConLoss", embeddings, labels, indices_tuple, ref_emb, ref_labels)
        n, nr = embeddings.shape[0], ref_emb.shape[0]
        dtype = V.common_dtype([embeddings, ref_emb])
        e = l2_normalize(embeddings.to(dtype))
        r = e if ref_emb is embeddings else l2_normalize(ref_emb.to(dtype))
        scale = V.scale_from_temperature(self.temperature, e)
        # one id space for both label sets: ids of [ref_labels; labels] (class sums are taken over the ref rows)
        ids = class_ids(torch.cat([ref_labels, labels]).unsqueeze(0)).reshape(-1)
        self_idx = torch.arange(n, device=e.device) if same_object else None
        loss_rows, num_pos, _ = supcon_rows(e, r, ids[nr:], ids[:nr], self_idx, scale, self.backend, num_ids=nr + n)
        # pml's early exits, from the pair counts: a row's negatives are the ref rows of another label
        num_neg = nr - num_pos - (1 if same_object else 0)
        above = loss_rows > 0
        num_above = above.sum()
        n_pos, n_neg, n_above = torch.stack([num_pos.sum(), num_neg.sum(), num_above]).tolist()  # one sync
        if n_pos == 0 or n_neg == 0 or (n_pos <= 1 and n_neg <= 1) or n_above == 0:
            zero = torch.sum(embeddings * 0)
            # the temperature is checked too: a NaN one makes every row loss NaN, none "> 0", hence this branch
            V.deferred_value_check(zero, scale, value_inputs, what="the zero loss")
            return zero
        loss = torch.where(above, loss_rows, torch.zeros_like(loss_rows)).sum() / num_above
        V.deferred_value_check(loss, scale, value_inputs, what="the SupCon loss")
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
