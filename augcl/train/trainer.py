"""The training run behind ``python -m augcl.train``: configuration, loop, evaluation, logs and checkpoints.

``run(args, given)`` resolves the command line into a plain ``config`` dict (automatic defaults filled in,
stored in every checkpoint and in metrics.json), then:

1. checks what needs no data (:func:`_open`): the output folder can be written, the ``--resume`` checkpoint
   verifies (augcl/train/checkpoint.py), the options fit together; and which optional dependencies are there
   (without matplotlib there is no curves.png, without scikit-learn no linear probe);
2. loads the data (augcl/train/data.py; with ``--inflate``, AdaInf's generated images) and builds backbone +
   method (models.py, methods/); under torchrun, joins the process group and wraps the method in DDP (ddp.py);
3. evaluates the random-init encoder (kNN + linear probe: the baseline the trained one must beat);
4. trains (:func:`_train_epoch`): per step, the method's augmented views made on the device
   (augment.view_plan: two, or SwAV's multi-crop), the method's loss (the augcl op), AdamW/SGD with a per-step
   warmup + cosine schedule (schedule.py); per epoch (:func:`_end_of_epoch`), a kNN monitor, ``log.csv``,
   ``curves.png`` and ``last.pt``;
5. fits the linear probe on the final frozen features and writes ``metrics.json`` (:func:`_finish`).

Randomness: the model is initialised from ``--seed``; epoch e's shuffling and augmentations use generators
seeded from (seed, e) (and the rank, for augmentations under DDP), so a resumed run draws exactly what an
uninterrupted one would have.

Under DDP ``--batch-size`` is the global batch (each rank trains on batch / world), only rank 0 evaluates,
prints and writes files, and the logged loss is the mean over the ranks (see augcl/train/ddp.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from augcl._validate import checks_enabled, set_checks
from augcl._version import __version__
from augcl.dispatch import REGISTRY, BackendUnavailableError
from augcl.train import ddp
from augcl.train.augment import augment, resize_normalize, view_plan
from augcl.train.checkpoint import load_checkpoint, restore_state, rng_state, save_checkpoint
from augcl.train.data import (DataBundle, EpochSampler, InflatedDataset, eval_loader, load_data, load_inflation,
                              parse_data_spec, train_loader)
from augcl.train.errors import ConfigError, TrainingError, sklearn_reason, warn
from augcl.train.evaluate import extract_features, knn_top1, linear_probe_top1
from augcl.train.methods import DEFAULT_TEMPERATURE, build_method, check_flags
from augcl.train.methods.extras import HARD_OPTIONS, check_hard_flags, op_backend
from augcl.train.methods.mae import MAE_METHODS, check_mae_flags, resolve_mae_options
from augcl.train.models import build_backbone
from augcl.train.outputs import check_out_dir, make_out_dir, plot_curves, plot_reason, write_csv, write_json
from augcl.train.outputs import plot_pairs
from augcl.train.data import stratified_fraction
from augcl.train.schedule import continue_schedule, cosine_schedule, lr_at

# Per-dataset defaults (the "auto" of --image-size, --epochs, --batch-size). digits is tuned to finish in a
# few minutes on a 2-core CPU with the small backbone.
DATA_DEFAULTS = {
    "digits": dict(image_size=16, epochs=10, batch_size=128),
    "synthetic": dict(image_size=16, epochs=5, batch_size=64),
    "cifar10": dict(image_size=32, epochs=100, batch_size=256),
    "cifar100": dict(image_size=32, epochs=100, batch_size=256),
    "imagefolder": dict(image_size=64, epochs=100, batch_size=256),
}
# Base learning rates, scaled linearly with batch_size / 256 (SGD: SimCLR's 0.3, MoCo's 0.03 x 2, SimSiam's
# 0.05; BYOL and SwAV without LARS: 0.12).
BASE_LR = {"adamw": 2e-3,
           "sgd": {"simclr": 0.3, "moco": 0.06, "mocov2": 0.06, "simsiam": 0.05, "byol": 0.12, "swav": 0.12}}
WEIGHT_DECAY = {"adamw": 1e-4, "sgd": 5e-4}
# Settings a resumed run must share with its checkpoint (they shape the model, the data stream or the
# optimizer's state).
FROZEN_ON_RESUME = ("method", "data", "backbone", "cifar_stem", "image_size", "batch_size", "seed", "queue_size",
                    "prototypes", "small_crops", "inflate", "inflate_weight", "aug", "hallucinate", "unmix",
                    "unmix_alpha", "unmix_prob_mixup", "unmix_per_sample", "optimizer", "patch_size", "group",
                    "top_k", "segment", "hc_weight")
# The value of a frozen setting in a checkpoint written before the setting existed.
FROZEN_ABSENT = {"hallucinate": False, "unmix": False, "unmix_alpha": None, "unmix_prob_mixup": None,
                 "unmix_per_sample": None, "patch_size": None, "group": None, "top_k": None, "segment": None,
                 "hc_weight": None}
UNMIX_DEFAULTS = {"unmix_alpha": 1.0, "unmix_prob_mixup": 0.5, "unmix_per_sample": False}
# --hard-samples / --hard-pairs and --data-fraction are frozen too (values in checkpoints from before them).
HARD_FROZEN_ABSENT = dict({"hard_samples": False, "hard_pairs": False, "data_fraction": 1.0},
                          **{key: None for key in HARD_OPTIONS})
FROZEN_ON_RESUME += tuple(HARD_FROZEN_ABSENT)
FROZEN_ABSENT.update(HARD_FROZEN_ABSENT)
# SwAV: the prototypes get no update for this many steps at most (main_swav.py: 313, one ImageNet epoch).
SWAV_FREEZE_STEPS = 313
# Arguments that are run-local: never taken from the checkpoint's command line.
RUN_LOCAL = ("resume", "out")
# Measured on a shared 2-core CPU, 1 epoch of the default digits run: fp32 18 s, bf16 22 s, fp16 158 s (the
# CPU autocast runs fp16 convolutions and matmuls without fast kernels).
FP16_CPU_WARNING = ("--amp fp16 on a CPU is about 9x slower than fp32 (no fast fp16 kernels there); "
                    "use --amp bf16 or --amp off")


def _epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, stream[, rank]) (stream 0: shuffling, 1: augmentation;
    rank > 0: that rank's own augmentations under DDP)."""
    entropy = [seed, epoch, stream] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) >> 1


