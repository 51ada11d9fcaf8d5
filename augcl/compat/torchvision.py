"""torchvision.transforms.v2 ``MixUp`` / ``CutMix`` (torchvision 0.29, ``transforms/v2/_augment.py``) with the
images mixed by augcl's fused ``mix_images`` op.

Same constructor (``alpha=1.0, num_classes=None, labels_getter="default"``, keyword-only), same call
(``(images, labels) -> (images, soft_labels)``, or any nest of tuples / lists / dicts holding them, flattened with
torch's pytree as torchvision does, the labels found by ``labels_getter``), same conventions: one lam per batch,
row i mixed with row i-1 (torchvision's ``batch.roll(1, 0)``: partner ``(i - 1) mod B``), labels one-hot
(``torch.nn.functional.one_hot``) then mixed the same way.

Which tensors are mixed, as in torchvision: every ``tv_tensors.Image`` / ``Video`` if the sample holds one (pure
tensors then pass through), otherwise the first pure tensor in the flattened order other than the labels. Images
are [B, C, H, W], videos [B, T, C, H, W]; Image / Video outputs keep their class.

Same random numbers: torchvision draws from torch's global CPU generator, after the label checks, lam by
``torch.distributions.Beta([alpha], [alpha]).sample(())`` and, for CutMix, the box centre by
``torch.randint(W, (1,))`` then ``torch.randint(H, (1,))``. The same calls are made here in the same order, so under
``torch.manual_seed(s)`` lam and the box are the same, CutMix images are bitwise equal and the labels equal.
MixUp images agree to one rounding: torchvision computes ``x[i-1] * fp32(1 - lam) + x[i] * fp32(lam)``, the op
``fp32(lam) * x[i] + (1 - fp32(lam)) * x[i-1]``, whose second weight can differ by one float32 ulp.

Same errors: every input torchvision 0.29 rejects is rejected with the same exception type and message (PIL
images, masks, bounding boxes and keypoints in the sample; labels that are missing, not a tensor, of the wrong
rank, dtype or class count; index labels without num_classes; images of the wrong rank or batch size; CutMix
images of different sizes; an alpha that ``float()`` or ``Beta`` refuses), including the messages torchvision
passes on from ``float``, ``Beta`` and ``one_hot``.

Differences from torchvision:

* every check runs before the random draw, so a call that raises leaves torch's RNG where it was (torchvision
  draws lam, and for CutMix the box, before it checks the images and one-hot encodes the labels);
* when the labels come before the image in the flattened sample (``{"labels": y, "image": x}``) torchvision takes
  the labels for the image and leaves the image unmixed (CutMix then raises a TypeError); here the image is mixed
  (a sample with no image at all is handled as torchvision handles it);
* uint8 images: MixUp returns float32 scaled by 1/255 as ``ToDtype(scale=True)`` would (torchvision raises: its
  in-place float multiply cannot write uint8); CutMix keeps the dtype (a box copy, as torchvision does); MixUp of
  other integer images and empty batches raise ``mix_images``' errors (torchvision raises / returns them);
* soft (2-D floating) labels holding NaN or Inf raise a ValueError while ``augcl.set_checks`` is on (the default);
* a ``labels_getter`` that returns a tensor not in the sample raises a ValueError (torchvision: StopIteration);
* ``mean``/``std``/``out_dtype``/``backend`` keyword extensions (``augcl.functional.mix_images``; a video's mean and
  std are given per channel C).

torchvision and PIL are not imported: a sample can only hold their objects once they have been imported, so their
classes are looked up in ``sys.modules``.
"""
from __future__ import annotations

import collections.abc
import math
import sys
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
# torchvision flattens samples with this (private) pytree; the same flattening finds the same leaves in the same
# order and rebuilds the same containers (tuples, lists, dicts, namedtuples, OrderedDicts).
from torch.utils import _pytree as pytree

from augcl import _validate as V
from augcl.functional import mix_images

__all__ = ["MixUp", "CutMix"]


def _loaded_classes(module: str, *names: str) -> tuple:
    """The classes ``names`` of ``module`` if it has been imported, else (). An object can only be an instance of a
    class whose module has been imported, so this is an exact isinstance test that never imports the module."""
    mod = sys.modules.get(module)
    if mod is None:
        return ()
    return tuple(c for c in (getattr(mod, n, None) for n in names) if c is not None)


def _tv_classes(*names: str) -> tuple:
    return _loaded_classes("torchvision.tv_tensors", *names)


def _is_pure_tensor(v: Any) -> bool:
    tv_tensor = _tv_classes("TVTensor")
    return isinstance(v, Tensor) and not (tv_tensor and isinstance(v, tv_tensor))


