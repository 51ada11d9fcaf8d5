"""The training run behind ``python -m augcl.train``: configuration, loop, evaluation, logs and checkpoints.

``run(args, given)`` resolves the command line into a plain ``config`` dict (automatic defaults filled in,
stored in every checkpoint and in metrics.json), then:

1. loads the data (augcl/train/data.py; with ``--inflate``, AdaInf's generated images) and builds backbone +
   method (models.py, methods/); under torchrun, joins the process group and wraps the method in DDP (ddp.py);
2. evaluates the random-init encoder (kNN + linear probe: the baseline the trained one must beat);
3. trains: per step, the method's augmented views made on the device (augment.view_plan: two, or SwAV's
   multi-crop), the method's loss (the augcl op), AdamW/SGD with a per-step warmup + cosine schedule; per
   epoch, a kNN monitor, ``log.csv``, ``curves.png`` and ``last.pt``;
4. fits the linear probe on the final frozen features and writes ``metrics.json``.

Randomness: the model is initialised from ``--seed``; epoch e's shuffling and augmentations use generators
seeded from (seed, e) (and the rank, for augmentations under DDP), so a resumed run draws exactly what an
uninterrupted one would have.

Under DDP ``--batch-size`` is the global batch (each rank trains on batch / world), only rank 0 evaluates,
prints and writes files, and the logged loss is the mean over the ranks (see augcl/train/ddp.py).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import numpy as np
import torch

from augcl.train.errors import ConfigError, TrainingError

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
# Settings a resumed run must share with its checkpoint (they shape the model or the data stream).
FROZEN_ON_RESUME = ("method", "data", "backbone", "cifar_stem", "image_size", "batch_size", "seed", "queue_size",
                    "prototypes", "small_crops", "inflate", "inflate_weight", "aug", "hallucinate", "unmix",
                    "unmix_alpha", "unmix_prob_mixup", "unmix_per_sample")
# The value of a frozen setting in a checkpoint written before the setting existed.
FROZEN_ABSENT = {"hallucinate": False, "unmix": False, "unmix_alpha": None, "unmix_prob_mixup": None,
                 "unmix_per_sample": None}
UNMIX_DEFAULTS = {"unmix_alpha": 1.0, "unmix_prob_mixup": 0.5, "unmix_per_sample": False}
# SwAV: the prototypes get no update for this many steps at most (main_swav.py: 313, one ImageNet epoch).
SWAV_FREEZE_STEPS = 313
# Arguments that are run-local: never taken from the checkpoint's command line.
RUN_LOCAL = ("resume", "out")


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
    from augcl.train.methods import check_flags

    reason = check_flags(raw["method"], bool(raw.get("hallucinate")), bool(raw.get("unmix")))
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


def resolve_config(raw: Dict, train_size: int, device: torch.device, world: int = 1) -> Dict:
    """Fill in every automatic (None / "auto") setting of the raw command line ``raw``; returns a JSON-able dict.

    ``train_size``: real training images; ``world``: processes (``batch_size`` is the global batch). Raises
    ConfigError for values that cannot work together (batch larger than the data, queue too small, ...).
    """
    from augcl.train.data import parse_data_spec
    from augcl.train.methods import DEFAULT_TEMPERATURE

    cfg = dict(raw)
    check_augment_flags(cfg)
    cfg["hallucinate"], cfg["unmix"] = bool(cfg.get("hallucinate")), bool(cfg.get("unmix"))
    for key, default in UNMIX_DEFAULTS.items():
        cfg[key] = (default if cfg.get(key) is None else cfg[key]) if cfg["unmix"] else None
    cfg["unmix_swav_form"] = ((cfg.get("unmix_swav_form") or "soft") if cfg["unmix"] and cfg["method"] == "swav"
                              else None)
    kind, _ = parse_data_spec(raw["data"])
    defaults = DATA_DEFAULTS[kind]
    method = cfg["method"]
    for key in ("image_size", "epochs", "batch_size"):
        if cfg[key] is None:
            cfg[key] = defaults[key]
    cfg["device"] = str(device)
    cfg["world_size"] = world
    _check_image_size(cfg["image_size"])
    b = cfg["batch_size"]
    if b < 2:
        raise ConfigError(f"--batch-size {b}: contrastive losses need at least 2 images per batch")
    if b > train_size:
        raise ConfigError(f"--batch-size {b} is larger than the training set ({train_size} images)")
    if b % world or b // world < 2:
        raise ConfigError(f"--batch-size {b} is the global batch: it must split into {world} processes of at "
                          f"least 2 images each (a multiple of {world}, >= {2 * world})")
    if cfg["backbone"] is None:
        cfg["backbone"] = "small" if device.type == "cpu" else "resnet18"
    if cfg["cifar_stem"] is None:
        cfg["cifar_stem"] = cfg["image_size"] <= 64
    if cfg["optimizer"] == "auto":
        cfg["optimizer"] = "adamw" if cfg["backbone"] == "small" else "sgd"
    base = BASE_LR[cfg["optimizer"]]
    base = base[method] if isinstance(base, dict) else base
    if cfg["lr"] is None:
        cfg["lr"] = base * b / 256
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = WEIGHT_DECAY[cfg["optimizer"]]
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = 0 if cfg["optimizer"] == "adamw" else min(10, cfg["epochs"] // 10)
    if cfg["temperature"] is None:
        cfg["temperature"] = DEFAULT_TEMPERATURE[method]
    elif DEFAULT_TEMPERATURE[method] is None:
        raise ConfigError(f"--temperature: {method} has no temperature (its loss is a cosine similarity)")
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


def _merge_resume(raw: Dict, given: Set[str], ckpt_raw: Dict) -> Dict:
    """The checkpoint's command line, overridden by what was given explicitly this time."""
    merged = dict(ckpt_raw)
    for key, value in raw.items():
        if key in given or key in RUN_LOCAL or key not in merged:
            merged[key] = value
    return merged