def _check_image_size(size: Optional[int]) -> None:
    if size is not None and not 8 <= size <= 1024:
        raise ConfigError(f"--image-size {size}: images must be 8 to 1024 px on a side")


def check_augment_flags(raw: Dict) -> None:
    """ConfigError unless --method takes the --hallucinate / --unmix options requested (methods/extras.py)."""
    reason = (check_flags(raw["method"], bool(raw.get("hallucinate")), bool(raw.get("unmix")))
              or check_mae_flags(raw) or check_hard_flags(raw))
    if reason:
        raise ConfigError(reason)
    if not raw.get("unmix"):
        for key in UNMIX_DEFAULTS:
            if raw.get(key) is not None:
                raise ConfigError(f"--{key.replace('_', '-')} is an Un-Mix option; add --unmix")
    if raw.get("unmix_swav_form") is not None:
        if not raw.get("unmix"):
            raise ConfigError("--unmix-swav-form is an Un-Mix option of --method swav; add --unmix")
        if raw["method"] != "swav":
            raise ConfigError(f"--unmix-swav-form sets the form of SwAV's Un-Mix loss; --method is {raw['method']}")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda devices are supported")
    return device


# --------------------------------------------------------------------------------------- configuration
def resolve_config(raw: Dict, train_size: int, device: torch.device, world: int = 1) -> Dict:
    """Fill in every automatic (None / "auto") setting of the raw command line ``raw``; returns a JSON-able dict.

    ``train_size``: real training images; ``world``: processes (``batch_size`` is the global batch). Raises
    ConfigError for values that cannot work together (batch larger than the data, queue too small, ...).
    """
    cfg = dict(raw)
    check_augment_flags(cfg)
    cfg["hallucinate"], cfg["unmix"] = bool(cfg.get("hallucinate")), bool(cfg.get("unmix"))
    for key, default in UNMIX_DEFAULTS.items():
        cfg[key] = (default if cfg.get(key) is None else cfg[key]) if cfg["unmix"] else None
    cfg["unmix_swav_form"] = ((cfg.get("unmix_swav_form") or "soft") if cfg["unmix"] and cfg["method"] == "swav"
                              else None)
    kind, _ = parse_data_spec(raw["data"])
    for key in ("image_size", "epochs", "batch_size"):
        if cfg[key] is None:
            cfg[key] = DATA_DEFAULTS[kind][key]
    cfg["device"] = str(device)
    cfg["world_size"] = world
    _check_image_size(cfg["image_size"])
    _check_batch(cfg["batch_size"], train_size, world)
    resolve_mae_options(cfg, world)  # (mae / mixedae: the ViT and its mixing; None for the other methods)
    _resolve_hard_options(cfg, world)
    if cfg["backbone"] is None:
        cfg["backbone"] = "small" if device.type == "cpu" else "resnet18"
    if cfg["cifar_stem"] is None:
        cfg["cifar_stem"] = cfg["image_size"] <= 64
    _resolve_optimizer(cfg)
    _resolve_method_options(cfg, train_size, world)
    if cfg["inflate"] is None and cfg["inflate_weight"] is not None:
        raise ConfigError("--inflate-weight sets the real:generated sampling weight of --inflate PATH, "
                          "which is not given")
    if cfg["inflate"] is not None and cfg["inflate_weight"] is None:
        cfg["inflate_weight"] = 10
    if cfg["aug"] is None:
        cfg["aug"] = "weak" if cfg["inflate"] else "standard"  # AdaInf: inflated data, weaker augmentation
    if cfg["num_workers"] is None:
        cfg["num_workers"] = 0 if kind != "imagefolder" else min(4, os.cpu_count() or 1)
    return cfg


def _check_batch(b: int, train_size: int, world: int) -> None:
    if b < 2:
        raise ConfigError(f"--batch-size {b}: contrastive losses need at least 2 images per batch")
    if b > train_size:
        raise ConfigError(f"--batch-size {b} is larger than the training set ({train_size} images)")
    if b % world or b // world < 2:
        raise ConfigError(f"--batch-size {b} is the global batch: it must split into {world} processes of at "
                          f"least 2 images each (a multiple of {world}, >= {2 * world})")