def _default_labels_getter(sample: Any):
    """torchvision's default: the second item of a tuple / list if it is a pure tensor; otherwise the dict (the
    sample, or its second item) entry whose key is 'labels', else the first whose key contains 'label' (any case)."""
    if isinstance(sample, (tuple, list)):
        sample = sample[1]
    if _is_pure_tensor(sample):
        return sample
    if not isinstance(sample, collections.abc.Mapping):
        raise ValueError(f"When using the default labels_getter, the input passed to forward must be a dictionary or "
                         f"a two-tuple whose second item is a dictionary or a tensor, but got {sample} instead.")
    key = next((k for k in sample if k.lower() == "labels"), None)
    if key is None:
        key = next((k for k in sample if "label" in k.lower()), None)
    if key is None:
        # torchvision's message, including its missing space after the question mark
        raise ValueError("Could not infer where the labels are in the sample. Try passing a callable as the "
                         "labels_getter parameter?If there are no labels in the sample by design, pass "
                         "labels_getter=None.")
    return sample[key]


def _parse_labels_getter(labels_getter) -> Callable[[Any], Any]:
    if labels_getter == "default":
        return _default_labels_getter
    if callable(labels_getter):
        return labels_getter
    if labels_getter is None:
        return lambda _: None
    raise ValueError(f"labels_getter should either be 'default', a callable, or None, but got {labels_getter}.")


def _repeat(per_channel, times: int):
    """None, C numbers or a [C] tensor, repeated ``times`` times (None stays None)."""
    if per_channel is None:
        return None
    if isinstance(per_channel, Tensor):
        return per_channel.repeat(times)
    return list(per_channel) * times


def _quoted_list(items) -> str:
    """torchvision's sequence_to_str: 'a', 'b', 'c'."""
    return ", ".join(f"'{item}'" for item in items)


class _BaseMixUpCutMix(torch.nn.Module):
    def __init__(self, *, alpha: float = 1.0, num_classes: Optional[int] = None,
                 labels_getter: Union[str, Callable[[Any], Any], None] = "default", mean=None, std=None,
                 out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> None:
        super().__init__()
        # Built exactly as torchvision builds them, so a bad alpha raises what float() / Beta raise there, and
        # sample() is the same draw.
        self.alpha = float(alpha)
        self._dist = torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha]))
        self.num_classes = num_classes
        self._labels_getter = _parse_labels_getter(labels_getter)
        self.mean, self.std, self.out_dtype, self.backend = mean, std, out_dtype, backend

    def _check_labels(self, labels) -> None:
        if not isinstance(labels, Tensor):
            raise ValueError(f"The labels must be a tensor, but got {type(labels)} instead.")
        if labels.ndim not in (1, 2):
            raise ValueError(f"labels should be index based with shape (batch_size,) or probability based with "
                             f"shape (batch_size, num_classes), but got a tensor of shape {labels.shape} instead.")
        if labels.ndim == 2 and self.num_classes is not None and labels.shape[-1] != self.num_classes:
            raise ValueError(f"When passing 2D labels, the number of elements in last dimension must match "
                             f"num_classes: {labels.shape[-1]} != {self.num_classes}. You can Leave num_classes to "
                             f"None.")
        if labels.ndim == 1 and self.num_classes is None:
            raise ValueError("num_classes must be passed if the labels are index-based (1D)")

    @staticmethod
    def _check_image(x: Tensor, batch_size: int) -> None:
        expected = 5 if isinstance(x, _tv_classes("Video")) else 4
        if x.ndim != expected:
            raise ValueError(f"Expected a batched input with {expected} dims, but got {x.ndim} dimensions instead.")
        if x.shape[0] != batch_size:
            raise ValueError(f"The batch size of the image or video does not match the batch size of the labels: "
                             f"{x.shape[0]} != {batch_size}.")

    def _soft_labels(self, labels: Tensor) -> Tensor:
        """[B] class indices or [B, K] -> [B, K] floating; one_hot raises torchvision's errors for bad indices
        (not int64, negative, >= num_classes)."""
        if labels.ndim == 1:
            labels = torch.nn.functional.one_hot(labels, num_classes=self.num_classes)
        if not labels.dtype.is_floating_point:
            labels = labels.float()
        return labels

    @staticmethod
    def _check_finite(labels: Tensor) -> None:
        if (labels.ndim == 2 and labels.is_floating_point() and labels.numel() and V.checks_enabled()
                and V.inspectable(labels) and not bool(torch.isfinite(labels).all())):
            raise ValueError("labels contains non-finite values (NaN or Inf)")

    @staticmethod
    def _image_positions(leaves: list, labels_at: int) -> list:
        """Indices of the leaves to mix: every tv_tensors Image / Video if there is one, else the first pure tensor
        that is not the labels (torchvision takes the first pure tensor, even when it is the labels)."""
        explicit = _tv_classes("Image", "Video")
        if explicit and any(isinstance(v, explicit) for v in leaves):
            return [i for i, v in enumerate(leaves) if isinstance(v, explicit) and i != labels_at]
        return next(([i] for i, v in enumerate(leaves) if i != labels_at and _is_pure_tensor(v)), [])

    def _image_size(self, images: list) -> Optional[tuple]:
        """(H, W) shared by the images, for the transforms that need it (CutMix); None otherwise."""
        return None

    def _mix(self, x: Tensor, lam: float, cutmix: bool, box) -> Tensor:
        mean, std = self.mean, self.std
        flat = x
        if x.ndim == 5:
            # A video mixes like an image of T*C channels (one lam and one box per clip); mean / std per channel C
            # repeat over the T frames.
            frames = x.shape[1]
            flat = x.flatten(1, 2)
            mean, std = (_repeat(v, frames) for v in (mean, std))
        b = x.shape[0]
        dev = x.device
        partner = (torch.arange(b, device=dev) - 1) % b
        boxes = torch.tensor([box], dtype=torch.int64, device=dev).expand(b, 4)
        out = mix_images(flat, torch.full((b,), lam, dtype=torch.float32, device=dev),
                         torch.full((b,), cutmix, dtype=torch.bool, device=dev), boxes, partner,
                         mean=mean, std=std, out_dtype=self.out_dtype, backend=self.backend)
        return out.reshape(x.shape) if x.ndim == 5 else out

    def _transform_image(self, x: Tensor, params: dict) -> Tensor:
        tv_tensor = _tv_classes("TVTensor")
        if tv_tensor and isinstance(x, tv_tensor):
            # computed on a plain tensor, then rewrapped into the same class, as torchvision does
            out = self._transform_images(x.as_subclass(Tensor), params)
            return sys.modules["torchvision.tv_tensors"].wrap(out, like=x)
        return self._transform_images(x, params)

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        leaves, spec = pytree.tree_flatten(sample)
        unsupported = (_loaded_classes("PIL.Image", "Image")
                       + _tv_classes("BoundingBoxes", "Mask", "KeyPoints"))
        if unsupported and any(isinstance(v, unsupported) for v in leaves):
            raise ValueError(f"{type(self).__name__}() does not support PIL images, bounding boxes, keypoints and "
                             f"masks.")
        labels = self._labels_getter(sample)
        self._check_labels(labels)
        labels_at = next((i for i, v in enumerate(leaves) if v is labels), None)
        if labels_at is None:
            raise ValueError("labels_getter must return one of the tensors of the sample (it is replaced by the "
                             "mixed labels), not a new tensor")
        image_at = self._image_positions(leaves, labels_at)
        # With no image in the sample torchvision takes the labels for the image: measuring them instead gives its
        # error (1-D labels) or its box draw (2-D labels) for CutMix.
        size = self._image_size([leaves[i] for i in image_at] or [labels])
        # torchvision checks each image and one-hot encodes the labels as it transforms them, in the sample's
        # order: whichever is wrong first in that order is the error.
        soft = None
        for i in sorted(image_at + [labels_at]):
            if i == labels_at:
                soft = self._soft_labels(labels)
            else:
                self._check_image(leaves[i], labels.shape[0])
        self._check_finite(labels)

        params = self._make_params(size)
        lam = params["lam_labels"]
        out = list(leaves)
        out[labels_at] = soft.roll(1, 0).mul_(1.0 - lam).add_(soft.mul(lam))
        for i in image_at:
            out[i] = self._transform_image(leaves[i], params)
        return pytree.tree_unflatten(out, spec)


