"""Masked image modelling in the training driver: ``--method mae | mixedae | mixedae-naive``.

* ``mae``: augcl.nn.MAE (He et al. 2022), mask ratio 0.75, normalised-pixel MSE on the hidden patches.
* ``mixedae``: augcl.nn.MixedAE (Chen et al., CVPR 2023): groups of ``--group`` images mixed into one token
  sequence, top-k homologous attention in every encoder block (``--top-k``, default N / g, class token kept),
  ``--segment`` embedding, reconstruction of the positions each image did not contribute + ``--hc-weight`` x
  the homologous contrastive term (augcl.functional.supcon per mixed sequence, temperature ``--temperature``,
  default 0.2).
* ``mixedae-naive``: the same mixing with plain attention, no segment embedding, no contrastive term.

All three train the ViT encoder (``--backbone vit``, chosen automatically; ``--patch-size``, default image size /
8, so N = 64 patches) on ONE view per image (augment.view_plan: a mild crop, plus a flip where the data allows
it). The evaluated ``backbone`` is the encoder with plain attention on unmixed images (augcl.nn.ViTEncoder's
forward: the mean of its final patch tokens). ``epoch_stats()`` gives log.csv's ``rec_loss`` (all three),
``hc_loss`` and ``homology_precision`` (the mixing methods).

Which parts follow the MixedAE paper and which are augcl's design: augcl/nn/mae.py and the README.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from augcl.nn.mae import SEGMENTS, MAE, MixedAE, ViTEncoder
from augcl.train.errors import ConfigError

__all__ = ["MAE_METHODS", "MAE_OPTIONS", "MaskedImageModel", "check_mae_flags", "resolve_mae_options",
           "default_patch_size"]

MAE_METHODS = ("mae", "mixedae", "mixedae-naive")
# the driver's options of these methods: (config key, flag, methods that take it)
MAE_OPTIONS = (("patch_size", "--patch-size", MAE_METHODS), ("group", "--group", ("mixedae", "mixedae-naive")),
               ("top_k", "--top-k", ("mixedae",)), ("segment", "--segment", ("mixedae",)),
               ("hc_weight", "--hc-weight", ("mixedae",)))


def default_patch_size(image_size: int) -> int:
    """image size / 8 (N = 64 patches: 2 px at 16, 4 px at 32, 8 px at 64), at least 1."""
    return max(1, image_size // 8)


def check_mae_flags(raw: Dict) -> Optional[str]:
    """None if the MAE-family options in the command line ``raw`` fit its --method, else a one-line reason."""
    method = raw["method"]
    for key, flag, methods in MAE_OPTIONS:
        if raw.get(key) is not None and method not in methods:
            return f"{flag} is an option of --method {' / '.join(methods)}; --method is {method}"
    backbone = raw.get("backbone")
    if method in MAE_METHODS and backbone not in (None, "vit"):
        return f"--method {method} trains a ViT encoder (--backbone vit), not --backbone {backbone}"
    if method not in MAE_METHODS and backbone == "vit":
        return f"--backbone vit is the encoder of --method {' / '.join(MAE_METHODS)}; --method is {method}"
    return None


def resolve_mae_options(cfg: Dict, world: int) -> None:
    """Fill the MAE-family defaults of ``cfg`` in place (backbone vit, patch size, group, top-k, segment, hc
    weight); ConfigError (one line) when they cannot work together. Other methods get None for every one."""
    if cfg["method"] not in MAE_METHODS:
        for key, _, _ in MAE_OPTIONS:
            cfg[key] = None
        return
    cfg["backbone"] = "vit"
    size = cfg["image_size"]
    if cfg.get("patch_size") is None:
        cfg["patch_size"] = default_patch_size(size)
    p = cfg["patch_size"]
    if size % p:
        raise ConfigError(f"--patch-size {p} must divide --image-size {size}")
    n = (size // p) ** 2
    mixing = cfg["method"] != "mae"
    if not mixing:
        for key in ("group", "top_k", "segment", "hc_weight"):
            cfg[key] = None
        return
    g = cfg["group"] = cfg.get("group") or 4
    if n % g:
        raise ConfigError(f"--group {g} must divide the {n} patches ((--image-size {size} / --patch-size {p})^2)")
    per = cfg["batch_size"] // world
    if per % g:
        where = f"the {per} images per process" if world > 1 else f"--batch-size {per}"
        raise ConfigError(f"{where} must be a multiple of --group {g} (g images per mixed sequence)")
    if cfg["method"] == "mixedae":
        cfg["top_k"] = cfg.get("top_k") or n // g
        if cfg["top_k"] > n + 1:
            raise ConfigError(f"--top-k {cfg['top_k']} is more than the {n + 1} tokens of a mixed sequence")
        cfg["segment"] = cfg.get("segment") or "encoder"
        cfg["hc_weight"] = 1.0 if cfg.get("hc_weight") is None else cfg["hc_weight"]
    else:
        cfg["top_k"] = cfg["segment"] = cfg["hc_weight"] = None


class MaskedImageModel(nn.Module):
    """The driver's wrapper of augcl.nn.MAE / MixedAE: ``forward(x)`` on one view [B, C, S, S] -> loss;
    ``backbone`` is the encoder (evaluated with plain attention); the masking / mixing draws come from the
    generator of :meth:`set_rng` (re-seeded by the trainer every epoch); :meth:`epoch_stats` averages the model's
    ``last_stats`` over the steps since the last call (one host sync per epoch, none per step)."""

    def __init__(self, name: str, backbone: ViTEncoder, temperature: Optional[float] = None,
                 backend: Optional[str] = None, group: Optional[int] = None, top_k: Optional[int] = None,
                 segment: Optional[str] = None, hc_weight: Optional[float] = None):
        super().__init__()
        if name == "mae":
            self.model = MAE(backbone)
        elif name == "mixedae":
            if segment is not None and segment not in SEGMENTS:
                raise ValueError(f"segment must be one of {SEGMENTS}, got {segment!r}")
            self.model = MixedAE(backbone, group=group or 4, top_k=top_k, segment=segment, hc_weight=hc_weight,
                                 temperature=0.2 if temperature is None else temperature,
                                 backend=None if backend == "eager" else backend)
        elif name == "mixedae-naive":
            self.model = MixedAE(backbone, group=group or 4, naive=True)
        else:
            raise ValueError(f"unknown method {name!r}; expected one of {MAE_METHODS}")
        self.backbone = backbone
        self.rng: Optional[torch.Generator] = None
        self._sums: Dict[str, torch.Tensor] = {}
        self._steps = 0

    def set_rng(self, generator: Optional[torch.Generator]) -> None:
        """The generator of this epoch's masking / mixing draws (None: torch's global one)."""
        self.rng = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.rng if self.rng is not None and self.rng.device.type == x.device.type else None
        loss = self.model(x, generator=g)
        for key, value in self.model.last_stats.items():
            if value is not None:
                v = value.detach().float()
                self._sums[key] = self._sums[key] + v if key in self._sums else v
        self._steps += 1
        return loss

    def epoch_stats(self) -> Dict[str, float]:
        """The mean of each read-out over the steps since the last call, then reset."""
        stats = {k: float(v) / self._steps for k, v in self._sums.items()} if self._steps else {}
        self._sums, self._steps = {}, 0
        return stats
