"""``--hallucinate`` and ``--unmix``: what the methods share to use the Hallucinator (Wu et al. 2023) and
Un-Mix (Shen et al. 2022).

Which method takes which, as the papers used them:

| flag            | methods                          | paper                                                      |
|-----------------|----------------------------------|------------------------------------------------------------|
| ``--hallucinate`` | simclr, moco, mocov2, simsiam  | Wu et al., ICCV 2023 (MoCo v1/v2, SimCLR, SimSiam)         |
| ``--unmix``       | simclr, moco, mocov2, byol, swav | Shen et al., AAAI 2022 (SimCLR, BYOL, MoCo v1/v2, SwAV)  |

Both flags together: simclr, moco and mocov2 (the methods both papers share). Anything else is a ConfigError
(one line, exit 2) naming the methods that support the flag.

:class:`AugmentedMethod` is the mixin of the methods: it holds the optional ``hallucinator``
(augcl.nn.Hallucinator, a submodule, so its parameters are in ``method.parameters()``, hence in the optimizer,
and in the checkpoint) and the Un-Mix settings, and draws every random number (Un-Mix's lam / box / mode, the
Hallucinator's lam) from ``self.rng``, a torch.Generator the trainer re-seeds at every epoch from (seed, epoch,
rank): runs reproduce, and a resumed run draws what an uninterrupted one would have.

``--hard-samples`` / ``--hard-pairs`` (Wu et al., arXiv 2202.06464; simclr, moco, mocov2): the mixin holds the
optional ``hard`` submodule, an augcl.nn.HardSampleGame (generator, discriminator, their optimisers, the pair
controller); the trainer calls :meth:`AugmentedMethod.hard_step` before each forward (the game's D and G steps)
and passes the synthetic views it returns to the method's forward, whose loss then becomes SupCon over instance
ids on real + synthetic views (methods/simclr.py, methods/moco.py). The main optimizer takes
:meth:`AugmentedMethod.model_parameters` (G and D excluded: the game's own Adam optimisers update them).

Un-Mix mixes the first view x1 with its reversed batch (``augcl.functional.unmix``, pairing "reverse", as the
reference's ``torch.flip(x[0], (0,))``) and the mixture gets its own encoder pass (the reference calls the
encoder on it separately, so the clean views' BatchNorm statistics are those of the run without Un-Mix) —
except SwAV with ``--unmix-swav-form authors``, whose mixture shares the encoder batch with the two views as in
the authors' main_swav_unmix.py (methods/swav.py).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

import augcl.functional as AF
from augcl.distributed import world_info
from augcl.nn import Hallucinator, HardSampleGame
from augcl.train.augment import resize_normalize

__all__ = ["HALLUCINATE_METHODS", "UNMIX_METHODS", "BOTH_METHODS", "HARD_METHODS", "HARD_OPTIONS",
           "AugmentedMethod", "check_flags", "check_hard_flags", "op_backend"]

HALLUCINATE_METHODS = ("simclr", "moco", "mocov2", "simsiam")
UNMIX_METHODS = ("simclr", "moco", "mocov2", "byol", "swav")
BOTH_METHODS = tuple(m for m in HALLUCINATE_METHODS if m in UNMIX_METHODS)
# --hard-samples / --hard-pairs: the frameworks the paper names (SimCLR; MoCo as the other standard one).
HARD_METHODS = ("simclr", "moco", "mocov2")
# The options of --hard-samples / --hard-pairs (command-line destinations).
HARD_OPTIONS = ("gen_warmup_epochs", "synthetic_per_batch", "hard_beta", "pair_sim_start", "pair_sim_end",
                "pair_gain", "synthetic")


def _names(methods) -> str:
    return ", ".join(methods[:-1]) + " and " + methods[-1]


def check_flags(method: str, hallucinate: bool, unmix: bool) -> Optional[str]:
    """None if ``method`` supports the requested flags, else the reason (one line, for a ConfigError)."""
    if hallucinate and method not in HALLUCINATE_METHODS:
        return (f"--hallucinate: the Hallucinator is used with {_names(HALLUCINATE_METHODS)} (the paper's "
                f"placements), not with --method {method}")
    if unmix and method not in UNMIX_METHODS:
        return (f"--unmix: Un-Mix is used with {_names(UNMIX_METHODS)} (the paper's methods), not with "
                f"--method {method}")
    return None


def check_hard_flags(raw: Dict) -> Optional[str]:
    """None if the --hard-samples / --hard-pairs options of the command line ``raw`` fit together, else the
    reason (one line, for a ConfigError)."""
    samples, pairs = bool(raw.get("hard_samples")), bool(raw.get("hard_pairs"))
    flag = "--hard-samples" if samples else "--hard-pairs"
    if not (samples or pairs):
        for key in HARD_OPTIONS:
            if raw.get(key) is not None:
                return f"--{key.replace('_', '-')} is an option of --hard-samples / --hard-pairs; add one of them"
        return None
    if raw["method"] not in HARD_METHODS:
        return (f"{flag}: hard-sample generation is used with {_names(HARD_METHODS)} (contrastive frameworks "
                f"with instance positives), not with --method {raw['method']}")
    if raw.get("hallucinate") or raw.get("unmix"):
        return f"{flag} cannot be combined with --hallucinate or --unmix (each changes the same loss)"
    if raw.get("hard_beta") is not None and not samples:
        return "--hard-beta weighs the hardness term of --hard-samples, which is not given"
    if raw.get("hard_beta") is not None and raw.get("synthetic") == "frozen":
        return "--hard-beta: with --synthetic frozen the generator has no hardness term (it is a plain GAN)"
    for key in ("pair_sim_start", "pair_sim_end", "pair_gain"):
        if raw.get(key) is not None and not pairs:
            return f"--{key.replace('_', '-')} is an option of --hard-pairs' controller, which is not given"
    start = 0.9 if raw.get("pair_sim_start") is None else raw["pair_sim_start"]
    end = 0.5 if raw.get("pair_sim_end") is None else raw["pair_sim_end"]
    if pairs and start < end:
        return (f"--pair-sim-start {start:g} is below --pair-sim-end {end:g}: the pairs' target similarity "
                "falls over training (they get harder)")
    if raw.get("synthetic") == "frozen" and raw.get("gen_warmup_epochs") == 0:
        return "--synthetic frozen trains the GAN during --gen-warmup-epochs, which must then be > 0"
    return None


def op_backend(backend: Optional[str]) -> Optional[str]:
    """The augcl backend of the Hallucinator / Un-Mix ops for the driver's ``backend``: ``--backend eager``
    runs augcl's pure-PyTorch reference of each op (there is no second eager implementation in the driver)."""
    return "reference" if backend == "eager" else backend