class MixUp(_BaseMixUpCutMix):
    """MixUp of a batch (Zhang et al. 2018), torchvision v2-compatible: ``x[i] <- lam x[i] + (1 - lam) x[i-1]``,
    labels likewise, one lam ~ Beta(alpha, alpha) per call. Args: see the module docstring."""

    def _make_params(self, size) -> dict:
        lam = float(self._dist.sample(()))
        return dict(lam=lam, lam_labels=lam)

    def _transform_images(self, x: Tensor, params: dict) -> Tensor:
        return self._mix(x, params["lam"], False, (0, 0, 0, 0))


class CutMix(_BaseMixUpCutMix):
    """CutMix of a batch (Yun et al. 2019), torchvision v2-compatible: a box of side ``sqrt(1 - lam)`` (H, W),
    centred uniformly and clipped, is copied from ``x[i-1]`` into ``x[i]``; labels mixed with the kept area.
    Args: see the module docstring."""

    def _image_size(self, images: list) -> tuple:
        sizes = set()
        for x in images:
            hw = tuple(x.shape[-2:])
            if len(hw) != 2:
                raise TypeError(f"Input tensor should have at least two dimensions, but got {len(hw)}")
            sizes.add(hw)
        if len(sizes) > 1:
            raise ValueError(f"Found multiple HxW dimensions in the sample: {_quoted_list(sorted(sizes))}")
        return sizes.pop()

    def _make_params(self, size) -> dict:
        lam = float(self._dist.sample(()))
        h, w = size
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
        if not x.is_floating_point() and self.mean is None and self.std is None and self.out_dtype is None:
            # mix_images produces float; a CutMix of integer (or bool) images is a plain box copy, done as
            # torchvision does.
            y1, y2, x1, x2 = params["box"]
            out = x.clone()
            out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
            return out
        return self._mix(x, 1.0, True, params["box"])
