"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target network's projection.

No negatives, hence no contrastive op: each rank's loss involves only its own samples (BN statistics per
rank unless ``--sync-bn``). The target network is updated by :meth:`BYOL.on_step`, before each forward, with
the momentum of BYOL's schedule: ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` at step k of K, i.e.
tau_base at the start, 1 at the end. Like the learning rate, tau continues on ``--resume`` with another
``--epochs``: from the resume step a new cosine runs from the current tau to 1 at the new last step (restarting the
cosine over the new total would move tau back towards tau_base: a faster-moving target in the middle of a run);
and when ``--lr`` restarts the learning rate's cosine, tau restarts from tau_base (:meth:`BYOL.on_resume`).

``--unmix`` (Un-Mix, Shen et al. 2022): x1 is mixed with its reversed batch, ``m_j = mix(x1_j,
x1_{p_j})`` with weight lam_j of x1_j, and the loss gains the term of the Un-Mix code for BYOL,
``lam * BYOL(x2, m) + (1 - lam) * BYOL(x2, flip(m))`` (README of szq0214/Un-Mix: ``model([x[1], mixed])``,
BYOL's loss symmetric in its two inputs as in the htdt/self-supervised code it builds on). Per pair (clean
view-2 sample c, mixture j) the weight is the share of sample c in mixture j: lam_j for c = j, 1 - lam_j for
c = p_j, so::

    L_mix = mean_j [ lam_j     (reg(p_m,j, z'2,j)     + reg(p2,j,     z'm,j))
                   + (1 - lam_j) (reg(p_m,j, z'2,p_j) + reg(p2,p_j, z'm,j)) ]

Because ``reg(p, z) = 2 - 2 <p/|p|, z/|z|>`` is linear in the normalised target, the first column is the
regression of the mixture's prediction to the lam-mix of the two targets,
``2 - 2 <p_m,j/|p_m,j|, lam_j z'2,j/|z'2,j| + (1 - lam_j) z'2,p_j/|z'2,p_j|>``: the mixture's target is the
lam-mix of its sources' (normalised) targets. The mixture gets its own online and target pass.
``--hallucinate`` is not offered for BYOL (the Hallucinator paper did not use it).
"""
from __future__ import annotations

import copy
import math

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from augcl.train.methods.extras import AugmentedMethod


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear-BN-ReLU-Linear (paper: 4096 hidden, 256 out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_b ||normalize(p_b) - normalize(z_b)||^2 = mean_b (2 - 2 cos(p_b, z_b))``, z detached; fp32."""
    return regression_rows(p, z).mean()


def regression_rows(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p_b, z_b)`` per row [B], z detached; fp32."""
    return 2.0 - 2.0 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)


class BYOL(AugmentedMethod):
    """BYOL on a backbone.

    Args:
        backbone: the online encoder [B, C, S, S] -> [B, feat_dim] (what is evaluated).
        feat_dim: the backbone's output width.
        hidden_dim, out_dim: projector / predictor widths (paper: 4096 / 256).
        momentum: tau_base of the target EMA (0.99 here, CIFAR recipes; the paper's ImageNet value: 0.996).
        unmix: None, or dict(alpha=, prob_mixup=, per_sample=): Un-Mix on view 1 (module docstring).
        backend: augcl backend of the mixing op (None = automatic; "eager" = augcl's reference).

    Loss: ``regression_loss(p1, z2') + regression_loss(p2, z1')`` (symmetrised as in the paper; in [0, 8]),
    with p the online predictions and z' the target projections.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden_dim: int = 4096, out_dim: int = 256,
                 momentum: float = 0.99, unmix: Optional[dict] = None, backend: Optional[str] = None):
        super().__init__()
        self.backbone = backbone
        self.projector = byol_mlp(feat_dim, hidden_dim, out_dim)
        self.predictor = byol_mlp(out_dim, hidden_dim, out_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum_base = momentum
        self.register_buffer("tau", torch.tensor(momentum, dtype=torch.float64))
        # tau's schedule as cosine pieces (start step, end step, tau at start), one more per resume with another
        # total; saved in the checkpoint as the module's extra state
        self._tau_pieces: List[Tuple[int, int, float]] = []
        self.setup_extras(None, unmix, backend)

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> None:
        """Set tau for ``step`` of ``total_steps`` and move the target towards the online network (from the
        second step on; the target starts as a copy)."""
        if step > 0:
            tau = float(self.tau)
            for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
                for po, pt in zip(online.parameters(), target.parameters()):
                    pt.mul_(tau).add_(po.detach(), alpha=1.0 - tau)
        if not self._tau_pieces:
            self._tau_pieces = [(0, int(total_steps), float(self.momentum_base))]
        else:  # another total than the schedule's, where no trainer called on_resume: continue
            self.on_resume(step, total_steps, restart=False)
        self.tau.fill_(self._tau_at(step))

    def on_resume(self, step: int, total_steps: int, restart: bool) -> None:
        """A run resumed at ``step`` of now ``total_steps``. ``restart`` (the learning rate's cosine restarts from a
        new peak, ``--lr`` given again): tau restarts too, from tau_base to 1 at the new end, so the target moves
        again (a finished run sits at tau = 1, a frozen target). Otherwise, with another total, tau continues from
        its current value; with the same total nothing changes."""
        if not self._tau_pieces or step >= total_steps:
            return
        if restart:
            self._tau_pieces.append((int(step), int(total_steps), float(self.momentum_base)))
        elif self._tau_pieces[-1][1] != total_steps:
            self._tau_pieces.append((int(step), int(total_steps), self._tau_at(step)))

    def _tau_at(self, step: int) -> float:
        """tau at ``step`` on the current schedule (its last piece that has begun)."""
        start, end, tau0 = next(p for p in reversed(self._tau_pieces) if p[0] <= step or p is self._tau_pieces[0])
        progress = min(1.0, max(0, step - start) / max(1, end - start))
        return 1.0 - (1.0 - tau0) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def get_extra_state(self) -> dict:
        return {"tau_pieces": [list(p) for p in self._tau_pieces]}

    def set_extra_state(self, state: dict) -> None:
        self._tau_pieces = [(int(a), int(b), float(t)) for a, b, t in state["tau_pieces"]]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint of an augcl.train without the pieces: the schedule starts over at the next step (as it did)
        state_dict.setdefault(prefix + "_extra_state", {"tau_pieces": []})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] two views of the same B images -> the scalar loss."""
        p1, p2 = self.predictor(self.projector(self.backbone(torch.cat([x1, x2])))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(torch.cat([x1, x2]))).chunk(2)
        loss = regression_loss(p1, z2) + regression_loss(p2, z1)
        if self.unmix_cfg is None:
            return loss
        x_mix, lam, partner = self.mix(x1)
        p_m = self.predictor(self.projector(self.backbone(x_mix)))
        with torch.no_grad():
            z_m = self.target_projector(self.target_backbone(x_mix))
        own = regression_rows(p_m, z2) + regression_rows(p2, z_m)
        other = regression_rows(p_m, z2[partner]) + regression_rows(p2[partner], z_m)
        return loss + (lam * own + (1 - lam) * other).mean()
