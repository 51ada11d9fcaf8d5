"""The Triton import shared by every kernel file.

Without triton, minimal stand-ins keep the kernel modules importable (so each ``supports`` can say why it cannot
run); the kernels are then plain Python functions that are never launched.
"""
import os
from types import SimpleNamespace
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=lambda value=None: value)

__all__ = ["HAS_TRITON", "triton", "tl", "is_interpreted", "device_reason"]


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was built for the triton interpreter (decided when its module was imported)."""
    return HAS_TRITON and type(kernel).__name__ == "InterpretedFunction"


def device_reason(kernel, device: torch.device, dtype: torch.dtype, module: str) -> Optional[str]:
    """None if the kernels of ``module`` (built like ``kernel``) can run on ``device``/``dtype``, else why not.

    The dtype must already be one the kernels support; this only judges device, interpreter and GPU generation.
    """
    if is_interpreted(kernel):
        if device.type not in ("cpu", "cuda"):
            return f"tensors on {device.type} are not supported by the triton interpreter"
        if dtype == torch.bfloat16:
            return "bfloat16 is not supported by the triton interpreter"
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return f"tensors are on cpu and TRITON_INTERPRET was set only after {module} was imported"
        return "tensors are on cpu and TRITON_INTERPRET is not set"
    if device.type != "cuda":
        return f"tensors on {device.type} are not supported by the triton kernels"
    if torch.version.hip is None:
        major, _minor = torch.cuda.get_device_capability(device)
        if major < 8 and dtype == torch.bfloat16:
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
    return None