def _resolve_optimizer(cfg: Dict) -> None:
    """Optimizer, peak lr (scaled with batch / 256), weight decay, warmup and the loss temperature."""
    method = cfg["method"]
    if cfg["optimizer"] == "auto":
        cfg["optimizer"] = "adamw" if cfg["backbone"] in ("small", "vit") else "sgd"
    base = BASE_LR[cfg["optimizer"]]
    base = base[method] if isinstance(base, dict) else base
    if cfg["lr"] is None:
        cfg["lr"] = base * cfg["batch_size"] / 256
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = WEIGHT_DECAY[cfg["optimizer"]]
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = 0 if cfg["optimizer"] == "adamw" else min(10, cfg["epochs"] // 10)
    if cfg["temperature"] is None:
        cfg["temperature"] = DEFAULT_TEMPERATURE[method]
    elif DEFAULT_TEMPERATURE[method] is None:
        raise ConfigError(f"--temperature: {method} has no temperature (its loss is a "
                          f"{'pixel MSE' if method in MAE_METHODS else 'cosine similarity'})")


def _resolve_method_options(cfg: Dict, train_size: int, world: int) -> None:
    """The queue (MoCo, SwAV) and SwAV's prototypes / multi-crop; ConfigError for another method's option."""
    method, b = cfg["method"], cfg["batch_size"]
    if method in ("moco", "mocov2"):
        if cfg["queue_size"] is None:  # a power of two <= half the data (stale keys hurt small datasets)
            cfg["queue_size"] = max(2 * b, min(65536, 2 ** int(math.log2(max(2, train_size // 2)))))
        if cfg["queue_size"] < 2 * b:
            raise ConfigError(f"--queue-size {cfg['queue_size']} is smaller than the {2 * b} keys enqueued per "
                              f"step (2 views x --batch-size {b}); use --queue-size >= {2 * b}")
    elif method == "swav":
        cfg["queue_size"] = cfg["queue_size"] or 0  # SwAV's queue is opt-in (for small batches)
        if cfg["queue_size"] and cfg["queue_size"] < world:
            raise ConfigError(f"--queue-size {cfg['queue_size']}: SwAV keeps queue / world rows per process; use "
                              f"--queue-size >= {world}")
    elif cfg["queue_size"] is not None:
        raise ConfigError(f"--queue-size: {method} has no queue (moco, mocov2 and swav have one)")
    if method == "swav":
        if cfg["prototypes"] is None:
            cfg["prototypes"] = min(3000, max(16, train_size // 10))
        if cfg["small_crops"] is None:
            cfg["small_crops"] = 4
        if cfg["swav_queue_start"] is None:
            cfg["swav_queue_start"] = cfg["epochs"] // 10
    else:
        for key in ("prototypes", "small_crops", "swav_queue_start"):
            if cfg[key] is not None:
                raise ConfigError(f"--{key.replace('_', '-')} is a SwAV option; --method is {method}")


def _resolve_hard_options(cfg: Dict, world: int) -> None:
    """--data-fraction, and the defaults and checks of --hard-samples / --hard-pairs (None without them)."""
    cfg["data_fraction"] = float(cfg.get("data_fraction") or 1.0)
    cfg["hard_samples"], cfg["hard_pairs"] = bool(cfg.get("hard_samples")), bool(cfg.get("hard_pairs"))
    if not (cfg["hard_samples"] or cfg["hard_pairs"]):
        cfg.update({key: None for key in HARD_OPTIONS})
        return
    frozen = (cfg.get("synthetic") or "joint") == "frozen"
    cfg["synthetic"] = "frozen" if frozen else "joint"
    if cfg.get("gen_warmup_epochs") is None:
        cfg["gen_warmup_epochs"] = cfg["epochs"] / 5
    if cfg["gen_warmup_epochs"] >= cfg["epochs"]:
        raise ConfigError(f"--gen-warmup-epochs {cfg['gen_warmup_epochs']:g}: the synthetic views would never join "
                          f"the {cfg['epochs']} epochs of training; use fewer warm-up epochs")
    n = cfg.get("synthetic_per_batch") or 32
    per, unit = n // world, 2 if cfg["hard_pairs"] else 1
    if n % world or per < 2 or per % unit:
        raise ConfigError(f"--synthetic-per-batch {n} is global: it must split into {world} processes of at least "
                          f"2 images each{' (an even number: pairs)' if unit == 2 else ''}")
    cfg["synthetic_per_batch"] = n
    cfg["hard_beta"] = (0.1 if cfg.get("hard_beta") is None else cfg["hard_beta"]) \
        if cfg["hard_samples"] and not frozen else None
    for key, default in (("pair_sim_start", 0.9), ("pair_sim_end", 0.5), ("pair_gain", 0.05)):
        cfg[key] = (default if cfg.get(key) is None else cfg[key]) if cfg["hard_pairs"] else None
    if cfg["image_size"] % 4:
        raise ConfigError(f"--image-size {cfg['image_size']}: the hard-sample generator makes images whose side is "
                          "a multiple of 4")


def _hard_game_options(cfg: Dict, bundle: DataBundle, world: int, steps_per_epoch: int) -> Optional[Dict]:
    """The augcl.nn.HardSampleGame arguments of --hard-samples / --hard-pairs (None without them)."""
    if not (cfg.get("hard_samples") or cfg.get("hard_pairs")):
        return None
    frozen = cfg["synthetic"] == "frozen"
    warmup = int(round(cfg["gen_warmup_epochs"] * steps_per_epoch))
    return dict(channels=bundle.channels, image_size=cfg["image_size"], mean=bundle.mean, std=bundle.std,
                hard_samples=cfg["hard_samples"] and not frozen, hard_pairs=cfg["hard_pairs"],
                beta=cfg["hard_beta"] or 0.0, per_step=cfg["synthetic_per_batch"] // world,
                temperature=cfg["temperature"], frozen=frozen,
                pair_sim=(cfg["pair_sim_start"], cfg["pair_sim_end"]) if cfg["hard_pairs"] else (0.9, 0.5),
                pair_gain=cfg["pair_gain"] or 0.05,
                warmup_steps=max(1, warmup) if frozen else warmup,  # (frozen: the GAN trains at least one step)
                backend=op_backend(None if cfg["backend"] == "auto" else cfg["backend"]))


def _merge_resume(raw: Dict, given: Set[str], ckpt_raw: Dict) -> Dict:
    """The checkpoint's command line, overridden by what was given explicitly this time."""
    merged = dict(ckpt_raw)
    for key, value in raw.items():
        if key in given or key in RUN_LOCAL or key not in merged:
            merged[key] = value
    return merged


def _check_frozen(cfg: Dict, ckpt_cfg: Dict, given: Set[str]) -> None:
    """ConfigError if a resumed run changes a FROZEN_ON_RESUME setting; the warmup is the checkpoint's (its
    automatic value depends on --epochs, which may change)."""
    for key in FROZEN_ON_RESUME:
        if key not in ckpt_cfg and key not in FROZEN_ABSENT:  # (a checkpoint from before a setting existed)
            continue
        trained = ckpt_cfg.get(key, FROZEN_ABSENT.get(key))
        if cfg.get(key) != trained:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"--resume: {flag} is {cfg.get(key)!r} but the checkpoint was trained with "
                              f"{trained!r}; a resumed run must keep it")
    if "warmup_epochs" in given and cfg["warmup_epochs"] != ckpt_cfg["warmup_epochs"]:
        raise ConfigError(f"--resume: --warmup-epochs is {cfg['warmup_epochs']!r} but the run warmed up over "
                          f"{ckpt_cfg['warmup_epochs']!r}; a resumed run keeps its warmup")
    cfg["warmup_epochs"] = ckpt_cfg["warmup_epochs"]


def _loss_backend(name: str, device: torch.device, dtype: torch.dtype, op: str = "contrastive",
                  distributed: bool = False) -> str:
    """The backend the loss will run on: "eager", or the augcl backend the dispatcher picks (or was forced to)
    for ``op`` ("contrastive": NT-Xent / InfoNCE; "sinkhorn": SwAV's codes)."""
    if name == "eager":
        return "eager"
    probe = torch.zeros(2, 4, device=device, dtype=dtype)
    args = (probe, probe) if op == "contrastive" else (probe, distributed)
    try:
        return REGISTRY[op].select(device.type, *args, backend=None if name == "auto" else name)
    except (BackendUnavailableError, ValueError) as exc:  # ValueError: a bad AUGCL_BACKEND variable
        raise ConfigError(f"--backend {name}: {exc}") from None


def _method_backend(cfg: Dict, device: torch.device, amp_dtype: Optional[torch.dtype], distributed: bool) -> str:
    """What metrics.json reports as the loss backend of ``cfg``'s method."""
    if cfg["method"] in ("simsiam", "byol"):
        _loss_backend(cfg["backend"], device, amp_dtype or torch.float32)  # (still reject an unusable --backend)
        return "none (cosine loss)"
    if cfg["method"] in ("mae", "mixedae-naive"):
        _loss_backend(cfg["backend"], device, amp_dtype or torch.float32)
        return "none (pixel MSE)"
    if cfg["method"] == "swav":  # Sinkhorn codes; --backend eager runs augcl's pure-PyTorch reference
        _loss_backend(cfg["backend"], device, amp_dtype or torch.float32)
        return _loss_backend("reference" if cfg["backend"] == "eager" else cfg["backend"], device,
                             torch.float32, op="sinkhorn", distributed=distributed)
    return _loss_backend(cfg["backend"], device, amp_dtype or torch.float32)


def wrap_ddp(method: torch.nn.Module, device: torch.device, world: int, sync_bn: bool) -> torch.nn.Module:
    """The module the training step calls: ``method`` itself in one process, else DDP around it (after
    converting its BatchNorms to global-batch ones with ``sync_bn``).

    ``broadcast_buffers=False``: DDP would otherwise overwrite every rank's buffers with rank 0's at each
    forward, and SwAV's queue is per rank. The buffers that must agree do so by construction (MoCo enqueues
    the gathered keys; BYOL's tau follows the step); BN running statistics stay per rank without
    ``--sync-bn``, and rank 0's are the ones evaluated.
    """
    if world == 1:
        return method
    if sync_bn:
        ddp.convert_sync_batchnorm(method, device)
    with warnings.catch_warnings():
        # torch >= 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, whose False still syncs
        # the buffers once at construction; the old flag is the one that exists on every torch >= 2.6.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)


# --------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    """Everything the epoch loop, the evaluations and the writers share, built once by :func:`_setup`."""

    cfg: Dict
    raw: Dict  # the command line (merged with the checkpoint's under --resume), stored in last.pt
    env: ddp.DistEnv
    log: Callable[..., None]
    out: Path
    device: torch.device
    bundle: DataBundle
    train_set: torch.utils.data.Dataset
    steps_per_epoch: int
    method: nn.Module
    model: nn.Module  # what the step calls: DDP around the method, or the method itself
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    loss_backend: str
    plot: bool  # matplotlib is there: draw curves.png
    probe: bool  # scikit-learn is there: fit the linear probe
    views: list = field(default_factory=list)
    mean: Optional[torch.Tensor] = None
    std: Optional[torch.Tensor] = None
    schedule: List[Dict] = field(default_factory=list)
    start_epoch: int = 0
    step: int = 0  # optimizer steps taken
    history: List[Dict] = field(default_factory=list)
    baseline: Dict = field(default_factory=dict)
    elapsed: float = 0.0  # training seconds over all (resumed) sessions
    eval_train: Optional[torch.utils.data.Dataset] = None  # the read-outs' training set (all of it)

    @property
    def num_generated(self) -> int:
        return len(self.train_set) - len(self.bundle.train)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg["epochs"]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    def features(self) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
        """Frozen, L2-normalised backbone features and labels of the train and test sets."""
        size, workers, pin = self.cfg["image_size"], self.cfg["num_workers"], self.device.type == "cuda"

        def pre(x):
            return resize_normalize(x, size, self.mean, self.std)

        train = self.bundle.train if self.eval_train is None else self.eval_train
        return tuple(extract_features(self.method.backbone, eval_loader(split, 512, workers, pin), pre, self.device,
                                      self.autocast) for split in (train, self.bundle.test))

    def knn(self, tr, te) -> float:
        return knn_top1(tr[0], tr[1], te[0], te[1], self.bundle.num_classes, k=self.cfg["knn_k"],
                        temperature=self.cfg["knn_t"])

    def linear(self, tr, te) -> Optional[float]:
        return linear_probe_top1(tr[0], tr[1], te[0], te[1]) if self.probe else None


def run(raw: Dict, given: Iterable[str] = (), log=print) -> Dict:
    """Train and evaluate as described by ``raw`` (the parsed command line, a dict); returns the metrics
    (an empty dict on ranks other than 0 under DDP).

    ``given``: the names of the arguments given explicitly (with ``--resume`` they override the checkpoint's).
    """
    env, device_name = ddp.setup(raw["device"])
    try:
        return _run(dict(raw, device=device_name), set(given), log if env.is_main else (lambda *a, **k: None),
                    env)
    finally:
        ddp.teardown(env)


def _run(raw: Dict, given: Set[str], log, env: ddp.DistEnv) -> Dict:
    t_start = time.perf_counter()
    raw, ckpt, out = _open(raw, given, env)
    r = _setup(raw, given, ckpt, out, env, log)
    for epoch in range(r.start_epoch + 1, r.cfg["epochs"] + 1):
        loss, lr, seconds = _train_epoch(r, epoch)
        if env.is_main:
            _end_of_epoch(r, epoch, loss, lr, seconds)
    if r.start_epoch >= r.cfg["epochs"]:
        log(f"{out}: already trained for {r.start_epoch} epochs (--epochs {r.cfg['epochs']}); evaluating only")
    metrics = _finish(r, t_start) if env.is_main else {}
    _barrier(env)
    return metrics


def _open(raw: Dict, given: Set[str], env: ddp.DistEnv) -> Tuple[Dict, Optional[Dict], Path]:
    """``(command line, verified checkpoint or None, output folder)``: the checks that need no data, so that a
    bad --out, --resume or option combination fails before anything is loaded or trained."""
    if raw["resume"] and raw["out"] is None:
        raise ConfigError("--resume needs --out DIR, the folder of the run to continue")
    out = Path(raw["out"] or ddp.broadcast_object(
        os.path.join("runs", f"{raw['method']}-{time.strftime('%Y%m%d-%H%M%S')}")))
    reason = None
    if env.is_main:  # rank 0 alone writes; every rank stops with its verdict
        try:
            check_out_dir(out)
        except ConfigError as exc:
            reason = str(exc)
    reason = ddp.broadcast_object(reason)
    if reason:
        raise ConfigError(reason)
    ckpt = None
    if raw["resume"]:
        ckpt = load_checkpoint(out / "last.pt")
        raw = _merge_resume(raw, given, ckpt["args"])
    elif (out / "last.pt").exists():
        raise ConfigError(f"--out {out} already holds a run (last.pt); add --resume to continue it, "
                          "or choose another --out")
    parse_data_spec(raw["data"])  # a bad --data fails before anything is loaded
    check_augment_flags(raw)  # ... and so does a flag the method does not take
    _check_image_size(raw["image_size"])
    return raw, ckpt, out


def _setup(raw: Dict, given: Set[str], ckpt: Optional[Dict], out: Path, env: ddp.DistEnv, log) -> _Run:
    """Device, optional dependencies, data, resolved config, model, optimizer; then the checkpoint's state
    (``--resume``) or the random-init baseline. Logs the run's one-line summary."""
    device = _resolve_device(raw["device"])
    if raw["amp"] == "fp16" and device.type == "cpu" and env.is_main:
        warn(FP16_CPU_WARNING)
    plot_note, probe_note = plot_reason(), sklearn_reason()
    kind, _ = parse_data_spec(raw["data"])
    bundle = load_data(raw["data"], raw["image_size"] or DATA_DEFAULTS[kind]["image_size"])
    full_train = bundle.train  # --data-fraction: training sees a stratified part, the kNN / linear read-outs all
    bundle = dataclasses.replace(bundle, train=stratified_fraction(full_train, raw.get("data_fraction") or 1.0,
                                                                   raw["seed"]))
    cfg = resolve_config(raw, len(bundle.train), device, env.world)
    if ckpt is not None:
        _check_frozen(cfg, ckpt["config"], given)
    train_set = bundle.train
    if cfg["inflate"]:
        train_set = InflatedDataset(bundle.train, load_inflation(cfg["inflate"], bundle.train, bundle.channels))
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
    loss_backend = _method_backend(cfg, device, amp_dtype, env.distributed)
    if env.is_main:
        make_out_dir(out)
    weight = cfg["inflate_weight"] or 1
    steps_per_epoch = (len(bundle.train) * weight + len(train_set) - len(bundle.train)) // cfg["batch_size"]
    method, model, optimizer, scaler = _build_model(cfg, bundle, env, device, amp_dtype, steps_per_epoch, ckpt,
                                                    out)
    r = _Run(cfg, raw, env, log, out, device, bundle, train_set, steps_per_epoch, method, model, optimizer,
             scaler, amp_dtype, loss_backend, plot=plot_note is None, probe=probe_note is None,
             mean=torch.tensor(bundle.mean, device=device), std=torch.tensor(bundle.std, device=device),
             views=view_plan(cfg["method"], image_size=cfg["image_size"], channels=bundle.channels,
                             flip=bundle.flip, aug=cfg["aug"], small_crops=cfg["small_crops"] or 0))
    r.eval_train = full_train
    if plot_note:
        log(f"note: no curves.png{' or pairs.png' if _hard(cfg) else ''}: {plot_note}")
    if probe_note:
        log(f"note: no linear probe: {probe_note}; pip install scikit-learn (or augcl[train])")
    _log_start(r)
    _resume_or_baseline(r, ckpt, given)
    return r


def _build_model(cfg: Dict, bundle: DataBundle, env: ddp.DistEnv, device: torch.device,
                 amp_dtype: Optional[torch.dtype], steps_per_epoch: int, ckpt: Optional[Dict], out: Path):
    """``(method, model, optimizer, scaler)`` seeded from --seed; under --resume, with the checkpoint's state
    (a one-line CheckpointError when it does not fit)."""
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    backbone, feat_dim = build_backbone(cfg["backbone"], bundle.channels, cfg["cifar_stem"], cfg["image_size"],
                                        cfg.get("patch_size"))
    method = build_method(cfg["method"], backbone, feat_dim, temperature=cfg["temperature"],
                          backend=None if cfg["backend"] == "auto" else cfg["backend"],
                          queue_size=(cfg["queue_size"] or 0) // (env.world if cfg["method"] == "swav" else 1),
                          momentum=cfg["moco_momentum"], distributed=env.distributed,
                          shuffle_bn=not cfg["sync_bn"], byol_momentum=cfg["byol_momentum"],
                          n_prototypes=cfg["prototypes"] or 0,
                          queue_start_step=(cfg["swav_queue_start"] or 0) * steps_per_epoch,
                          freeze_prototypes_steps=min(SWAV_FREEZE_STEPS, steps_per_epoch),
                          hard=_hard_game_options(cfg, bundle, env.world, steps_per_epoch),
                          hallucinate=cfg["hallucinate"],
                          unmix=dict(alpha=cfg["unmix_alpha"], prob_mixup=cfg["unmix_prob_mixup"],
                                     per_sample=cfg["unmix_per_sample"], swav_form=cfg["unmix_swav_form"])
                          if cfg["unmix"] else None,
                          mae=dict(group=cfg["group"], top_k=cfg["top_k"], segment=cfg["segment"],
                                   hc_weight=cfg["hc_weight"]) if cfg["method"] in MAE_METHODS else None).to(device)
    # (the hard-sample generator and discriminator are left out: the game's own optimisers update them)
    params = [p for p in getattr(method, "model_parameters", method.parameters)() if p.requires_grad]
    if cfg["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if ckpt is not None:  # before DDP: its construction broadcasts rank 0's state
        restore_state(ckpt, out / "last.pt", method, optimizer, scaler)
    if cfg["compile"]:
        for name, module in method.named_children():  # in place: state_dict keys stay, checkpoints stay portable
            if name not in ("hallucinator", "hard"):  # (already one fused op; its helper draws lam on the host side)
                module.compile()
    return method, wrap_ddp(method, device, env.world, cfg["sync_bn"]), optimizer, scaler


def _resume_or_baseline(r: _Run, ckpt: Optional[Dict], given: Set[str]) -> None:
    """Continue the checkpoint's history and lr schedule, or start both (evaluating the random-init encoder)."""
    cfg = r.cfg
    if ckpt is None:
        warmup = min(r.total_steps, int(round(cfg["warmup_epochs"] * r.steps_per_epoch)))
        r.schedule = cosine_schedule(r.total_steps, warmup, cfg["lr"])
        if cfg["baseline"] and r.env.is_main:
            tr, te = r.features()
            r.baseline = {"knn_top1": r.knn(tr, te), "linear_top1": r.linear(tr, te)}
            r.history.append({"epoch": 0, "loss": None, "knn_top1": r.baseline["knn_top1"], "lr": None,
                              "time_s": 0.0, "elapsed_s": 0.0})
    else:
        _resume(r, ckpt, given)
    if r.baseline:
        r.log(f"random-init encoder: kNN top-1 {_fmt(r.baseline['knn_top1'])}  linear top-1 "
              f"{_fmt(r.baseline.get('linear_top1'))}")


def _resume(r: _Run, ckpt: Dict, given: Set[str]) -> None:
    """The checkpoint's epoch, step and history, and its lr schedule continued to the new --epochs."""
    cfg = r.cfg
    r.start_epoch, r.step = ckpt["epoch"], ckpt["step"]
    r.history, r.baseline = ckpt["history"], ckpt["baseline"]
    r.elapsed = r.history[-1]["elapsed_s"] if r.history else 0.0
    trained = ckpt["config"]
    schedule = ckpt.get("schedule") or cosine_schedule(  # (format 1: rebuilt from the settings it ran with)
        r.steps_per_epoch * trained["epochs"],
        min(r.steps_per_epoch * trained["epochs"], int(round(trained["warmup_epochs"] * r.steps_per_epoch))),
        trained["lr"])
    r.schedule = continue_schedule(schedule, r.step, r.total_steps, cfg["lr"] if "lr" in given else None)
    on_resume = getattr(r.method, "on_resume", None)  # schedules of the method's own (BYOL's target momentum)
    if on_resume is not None:
        on_resume(r.step, r.total_steps, restart="lr" in given)
    r.log(f"resuming {r.out} from epoch {r.start_epoch}")
    if "checksum" not in ckpt:
        r.log("note: last.pt has no checksum (written by an older augcl.train); resumed without verifying it")
    if r.schedule is not schedule and r.step < r.total_steps:
        lr = lr_at(r.schedule, r.step)
        if lr > 0.0:
            r.log(f"lr schedule: continues from {lr:.3g} at step {r.step} to 0 at step {r.total_steps} "
                  f"(--epochs {cfg['epochs']})")
        elif r.env.is_main:
            warn(f"the run had finished its lr schedule (lr 0 at epoch {r.start_epoch}), so the extra epochs "
                 "would not update the weights; give --lr to restart the cosine from that value")


def _log_start(r: _Run) -> None:
    cfg, bundle = r.cfg, r.bundle
    crops = " + ".join(f"{n} x {s} px" for s, n in _count_sizes([v.size for v in r.views]))
    extras = "".join([" + Hallucinator" if cfg["hallucinate"] else "",
                      f" + Un-Mix (alpha {cfg['unmix_alpha']:g}, mixup p {cfg['unmix_prob_mixup']:g}, "
                      f"{'per sample' if cfg['unmix_per_sample'] else 'per batch'})" if cfg["unmix"] else ""])
    inflated = (f" + {r.num_generated} generated (--inflate, real:generated weight {cfg['inflate_weight']}:1)"
                if r.num_generated else "")
    r.log(f"augcl.train: {cfg['method']}{extras} on {bundle.name} ({len(bundle.train)} train{inflated} / "
          f"{len(bundle.test)} test) | views {crops}, {cfg['aug']} aug | backbone {cfg['backbone']} | batch "
          f"{cfg['batch_size']} x {cfg['epochs']} epochs ({r.steps_per_epoch} steps each) | {cfg['optimizer']} lr "
          f"{cfg['lr']:.3g} | loss backend {r.loss_backend} | device {r.device} | out {r.out}")
    if cfg.get("data_fraction", 1.0) < 1.0:
        r.log(f"--data-fraction {cfg['data_fraction']:g}: training on {len(bundle.train)} of "
              f"{len(r.eval_train)} images (stratified, seed {cfg['seed']}); the read-outs use all of them")
    if _hard(cfg):
        kinds = " + ".join(k for k, on in (("hard samples (beta " + f"{cfg['hard_beta'] or 0:g})", cfg["hard_samples"]),
                                           ("hard pairs (target cos " + f"{cfg['pair_sim_start']} -> "
                                            f"{cfg['pair_sim_end']})", cfg["hard_pairs"])) if on)
        r.log(f"generator: {kinds}, {cfg['synthetic']} GAN, {cfg['synthetic_per_batch']} images per step, "
              f"{cfg['gen_warmup_epochs']:g} warm-up epochs; SupCon over instance ids on real + synthetic views")
    if r.env.distributed:
        world = r.env.world
        r.log(f"DDP: {world} processes ({'nccl' if r.device.type == 'cuda' else 'gloo'}), "
              f"{cfg['batch_size'] // world} images per process and step, "
              f"{'global-batch BN (--sync-bn)' if cfg['sync_bn'] else 'per-process BN'}"
              + (", shuffle-BN keys" if cfg["method"] in ("moco", "mocov2") and not cfg["sync_bn"] else ""))


# ------------------------------------------------------------------------------------------- one epoch
def _train_epoch(r: _Run, epoch: int) -> Tuple[float, float, float]:
    """Train epoch ``epoch`` (1-based); returns ``(mean loss over the ranks, last lr, seconds)``."""
    cfg, env, device = r.cfg, r.env, r.device
    t0 = time.perf_counter()
    g_shuffle = torch.Generator().manual_seed(_epoch_seed(cfg["seed"], epoch, 0))
    g_aug = torch.Generator(device=device).manual_seed(_epoch_seed(cfg["seed"], epoch, 1, env.rank))
    # stream 2: Un-Mix's and the Hallucinator's draws, the masked-image methods' masking / mixing
    if cfg["hallucinate"] or cfg["unmix"] or cfg["method"] in MAE_METHODS or _hard(cfg):
        r.method.set_rng(torch.Generator(device=device).manual_seed(_epoch_seed(cfg["seed"], epoch, 2, env.rank)))
    sampler = EpochSampler(len(r.bundle.train), cfg["batch_size"], g_shuffle, num_generated=r.num_generated,
                           real_weight=cfg["inflate_weight"] or 1, rank=env.rank, world=env.world)
    loader = train_loader(r.train_set, sampler, cfg["num_workers"], device.type == "cuda")
    r.model.train()
    loss_sum = torch.zeros((), device=device)
    show = cfg["progress"] and env.is_main
    bar = tqdm(loader, total=r.steps_per_epoch, desc=f"epoch {epoch}/{cfg['epochs']}", leave=False,
               disable=not show, dynamic_ncols=True, file=sys.stderr)
    # The losses' deferred value checks (a host sync per loss call: the GPU must finish the step before the
    # next one is queued) are off inside the loop; a non-finite loss is caught by the running sum instead, read
    # every CHECK_EVERY steps and at the end of the epoch (a NaN or Inf stays in the sum). Index checks stay on.
    with _value_checks_off():
        for x, _ in bar:
            lr, loss = _train_step(r, x, g_aug)
            loss_sum += loss.detach().float()
            # (summed over the ranks, so that every rank stops at the same step instead of one waiting forever)
            if r.step % CHECK_EVERY == 0 and not bool(torch.isfinite(ddp.all_reduce_mean(loss_sum))):
                raise TrainingError(f"the loss became non-finite by step {r.step} (epoch {epoch}); lower --lr, or "
                                    "try --amp off")
            if show and (r.step % 5 == 0 or r.step % r.steps_per_epoch == 0):
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
    bar.close()
    epoch_loss = (ddp.all_reduce_mean(loss_sum) / r.steps_per_epoch).item()
    if not math.isfinite(epoch_loss):
        raise TrainingError(f"the loss became {epoch_loss} in epoch {epoch}; lower --lr, or try --amp off")
    return epoch_loss, lr, time.perf_counter() - t0


# Steps between two reads of the running loss sum (one host sync each) in the training loop.
CHECK_EVERY = 50


@contextlib.contextmanager
def _value_checks_off():
    """augcl's deferred value checks off for the block (restored after it, also on an error)."""
    was = checks_enabled()
    set_checks(False)
    try:
        yield
    finally:
        set_checks(was)


def _train_step(r: _Run, x: torch.Tensor, g_aug: torch.Generator) -> Tuple[float, torch.Tensor]:
    """One optimizer step on the uint8 batch ``x``; returns ``(lr, loss)``."""
    lr = lr_at(r.schedule, r.step)
    for group in r.optimizer.param_groups:
        group["lr"] = lr
    on_step = getattr(r.method, "on_step", None)
    if on_step is not None:
        on_step(r.step, r.total_steps)
    x = x.to(r.device, non_blocking=True)
    batch_views = [augment(x, v.cfg, v.size, r.mean, r.std, g_aug) for v in r.views]
    # --hard-samples / --hard-pairs: the game's D and G steps, then its synthetic views join the model's forward
    extra = r.method.hard_step(x, r.step, r.total_steps) if _hard(r.cfg) else {}
    with r.autocast():
        loss = r.model(*batch_views, **extra)
    r.optimizer.zero_grad(set_to_none=True)
    r.scaler.scale(loss).backward()
    after_backward = getattr(r.method, "after_backward", None)
    if after_backward is not None:
        after_backward()
    r.scaler.step(r.optimizer)
    r.scaler.update()
    r.step += 1
    return lr, loss


# -------------------------------------------------------------------------------- logs and checkpoints
def _end_of_epoch(r: _Run, epoch: int, loss: float, lr: float, seconds: float) -> None:
    """Rank 0: the kNN monitor, then log.csv, curves.png and last.pt (each replaced atomically)."""
    r.elapsed += seconds
    acc = r.knn(*r.features())
    row = {"epoch": epoch, "loss": round(loss, 6), "knn_top1": acc, "lr": lr, "time_s": round(seconds, 3),
           "elapsed_s": round(r.elapsed, 3)}
    row.update(_epoch_stats(r))
    r.history.append(row)
    write_csv(r.out / "log.csv", r.history)
    if r.plot:
        _plot(r)
    if _hard(r.cfg):
        _pairs_picture(r, epoch)
    save_checkpoint(r.out / "last.pt", {
        "epoch": epoch, "step": r.step, "args": r.raw, "config": r.cfg, "method": r.method.state_dict(),
        "optimizer": r.optimizer.state_dict(), "scaler": r.scaler.state_dict(), "history": r.history,
        "baseline": r.baseline, "rng": rng_state(), "schedule": r.schedule})
    r.log(f"epoch {epoch:3d}/{r.cfg['epochs']}  loss {loss:.4f}  kNN top-1 {acc:.3f}  lr {lr:.2e}  {seconds:.1f}s")


def _epoch_stats(r: _Run) -> Dict[str, float]:
    """Extra log.csv columns of this epoch: ``epoch_stats()`` of the method (and of any other object of the run
    that has one), a dict of floats averaged over the epoch's steps and reset by the call. Methods without
    extra read-outs have no ``epoch_stats``. Called on rank 0 only (its own steps' values under torchrun)."""
    stats: Dict[str, float] = {}
    for owner in (r.method,):
        fn = getattr(owner, "epoch_stats", None)
        if fn is not None:
            stats.update({k: (None if v is None else round(float(v), 6)) for k, v in fn().items()})
    return stats


def _hard(cfg: Dict) -> bool:
    return bool(cfg.get("hard_samples") or cfg.get("hard_pairs"))


def _pairs_picture(r: _Run, epoch: int) -> None:
    """Keep a snapshot of the generated pairs every epochs / 8 epochs (and at the last) and draw pairs.png."""
    every = max(1, r.cfg["epochs"] // 8)
    if epoch % every and epoch != r.cfg["epochs"]:
        return
    game = r.method.hard
    game.snapshot(epoch)
    if not r.plot:
        return
    what = "pairs a = G(u), b = G(u + sigma eps)" if r.cfg["hard_pairs"] else "samples G(u), G(u + sigma eps)"
    try:
        plot_pairs(r.out / "pairs.png", game.previews, f"generated {what} over training ({r.cfg['synthetic']})")
    except Exception as exc:  # noqa: BLE001  (as curves.png: not worth the checkpoint written after it)
        r.log(f"note: pairs.png not drawn ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


def _plot(r: _Run) -> None:
    cfg = r.cfg
    title = f"{cfg['method']} / {r.bundle.name} / {cfg['backbone']} (seed {cfg['seed']})"
    try:
        plot_curves(r.out / "curves.png", r.history, title, r.baseline.get("knn_top1"))
    except Exception as exc:  # noqa: BLE001  (a plot is not worth the checkpoint and metrics written after it)
        r.plot = False
        r.log(f"note: curves.png not drawn ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
              "the run goes on without it")


def _finish(r: _Run, t_start: float) -> Dict:
    """Rank 0: the final kNN and linear probe; writes metrics.json and returns it."""
    cfg, bundle, env = r.cfg, r.bundle, r.env
    tr, te = r.features()
    knn_acc, linear_acc = r.knn(tr, te), r.linear(tr, te)
    trained = [row for row in r.history if row["epoch"] > 0]
    metrics = {
        "method": cfg["method"], "data": cfg["data"], "backbone": cfg["backbone"],
        "hallucinate": cfg["hallucinate"], "unmix": cfg["unmix"],
        "epochs": trained[-1]["epoch"] if trained else 0, "seed": cfg["seed"],
        "knn_top1": knn_acc, "linear_top1": linear_acc,
        "random_init_knn_top1": r.baseline.get("knn_top1"),
        "random_init_linear_top1": r.baseline.get("linear_top1"),
        "final_loss": trained[-1]["loss"] if trained else None,
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "train_time_s": round(r.elapsed, 3),
        "augcl_backend": r.loss_backend, "augcl_version": __version__, "torch_version": torch.__version__,
        "device": str(r.device), "amp": cfg["amp"], "compile": cfg["compile"],
        "world_size": env.world, "per_process_batch": cfg["batch_size"] // env.world,
        "num_train": len(bundle.train), "num_generated": r.num_generated, "num_test": len(bundle.test),
        "knn_k": min(cfg["knn_k"], len(bundle.train)), "knn_temperature": cfg["knn_t"],
        "config": cfg,
    }
    write_json(r.out / "metrics.json", metrics)
    r.log(f"after {metrics['epochs']} epochs of {cfg['method']}: kNN top-1 {knn_acc:.3f}  linear top-1 "
          f"{_fmt(linear_acc)}  ({metrics['wall_time_s']:.0f} s)")
    files = ["metrics.json", "log.csv"] + (["curves.png"] if (r.out / "curves.png").exists() else []) + ["last.pt"]
    r.log(f"wrote {r.out}/: {', '.join(files)}")
    return metrics


def _fmt(acc: Optional[float]) -> str:
    return "n/a" if acc is None else f"{acc:.3f}"


def _barrier(env: ddp.DistEnv) -> None:
    """Keep the ranks together until rank 0 has written its files (then the group is torn down)."""
    if env.distributed:
        dist.barrier()


def _count_sizes(sizes: List[int]) -> List[tuple]:
    """[32, 32, 14, 14] -> [(32, 2), (14, 2)], in order of first appearance."""
    counts: Dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    return list(counts.items())
