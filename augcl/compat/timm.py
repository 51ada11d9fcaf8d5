"""timm's ``timm.data.Mixup`` (timm 1.0.x, ``timm/data/mixup.py``) with the images mixed by augcl's fused
``mix_images`` op: one pass over the batch in every mode, where timm loops over samples in Python in its
``'elem'`` and ``'pair'`` modes.

Same constructor, defaults and call ``(x, target) -> (x_mixed, soft_target)``, and the same random numbers: every
draw comes from numpy's global RNG with the same calls, sizes and order as timm, so after ``np.random.seed(s)``
both return the same images and targets. Per mode, timm draws

* ``'batch'``: ``rand() < prob`` then (both mixup and CutMix on) ``rand() < switch_prob``, one ``beta``, and for
  CutMix the box (``randint`` for the centre row then column; or, with ``cutmix_minmax``, four ``randint``: box
  height, width, top, left).
* ``'elem'`` / ``'pair'``: over n = B (elem) or B / 2 (pair) samples, ``rand(n) < switch_prob`` (both on),
  ``beta(size=n)`` for CutMix then ``beta(size=n)`` for mixup (both drawn, one picked per sample), then
  ``rand(n) < prob``; then, for each sample in order that mixes by CutMix (lam != 1), its box draws as above.

The box draws only depend on the image size (not on lam) unless ``cutmix_minmax`` is set, so for square images
they are drawn with one vectorised ``randint`` (numpy's legacy generator gives the same numbers as the scalar
calls); otherwise a short scalar loop draws them. Only the draws loop, never the pixels.

Differences from timm, all on inputs timm mishandles or rejects:

* the result is a new tensor (timm mixes ``x`` in place and returns it; with nothing to mix, ``x`` itself is
  returned unchanged here too when no dtype conversion or normalisation is asked for);
* uint8 images are accepted and come out as float (scaled by 1/255, then ``mean``/``std`` if given, all fused);
* errors are ``ValueError``/``TypeError`` naming the argument: an odd batch in 'batch'/'pair' mode (timm asserts
  an even batch in every mode; 'elem' accepts an odd batch here, the middle sample pairing with itself), a target
  whose length is not the batch size, class indices outside [0, num_classes) (``IndexArgumentError``, also a
  ValueError), an unknown ``mode`` (timm silently runs 'batch' for any unknown mode), both alphas 0 (timm asserts
  when it first needs a draw), ``prob`` / ``switch_prob`` / ``label_smoothing`` outside [0, 1] and a
  ``cutmix_minmax`` that is not ``0 <= min < max <= 1`` (timm accepts them), non-finite multi-label targets.
  Non-finite images are mixed as they are (as timm does; see ``augcl.functional.mix_images``).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from augcl import _validate as V
from augcl.functional.unmix import mix_images

__all__ = ["Mixup", "mixup_target", "one_hot"]

MODES = ("batch", "pair", "elem")


def _check_dense_target(target: Tensor) -> None:
    """Multi-label (dense) targets: real, and finite (a value check: one host sync, off with set_checks(False))."""
    if target.is_complex():
        raise TypeError(f"target must be a real tensor, got {target.dtype}")
    if (target.is_floating_point() and V.checks_enabled() and not torch.compiler.is_compiling()
            and not bool(torch.isfinite(target).all())):
        raise ValueError("target contains non-finite values (NaN or Inf)")


def _check_class_indices(name: str, x, num_classes: int) -> None:
    """``x``: an integer tensor of class indices in [0, num_classes) (IndexArgumentError otherwise; one host sync,
    skipped while torch.compile traces)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(x).__name__}")
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got {x.dtype}")
    if x.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.stack((x.min(), x.max())).tolist()
        if lo < 0 or hi >= num_classes:
            raise V.IndexArgumentError(f"{name} has class indices in [{lo}, {hi}] but num_classes is {num_classes}")


