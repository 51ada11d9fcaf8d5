"""Loads the compiled extension ``augcl._C`` once and records why it could not be loaded.

The package works without it (reference and Triton backends); the dispatcher reads ``LOAD_ERROR`` to say
why the ``cpu`` and ``cuda`` backends declined.
"""
from __future__ import annotations

import torch  # (libtorch must be loaded before our library's symbols resolve)

import importlib
from typing import Optional

try:
    _C = importlib.import_module("augcl._C")

    LOADED = True
    LOAD_ERROR: str | None = None
    WITH_CUDA = bool(getattr(_C, "with_cuda", 0))
    WITH_OPENMP = bool(getattr(_C, "with_openmp", 0))
    LIBRARY_PATH: str | None = getattr(_C, "__file__", None)
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOADED = False
    LOAD_ERROR = f"augcl._C could not be imported ({exc}); reinstall with `pip install --no-build-isolation -e .`"
    WITH_CUDA = False
    WITH_OPENMP = False
    LIBRARY_PATH = None


def kernel_reason(op: str, device: str, *tensors: torch.Tensor) -> Optional[str]:
    """None if augcl._C holds the ``device`` ("cpu": C++ CPU, "cuda": CUDA C++) kernel of ``op`` and ``tensors``
    are all on that device, else why not (the first tensor's device is named). The check every op's ``cpu`` and
    ``cuda`` backends start with; their dtype checks follow it."""
    if not LOADED:
        return LOAD_ERROR
    if not hasattr(torch.ops.augcl, op):
        return f"augcl._C was built without the {op} kernel (rebuild the extension)"
    if device == "cuda" and not WITH_CUDA:
        return ("augcl._C was built without CUDA (at build time no GPU was visible and neither AUGCL_CUDA=1 nor "
                "TORCH_CUDA_ARCH_LIST was set, or no CUDA toolkit / AUGCL_CUDA=0); rebuild with AUGCL_CUDA=1")
    if any(t.device.type != device for t in tensors):
        kind = "C++ CPU" if device == "cpu" else "CUDA"
        return f"the {kind} kernel runs on {device} tensors, these are on {tensors[0].device.type}"
    return None
