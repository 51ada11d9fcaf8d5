"""Hard-sample generation (Wu et al., arXiv 2202.06464; AAAI 2023 "Synthetic Data Can Also Teach") as modules for
a training loop of your own.

* :class:`HardSampleGenerator` G: latent u ~ N(0, I) [B, latent_dim] -> images [B, C, S, S] in [0, 1] (tanh).
* :class:`HardSampleDiscriminator` D: images -> logits [B], spectral norm on every layer.
* :class:`DiffAugment`: :func:`augcl.functional.hard_samples.diff_augment` as a module (differentiable in the
  pixels; applied to real and fake images before D and to synthetic images before the encoder).
* :class:`HardSampleGame`: G, D, their Adam optimisers (in ``state_dict()``: a checkpoint of the model that owns
  the game holds them) and the pair controller. One call per training step::

      game = HardSampleGame(channels=1, image_size=16, mean=(0.5,), std=(0.25,), hard_samples=True)
      for x in loader:                                   # x: real images in [0, 1], [B, C, 16, 16]
          syn = game.step(x, encoder, step, total_steps)  # D step, G step; None during the warm-up
          views, ids = model_views(x), torch.arange(len(x)).repeat(2)
          if syn is not None:                            # synthetic views (detached) and their instance ids
              views, ids = torch.cat([views, syn.views]), torch.cat([ids, syn.ids + len(x)])
          loss = augcl.functional.supcon(encoder(views), ids, 0.2)
          opt.zero_grad(); loss.backward(); opt.step()   # opt holds the encoder's parameters only

What the paper states, and what is augcl's design where its method section is unknown (augcl/train/README.md):
the generator is trained jointly with the model in a min-max game and makes samples hard for the model as it is
now (paper); G's step minimises ``L_adv(G) - beta * L_con(synthetic views)`` with the hinge loss, the
contrastive loss SupCon over instance ids and the encoder differentiated through but not updated (design).
Hard pairs: a pair of similar-but-distinct samples, two views each, four positives, harder over training (paper);
here ``a = G(u)``, ``b = G(u + sigma * eps)`` from one generator rather than two, and sigma set by a feedback
controller so that ``c = mean cos(z(a), z(b))`` follows a target falling linearly from ``pair_sim[0]`` to
``pair_sim[1]`` (design, :func:`augcl.functional.hard_samples.pair_sigma_update`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from augcl.functional.hard_samples import diff_augment, hinge_d_loss, hinge_g_loss, pair_sigma_update, pair_target
from augcl.functional.supcon import supcon

__all__ = ["HardSampleGenerator", "HardSampleDiscriminator", "DiffAugment", "HardSampleGame", "SyntheticViews"]


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or image_size % 4:
        raise ValueError(f"image_size must be an int >= 8 divisible by 4, got {image_size!r}")
    return image_size


class HardSampleGenerator(nn.Module):
    """G: u [B, latent_dim] -> images [B, channels, image_size, image_size] in [0, 1] (``(tanh + 1) / 2``).

    A small deconvnet (DCGAN-like, for 16-32 px): Linear to ``width`` x S/4 x S/4, then two (nearest x2
    upsample, 3x3 conv, BatchNorm, ReLU) stages halving the width, a 3x3 conv to ``channels`` and tanh.

    Args:
        latent_dim: width of u (default 64). channels: image channels. image_size: side S (>= 8, divisible by 4).
        width: channels of the first feature map (default 128).
    """

    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 16, width: int = 128):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, _check_size(image_size)
        s = image_size // 4
        self.fc = nn.Sequential(nn.Linear(latent_dim, width * s * s), nn.BatchNorm1d(width * s * s), nn.ReLU())
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(width // 2, width // 4, 3, padding=1),
            nn.BatchNorm2d(width // 4), nn.ReLU(),
            nn.Conv2d(width // 4, channels, 3, padding=1))
        self._shape = (width, s, s)

    def forward(self, u: Tensor) -> Tensor:
        """u [B, latent_dim] -> [B, C, S, S] in [0, 1]."""
        h = self.fc(u).view(u.shape[0], *self._shape)
        return 0.5 * (torch.tanh(self.net(h)) + 1.0)


class HardSampleDiscriminator(nn.Module):
    """D: images [B, channels, S, S] in [0, 1] -> logits [B]; spectral norm (Miyato et al. 2018) on every layer.

    Two stride-2 4x4 convs (``width``, 2 ``width``) with LeakyReLU(0.2), then a linear layer.
    """

    def __init__(self, channels: int = 1, image_size: int = 16, width: int = 64):
        super().__init__()
        s = _check_size(image_size) // 4
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            nn.Flatten(), spectral_norm(nn.Linear(2 * width * s * s, 1)))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, S, S] (the [0, 1] range; centred to [-1, 1] inside) -> [B]."""
        return self.net(2.0 * x - 1.0).squeeze(1)


