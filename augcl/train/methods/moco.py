"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a queue of past keys as negatives.

The loss is symmetrised (each view is a query for the other view's key, as in solo-learn's MoCo v2+) and
both views' keys are enqueued. Under DDP (``world > 1``) the keys of every rank are enqueued, so the queues of
all ranks stay identical, and the key encoder runs with shuffle-BN (MoCo's ``_batch_shuffle_ddp``): the global
batch of key images is permuted (one permutation drawn on rank 0 and broadcast) and each rank encodes a slice
of it, so the key encoder's BN statistics come from other samples than the query encoder's and cannot leak
which key is the positive. With ``--sync-bn`` (global-batch BN) shuffle-BN is not needed and is off. In one
process there is nothing to shuffle across.

Options (augcl/train/methods/extras.py), per side (query view a, key view b) of the symmetrised loss:

* ``--hallucinate`` (augcl.functional.hallucinate_moco_loss): after the projector, queries [q_a; h]
  against positives [k_b; k_b] and the queue, ``(CE(q_a, k_b) + CE(h, k_b)) / 2``, h = Hallucinator(q_a, k_b)
  (one call per side, independent lam; q not normalised before the generator, the reference's choice). The keys
  are enqueued once (the reference enqueues [k; k], duplicating every queue entry).
* ``--unmix`` (augcl.functional.unmix_info_nce, form "reference"): x1 mixed with its reversed batch,
  queries q_m of the mixtures (own encoder pass), ``CE(q_a, k_b) + lam CE(q_m, k_b) + (1 - lam) CE(flip(q_m),
  k_b)``: unmix_c10.py's symmetric loss (there the mixture of im1 is a query of both sides' keys), halved
  like the clean loss.
* ``--hard-samples`` / ``--hard-pairs`` (the game in ``self.hard``, methods/extras.py): the real views keep the
  symmetrised InfoNCE against the queue; the synthetic views (2 per sample, 4 per pair) are encoded in the same
  query pass and by the key encoder, and add augcl.functional.supcon over instance ids on their queries and keys
  (a query's positives: the other views' queries and keys of its sample or pair; negatives: the other synthetic
  rows). The two terms are averaged over anchors, ``(2B * L_real + V * L_syn) / (2B + V)``; only the real keys
  are enqueued (the synthetic samples change as the generator trains).
* both: the Hallucinator's loss of each side plus the same Un-Mix mixture term
  ``lam CE(q_m, k_b) + (1 - lam) CE(q_m, k_b[partner])`` (one info_nce call over [q_m; q_m]).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import augcl.functional as AF
from augcl.distributed import world_info
from augcl.train.ddp import all_gather_nograd
from augcl.train.methods.extras import AugmentedMethod
from augcl.train.methods.losses import info_nce_fn
from augcl.train.models import projection_head


class MoCo(AugmentedMethod):
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
        hallucinate: add a Hallucinator(out_dim) after the projector.
        unmix: None, or dict(alpha=, prob_mixup=, per_sample=): Un-Mix on view 1.
        hard: None, or the keyword arguments of augcl.nn.HardSampleGame (``--hard-samples`` / ``--hard-pairs``).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, head: str = "mlp", temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, backend: Optional[str] = None,
                 hidden_dim: int = 512, out_dim: int = 128, shuffle_bn: bool = True, hallucinate: bool = False,
                 unmix: Optional[dict] = None, hard: Optional[dict] = None):
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
        self.setup_extras(out_dim if hallucinate else None, unmix, backend)
        self.setup_hard(hard)

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

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, syn_views: Optional[torch.Tensor] = None,
                syn_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images (and the game's synthetic views with their
        instance ids) -> the scalar loss (updates key encoder + queue)."""
        b = x1.shape[0]
        x = torch.cat([x1, x2] + ([syn_views] if syn_views is not None else []))
        q = self.projector(self.backbone(x))
        q1, q2 = q[:b], q[b:2 * b]
        with torch.no_grad():
            if self.training:
                self._momentum_update()
            k = self._keys(x)
            k_syn, k = k[2 * b:], k[:2 * b]
            k1, k2 = k.chunk(2)
        queue = self.queue.clone()  # the loss may keep it for backward; _enqueue writes the buffer in place
        if self.hallucinator is None and self.unmix_cfg is None:
            # augcl op: fused InfoNCE (augcl.functional.info_nce): positive = the other view's key, negatives = queue.
            loss = 0.5 * (self.loss_fn(q1, k2, queue, self.temperature)
                          + self.loss_fn(q2, k1, queue, self.temperature))
            if syn_views is not None:  # augcl op: fused SupCon over instance ids, synthetic queries and keys
                v = syn_views.shape[0]
                syn = AF.supcon(torch.cat([q[2 * b:].float(), k_syn]), syn_ids.repeat(2), self.temperature,
                                backend=self.op_backend)
                loss = (2 * b * loss + v * syn) / (2 * b + v)
        else:
            loss = 0.5 * self._extras_loss(x1, (q1, q2), (k2, k1), queue)
        if self.training:
            self._enqueue(all_gather_nograd(k))  # identical queues on every rank (k itself in one process)
        return loss

    def _extras_loss(self, x1: torch.Tensor, queries, keys, queue: torch.Tensor) -> torch.Tensor:
        """Sum over the two sides (q_a, k_b) of the --hallucinate / --unmix loss (see the module docstring)."""
        t, backend, b = self.temperature, self.op_backend, x1.shape[0]
        if self.unmix_cfg is not None:
            x_mix, lam, partner = self.mix(x1)
            q_mix = self.projector(self.backbone(x_mix))
        total = 0.0
        for q, k in zip(queries, keys):
            if self.hallucinator is None:  # Un-Mix alone: one fused call per side
                total = total + AF.unmix_info_nce(q, k, q_mix, lam, partner, queue, t, backend=backend)
                continue
            total = total + AF.hallucinate_moco_loss(self.hallucinator, q.float(), k, queue, t,
                                                     lam=self.hallucinate_lam(b, q.device), backend=backend)
            if self.unmix_cfg is not None:  # the mixture term: rows [q_m -> k_i; q_m -> k_{partner_i}]
                rows = AF.info_nce(torch.cat([q_mix, q_mix]), torch.cat([k, k[partner]]), queue, t,
                                   reduction="none", backend=backend)
                total = total + (lam * rows[:b] + (1 - lam) * rows[b:]).mean()
        return total
