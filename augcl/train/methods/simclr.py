"""SimCLR (Chen et al. 2020): two augmented views, one encoder + projector, NT-Xent over the 2B embeddings.

Options (augcl/train/methods/extras.py): ``--hallucinate`` (augcl.functional.hallucinate_simclr_loss:
NT-Xent over the 4B rows [z1; h; z2; z2], the duplicate key masked) and ``--unmix``
(augcl.functional.unmix_nt_xent: mixtures of view 1 as extra anchors with soft positives
{z2_i: lam_i, z2_{B-1-i}: 1 - lam_i}). Together: the Hallucinator's loss plus the Un-Mix mixture term (the
mixture rows of unmix_nt_xent). ``--hard-samples`` / ``--hard-pairs`` (Wu et al., arXiv 2202.06464; the game in
``self.hard``, methods/extras.py): once the game's warm-up is over, the forward gets the synthetic views
``syn_views`` [V, C, S, S] with instance ids ``syn_ids`` [V] (2 views per sample, 4 per pair), encodes them in the
same pass as the real views, and the loss is augcl.functional.supcon over instance ids on all 2B + V rows: a real
image's two views are each other's only positive (SupCon with one positive is NT-Xent), a synthetic pair's four
views are each other's three. Under torchrun every variant gathers the other ranks' embeddings as negatives
(``gather_distributed``), as the plain NT-Xent does; each rank mixes and hallucinates its own batch.
"""
from __future__ import annotations

from typing import Optional

import torch
import augcl.functional as AF
from augcl.train.methods.extras import AugmentedMethod
from augcl.train.methods.losses import nt_xent_fn
from augcl.train.models import projection_head


class SimCLR(AugmentedMethod):
    """SimCLR on a backbone.

    Args:
        backbone: images [B, C, S, S] -> features [B, feat_dim] (what the kNN / linear probe evaluate).
        feat_dim: the backbone's output width.
        temperature: NT-Xent temperature (0.2 here by default; SimCLR used 0.5 on CIFAR, 0.1 on ImageNet).
        backend: augcl backend of the loss (None = automatic), or "eager" for the plain-PyTorch loss.
        hidden_dim, out_dim: projection head Linear-BN-ReLU-Linear widths (default 512 -> 128).
        gather_distributed: under DDP, every rank's embeddings are negatives (global batch).
        hallucinate: add a Hallucinator(out_dim) after the projector.
        unmix: None, or dict(alpha=, prob_mixup=, per_sample=): Un-Mix on view 1.
        hard: None, or the keyword arguments of augcl.nn.HardSampleGame (``--hard-samples`` / ``--hard-pairs``).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, temperature: float = 0.2,
                 backend: Optional[str] = None, hidden_dim: int = 512, out_dim: int = 128,
                 gather_distributed: bool = False, hallucinate: bool = False, unmix: Optional[dict] = None,
                 hard: Optional[dict] = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head("simclr", feat_dim, hidden_dim, out_dim)
        self.temperature = temperature
        self.loss_fn = nt_xent_fn(backend, gather_distributed)
        self.gather_distributed = gather_distributed
        self.setup_extras(out_dim if hallucinate else None, unmix, backend)
        self.setup_hard(hard)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, syn_views: Optional[torch.Tensor] = None,
                syn_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images (and the game's synthetic views with their
        instance ids) -> the scalar loss."""
        if syn_views is not None:  # augcl op: fused SupCon over instance ids, real + synthetic views in one pass
            z = self.projector(self.backbone(torch.cat([x1, x2, syn_views])))
            return AF.supcon(z, self.instance_ids(x1.shape[0], syn_ids), self.temperature,
                             gather_distributed=self.gather_distributed, backend=self.op_backend)
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # one pass: BN sees both views
        z1, z2 = z.chunk(2)
        if self.hallucinator is None and self.unmix_cfg is None:
            # augcl op: fused NT-Xent (augcl.functional.nt_xent), no [2B, 2B] similarity matrix in memory.
            return self.loss_fn(z1, z2, self.temperature)
        b, t, backend, gather = x1.shape[0], self.temperature, self.op_backend, self.gather_distributed
        loss = None
        if self.hallucinator is not None:  # [z1; h] against [z2; z2], 4B rows (fp32: the generator's dtype)
            loss = AF.hallucinate_simclr_loss(self.hallucinator, z1.float(), z2.float(), t,
                                              lam=self.hallucinate_lam(b, z.device), gather_distributed=gather,
                                              backend=backend)
        if self.unmix_cfg is not None:  # mixtures of view 1, their own encoder pass
            x_mix, lam, partner = self.mix(x1)
            z_mix = self.projector(self.backbone(x_mix))
            if loss is None:
                return AF.unmix_nt_xent(z1, z2, z_mix, lam, partner, t, gather_distributed=gather, backend=backend)
            rows = AF.unmix_nt_xent(z1, z2, z_mix, lam, partner, t, reduction="none", gather_distributed=gather,
                                    backend=backend)
            loss = loss + rows[2 * b:].mean()  # the mixture rows' soft-target term only
        return loss
