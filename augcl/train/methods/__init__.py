"""Self-supervised methods of the training driver: ``build_method(name, backbone, ...)``.

Each method is an ``nn.Module`` whose ``forward(*views)`` takes the augmented views of one batch, in the
order of ``augcl.train.augment.view_plan`` (two [B, C, S, S] views; SwAV adds its small crops), and returns
the scalar loss; ``method.backbone`` is the encoder that is evaluated. Optional hooks the trainer calls:
``on_step(step, total_steps)`` before each forward (BYOL's EMA target, SwAV's prototype normalisation) and
``after_backward()`` before the optimizer step (SwAV's frozen prototypes).

The augcl op is called in one place per method (the "augcl op" comment). ``--hallucinate`` (a feature-space
generator extends the embeddings right before the loss) and ``--unmix`` (a mixture of view 1 gets its own
encoder pass and loss term) are options of the methods whose paper used them (methods/extras.py:
HALLUCINATE_METHODS, UNMIX_METHODS); each method's docstring gives its formulation.

| method  | file       | loss (augcl op)                               | needs                          |
|---------|------------|-----------------------------------------------|--------------------------------|
| simclr  | simclr.py  | NT-Xent (augcl.functional.nt_xent)            | global negatives under DDP     |
| moco    | moco.py    | InfoNCE vs queue (augcl.functional.info_nce)  | key encoder, queue, shuffle-BN |
| mocov2  | moco.py    | same, MLP head, temperature 0.2               |                                |
| simsiam | simsiam.py | negative cosine, stop-gradient (no negatives) | predictor                      |
| byol    | byol.py    | cosine regression to an EMA target            | predictor, target, tau schedule|
| swav    | swav.py    | swapped prediction, Sinkhorn codes            | prototypes, multi-crop, queue  |
| mae     | mae.py     | masked-patch pixel MSE (augcl.functional.mae_loss) | ViT, one view              |
| mixedae | mae.py     | mixed-patch MSE + homologous SupCon, top-k attention | ViT, --group, --top-k, --segment, --hc-weight |
| mixedae-naive | mae.py | mixed-patch MSE, plain attention            | ViT, --group                   |

The masked-image methods (methods/mae.py) take one view; their ``epoch_stats()`` adds log.csv columns.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from augcl.train.methods.byol import BYOL
from augcl.train.methods.extras import BOTH_METHODS, HALLUCINATE_METHODS, HARD_METHODS, UNMIX_METHODS, check_flags
from augcl.train.methods.mae import MAE_METHODS, MaskedImageModel
from augcl.train.methods.moco import MoCo
from augcl.train.methods.simclr import SimCLR
from augcl.train.methods.simsiam import SimSiam
from augcl.train.methods.swav import SwAV

__all__ = ["METHODS", "DEFAULT_TEMPERATURE", "HALLUCINATE_METHODS", "UNMIX_METHODS", "BOTH_METHODS", "check_flags",
           "SimCLR", "MoCo", "SimSiam", "BYOL", "SwAV", "build_method"]

METHODS = ("simclr", "moco", "mocov2", "simsiam", "byol", "swav") + MAE_METHODS
# None: the method's loss has no temperature.
DEFAULT_TEMPERATURE = {"simclr": 0.2, "moco": 0.07, "mocov2": 0.2, "simsiam": None, "byol": None, "swav": 0.1,
                       "mae": None, "mixedae": 0.2, "mixedae-naive": None}


def build_method(name: str, backbone: nn.Module, feat_dim: int, *, temperature: Optional[float] = None,
                 backend: Optional[str] = None, queue_size: int = 4096, momentum: float = 0.99,
                 distributed: bool = False, shuffle_bn: bool = True, byol_momentum: float = 0.99,
                 n_prototypes: int = 3000, queue_start_step: int = 0,
                 freeze_prototypes_steps: int = 0, hallucinate: bool = False,
                 unmix: Optional[dict] = None, mae: Optional[dict] = None,
                 hard: Optional[dict] = None) -> nn.Module:
    """The method ``name`` on ``backbone`` (features [B, feat_dim]).

    SimCLR; MoCo v1 (linear head, temperature 0.07) or v2 (MLP head, 0.2), ``queue_size`` keys, key-encoder
    EMA ``momentum``, ``shuffle_bn`` under DDP; SimSiam; BYOL (target EMA base ``byol_momentum``); SwAV
    (``n_prototypes``, temperature 0.1, a queue of ``queue_size`` rows per large crop filled from
    ``queue_start_step``, prototypes frozen for ``freeze_prototypes_steps``). ``distributed``: global
    negatives / Sinkhorn over every rank. Head widths follow the papers, scaled to the backbone: hidden
    max(512, feat_dim) for the contrastive heads, SimSiam 2048 (512 for backbones narrower than 512),
    BYOL hidden max(512, 2 feat_dim) -> 256. ``hallucinate``: a Hallucinator (SimCLR, MoCo, SimSiam);
    ``unmix``: None or dict(alpha=, prob_mixup=, per_sample=) for Un-Mix (SimCLR, MoCo, BYOL, SwAV);
    ValueError for a method that does not take them (see methods/extras.py). mae / mixedae / mixedae-naive:
    ``backbone`` is an augcl.nn.ViTEncoder, ``mae`` None or dict(group=, top_k=, segment=, hc_weight=)
    (methods/mae.py; ``temperature`` is the homologous contrastive term's). ``hard``: None or the keyword
    arguments of augcl.nn.HardSampleGame (SimCLR, MoCo v1 / v2: --hard-samples / --hard-pairs).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    reason = check_flags(name, hallucinate, bool(unmix))
    if reason:
        raise ValueError(reason)
    if hard and name not in HARD_METHODS:  # --hard-samples / --hard-pairs (methods/extras.py)
        raise ValueError(f"hard-sample generation is used with {', '.join(HARD_METHODS)}, not with {name}")
    t = DEFAULT_TEMPERATURE[name] if temperature is None else temperature
    if name in MAE_METHODS:
        return MaskedImageModel(name, backbone, temperature=t, backend=backend, **(mae or {}))
    hidden = max(512, feat_dim)
    if name == "simclr":
        return SimCLR(backbone, feat_dim, t, backend, hidden_dim=hidden, gather_distributed=distributed,
                      hallucinate=hallucinate, unmix=unmix, hard=hard)
    if name in ("moco", "mocov2"):
        head = "linear" if name == "moco" else "mlp"
        return MoCo(backbone, feat_dim, head, t, queue_size, momentum, backend, hidden_dim=hidden,
                    shuffle_bn=shuffle_bn, hallucinate=hallucinate, unmix=unmix, hard=hard)
    if name == "simsiam":
        proj = 2048 if feat_dim >= 512 else 512
        return SimSiam(backbone, feat_dim, proj_dim=proj, pred_hidden=proj // 4, hallucinate=hallucinate,
                       backend=backend)
    if name == "byol":
        return BYOL(backbone, feat_dim, hidden_dim=max(512, 2 * feat_dim), out_dim=256, momentum=byol_momentum,
                    unmix=unmix, backend=backend)
    return SwAV(backbone, feat_dim, hidden_dim=hidden, out_dim=128, n_prototypes=n_prototypes, temperature=t,
                queue_size=queue_size, queue_start_step=queue_start_step,
                freeze_prototypes_steps=freeze_prototypes_steps, distributed=distributed, backend=backend, unmix=unmix)
