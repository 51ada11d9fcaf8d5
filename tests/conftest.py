"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is imported, so it is set here, first: with no GPU,
every Triton kernel runs on the CPU through the interpreter (on small shapes; no bf16 there).
"""
import os

# On a small shared CPU (CI has 2 cores) OpenMP's default spin-wait makes torch's parallel regions fight the
# other threads of the same test (up to 10x slower on tiny ops); must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

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


# Test files that launch Triton kernels directly (not through the dispatcher, whose triton backend declines by
# itself when the interpreter is broken).
_DIRECT_KERNEL_FILES = ("test_contrastive_triton.py", "test_hallucinator_kernels.py", "test_swav_sinkhorn_kernels.py",
                        "test_unmix_kernels.py", "test_swav_soft_ce.py")


def pytest_collection_modifyitems(config, items):
    """Where the Triton interpreter cannot run here (triton <= 3.6 with numpy >= 2.4, see
    augcl.kernels._triton.interpreter_problem), the direct kernel tests on the CPU skip with that reason instead
    of failing inside every launch."""
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return
    try:
        from augcl.kernels._triton import interpreter_problem
    except ImportError:
        return
    problem = interpreter_problem()
    if problem is None:
        return
    mark = pytest.mark.skip(reason=problem)
    for item in items:
        if os.path.basename(str(item.fspath)) in _DIRECT_KERNEL_FILES:
            item.add_marker(mark)


@pytest.fixture
def distribution_checks_on():
    """torch.distributions' argument validation on for the test, as it is by default. torchvision's MixUp / CutMix
    alpha checks (and so the shims', which raise what torchvision raises) are that validation, and torch.compile
    switches it off for the whole process the first time it runs (torch._dynamo calls
    Distribution.set_default_validate_args(False)): after a compile test in the same session they would accept
    alpha <= 0."""
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def finish_rank(result: dict, out_dir, rank: int) -> None:
    """A :func:`run_ranks` worker's last step (call it in ``finally``): save ``result`` as ``rank{rank}.pt``, then
    leave the process group together with the other ranks. The barrier is there because torch 2.6's gloo could
    leave rank 0 waiting forever in ``destroy_process_group`` when rank 1 had already torn down. After an error on
    another rank it returns at the worker's process-group timeout (30-60 s here), after the result was saved."""
    import torch.distributed as dist

    torch.save(result, os.path.join(str(out_dir), f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_ranks(target, world: int, out_dir, args=(), deadline_s: float = 150.0):
    """Run ``target(rank, *args)`` in ``world`` spawned processes and return their results.

    Each worker must save a dict to ``out_dir/rank{r}.pt`` (with an ``"error"`` traceback if it failed). The
    processes are joined against one deadline and killed past it, so a deadlocked collective fails the test
    instead of hanging CI.
    """
    import os
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, *args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + deadline_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    if hung:
        pytest.fail(f"distributed workers did not finish within {deadline_s:.0f} s (deadlock?)")
    results = []
    for r, p in enumerate(procs):
        path = os.path.join(str(out_dir), f"rank{r}.pt")
        assert os.path.exists(path), f"rank {r} exited with code {p.exitcode} and wrote no result"
        res = torch.load(path)
        if "error" in res:
            pytest.fail(f"rank {r} failed:\n{res['error']}")
        results.append(res)
    return results