def one_hot(x: Tensor, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> Tensor:
    """[B, num_classes] float32: ``on_value`` at each row's class, ``off_value`` elsewhere (timm's ``one_hot``).
    ``x`` must hold integer class indices in [0, num_classes)."""
    V.check_int("num_classes", num_classes, lo=1)
    _check_class_indices("x", x, num_classes)
    return _one_hot(x, num_classes, on_value, off_value)


def _one_hot(x: Tensor, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> Tensor:
    idx = x.long().view(-1, 1)
    out = torch.full((idx.shape[0], num_classes), off_value, device=x.device)
    return out.scatter_(1, idx, on_value)


def mixup_target(target: Tensor, num_classes: int, lam: Union[float, Tensor] = 1.0, smoothing: float = 0.0,
                 multi_label: bool = False) -> Tensor:
    """timm's soft targets: label-smoothed one-hot (or smoothed dense multi-label) rows ``y``, mixed with the
    reversed batch: ``y * lam + flip(y) * (1 - lam)``. ``lam`` is a float or a [B, 1] tensor (per sample).

    Smoothing: off value ``smoothing / num_classes``, on value ``1 - smoothing + off``; multi-label targets
    [B, num_classes] go to ``t * (1 - smoothing) + smoothing / 2``.

    Checked (TypeError / ValueError naming the argument): ``num_classes`` >= 1, ``smoothing`` and ``lam`` in
    [0, 1], class indices in [0, num_classes) (``IndexArgumentError``), finite multi-label targets."""
    V.check_int("num_classes", num_classes, lo=1)
    V.check_number("smoothing", smoothing, lo=0.0, hi=1.0)
    if isinstance(lam, Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a float or a floating tensor, got {lam.dtype}")
        if V.checks_enabled() and not torch.compiler.is_compiling() and not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError("lam must lie in [0, 1] (and not be nan)")
    else:
        V.check_number("lam", lam, lo=0.0, hi=1.0)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if multi_label:
        _check_dense_target(target)
    else:
        _check_class_indices("target", target, num_classes)
    return _mixup_target(target, num_classes, lam, smoothing, multi_label)


def _mixup_target(target: Tensor, num_classes: int, lam: Union[float, Tensor] = 1.0, smoothing: float = 0.0,
                  multi_label: bool = False) -> Tensor:
    """:func:`mixup_target` without the checks (Mixup checks its target and draws lam itself)."""
    if multi_label:
        if target.dim() != 2 or target.shape[1] != num_classes:
            raise ValueError(f"target: multi-label mixup expects dense targets [batch, num_classes="
                             f"{num_classes}], got shape {tuple(target.shape)}")
        y = target.float() * (1.0 - smoothing) + 0.5 * smoothing
    else:
        off = smoothing / num_classes
        y = _one_hot(target, num_classes, on_value=1.0 - smoothing + off, off_value=off)
    return y * lam + y.flip(0) * (1.0 - lam)


class Mixup:
    """Mixup / CutMix over a batch with soft targets, timm-compatible (see the module docstring).

    Args (timm's, same defaults):
        mixup_alpha: Beta(mixup_alpha, mixup_alpha) for mixup; mixup is on if > 0. Default 1.
        cutmix_alpha: Beta parameter for CutMix; CutMix is on if > 0. Default 0.
        cutmix_minmax: (min, max) box side as a fraction of the image; turns CutMix on (alpha forced to 1) and
            draws the box size uniformly instead of from lam. Default None.
        prob: probability of mixing a batch ('batch') or a sample ('pair', 'elem'). Default 1.
        switch_prob: probability of CutMix instead of mixup when both are on. Default 0.5.
        mode: 'batch' (one draw for the batch), 'pair' (one per pair i, B-1-i) or 'elem' (one per sample).
        correct_lam: replace lam by the exact kept area of a clipped CutMix box. Default True.
        label_smoothing: smoothing of the one-hot targets. Default 0.1.
        num_classes: number of classes. Default 1000.
        multi_label: targets are dense [B, num_classes] multi-label vectors. Default False.
    Keyword-only extensions: ``mean``, ``std`` (per-channel normalisation fused into the pass), ``out_dtype``
    and ``backend`` (see ``augcl.functional.mix_images``).

    Call: ``mixup(x [B, C, H, W], target [B] int (or [B, num_classes])) -> (x_mixed, soft_target [B, nc] fp32)``.
    Set ``mixup_enabled = False`` to pass batches through (targets still smoothed), as with timm.
    """

    def __init__(self, mixup_alpha=1., cutmix_alpha=0., cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode='batch', correct_lam=True, label_smoothing=0.1, num_classes=1000, multi_label=False, *,
                 mean=None, std=None, out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha), ("prob", prob),
                        ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
            if not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        # timm accepts probabilities outside [0, 1] (they act as 0 or 1) and smoothing outside [0, 1] (targets
        # outside [0, 1]); both are almost surely bugs, so they raise here.
        for name, v in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.cutmix_minmax = cutmix_minmax
        if cutmix_minmax is not None:
            if isinstance(cutmix_minmax, (str, bytes)) or not hasattr(cutmix_minmax, "__len__"):
                raise TypeError(f"cutmix_minmax must be None or (min, max), got {type(cutmix_minmax).__name__}")
            if len(cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax must be (min, max), got {cutmix_minmax!r}")
            for v in cutmix_minmax:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError(f"cutmix_minmax must hold two numbers, got {cutmix_minmax!r}")
            if not 0.0 <= cutmix_minmax[0] < cutmix_minmax[1] <= 1.0:
                raise ValueError(f"cutmix_minmax must be (min, max) box side fractions with 0 <= min < max <= 1, got "
                                 f"{cutmix_minmax!r}")
            self.cutmix_alpha = 1.0  # as timm: minmax boxes imply CutMix on
        self.mix_prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.mode = mode
        self.correct_lam = correct_lam
        self.mixup_enabled = True
        self.mean, self.std, self.out_dtype, self.backend = mean, std, out_dtype, backend

    # ------------------------------------------------------------------------------------------ draws
    def _no_mode(self):
        return ValueError("Mixup: one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")

    def _params_per_elem(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lam [n] float32, use_cutmix [n] bool) drawn exactly as timm's ``_params_per_elem``."""
        lam = np.ones(n, dtype=np.float32)
        use_cutmix = np.zeros(n, dtype=bool)
        if not self.mixup_enabled:
            return lam, use_cutmix
        mix_on, cut_on = self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0
        if mix_on and cut_on:
            use_cutmix = np.random.rand(n) < self.switch_prob
            # Both Beta arrays are drawn (CutMix's first), then one is picked per sample: the RNG moves by both.
            lam_cut = np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
            lam_mix = np.random.beta(self.mixup_alpha, self.mixup_alpha, size=n)
            lam_draw = np.where(use_cutmix, lam_cut, lam_mix)
        elif mix_on:
            lam_draw = np.random.beta(self.mixup_alpha, self.mixup_alpha, size=n)
        elif cut_on:
            use_cutmix = np.ones(n, dtype=bool)
            lam_draw = np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
        else:
            raise self._no_mode()
        apply = np.random.rand(n) < self.mix_prob
        return np.where(apply, lam_draw.astype(np.float32), lam), use_cutmix

    def _params_per_batch(self) -> Tuple[float, bool]:
        """(lam, use_cutmix) drawn exactly as timm's ``_params_per_batch``."""
        if not (self.mixup_enabled and np.random.rand() < self.mix_prob):
            return 1.0, False
        mix_on, cut_on = self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0
        if mix_on and cut_on:
            use_cutmix = bool(np.random.rand() < self.switch_prob)
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            return float(np.random.beta(alpha, alpha)), use_cutmix
        if mix_on:
            return float(np.random.beta(self.mixup_alpha, self.mixup_alpha)), False
        if cut_on:
            return float(np.random.beta(self.cutmix_alpha, self.cutmix_alpha)), True
        raise self._no_mode()

    def _boxes(self, lam: Union[np.ndarray, float], height: int, width: int, count: int):
        """``count`` CutMix boxes (yl, yh, xl, xh as int64 arrays) and their lam, timm's box draws in order.

        ``lam`` is a float (batch mode: timm's Python float) or a float32 array of ``count`` (per sample:
        timm's float32 scalars), so the box side is computed in the same precision as timm's."""
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            rows = []
            for _ in range(count):  # each range depends on the previous draw: scalar draws, in timm's order
                cut_h = np.random.randint(int(height * lo), int(height * hi))
                cut_w = np.random.randint(int(width * lo), int(width * hi))
                yl = np.random.randint(0, height - cut_h + 1)
                xl = np.random.randint(0, width - cut_w + 1)
                rows.append((yl, yl + cut_h, xl, xl + cut_w))
            yl, yh, xl, xh = (np.asarray(c, dtype=np.int64) for c in zip(*rows))
        else:
            ratio = np.sqrt(1 - lam)
            cut_h = np.asarray(height * ratio).astype(np.int64)
            cut_w = np.asarray(width * ratio).astype(np.int64)
            if height == width:
                # Same range for cy and cx: one vectorised call gives timm's interleaved cy0, cx0, cy1, ...
                centres = np.random.randint(0, height, size=2 * count).reshape(count, 2)
                cy, cx = centres[:, 0], centres[:, 1]
            else:
                pairs = [(np.random.randint(0, height), np.random.randint(0, width)) for _ in range(count)]
                cy = np.asarray([p[0] for p in pairs], dtype=np.int64)
                cx = np.asarray([p[1] for p in pairs], dtype=np.int64)
            yl = np.clip(cy - cut_h // 2, 0, height)
            yh = np.clip(cy + (cut_h + 1) // 2, 0, height)
            xl = np.clip(cx - cut_w // 2, 0, width)
            xh = np.clip(cx + (cut_w + 1) // 2, 0, width)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (yh - yl) * (xh - xl) / float(height * width)
        return (yl, yh, xl, xh), lam

    # ------------------------------------------------------------------------------------------ mixing
    def _mix(self, x: Tensor, lam_w: np.ndarray, cutmix: np.ndarray, boxes: np.ndarray) -> Tensor:
        b = x.shape[0]
        dev = x.device
        partner = torch.arange(b - 1, -1, -1, device=dev)
        return mix_images(x, torch.from_numpy(np.ascontiguousarray(lam_w, dtype=np.float32)).to(dev),
                          torch.from_numpy(np.ascontiguousarray(cutmix, dtype=bool)).to(dev),
                          torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.int64)).to(dev), partner,
                          mean=self.mean, std=self.std, out_dtype=self.out_dtype, backend=self.backend)

    def _needs_conversion(self, x: Tensor) -> bool:
        return (x.dtype == torch.uint8 or self.mean is not None or self.std is not None
                or (self.out_dtype is not None and self.out_dtype != x.dtype))

    def _mix_per_sample(self, x: Tensor, pairs: bool) -> Tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        n = b // 2 if pairs else b
        lam, use_cutmix = self._params_per_elem(n)
        mixing = lam != 1.0
        cut_rows = np.flatnonzero(mixing & use_cutmix)
        boxes = np.zeros((n, 4), dtype=np.int64)  # rows that do not mix: CutMix with an empty box = exact copy
        lam_w = lam.copy()  # the mixup weight is the drawn lam; only the returned lam is corrected
        if cut_rows.size:
            (yl, yh, xl, xh), lam_cut = self._boxes(lam[cut_rows], h, w, cut_rows.size)
            boxes[cut_rows] = np.stack([yl, yh, xl, xh], axis=1)
            lam[cut_rows] = lam_cut
        cutmix = use_cutmix | ~mixing
        if pairs:
            # Row B-1-i mirrors row i: same box (its partner's pixels go the other way), same weight.
            lam = np.concatenate((lam, lam[::-1]))
            lam_w = np.concatenate((lam_w, lam_w[::-1]))
            cutmix = np.concatenate((cutmix, cutmix[::-1]))
            boxes = np.concatenate((boxes, boxes[::-1]))
        out = self._mix(x, lam_w, cutmix, boxes)
        # timm returns lam in x's dtype (so bf16 images give bf16-rounded target weights); uint8 -> out's dtype.
        lam_dtype = x.dtype if x.is_floating_point() else out.dtype
        return out, torch.tensor(lam, device=x.device, dtype=lam_dtype).unsqueeze(1)

    def _mix_batch(self, x: Tensor) -> Tuple[Tensor, float]:
        b, _, h, w = x.shape
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            if not self._needs_conversion(x):
                return x, 1.0
            return self._mix(x, np.ones(b), np.ones(b, dtype=bool), np.zeros((b, 4), dtype=np.int64)), 1.0
        if use_cutmix:
            (yl, yh, xl, xh), lam_out = self._boxes(lam, h, w, 1)
            boxes = np.repeat(np.stack([yl, yh, xl, xh], axis=1), b, axis=0)
            return self._mix(x, np.ones(b), np.ones(b, dtype=bool), boxes), float(np.asarray(lam_out).reshape(-1)[0])
        return self._mix(x, np.full(b, lam), np.zeros(b, dtype=bool), np.zeros((b, 4), dtype=np.int64)), lam

    # ------------------------------------------------------------------------------------------- call
    def _check(self, x, target) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D batch [B, C, H, W], got shape {tuple(x.shape)}")
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        b = x.shape[0]
        if target.dim() == 0 or target.shape[0] != b:
            raise ValueError(f"target must hold one entry per image: x has {b} images, target has shape "
                             f"{tuple(target.shape)}")
        if b % 2 == 1 and self.mode in ("batch", "pair"):
            raise ValueError(f"x: Mixup in mode {self.mode!r} needs an even batch size (timm asserts it), got {b}")
        if target.device != x.device:
            raise ValueError(f"target is on {target.device} but x is on {x.device}")
        if self.multi_label:
            if target.dim() != 2 or target.shape[1] != self.num_classes:
                raise ValueError(f"target: multi-label mixup expects dense targets [{b}, {self.num_classes}], got "
                                 f"shape {tuple(target.shape)}")
            _check_dense_target(target)
        else:
            if target.dim() != 1 and not (target.dim() == 2 and target.shape[1] == 1):
                raise ValueError(f"target must be class indices [B], got shape {tuple(target.shape)}")
            if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
                raise TypeError(f"target must hold integer class indices, got {target.dtype}")
            if b and not torch.compiler.is_compiling():
                lo, hi = torch.stack((target.min(), target.max())).tolist()
                if lo < 0 or hi >= self.num_classes:
                    raise V.IndexArgumentError(f"target has class indices in [{lo}, {hi}] but num_classes is "
                                               f"{self.num_classes}")

    def __call__(self, x: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        self._check(x, target)
        if self.mode == "elem":
            x, lam = self._mix_per_sample(x, pairs=False)
        elif self.mode == "pair":
            x, lam = self._mix_per_sample(x, pairs=True)
        else:
            x, lam = self._mix_batch(x)
        return x, _mixup_target(target, self.num_classes, lam, self.label_smoothing, self.multi_label)
