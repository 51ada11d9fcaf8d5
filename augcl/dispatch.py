"""One dispatcher for every augcl op: pick the fastest backend that can run, and say why the others declined.

Backends, fastest first for each device (``order_for``):

* CUDA tensors: ``triton`` (flash-style fused kernels), ``cuda`` (C++/CUDA, chunked cuBLAS + fused kernels),
  ``reference`` (pure PyTorch, row-chunked).
* CPU tensors: ``cpu`` (C++ kernels, BLAS tiles + OpenMP), ``reference``, ``triton`` (only under
  ``TRITON_INTERPRET=1``: a test vehicle, never chosen automatically before ``reference``).

Each op declares, per backend, what it supports as data (:class:`Backend`: devices, dtypes, the compiled or
Triton kernel it needs, op-specific limits); :meth:`OpBackends.declined` turns that into every reason a backend
declines, and a call no backend can run raises with every backend's reasons and the inputs' dtypes, shapes and
devices. The choice is overridden by, in priority order: the ``backend=`` argument of a functional op, the
innermost :func:`use_backend` context of the calling thread, and the ``AUGCL_BACKEND`` environment variable. A
forced backend that cannot run raises :class:`BackendUnavailableError` with its reasons instead of silently
falling back.

:func:`register_cpp_autograd` and :func:`first_order_only` hold the torch.library / autograd glue the op modules
(augcl/ops/) share, and :func:`triton_kernels` / :func:`triton_import_reason` their lazy import of the Triton
kernels.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from augcl import _extension

BACKENDS = ("triton", "cuda", "cpu", "reference")
_ALIASES = {None: "auto", "": "auto", "auto": "auto"}

SupportsFn = Callable[..., Optional[str]]


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run on these inputs (the message says why)."""