def _check_frozen(cfg: Dict, ckpt_cfg: Dict) -> None:
    for key in FROZEN_ON_RESUME:
        if key not in ckpt_cfg and key not in FROZEN_ABSENT:  # (a checkpoint from before a setting existed)
            continue
        trained = ckpt_cfg.get(key, FROZEN_ABSENT.get(key))
        if cfg.get(key) != trained:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"--resume: {flag} is {cfg.get(key)!r} but the checkpoint was trained with "
                              f"{trained!r}; a resumed run must keep it")


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loss_backend(name: str, device: torch.device, dtype: torch.dtype, op: str = "contrastive",
                  distributed: bool = False) -> str:
    """The backend the loss will run on: "eager", or the augcl backend the dispatcher picks (or was forced to)
    for ``op`` ("contrastive": NT-Xent / InfoNCE; "sinkhorn": SwAV's codes)."""
    if name == "eager":
        return "eager"
    from augcl.dispatch import REGISTRY, BackendUnavailableError

    probe = torch.zeros(2, 4, device=device, dtype=dtype)
    args = (probe, probe) if op == "contrastive" else (probe, distributed)
    try:
        return REGISTRY[op].select(device.type, *args, backend=None if name == "auto" else name)
    except (BackendUnavailableError, ValueError) as exc:  # ValueError: a bad AUGCL_BACKEND variable
        raise ConfigError(f"--backend {name}: {exc}") from None


def _write_csv(path: Path, history: List[Dict]) -> None:
    cols = ["epoch", "loss", "knn_top1", "lr", "time_s", "elapsed_s"]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({c: ("" if row.get(c) is None else row[c]) for c in cols})
    os.replace(tmp, path)


