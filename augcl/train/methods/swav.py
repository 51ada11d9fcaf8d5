"""SwAV (Caron et al. 2020): online clustering; each crop predicts the Sinkhorn codes of the large crops.

Multi-crop: ``forward(x1, x2, *small)`` gets the two large crops (codes are computed for these) and any
number of small crops (they only predict); the augmentations come from augcl/train/augment.py
(``view_plan``). The prototypes are augcl.nn.SwaVPrototypes, re-normalised to unit length before every step;
the loss is augcl.functional.swav_loss, whose codes come from augcl's stable log-domain Sinkhorn.

Two of SwAV's stabilisers are here: the prototypes get no update during the first ``freeze_prototypes_steps``
steps (:meth:`SwAV.after_backward` drops their gradient, as main_swav.py does; this also keeps DDP's gradient
buckets unchanged), and an optional queue of past large-crop embeddings (``queue_size`` rows per large crop on
this rank), filled from step ``queue_start_step`` on and appended to the Sinkhorn input once full, which
small batches need to spread samples over many prototypes.

The Sinkhorn epsilon defaults to 0.02, not the paper's ImageNet 0.05. With 0.05 (and the temperature 0.1) the
driver's digits run (small CNN, batch 128, 134 prototypes) fell within two epochs into SwAV's trivial solution,
the one the authors' README describes as "loss stuck at ln(nmb_prototypes)": the codes start nearly flat
(entropy 0.83 ln K), the network lowers the loss by flattening its scores, the codes become uniform (0.99 ln K)
and the encoder's features lose rank, so its kNN accuracy fell below the random-init encoder's; it escaped only
after about 8 epochs. The authors' first remedy is a lower epsilon: at 0.02 the codes start peaked (0.47 ln K)
and keep sharpening. A small epsilon is safe here because augcl's Sinkhorn runs in the log domain (no overflow
of exp(scores / epsilon)). The runs: benchmarks/results/swav_digits_cpu-amd-epyc-2t_2026-12-05_diagnosis.md.

``--unmix``: large crop x1 is mixed with its reversed batch and passed to
augcl.functional.swav_loss as ``mixed_outputs`` with ``mix_lam`` / ``mix_partner``, in one of two forms
(``--unmix-swav-form``, the ``mix_form`` of swav_loss):

* ``soft`` (default): the mixture is one more crop; it predicts the lam-mix of the large crops' codes and
  produces no codes itself. It has its own encoder pass.
* ``authors``: szq0214/Un-Mix's ``UnMix_SwAV/.../main_swav_unmix.py``: ``L_ori + lam L_unmix + (1 - lam)
  L_unmix_flip``, where the mixture replaces x1 in two more SwAV losses and its own Sinkhorn codes, in batch
  and in reversed order, are the other crops' targets. As in that script the mixture goes through the
  encoder in one batch with x1 and x2 (their BatchNorm statistics include it), and one lam is drawn per batch
  (unless ``--unmix-per-sample``). Unlike it, the small crops are not mixed (the script also mixes every
  other small crop; its CIFAR setting, the paper's CIFAR numbers, has no small crops), and the queue gets
  the clean large crops once per step (the script pushes to it in each of its three loss calls).

``--hallucinate`` is not offered for SwAV (the Hallucinator paper did not use it).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import augcl.functional as AF
from augcl.nn import SwaVPrototypes
from augcl.train.methods.extras import AugmentedMethod
from augcl.train.models import projection_head


class SwAV(AugmentedMethod):
    """SwAV on a backbone.

    Args:
        backbone: images [B, C, S, S] -> features [B, feat_dim] (what is evaluated); crops of any size.
        feat_dim: the backbone's output width.
        hidden_dim, out_dim: projector Linear-BN-ReLU-Linear widths (SwAV: 2048 -> 128).
        n_prototypes: number of prototypes (SwAV ImageNet: 3000).
        temperature: softmax temperature of the swapped prediction (0.1).
        sinkhorn_iterations, epsilon: Sinkhorn settings (3, 0.02; the paper's ImageNet epsilon 0.05 collapses
            small runs to the uniform assignment, see the module docstring).
        queue_size: rows of the queue per large crop on this rank (0 = no queue).
        queue_start_step: the step from which the queue is filled.
        freeze_prototypes_steps: steps during which the prototypes are not updated.
        distributed: Sinkhorn over every rank's samples (under DDP).
        backend: augcl backend of the Sinkhorn (None = automatic; "eager" = augcl's pure-PyTorch reference).
        unmix: None, or dict(alpha=, prob_mixup=, per_sample=[, swav_form=]): Un-Mix on large crop 1;
            ``swav_form`` is "soft" (default: the mixture is an extra crop predicting mixed codes) or "authors"
            (the mixture replaces x1 in the authors' two extra SwAV losses); see the module docstring.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 n_prototypes: int = 3000, temperature: float = 0.1, sinkhorn_iterations: int = 3,
                 epsilon: float = 0.02, queue_size: int = 0, queue_start_step: int = 0,
                 freeze_prototypes_steps: int = 0, distributed: bool = False, backend: Optional[str] = None,
                 unmix: Optional[dict] = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head("simclr", feat_dim, hidden_dim, out_dim)
        self.prototypes = SwaVPrototypes(out_dim, n_prototypes)
        self.temperature, self.iterations, self.epsilon = temperature, sinkhorn_iterations, epsilon
        self.queue_start_step, self.freeze_prototypes_steps = queue_start_step, freeze_prototypes_steps
        self.distributed = distributed
        self.backend = "reference" if backend == "eager" else backend
        self.step = 0
        # queue[i]: past normalised embeddings of large crop i, newest first after each enqueue.
        self.register_buffer("queue", torch.zeros(2, queue_size, out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.setup_extras(None, unmix, backend)
        self.unmix_form = (unmix or {}).get("swav_form") or "soft"
        if self.unmix_form not in AF.SWAV_MIX_FORMS:
            raise ValueError(f"unmix swav_form must be 'soft' or 'authors', got {self.unmix_form!r}")

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> None:
        """Before each step: remember it and put the prototypes back on the unit sphere (SwAV does this at
        the start of every iteration; the optimizer moves them off it)."""
        self.step = step
        self.prototypes.normalize()

    def after_backward(self) -> None:
        """After backward: drop the prototypes' gradient while they are frozen (the optimizer skips them)."""
        if self.step < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    @property
    def queue_active(self) -> bool:
        return self.queue.shape[1] > 0 and int(self.queue_filled) >= self.queue.shape[1]

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """Push the large crops' embeddings z [2, B, D] to the front of the queue, dropping the oldest rows."""
        length, b = self.queue.shape[1], z.shape[1]
        if b < length:
            self.queue[:, b:] = self.queue[:, :length - b].clone()
            self.queue[:, :b] = z.to(self.queue.dtype)
        else:
            self.queue.copy_(z[:, :length])
        self.queue_filled.add_(b).clamp_(max=length)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *small: torch.Tensor) -> torch.Tensor:
        """x1, x2: [B, C, S, S] the two large crops; small: crops [B, C, s, s] -> the scalar loss."""
        b = x1.shape[0]
        mixed, lam, partner = None, None, None
        joint = self.unmix_cfg is not None and self.unmix_form == "authors"
        large = [x1, x2]
        if joint:  # main_swav_unmix.py: the crops and the mixture of one size go through one encoder batch
            x_mix, lam, partner = self.mix(x1)
            large.append(x_mix)
        z = [F.normalize(self.projector(self.backbone(torch.cat(large))), dim=1)]
        if joint:
            mixed = [self.prototypes(z[0][2 * b:])]
            z[0] = z[0][:2 * b]
        if small:  # one pass for all small crops (same size), so BN sees them together
            z.append(F.normalize(self.projector(self.backbone(torch.cat(small))), dim=1))
        scores = self.prototypes(torch.cat(z))
        crops = scores.split(b)
        queue_scores = None
        if self.queue_active:
            with torch.no_grad():
                queue_scores = [self.prototypes(self.queue[i]) for i in range(2)]
        if self.unmix_cfg is not None and not joint:  # soft form: the mixture's own encoder pass
            x_mix, lam, partner = self.mix(x1)
            mixed = [self.prototypes(F.normalize(self.projector(self.backbone(x_mix)), dim=1))]
        # augcl op: swapped prediction with stable (log-domain) Sinkhorn codes of the two large crops.
        loss = AF.swav_loss(crops[:2], crops[2:], queue_scores, temperature=self.temperature,
                            sinkhorn_iterations=self.iterations, sinkhorn_epsilon=self.epsilon,
                            distributed=self.distributed, backend=self.backend, mixed_outputs=mixed,
                            mix_lam=lam, mix_partner=partner, mix_form=self.unmix_form)
        if self.training and self.queue.shape[1] > 0 and self.step >= self.queue_start_step:
            self._enqueue(z[0].detach().view(2, b, -1))
        return loss
