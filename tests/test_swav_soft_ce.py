"""The ``soft_ce`` op (SwAV's per-crop soft-target cross-entropy, augcl/ops/soft_ce.py): every backend that runs
here against the reference (augcl/reference/soft_ce.py) and a float64 oracle (``-sum t * log_softmax`` in
float64 of the same rounded inputs), values and both gradients; gradcheck; opcheck; torch.compile; the scalar
and vectorised C++ kernels against each other; stability (|z / T| ~ 200) and w_b = 0 rows.

The Triton backend (kernels/soft_ce.py) runs under TRITON_INTERPRET=1 on CPU tensors here (on CUDA tensors
when a GPU is visible, compiled); cases it declines (fp64, bf16 under the interpreter, fp64 targets) are skipped
with its reason.

Tolerances: the rule of tests/_tolerance.py, with the reference (augcl/reference/soft_ce.py, run on the same
inputs: fp32 accumulation, dz / dt rounded once to z's / t's dtype) as the same-precision yardstick. The floors are
relative to the terms that cancel: w * lse and <t, z> / T for the rows, lse and z / T for dt, g * w / T for dz.
"""

# _devices sets TRITON_INTERPRET (only without a GPU) before any Triton kernel module is imported.
import _devices  # noqa: F401

import pytest
import torch
import torch.nn.functional as F

import augcl  # noqa: F401
from _tolerance import assert_close_to_reference
from augcl import functional as AF
from augcl.dispatch import REGISTRY, BackendUnavailableError
from augcl.functional.swav import soft_target_ce
from augcl.ops.soft_ce import soft_ce_rows
from augcl.reference.soft_ce import soft_ce_bwd, soft_ce_fwd

