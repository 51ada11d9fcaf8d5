"""Frozen-feature evaluation: the kNN monitor (every epoch) and the linear probe (at the end).

Features are the backbone's outputs on un-augmented images (resized to the training size), L2-normalised.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["extract_features", "knn_top1", "linear_probe_top1"]


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, preprocess: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, autocast=contextlib.nullcontext) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 L2-normalised, labels [N] long)``, both on ``device``.

    ``preprocess`` maps a uint8 batch on ``device`` to the model's input; the backbone runs in eval mode (BN
    running statistics) and is put back in the mode it was in.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for x, y in loader:
            x = preprocess(x.to(device, non_blocking=True))
            with autocast():
                f = backbone(x)
            feats.append(F.normalize(f.float(), dim=1))
            labels.append(y.to(device))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
             num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN top-1 accuracy (InstDisc / MoCo monitor): each of the k nearest train features (cosine
    similarity s; k capped at the train size) votes for its class with weight exp(s / temperature).

    train_f [N, D], test_f [M, D] L2-normalised; train_y [N], test_y [M] in [0, num_classes).
    """
    k = min(k, train_f.shape[0])
    correct = 0
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i:i + chunk] @ train_f.T  # [m, N]
        s, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(s / temperature))
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return correct / test_f.shape[0]


def linear_probe_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                      C: float = 1.0, max_iter: int = 1000) -> float:
    """Top-1 accuracy of scikit-learn's multinomial LogisticRegression (L-BFGS) fit on the frozen train
    features (L2-normalised, then standardised with the train set's mean / std), tested on the test ones.

    Needs scikit-learn (the ``train`` extra); the trainer skips the probe when ``errors.sklearn_reason()``
    says it is missing.
    """
    # scikit-learn is optional: imported here so that the kNN monitor works without it
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = train_f.float().cpu().numpy(), train_y.cpu().numpy()
    xte, yte = test_f.float().cpu().numpy(), test_y.cpu().numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())
