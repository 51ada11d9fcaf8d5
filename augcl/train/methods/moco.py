"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a queue of past keys as negatives.

The loss is symmetrised (each view is a query for the other view's key, as in solo-learn's MoCo v2+) and
both views' keys are enqueued. Under DDP (``world > 1``) the keys of every rank are enqueued, so the queues of
all ranks stay identical, and the key encoder runs with shuffle-BN (MoCo's ``_batch_shuffle_ddp``): the global
batch of key images is permuted (one permutation drawn on rank 0 and broadcast) and each rank encodes a slice
of it, so the key encoder's BN statistics come from other samples than the query encoder's and cannot leak
which key is the positive. With ``--sync-bn`` (global-batch BN) shuffle-BN is not needed and is off. In one
process there is nothing to shuffle across.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from augcl.distributed import world_info
from augcl.train.ddp import all_gather_nograd
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
        shuffle_bn: shuffle the key encoder's batch across ranks under DDP (default on; off with SyncBN).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, head: str = "mlp", temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, backend: Optional[str] = None,
                 hidden_dim: int = 512, out_dim: int = 128, shuffle_bn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head(head, feat_dim, hidden_dim, out_dim)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.temperature, self.momentum, self.shuffle_bn = temperature, momentum, shuffle_bn
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

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys of x [n, C, S, S] (fp32), with shuffle-BN across ranks under DDP."""
        rank, world = world_info()
        if world == 1 or not self.shuffle_bn:
            return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)
        n = x.shape[0]
        x_all = all_gather_nograd(x)  # [W*n, ...] in rank order
        perm = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(perm, src=0)  # every rank uses rank 0's permutation
        k = self.key_projector(self.key_backbone(x_all[perm[rank * n:(rank + 1) * n]]))
        k_all = all_gather_nograd(k.float().contiguous())  # row j: the key of image perm[j]
        k_all = k_all[torch.argsort(perm)]  # back to rank order
        return F.normalize(k_all[rank * n:(rank + 1) * n], dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss (updates key encoder + queue)."""
        # --unmix seam: a mixed view joins here (image mixing of x1 + its extra loss term below).
        q1, q2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        with torch.no_grad():
            if self.training:
                self._momentum_update()
            k = self._keys(torch.cat([x1, x2]))
            k1, k2 = k.chunk(2)
        # --hallucinate seam: the generator stacks hallucinated queries under q1 / q2 (positives k repeated).
        queue = self.queue.clone()  # the loss may keep it for backward; _enqueue writes the buffer in place
        # augcl op: fused InfoNCE (augcl.functional.info_nce): positive = the other view's key, negatives = queue.
        loss = 0.5 * (self.loss_fn(q1, k2, queue, self.temperature) + self.loss_fn(q2, k1, queue, self.temperature))
        if self.training:
            self._enqueue(all_gather_nograd(k))  # identical queues on every rank (k itself in one process)
        return loss