HAS_CPP = hasattr(torch.ops.augcl, "soft_ce")
BACKENDS = ["reference"] + (["cpu"] if HAS_CPP else []) + ["triton"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def skip_unless_runs(backend, z, t):
    """Skip (with the dispatcher's reason) when ``backend`` declines these inputs; returns the device to use."""
    device = DEVICE if backend == "triton" else "cpu"
    zd, td = z.to(device), t.to(device)
    reason = REGISTRY["soft_ce"].reasons(zd, td)[backend]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    return device


def oracle(z, t, temperature):
    """rows and both gradients (for grad_rows = g) in float64 by autograd of -sum t * log_softmax(z / T)."""
    z64 = z.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    rows = -(t64 * F.log_softmax(z64 / temperature, dim=1)).sum(dim=1)
    return rows, z64, t64


def make(b, k, zdt, tdt, scale=3.0, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).to(zdt)
    t = torch.rand(b, k, generator=g, dtype=torch.float64).to(tdt)
    if noncontig:
        z = torch.cat([z, z], dim=1)[:, ::2]  # strides (2K, 2): not contiguous
        t = t.t().contiguous().t()  # column-major
        assert not z.is_contiguous() and not t.is_contiguous()
    return z, t


def check_backend(backend, z, t, temperature):
    device = skip_unless_runs(backend, z, t)
    acc = torch.float64 if torch.float64 in (z.dtype, t.dtype) else torch.float32
    zg = z.detach().to(device).requires_grad_(True)
    tg = t.detach().to(device).requires_grad_(True)
    rows = soft_ce_rows(zg, tg, 1.0 / temperature, backend=backend)
    assert rows.dtype == acc and rows.shape == (z.shape[0],)
    g = torch.linspace(0.5, 1.5, z.shape[0], dtype=acc)
    dz, dt = torch.autograd.grad(rows, (zg, tg), g.to(device))
    rows, dz, dt = rows.detach().cpu(), dz.cpu(), dt.cpu()
    assert dz.dtype == z.dtype and dt.dtype == t.dtype
    assert torch.isfinite(rows).all()
    # the float64 oracle, and the reference on the same inputs as the same-precision yardstick
    r64, z64, t64 = oracle(z, t, temperature)
    dz64, dt64 = torch.autograd.grad(r64, (z64, t64), g.double())
    rows_e, lse_e = soft_ce_fwd(z, t, 1.0 / temperature)
    dz_e, dt_e = soft_ce_bwd(g, z, t, lse_e, 1.0 / temperature)
    # scales of the terms that cancel (K = 1, w = 0 rows give exact zeros)
    zt = z.double().abs().max().item() / temperature + 1.0
    w = t.double().sum(dim=1).abs().max().item()
    gm = g.double().abs().max().item()
    assert_close_to_reference([rows, dz, dt], [r64.detach(), dz64, dt64], [rows_e, dz_e, dt_e], ["rows", "dz", "dt"],
                              scale=[w * zt, gm * max(w, 1e-3) / temperature, gm * zt])
    return rows, dz, dt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,k", [(1, 1), (3, 5), (64, 100), (257, 5), (3, 3000), (1, 100), (257, 1), (64, 1)])
@pytest.mark.parametrize("zdt", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tdt", [torch.float32, torch.float64])
def test_backend_vs_oracle(backend, b, k, zdt, tdt):
    z, t = make(b, k, zdt, tdt, seed=b * 7 + k)
    check_backend(backend, z, t, 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.1, 0.05])
@pytest.mark.parametrize("zdt,tdt", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                     (torch.float16, torch.float32), (torch.bfloat16, torch.float64)])
def test_temperatures_noncontiguous(backend, temperature, zdt, tdt):
    z, t = make(33, 77, zdt, tdt, noncontig=True, seed=3)
    check_backend(backend, z, t, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zdt,tdt", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                     (torch.float16, torch.float32)])
def test_large_logits_stable(backend, zdt, tdt):
    """z / T ~ +-200 (|z| = 10..20, T = 0.05 and 0.1): finite, and right (no overflow of exp)."""
    z, t = make(64, 100, zdt, tdt, seed=5)
    z = (z.double().sign() * 10 + z.double()).clamp(-20, 20).to(zdt)
    for temperature in (0.1, 0.05):
        rows, dz, dt = check_backend(backend, z, t, temperature)
        assert torch.isfinite(dz).all() and torch.isfinite(dt).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_rows(backend):
    z, t = make(10, 50, torch.float32, torch.float32, seed=9)
    t[::3] = 0.0
    rows, dz, dt = check_backend(backend, z, t, 0.1)
    assert (rows[::3] == 0).all()
    assert (dz[::3] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    z, t = make(5, 7, torch.float64, torch.float64, seed=1)
    skip_unless_runs(backend, z, t)
    z.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: soft_ce_rows(a, b, 1 / 0.1, backend=backend), (z, t))


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_z_requires_grad(backend):
    z, t = make(4, 9, torch.float32, torch.float32)
    device = skip_unless_runs(backend, z, t)
    zd = z.to(device).requires_grad_(True)
    soft_ce_rows(zd, t.to(device), 10.0, backend=backend).sum().backward()
    r64, z64, _ = oracle(z, t, 0.1)
    (dz64,) = torch.autograd.grad(r64.sum(), z64)
    _, lse_e = soft_ce_fwd(z, t, 10.0)
    dz_e, _ = soft_ce_bwd(torch.ones(4), z, t, lse_e, 10.0, compute_dt=False)
    assert_close_to_reference(zd.grad, dz64, dz_e, "dz")


def test_reference_backward_formula():
    z, t = make(6, 11, torch.float64, torch.float64)
    rows, lse = soft_ce_fwd(z, t, 10.0)
    g = torch.rand(6, dtype=torch.float64)
    dz, dt = soft_ce_bwd(g, z, t, lse, 10.0)
    r64, z64, t64 = oracle(z, t, 0.1)
    dz64, dt64 = torch.autograd.grad(r64, (z64, t64), g)
    assert_close_to_reference([dz, dt], [dz64, dt64], None, ["dz", "dt"])  # float64: autograd is the eager one
    assert soft_ce_bwd(g, z, t, lse, 10.0, compute_dt=False)[1] is None


@pytest.mark.skipif(not HAS_CPP, reason="augcl._C without soft_ce")
@pytest.mark.parametrize("zdt,tdt", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                     (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                     (torch.float32, torch.float64)])
@pytest.mark.parametrize("compute_dt", [True, False])
def test_opcheck(zdt, tdt, compute_dt):
    z, t = make(5, 13, zdt, tdt)
    z.requires_grad_(True)
    t.requires_grad_(compute_dt)
    torch.library.opcheck(torch.ops.augcl.soft_ce.default, (z, t, 10.0))
    rows, lse = torch.ops.augcl.soft_ce(z.detach(), t.detach(), 10.0)
    torch.library.opcheck(torch.ops.augcl.soft_ce_backward.default,
                          (torch.rand_like(rows), z.detach(), t.detach(), lse, 10.0, compute_dt))


@pytest.mark.skipif(not HAS_CPP, reason="augcl._C without soft_ce")
@pytest.mark.parametrize("zdt,tdt", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                     (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("b,k", [(1, 1), (3, 7), (64, 100), (257, 5), (3, 3000), (5, 1031)])
def test_scalar_vs_vectorised(monkeypatch, zdt, tdt, b, k):
    """The scalar and the vectorised (exp_u20, another summation order) C++ paths, each within the rule of the
    float64 oracle: rows, lse and both gradients (each backward fed its own lse)."""
    z, t = make(b, k, zdt, tdt, seed=k)
    g = torch.rand(b, dtype=torch.float64 if torch.float64 in (zdt, tdt) else torch.float32)
    r64, z64, t64 = oracle(z, t, 0.1)
    ref = [r64.detach(), torch.logsumexp(z64.detach() * 10.0, dim=1), *torch.autograd.grad(r64, (z64, t64), g.double())]
    rows_e, lse_e = soft_ce_fwd(z, t, 10.0)
    eager = [rows_e, lse_e, *soft_ce_bwd(g, z, t, lse_e, 10.0)]
    zt = z.double().abs().max().item() * 10.0 + 1.0
    w = t.double().sum(dim=1).abs().max().item()
    gm = g.double().abs().max().item()
    for vec in ("0", "1"):
        monkeypatch.setenv("AUGCL_CPU_VEC", vec)
        rows, lse = torch.ops.augcl.soft_ce(z, t, 10.0)
        dz, dt = torch.ops.augcl.soft_ce_backward(g, z, t, lse, 10.0, True)
        assert_close_to_reference([rows, lse, dz, dt], ref, eager,
                                  [f"rows (AUGCL_CPU_VEC={vec})", "lse", "dz", "dt"],
                                  scale=[w * zt, None, gm * max(w, 1e-3) * 10.0, gm * zt])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    z, t = make(8, 40, torch.float32, torch.float32, seed=2)
    device = skip_unless_runs(backend, z, t)
    if backend == "triton" and device != "cuda":
        pytest.skip("triton under TRITON_INTERPRET cannot run on fake tensors (compiled on a GPU only)")
    z, t = z.to(device), t.to(device)

    def f(a, b):
        return soft_ce_rows(a, b, 10.0, backend=backend).sum() * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    la, lb = f(za, t), compiled(zb, t)
    torch.testing.assert_close(lb, la)
    la.backward()
    lb.backward()
    torch.testing.assert_close(zb.grad, za.grad)


def test_dispatch_choice_and_declines():
    z, t = make(4, 8, torch.float32, torch.float32)
    op = REGISTRY["soft_ce"]
    assert op.select("cpu", z, t) == ("cpu" if HAS_CPP else "reference")
    reasons = op.reasons(z.double(), t.double())
    assert reasons["triton"] is not None and reasons["reference"] is None
    if op.reasons(z, t)["triton"] is None:
        assert "float64" in reasons["triton"]
    with pytest.raises(BackendUnavailableError, match="triton"):
        soft_ce_rows(z.double(), t.double(), 10.0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        soft_ce_rows(z, t, 10.0, backend="cuda")
    # swav_loss's backend= forces Sinkhorn; the cross-entropy follows where it can run, else automatic choice
    from augcl.ops.soft_ce import swav_ce_backend
    assert swav_ce_backend("cuda", z, t) == "auto" and swav_ce_backend("cpu", z, t) == "cpu"
    assert swav_ce_backend("triton", z.double(), t.double()) == "auto"
    triton_ok = op.reasons(z, t)["triton"] is None
    assert swav_ce_backend("triton", z, t) == ("triton" if triton_ok else "auto")


@pytest.mark.parametrize("compute_dt", [True, False])
@pytest.mark.parametrize("zdt", [torch.float32, torch.float16])
def test_opcheck_triton(zdt, compute_dt):
    z, t = make(5, 13, zdt, torch.float32)
    device = skip_unless_runs("triton", z, t)
    z, t = z.to(device).requires_grad_(True), t.to(device).requires_grad_(compute_dt)
    from augcl.ops.soft_ce import soft_ce_triton, soft_ce_triton_backward
    # As in test_swav_sinkhorn_kernels: under TRITON_INTERPRET the kernels cannot run on fake tensors, so only the
    # schema is checked on CPU (the GPU run checks everything).
    utils = None if device == "cuda" else ("test_schema",)
    kw = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(soft_ce_triton, (z, t, 10.0), **kw)
    rows, lse = soft_ce_triton(z.detach(), t.detach(), 10.0)
    torch.library.opcheck(soft_ce_triton_backward, (torch.rand_like(rows), z.detach(), t.detach(), lse, 10.0,
                                                    compute_dt), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_soft_target_ce_gradcheck_float64(backend):
    """swav_loss's per-crop cross-entropy (a scalar) through the op: gradcheck w.r.t. scores and targets."""
    z, t = make(6, 9, torch.float64, torch.float64, seed=4)
    skip_unless_runs(backend, z, t)
    z.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: soft_target_ce(a, b, 0.1, backend=backend),
                                    (z, t))
    r64, _, _ = oracle(z, t, 0.1)
    assert_close_to_reference(soft_target_ce(z, t, 0.1, backend=backend), r64.sum(), None, "loss")


def test_swav_loss_backends_agree():
    g = torch.Generator().manual_seed(6)
    high = [torch.randn(32, 50, generator=g) for _ in range(2)]
    low = [torch.randn(32, 50, generator=g) for _ in range(3)]
    ref = AF.swav_loss([h.double() for h in high], [x.double() for x in low], backend="reference")
    eager = AF.swav_loss(high, low, backend="reference")
    for b in BACKENDS:
        device = skip_unless_runs(b, high[0], high[0]) if b == "triton" else "cpu"
        if REGISTRY["soft_ce"].reasons(high[0].to(device), high[0].to(device))[b] is not None:
            continue
        hd = [h.to(device).requires_grad_(True) for h in high]
        ld = [x.to(device).requires_grad_(True) for x in low]
        val = AF.swav_loss(hd, ld, backend=b)
        assert_close_to_reference(val.cpu(), ref, eager, f"loss ({b})")
        val.backward()
        assert all(torch.isfinite(x.grad).all() for x in hd + ld)
