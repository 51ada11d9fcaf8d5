"""The Un-Mix ``mix_images`` op: registration, autograd and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/unmix.py``  pure PyTorch (oracle, fallback): ``mix_images_reference``
* ``kernels/unmix.py``          Triton kernels -> ``augcl::mix_images_triton`` (triton_op)
* ``csrc/cpu/unmix.cpp``        C++ CPU kernel -> ``augcl::mix_images`` (CPU key)
* ``csrc/cuda/unmix.cu``        CUDA C++ kernel -> ``augcl::mix_images`` (CUDA key; compile-checked only, see there)
* this file: fake kernels, autograd (the backward is an op too: ``mix_images_backward``), :func:`mix_images_op`
* ``augcl/functional/unmix.py``: ``mix_images`` (validated), ``unmix``, ``unmix_params``

The mix is linear in x, so the backward needs no saved activations, only (lam, cutmix, boxes, partner, std).
Every backward is deterministic: grad_x[j] gathers its own term and then the cross terms of the rows i with
partner[i] == j in increasing i (inverse partner lists from a stable sort; no float atomics anywhere). This covers
any partner vector; for an involution (reverse pairing) each list has exactly one entry, i.e. a plain gather.
"""

from typing import Optional

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES, IMAGE_DTYPES
from augcl.dispatch import Backend, first_order_only, register_cpp_autograd, register_op, triton_kernels
from augcl.reference.unmix import (
    mix_images_backward_reference,
    mix_images_reference,
    mix_memory_format,
    mix_out_dtype,
)


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

    return first_order_only("mix_images", _backward)


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


# ------------------------------------------------------------------------------------------- backends
def _out_dtype_reason(x, out_dtype) -> Optional[str]:
    # the C++ kernels and the reference write any float dtype; the Triton kernels judge theirs (augcl.kernels.unmix)
    if out_dtype not in FLOAT_DTYPES:
        return f"out_dtype {out_dtype} is not supported"
    return None


MIX_IMAGES = register_op(
    "mix_images",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES + (torch.uint8,), triton_module="unmix"),
        "cuda": Backend(("cuda",), IMAGE_DTYPES, cpp_op="mix_images", limits=_out_dtype_reason),
        "cpu": Backend(("cpu",), IMAGE_DTYPES, cpp_op="mix_images", limits=_out_dtype_reason),
        "reference": Backend(None, IMAGE_DTYPES, limits=_out_dtype_reason),
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


__all__ = ["MIX_IMAGES", "mix_images_op", "mix_out_dtype", "mix_memory_format"]
