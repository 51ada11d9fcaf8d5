"""The ``topk_attention`` op (MixedAE's homologous attention): registration and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/topk_attention.py``  pure PyTorch (oracle, fallback, the benchmarks' eager form)
* ``kernels/topk_attention.py``          Triton kernels -> ``augcl::topk_attention_triton`` (+ ``_backward``)
* ``csrc/cpu/topk_attention.cpp``        C++ CPU kernels -> ``augcl::topk_attention`` (+ ``_backward``), CPU key
* this file: fake kernels, autograd, the dispatcher entry :func:`topk_attention_op`
* ``augcl/functional/attention.py``: ``topk_attention`` (validated)

The op returns ``(out [B, H, L, Dh] in q's dtype, lse [B, H, L] in the accumulation dtype)``; these are saved for
the backward (with q, k, v), never an [L, L] tensor. The Triton and reference backwards recompute the logits and the
kept set from q and k, in the same order of operations as their forward, so the set is the same. The C++ CPU op
has a third output, ``kept``: where each query keeps few keys (``top_k + keep_first <= 0.4 L``, :func:`sparse_products`,
MixedAE's quarter of the keys) its forward runs the products over the kept keys only and returns their indices
[B, H, L, top_k + keep_first] (int32: 27% of out's size at L = 65, Dh = 64), which its backward reuses instead of
recomputing the logits and the selection; otherwise ``kept`` is [B, H, L, 0] and its backward recomputes. lse and
kept are marked non-differentiable.

There is no CUDA C++ backend: the Triton kernels cover the GPU (a query block and its whole key row on chip for
L <= 257), and no CUDA C++ kernel has been shown to beat them, so none is built.
"""

import os
from typing import Optional, Tuple

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES, acc_dtype
from augcl.dispatch import Backend, first_order_only, register_cpp_autograd, register_op, triton_kernels
from augcl.reference.topk_attention import topk_attention_bwd_reference, topk_attention_fwd_reference


# ------------------------------------------------------------------------------- the C++ op's products
def sparse_products(seq_len: int, top_k: int, keep_first: bool) -> bool:
    """Whether the C++ CPU op runs its products over the kept keys only (and saves them for the backward): when a
    query keeps at most 0.4 L keys. ``AUGCL_CPU_TOPK_PRODUCTS=sparse|dense`` forces the choice (tests run both on
    one input; benchmarks compare them). Measured forward + backward (B H = 32, Dh = 64, 2 threads; the backward
    then recomputing the selection): sparse 0.92 ms against dense 1.22 at L = 65 with 17 keys kept, about equal at
    33 of 65, dense ahead from about L / 2 (9.7 against 10.6 ms at 99 of 197)."""
    forced = os.environ.get("AUGCL_CPU_TOPK_PRODUCTS", "").strip().lower()
    if forced in ("sparse", "dense"):
        return forced == "sparse"
    kept = top_k + (1 if keep_first else 0)
    return 5 * kept <= 2 * seq_len


# ---------------------------------------------------------------------------------------- fake kernels
def _fake_topk_attention(q, k, v, top_k, scale, keep_first, save_kept):
    kept = top_k + (1 if keep_first else 0) if save_kept else 0
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:-1], dtype=acc_dtype(q.dtype)),
            q.new_empty((*q.shape[:-1], kept), dtype=torch.int32))


def _fake_topk_attention_backward(grad_out, q, k, v, out, lse, kept, top_k, scale, keep_first):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


# -------------------------------------------------------------------------------------------- autograd
# One backward formula for every backend; the C++ op's inputs and outputs carry save_kept and kept in addition.
def _setup_context(ctx, inputs, output):
    q, k, v, top_k, scale, keep_first = inputs[:6]
    out, lse = output[:2]
    extra = tuple(output[2:])  # (kept,) for the C++ op
    ctx.save_for_backward(q, k, v, out, lse, *extra)
    ctx.top_k, ctx.scale, ctx.keep_first = top_k, scale, keep_first
    ctx.mark_non_differentiable(lse, *extra)


def _make_backward(backward_op, n_inputs: int = 6):
    def _backward(ctx, grad_out, *_grads_of_non_differentiable):
        q, k, v, out, lse, *extra = ctx.saved_tensors
        nones = (None,) * (n_inputs - 3)
        if grad_out is None:
            return (None, None, None, *nones)
        dq, dk, dv = backward_op(grad_out.to(out.dtype).contiguous(), q, k, v, out, lse, *extra, ctx.top_k,
                                 ctx.scale, ctx.keep_first)
        return (dq, dk, dv, *nones)

    return first_order_only("topk_attention", _backward)


if _extension.LOADED and hasattr(torch.ops.augcl, "topk_attention"):
    register_cpp_autograd("topk_attention", _fake_topk_attention, _fake_topk_attention_backward,
                          lambda op: _make_backward(op, n_inputs=7), _setup_context)


# ------------------------------------------------------------------------------------------ Triton ops
@torch.library.triton_op("augcl::topk_attention_triton", mutates_args=())
def topk_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, scale: float,
                          keep_first: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton forward of ``topk_attention``: ``(out, lse)`` (see augcl/reference/topk_attention.py for the math)."""
    return triton_kernels("topk_attention").topk_attention_fwd(q, k, v, top_k, scale, keep_first)


@torch.library.triton_op("augcl::topk_attention_triton_backward", mutates_args=())
def topk_attention_triton_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   out: torch.Tensor, lse: torch.Tensor, top_k: int, scale: float,
                                   keep_first: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward of ``topk_attention``: ``(dq, dk, dv)``."""
    return triton_kernels("topk_attention").topk_attention_bwd(grad_out, q, k, v, out, lse, top_k, scale,
                                                               keep_first)


topk_attention_triton.register_autograd(
    _make_backward(lambda *args: topk_attention_triton_backward(*args)), setup_context=_setup_context
)


# -------------------------------------------------------------------------------- reference backend
class _TopkAttentionReference(torch.autograd.Function):
    """The reference as a backend, with the kernels' explicit backward (from out and lse, selection recomputed)."""

    @staticmethod
    def forward(q, k, v, top_k, scale, keep_first):
        return topk_attention_fwd_reference(q, k, v, top_k, scale, keep_first)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return _make_backward(topk_attention_bwd_reference)(ctx, grad_out, grad_lse)


# ------------------------------------------------------------------------------------------- backends
TOPK_ATTENTION = register_op(
    "topk_attention",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES, triton_module="topk_attention", triton_inputs=1),
        "cpu": Backend(("cpu",), FLOAT_DTYPES, cpp_op="topk_attention"),
        "reference": Backend(None, FLOAT_DTYPES),
    },
)


def topk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, scale: float,
                      keep_first: bool, backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, L, Dh], lse [B, H, L])`` on the selected backend, ``out`` differentiable w.r.t. q, k, v.
    Inputs must already be validated (one shape, dtype and device; augcl.functional.topk_attention does it)."""
    name = TOPK_ATTENTION.select(q.device.type, q, k, v, backend=backend)
    # One tensor passed twice (q is k, say): a view gives autograd.Function / Dynamo distinct inputs at no cost.
    if k is q:
        k = k.view_as(k)
    if v is q or v is k:
        v = v.view_as(v)
    args = (q, k, v, int(top_k), float(scale), bool(keep_first))
    if name == "triton":
        return topk_attention_triton(*args)
    if name == "cpu":
        out, lse, _kept = torch.ops.augcl.topk_attention(*args, sparse_products(q.shape[2], top_k, keep_first))
        return out, lse
    return _TopkAttentionReference.apply(*args)
