"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a queue of past keys as negatives.

Single-device version: the loss is symmetrised (each view is a query for the other view's key, as in
solo-learn's MoCo v2+), both views' keys are enqueued, and there is no shuffle-BN (it needs several devices).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from augcl.train.methods.losses import info_nce_fn
from augcl.train.models import projection_head


class MoCo(nn.Module):
    """MoCo on a backbone.

    Args:
        backbone: images [B, C, S, S] -> features [B, feat_dim]; the query encoder (what is evaluated).
        feat_dim: the backbone's output width.
        head: "linear" (MoCo v1) or "mlp" (MoCo v2) projector, to ``out_dim`` (128).
        temperature: InfoNCE temperature (MoCo v1 0.07, MoCo v2 0.2).
        queue_size: K, the number of negative keys kept; each step enqueues 2B keys, so K >= 2B.
        momentum: key encoder EMA factor m (key = m * key + (1 - m) * query), 0.99 by default.
        backend: augcl backend of the loss (None = automatic), or "eager" for the plain-PyTorch loss.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, head: str = "mlp", temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, backend: Optional[str] = None,
                 hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head(head, feat_dim, hidden_dim, out_dim)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.temperature, self.momentum = temperature, momentum
        # The queue holds L2-normalised keys [K, D]: info_nce uses its rows as stored.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.loss_fn = info_nce_fn(backend)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in ((self.backbone, self.key_backbone), (self.projector, self.key_projector)):
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest len(keys) rows (a ring buffer; K need not be a multiple of the batch)."""
        k = self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % k
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % k)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss (updates key encoder + queue)."""
        q1, q2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        with torch.no_grad():
            if self.training:
                self._momentum_update()
            k = F.normalize(self.key_projector(self.key_backbone(torch.cat([x1, x2]))).float(), dim=1)
            k1, k2 = k.chunk(2)
        queue = self.queue.clone()  # the loss may keep it for backward; _enqueue writes the buffer in place
        # augcl op: fused InfoNCE (augcl.functional.info_nce): positive = the other view's key, negatives = queue.
        loss = 0.5 * (self.loss_fn(q1, k2, queue, self.temperature) + self.loss_fn(q2, k1, queue, self.temperature))
        if self.training:
            self._enqueue(k)
        return loss
