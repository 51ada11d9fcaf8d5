"""Numeric conventions every layer of augcl shares: the accumulation dtype and the row L2 normalisation.

They sit below the references (the lowest layer of the package) so that the references, the op registrations and
the functional API all compute with the same rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FLOAT_DTYPES", "GPU_FLOAT_DTYPES", "IMAGE_DTYPES", "acc_dtype", "l2_normalize"]

#: Floating dtypes every op accepts (each backend declares which of them it runs, see augcl.dispatch).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Floating dtypes of the Triton kernels (float64 has no tensor-core path and is left to the CPU / reference).
GPU_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Image dtypes the mixing ops accept: the float dtypes and uint8 (decoded images).
IMAGE_DTYPES = FLOAT_DTYPES + (torch.uint8,)


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype augcl accumulates in for inputs of ``dtypes``: float64 if any of them is float64, else float32.

    fp16 / bf16 / uint8 inputs are accumulated in fp32 (their values are exact there, and sums of many of them
    are not exact in their own dtype); fp64 inputs keep fp64 so a float64 ``gradcheck`` sees float64 numerics."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` [N, D] scaled to unit L2 norm (``F.normalize(x, dim=1)``, its eps 1e-12), in x's dtype.

    fp16 / bf16 rows are normalised in fp32 and rounded once at the end: ``F.normalize`` computes the norm in the
    input's dtype, so in fp16 a row whose norm exceeds 65504 (fp16's largest value) gets an infinite norm and
    becomes 0 (a wrong loss, no error).
    The result is a unit vector, which every float dtype represents, so it is returned in x's dtype (the fused
    kernels then read half the bytes of an fp32 copy)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), dim=1).to(x.dtype)
    return F.normalize(x, dim=1)
