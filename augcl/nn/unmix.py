"""Un-Mix (Shen et al., "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual Representation Learning",
AAAI 2022; SPEC §3): the loss over image mixtures and an ``nn.Module`` that wraps mixing and loss.

A mixture row ``m_i = mix(x_i, x_{p_i})`` (``p = partner``, the reversed batch in the reference) carries the soft
target ``{key i: lam_i, key p_i: 1 - lam_i}``, with ``lam_i`` the (CutMix-corrected) weight of ``x_i``.

MoCo form (:func:`unmix_info_nce`), as ``UnMix_MoCo/.../builder.py`` and ``unmix_c10.py`` compute it::

    L = CE(q, k) + lam * CE(q_m, k) + (1 - lam) * CE(flip(q_m), k)

Each CE is MoCo's InfoNCE: the row's positive key against the queue. ``flip(q_m)``'s negative logits are a row
permutation of ``q_m``'s, so the reference's third [B, K] GEMM is redundant. Re-indexed per mixture row::

    mix_i = lam_i * CE_i(q_m -> k_i) + (1 - lam_i) * CE_i(q_m -> k_{p_i})

Both terms share the queue part of their denominator, ``N_i = logsumexp_j(q_m,i . queue_j / t)``, and differ only
in the positive's own logit: ``CE_i(q_m -> k) = logaddexp(N_i, s) - s`` with ``s = q_m,i . k / t``. So one pass of
the fused ``contrastive_lse`` op over ``[q; q_m]`` against the queue gives every denominator of the loss, and the
positive logits are O(B * D) row dots: two GEMM-sized passes (clean + mixture anchors, one launch), not three.

``form="soft"`` is SPEC §3's soft-target cross-entropy instead: one denominator per mixture row that contains
both positives, ``lse({k_i, k_{p_i}} U queue) - lam_i s_i - (1 - lam_i) s_{p_i}``, one call of the soft-target
contrastive op with ``pos_idx = (i, p_i)`` and weights ``(lam_i, 1 - lam_i)``. The two forms differ by each
positive's presence in the other term's denominator (a small difference with a large queue). With
``key_negatives=True`` (every key is a negative of every row) both positives sit in both denominators anyway and
the two forms are the same number; that case always takes the one soft-target call.

SimCLR form (:func:`unmix_nt_xent`): the Un-Mix repository has no SimCLR code; the formulation chosen here is
the MoCo form transcribed to NT-Xent, see its docstring.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl.ops.contrastive import contrastive_lse, contrastive_loss_rows
from augcl.reference.contrastive import acc_dtype

__all__ = ["unmix_info_nce", "unmix_nt_xent", "UnMix"]

Temperature = Union[float, Tensor]
Lam = Union[float, Tensor]
FORMS = ("reference", "soft")


# ----------------------------------------------------------------------------------------------- checks
def _check_lam(lam: Lam, rows: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``lam`` as a [rows] tensor (no gradient: the mixing weight is data, not a parameter)."""
    if isinstance(lam, Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a float or a floating tensor, got {lam.dtype}")
        if lam.dim() == 0 or lam.numel() == 1:
            lam = lam.reshape(()).expand(rows)
        if lam.dim() != 1 or lam.shape[0] != rows:
            raise ValueError(f"lam must be a number, a one-element tensor or a [{rows}] tensor, got shape "
                             f"{tuple(lam.shape)}")
        if lam.device != device:
            raise ValueError(f"lam is on {lam.device} but the embeddings are on {device}")
        lam = lam.detach().to(dtype)
    elif isinstance(lam, (int, float)) and not isinstance(lam, bool):
        lam = torch.full((rows,), float(lam), dtype=dtype, device=device)
    else:
        raise TypeError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    if V.checks_enabled() and not torch.compiler.is_compiling():
        if not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError("lam must lie in [0, 1] (the weight of each sample in its own mixture)")
    return lam


def _check_partner(partner: Optional[Tensor], rows: int, device: torch.device) -> Tensor:
    """``partner`` as [rows] int64; ``None`` = the reversed batch (``rows - 1 - i``), Un-Mix's pairing."""
    if partner is None:
        return torch.arange(rows - 1, -1, -1, device=device)
    if not isinstance(partner, Tensor):
        raise TypeError(f"partner must be a tensor of row indices or None, got {type(partner).__name__}")
    if partner.dtype.is_floating_point or partner.dtype == torch.bool or partner.is_complex():
        raise TypeError(f"partner must be an integer tensor, got {partner.dtype}")
    if partner.dim() != 1 or partner.shape[0] != rows:
        raise ValueError(f"partner must have shape [{rows}] (one partner row per mixture), got {tuple(partner.shape)}")
    if partner.device != device:
        raise ValueError(f"partner is on {partner.device} but the embeddings are on {device}")
    partner = partner.to(torch.long)
    if not torch.compiler.is_compiling() and rows > 0:
        lo, hi = int(partner.min()), int(partner.max())
        if lo < 0 or hi >= rows:
            raise V.IndexArgumentError(f"partner has values in [{lo}, {hi}] but must lie in [0, {rows})")
    return partner


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


# --------------------------------------------------------------------------------------------- MoCo form
def unmix_info_nce(
    q: Tensor,
    k: Tensor,
    q_mix: Tensor,
    lam: Lam,
    partner: Optional[Tensor] = None,
    queue: Optional[Tensor] = None,
    temperature: Temperature = 0.2,
    *,
    normalize: bool = True,
    key_negatives: bool = False,
    form: str = "reference",
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """Un-Mix loss, MoCo form: ``CE(q, k) + lam * CE(q_mix, k) + (1 - lam) * CE(flip(q_mix), k)``.

    Per row ``i``: ``loss_i = CE_i(q -> k_i) + lam_i CE_i(q_mix -> k_i) + (1 - lam_i) CE_i(q_mix -> k_{p_i})``
    (``p = partner``); each CE is MoCo's InfoNCE (positive key against the queue). See the module docstring for
    why no third GEMM is needed and for ``form``.

    Args:
        q: [B, D] queries of the clean view; k: [B, D] keys of the other view (momentum encoder; gradients flow
            if it requires grad); q_mix: [B, D] queries of the mixed images.
        lam: float or [B] tensor in [0, 1], weight of sample i in mixture i (``mix_images``/``unmix`` output).
        partner: [B] int64 partner rows (default None = reversed batch, Un-Mix's pairing).
        queue: [K, D] negative keys, used as stored (MoCo keeps them normalised), or None with
            ``key_negatives=True``.
        temperature: float > 0 or a one-element tensor (learnable). Default 0.2 (MoCo v2; the CIFAR script
            uses 0.1).
        normalize: L2-normalise q, k and q_mix (default True, as the reference does).
        key_negatives: every key is also a negative of every row (MoCo v3 style); keys are then gathered from
            every rank when ``gather_distributed``.
        form: "reference" (default: the reference code's three cross-entropies) or "soft" (one soft-target
            cross-entropy per mixture row, SPEC §3). Identical when ``key_negatives``.
        reduction: "mean" (default: mean over B of ``loss_i``, i.e. the reference's sum of three batch means),
            "sum" or "none" ([B]).
        backend: contrastive op backend (see augcl.dispatch).

    Returns the loss in fp32 (fp64 for fp64 inputs).
    """
    V.check_matrix("q", q)
    b, d = q.shape
    V.check_matrix("k", k, rows=b, dim=d)
    V.check_matrix("q_mix", q_mix, rows=b, dim=d)
    named = [("q", q), ("k", k), ("q_mix", q_mix)]
    if queue is not None:
        V.check_matrix("queue", queue, dim=d)
        named.append(("queue", queue))
    V.check_same_device(named)
    V.check_reduction(reduction)
    _check_form(form)
    if queue is None and not key_negatives:
        raise ValueError("unmix_info_nce: with queue=None and key_negatives=False no row has a negative; pass a "
                         "queue [K, D] or key_negatives=True")
    device = q.device
    dtype = V.common_dtype([t for _, t in named])
    acc = acc_dtype(dtype)
    lam = _check_lam(lam, b, device, acc)
    partner = _check_partner(partner, b, device)
    qq, kk, mm = q.to(dtype), k.to(dtype), q_mix.to(dtype)
    if normalize:
        qq, kk, mm = F.normalize(qq, dim=1), F.normalize(kk, dim=1), F.normalize(mm, dim=1)
    scale = V.scale_from_temperature(temperature, qq)
    anchors = torch.cat([qq, mm], dim=0)  # [2B, D]: clean rows, then mixture rows

    if form == "reference" and not key_negatives:
        # One lse pass over the queue for all 2B anchors (no positive: -1 pads); each CE then adds its own
        # positive logit with logaddexp. Exact, since in MoCo the other keys are not candidates.
        no_pos = torch.full((2 * b, 1), -1, dtype=torch.long, device=device)
        no_excl = torch.empty((2 * b, 0), dtype=torch.long, device=device)
        neg_lse = contrastive_lse(anchors, queue.to(dtype), scale, no_pos, no_excl, 0, backend)
        s = scale.to(acc)
        ka = kk.to(acc)
        s_qk = s * (qq.to(acc) * ka).sum(1)
        m_acc = mm.to(acc)
        s_mk = s * (m_acc * ka).sum(1)
        s_mp = s * (m_acc * ka.index_select(0, partner)).sum(1)  # index_select: see ops.contrastive.positive_dots
        neg_q, neg_m = neg_lse[:b], neg_lse[b:]
        rows = (torch.logaddexp(neg_q, s_qk) - s_qk
                + lam * (torch.logaddexp(neg_m, s_mk) - s_mk)
                + (1 - lam) * (torch.logaddexp(neg_m, s_mp) - s_mp))
        V.deferred_value_check(rows, scale, named)
        return V.reduce(rows, reduction)

    # One soft-target call: clean row i -> {k_i: 1}, mixture row i -> {k_i: lam_i, k_{p_i}: 1 - lam_i}.
    rank, world = world_info() if gather_distributed else (0, 1)
    keys = gather_with_grad(kk) if world > 1 else kk
    cands = keys if queue is None else torch.cat([keys, queue.to(dtype)], dim=0)
    own = torch.arange(b, device=device) + rank * b
    pad = torch.full_like(own, -1)
    pos_idx = torch.cat([torch.stack([own, pad], 1), torch.stack([own, partner + rank * b], 1)], 0)
    ones = torch.ones(b, dtype=acc, device=device)
    pos_weight = torch.cat([torch.stack([ones, torch.zeros_like(ones)], 1), torch.stack([lam, 1 - lam], 1)], 0)
    neg_start = 0 if key_negatives else keys.shape[0]
    excl = torch.empty((2 * b, 0), dtype=torch.long, device=device)
    loss_rows, _ = contrastive_loss_rows(anchors, cands, scale, pos_idx, pos_weight, excl, neg_start, backend)
    V.deferred_value_check(loss_rows, scale, named)
    return V.reduce(loss_rows[:b] + loss_rows[b:], reduction)


# ------------------------------------------------------------------------------------------- SimCLR form
def unmix_nt_xent(
    z1: Tensor,
    z2: Tensor,
    z_mix: Tensor,
    lam: Lam,
    partner: Optional[Tensor] = None,
    temperature: Temperature = 0.5,
    *,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """Un-Mix loss, SimCLR form: NT-Xent of the two views plus the mixture rows' soft-target term.

    Formulation (the reference repository has only the MoCo form; this is that form with SimCLR's candidate
    set): ``z_mix`` [B, D] embeds mixtures of view-1 images (``m_i = mix(x1_i, x1_{p_i})``). The candidates are
    the 2B clean rows ``Z = [z1; z2]``. Clean rows are NT-Xent's (positive: the other view; negatives: the other
    2B - 2 rows). Mixture row i is an extra anchor (never a candidate) with soft positives
    ``{z2_i: lam_i, z2_{p_i}: 1 - lam_i}`` (the other view, as MoCo's keys), the remaining rows of Z as negatives
    except ``z1_i`` and ``z1_{p_i}``: those embed the very images the mixture was made from, so they are neither
    fair negatives nor the other-view targets, and are excluded. Both mixture terms then share one denominator,
    so ``lam_i CE(m_i -> z2_i) + (1 - lam_i) CE(m_i -> z2_{p_i})`` is one soft-target cross-entropy, and the whole
    loss is one call of the contrastive op over the [3B, 2B] similarity (never materialised)::

        L = mean_{r < 2B} NT-Xent_r + mean_{i < B} [ lam_i CE_i(z_mix -> z2_i) + (1 - lam_i) CE_i(z_mix -> z2_{p_i}) ]

    Args:
        z1, z2: [B, D] the two clean views; z_mix: [B, D] the mixtures of view 1.
        lam: float or [B] in [0, 1]; partner: [B] int64 (default reversed batch).
        temperature: default 0.5 (lightly's NT-Xent).
        reduction: "mean" (the formula above), "sum" (sum of all 3B row losses) or "none" ([3B]: the 2B NT-Xent
            rows of [z1; z2], then the B mixture rows).
        gather_distributed: under torch.distributed, the candidates are the clean rows ``[z1; z2]`` of every rank
            (global negatives, gradients summed over ranks as in ``nt_xent``); the anchors, the partners (indices
            into this rank's batch: each rank mixes its own images) and the reduction stay local, so the mean of
            the ranks' losses is the single-process loss of the concatenated batch with partners mapped to
            global rows.

    Returns the loss in fp32 (fp64 for fp64 inputs).
    """
    V.check_matrix("z1", z1)
    b, d = z1.shape
    V.check_matrix("z2", z2, rows=b, dim=d)
    V.check_matrix("z_mix", z_mix, rows=b, dim=d)
    named = [("z1", z1), ("z2", z2), ("z_mix", z_mix)]
    V.check_same_device(named)
    V.check_reduction(reduction)
    device = z1.device
    dtype = V.common_dtype([z1, z2, z_mix])
    acc = acc_dtype(dtype)
    lam = _check_lam(lam, b, device, acc)
    partner = _check_partner(partner, b, device)
    z = torch.cat([z1.to(dtype), z2.to(dtype)], dim=0)
    m = z_mix.to(dtype)
    if normalize:
        z, m = F.normalize(z, dim=1), F.normalize(m, dim=1)
    scale = V.scale_from_temperature(temperature, z)
    rank, world = world_info() if gather_distributed else (0, 1)
    cands = gather_with_grad(z) if world > 1 else z  # [W*2B, D]: rank r's [z1; z2] block at r*2B
    rows = torch.arange(2 * b, device=device)
    own = torch.arange(b, device=device)
    pad = torch.full((2 * b,), -1, dtype=torch.long, device=device)
    pos_idx = torch.cat([torch.stack([(rows + b) % (2 * b), pad], 1),
                         torch.stack([own + b, partner + b], 1)], 0)
    w_clean = torch.stack([torch.ones(2 * b, dtype=acc, device=device), torch.zeros(2 * b, dtype=acc, device=device)], 1)
    pos_weight = torch.cat([w_clean, torch.stack([lam, 1 - lam], 1)], 0)
    excl_idx = torch.cat([torch.stack([rows, pad], 1), torch.stack([own, partner], 1)], 0)
    if world > 1:  # shift this rank's column indices to its block (the -1 pads stay)
        off = rank * 2 * b
        pos_idx = torch.where(pos_idx >= 0, pos_idx + off, pos_idx)
        excl_idx = torch.where(excl_idx >= 0, excl_idx + off, excl_idx)
    anchors = torch.cat([z, m], dim=0)
    loss_rows, _ = contrastive_loss_rows(anchors, cands, scale, pos_idx, pos_weight, excl_idx, 0, backend)
    V.deferred_value_check(loss_rows, scale, named)
    if reduction == "mean":
        return loss_rows[:2 * b].mean() + loss_rows[2 * b:].mean()
    return V.reduce(loss_rows, reduction)


# ------------------------------------------------------------------------------------------------ module
def _channel_values(name: str, values, nonzero: bool) -> Optional[Tensor]:
    """UnMix's ``mean`` / ``std``: None, or a non-empty 1-D sequence / tensor of finite numbers (std: no 0), as an
    fp32 CPU tensor. The channel count is checked against the images by ``mix_images``."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got {values.dtype}")
        t = values.detach().to("cpu", torch.float32)
    else:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"{name} must be None, a sequence of floats (one per channel) or a tensor, got "
                            f"{type(values).__name__}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must hold numbers, got {type(v).__name__}")
        t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must hold one value per channel (a non-empty 1-D sequence), got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if nonzero and bool((t == 0).any()):
        raise ValueError(f"{name} must not contain 0 (it divides), got {t.tolist()}")
    return t


class UnMix(nn.Module):
    """Un-Mix for a training loop: mixes a batch (one fused pass, ``augcl.functional.unmix``) and computes the
    Un-Mix loss (:func:`unmix_info_nce` for ``objective="moco"``, :func:`unmix_nt_xent` for ``"simclr"``).

    Usage (MoCo)::

        unmix = augcl.nn.UnMix(alpha=1.0, prob_mixup=0.5, temperature=0.2)
        x_mix, lam, partner = unmix.mix(x1)                      # x1: [B, C, H, W] float or uint8
        q, q_mix = encoder_q(x1), encoder_q(x_mix)
        with torch.no_grad(): k = encoder_k(x2)
        loss = unmix.loss(q, k, q_mix, lam, partner, queue=queue)  # queue: [K, D] normalised keys

    Args:
        alpha: Beta(alpha, alpha) parameter of lam (reference: 1.0).
        prob_mixup: probability of a global (mixup) rather than a region (CutMix) mixture (reference: 0.5).
        per_sample: one (lam, box, mode) per sample instead of one per batch (the reference draws per batch).
        pairing: partner rule passed to ``unmix`` ("reverse" = sample B-1-i, the reference's).
        generator: optional torch.Generator for the draws (default: the global one).
        mean, std: optional per-channel normalisation fused into the mixing pass ([C] tensors or sequences).
        out_dtype: output dtype of the mixed images (default: x's, float32 for uint8).
        objective: "moco" (default) or "simclr".
        temperature: loss temperature (default 0.2; use 0.5 for the SimCLR form as lightly does).
        form, key_negatives, normalize: see :func:`unmix_info_nce` (form/key_negatives apply to "moco").
        gather_distributed: under torch.distributed, the keys (MoCo with ``key_negatives``) or the clean rows
            (SimCLR) of every rank are candidates; see :func:`unmix_nt_xent`.
        backend: backend of both the mixing op and the contrastive op (None = automatic).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        prob_mixup: float = 0.5,
        per_sample: bool = False,
        pairing: str = "reverse",
        generator: Optional[torch.Generator] = None,
        mean=None,
        std=None,
        out_dtype: Optional[torch.dtype] = None,
        *,
        objective: str = "moco",
        temperature: Temperature = 0.2,
        form: str = "reference",
        key_negatives: bool = False,
        normalize: bool = True,
        gather_distributed: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        from augcl import functional as AF

        if objective not in ("moco", "simclr"):
            raise ValueError(f"objective must be 'moco' or 'simclr', got {objective!r}")
        _check_form(form)
        # Everything that does not need the batch is checked now, not at the first mix() / loss() call.
        AF._check_unmix_args(alpha, prob_mixup, per_sample, pairing)
        V.check_temperature(temperature)
        AF._check_out_dtype(out_dtype)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.alpha = alpha
        self.prob_mixup = prob_mixup
        self.per_sample = per_sample
        self.pairing = pairing
        self.generator = generator
        self.mean = _channel_values("mean", mean, nonzero=False)
        self.std = _channel_values("std", std, nonzero=True)
        self.out_dtype = out_dtype
        self.objective = objective
        self.temperature = temperature
        self.form = form
        self.key_negatives = key_negatives
        self.normalize = normalize
        self.gather_distributed = gather_distributed
        self.backend = backend

    def mix(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(x_mix [B, C, H, W], lam [B] fp32, partner [B] int64)`` of a batch ``x`` [B, C, H, W]."""
        from augcl import functional as AF

        mean = None if self.mean is None else self.mean.to(x.device)
        std = None if self.std is None else self.std.to(x.device)
        return AF.unmix(x, alpha=self.alpha, prob_mixup=self.prob_mixup, per_sample=self.per_sample,
                        pairing=self.pairing, generator=self.generator, mean=mean, std=std,
                        out_dtype=self.out_dtype, backend=self.backend)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Same as :meth:`mix`."""
        return self.mix(x)

    def loss(self, a: Tensor, b: Tensor, mixed: Tensor, lam: Lam, partner: Optional[Tensor] = None,
             queue: Optional[Tensor] = None) -> Tensor:
        """MoCo: ``loss(q, k, q_mix, lam, partner, queue)``; SimCLR: ``loss(z1, z2, z_mix, lam, partner)``."""
        if self.objective == "moco":
            return unmix_info_nce(a, b, mixed, lam, partner, queue, self.temperature, normalize=self.normalize,
                                  key_negatives=self.key_negatives, form=self.form,
                                  gather_distributed=self.gather_distributed, backend=self.backend)
        if queue is not None:
            raise ValueError("queue is only used by objective='moco'")
        return unmix_nt_xent(a, b, mixed, lam, partner, self.temperature, normalize=self.normalize,
                             gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, prob_mixup={self.prob_mixup}, per_sample={self.per_sample}, "
                f"pairing={self.pairing!r}, objective={self.objective!r}, temperature={self.temperature}, "
                f"form={self.form!r}")
