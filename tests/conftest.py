"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is imported, so it is set here, first: with no GPU,
every Triton kernel runs on the CPU through the interpreter (on small shapes; no bf16 there).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import augcl  # noqa: E402
from augcl.dispatch import REGISTRY  # noqa: E402


def backend_reason(backend: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """None if ``backend`` can run the contrastive op on (device, dtype) here, else the dispatcher's reason."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    a = torch.zeros(2, 4, device=device, dtype=dtype)
    return REGISTRY["contrastive"].reasons(a, a)[backend]


def require_backend(backend: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    reason = backend_reason(backend, device, dtype)
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot run on {device}/{dtype}: {reason}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
