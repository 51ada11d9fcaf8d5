"""Where the Triton kernel tests run, shared by tests/test_*_kernels.py.

Importing this module sets TRITON_INTERPRET=1 when no GPU is visible (as tests/conftest.py does; repeated here so
that a test file that imports this module first is right even without the conftest). A kernel module's build mode
(interpreted or compiled) is fixed when it is imported, so import this module before any Triton kernel module and
load the kernels with ``import_kernels``. On a GPU the kernels are compiled; run with TRITON_INTERPRET=0 when other
test files that set it unconditionally are collected first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_kernels(name: str, source_tree: bool = True):
    """The Triton kernel module ``augcl.kernels.<name>``, or None when triton or the module cannot be imported.

    ``source_tree``: fall back to ``kernels.<name>`` of the source tree (put on sys.path) when the installed
    package cannot be imported (before ``pip install``).
    """
    if source_tree and ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    try:
        return importlib.import_module(f"augcl.kernels.{name}")  # installed package
    except ImportError:
        pass
    if source_tree:
        try:
            return importlib.import_module(f"kernels.{name}")  # source tree, before `pip install`
        except ImportError:
            pass
    return None


def kernel_device(kernels, kernel: str) -> str:
    """``"cuda"`` if a GPU is visible and ``kernels`` (a module from ``import_kernels``, or None) were compiled for
    it, else ``"cpu"``: the kernels then run on CPU tensors through the interpreter. ``kernel`` names the kernel
    of that module whose build mode is checked (all of a module's kernels are built alike)."""
    if kernels is not None and torch.cuda.is_available() and not kernels.is_interpreted(getattr(kernels, kernel)):
        return "cuda"
    return "cpu"


def gpu_only_marker(on_gpu: bool):
    """A decorator: marker ``gpu`` and a skip unless ``on_gpu`` (the kernels run compiled on a CUDA GPU)."""

    def gpu_only(fn):
        fn = pytest.mark.skipif(not on_gpu, reason="compiled Triton on a CUDA GPU only (the interpreter has no "
                                "bf16 and is too slow for these shapes)")(fn)
        return pytest.mark.gpu(fn)

    return gpu_only


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device`` with the same strides (Tensor.to would make a non-dense view contiguous)."""
    if t.device.type == torch.device(device).type:
        return t
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
    out.copy_(t)
    return out


@pytest.fixture(autouse=True)
def no_tf32():
    """Exact fp32 dots on a GPU (the kernels follow torch's allow_tf32; the tests' tolerances assume "ieee");
    restored afterwards. Autouse in every test module that imports it."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old