def _normalise(name: Optional[str], source: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name.lower()


# The stack of names set by use_backend(), one per thread: a context entered in one thread (say, a data-loading or
# evaluation thread) must not change the backend of another. torch.compile traces the attribute read (it reads the
# stack as it is when the function is traced: the choice is part of the compiled graph, as any Python-level
# decision is).
_context = threading.local()


def _stack() -> List[str]:
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    return stack


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Context manager forcing a backend (``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"`` or ``"auto"``)
    for every augcl op called inside it, in this thread, unless the call passes ``backend=`` itself."""
    stack = _stack()
    stack.append(_normalise(name, "use_backend"))
    try:
        yield
    finally:
        stack.pop()


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for by argument, this thread's context or ``AUGCL_BACKEND`` (in that order), or
    ``"auto"``."""
    if backend is not None:
        return _normalise(backend, "backend=")
    stack = getattr(_context, "stack", None)
    if stack:
        return stack[-1]
    return _normalise(os.environ.get("AUGCL_BACKEND") or None, "AUGCL_BACKEND")


def order_for(device_type: str) -> tuple:
    """Backends in the order automatic selection tries them on tensors of ``device_type``."""
    if device_type == "cuda":
        return ("triton", "cuda", "reference", "cpu")
    return ("cpu", "reference", "triton", "cuda")


# ------------------------------------------------------------------------------------ declared support
@dataclasses.dataclass(frozen=True)
class Backend:
    """What one backend of one op can run, declared once as data (the xformers pattern).

    Attributes:
        devices: device types of the tensors it runs on, or None for any device (the pure-PyTorch references,
            which also run on meta tensors). The ``triton`` backends list ``cpu`` too: there the kernels run only
            under ``TRITON_INTERPRET=1`` (their module says so when it declines).
        dtypes: dtypes of the op's first input it accepts.
        cpp_op: the kernel of ``augcl._C`` it needs (``cpu`` and ``cuda`` backends): its absence is a reason.
        triton_module: ``augcl.kernels.<triton_module>``, whose ``supports(*inputs[:triton_inputs])`` judges what
            only the kernels know (interpreter, GPU generation, dtypes of the other inputs).
        triton_inputs: how many of the op's dispatch inputs that ``supports`` takes (None: all of them).
        limits: what is specific to this op and backend: ``limits(*inputs) -> reason or None``.
    """

    devices: Optional[Tuple[str, ...]]
    dtypes: Tuple[torch.dtype, ...]
    cpp_op: Optional[str] = None
    triton_module: Optional[str] = None
    triton_inputs: Optional[int] = None
    limits: Optional[SupportsFn] = None


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _describe(inputs: Sequence) -> str:
    """The inputs as an error message shows them: dtype, shape and device of each tensor."""
    parts = []
    for t in inputs:
        if isinstance(t, torch.Tensor):
            parts.append(f"{str(t.dtype).replace('torch.', '')}{list(t.shape)} on {t.device}")
        elif t is not None:
            parts.append(repr(t))
    return ", ".join(parts)


class OpBackends:
    """The backends of one op, each a :class:`Backend` declaration; selection and its explanations."""

    def __init__(self, op_name: str, backends: Dict[str, Backend],
                 prefer: Optional[Callable[..., Optional[str]]] = None):
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"{op_name}: unknown backends {sorted(unknown)}")
        self.op_name = op_name
        self.backends = backends
        self.prefer = prefer

    def declined(self, name: str, *inputs) -> List[str]:
        """Every reason backend ``name`` declines ``inputs`` (empty: it can run). ``inputs[0]`` is the tensor
        whose device and dtype the declaration speaks of."""
        spec = self.backends.get(name)
        if spec is None:
            return [f"{self.op_name} has no {name} backend"]
        x = inputs[0]
        out = []
        if spec.devices is not None and x.device.type not in spec.devices:
            out.append(f"runs on {' / '.join(spec.devices)} tensors, these are on {x.device.type}")
        if x.dtype not in spec.dtypes:
            out.append(f"dtype {str(x.dtype).replace('torch.', '')} is not supported ({_dtype_names(spec.dtypes)})")
        if spec.cpp_op is not None:
            reason = _extension.kernel_reason(spec.cpp_op, name)
            if reason is not None:
                return out + [reason]
        if spec.triton_module is not None:
            reason = triton_import_reason(spec.triton_module)
            if reason is not None:
                return out + [reason]
        if out:  # the kernels' own checks assume a device and dtype they were declared for
            return out
        if spec.triton_module is not None:
            reason = triton_kernels(spec.triton_module).supports(*inputs[:spec.triton_inputs])
            if reason is not None:
                out.append(reason)
        if spec.limits is not None:
            reason = spec.limits(*inputs)
            if reason is not None:
                out.append(reason)
        return out

    def reasons(self, *inputs) -> Dict[str, Optional[str]]:
        """Every backend's verdict on these inputs: None (can run) or all its reasons, joined by "; "."""
        return {name: "; ".join(self.declined(name, *inputs)) or None for name in BACKENDS}

    def select(self, device_type: str, *inputs, backend: Optional[str] = None) -> str:
        """Name of the backend to run ``inputs`` on (see the module docstring for the rules)."""
        want = requested_backend(backend)
        if want != "auto":
            reasons = self.declined(want, *inputs)
            if reasons:
                raise BackendUnavailableError(f"{self.op_name}: backend {want!r} cannot run: {'; '.join(reasons)} "
                                              f"(inputs: {_describe(inputs)})")
            return want
        preferred = self.prefer(device_type, *inputs) if self.prefer is not None else None
        if preferred is not None and preferred in self.backends and not self.declined(preferred, *inputs):
            return preferred
        for name in order_for(device_type):
            if name not in self.backends:
                continue
            if name == "triton" and device_type != "cuda":
                continue  # the interpreter is for tests only; use it by forcing backend="triton"
            if not self.declined(name, *inputs):
                return name
        lines = [f"  {name}: {'; '.join(self.declined(name, *inputs))}" for name in BACKENDS]
        raise BackendUnavailableError(f"{self.op_name}: no backend can run these inputs (inputs: "
                                      f"{_describe(inputs)}):\n" + "\n".join(lines))


REGISTRY: Dict[str, OpBackends] = {}


def register_op(op_name: str, backends: Dict[str, Backend],
                prefer: Optional[Callable[..., Optional[str]]] = None) -> OpBackends:
    """Declare the backends of ``op_name`` (see :class:`Backend`); the registry is what ``augcl.info`` lists.

    ``prefer(device_type, *inputs) -> name or None``: a backend automatic selection tries before the device's
    order (an op's routing rule, e.g. a performance switch); it must be traceable by torch.compile."""
    REGISTRY[op_name] = OpBackends(op_name, backends, prefer)
    return REGISTRY[op_name]


@torch.compiler.assume_constant_result
def switch(name: str) -> str:
    """The lower-cased value of the environment switch ``name`` ("" when unset): a constant for torch.compile,
    which reads it once while tracing (a compiled graph keeps the routing it was traced with)."""
    return os.environ.get(name, "").strip().lower()


# --------------------------------------------------------------------------------- torch.library glue
def register_cpp_autograd(op: str, fake: Callable, fake_backward: Callable, make_backward: Callable,
                          setup_context: Callable) -> None:
    """torch.library registrations of a C++ op of augcl._C that has a backward op (call only when both are built):
    the fake kernels of ``augcl::<op>`` and ``augcl::<op>_backward``, and the autograd of ``augcl::<op>``:
    ``make_backward(torch.ops.augcl.<op>_backward)`` with ``setup_context``. An op module passes the same
    ``make_backward`` / ``setup_context`` to its Triton op and its reference backend: one backward formula."""
    torch.library.register_fake(f"augcl::{op}")(fake)
    torch.library.register_fake(f"augcl::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"augcl::{op}", make_backward(getattr(torch.ops.augcl, f"{op}_backward")),
                                    setup_context=setup_context)


class _FirstOrderOnly(torch.autograd.Function):
    """Passes a gradient through unchanged and raises if anything differentiates it again."""

    @staticmethod
    def forward(ctx, op_name: str, grad: torch.Tensor, *links: torch.Tensor) -> torch.Tensor:
        ctx.op_name = op_name
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            f"augcl: double backward through the {ctx.op_name} op is not supported (its backward is a fused kernel "
            f"without a derivative of its own). Gradient penalties and meta-learning need second-order gradients: "
            f"compute this loss with plain PyTorch there, or detach the inputs that do not need them.")


