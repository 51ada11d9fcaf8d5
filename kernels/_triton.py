"""The Triton import shared by every kernel file.

Without triton, minimal stand-ins keep the kernel modules importable (so each ``supports`` can say why it cannot
run); the kernels are then plain Python functions that are never launched.
"""
from types import SimpleNamespace

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=lambda value=None: value)

__all__ = ["HAS_TRITON", "triton", "tl"]
