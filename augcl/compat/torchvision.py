"""torchvision.transforms.v2 ``MixUp`` / ``CutMix`` (torchvision 0.2x, ``transforms/v2/_augment.py``) with the
images mixed by augcl's fused ``mix_images`` op.

Same constructor (``alpha=1.0, num_classes=None, labels_getter="default"``, keyword-only), same call
(``(images, labels) -> (images, soft_labels)``, or a dict / tuple holding them, found by ``labels_getter``), same
conventions: one lam per batch, row i mixed with row i-1 (torchvision's ``batch.roll(1, 0)``: partner
``(i - 1) mod B``), labels one-hot then mixed the same way.

Same random numbers: torchvision draws from torch's global CPU generator, after the label checks, lam by
``torch.distributions.Beta([alpha], [alpha]).sample(())`` and, for CutMix, the box centre by
``torch.randint(W, (1,))`` then ``torch.randint(H, (1,))``. The same calls are made here in the same order, so under
``torch.manual_seed(s)`` lam and the box are the same, CutMix images are bitwise equal and the labels equal.
MixUp images agree to one rounding: torchvision computes ``x[i-1] * fp32(1 - lam) + x[i] * fp32(lam)``, the op
``fp32(lam) * x[i] + (1 - fp32(lam)) * x[i-1]``, whose second weight can differ by one float32 ulp.

Differences from torchvision:

* only pure tensors (or ``tv_tensors.Image``/``Video``, treated as tensors) [B, C, H, W] are mixed; a dict/tuple
  input may hold other entries, passed through unchanged;
* uint8 images: CutMix keeps uint8 (a copy, like torchvision); MixUp returns float32 (torchvision raises on
  uint8, its in-place float multiply cannot write uint8), scaled by 1/255 as ``ToDtype(scale=True)`` would;
* ``mean``/``std``/``out_dtype``/``backend`` keyword extensions (``augcl.functional.mix_images``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from augcl import _validate as V

__all__ = ["MixUp", "CutMix"]


def _default_labels_getter(inputs: Any):
    """torchvision's default heuristic: the second element of a tuple/list, or the 'labels'-like key of a dict."""
    if isinstance(inputs, (tuple, list)):
        inputs = inputs[1] if len(inputs) > 1 else None
        if isinstance(inputs, Tensor):
            return inputs
    if isinstance(inputs, dict):
        candidates = [k for k in inputs if isinstance(k, str) and "label" in k.lower()]
        exact = [k for k in candidates if k.lower() == "labels"]
        if exact or candidates:
            return inputs[(exact or candidates)[0]]
    raise ValueError("Could not infer where the labels are in the sample. Try passing a callable as the "
                     "labels_getter parameter? If there are no labels in the sample by design, pass "
                     "labels_getter=None.")


