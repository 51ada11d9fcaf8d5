"""The ``hallucinate`` op (the Hallucinator generator): registration and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/hallucinator.py``  pure PyTorch: the reference's eager generator and the op's reference
  (oracle, fallback)
* ``kernels/hallucinator.py``          Triton kernels -> ``augcl::hallucinate_triton`` (+ ``_backward``)
* ``csrc/cpu/hallucinator.cpp``        C++ CPU kernels -> ``augcl::hallucinate`` (+ ``_backward``), CPU key
* this file: fake kernels, autograd, the dispatcher entry :func:`hallucinate_op`
* ``augcl/functional.py``: ``hallucinate`` (validated); ``augcl/nn/hallucinator.py``: ``Hallucinator`` and the
  MoCo / SimCLR / SimSiam wiring helpers

The op returns ``(h, a1, a2)``: the output and the post-ReLU activations of the two hidden layers, saved for the
backward so that it runs only the 6 GEMMs the gradients need and recomputes none of the forward's. a1 and a2 are
marked non-differentiable (they are internal; :func:`hallucinate_op` returns only h).

lam is an input of the op ([B], fp32; fp64 for fp64 inputs) but is not differentiated: it is sampled from a
range, nobody trains it. Gradients flow to x, k and the six weight and bias tensors.

There is no CUDA C++ backend: without a GPU in this project's build machines there was no way to show one beats
the Triton kernels, which already fuse the elementwise work into the GEMMs (see kernels/hallucinator.py).
"""

from typing import Optional, Tuple

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES
from augcl.dispatch import Backend, first_order_only, register_cpp_autograd, register_op, triton_kernels
from augcl.reference.hallucinator import hallucinate_backward_reference, hallucinate_reference



# ---------------------------------------------------------------------------------------- fake kernels
def _fake_hallucinate(x, k, lam, w1, b1, w2, b2, w3, b3):
    b, h = x.shape[0], w1.shape[0]
    return x.new_empty(x.shape), x.new_empty((b, h)), x.new_empty((b, h))


def _fake_hallucinate_backward(grad_h, x, k, lam, w1, w2, w3, a1, a2):
    return (torch.empty_like(x), torch.empty_like(k), torch.empty_like(w1), w1.new_empty((w1.shape[0],)),
            torch.empty_like(w2), w2.new_empty((w2.shape[0],)), torch.empty_like(w3), w3.new_empty((w3.shape[0],)))


# -------------------------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    x, k, lam, w1, b1, w2, b2, w3, b3 = inputs
    _h, a1, a2 = output
    ctx.save_for_backward(x, k, lam, w1, w2, w3, a1, a2)
    ctx.mark_non_differentiable(a1, a2)


def _make_backward(backward_op):
    def _backward(ctx, grad_h, _grad_a1, _grad_a2):
        x, k, lam, w1, w2, w3, a1, a2 = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(x)
        dx, dk, dw1, db1, dw2, db2, dw3, db3 = backward_op(grad_h.to(x.dtype).contiguous(), x, k, lam, w1, w2, w3,
                                                           a1, a2)
        return dx, dk, None, dw1, db1, dw2, db2, dw3, db3

    return first_order_only("hallucinate", _backward)


if _extension.LOADED and hasattr(torch.ops.augcl, "hallucinate"):
    register_cpp_autograd("hallucinate", _fake_hallucinate, _fake_hallucinate_backward, _make_backward,
                          _setup_context)


# ------------------------------------------------------------------------------------------ Triton ops
@torch.library.triton_op("augcl::hallucinate_triton", mutates_args=())
def hallucinate_triton(
    x: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
    b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward of ``hallucinate``: ``(h, a1, a2)`` (see augcl/reference/hallucinator.py for the math)."""
    return triton_kernels("hallucinator").hallucinate_fwd(x, k, lam, w1, b1, w2, b2, w3, b3)


@torch.library.triton_op("augcl::hallucinate_triton_backward", mutates_args=())
def hallucinate_triton_backward(
    grad_h: torch.Tensor, x: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, w1: torch.Tensor,
    w2: torch.Tensor, w3: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """Triton backward of ``hallucinate``: ``(dx, dk, dw1, db1, dw2, db2, dw3, db3)``."""
    return triton_kernels("hallucinator").hallucinate_bwd(grad_h, x, k, lam, w1, w2, w3, a1, a2)


hallucinate_triton.register_autograd(
    _make_backward(lambda *args: hallucinate_triton_backward(*args)), setup_context=_setup_context
)


# -------------------------------------------------------------------------------- reference backend
class _HallucinateReference(torch.autograd.Function):
    """The reference as a backend, with the same explicit backward as the kernels (from a1, a2)."""

    @staticmethod
    def forward(x, k, lam, w1, b1, w2, b2, w3, b3):
        return hallucinate_reference(x, k, lam, w1, b1, w2, b2, w3, b3)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_h, grad_a1, grad_a2):
        return _make_backward(hallucinate_backward_reference)(ctx, grad_h, grad_a1, grad_a2)


# ------------------------------------------------------------------------------------------- backends
HALLUCINATE = register_op(
    "hallucinate",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES, triton_module="hallucinator"),
        "cpu": Backend(("cpu",), FLOAT_DTYPES, cpp_op="hallucinate"),
        "reference": Backend(None, FLOAT_DTYPES),
    },
)


def hallucinate_op(
    x: torch.Tensor, k: torch.Tensor, lam: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``h`` [B, D] on the selected backend, differentiable w.r.t. x, k and the weights (not lam). Inputs must
    already be validated and share one dtype and device (augcl.functional.hallucinate does it)."""
    name = HALLUCINATE.select(x.device.type, x, backend=backend)
    if k is x:
        # One tensor passed twice (x = k): a view gives autograd.Function / Dynamo two distinct inputs.
        k = k.view_as(k)
    args = (x, k, lam, w1, b1, w2, b2, w3, b3)
    if name == "triton":
        return hallucinate_triton(*args)[0]
    if name == "cpu":
        return torch.ops.augcl.hallucinate(*args)[0]
    return _HallucinateReference.apply(*args)[0]
