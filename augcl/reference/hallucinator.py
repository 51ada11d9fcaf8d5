"""Pure-PyTorch Hallucinator: the reference generator module and the functional reference of the op.

The Hallucinator of Wu et al. (jingwu6/Hallucination-improves-the-performance-of-unsupervised-visual-
representation-learning, ``models/generator.py``) turns an anchor embedding x and its positive k (both [B, D])
into a hallucinated positive::

    x~ = x + lam * (x - k)             (the reference writes (1 + lam) * x - lam * k; same value)
    h  = fc3(relu(fc2(relu(fc1([x, x~])))))     fc1: 2D -> H, fc2: H -> H, fc3: H -> D
    output [x; h]                      [2B, D]

Two references live here:

* :class:`ReferenceGenerator`: the eager module with the reference's exact structure (``torch.cat``, three
  ``nn.Linear``, ``nn.ReLU`` in an ``nn.Sequential`` that shares the ``fc*`` modules), used as the oracle of the
  module and as the baseline of the benchmark. Its state_dict holds both ``fc1.*`` and ``MLP.0.*`` keys, as the
  reference's does.
* :func:`hallucinate_reference` / :func:`hallucinate_backward_reference`: the op ``hallucinate`` and its
  explicit backward in plain torch (fp32 accumulation for fp16/bf16, fp64 for fp64). They define the contract
  every kernel implements: the forward returns h and the post-ReLU activations a1, a2 it saves for backward.

Backward (dh [B, D] given; W1 = [W1a | W1b] split at column D)::

    dW3 = dh^T a2        db3 = sum_b dh         dz2 = (dh W3) * (a2 > 0)
    dW2 = dz2^T a1       db2 = sum_b dz2        dz1 = (dz2 W2) * (a1 > 0)
    dW1a = dz1^T x       dW1b = dz1^T x~        db1 = sum_b dz1
    gb = dz1 W1b         dx = dz1 W1a + (1 + lam) * gb        dk = -lam * gb

lam is not differentiated: it is sampled, nobody trains it.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from augcl._numerics import acc_dtype
from augcl.reference._outputs import as_output

__all__ = ["ReferenceGenerator", "hallucinate_reference", "hallucinate_backward_reference"]


class ReferenceGenerator(nn.Module):
    """The reference's ``Generator(in_dim=2D, inner_dim=H, out_dim=D)``, structure kept as is (cat, Linear,
    ReLU); ``forward(x, k, ratio) -> [x; h]`` [2B, D] with a float ``ratio`` (lam)."""

    def __init__(self, in_dim: int, inner_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, inner_dim)
        self.fc2 = nn.Linear(inner_dim, inner_dim)
        self.fc3 = nn.Linear(inner_dim, out_dim)
        self.MLP = nn.Sequential(self.fc1, nn.ReLU(), self.fc2, nn.ReLU(), self.fc3)

    def forward(self, x: torch.Tensor, k: torch.Tensor, ratio) -> torch.Tensor:
        generated = (1 + ratio) * x - ratio * k
        generated = self.MLP(torch.cat((x, generated), 1))
        return torch.cat((x, generated), 0)


def _lam_column(lam: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return lam.to(acc).reshape(-1, 1)


def hallucinate_reference(
    x: torch.Tensor, k: torch.Tensor, lam: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``hallucinate`` op in plain torch: ``(h [B, D], a1 [B, H], a2 [B, H])`` in x's dtype.

    Args:
        x, k: [B, D] (one float dtype); lam: [B] per-sample extrapolation (any float dtype; used in fp32/fp64).
        w1: [H, 2D], b1: [H]; w2: [H, H], b2: [H]; w3: [D, H], b3: [D] (nn.Linear layout, x's dtype).

    Computed in the accumulation dtype (fp32 for fp16/bf16) with the concat materialised (it is the oracle);
    a1 and a2 are rounded to x's dtype like the kernels' saved activations.
    """
    acc = acc_dtype(x.dtype)
    xa, ka = x.to(acc), k.to(acc)
    xt = xa + _lam_column(lam, acc) * (xa - ka)
    a1 = F.relu(F.linear(torch.cat((xa, xt), 1), w1.to(acc), b1.to(acc)))
    a2 = F.relu(F.linear(a1, w2.to(acc), b2.to(acc)))
    h = F.linear(a2, w3.to(acc), b3.to(acc))
    return as_output(h, x.dtype), as_output(a1, x.dtype), as_output(a2, x.dtype)


def hallucinate_backward_reference(
    grad_h: torch.Tensor, x: torch.Tensor, k: torch.Tensor, lam: torch.Tensor,
    w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
) -> Tuple[torch.Tensor, ...]:
    """Backward of :func:`hallucinate_reference` from the saved activations (no GEMM recomputed):
    ``(dx, dk, dw1, db1, dw2, db2, dw3, db3)``, each in the dtype of its input."""
    acc = acc_dtype(x.dtype)
    d = x.shape[1]
    lam_c = _lam_column(lam, acc)
    xa, ka = x.to(acc), k.to(acc)
    xt = xa + lam_c * (xa - ka)
    a1a, a2a = a1.to(acc), a2.to(acc)
    dh = grad_h.to(acc)
    w1a, w2a, w3a = w1.to(acc), w2.to(acc), w3.to(acc)

    dw3 = dh.t() @ a2a
    db3 = dh.sum(0)
    dz2 = (dh @ w3a) * (a2a > 0)
    dw2 = dz2.t() @ a1a
    db2 = dz2.sum(0)
    dz1 = (dz2 @ w2a) * (a1a > 0)
    dw1 = torch.cat((dz1.t() @ xa, dz1.t() @ xt), 1)
    db1 = dz1.sum(0)
    ga = dz1 @ w1a[:, :d]
    gb = dz1 @ w1a[:, d:]
    dx = ga + (1 + lam_c) * gb
    dk = -lam_c * gb
    return (dx.to(x.dtype), dk.to(k.dtype), dw1.to(w1.dtype), db1.to(w1.dtype), dw2.to(w2.dtype),
            db2.to(w2.dtype), dw3.to(w3.dtype), db3.to(w3.dtype))
