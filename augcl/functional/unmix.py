"""Un-Mix (Shen et al., "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual Representation Learning",
AAAI 2022): the batched mixing op (:func:`mix_images`, :func:`unmix`, :func:`unmix_params`) and the Un-Mix
losses over image mixtures (:func:`unmix_info_nce`, :func:`unmix_nt_xent`); ``augcl.nn.UnMix`` wraps both.

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

``form="soft"`` is the soft-target cross-entropy of Un-Mix's soft labels instead: one denominator per mixture row that contains
both positives, ``lse({k_i, k_{p_i}} U queue) - lam_i s_i - (1 - lam_i) s_{p_i}``, one call of the soft-target
contrastive op with ``pos_idx = (i, p_i)`` and weights ``(lam_i, 1 - lam_i)``. The two forms differ by each
positive's presence in the other term's denominator (a small difference with a large queue). With
``key_negatives=True`` (every key is a negative of every row) both positives sit in both denominators anyway and
the two forms are the same number; that case always takes the one soft-target call.

SimCLR form (:func:`unmix_nt_xent`): the Un-Mix repository has no SimCLR code; the formulation chosen here is
the MoCo form transcribed to NT-Xent, see its docstring.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from augcl import _validate as V
from augcl._numerics import acc_dtype, l2_normalize
from augcl.distributed import gather_with_grad, world_info
from augcl.ops.contrastive import contrastive_loss_rows, contrastive_lse
from augcl.ops.unmix import mix_images_op, mix_out_dtype

__all__ = ["mix_images", "unmix", "unmix_params", "unmix_info_nce", "unmix_nt_xent", "UNMIX_FORMS"]

Temperature = Union[float, Tensor]
Lam = Union[float, Tensor]
UNMIX_FORMS = ("reference", "soft")


# ------------------------------------------------------------------------------------------------ mixing
# mix_images is the lower-level op (explicit lam, modes, boxes, partners); unmix draws them.
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


# mean / std given as numbers or a CPU tensor, as tensors on the images' device: built (and validated) once per
# (values, dtype, device). Building one per call meant a host-to-device copy per call, which on a GPU waits for the
# stream's queued work: one stall per training step. Bounded: a training loop uses one or two entries.
_STATS_CACHE: "dict" = {}
_STATS_CACHE_MAX = 64


def _channel_stats(name: str, values, channels: int, dtype: torch.dtype, device: torch.device,
                   nonzero: bool) -> Optional[torch.Tensor]:
    """``mean`` / ``std`` of mix_images as a [C] tensor of ``dtype`` on ``device`` (None stays None). Numbers and CPU
    tensors are validated on the host and the device copy is cached; a tensor already on another device (a GPU) is
    validated there, which reads its values back (one sync per call: pass numbers or a CPU tensor to avoid it)."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor) and values.device.type == "cpu" and values.dim() == 1 \
            and (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)) and V.inspectable(values):
        values = values.tolist()  # the number path below: validated on the host, cached on the device
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.shape[0] != channels:
            raise ValueError(f"{name} must hold {channels} values (one per channel), got shape {tuple(values.shape)}")
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got {values.dtype}")
        t = values.to(device=device, dtype=dtype).contiguous()
        if V.inspectable(t):
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
    if torch.compiler.is_compiling():
        return torch.tensor(vals, dtype=dtype, device=device)  # a graph constant; no Python-side cache in a trace
    key = (tuple(float(v) for v in vals), dtype, device)
    t = _STATS_CACHE.get(key)
    if t is None:
        if len(_STATS_CACHE) >= _STATS_CACHE_MAX:
            _STATS_CACHE.clear()
        t = _STATS_CACHE[key] = torch.tensor(vals, dtype=dtype, device=device)
    return t


def _check_mix_values(B: int, H: int, W: int, lam: torch.Tensor, boxes: torch.Tensor,
                      partner: torch.Tensor) -> None:
    """Value checks of mix_images' arguments, in one host sync (skipped while torch.compile traces): partner
    indices out of range would read out of bounds in the kernels, so this is not switched off by set_checks.
    x itself is not scanned for non-finite values: the mix is a memory-bound pass that reads x once, and a scan
    would read it a second time (1.5x the traffic); a NaN pixel propagates to its own mixtures, elementwise, and
    the contrastive losses downstream name non-finite embeddings."""
    if not V.inspectable(lam, boxes, partner):
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
    """Mix every image with a partner image of the same batch, by mixup or CutMix per row (Un-Mix), with
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
            A missing mean is 0 and a missing std is 1; std must not contain 0. Numbers and CPU tensors are
            checked on the host and copied to the images' device once (cached); a GPU tensor is checked on the
            device, a host sync per call.
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
    V.check_images("x", x)
    V.check_out_dtype(out_dtype)
    B, C, H, W = x.shape
    dev = x.device
    lam = _check_row_tensor("lam", lam, (B,), "float", dev)
    cutmix = _check_row_tensor("cutmix", cutmix, (B,), "bool", dev)
    boxes = _check_row_tensor("boxes", boxes, (B, 4), "int", dev)
    partner = _check_row_tensor("partner", partner, (B,), "int", dev)
    _check_mix_values(B, H, W, lam, boxes, partner)
    acc = acc_dtype(x.dtype, mix_out_dtype(x.dtype, out_dtype))
    mean_t = _channel_stats("mean", mean, C, acc, dev, nonzero=False)
    std_t = _channel_stats("std", std, C, acc, dev, nonzero=True)
    return mix_images_op(x, lam, cutmix, boxes, partner, mean_t, std_t, out_dtype, backend=backend)


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
    V.check_unmix_args(alpha, prob_mixup, per_sample, pairing)
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
    V.check_images("x", x)
    V.check_unmix_args(alpha, prob_mixup, per_sample, pairing)
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
    if V.checks_enabled() and V.inspectable(lam):
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
    # One host sync on one boolean (min and max were two); the values are read only to word the error.
    if V.inspectable(partner) and rows > 0 and bool(((partner < 0) | (partner >= rows)).any()):
        lo, hi = int(partner.min()), int(partner.max())
        raise V.IndexArgumentError(f"partner has values in [{lo}, {hi}] but must lie in [0, {rows})")
    return partner


def _check_form(form: str) -> None:
    if form not in UNMIX_FORMS:
        raise ValueError(f"form must be one of {UNMIX_FORMS}, got {form!r}")


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
            cross-entropy per mixture row). Identical when ``key_negatives``.
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
        qq, kk, mm = l2_normalize(qq), l2_normalize(kk), l2_normalize(mm)
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
        z, m = l2_normalize(z), l2_normalize(m)
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
