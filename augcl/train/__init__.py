"""``python -m augcl.train``: a small self-supervised training driver built on augcl's fused losses.

Modules: ``cli`` (argparse, ``main``), ``trainer`` (the run: setup, epochs, evaluation), ``schedule`` (the
learning rate, continued on resume), ``checkpoint`` (last.pt: atomic, checksummed, verified), ``outputs``
(the output folder, log.csv, curves.png, metrics.json), ``data`` (digits, synthetic, CIFAR, ImageFolder;
AdaInf inflation and the epoch sampler), ``augment`` (batched on-device augmentations, per-method view plans
incl. SwAV multi-crop, AdaInf's weak preset), ``models`` (small CNN, ResNets, heads), ``methods`` (SimCLR, MoCo
v1/v2, SimSiam, BYOL, SwAV: where the augcl op is called), ``ddp`` (torchrun / DistributedDataParallel,
global-batch BN), ``evaluate`` (kNN monitor, linear probe), ``errors`` (the two ways a run stops, warnings,
optional-dependency checks).

With no arguments it trains SimCLR on scikit-learn's digits on a CPU in a few minutes and prints the kNN and
linear-probe top-1 of the trained encoder next to those of the random-init one. The guide: README.md here.
"""
from augcl.train.cli import main

__all__ = ["main"]
