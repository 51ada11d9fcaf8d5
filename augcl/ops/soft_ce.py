"""The ``soft_ce`` op (SwAV's swapped prediction per crop): registration and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/soft_ce.py``  pure PyTorch (oracle, fallback)
* ``kernels/soft_ce.py``          Triton kernels -> ``augcl::soft_ce_triton`` (+ ``_backward``)
* ``csrc/cpu/soft_ce.cpp``        C++ CPU kernels -> ``augcl::soft_ce`` (+ ``_backward``), CPU key
* this file: fake kernels, autograd, the dispatcher entry :func:`soft_ce_rows`
* ``augcl/functional/swav.py``: ``soft_target_ce`` (``swav_loss``'s per-crop cross-entropy)

The op returns ``(rows [B], lse [B])`` in the accumulation dtype (fp64 when z or t is fp64, else fp32); lse is
saved for the backward and marked non-differentiable. Gradients flow to z and t (dt only computed when t
requires grad). The caller reduces: ``loss = rows.sum()``.
"""

from typing import Optional, Tuple

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES, acc_dtype
from augcl.dispatch import (Backend, first_order_only, register_cpp_autograd, register_op, requested_backend,
                            triton_kernels)
from augcl.reference.soft_ce import soft_ce_bwd, soft_ce_fwd


# ---------------------------------------------------------------------------------------- fake kernels
def _fake_soft_ce(z, t, inv_temp):
    acc = acc_dtype(z.dtype, t.dtype)
    return z.new_empty((z.shape[0],), dtype=acc), z.new_empty((z.shape[0],), dtype=acc)


def _fake_soft_ce_backward(grad_rows, z, t, lse, inv_temp, compute_dt):
    return torch.empty_like(z, memory_format=torch.contiguous_format), (
        t.new_empty(t.shape) if compute_dt else t.new_empty((0,)))


# -------------------------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    z, t, inv_temp = inputs
    _rows, lse = output
    ctx.save_for_backward(z, t, lse)
    ctx.inv_temp = inv_temp
    ctx.mark_non_differentiable(lse)


def _make_backward(backward_op):
    def _backward(ctx, grad_rows, _grad_lse):
        z, t, lse = ctx.saved_tensors
        need_dz, need_dt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_rows is None or not (need_dz or need_dt):
            return None, None, None
        dz, dt = backward_op(grad_rows.to(lse.dtype).contiguous(), z, t, lse, ctx.inv_temp, bool(need_dt))
        return (dz if need_dz else None), (dt if need_dt else None), None

    return first_order_only("soft_ce", _backward)


if _extension.LOADED and hasattr(torch.ops.augcl, "soft_ce"):
    register_cpp_autograd("soft_ce", _fake_soft_ce, _fake_soft_ce_backward, _make_backward, _setup_context)


# ------------------------------------------------------------------------------------------ Triton ops
@torch.library.triton_op("augcl::soft_ce_triton", mutates_args=())
def soft_ce_triton(z: torch.Tensor, t: torch.Tensor, inv_temp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton forward of ``soft_ce``: ``(rows, lse)`` fp32."""
    return triton_kernels("soft_ce").soft_ce_fwd(z, t, inv_temp)


@torch.library.triton_op("augcl::soft_ce_triton_backward", mutates_args=())
def soft_ce_triton_backward(grad_rows: torch.Tensor, z: torch.Tensor, t: torch.Tensor, lse: torch.Tensor,
                            inv_temp: float, compute_dt: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton backward of ``soft_ce``: ``(dz, dt)`` (dt an empty [0] tensor unless compute_dt)."""
    return triton_kernels("soft_ce").soft_ce_bwd(grad_rows, z, t, lse, inv_temp, compute_dt)


soft_ce_triton.register_autograd(
    _make_backward(lambda *args: soft_ce_triton_backward(*args)), setup_context=_setup_context
)


# -------------------------------------------------------------------------------- reference backend
class _SoftCEReference(torch.autograd.Function):
    """The reference as a backend, with the same explicit backward as the kernels (from lse)."""

    @staticmethod
    def forward(z, t, inv_temp):
        return soft_ce_fwd(z, t, inv_temp)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_rows, grad_lse):
        return _make_backward(soft_ce_bwd)(ctx, grad_rows, grad_lse)


# ------------------------------------------------------------------------------------------- backends
def _targets_reason(z, t) -> Optional[str]:
    # the targets are codes in the accumulation dtype (Sinkhorn's output), never half precision
    if t.dtype not in (torch.float32, torch.float64):
        return f"t dtype {t.dtype} is not supported (float32, float64)"
    return None


SOFT_CE = register_op(
    "soft_ce",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES, triton_module="soft_ce"),
        "cpu": Backend(("cpu",), FLOAT_DTYPES, cpp_op="soft_ce", limits=_targets_reason),
        "reference": Backend(None, FLOAT_DTYPES, limits=_targets_reason),
    },
)


def soft_ce_rows(z: torch.Tensor, t: torch.Tensor, inv_temp: float, backend: Optional[str] = None) -> torch.Tensor:
    """``rows [B] = w_b * lse_b - inv_temp * <t_b, z_b>`` (acc dtype) on the selected backend, differentiable
    w.r.t. z and t. Inputs must already be validated ([B, K] each, same shape and device)."""
    name = SOFT_CE.select(z.device.type, z, t, backend=backend)
    if t is z:
        t = t.view_as(t)
    if name == "triton":
        return soft_ce_triton(z, t, float(inv_temp))[0]
    if name == "cpu":
        return torch.ops.augcl.soft_ce(z, t, float(inv_temp))[0]
    return _SoftCEReference.apply(z, t, float(inv_temp))[0]


def swav_ce_backend(backend: Optional[str], z: torch.Tensor, t: torch.Tensor) -> str:
    """The backend ``swav_loss`` runs this op on for its ``backend`` argument (or context / AUGCL_BACKEND), whose
    first job is to force Sinkhorn's backend: the same when this op can run there, else the automatic choice
    (``cuda``: no CUDA C++ kernel for this op; ``triton`` where these kernels decline, e.g. an installed
    ``augcl.kernels`` older than kernels/soft_ce.py). ``cpu`` / ``reference`` are kept (a clear error if they
    cannot run, as for Sinkhorn)."""
    want = requested_backend(backend)
    if want in ("triton", "cuda") and SOFT_CE.declined(want, z, t):
        return "auto"
    return want