class _BaseMixUpCutMix(torch.nn.Module):
    def __init__(self, *, alpha: float = 1.0, num_classes: Optional[int] = None,
                 labels_getter: Union[str, Callable[[Any], Any]] = "default", mean=None, std=None,
                 out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
        self.alpha = float(alpha)
        # The same distribution object torchvision builds: its sample() is the draw to mirror.
        self._dist = torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha]))
        self.num_classes = num_classes
        if labels_getter == "default":
            self._labels_getter = _default_labels_getter
        elif callable(labels_getter):
            self._labels_getter = labels_getter
        else:
            raise ValueError(f"labels_getter should either be 'default' or a callable, got {labels_getter!r}")
        self.mean, self.std, self.out_dtype, self.backend = mean, std, out_dtype, backend

    # The labels are checked before any draw, as torchvision does, so a bad call does not move the RNG.
    def _check_labels(self, labels) -> None:
        if not isinstance(labels, Tensor):
            raise ValueError(f"The labels must be a tensor, but got {type(labels)} instead.")
        if labels.ndim not in (1, 2):
            raise ValueError(f"labels should be index based with shape (batch_size,) or probability based with "
                             f"shape (batch_size, num_classes), but got a tensor of shape {tuple(labels.shape)}")
        if labels.ndim == 2 and self.num_classes is not None and labels.shape[-1] != self.num_classes:
            raise ValueError(f"When passing 2D labels, the number of elements in last dimension must match "
                             f"num_classes: {labels.shape[-1]} != {self.num_classes}.")
        if labels.is_complex():
            raise TypeError(f"labels must be a real tensor, got {labels.dtype}")
        if labels.ndim == 1:
            if self.num_classes is None:
                raise ValueError("num_classes must be passed if the labels are index-based (1D)")
            if labels.is_floating_point() or labels.dtype == torch.bool:
                raise TypeError(f"labels: index-based labels must be integers, got {labels.dtype}")
            if labels.numel() and not torch.compiler.is_compiling():
                lo, hi = torch.stack((labels.min(), labels.max())).tolist()
                if lo < 0 or hi >= self.num_classes:
                    raise V.IndexArgumentError(f"labels has class indices in [{lo}, {hi}] but num_classes is "
                                               f"{self.num_classes}")
        elif (labels.is_floating_point() and labels.numel() and V.checks_enabled()
              and not torch.compiler.is_compiling() and not bool(torch.isfinite(labels).all())):
            raise ValueError("labels contains non-finite values (NaN or Inf)")

    @staticmethod
    def _check_images(x: Tensor, batch_size: int) -> None:
        if x.ndim != 4:
            raise ValueError(f"Expected a batched input with 4 dims [B, C, H, W], but got {x.ndim} dimensions instead.")
        if x.shape[0] != batch_size:
            raise ValueError(f"The batch size of the image or video does not match the batch size of the labels: "
                             f"{x.shape[0]} != {batch_size}.")

    def _mix_labels(self, labels: Tensor, lam: float) -> Tensor:
        if labels.ndim == 1:
            labels = torch.nn.functional.one_hot(labels.long(), num_classes=self.num_classes)
        if not labels.is_floating_point():
            labels = labels.float()
        return labels.roll(1, 0).mul_(1.0 - lam).add_(labels.mul(lam))

    def _mix(self, x: Tensor, lam: float, cutmix: bool, box) -> Tensor:
        from augcl.functional import mix_images

        b = x.shape[0]
        dev = x.device
        partner = (torch.arange(b, device=dev) - 1) % b
        boxes = torch.tensor([box], dtype=torch.int64, device=dev).expand(b, 4)
        return mix_images(x, torch.full((b,), lam, dtype=torch.float32, device=dev),
                          torch.full((b,), cutmix, dtype=torch.bool, device=dev), boxes, partner,
                          mean=self.mean, std=self.std, out_dtype=self.out_dtype, backend=self.backend)

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        labels = self._labels_getter(sample)
        self._check_labels(labels)
        batch_size = labels.shape[0]
        images = [v for v in (sample.values() if isinstance(sample, dict) else
                              sample if isinstance(sample, (tuple, list)) else [sample])
                  if isinstance(v, Tensor) and v is not labels]
        if not images:
            raise ValueError("no image batch [B, C, H, W] found in the input")
        for img in images:
            self._check_images(img, batch_size)
        params = self._make_params(images[0])
        new_labels = self._mix_labels(labels, params["lam_labels"])

        def apply(v):
            if v is labels:
                return new_labels
            if isinstance(v, Tensor):
                return self._transform_images(v, params)
            return v

        if isinstance(sample, dict):
            return {k: apply(v) for k, v in sample.items()}
        if isinstance(sample, (tuple, list)):
            return type(sample)(apply(v) for v in sample)
        return apply(sample)


class MixUp(_BaseMixUpCutMix):
    """MixUp of a batch (Zhang et al. 2018), torchvision v2-compatible: ``x[i] <- lam x[i] + (1 - lam) x[i-1]``,
    labels likewise, one lam ~ Beta(alpha, alpha) per call. Args: see the module docstring."""

    def _make_params(self, images: Tensor) -> dict:
        lam = float(self._dist.sample(()))
        return dict(lam=lam, lam_labels=lam)

    def _transform_images(self, x: Tensor, params: dict) -> Tensor:
        return self._mix(x, params["lam"], False, (0, 0, 0, 0))


class CutMix(_BaseMixUpCutMix):
    """CutMix of a batch (Yun et al. 2019), torchvision v2-compatible: a box of side ``sqrt(1 - lam)`` (H, W),
    centred uniformly and clipped, is copied from ``x[i-1]`` into ``x[i]``; labels mixed with the kept area.
    Args: see the module docstring."""

    def _make_params(self, images: Tensor) -> dict:
        lam = float(self._dist.sample(()))
        h, w = images.shape[-2:]
        r_x = torch.randint(w, size=(1,))
        r_y = torch.randint(h, size=(1,))
        r = 0.5 * math.sqrt(1.0 - lam)
        r_w_half, r_h_half = int(r * w), int(r * h)
        x1 = int(torch.clamp(r_x - r_w_half, min=0))
        y1 = int(torch.clamp(r_y - r_h_half, min=0))
        x2 = int(torch.clamp(r_x + r_w_half, max=w))
        y2 = int(torch.clamp(r_y + r_h_half, max=h))
        lam_adjusted = float(1.0 - (x2 - x1) * (y2 - y1) / (w * h))
        return dict(box=(y1, y2, x1, x2), lam_labels=lam_adjusted)

    def _transform_images(self, x: Tensor, params: dict) -> Tensor:
        if x.dtype == torch.uint8 and self.mean is None and self.std is None and self.out_dtype is None:
            # mix_images produces float; a uint8 CutMix is a plain box copy, done as torchvision does.
            y1, y2, x1, x2 = params["box"]
            out = x.clone()
            out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
            return out
        return self._mix(x, 1.0, True, params["box"])
