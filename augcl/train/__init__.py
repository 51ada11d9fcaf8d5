"""``python -m augcl.train``: a small self-supervised training driver built on augcl's fused losses.

Modules: ``cli`` (argparse, ``main``), ``trainer`` (the run: loop, logs, checkpoints), ``data`` (digits,
synthetic, CIFAR, ImageFolder), ``augment`` (batched on-device SimCLR / MoCo augmentations), ``models``
(small CNN, ResNets, heads), ``methods`` (SimCLR, MoCo v1/v2: where the augcl op is called), ``evaluate``
(kNN monitor, linear probe).

With no arguments it trains SimCLR on scikit-learn's digits on a CPU in a few minutes and prints the kNN and
linear-probe top-1 of the trained encoder next to those of the random-init one.
"""
from augcl.train.cli import main

__all__ = ["main"]