def _plot(path: Path, history: List[Dict], title: str, baseline_knn: Optional[float]) -> None:
    """loss and kNN top-1 per epoch, side by side (matplotlib's Agg canvas; pyplot's state is not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_knn = fig.subplots(1, 2)
    trained = [r for r in history if r["epoch"] > 0]
    ax_loss.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_knn.plot([r["epoch"] for r in history], [r["knn_top1"] for r in history], "o-", ms=3, color="C1")
    if baseline_knn is not None:
        ax_knn.axhline(baseline_knn, ls="--", color="gray", label="random-init encoder")
        ax_knn.legend(loc="lower right")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1", title="kNN monitor (test set)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _save(path: Path, state: Dict) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _rng_state() -> Dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from augcl.train.ddp import convert_sync_batchnorm

        convert_sync_batchnorm(method, device)
    import warnings

    with warnings.catch_warnings():
        # torch >= 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, whose False still syncs
        # the buffers once at construction; the old flag is the one that exists on every torch >= 2.6.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)


def run(raw: Dict, given: Iterable[str] = (), log=print) -> Dict:
    """Train and evaluate as described by ``raw`` (the parsed command line, a dict); returns the metrics
    (an empty dict on ranks other than 0 under DDP).

    ``given``: the names of the arguments given explicitly (with ``--resume`` they override the checkpoint's).
    """
    from augcl.train import ddp

    env, device_name = ddp.setup(raw["device"])
    try:
        return _run(dict(raw, device=device_name), set(given), log if env.is_main else (lambda *a, **k: None),
                    env)
    finally:
        ddp.teardown(env)


def _run(raw: Dict, given: Set[str], log, env) -> Dict:
    from tqdm.auto import tqdm

    import augcl
    from augcl.train.augment import augment, resize_normalize, view_plan
    from augcl.train.data import (EpochSampler, InflatedDataset, eval_loader, load_data, load_inflation,
                                  parse_data_spec, train_loader)
    from augcl.train.ddp import all_reduce_mean, broadcast_object
    from augcl.train.evaluate import extract_features, knn_top1, linear_probe_top1
    from augcl.train.methods import build_method
    from augcl.train.models import build_backbone

    t_start = time.perf_counter()
    # ---------------------------------------------------------------- output folder, checkpoint, config
    if raw["resume"] and raw["out"] is None:
        raise ConfigError("--resume needs --out DIR, the folder of the run to continue")
    out = Path(raw["out"] or broadcast_object(
        os.path.join("runs", f"{raw['method']}-{time.strftime('%Y%m%d-%H%M%S')}")))
    ckpt_path = out / "last.pt"
    ckpt = None
    if raw["resume"]:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint {ckpt_path} to resume from")
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (a truncated or foreign file)
            raise ConfigError(f"--resume: cannot read {ckpt_path}: {exc}") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
            raise ConfigError(f"--resume: {ckpt_path} is not a checkpoint written by augcl.train")
        raw = _merge_resume(raw, given, ckpt["args"])
    elif ckpt_path.exists():
        raise ConfigError(f"--out {out} already holds a run (last.pt); add --resume to continue it, "
                          "or choose another --out")
    kind, _ = parse_data_spec(raw["data"])  # a bad --data fails before anything is loaded
    check_augment_flags(raw)  # ... and so does a flag the method does not take
    _check_image_size(raw["image_size"])
    device = _resolve_device(raw["device"])
    bundle = load_data(raw["data"], raw["image_size"] or DATA_DEFAULTS[kind]["image_size"])
    cfg = resolve_config(raw, len(bundle.train), device, env.world)
    if ckpt is not None:
        _check_frozen(cfg, ckpt["config"])
    train_set = bundle.train
    if cfg["inflate"]:
        train_set = InflatedDataset(bundle.train, load_inflation(cfg["inflate"], bundle.train, bundle.channels))
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
    loss_backend = _loss_backend(cfg["backend"], device, amp_dtype or torch.float32)
    if cfg["method"] in ("simsiam", "byol"):
        loss_backend = "none (cosine loss)"
    elif cfg["method"] == "swav":  # Sinkhorn codes; --backend eager runs augcl's pure-PyTorch reference
        loss_backend = _loss_backend("reference" if cfg["backend"] == "eager" else cfg["backend"], device,
                                     torch.float32, op="sinkhorn", distributed=env.distributed)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- model, optimiser, augmentations
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    num_generated = len(train_set) - len(bundle.train)
    weight = cfg["inflate_weight"] or 1
    steps_per_epoch = (len(bundle.train) * weight + num_generated) // cfg["batch_size"]
    total_steps = steps_per_epoch * cfg["epochs"]
    warmup_steps = min(total_steps, int(round(cfg["warmup_epochs"] * steps_per_epoch)))
    backbone, feat_dim = build_backbone(cfg["backbone"], bundle.channels, cfg["cifar_stem"])
    method = build_method(cfg["method"], backbone, feat_dim, temperature=cfg["temperature"],
                          backend=None if cfg["backend"] == "auto" else cfg["backend"],
                          queue_size=(cfg["queue_size"] or 0) // (env.world if cfg["method"] == "swav" else 1),
                          momentum=cfg["moco_momentum"], distributed=env.distributed,
                          shuffle_bn=not cfg["sync_bn"], byol_momentum=cfg["byol_momentum"],
                          n_prototypes=cfg["prototypes"] or 0,
                          queue_start_step=(cfg["swav_queue_start"] or 0) * steps_per_epoch,
                          freeze_prototypes_steps=min(SWAV_FREEZE_STEPS, steps_per_epoch),
                          hallucinate=cfg["hallucinate"],
                          unmix=dict(alpha=cfg["unmix_alpha"], prob_mixup=cfg["unmix_prob_mixup"],
                                     per_sample=cfg["unmix_per_sample"], swav_form=cfg["unmix_swav_form"])
                          if cfg["unmix"] else None).to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if ckpt is not None:  # before DDP: its construction broadcasts rank 0's state
        method.load_state_dict(ckpt["method"])
    if cfg["compile"]:
        for name, module in method.named_children():  # in place: state_dict keys stay, checkpoints stay portable
            if name != "hallucinator":  # (already one fused op; its helper draws lam on the host side)
                module.compile()
    model = wrap_ddp(method, device, env.world, cfg["sync_bn"])  # what the step calls (DDP or the method)
    on_step = getattr(method, "on_step", None)
    after_backward = getattr(method, "after_backward", None)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    size = cfg["image_size"]
    mean = torch.tensor(bundle.mean, device=device)
    std = torch.tensor(bundle.std, device=device)
    views = view_plan(cfg["method"], image_size=size, channels=bundle.channels, flip=bundle.flip,
                      aug=cfg["aug"], small_crops=cfg["small_crops"] or 0)
    pin = device.type == "cuda"

    def features():
        pre = lambda x: resize_normalize(x, size, mean, std)  # noqa: E731
        tr = extract_features(method.backbone, eval_loader(bundle.train, 512, cfg["num_workers"], pin), pre,
                              device, autocast)
        te = extract_features(method.backbone, eval_loader(bundle.test, 512, cfg["num_workers"], pin), pre,
                              device, autocast)
        return tr, te

    def knn(tr, te):
        return knn_top1(tr[0], tr[1], te[0], te[1], bundle.num_classes, k=cfg["knn_k"], temperature=cfg["knn_t"])

    # ---------------------------------------------------------------- resume or baseline
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        history, baseline = ckpt["history"], ckpt["baseline"]
        log(f"resuming {out} from epoch {start_epoch}")
    else:
        start_epoch, step, history, baseline = 0, 0, [], {}
        if cfg["baseline"] and env.is_main:
            tr, te = features()
            baseline = {"knn_top1": knn(tr, te), "linear_top1": linear_probe_top1(tr[0], tr[1], te[0], te[1])}
            history.append({"epoch": 0, "loss": None, "knn_top1": baseline["knn_top1"], "lr": None,
                            "time_s": 0.0, "elapsed_s": 0.0})
    crops = " + ".join(f"{n} x {s} px" for s, n in _count_sizes([v.size for v in views]))
    extras = "".join([" + Hallucinator" if cfg["hallucinate"] else "",
                      f" + Un-Mix (alpha {cfg['unmix_alpha']:g}, mixup p {cfg['unmix_prob_mixup']:g}, "
                      f"{'per sample' if cfg['unmix_per_sample'] else 'per batch'})" if cfg["unmix"] else ""])
    inflated = (f" + {num_generated} generated (--inflate, real:generated weight {weight}:1)"
                if num_generated else "")
    log(f"augcl.train: {cfg['method']}{extras} on {bundle.name} ({len(bundle.train)} train{inflated} / "
        f"{len(bundle.test)} test) | views {crops}, {cfg['aug']} aug | backbone {cfg['backbone']} | batch "
        f"{cfg['batch_size']} x {cfg['epochs']} epochs ({steps_per_epoch} steps each) | {cfg['optimizer']} lr "
        f"{cfg['lr']:.3g} | loss backend {loss_backend} | device {device} | out {out}")
    if env.distributed:
        log(f"DDP: {env.world} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), {cfg['batch_size'] // env.world}"
            f" images per process and step, {'global-batch BN (--sync-bn)' if cfg['sync_bn'] else 'per-process BN'}"
            + (", shuffle-BN keys" if cfg["method"] in ("moco", "mocov2") and not cfg["sync_bn"] else ""))
    if baseline:
        log(f"random-init encoder: kNN top-1 {baseline['knn_top1']:.3f}  linear top-1 {baseline['linear_top1']:.3f}")

    # ---------------------------------------------------------------- training
    title = f"{cfg['method']} / {bundle.name} / {cfg['backbone']} (seed {cfg['seed']})"
    elapsed = history[-1]["elapsed_s"] if history else 0.0
    for epoch in range(start_epoch + 1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        g_shuffle = torch.Generator().manual_seed(_epoch_seed(cfg["seed"], epoch, 0))
        g_aug = torch.Generator(device=device).manual_seed(_epoch_seed(cfg["seed"], epoch, 1, env.rank))
        if cfg["hallucinate"] or cfg["unmix"]:  # Un-Mix's and the Hallucinator's draws (stream 2)
            method.set_rng(torch.Generator(device=device).manual_seed(_epoch_seed(cfg["seed"], epoch, 2, env.rank)))
        sampler = EpochSampler(len(bundle.train), cfg["batch_size"], g_shuffle, num_generated=num_generated,
                               real_weight=weight, rank=env.rank, world=env.world)
        loader = train_loader(train_set, sampler, cfg["num_workers"], pin)
        model.train()
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg['epochs']}", leave=False,
                   disable=not (cfg["progress"] and env.is_main), dynamic_ncols=True, file=sys.stderr)
        for x, _ in bar:
            lr = _lr_at(step, total_steps, warmup_steps, cfg["lr"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            if on_step is not None:
                on_step(step, total_steps)
            x = x.to(device, non_blocking=True)
            batch_views = [augment(x, v.cfg, v.size, mean, std, g_aug) for v in views]
            with autocast():
                loss = model(*batch_views)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if after_backward is not None:
                after_backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach().float()
            if step % 5 == 0 or step % steps_per_epoch == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        bar.close()
        epoch_loss = (all_reduce_mean(loss_sum) / steps_per_epoch).item()
        if not math.isfinite(epoch_loss):
            raise TrainingError(f"the loss became {epoch_loss} in epoch {epoch}; lower --lr, or try --amp off")
        dt = time.perf_counter() - t0
        elapsed += dt
        if not env.is_main:
            continue
        acc = knn(*features())
        history.append({"epoch": epoch, "loss": round(epoch_loss, 6), "knn_top1": acc, "lr": lr,
                        "time_s": round(dt, 3), "elapsed_s": round(elapsed, 3)})
        _write_csv(out / "log.csv", history)
        _plot(out / "curves.png", history, title, baseline.get("knn_top1"))
        _save(ckpt_path, {"format": 1, "epoch": epoch, "step": step, "args": raw, "config": cfg,
                          "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict(), "history": history, "baseline": baseline,
                          "rng": _rng_state()})
        log(f"epoch {epoch:3d}/{cfg['epochs']}  loss {epoch_loss:.4f}  kNN top-1 {acc:.3f}  lr {lr:.2e}  {dt:.1f}s")
    if start_epoch >= cfg["epochs"]:
        log(f"{out}: already trained for {start_epoch} epochs (--epochs {cfg['epochs']}); evaluating only")
    if not env.is_main:
        _barrier(env)
        return {}

    # ---------------------------------------------------------------- final evaluation (rank 0)
    tr, te = features()
    knn_acc = knn(tr, te)
    linear_acc = linear_probe_top1(tr[0], tr[1], te[0], te[1])
    trained = [r for r in history if r["epoch"] > 0]
    metrics = {
        "method": cfg["method"], "data": cfg["data"], "backbone": cfg["backbone"],
        "hallucinate": cfg["hallucinate"], "unmix": cfg["unmix"],
        "epochs": trained[-1]["epoch"] if trained else 0, "seed": cfg["seed"],
        "knn_top1": knn_acc, "linear_top1": linear_acc,
        "random_init_knn_top1": baseline.get("knn_top1"), "random_init_linear_top1": baseline.get("linear_top1"),
        "final_loss": trained[-1]["loss"] if trained else None,
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "train_time_s": round(elapsed, 3),
        "augcl_backend": loss_backend, "augcl_version": augcl.__version__, "torch_version": torch.__version__,
        "device": str(device), "amp": cfg["amp"], "compile": cfg["compile"],
        "world_size": env.world, "per_process_batch": cfg["batch_size"] // env.world,
        "num_train": len(bundle.train), "num_generated": num_generated, "num_test": len(bundle.test),
        "knn_k": min(cfg["knn_k"], len(bundle.train)), "knn_temperature": cfg["knn_t"],
        "config": cfg,
    }
    with open(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    log(f"after {metrics['epochs']} epochs of {cfg['method']}: kNN top-1 {knn_acc:.3f}  linear top-1 {linear_acc:.3f}"
        f"  ({metrics['wall_time_s']:.0f} s)")
    log(f"wrote {out}/: metrics.json, log.csv, curves.png, last.pt")
    _barrier(env)
    return metrics


def _barrier(env) -> None:
    """Keep the ranks together until rank 0 has written its files (then the group is torn down)."""
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def _count_sizes(sizes: List[int]) -> List[tuple]:
    """[32, 32, 14, 14] -> [(32, 2), (14, 2)], in order of first appearance."""
    counts: Dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    return list(counts.items())
