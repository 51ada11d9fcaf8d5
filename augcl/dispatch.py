"""One dispatcher for every augcl op: pick the fastest backend that can run, and say why the others declined.

Backends, fastest first for each device (``order_for``):

* CUDA tensors: ``triton`` (flash-style fused kernels), ``cuda`` (C++/CUDA, chunked cuBLAS + fused kernels),
  ``reference`` (pure PyTorch, row-chunked).
* CPU tensors: ``cpu`` (C++ kernels, BLAS tiles + OpenMP), ``reference``, ``triton`` (only under
  ``TRITON_INTERPRET=1``: a test vehicle, never chosen automatically before ``reference``).

Each op declares, per backend, a ``supports(*inputs) -> reason | None`` check. The choice is overridden by,
in priority order: the ``backend=`` argument of a functional op, the innermost :func:`use_backend` context,
and the ``AUGCL_BACKEND`` environment variable. A forced backend that cannot run raises
:class:`BackendUnavailableError` with its reason instead of silently falling back (STYLE principle 4).

:func:`register_cpp_autograd` holds the torch.library glue the op modules (augcl/ops/) share, and
:func:`triton_kernels` / :func:`triton_import_reason` their lazy import of the Triton kernels.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable, Dict, Iterator, List, Optional

BACKENDS = ("triton", "cuda", "cpu", "reference")
_ALIASES = {None: "auto", "": "auto", "auto": "auto"}

# A stack of names set by use_backend(); plain module state so torch.compile can trace the lookup.
_context_stack: List[str] = []

SupportsFn = Callable[..., Optional[str]]


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run on these inputs (the message says why)."""


def _normalise(name: Optional[str], source: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name.lower()


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Context manager forcing a backend (``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"`` or ``"auto"``)
    for every augcl op called inside it, unless the call passes ``backend=`` itself."""
    _context_stack.append(_normalise(name, "use_backend"))
    try:
        yield
    finally:
        _context_stack.pop()


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for by argument, context or ``AUGCL_BACKEND`` (in that order), or ``"auto"``."""
    if backend is not None:
        return _normalise(backend, "backend=")
    if _context_stack:
        return _context_stack[-1]
    return _normalise(os.environ.get("AUGCL_BACKEND") or None, "AUGCL_BACKEND")


def order_for(device_type: str) -> tuple:
    """Backends in the order automatic selection tries them on tensors of ``device_type``."""
    if device_type == "cuda":
        return ("triton", "cuda", "reference", "cpu")
    return ("cpu", "reference", "triton", "cuda")


class OpBackends:
    """The backends of one op: ``supports[name](*inputs)`` returns None when ``name`` can run, else why not."""

    def __init__(self, op_name: str, supports: Dict[str, SupportsFn]):
        unknown = set(supports) - set(BACKENDS)
        if unknown:
            raise ValueError(f"{op_name}: unknown backends {sorted(unknown)}")
        self.op_name = op_name
        self.supports = supports

    def reasons(self, *inputs) -> Dict[str, Optional[str]]:
        """Every backend's verdict on these inputs: None (can run) or the reason it declines."""
        out = {}
        for name in BACKENDS:
            fn = self.supports.get(name)
            out[name] = f"{self.op_name} has no {name} backend" if fn is None else fn(*inputs)
        return out

    def select(self, device_type: str, *inputs, backend: Optional[str] = None) -> str:
        """Name of the backend to run ``inputs`` on (see the module docstring for the rules)."""
        want = requested_backend(backend)
        if want != "auto":
            fn = self.supports.get(want)
            reason = f"{self.op_name} has no {want} backend" if fn is None else fn(*inputs)
            if reason is not None:
                raise BackendUnavailableError(f"{self.op_name}: backend {want!r} cannot run: {reason}")
            return want
        declined = []
        for name in order_for(device_type):
            fn = self.supports.get(name)
            if fn is None:
                continue
            if name == "triton" and device_type != "cuda":
                continue  # the interpreter is for tests only; use it by forcing backend="triton"
            reason = fn(*inputs)
            if reason is None:
                return name
            declined.append(f"{name}: {reason}")
        raise BackendUnavailableError(f"{self.op_name}: no backend can run these inputs ({'; '.join(declined)})")


REGISTRY: Dict[str, OpBackends] = {}


def register_op(op_name: str, supports: Dict[str, SupportsFn]) -> OpBackends:
    REGISTRY[op_name] = OpBackends(op_name, supports)
    return REGISTRY[op_name]


# --------------------------------------------------------------------------------- torch.library glue
def register_cpp_autograd(op: str, fake: Callable, fake_backward: Callable, make_backward: Callable,
                          setup_context: Callable) -> None:
    """torch.library registrations of a C++ op of augcl._C that has a backward op (call only when both are built):
    the fake kernels of ``augcl::<op>`` and ``augcl::<op>_backward``, and the autograd of ``augcl::<op>``:
    ``make_backward(torch.ops.augcl.<op>_backward)`` with ``setup_context``. An op module passes the same
    ``make_backward`` / ``setup_context`` to its Triton op and its reference backend: one backward formula."""
    import torch

    torch.library.register_fake(f"augcl::{op}")(fake)
    torch.library.register_fake(f"augcl::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"augcl::{op}", make_backward(getattr(torch.ops.augcl, f"{op}_backward")),
                                    setup_context=setup_context)


@functools.lru_cache(maxsize=None)
def triton_kernels(name: str):
    """The Triton kernel module ``augcl.kernels.<name>``, imported on first use (not at ``import augcl``), so
    TRITON_INTERPRET can still be set after ``import augcl``. Raises ImportError without triton."""
    return importlib.import_module(f"augcl.kernels.{name}")


def triton_import_reason(name: str) -> Optional[str]:
    """None if :func:`triton_kernels` can import ``augcl.kernels.<name>``, else why not: the first check of every
    op's ``triton`` backend."""
    try:
        triton_kernels(name)
    except ImportError as exc:
        return f"triton is not available ({exc})"
    return None
