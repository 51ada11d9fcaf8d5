"""What every kernel file shares: the Triton import, small device helpers (index blocks, masked tile loads and
stores, the online logsumexp's start value), launch-side helpers (power-of-two widths, dot precision, SM count)
and the capability checks.

Without triton, minimal stand-ins keep the kernel modules importable (so each ``supports`` can say why it cannot
run); the kernels are then plain Python functions that are never launched.
"""
import functools
import os
from types import SimpleNamespace
from typing import Optional, Sequence, Tuple

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=lambda value=None: value)

__all__ = [
    "HAS_TRITON", "triton", "tl", "NEG_BIG", "block_range", "load_tile", "store_tile", "next_pow2", "dot_width",
    "input_precision", "tf32_allowed", "fp32_precision_override", "FP32_PRECISION_ENV", "FP32_PRECISIONS", "num_sms",
    "is_interpreted", "dtype_reason", "device_reason", "launch", "env_choice",
]

# ----------------------------------------------------------------------------------------------------------------
# Device helpers (inlined into the kernels that call them)
# ----------------------------------------------------------------------------------------------------------------

# Finite stand-in for -inf as the start of an online logsumexp's running max: with -inf, a row whose first tiles
# are all masked would compute exp(-inf - -inf) = exp(nan). With a finite value the rescale factor is exp(0) = 1,
# and masked cells are zeroed with tl.where after the exponential, so they add exactly 0. Real logits always
# exceed it. Module-level values read inside @triton.jit code must be tl.constexpr.
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def block_range(start, BLOCK: tl.constexpr, n):
    """``(offs, ok, offs64)`` of the BLOCK indices ``start, start + 1, ...``: ``ok = offs < n``, and ``offs64`` the
    same indices as int64 for addressing (``offs * stride`` can overflow int32 on large tensors).

    Give each unpacked value a name of its own, also the unused ones (dropped by the compiler): a ``_`` bound
    before a loop and again inside it with another block size is a loop-carried variable changing type, which
    the compiler rejects (the interpreter does not)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < n, offs.to(tl.int64)


@triton.jit
def load_tile(PTR, rows, row_ok, cols, col_ok, stride_r, stride_c):
    """The tile ``PTR[rows, cols]`` ([len(rows), len(cols)], PTR's dtype) of a 2-D tensor with strides
    (stride_r, stride_c); 0 where a row or a column is out of range. Swapping the roles of the two index vectors
    and strides loads the transposed tile straight from memory (no register transpose)."""
    return tl.load(PTR + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def store_tile(PTR, rows, row_ok, cols, col_ok, stride_r, stride_c, value):
    """``PTR[rows, cols] = value`` where the row and the column are in range (see :func:`load_tile`)."""
    tl.store(PTR + rows[:, None] * stride_r + cols[None, :] * stride_c, value, mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Launch-side helpers
# ----------------------------------------------------------------------------------------------------------------


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def dot_width(n: int) -> int:
    """A block width that covers n and that tl.dot accepts: a power of two, at least 16."""
    return max(16, next_pow2(n))


def tf32_allowed() -> bool:
    """Whether torch allows TF32 for fp32 CUDA matmuls.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("ieee", "tf32", or "none" = inherit, resolved
    by torch before it is returned); reading the legacy ``allow_tf32`` there raises ("mix of the legacy and new
    APIs") as soon as a user has set the new one, so the new API is read whenever it exists. Setting the legacy
    flag also sets the new one, so either way of setting it is honoured."""
    matmul = torch.backends.cuda.matmul
    try:
        precision = matmul.fp32_precision
    except AttributeError:  # torch < 2.9: only the legacy flag exists
        return bool(matmul.allow_tf32)
    return precision == "tf32"


# Candidates for fp32 operands that the first GPU run times side by side (benchmarks/gpu_session.sh): "tf32x3"
# splits each fp32 operand into a TF32 high part and a TF32 remainder and sums three tensor-core products
# (near-fp32 accuracy at tensor-core speed). Unset or "auto": torch's rule (tf32_allowed).
FP32_PRECISION_ENV = "AUGCL_TRITON_FP32"
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")


def fp32_precision_override() -> Optional[str]:
    """The dot precision forced for fp32 operands by ``AUGCL_TRITON_FP32`` (one of :data:`FP32_PRECISIONS`), or
    None (unset / "auto": follow torch). Read at every launch, so a benchmark can switch it between runs."""
    value = os.environ.get(FP32_PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in FP32_PRECISIONS:
        raise ValueError(f"{FP32_PRECISION_ENV}={value!r}: expected auto or one of {FP32_PRECISIONS}")
    return value


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    """The value of the switch ``name`` (an environment variable, read at every launch so that one benchmark
    process can time the candidates side by side), one of ``choices``; ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {tuple(choices)}")
    return value


def input_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: for fp32 operands ``AUGCL_TRITON_FP32`` when set, else tf32 where torch allows
    TF32 matmuls (:func:`tf32_allowed`) and exact ("ieee") otherwise; "ieee" for fp16/bf16 (where it changes
    nothing). The interpreter computes every dot in full fp32 whatever this says."""
    if dtype != torch.float32:
        return "ieee"
    forced = fp32_precision_override()
    if forced is not None:
        return forced
    return "tf32" if tf32_allowed() else "ieee"


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device, elsewhere: int) -> int:
    """The multiprocessor count of a CUDA device; ``elsewhere`` for CPU tensors under the interpreter, where it
    only decides how finely a launcher splits its sweeps."""
    if device.type != "cuda":
        return elsewhere
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


# ----------------------------------------------------------------------------------------------------------------
# Capability checks
# ----------------------------------------------------------------------------------------------------------------


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


def dtype_reason(*checks: Tuple[str, torch.dtype, Sequence[torch.dtype]]) -> Optional[str]:
    """None if every ``(what, dtype, supported)`` check has a supported dtype, else why not: float64 first (the
    C++ kernels and the reference have it), then the first dtype that is not among its ``supported`` ones, named
    ``what`` (e.g. "anchors dtype")."""
    if any(dtype == torch.float64 for _what, dtype, _supported in checks):
        return "float64 is not supported by the triton kernels"
    for what, dtype, supported in checks:
        if dtype not in supported:
            names = ", ".join(str(d).replace("torch.", "") for d in supported)
            return f"{what} {dtype} is not supported by the triton kernels ({names})"
    return None


def device_reason(interpreted: bool, device: torch.device, dtype: torch.dtype, module: str) -> Optional[str]:
    """None if the kernels of ``module`` (built for the interpreter when ``interpreted``, see
    :func:`is_interpreted`) can run on ``device``/``dtype``, else why not.

    The dtype must already be one the kernels support; this only judges device, interpreter and GPU generation.
    Traceable by torch.compile: everything that asks the environment (the interpreter probe, TRITON_INTERPRET,
    the GPU's compute capability) is in :func:`_environment_reason`, a constant for the compiler."""
    return _environment_reason(bool(interpreted), device.type, device.index, dtype == torch.bfloat16, module)


@torch.compiler.assume_constant_result
def _environment_reason(interpreted: bool, device_type: str, index: Optional[int], bf16: bool,
                        module: str) -> Optional[str]:
    """:func:`device_reason` from plain values. torch.compile calls it once while tracing and keeps the answer as
    a constant, instead of tracing an interpreter launch, an environment read and a CUDA query (which would break
    the graph on every op); the answer cannot change within a process."""
    if interpreted:
        if device_type not in ("cpu", "cuda"):
            return f"tensors on {device_type} are not supported by the triton interpreter"
        if bf16:
            return "bfloat16 is not supported by the triton interpreter"
        return interpreter_problem()
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return f"tensors are on cpu and TRITON_INTERPRET was set only after {module} was imported"
        return "tensors are on cpu and TRITON_INTERPRET is not set"
    if device_type != "cuda":
        return f"tensors on {device_type} are not supported by the triton kernels"
    if torch.version.hip is None and bf16:
        major, _minor = _capability(index if index is not None else torch.cuda.current_device())
        if major < 8:
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
    return None


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def launch(kernel, grid):
    """``kernel[grid]`` through ``torch.library.wrap_triton``, so a launcher can live inside a
    ``torch.library.triton_op`` and be traced by torch.compile (eager calls go straight to the kernel), launched
    on the device of its first tensor argument.

    Triton launches on the *current* CUDA device and its current stream: without the guard, tensors on cuda:1
    while cuda:0 is current would be read by a kernel running on cuda:0 (an illegal address, or silently wrong
    on peer-mapped memory). On CPU tensors (the interpreter) there is nothing to guard.

    Under TRITON_INTERPRET=1 ``@triton.jit`` builds an ``InterpretedFunction``, which carries none of the JIT
    metadata tracing needs: recent torch passes it through unwrapped, but torch <= 2.11 (the GPU machine's)
    raises "wrap_triton only works on functions annotated with triton.jit". Interpreted kernels are therefore
    launched directly, the same on every torch.
    """
    interpreted = is_interpreted(kernel)
    run = kernel[grid] if interpreted else torch.library.wrap_triton(kernel)[grid]

    def on_device(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if interpreted and tensors and _being_traced(kernel, tensors):
            # torch.compile's shape pass (fake tensors) through a triton_op: the interpreter reads real storages,
            # and the outputs, allocated by the launcher, already have their shapes.
            return None
        device = tensors[0].device if tensors else None
        if device is None or device.type != "cuda":
            return run(*args, **kwargs)
        with torch.cuda.device(device):
            return run(*args, **kwargs)

    return on_device


def _being_traced(kernel, tensors) -> bool:
    """Whether an interpreted ``kernel`` is being launched on tensors without data: True for meta or fake tensors
    (torch.compile's shape propagation, where skipping the launch is right); raises under functionalization, i.e.
    when AOTAutograd (aot_eager, inductor) decomposes the triton_op into a graph: an interpreted kernel is plain
    Python, which such a graph cannot hold, and leaving it out would return uninitialised outputs."""
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    if any(isinstance(t, FunctionalTensor) for t in tensors):
        raise RuntimeError(
            f"augcl: the Triton kernel {getattr(kernel, '__name__', kernel)} runs under the triton interpreter "
            f"(TRITON_INTERPRET=1), which torch.compile cannot lower into a graph; trace it with "
            f"torch.compile(backend='eager'), or run on a GPU")
    return any(t.is_meta or is_fake(t) for t in tensors)
