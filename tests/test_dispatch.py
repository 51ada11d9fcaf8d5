"""The dispatcher: precedence of argument > context > AUGCL_BACKEND, automatic order, reasons, augcl.info."""
import subprocess
import sys

import pytest
import torch

import augcl
from augcl import dispatch
from augcl.dispatch import BackendUnavailableError, requested_backend, use_backend
from conftest import backend_reason

OP = dispatch.REGISTRY["contrastive"]


def test_precedence(monkeypatch):
    monkeypatch.setenv("AUGCL_BACKEND", "reference")
    assert requested_backend() == "reference"
    with use_backend("cpu"):
        assert requested_backend() == "cpu"
        assert requested_backend("triton") == "triton"
        with use_backend("auto"):
            assert requested_backend() == "auto"
        assert requested_backend() == "cpu"
    monkeypatch.setenv("AUGCL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="AUGCL_BACKEND: unknown backend 'bogus'"):
        requested_backend()


def test_automatic_choice_on_cpu():
    a = torch.randn(3, 4)
    expected = "cpu" if backend_reason("cpu") is None else "reference"
    assert OP.select("cpu", a, a) == expected
    # The Triton interpreter is never chosen automatically, even when it could run.
    assert OP.select("cpu", a, a) != "triton"


def test_reasons_cover_every_backend():
    a = torch.randn(3, 4)
    reasons = OP.reasons(a, a)
    assert set(reasons) == set(dispatch.BACKENDS)
    assert reasons["reference"] is None
    assert isinstance(reasons["cuda"], str) and reasons["cuda"]  # CPU tensors: cuda always declines, with a reason


def test_forced_backend_runs_and_context_applies():
    z1, z2 = torch.randn(5, 6), torch.randn(5, 6)
    ref = augcl.functional.nt_xent(z1, z2, backend="reference")
    with use_backend("reference"):
        torch.testing.assert_close(augcl.functional.nt_xent(z1, z2), ref)
    with use_backend("cuda"):
        with pytest.raises(BackendUnavailableError):
            augcl.functional.nt_xent(z1, z2)


def test_info_module_runs():
    out = subprocess.run([sys.executable, "-m", "augcl.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "op contrastive:" in out.stdout
    assert "reference can run" in out.stdout
