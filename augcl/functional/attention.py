"""Top-k attention: MixedAE's homologous attention (Chen et al., "Mixed Autoencoder for Self-supervised Visual
Representation Learning", CVPR 2023, https://arxiv.org/abs/2303.17152), as one fused op.

For each query only its ``top_k`` largest attention logits are kept; the softmax runs over those and the result
multiplies V. In MixedAE's encoder a query's best-matching keys tend to come from its own source image of the
mixed sequence, so keeping the top k (k = N / g by default) makes attention "homologous".

What follows the paper: keep the top k logits per query, softmax over them, used in place of the attention of
every encoder block during pre-training (plain attention at evaluation). What is ours: ties are broken toward
the lower key index (deterministically, identically in forward and backward, on every backend);
``keep_first=True`` always keeps key 0 (the class token) on top of the best ``top_k``; the kept set is a constant
of the backward (as with ``torch.topk`` + a mask).

How it is computed: one pass per block of query rows selects, masks, normalises and multiplies without writing the
[B, H, L, L] logits, mask or probabilities to memory; the backward uses the saved output and row logsumexp and
recomputes the logits and the selection from q and k, except on the CPU when few keys are kept (top_k + keep_first
<= 0.4 L, MixedAE's case): there the forward multiplies only the kept keys and saves their indices, which the
backward reuses (augcl.ops.topk_attention). Memory: O(B H L Dh), plus O(B H L top_k) indices in that case.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from augcl import _validate as V
from augcl._numerics import FLOAT_DTYPES
from augcl.ops.topk_attention import topk_attention_op

__all__ = ["topk_attention"]


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, *, scale: Optional[float] = None,
                   keep_first: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """Softmax attention restricted, per query, to its ``top_k`` largest logits (MixedAE's homologous attention).

    ``out_i = sum_{j in K(i)} softmax_j(scale * <q_i, k_j>) v_j`` with ``K(i)`` the ``top_k`` keys of largest logit
    (ties: the lower key index is kept), plus key 0 when ``keep_first`` (see augcl/reference/topk_attention.py).

    Args:
        q, k, v: [B, H, L, Dh] each (batch, heads, sequence, head width), one shape, dtype and device; float16 /
            bfloat16 / float32 / float64 (logits, softmax and products accumulated in float32, float64 for
            float64). Any strides.
        top_k: how many keys each query keeps, an int in [1, L]; ``top_k = L`` is plain softmax attention.
        scale: the logit scale, a finite float > 0; default ``Dh ** -0.5``.
        keep_first: also keep key 0 (the class token) for every query: ``top_k + 1`` keys where it was not among
            the best ``top_k``. Default False.
        backend: ``"triton"``, ``"cpu"``, ``"reference"`` or None (automatic; see augcl.dispatch). No ``"cuda"``
            backend: the Triton kernels are the GPU path.

    Returns ``out`` [B, H, L, Dh] in q's dtype (contiguous), differentiable w.r.t. q, k and v with the kept set
    held constant. Double backward raises.

    Raises TypeError / ValueError naming the argument: q, k or v not a 4-D floating tensor, empty, or not of one
    shape, dtype and device; ``top_k`` not an int in [1, L]; ``scale`` not a finite float > 0; ``keep_first`` not
    a bool. Non-finite values in q, k or v raise ValueError from the one deferred value check (skipped under
    ``augcl.set_checks(False)`` and torch.compile, see augcl._validate).
    """
    _check_qkv(q, k, v)
    seq, head_dim = q.shape[2], q.shape[3]
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= seq:
        raise ValueError(f"top_k must lie in [1, L] = [1, {seq}] (L = the sequence length of q {list(q.shape)}), "
                         f"got {top_k}")
    if scale is None:
        scale = float(head_dim) ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    if not isinstance(keep_first, bool):
        raise TypeError(f"keep_first must be a bool, got {type(keep_first).__name__}")
    out, _lse = topk_attention_op(q, k, v, top_k, float(scale), keep_first, backend)
    V.deferred_value_check(out, None, [("q", q), ("k", k), ("v", v)], what="the top-k attention output",
                           hint="the logits overflowed (scale or the inputs' norms too large?)")
    return out


def _check_qkv(q, k, v) -> None:
    named = (("q", q), ("k", k), ("v", v))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, L, Dh] (batch, heads, sequence, head width), got "
                             f"shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); B, H, L and Dh must all be >= 1")
    for name, t in named[1:]:
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {list(q.shape)} ([B, H, L, Dh]), got "
                             f"{list(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; pass one dtype (cast them)")
    V.check_same_device(named)
