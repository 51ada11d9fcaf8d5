"""Command line of ``python -m augcl.train`` (argparse + ``main``).

Every bad input ends as ONE line on stderr, ``python -m augcl.train: error: ...``, and exit code 2 (argparse's
convention), never a traceback; a failed training (non-finite loss) ends with exit code 1.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, List, Optional, Sequence, Set

from augcl.train.errors import PROG, ConfigError, TrainingError
from augcl.train.methods import METHODS
from augcl.train.models import BACKBONES
from augcl.train.trainer import run

AMP_MODES = ("off", "bf16", "fp16")
LOSS_BACKENDS = ("auto", "triton", "cuda", "cpu", "reference", "eager")
SWAV_UNMIX_FORMS = ("soft", "authors")  # augcl.functional.swav_loss mix_form

EPILOG = """\
defaults: SimCLR with augcl's fused NT-Xent on scikit-learn's digits (8x8 images upsampled to 16 px), the small
CNN, AdamW + cosine, 10 epochs of batch 128: a few minutes on a 2-core CPU. Outputs in --out: metrics.json,
log.csv (per epoch: loss, kNN top-1, lr, time), curves.png (needs matplotlib) and last.pt (checksummed, replaced
atomically; resume with --resume --out DIR). scikit-learn is needed for digits and the linear probe.
distributed: torchrun --nproc_per_node=N -m augcl.train ... runs DDP (NCCL on GPUs, gloo on CPU);
--batch-size is then the global batch (batch / N per process) and only rank 0 writes files.
examples:
  python -m augcl.train
  python -m augcl.train --method mocov2 --epochs 30
  python -m augcl.train --method swav --small-crops 4 --queue-size 1024
  python -m augcl.train --data cifar10:/data/cifar10 --inflate gen.npz --inflate-weight 10   # AdaInf
  torchrun --nproc_per_node=2 -m augcl.train --method simclr --data synthetic --out runs/ddp
  python -m augcl.train --data cifar10:/data/cifar10 --backbone resnet18 --amp bf16 --compile
  python -m augcl.train --method mocov2 --hallucinate --unmix   # Hallucinator + Un-Mix
  python -m augcl.train --method swav --unmix --unmix-swav-form authors   # Un-Mix's SwAV loss
  python -m augcl.train --method mixedae --epochs 30        # MixedAE (ViT); also mae, mixedae-naive
  python -m augcl.train --hard-samples --hard-pairs --data-fraction 0.2   # generated hard samples and pairs
  python -m augcl.train --backend eager        # the plain-PyTorch loss, for comparison
  python -m augcl.train --resume --out runs/simclr-20250101-120000   # after an interruption
  python -m augcl.train --resume --out runs/simclr-20250101-120000 --epochs 30 --lr 1e-3   # extend, restart lr
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (argparse prints the whole usage first)
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _float_where(ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse ``type``: a float for which ``ok`` holds, else the error ``"<expected>, got <text>"`` (NaN fails
    every range below: its comparisons are false)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{expected}, got {text}")
        return value

    return parse


_positive_float = _float_where(lambda v: 0.0 < v < math.inf, "must be a finite number > 0")
_nonneg_float = _float_where(lambda v: 0.0 <= v < math.inf, "must be a finite number >= 0")
_probability = _float_where(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
_cosine = _float_where(lambda v: -1.0 <= v <= 1.0, "a cosine similarity must be in [-1, 1]")
_fraction = _float_where(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
_momentum = _float_where(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Self-supervised training (SimCLR, MoCo v1/v2, SimSiam, BYOL, SwAV) with "
                "augcl's fused losses, evaluated with a kNN monitor and a linear probe.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    a = p.add_argument
    a("--method", choices=METHODS, default="simclr",
      help="simclr (default), moco (v1), mocov2, simsiam, byol, swav; or the masked-image methods mae, mixedae, "
      "mixedae-naive (ViT encoder)")
    a("--data", default="digits", metavar="SPEC",
      help="digits (default), synthetic, cifar10:PATH, cifar100:PATH or imagefolder:PATH (local copies only)")
    a("--epochs", type=_int_at_least(1), default=None, help="default: 10 on digits, 5 synthetic, 100 otherwise")
    a("--batch-size", type=_int_at_least(1), default=None, help="global batch (split over torchrun's processes); "
      "default: 128 on digits, 64 synthetic, 256 otherwise")
    a("--backbone", choices=BACKBONES, default=None, help="default: small on CPU, resnet18 on GPU")
    a("--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
      help="ResNet 3x3 stride-1 stem without max-pool (default: on for images <= 64 px)")
    a("--image-size", type=_int_at_least(1), default=None, help="training resolution in px (default: 16 digits/"
      "synthetic, 32 CIFAR, 64 imagefolder)")
    a("--optimizer", choices=("auto", "adamw", "sgd"), default="auto",
      help="auto: AdamW for the small CNN, SGD (momentum 0.9) for ResNets")
    a("--lr", type=_positive_float, default=None, help="peak learning rate (default: 2e-3 AdamW; SGD: 0.3 SimCLR, "
      "0.06 MoCo, 0.05 SimSiam, 0.12 BYOL / SwAV; times batch/256); cosine decay to 0 per step")
    a("--weight-decay", type=_nonneg_float, default=None, help="default: 1e-4 AdamW, 5e-4 SGD")
    a("--warmup-epochs", type=_nonneg_float, default=None, help="linear warmup (default: 0 AdamW, epochs/10 <= 10 SGD)")
    a("--temperature", type=_positive_float, default=None, help="loss temperature (default: simclr 0.2, moco 0.07, "
      "mocov2 0.2, swav 0.1; simsiam and byol have none)")
    a("--queue-size", type=_int_at_least(1), default=None,
      help="MoCo: queue length K >= 2 x batch (default: a power of two <= half the training set, at most 65536); "
      "SwAV: queued embeddings per large crop, over all processes (default: no queue)")
    a("--moco-momentum", type=_momentum, default=0.99, help="MoCo key-encoder EMA momentum (default 0.99)")
    a("--byol-momentum", type=_momentum, default=0.99,
      help="BYOL target EMA base tau, cosine-scheduled to 1 (default 0.99; the paper's ImageNet value 0.996)")
    a("--prototypes", type=_int_at_least(2), default=None,
      help="SwAV prototypes (default: training images / 10, between 16 and 3000)")
    a("--small-crops", type=_int_at_least(0), default=None,
      help="SwAV multi-crop: small crops (side image-size x 96/224) besides the 2 large ones (default 4)")
    a("--swav-queue-start", type=_int_at_least(0), default=None,
      help="SwAV: the epoch from which the queue is filled (default epochs / 10)")
    a("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
      help="under torchrun: BatchNorm over the global batch (SyncBatchNorm on GPU, augcl's GlobalBatchNorm on "
      "CPU); MoCo then skips shuffle-BN (default off)")
    a("--inflate", default=None, metavar="PATH",
      help="AdaInf: generated uint8 images (.npz: [N,H,W], [N,H,W,C] or [N,C,H,W], the real data's size) added "
      "to the training set with label -1")
    a("--inflate-weight", type=_int_at_least(1), default=None,
      help="AdaInf: real:generated sampling weight r:1, i.e. an epoch is the real data r times + the generated "
      "data once, drawn through an index map (default 10)")
    a("--aug", choices=("standard", "weak"), default=None,
      help="augmentation strength: standard (the method's), or weak (AdaInf: crop scale >= 0.2, colour jitter "
      "p 0.4); default weak with --inflate, else standard")
    a("--hallucinate", action="store_true",
      help="Hallucinator (Wu et al. 2023): a feature-space generator, trained by the main loss, adds a "
      "hallucinated positive per anchor (simclr, moco, mocov2, simsiam)")
    a("--unmix", action="store_true",
      help="Un-Mix (Shen et al. 2022): view 1 mixed with its reversed batch (mixup or CutMix), the mixture's "
      "targets weighted lam / 1 - lam (simclr, moco, mocov2, byol, swav)")
    a("--unmix-alpha", type=_positive_float, default=None, help="Un-Mix: lam ~ Beta(alpha, alpha) (default 1.0)")
    a("--unmix-prob-mixup", type=_probability, default=None,
      help="Un-Mix: probability of a global (mixup) rather than a region (CutMix) mixture (default 0.5)")
    a("--unmix-per-sample", action=argparse.BooleanOptionalAction, default=None,
      help="Un-Mix: one lam / box / mode per sample instead of one per batch (default off, the paper's)")
    a("--unmix-swav-form", choices=SWAV_UNMIX_FORMS, default=None,
      help="Un-Mix with --method swav: soft (default; the mixture is an extra crop predicting the lam-mix of the "
      "codes) or authors (Un-Mix's main_swav_unmix.py: the mixture replaces view 1 in two more SwAV losses, "
      "its own codes in batch and reversed order weighted lam / 1 - lam)")
    a("--patch-size", type=_int_at_least(1), default=None,
      help="mae / mixedae / mixedae-naive: ViT patch side in px, dividing --image-size (default image size / 8: "
      "64 patches)")
    a("--group", type=_int_at_least(2), default=None,
      help="mixedae / mixedae-naive: images mixed into one token sequence (default 4); divides the per-process "
      "batch and the patch count")
    a("--top-k", type=_int_at_least(1), default=None,
      help="mixedae: keys kept per query by the encoder's homologous top-k attention in pre-training (default "
      "patches / group; the class token is kept in addition)")
    a("--segment", choices=("encoder", "decoder", "none"), default=None,
      help="mixedae: where the segment embedding of the source image is added (default encoder)")
    a("--hc-weight", type=_nonneg_float, default=None,
      help="mixedae: weight of the homologous contrastive term (default 1.0; --temperature sets its "
      "temperature, default 0.2)")
    a("--hard-samples", action="store_true",
      help="hard-sample generation (Wu et al. 2022): a GAN generator trained jointly with the model also raises "
      "the model's contrastive loss on its samples; real + synthetic views, SupCon over instance ids "
      "(simclr, moco, mocov2)")
    a("--hard-pairs", action="store_true",
      help="generated positive pairs a = G(u), b = G(u + sigma eps), 4 views each, sigma steered so that their "
      "cosine similarity follows --pair-sim-start -> --pair-sim-end (with or without --hard-samples)")
    a("--gen-warmup-epochs", type=_nonneg_float, default=None,
      help="hard samples: epochs of plain GAN training before the synthetic views join the model's loss "
      "(default epochs / 5; frozen: the GAN's only training)")
    a("--synthetic-per-batch", type=_int_at_least(2), default=None,
      help="hard samples: generated images per step, global (split over torchrun's processes; pairs: half as "
      "many pairs) (default 32)")
    a("--hard-beta", type=_nonneg_float, default=None,
      help="--hard-samples: weight of the hardness term -beta * L_con in the generator's loss (default 0.1)")
    a("--pair-sim-start", type=_cosine, default=None,
      help="--hard-pairs: target cosine similarity of the pairs at the start (default 0.9)")
    a("--pair-sim-end", type=_cosine, default=None,
      help="--hard-pairs: target cosine similarity at the end, reached linearly (default 0.5)")
    a("--pair-gain", type=_positive_float, default=None,
      help="--hard-pairs: gain k of the controller sigma <- clip(sigma exp(k (cos - target)), 0.01, 1.5), per step "
      "(default 0.05: tracks over a few hundred steps; a short run needs a larger one, e.g. 0.5)")
    a("--synthetic", choices=("joint", "frozen"), default=None,
      help="hard samples: joint (default; G and D train all along) or frozen (the control: the GAN trains "
      "during the warm-up only, then its samples are extra data)")
    a("--data-fraction", type=_fraction, default=1.0,
      help="train on a class-stratified fraction of the training images, drawn from --seed (default 1.0); the "
      "kNN monitor and linear probe use the whole training set")
    a("--seed", type=_int_at_least(0), default=0, help="seed of initialisation, shuffling and augmentations")
    a("--amp", choices=AMP_MODES, default="off",
      help="autocast dtype (fp16 adds a GradScaler); on a CPU use bf16 or off: fp16 runs about 9x slower there")
    a("--compile", action="store_true", help="torch.compile the encoders and heads")
    a("--backend", choices=LOSS_BACKENDS, default="auto",
      help="augcl backend of the loss (auto = the dispatcher's choice), or eager for a plain-PyTorch loss")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    a("--out", default=None, metavar="DIR", help="output folder (default: runs/<method>-<timestamp>)")
    a("--resume", action="store_true",
      help="continue the run in --out from its last.pt (its settings, unless given again), after verifying "
      "its checksum. The lr schedule is continued, never restarted: with a larger --epochs the cosine goes on "
      "from the current lr to 0 at the new end. A finished run's lr is 0: to extend it, give --lr as well, "
      "which restarts the cosine from that value")
    a("--num-workers", type=_int_at_least(0), default=None, help="DataLoader workers (default 0; 4 imagefolder)")
    a("--knn-k", type=_int_at_least(1), default=200, help="kNN monitor neighbours (capped at the train size)")
    a("--knn-t", type=_positive_float, default=0.1, help="kNN monitor vote temperature")
    a("--baseline", action=argparse.BooleanOptionalAction, default=True,
      help="evaluate the random-init encoder first (default on)")
    a("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar (default on)")
    return p


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Set[str]:
    """The destinations of the options present on the command line (abbreviations are disabled)."""
    tokens = {t.split("=", 1)[0] for t in argv if t.startswith("--")}
    return {act.dest for act in parser._actions if tokens.intersection(act.option_strings)}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns 0 on success, raises SystemExit(2) on bad input and SystemExit(1) on a failed run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(vars(args), _given(parser, argv))
    except ConfigError as exc:
        parser.error(str(exc))
    except TrainingError as exc:
        parser.exit(1, f"{PROG}: training failed: {' '.join(str(exc).split())}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted; continue with --resume --out DIR\n")
    return 0
