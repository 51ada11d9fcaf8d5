"""The Un-Mix ``mix_images`` op (SPEC §3): registration, autograd and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/unmix.py``  pure PyTorch (oracle, fallback): ``mix_images_reference``
* ``kernels/unmix.py``          Triton kernels -> ``augcl::mix_images_triton`` (triton_op)
* ``csrc/cpu/unmix.cpp``        C++ CPU kernel -> ``augcl::mix_images`` (CPU key)
* ``csrc/cuda/unmix.cu``        CUDA C++ kernel -> ``augcl::mix_images`` (CUDA key; compile-checked only, see there)
* this file: fake kernels, autograd (the backward is an op too: ``mix_images_backward``), :func:`mix_images_op`
* ``augcl/functional.py``: ``mix_images`` (validated), ``unmix``, ``unmix_params``

The mix is linear in x, so the backward needs no saved activations, only (lam, cutmix, boxes, partner, std).
Every backward is deterministic: grad_x[j] gathers its own term and then the cross terms of the rows i with
partner[i] == j in increasing i (inverse partner lists from a stable sort; no float atomics anywhere). This covers
any partner vector; for an involution (reverse pairing) each list has exactly one entry, i.e. a plain gather.
"""

from typing import Optional

import torch

from augcl import _extension
from augcl.dispatch import register_cpp_autograd, register_op, triton_import_reason, triton_kernels
from augcl.reference.unmix import (
    mix_acc_dtype,
    mix_images_backward_reference,
    mix_images_reference,
    mix_memory_format,
    mix_out_dtype,
)

MIX_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8)
MIX_OUTPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------- C++ ops
def _fake_mix_images(x, lam, cutmix, boxes, partner, mean, std, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device, memory_format=mix_memory_format(x))


def _fake_mix_images_backward(grad_out, lam, cutmix, boxes, partner, std, x_dtype):
    return torch.empty(grad_out.shape, dtype=x_dtype, device=grad_out.device,
                       memory_format=mix_memory_format(grad_out))


def _setup_context(ctx, inputs, output):
    x, lam, cutmix, boxes, partner, mean, std, out_dtype = inputs
    ctx.save_for_backward(lam, cutmix, boxes, partner, std)
    ctx.x_dtype = x.dtype
    ctx.x_floating = x.is_floating_point()


def _make_backward(backward_op):
    def _backward(ctx, grad_out):
        lam, cutmix, boxes, partner, std = ctx.saved_tensors
        grad_x = None
        if ctx.x_floating and ctx.needs_input_grad[0]:
            grad_x = backward_op(grad_out, lam, cutmix, boxes, partner, std, ctx.x_dtype)
        return grad_x, None, None, None, None, None, None, None

    return _backward


if _extension.LOADED and hasattr(torch.ops.augcl, "mix_images"):
    register_cpp_autograd("mix_images", _fake_mix_images, _fake_mix_images_backward, _make_backward, _setup_context)


# ------------------------------------------------------------------------------------------ Triton ops
@torch.library.triton_op("augcl::mix_images_triton", mutates_args=())
def mix_images_triton(
    x: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    mean: Optional[torch.Tensor],
    std: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Triton forward of ``mix_images`` (see augcl/reference/unmix.py for the math)."""
    return triton_kernels("unmix").mix_images_fwd(x, lam, cutmix, boxes, partner, mean, std, out_dtype)


@torch.library.triton_op("augcl::mix_images_triton_backward", mutates_args=())
def mix_images_triton_backward(
    grad_out: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    std: Optional[torch.Tensor],
    x_dtype: torch.dtype,
) -> torch.Tensor:
    """Triton backward of ``mix_images``: grad_x in ``x_dtype``."""
    return triton_kernels("unmix").mix_images_bwd(grad_out, lam, cutmix, boxes, partner, std, x_dtype)


mix_images_triton.register_autograd(
    _make_backward(lambda *args: mix_images_triton_backward(*args)), setup_context=_setup_context
)


# -------------------------------------------------------------------------------- reference backend
class _MixImagesReference(torch.autograd.Function):
    """The reference as a backend, with the explicit (deterministic on CPU) backward of the reference file."""

    @staticmethod
    def forward(x, lam, cutmix, boxes, partner, mean, std, out_dtype):
        return mix_images_reference(x, lam, cutmix, boxes, partner, mean, std, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.grad_format = mix_memory_format(output)  # here, not in backward: see mix_images_backward_reference

    @staticmethod
    def backward(ctx, grad_out):
        def backward_op(*args):
            return mix_images_backward_reference(*args, memory_format=ctx.grad_format)

        return _make_backward(backward_op)(ctx, grad_out)


# ------------------------------------------------------------------------------------ backend checks
# Each check takes (x, out_dtype); generic probes (augcl.info) pass other tensors there, which count as None.
def _resolve_out_dtype(x, out_dtype) -> torch.dtype:
    return mix_out_dtype(x.dtype, out_dtype if isinstance(out_dtype, torch.dtype) else None)


def _dtype_reason(x, out_dtype) -> Optional[str]:
    if x.dtype not in MIX_INPUT_DTYPES:
        return f"x dtype {x.dtype} is not supported"
    if out_dtype not in MIX_OUTPUT_DTYPES:
        return f"out_dtype {out_dtype} is not supported"
    return None


def _supports_reference(x, out_dtype=None, *_):
    return _dtype_reason(x, _resolve_out_dtype(x, out_dtype))


def _supports_cpu(x, out_dtype=None, *_):
    return _extension.kernel_reason("mix_images", "cpu", x) or _dtype_reason(x, _resolve_out_dtype(x, out_dtype))


def _supports_cuda(x, out_dtype=None, *_):
    return _extension.kernel_reason("mix_images", "cuda", x) or _dtype_reason(x, _resolve_out_dtype(x, out_dtype))


def _supports_triton(x, out_dtype=None, *_):
    reason = triton_import_reason("unmix")
    if reason is not None:
        return reason
    module = triton_kernels("unmix")
    odt = _resolve_out_dtype(x, out_dtype)
    reason = _dtype_reason(x, odt)
    return reason if reason is not None else module.supports(x, odt)


MIX_IMAGES = register_op(
    "mix_images",
    {
        "triton": _supports_triton,
        "cuda": _supports_cuda,
        "cpu": _supports_cpu,
        "reference": _supports_reference,
    },
)


def mix_images_op(
    x: torch.Tensor,
    lam: torch.Tensor,
    cutmix: torch.Tensor,
    boxes: torch.Tensor,
    partner: torch.Tensor,
    mean: Optional[torch.Tensor],
    std: Optional[torch.Tensor],
    out_dtype: Optional[torch.dtype],
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``mix_images`` on the selected backend, differentiable w.r.t. floating x. Inputs must already be
    validated and converted (augcl.functional.mix_images does it): lam [B] fp32, cutmix [B] bool, boxes [B, 4] and
    partner [B] int64, mean/std None or [C] tensors in the accumulation dtype, all on x's device."""
    odt = mix_out_dtype(x.dtype, out_dtype)
    name = MIX_IMAGES.select(x.device.type, x, odt, backend=backend)
    args = (x, lam, cutmix, boxes, partner, mean, std, odt)
    if name == "triton":
        return mix_images_triton(*args)
    if name in ("cpu", "cuda"):
        return torch.ops.augcl.mix_images(*args)
    return _MixImagesReference.apply(*args)


__all__ = ["MIX_IMAGES", "mix_images_op", "mix_acc_dtype", "mix_out_dtype", "mix_memory_format"]
