"""pytorch-metric-learning shim: ``NTXentLoss`` with pml's call interface, computed by augcl's fused op.

``pml.losses.SelfSupervisedLoss`` accepts a wrapped loss by its class *name* and calls it as
``loss(embeddings, labels)`` (symmetric, the default) or
``loss(embeddings=..., labels=..., ref_emb=..., ref_labels=...)``; this class answers both, so
``SelfSupervisedLoss(augcl.compat.pml.NTXentLoss())`` works. pytorch-metric-learning is not imported.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from augcl import _validate as V
from augcl.compat.solo import _check_labels, _same_label_members
from augcl.functional.contrastive import contrastive_loss_named

__all__ = ["NTXentLoss"]


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
        if kwargs:
            raise TypeError(f"augcl.compat.pml.NTXentLoss supports only temperature= and backend=; pml options "
                            f"{sorted(kwargs)} (distance, reducer, regularizers...) are not supported")
        V.check_temperature(temperature)  # a float must be finite and > 0, a tensor have one element
        self.temperature = temperature
        self.backend = backend

    def forward(
        self,
        embeddings: Tensor,
        labels: Optional[Tensor] = None,
        indices_tuple=None,
        ref_emb: Optional[Tensor] = None,
        ref_labels: Optional[Tensor] = None,
    ) -> Tensor:
        if indices_tuple is not None:
            raise ValueError("augcl.compat.pml.NTXentLoss: indices_tuple (miner output) is not "
                                      "supported; pass labels")
        if labels is None:
            raise ValueError("augcl.compat.pml.NTXentLoss: labels are required (pml: labels or indices_tuple)")
        V.check_matrix("embeddings", embeddings)
        n = embeddings.shape[0]
        # pml removes the diagonal (a == p) iff the reference labels are the very same object as labels.
        same_object = ref_labels is None or ref_labels is labels
        labels = _check_labels("labels", labels, n, embeddings.device)
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
        ref_labels = _check_labels("ref_labels", ref_labels, nr, embeddings.device)
        if V.checks_enabled() and not torch.compiler.is_compiling():
            # NaN labels equal nothing (not even themselves): they would silently drop every pair of their rows.
            for name, lab in (("labels", labels), ("ref_labels", ref_labels)):
                if lab.is_floating_point() and not bool(torch.isfinite(lab).all()):
                    raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
        value_inputs = [("embeddings", embeddings)]
        if ref_emb is not embeddings:
            value_inputs.append(("ref_emb", ref_emb))

        members, count = _same_label_members(labels, ref_labels)  # [N, W] same-label ref rows, ascending
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
