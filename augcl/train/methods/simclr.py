"""SimCLR (Chen et al. 2020): two augmented views, one encoder + projector, NT-Xent over the 2B embeddings."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from augcl.train.methods.losses import nt_xent_fn
from augcl.train.models import projection_head


class SimCLR(nn.Module):
    """SimCLR on a backbone.

    Args:
        backbone: images [B, C, S, S] -> features [B, feat_dim] (what the kNN / linear probe evaluate).
        feat_dim: the backbone's output width.
        temperature: NT-Xent temperature (0.2 here by default; SimCLR used 0.5 on CIFAR, 0.1 on ImageNet).
        backend: augcl backend of the loss (None = automatic), or "eager" for the plain-PyTorch loss.
        hidden_dim, out_dim: projection head Linear-BN-ReLU-Linear widths (default 512 -> 128).
        gather_distributed: under DDP, every rank's embeddings are negatives (global batch, SPEC §1).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, temperature: float = 0.2,
                 backend: Optional[str] = None, hidden_dim: int = 512, out_dim: int = 128,
                 gather_distributed: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head("simclr", feat_dim, hidden_dim, out_dim)
        self.temperature = temperature
        self.loss_fn = nt_xent_fn(backend, gather_distributed)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss."""
        # --unmix seam: a mixed view joins here (image mixing of x1 + its extra loss term below).
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # one pass: BN sees both views
        z1, z2 = z.chunk(2)
        # --hallucinate seam: the generator stacks hallucinated rows under z1 (positives: z2 repeated).
        # augcl op: fused NT-Xent (augcl.functional.nt_xent), no [2B, 2B] similarity matrix in memory.
        return self.loss_fn(z1, z2, self.temperature)
