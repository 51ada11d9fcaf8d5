"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"):
Sinkhorn-Knopp codes and the swapped-prediction loss, with Un-Mix mixtures as an option.

``sinkhorn`` runs the ``sinkhorn`` op (augcl/ops/sinkhorn.py, log domain, no gradient); each crop's
cross-entropy against its (summed) target codes is one call of the fused ``soft_ce`` op (augcl/ops/soft_ce.py).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from augcl import _validate as V
from augcl.ops.sinkhorn import sinkhorn_codes
from augcl.ops.soft_ce import soft_ce_rows, swav_ce_backend

__all__ = ["sinkhorn", "swav_loss", "SWAV_MIX_FORMS"]


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
    V.check_scores("scores", scores)
    V.check_sinkhorn_args(epsilon, iterations)
    V.check_finite("scores", scores)
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
        V.check_scores(f"mixed_outputs[{j}]", t)
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
    if V.inspectable(mix_partner, mix_lam):
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


def soft_target_ce(z: torch.Tensor, t: torch.Tensor, temperature: float, backend: Optional[str] = None
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
    the *mixed codes* of each large crop, the soft target of Un-Mix (applied to codes)::

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
    temperature = V.check_float_temperature(temperature)
    V.check_sinkhorn_args(sinkhorn_epsilon, sinkhorn_iterations, "sinkhorn_epsilon", "sinkhorn_iterations")
    high, crops, names, queue_outputs = _check_swav_crops(high_resolution_outputs, low_resolution_outputs,
                                                          queue_outputs)
    mixed, mix_lam, mix_partner = _check_swav_mix_args(mixed_outputs, mix_lam, mix_partner, crops[0])
    _check_swav_mix_form(mix_form, crops, mixed)

    acc = torch.float64 if any(t.dtype == torch.float64 for t in crops + mixed) else torch.float32
    b, n_high = crops[0].shape[0], len(high)

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

    pairs, n_crops = _swav_pairs(codes_of, crops, n_high, mixed, mix_lam, mix_partner, mix_form, acc)
    loss = crops[0].new_zeros((), dtype=acc)
    for z, target in pairs:
        if target is not None:
            # backend= forces Sinkhorn's backend; the cross-entropy follows it where it can run (swav_ce_backend)
            loss = loss + soft_target_ce(z, target, temperature, backend=swav_ce_backend(backend, z, target))
    loss = loss / (b * (n_crops - 1) * n_high)
    value_inputs = list(zip(names, crops))
    if queue_outputs is not None:
        value_inputs += [(f"queue_outputs[{i}]", queue_outputs[i]) for i in range(n_high)]
    value_inputs += [(f"mixed_outputs[{j}]", z) for j, z in enumerate(mixed)]
    V.deferred_value_check(loss, None, value_inputs, what="the SwAV loss",
                           hint="the scores overflowed at this temperature (scores of huge magnitude?)")
    return loss


def _check_swav_crops(high_resolution_outputs, low_resolution_outputs, queue_outputs):
    """Validate the crops of :func:`swav_loss`; returns (high, crops = high + low, their names, queue_outputs)."""
    high = V.check_tensor_list("high_resolution_outputs", high_resolution_outputs)
    low = V.check_tensor_list("low_resolution_outputs", low_resolution_outputs)
    if len(high) == 0:
        raise ValueError("high_resolution_outputs must hold at least one tensor")
    crops = high + low
    names = [f"high_resolution_outputs[{i}]" for i in range(len(high))]
    names += [f"low_resolution_outputs[{i}]" for i in range(len(low))]
    for name, t in zip(names, crops):
        V.check_scores(name, t)
        if t.shape != crops[0].shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but high_resolution_outputs[0] has shape "
                             f"{tuple(crops[0].shape)}; every crop must be [B, K]")
    V.check_same_device(list(zip(names, crops)))
    if queue_outputs is not None:
        queue_outputs = V.check_tensor_list("queue_outputs", queue_outputs)
        if len(queue_outputs) < len(high):
            raise ValueError(f"queue_outputs must hold one tensor per high-resolution crop ({len(high)}), "
                             f"got {len(queue_outputs)}")
        for i in range(len(high)):
            V.check_scores(f"queue_outputs[{i}]", queue_outputs[i])
            if queue_outputs[i].shape[1] != crops[0].shape[1]:
                raise ValueError(f"queue_outputs[{i}] must have {crops[0].shape[1]} columns (prototypes), got "
                                 f"shape {tuple(queue_outputs[i].shape)}")
            if queue_outputs[i].device != crops[0].device:
                raise ValueError(f"queue_outputs[{i}] is on {queue_outputs[i].device} but "
                                 f"high_resolution_outputs[0] is on {crops[0].device}")
    return high, crops, names, queue_outputs


def _check_swav_mix_form(mix_form, crops, mixed) -> None:
    if not isinstance(mix_form, str) or mix_form not in SWAV_MIX_FORMS:
        raise ValueError(f"mix_form must be 'soft' (the mixture as an extra crop predicting mixed codes) or "
                         f"'authors' (Un-Mix's main_swav_unmix.py), got {mix_form!r}")
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


def _swav_pairs(codes_of, crops, n_high, mixed, mix_lam, mix_partner, mix_form, acc):
    """The (scores, target codes) pairs of :func:`swav_loss`, one fused cross-entropy each, and the crop count
    its mean divides by. Targets are sums of codes (CE is linear in them); a None target (a lone large crop: only
    a code source) is skipped."""
    codes = [codes_of(i, crops[i]) for i in range(n_high)]
    total_codes, targets = _swav_targets(codes, len(crops), n_high)
    pairs = list(zip(crops, targets))
    n_crops = len(crops)
    if not mixed:
        return pairs, n_crops
    lam = mix_lam.to(acc).unsqueeze(1)
    if mix_form == "soft":
        # each mixture is one more crop, predicting the mixed codes mix(q_i) of every large crop, summed
        mixed_target = lam * total_codes + (1 - lam) * total_codes[mix_partner]
        return pairs + [(z, mixed_target) for z in mixed], n_crops + len(mixed)
    # The authors' lam L_unmix + (1 - lam) L_unmix_flip: one more SwAV loss over the crops with crop 2j replaced by
    # mixture j (a large slot's codes are then the mixture's own), whose crop-0 codes are lam-mixed with
    # themselves in partner order (L_unmix_flip's reversed codes; CE is linear in q).
    swapped = {2 * j: z for j, z in enumerate(mixed)}
    codes_u = [codes_of(i, swapped[i]) if i in swapped else codes[i] for i in range(n_high)]
    codes_u[0] = lam * codes_u[0] + (1 - lam) * codes_u[0][mix_partner]
    _, targets_u = _swav_targets(codes_u, len(crops), n_high)
    for v, t in enumerate(targets_u):
        if v in swapped:
            pairs.append((swapped[v], t))
        else:  # the same scores in both losses: one cross-entropy against the summed targets
            pairs[v] = (crops[v], _add_targets(pairs[v][1], t))
    return pairs, n_crops