class AugmentedMethod(nn.Module):
    """Mixin of the methods: optional Hallucinator and Un-Mix, random numbers from ``self.rng``.

    Call :meth:`setup_extras` in ``__init__``; the trainer calls :meth:`set_rng` at every epoch.
    """

    hallucinator: Optional[Hallucinator]

    def setup_extras(self, hallucinate_dim: Optional[int] = None, unmix: Optional[dict] = None,
                     backend: Optional[str] = None) -> None:
        """``hallucinate_dim``: build a Hallucinator(dim) (the width of the embeddings it extends), or None.
        ``unmix``: None, or dict(alpha=, prob_mixup=, per_sample=) for ``augcl.functional.unmix``."""
        self.op_backend = op_backend(backend)
        self.hallucinator = (Hallucinator(hallucinate_dim, backend=self.op_backend)
                             if hallucinate_dim is not None else None)
        self.unmix_cfg = dict(unmix) if unmix else None
        self.rng: Optional[torch.Generator] = None

    def setup_hard(self, hard: Optional[dict] = None) -> None:
        """``hard``: None, or the keyword arguments of an augcl.nn.HardSampleGame (the generator, discriminator,
        their optimisers and the pair controller), built as the submodule ``hard``. Its parameters are left out
        of :meth:`model_parameters` (the main optimizer's) and of DDP (G / D average their own gradients)."""
        self.hard = HardSampleGame(**hard) if hard else None
        if self.hard is not None:
            self._ddp_params_and_buffers_to_ignore = [f"hard.{n}" for n, _ in self.hard.named_parameters()] + \
                [f"hard.{n}" for n, _ in self.hard.named_buffers()]

    def model_parameters(self):
        """The parameters the main optimizer updates: all but the hard-sample generator's and discriminator's."""
        game = set(map(id, self.hard.parameters())) if getattr(self, "hard", None) is not None else set()
        return [p for p in self.parameters() if id(p) not in game]

    def hard_step(self, x: Tensor, step: int, total_steps: int) -> Dict[str, Tensor]:
        """The game's D and G steps on the real uint8 batch ``x`` [B, C, H, W]; returns the model's extra forward
        arguments: ``{"syn_views": [V, C, S, S], "syn_ids": [V]}``, or {} (no game, or its warm-up)."""
        if getattr(self, "hard", None) is None:
            return {}
        game = self.hard
        real = resize_normalize(x, game.generator.image_size, torch.zeros_like(game.mean.view(-1)),
                                torch.ones_like(game.std.view(-1)))
        syn = game.step(real, nn.Sequential(self.backbone, self.projector), step, total_steps,
                        self._rng_for(x.device))
        return {} if syn is None else {"syn_views": syn.views, "syn_ids": syn.ids}

    def epoch_stats(self) -> Dict[str, Optional[float]]:
        """The game's log.csv columns (gen_loss, disc_loss, pair_cos, pair_target, sigma), or none."""
        return self.hard.epoch_stats() if getattr(self, "hard", None) is not None else {}

    def instance_ids(self, batch: int, syn_ids: Tensor) -> Tensor:
        """SupCon labels of [view 1 (B); view 2 (B); synthetic views]: image i -> i, synthetic id j -> B + j,
        offset per rank so that ids are unique over the global batch under DDP."""
        rank, _ = world_info()
        real = torch.arange(batch, device=syn_ids.device).repeat(2)
        offset = rank * (batch + syn_ids.numel())  # (ids < numel: no host sync for the max)
        return torch.cat([real, syn_ids + batch]) + offset

    def set_rng(self, generator: Optional[torch.Generator]) -> None:
        """The generator of this epoch's Un-Mix and Hallucinator draws (None: torch's global one)."""
        self.rng = generator

    def _rng_for(self, device: torch.device) -> Optional[torch.Generator]:
        g = self.rng
        return g if g is not None and g.device.type == device.type else None

    def mix(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Un-Mix of a view x [B, C, S, S]: ``(mixed, lam [B], partner [B])``, sample i mixed with B-1-i."""
        c = self.unmix_cfg
        return AF.unmix(x, alpha=c["alpha"], prob_mixup=c["prob_mixup"], per_sample=c["per_sample"],
                        pairing="reverse", generator=self._rng_for(x.device), backend=self.op_backend)

    def hallucinate_lam(self, batch: int, device: torch.device) -> Tensor:
        """One draw of the Hallucinator's lam ~ U(0, 0.1) (0-dim; the reference draws one per call)."""
        return self.hallucinator.sample_lam(batch, device, generator=self._rng_for(device))
