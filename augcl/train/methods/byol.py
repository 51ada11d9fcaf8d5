"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target network's projection.

No negatives, hence no contrastive op: each rank's loss involves only its own samples (BN statistics per
rank unless ``--sync-bn``). The target network is updated by :meth:`BYOL.on_step`, before each forward, with
the momentum of BYOL's schedule: ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` at step k of K, i.e.
tau_base at the start, 1 at the end.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear-BN-ReLU-Linear (paper: 4096 hidden, 256 out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_b ||normalize(p_b) - normalize(z_b)||^2 = mean_b (2 - 2 cos(p_b, z_b))``, z detached; fp32."""
    return (2.0 - 2.0 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BYOL(nn.Module):
    """BYOL on a backbone.

    Args:
        backbone: the online encoder [B, C, S, S] -> [B, feat_dim] (what is evaluated).
        feat_dim: the backbone's output width.
        hidden_dim, out_dim: projector / predictor widths (paper: 4096 / 256).
        momentum: tau_base of the target EMA (0.99 here, CIFAR recipes; the paper's ImageNet value: 0.996).

    Loss: ``regression_loss(p1, z2') + regression_loss(p2, z1')`` (symmetrised as in the paper; in [0, 8]),
    with p the online predictions and z' the target projections.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden_dim: int = 4096, out_dim: int = 256,
                 momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projector = byol_mlp(feat_dim, hidden_dim, out_dim)
        self.predictor = byol_mlp(out_dim, hidden_dim, out_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum_base = momentum
        self.register_buffer("tau", torch.tensor(momentum, dtype=torch.float64))

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> None:
        """Set tau for ``step`` of ``total_steps`` and move the target towards the online network (from the
        second step on; the target starts as a copy)."""
        if step > 0:
            tau = float(self.tau)
            for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
                for po, pt in zip(online.parameters(), target.parameters()):
                    pt.mul_(tau).add_(po.detach(), alpha=1.0 - tau)
        progress = min(1.0, step / max(1, total_steps))
        self.tau.fill_(1.0 - (1.0 - self.momentum_base) * (math.cos(math.pi * progress) + 1.0) / 2.0)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss."""
        # --unmix seam: a mixed view joins here (image mixing of x1 + its extra loss term below).
        p1, p2 = self.predictor(self.projector(self.backbone(torch.cat([x1, x2])))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(torch.cat([x1, x2]))).chunk(2)
        # --hallucinate seam: the generator extends p1 / p2 here, targets repeated, stop-gradient.
        return regression_loss(p1, z2) + regression_loss(p2, z1)
