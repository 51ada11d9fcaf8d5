"""SimSiam (Chen & He 2021): two views, one encoder + projector, a predictor, negative cosine with stop-gradient.

No negatives, hence no contrastive op and no distributed gather: each rank's loss only involves its own
samples, and DDP's gradient averaging makes the step that of the global batch (BN statistics stay per rank
unless ``--sync-bn``).

``--hallucinate`` (augcl.functional.hallucinate_simsiam_loss): a Hallucinator after the predictor, one
call per side with independent lam, ``-(cos([p1; h1], [z2; z2]) + cos([p2; h2], [z1; z1])) / 2``, targets
stop-gradient. ``--unmix`` is not offered for SimSiam (the Un-Mix paper did not use it).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import augcl.functional as AF
from augcl.train.methods.extras import AugmentedMethod


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-mean_b cos(p_b, z_b)`` with the target z detached (SimSiam's D(p, stopgrad(z))); fp32."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class SimSiam(AugmentedMethod):
    """SimSiam on a backbone.

    Args:
        backbone: images [B, C, S, S] -> features [B, feat_dim] (what is evaluated).
        feat_dim: the backbone's output width.
        proj_dim: projector output / predictor input width (SimSiam: 2048; smaller for the small CNN).
        pred_hidden: predictor bottleneck width (SimSiam: proj_dim / 4).
        hallucinate: add a Hallucinator(proj_dim) after the predictor.
        backend: augcl backend of the Hallucinator op (None = automatic; "eager" = augcl's reference).

    Projector (SimSiam's CIFAR variant): Linear-BN-ReLU-Linear-BN without affine on the output (the paper's
    ImageNet projector has one more Linear-BN-ReLU). Predictor: Linear-BN-ReLU-Linear.
    Loss: ``(D(p1, sg(z2)) + D(p2, sg(z1))) / 2`` with D the negative cosine similarity; minimum -1.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, proj_dim: int = 2048, pred_hidden: int = 512,
                 hallucinate: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, proj_dim, bias=False), nn.BatchNorm1d(proj_dim), nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False), nn.BatchNorm1d(proj_dim, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_hidden, bias=False), nn.BatchNorm1d(pred_hidden), nn.ReLU(inplace=True),
            nn.Linear(pred_hidden, proj_dim))
        self.setup_extras(proj_dim if hallucinate else None, None, backend)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss."""
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # one pass: BN sees both views
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        if self.hallucinator is not None:  # fp32: the generator's dtype
            b = x1.shape[0]
            lam = (self.hallucinate_lam(b, z.device), self.hallucinate_lam(b, z.device))
            return AF.hallucinate_simsiam_loss(self.hallucinator, p1.float(), p2.float(), z1.float(), z2.float(),
                                               lam=lam)
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
