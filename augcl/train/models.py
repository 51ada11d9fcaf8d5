"""Backbones and projection heads of the training driver.

``--backbone small`` is a 4-layer CNN meant for 16-32 px images on a CPU; ``resnet18`` / ``resnet50`` are
torchvision's, with the classifier removed and, with ``--cifar-stem`` (the default for images <= 64 px), the
CIFAR stem of SimCLR / MoCo CIFAR recipes: a 3x3 stride-1 first convolution and no max-pool. ``vit`` is
augcl.nn.ViTEncoder (width 128, depth 4, 4 heads), the encoder of ``--method mae / mixedae / mixedae-naive``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from augcl.nn.mae import ViTEncoder
from augcl.train.errors import require_torchvision

__all__ = ["BACKBONES", "SmallCNN", "build_backbone", "projection_head"]

BACKBONES = ("small", "resnet18", "resnet50", "vit")
# the driver's ViT (the CPU digits setting of MixedAE's design notes: width 64-128, depth 3-4, 4 heads)
VIT_WIDTH, VIT_DEPTH, VIT_HEADS = 128, 4, 4


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A small CNN for small images: [B, C, S, S] -> [B, 8 * width] (default width 16: 128 features).

    Layout: conv-BN-ReLU at widths (w, 2w, 4w, 8w) with a 2x2 max-pool after the 2nd and 3rd convolution,
    then global average pooling. At width 16: 97 k parameters, ~4 M multiply-adds per 16x16 image.
    """

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            _conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn_relu(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(name: str, in_channels: int, cifar_stem: bool, image_size: Optional[int] = None,
                   patch_size: Optional[int] = None) -> Tuple[nn.Module, int]:
    """``(module, feature_dim)``: the encoder mapping [B, in_channels, S, S] images to [B, feature_dim].

    ``image_size`` and ``patch_size`` (S and the patch side) are needed by ``vit`` only."""
    if name == "vit":
        if image_size is None or patch_size is None:
            raise ValueError("the vit backbone needs image_size and patch_size")
        net = ViTEncoder(image_size, patch_size, in_channels, width=VIT_WIDTH, depth=VIT_DEPTH, heads=VIT_HEADS)
        return net, net.out_dim
    if name == "small":
        net = SmallCNN(in_channels)
        return net, net.out_dim
    if name not in ("resnet18", "resnet50"):
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    torchvision = require_torchvision(f"--backbone {name}")

    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def projection_head(kind: str, in_dim: int, hidden_dim: int, out_dim: int = 128) -> nn.Module:
    """Projection head [B, in_dim] -> [B, out_dim].

    ``"simclr"``: Linear-BN-ReLU-Linear (SimCLR); ``"mlp"``: Linear-ReLU-Linear (MoCo v2);
    ``"linear"``: one Linear (MoCo v1).
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    if kind == "simclr":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                             nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    raise ValueError(f"unknown projection head {kind!r}")