class DiffAugment(nn.Module):
    """:func:`augcl.functional.hard_samples.diff_augment` with stored strengths; ``forward(x, generator=None)``.

    Defaults: translate 0.125, flip, brightness / saturation / contrast 1.0 (DiffAugment's ranges)."""

    def __init__(self, translate: float = 0.125, flip: bool = True, brightness: float = 1.0,
                 saturation: float = 1.0, contrast: float = 1.0):
        super().__init__()
        self.kw = dict(translate=translate, flip=flip, brightness=brightness, saturation=saturation,
                       contrast=contrast)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return diff_augment(x, generator=generator, **self.kw)


@dataclass
class SyntheticViews:
    """What :meth:`HardSampleGame.step` gives the model: ``views`` [V, C, S, S] (normalised like the real views,
    detached from G) and ``ids`` [V] (instance ids 0..n-1: 2 views per sample, 4 per pair)."""

    views: Tensor
    ids: Tensor


@contextlib.contextmanager
def _buffers_kept(module: nn.Module):
    """Run the block with ``module``'s buffers (BatchNorm running statistics) restored afterwards: the G step
    differentiates through the encoder in training mode without changing any of its state."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def _average_grads(params: Sequence[Tensor]) -> None:
    """Under torch.distributed, replace each gradient by its mean over the ranks (one all-reduce), so that the
    copies of G and D stay identical on every process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _mean_over_ranks(x: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


class HardSampleGame(nn.Module):
    """G, D, their optimisers and the pair controller; :meth:`step` runs one D step, one G step and returns the
    synthetic views for the model's step.

    Args:
        channels, image_size: the real images' shape (C, S).
        mean, std: per-channel statistics of the encoder's input normalisation (synthetic views are normalised
            with them, like the real ones).
        hard_samples: G's step adds ``-beta * L_con`` (the hardness term) after the warm-up (default True).
        hard_pairs: generate pairs ``a = G(u)``, ``b = G(u + sigma * eps)`` (4 views per instance id) instead of
            single samples (2 views per id) (default False).
        beta: weight of the hardness term (default 0.1).
        per_step: generated images per step and process (pairs: per_step / 2 pairs; default 32).
        temperature: SupCon temperature of the hardness term (the model's loss temperature; default 0.2).
        latent_dim: width of u (default 64).
        pair_sim: (start, end) of the target similarity, linear over training (default (0.9, 0.5)).
        sigma: initial latent distance of the pairs (default 0.5); ``sigma_range`` its clip (0.01, 1.5);
            ``pair_gain`` the controller's gain (default 0.05).
        warmup_steps: steps of plain GAN training (no hardness term, no synthetic views for the model).
        frozen: after the warm-up, G and D are no longer trained (the frozen-GAN control: samples as extra data).
        lr, betas: Adam for G and D (default 2e-4, (0.5, 0.999), the DCGAN recipe).
        backend: augcl backend of the SupCon op (None = automatic).

    Randomness: every draw (latents, augmentations) comes from the ``generator`` passed to :meth:`step`; under
    torch.distributed each process draws its own samples and G / D gradients are averaged over the ranks.
    """

    def __init__(self, channels: int, image_size: int, mean: Sequence[float], std: Sequence[float], *,
                 hard_samples: bool = True, hard_pairs: bool = False, beta: float = 0.1, per_step: int = 32,
                 temperature: float = 0.2, latent_dim: int = 64, pair_sim: Tuple[float, float] = (0.9, 0.5),
                 sigma: float = 0.5, sigma_range: Tuple[float, float] = (0.01, 1.5), pair_gain: float = 0.05,
                 warmup_steps: int = 0, frozen: bool = False, lr: float = 2e-4,
                 betas: Tuple[float, float] = (0.5, 0.999), backend: Optional[str] = None):
        super().__init__()
        if per_step < 2 or (hard_pairs and per_step % 2):
            raise ValueError(f"per_step must be >= 2 (and even with hard_pairs), got {per_step}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values each, got {len(mean)} and {len(std)}")
        self.generator = HardSampleGenerator(latent_dim, channels, image_size)
        self.discriminator = HardSampleDiscriminator(channels, image_size)
        self.augment = DiffAugment()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("sigma", torch.tensor(float(sigma)))
        # fixed latents of the pictures of pairs over training (same u, eps at every snapshot)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("preview_u", torch.randn(8, latent_dim, generator=g))
        self.register_buffer("preview_eps", torch.randn(8, latent_dim, generator=g))
        self.hard_samples, self.hard_pairs, self.beta, self.per_step = hard_samples, hard_pairs, beta, per_step
        self.temperature, self.latent_dim, self.pair_sim = temperature, latent_dim, tuple(pair_sim)
        self.sigma_range, self.pair_gain = tuple(sigma_range), pair_gain
        self.warmup_steps, self.frozen, self.backend = warmup_steps, frozen, backend
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        self.previews: List[Tuple[int, float, Tensor]] = []  # (epoch, sigma, uint8 [2, 8, C, S, S])
        self._stats: Dict[str, Tuple[Tensor, int]] = {}  # read-out -> (sum, steps) since epoch_stats()

    # ------------------------------------------------------------------------------------ state
    def get_extra_state(self) -> Dict:
        """The optimisers' states and the pictures' snapshots, so that the owner's state_dict is complete."""
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "previews": [[e, s, t] for e, s, t in self.previews]}

    def set_extra_state(self, state: Dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.previews = [(int(e), float(s), t) for e, s, t in state["previews"]]

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] images -> the encoder's input range."""
        return (x - self.mean) / self.std

    # ------------------------------------------------------------------------------------ one step
    def _latents(self, generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor]:
        """``(u [n, latent], ids [n])``: n = per_step samples, or per_step / 2 pairs stacked as [a's; b's]."""
        dev = self.sigma.device
        m = self.per_step // 2 if self.hard_pairs else self.per_step
        u = torch.randn(m, self.latent_dim, generator=generator, device=dev)
        ids = torch.arange(m, device=dev)
        if self.hard_pairs:
            eps = torch.randn(m, self.latent_dim, generator=generator, device=dev)
            u, ids = torch.cat([u, u + self.sigma * eps]), ids.repeat(2)
        return u, ids

    def _two_views(self, images: Tensor, ids: Tensor, generator: Optional[torch.Generator]):
        views = self.normalize(torch.cat([self.augment(images, generator), self.augment(images, generator)]))
        return views, ids.repeat(2)

    def step(self, real: Tensor, encoder: nn.Module, step: int, total_steps: int,
             generator: Optional[torch.Generator] = None) -> Optional[SyntheticViews]:
        """One D step and one G step (unless frozen after the warm-up), then the controller's update.

        Args:
            real: real images [B, C, S, S] in [0, 1] (un-augmented; D sees them through :class:`DiffAugment`).
            encoder: normalised images -> embeddings [n, D] (backbone + projector); differentiated through in
                the G step, never updated here (no gradient reaches its parameters, its buffers are restored).
            step, total_steps: training progress (the warm-up and the target similarity follow it).
            generator: the source of every random draw.

        Returns the synthetic views for the model (None during the warm-up).
        """
        warm = step < self.warmup_steps
        train_gan = warm or not self.frozen
        u, ids = self._latents(generator)
        stats = {}
        if train_gan:  # D step: hinge loss on augmented real vs augmented (detached) fake
            with torch.no_grad():
                fake = self.generator(u)
            d_loss = hinge_d_loss(self.discriminator(self.augment(real, generator)),
                                  self.discriminator(self.augment(fake, generator)))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            _average_grads(list(self.discriminator.parameters()))
            self.opt_d.step()
            stats["disc_loss"] = d_loss.detach()
        if train_gan:  # G step: fool D, and (hard samples) raise the model's loss on the synthetic views
            hard = self.hard_samples and not warm
            # (the encoder's buffers are restored after the backward, which reads BatchNorm's running stats)
            with _buffers_kept(encoder) if hard else contextlib.nullcontext():
                fake = self.generator(u)
                g_loss = hinge_g_loss(self.discriminator(self.augment(fake, generator)))
                if hard:
                    views, vid = self._two_views(fake, ids, generator)
                    g_loss = g_loss - self.beta * supcon(encoder(views), vid, self.temperature, backend=self.backend)
                params = list(self.generator.parameters())
                grads = torch.autograd.grad(g_loss, params)  # G only: neither D nor the encoder gets a gradient
            for p, gr in zip(params, grads):
                p.grad = gr
            _average_grads(params)
            self.opt_g.step()
            self.opt_g.zero_grad(set_to_none=True)
            stats["gen_loss"] = g_loss.detach()
            fake = fake.detach()  # the samples of this step: G before its update
        else:
            with torch.no_grad():
                fake = self.generator(u)
        if self.hard_pairs:
            stats.update(self._control(fake, encoder, step, total_steps))
        self._record(stats)
        if warm:
            return None
        with torch.no_grad():
            views, vid = self._two_views(fake, ids, generator)
        return SyntheticViews(views, vid)

    @torch.no_grad()
    def _control(self, images: Tensor, encoder: nn.Module, step: int, total_steps: int) -> Dict[str, Tensor]:
        """c = mean cos(z(a), z(b)) by the current encoder on the un-augmented a and b (in its current mode, its
        buffers restored, averaged over the ranks); sigma <- clip(sigma * exp(gain * (c - s)), lo, hi): c > s (too
        easy) -> sigma grows.

        The encoder runs as the model's step runs it (training mode: BatchNorm with batch statistics). In
        evaluation mode the running statistics of a young model are far from the batch's, and every pair (every
        two images, real ones too) then looked alike, cos ~ 0.99 on digits after one epoch."""
        with _buffers_kept(encoder):
            z = F.normalize(encoder(self.normalize(images)).float(), dim=1)
        a, b = z.chunk(2)
        c = _mean_over_ranks((a * b).sum(1).mean())
        s = pair_target(step / max(1, total_steps), *self.pair_sim)
        sigma = self.sigma.clone()
        self.sigma.copy_(pair_sigma_update(self.sigma, c, s, gain=self.pair_gain, lo=self.sigma_range[0],
                                           hi=self.sigma_range[1]))
        return {"pair_cos": c, "pair_target": torch.tensor(s), "sigma": sigma}

    # ------------------------------------------------------------------------------------ read-outs
    def _record(self, stats: Dict[str, Tensor]) -> None:
        # running sums, not lists: under torchrun only rank 0 reads (and resets) them
        for k, v in stats.items():
            total, n = self._stats.get(k, (0.0, 0))
            self._stats[k] = (total + v.detach().float(), n + 1)

    def epoch_stats(self) -> Dict[str, Optional[float]]:
        """Means since the last call of gen_loss, disc_loss, pair_cos, pair_target and sigma (None for a value
        not measured: no GAN step, or no pairs); resets them."""
        out = {}
        for k in ("gen_loss", "disc_loss", "pair_cos", "pair_target", "sigma"):
            total, n = self._stats.get(k, (0.0, 0))
            out[k] = float(total) / n if n else None
        self._stats = {}
        return out

    @torch.no_grad()
    def snapshot(self, epoch: int) -> None:
        """Keep the 8 preview pairs ``G(u0)``, ``G(u0 + sigma eps0)`` (G in evaluation mode) for the picture."""
        was = self.generator.training
        self.generator.eval()
        try:
            u = torch.cat([self.preview_u, self.preview_u + self.sigma * self.preview_eps])
            img = self.generator(u).mul(255).round().to(torch.uint8).cpu()
        finally:
            self.generator.train(was)
        self.previews.append((epoch, float(self.sigma), img.view(2, 8, *img.shape[1:])))
