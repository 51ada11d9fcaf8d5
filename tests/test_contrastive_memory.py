"""CPU memory: forward + backward at 2N = 32768, D = 128 must raise peak memory by well under 1 GB.

The full similarity matrix alone would be 32768^2 * 4 B = 4.3 GB. The measurement runs in a fresh subprocess
and compares its peak RSS with a baseline subprocess that builds the same inputs and gradients only.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import require_backend

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch, augcl
    torch.manual_seed(0)
    n, d, run = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    z1 = torch.randn(n, d, requires_grad=True)
    z2 = torch.randn(n, d, requires_grad=True)
    # Gradients of the inputs are part of any training step: allocate them in the baseline too.
    z1.grad = torch.zeros_like(z1); z2.grad = torch.zeros_like(z2)
    if run:
        augcl.set_checks(False)
        loss = augcl.functional.nt_xent(z1, z2, 0.5, backend="cpu")
        loss.backward()
        assert torch.isfinite(loss)
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """
)


def _peak_kib(n, d, run):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(d), "1" if run else "0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"]


@pytest.mark.slow
def test_cpu_forward_backward_memory_2n_32768():
    require_backend("cpu")
    n, d = 16384, 128  # 2N = 32768 rows
    extra_mib = (_peak_kib(n, d, True) - _peak_kib(n, d, False)) / 1024
    print(f"peak extra memory, 2N=32768 D=128 fp32 forward+backward on the cpu backend: {extra_mib:.1f} MiB")
    assert extra_mib < 512, f"{extra_mib:.0f} MiB"
