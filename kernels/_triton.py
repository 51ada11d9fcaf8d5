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

__all__ = ["HAS_TRITON", "triton", "tl", "is_interpreted", "device_reason", "launch"]


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was built for the triton interpreter (decided when its module was imported)."""
    return HAS_TRITON and type(kernel).__name__ == "InterpretedFunction"


if HAS_TRITON:

    @triton.jit
    def _interpreter_probe_kernel(OUT, n):
        # The construct the kernels rely on: a loop bound computed with tl.minimum from runtime scalars.
        acc = 0
        for i in range(0, tl.minimum(n, 4)):
            acc += i
        tl.store(OUT, acc)


_INTERPRETER_PROBLEM: Optional[str] = None
_INTERPRETER_PROBED = False


def interpreter_problem() -> Optional[str]:
    """None if the triton interpreter works in this environment, else why not (probed once per process).

    Known case: triton <= 3.6's interpreter with numpy >= 2.4, where converting a 1-element array to an index
    became an error ("only 0-dimensional arrays can be converted to Python scalars"): every kernel fails.
    The backend then declines with this reason instead of failing inside a launch.
    """
    global _INTERPRETER_PROBLEM, _INTERPRETER_PROBED
    if not HAS_TRITON:
        return None  # nothing to probe; callers already report "triton is not installed"
    if not _INTERPRETER_PROBED:
        _INTERPRETER_PROBED = True
        try:
            out = torch.zeros(1, dtype=torch.int32)
            _interpreter_probe_kernel[(1,)](out, 3)
            if int(out.item()) != 3:
                raise RuntimeError(f"probe kernel returned {int(out.item())}, expected 3")
        except Exception as exc:  # noqa: BLE001 - any failure means the interpreter cannot run the kernels
            import numpy

            _INTERPRETER_PROBLEM = (
                f"the triton {triton.__version__} interpreter fails here with numpy {numpy.__version__} "
                f"({type(exc).__name__}: {str(exc)[:120]}); use numpy < 2.4 or a newer triton (3.8 works)"
            )
    return _INTERPRETER_PROBLEM


def device_reason(kernel, device: torch.device, dtype: torch.dtype, module: str) -> Optional[str]:
    """None if the kernels of ``module`` (built like ``kernel``) can run on ``device``/``dtype``, else why not.

    The dtype must already be one the kernels support; this only judges device, interpreter and GPU generation.
    """
    if is_interpreted(kernel):
        if device.type not in ("cpu", "cuda"):
            return f"tensors on {device.type} are not supported by the triton interpreter"
        if dtype == torch.bfloat16:
            return "bfloat16 is not supported by the triton interpreter"
        return interpreter_problem()
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


def launch(kernel, grid):
    """``kernel[grid]`` through ``torch.library.wrap_triton``, so a launcher can live inside a
    ``torch.library.triton_op`` and be traced by torch.compile (eager calls go straight to the kernel).

    Under TRITON_INTERPRET=1 ``@triton.jit`` builds an ``InterpretedFunction``, which carries none of the JIT
    metadata tracing needs: recent torch passes it through unwrapped, but torch <= 2.11 (the GPU machine's)
    raises "wrap_triton only works on functions annotated with triton.jit". Interpreted kernels are therefore
    launched directly, the same on every torch.
    """
    if is_interpreted(kernel):
        return kernel[grid]
    return torch.library.wrap_triton(kernel)[grid]