def first_order_only(op_name: str, backward: Callable) -> Callable:
    """Wrap the backward ``backward(ctx, *grads) -> tuple`` of an op whose backward is not itself differentiable.

    Under ``create_graph=True`` (autograd then runs backwards with grad mode on) the backward runs without
    recording (its out= kernels cannot be recorded), and each gradient it returns is tied, through
    :class:`_FirstOrderOnly`, to the saved inputs and incoming gradients that require grad, so that
    differentiating it again raises a clear error instead of silently returning zeros or None."""
    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if not torch.is_grad_enabled():
            return backward(ctx, *grads)
        links = [t for t in tuple(ctx.saved_tensors) + grads if isinstance(t, torch.Tensor) and t.requires_grad]
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not links:
            return out
        return tuple(_FirstOrderOnly.apply(op_name, g, *links) if isinstance(g, torch.Tensor) else g for g in out)

    return wrapped


# ------------------------------------------------------------------------------------- Triton kernels
# The kernel modules imported so far, by name. A plain dict (not an lru_cache around importlib): torch.compile
# traces a lookup in it, while it cannot trace an import (Dynamo marks importlib.import_module as skipped, a graph
# break on every op). The import itself happens in triton_import_reason, which the compiler calls once and keeps
# as a constant.
_TRITON_MODULES: Dict[str, object] = {}


def triton_kernels(name: str):
    """The Triton kernel module ``augcl.kernels.<name>``, imported on first use (not at ``import augcl``), so
    TRITON_INTERPRET can still be set after ``import augcl``. Raises ImportError without triton."""
    module = _TRITON_MODULES.get(name)
    if module is None:
        module = _TRITON_MODULES[name] = importlib.import_module(f"augcl.kernels.{name}")
    return module


@torch.compiler.assume_constant_result
def triton_import_reason(name: str) -> Optional[str]:
    """None if :func:`triton_kernels` can import ``augcl.kernels.<name>``, else why not. A constant for
    torch.compile (it imports the module while tracing, so the :func:`triton_kernels` lookup after it is traced
    as a dict read)."""
    try:
        triton_kernels(name)
    except ImportError as exc:
        return f"triton is not available ({exc})"
    return None
