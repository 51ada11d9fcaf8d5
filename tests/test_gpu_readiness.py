"""What a first GPU run would hit first, checked on the CPU (issue: make the first GPU run count).

* torch.compile(fullgraph=True) traces the dispatcher with the triton backend (availability and capability checks
  are constants for the compiler), for every op, under the interpreter;
* torch's fp32 precision is read through ``fp32_precision`` where it exists (the legacy getter raises once a user
  has set the new API);
* the fp16 contrastive backward keeps the negatives' gradient when g * p is below fp16's smallest subnormal;
* every Triton launch runs under the device of its tensors;
* no host sync where there used to be one (the Un-Mix backward's bincount, the index checks' min / max, the
  training driver's per-step value check);
* the performance candidates (switches) match the reference.

The Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU), on small shapes.
"""
import math
import os

import pytest
import torch

import augcl
import augcl.functional as AF
from augcl import dispatch
from augcl._validate import IndexArgumentError
from augcl.reference.contrastive import contrastive_lse_backward_reference, contrastive_lse_reference

triton = pytest.importorskip("triton", reason="triton is not installed: these tests exercise the Triton kernels")
from augcl.kernels import _triton as T  # noqa: E402
from augcl.kernels import contrastive as KC  # noqa: E402

INTERPRETED = KC._interpreted()
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED or torch.cuda.is_available(),
    reason="runs the Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1, no GPU)")

pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def _interpreter_ok():
    problem = T.interpreter_problem()
    if problem is not None:
        pytest.skip(problem)


# ----------------------------------------------------------------------------------------------- torch.compile
def _op_calls():
    """(name, inputs, indices of the inputs that get a gradient, fn(*inputs) -> a scalar) of one call of every
    op family, Triton backend forced."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    queue = torch.randn(40, 16, generator=g)
    x = torch.randn(6, 3, 5, 7, generator=g)
    lam = torch.rand(6, generator=g)
    cut = torch.tensor([True, False, True, False, False, True])
    boxes = torch.tensor([[0, 3, 1, 4], [0, 0, 0, 0], [2, 5, 0, 7], [0, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 5]])
    partner = torch.tensor([5, 4, 3, 2, 1, 0])
    hx, hk = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    w1, b1 = torch.randn(16, 16, generator=g) * 0.2, torch.randn(16, generator=g) * 0.1
    w2, b2 = torch.randn(16, 16, generator=g) * 0.2, torch.randn(16, generator=g) * 0.1
    w3, b3 = torch.randn(8, 16, generator=g) * 0.2, torch.randn(8, generator=g) * 0.1
    scores = torch.randn(20, 30, generator=g)
    return [
        ("nt_xent", (z1, z2), (0, 1), lambda a, b: AF.nt_xent(a, b, 0.5, backend="triton")),
        ("info_nce", (z1, z2, queue), (0, 1), lambda q, k, u: AF.info_nce(q, k, u, 0.2, backend="triton")),
        ("mix_images", (x, lam, cut, boxes, partner), (0,),
         lambda x, l, c, b, p: AF.mix_images(x, l, c, b, p, backend="triton").square().sum()),
        ("hallucinate", (hx, hk, w1, b1, w2, b2, w3, b3), (0, 1, 2, 3, 4, 5, 6, 7),
         lambda x, k, *w: AF.hallucinate(x, k, 0.3, *w, backend="triton").square().sum()),
        ("sinkhorn", (scores,), (), lambda s: (AF.sinkhorn(s, 0.05, 3, backend="triton") * s).sum()),
    ]


@needs_interpreter
@pytest.mark.parametrize("case", range(5), ids=lambda i: ["nt_xent", "info_nce", "mix_images", "hallucinate",
                                                          "sinkhorn"][i])
def test_compile_fullgraph_triton_backend(case):
    """Dynamo traces every op with backend="triton" in one graph (the availability check used to import under an
    lru_cache inside the traced region: "marked as skipped", a graph break), and the compiled values and gradients
    are the eager ones. backend="eager": the interpreter's kernels are plain Python, which AOTAutograd cannot
    put into a graph (see test_compile_lowering_under_interpreter_is_refused)."""
    _interpreter_ok()
    _name, inputs, grad_of, fn = _op_calls()[case]
    torch._dynamo.reset()
    floating = [t.detach().clone().requires_grad_(i in grad_of) for i, t in enumerate(inputs)]
    ref = fn(*floating)
    leaves = [t for t in floating if t.requires_grad]
    ref_grads = torch.autograd.grad(ref, leaves) if leaves else ()
    got = torch.compile(fn, fullgraph=True, backend="eager")(*floating)
    torch.testing.assert_close(got, ref)
    if leaves:
        for a, b in zip(torch.autograd.grad(got, leaves), ref_grads):
            torch.testing.assert_close(a, b)


@needs_interpreter
def test_compile_fullgraph_automatic_and_context_selection():
    """backend=None (the dispatcher's own choice, reading AUGCL_BACKEND) and use_backend("triton") trace too."""
    _interpreter_ok()
    z1, z2 = torch.randn(10, 8), torch.randn(10, 8)
    for ctx, expect in ((None, "cpu-or-reference"), ("triton", "triton")):
        torch._dynamo.reset()

        def step(a, b):
            if ctx is None:
                return AF.nt_xent(a, b, 0.5)
            with augcl.use_backend(ctx):
                return AF.nt_xent(a, b, 0.5)

        torch.testing.assert_close(torch.compile(step, fullgraph=True, backend="eager")(z1, z2), step(z1, z2))


@needs_interpreter
def test_compile_lowering_under_interpreter_is_refused():
    """AOTAutograd decomposes a triton_op into its launches: an interpreted kernel would be silently left out
    (uninitialised outputs). It raises with the way out instead."""
    _interpreter_ok()
    torch._dynamo.reset()
    z1, z2 = torch.randn(10, 8), torch.randn(10, 8)
    with pytest.raises(Exception, match="cannot lower into a graph"):
        torch.compile(lambda a, b: AF.nt_xent(a, b, backend="triton"), fullgraph=True, backend="aot_eager")(z1, z2)


def test_availability_checks_are_compile_constants():
    """The checks that ask the environment are marked constant for the compiler, and the import cache is a plain
    dict (a traced lookup)."""
    assert getattr(dispatch.triton_import_reason, "_dynamo_marked_constant", False)
    assert getattr(T._environment_reason, "_dynamo_marked_constant", False)
    assert dispatch.triton_import_reason("contrastive") is None
    assert dispatch._TRITON_MODULES["contrastive"] is dispatch.triton_kernels("contrastive")
    assert "not available" in dispatch.triton_import_reason("no_such_module")


# ------------------------------------------------------------------------------------------- fp32 precision
@pytest.fixture
def restore_fp32_precision():
    """Put torch's matmul precision back as it was (the new API's value; legacy reads work again after it)."""
    matmul = torch.backends.cuda.matmul
    old = getattr(matmul, "fp32_precision", None)
    yield
    if old is not None:
        matmul.fp32_precision = old


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch < 2.9 has only the legacy allow_tf32 flag")
@pytest.mark.parametrize("value,expect", [("tf32", "tf32"), ("ieee", "ieee")])
def test_new_fp32_precision_api_is_read(restore_fp32_precision, monkeypatch, value, expect):
    """Once a user sets torch.backends.cuda.matmul.fp32_precision, torch >= 2.9 raises on every read of the legacy
    allow_tf32 ("mix of legacy and new APIs"); the kernels' precision rule reads the new API and follows it."""
    monkeypatch.delenv(T.FP32_PRECISION_ENV, raising=False)
    torch.backends.cuda.matmul.fp32_precision = value
    if value == "tf32":
        with pytest.raises(RuntimeError, match="mix of the legacy and new"):
            torch.backends.cuda.matmul.allow_tf32  # noqa: B018  (the read that every fp32 call used to make)
    assert T.input_precision(torch.float32) == expect
    assert T.input_precision(torch.float16) == "ieee"


@needs_interpreter
@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch < 2.9 has only the legacy allow_tf32 flag")
def test_fp32_launchers_run_after_new_api_is_set(restore_fp32_precision, monkeypatch):
    """The Python side of the two kernel files that choose a dot precision (contrastive, hallucinator) runs with
    fp32_precision set (the interpreter computes every dot in fp32 whatever it is told)."""
    _interpreter_ok()
    monkeypatch.delenv(T.FP32_PRECISION_ENV, raising=False)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    z1, z2 = torch.randn(9, 8), torch.randn(9, 8)
    torch.testing.assert_close(AF.nt_xent(z1, z2, backend="triton"), AF.nt_xent(z1, z2, backend="reference"))
    x, k = torch.randn(5, 4), torch.randn(5, 4)
    w = [torch.randn(8, 8) * 0.3, torch.randn(8) * 0.1, torch.randn(8, 8) * 0.3, torch.randn(8) * 0.1,
         torch.randn(4, 8) * 0.3, torch.randn(4) * 0.1]
    torch.testing.assert_close(AF.hallucinate(x, k, 0.5, *w, backend="triton"),
                               AF.hallucinate(x, k, 0.5, *w, backend="reference"), rtol=1e-5, atol=1e-5)


def test_legacy_flag_without_new_api(monkeypatch):
    """torch < 2.9 (no fp32_precision attribute): the legacy flag decides."""
    class Legacy:
        allow_tf32 = True

    monkeypatch.setattr(torch.backends.cuda, "matmul", Legacy())
    monkeypatch.delenv(T.FP32_PRECISION_ENV, raising=False)
    assert T.tf32_allowed() and T.input_precision(torch.float32) == "tf32"
    Legacy.allow_tf32 = False
    assert not T.tf32_allowed() and T.input_precision(torch.float32) == "ieee"


# -------------------------------------------------------------------------------------- fp16 backward
def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


@needs_interpreter
def test_fp16_backward_keeps_small_gradients_at_op_level():
    """The lse op alone (its gradient is all negatives): g = 1/65536 per row is the gradient of a mean over
    2N = 65536 rows, and with p ~ 1/300 here g * p ~ 5e-8 rounds to 0 or one subnormal step in fp16. Casting
    G = g * p to fp16 before the product made dA / dC wrong by ~100%; with g applied after the product (dA) and
    g / max|g| inside it (dC) the error is fp16 output rounding."""
    _interpreter_ok()
    g = torch.Generator().manual_seed(3)
    m, nc, d = 96, 300, 32
    a = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1).half()
    c = torch.nn.functional.normalize(torch.randn(nc, d, generator=g), dim=1).half()
    scale = torch.tensor(2.0)
    pos = torch.randint(0, nc, (m, 1), generator=g)
    excl = torch.empty((m, 0), dtype=torch.long)
    lse = KC.contrastive_lse_fwd(a, c, scale, pos, excl, 0)
    grad = torch.full((m,), 1.0 / 65536)
    da, dc, ds = KC.contrastive_lse_bwd(grad, a, c, scale, lse, pos, excl, 0)
    lse64 = contrastive_lse_reference(a.double(), c.double(), scale.double(), pos, excl, 0)
    rda, rdc, rds = contrastive_lse_backward_reference(grad.double(), a.double(), c.double(), scale.double(), lse64,
                                                        pos, excl, 0)
    # The gradients themselves are ~1e-7, fp16 subnormals: the best an fp16 output can do is the float64 answer
    # rounded to fp16, and the kernels must stay within twice that error (the fp16 G cast was ~100% off).
    for got, ref in ((da, rda), (dc, rdc)):
        best = _rel(ref.half(), ref)
        assert _rel(got, ref) <= 2 * best + 1e-3, (_rel(got, ref), best)
    assert abs(float(ds) - float(rds)) <= 1e-3 * abs(float(rds))


@needs_interpreter
def test_fp16_backward_of_mean_reduced_loss():
    """NT-Xent, mean over 2N = 512 rows, scaled by 512 / 65536: every row's gradient is the one a mean over 65536
    rows gives (the interpreter cannot run 65536 rows). fp16 embeddings against the float64 loss of the same
    rounded values: without the fix the negatives' share of the gradient (p ~ 1/511 each) vanished."""
    _interpreter_ok()
    g = torch.Generator().manual_seed(5)
    b, d = 256, 32
    z1 = torch.randn(b, d, generator=g).half()
    z2 = (z1.float() + 0.3 * torch.randn(b, d, generator=g)).half()
    factor = 2 * b / 65536

    def grads(backend, dtype):
        x1 = z1.detach().to(dtype).clone().requires_grad_()
        x2 = z2.detach().to(dtype).clone().requires_grad_()
        (AF.nt_xent(x1, x2, 1.0, backend=backend) * factor).backward()
        return x1.grad, x2.grad

    got = grads("triton", torch.float16)
    ref = grads("reference", torch.float64)
    for x, r in zip(got, ref):
        assert x.dtype == torch.float16 and bool(torch.isfinite(x).all())
        best = _rel(r.half(), r)  # fp16 rounding of the exact gradient (small normal / subnormal numbers)
        assert _rel(x, r) <= 2 * best + 2e-3, (_rel(x, r), best)


# ------------------------------------------------------------------------------------------- device guard
def test_launch_runs_under_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: a launch on tensors of cuda:1 (while cuda:0 is current) must
    enter torch.cuda.device(cuda:1) around the kernel call; on CPU tensors it enters nothing. Fake cuda tensors
    stand in for a second GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    events = []

    class DeviceRecorder:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            events.append(("enter", str(self.device)))

        def __exit__(self, *exc):
            events.append(("exit", str(self.device)))

    class Kernel:  # a compiled kernel's launch interface: kernel[grid](*args)
        def __getitem__(self, grid):
            return lambda *args, **kwargs: events.append(("launch", grid))

    monkeypatch.setattr(torch.cuda, "device", DeviceRecorder)
    monkeypatch.setattr(torch.library, "wrap_triton", lambda kernel: kernel)
    with FakeTensorMode():
        x = torch.empty(4, device="cuda:1")
    T.launch(Kernel(), (3,))(x, 7, BLOCK=4)
    assert events == [("enter", "cuda:1"), ("launch", (3,)), ("exit", "cuda:1")]
    events.clear()
    T.launch(Kernel(), (2,))(torch.empty(4), 7)
    assert events == [("launch", (2,))]


def test_every_kernel_is_launched_through_the_guard():
    """No launcher indexes a kernel by its grid itself: every launch goes through kernels/_triton.py's launch."""
    import re

    kernel_dir = os.path.dirname(KC.__file__)
    for name in sorted(os.listdir(kernel_dir)):
        if not name.endswith(".py") or name == "_triton.py":
            continue
        src = open(os.path.join(kernel_dir, name)).read()
        assert not re.search(r"_kernel\s*\[", src), f"{name} launches a kernel without kernels/_triton.py's launch"


# -------------------------------------------------------------------------------------------- host syncs
def _forbid(monkeypatch, module, name):
    """Make ``module.name`` raise: the code path under test must not call it (on a GPU it is a host sync)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} was called: a host sync on a GPU")

    monkeypatch.setattr(module, name, refuse)


@needs_interpreter
@pytest.mark.parametrize("partner", [[5, 4, 3, 2, 1, 0], [2, 2, 0, 5, 2, 1], [0, 0, 0, 0, 0, 0]],
                         ids=["reverse", "repeats", "all-to-row-0"])
def test_unmix_backward_without_bincount(monkeypatch, partner):
    """The Triton Un-Mix backward builds its inverse-partner lists without torch.bincount (which reads its output
    size back from the GPU); the gradient still matches the reference for any partner vector (repeats, rows
    that are nobody's partner)."""
    _interpreter_ok()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 5, 4, generator=g)
    lam = torch.rand(6, generator=g)
    cut = torch.tensor([False, True, False, True, False, False])
    boxes = torch.tensor([[0, 0, 0, 0], [1, 4, 0, 3], [0, 0, 0, 0], [0, 5, 2, 4], [0, 0, 0, 0], [0, 0, 0, 0]])
    partner = torch.tensor(partner)
    w = torch.randn(6, 2, 5, 4, generator=g)

    def grad(backend):
        xx = x.clone().requires_grad_()
        (AF.mix_images(xx, lam, cut, boxes, partner, backend=backend) * w).sum().backward()
        return xx.grad

    ref = grad("reference")
    _forbid(monkeypatch, torch, "bincount")
    torch.testing.assert_close(grad("triton"), ref)


class _HostReads:
    """Counts the reads of a tensor's value by the host (bool / int / float / item / tolist), each a device
    synchronisation on a GPU."""

    NAMES = ("__bool__", "__int__", "__float__", "item", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)

            def counted(t, *args, _real=real, **kwargs):
                self.count += 1
                return _real(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.fixture
def checks_restored():
    was = augcl._validate.checks_enabled()
    yield
    augcl.set_checks(was)


@pytest.mark.parametrize("checks", [True, False], ids=["checks-on", "checks-off"])
def test_index_checks_share_the_deferred_sync(monkeypatch, checks_restored, checks):
    """contrastive_loss with pos_idx and excl_idx: one host read per call (the deferred check; with checks off,
    the index ranges alone, which are always checked). Before, min and max of each index tensor were read first:
    four more syncs per call. MoCo's info_nce builds its positives itself: nothing to check with checks off."""
    augcl.set_checks(checks)
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(8, 5, generator=g), torch.randn(11, 5, generator=g)
    pos = torch.randint(0, 11, (8, 2), generator=g)
    excl = torch.randint(-1, 11, (8, 3), generator=g)
    q, k, queue = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    for backend in ("reference", "cpu"):
        if dispatch.REGISTRY["contrastive"].reasons(a, c)[backend] is not None:
            continue
        AF.contrastive_loss(a, c, pos, excl_idx=excl, backend=backend)  # warm-up: first-call work reads nothing
        reads = _HostReads(monkeypatch)
        AF.contrastive_loss(a, c, pos, excl_idx=excl, backend=backend)
        assert reads.count == 1
        reads.count = 0
        AF.info_nce(q, k, queue, backend=backend)
        assert reads.count == (1 if checks else 0)
        monkeypatch.undo()
        augcl.set_checks(checks)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("checks", [True, False], ids=["checks-on", "checks-off"])
def test_deferred_index_check_raises_as_before(checks_restored, backend, checks):
    """An index out of range still raises IndexArgumentError with the message of the eager check, on every
    backend (out-of-range values reach no kernel: they are replaced by padding until the check raises), also
    with set_checks(False), and before any value error."""
    a, c = torch.randn(8, 5), torch.randn(11, 5)
    if dispatch.REGISTRY["contrastive"].reasons(a, c)[backend] is not None:
        pytest.skip(f"backend {backend} cannot run here: {dispatch.REGISTRY['contrastive'].reasons(a, c)[backend]}")
    augcl.set_checks(checks)
    pos = torch.randint(0, 11, (8, 2))
    pos[3, 1] = 11
    pos[5, 0] = -4
    with pytest.raises(IndexArgumentError, match=r"^pos_idx has values in \[-4, 11\] but must lie in \[-1, 11\) "
                                                 r"\(-1 = padding\)$"):
        AF.contrastive_loss(a, c, pos, backend=backend)
    excl = torch.full((8, 1), 40)
    with pytest.raises(IndexArgumentError, match=r"^excl_idx has values in \[40, 40\]"):
        AF.contrastive_loss(a, c, pos.clamp(0, 10), excl_idx=excl, backend=backend)
    a_nan = a.clone()
    a_nan[0, 0] = float("nan")
    with pytest.raises(IndexArgumentError):  # the index error first, as when it was raised before the op
        AF.contrastive_loss(a_nan, c, pos, backend=backend)
    with pytest.raises(IndexArgumentError, match=r"^pos_idx has values in \[0, 6\] but must lie in \[-1, 6\)"):
        AF.soft_info_nce(a[:6], c[:6], torch.arange(6).roll(1).unsqueeze(1) * (torch.arange(6) != 2).unsqueeze(1)
                         + 6 * (torch.arange(6) == 2).unsqueeze(1), torch.ones(6, 1), c, backend=backend)


def test_float_temperature_is_filled_on_the_device(monkeypatch):
    """A float temperature becomes 1 / temperature by a fill on the device, not torch.tensor(value, device=...),
    which on CUDA copies from pageable memory and waits for the stream on every call."""
    real = torch.tensor

    def no_host_copy(data, *args, **kwargs):
        assert kwargs.get("device") is None, "torch.tensor(..., device=...) in a loss call: a host sync on CUDA"
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", no_host_copy)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    got = AF.nt_xent(z1, z2, 0.3, backend="reference")
    monkeypatch.undo()
    torch.testing.assert_close(got, AF.nt_xent(z1, z2, torch.tensor(0.3), backend="reference"))


def test_mix_mean_std_are_copied_to_the_device_once(monkeypatch):
    """mix_images' mean / std given as numbers (or as UnMix's CPU tensors) become device tensors once per (values,
    dtype, device) and are reused: a torch.tensor(..., device=...) per call is a host-to-device copy that waits for
    the stream on CUDA. Values are still validated on every call (on the host)."""
    import importlib

    importlib.import_module("augcl.functional.unmix")._STATS_CACHE.clear()  # the module (the package re-exports a
    # function of the same name)
    built = []
    real = torch.tensor

    def counting(data, *args, **kwargs):
        if kwargs.get("device") is not None:
            built.append(data)
        return real(data, *args, **kwargs)

    x = torch.rand(4, 3, 8, 8)
    mean, std = [0.4, 0.5, 0.6], (0.2, 0.25, 0.3)
    monkeypatch.setattr(torch, "tensor", counting)
    first = AF.unmix(x, alpha=1.0, mean=mean, std=std, generator=torch.Generator().manual_seed(0))
    assert len(built) == 2  # mean and std, once
    again = AF.unmix(x, alpha=1.0, mean=mean, std=std, generator=torch.Generator().manual_seed(0))
    assert len(built) == 2, built  # nothing rebuilt
    module = augcl.nn.UnMix(alpha=1.0, mean=mean, std=std, generator=torch.Generator().manual_seed(0))
    via_module = module.mix(x)
    n = len(built)  # UnMix keeps fp32 CPU tensors: their values (rounded to fp32) are entries of their own
    module.generator.manual_seed(0)
    assert torch.equal(module.mix(x)[0], via_module[0]) and len(built) == n
    monkeypatch.undo()
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    for a, b in zip(first, via_module):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="std must not contain 0"):
        AF.unmix(x, alpha=1.0, mean=mean, std=[0.2, 0.0, 0.3])


def test_training_loop_reads_the_loss_every_check_every_steps(monkeypatch):
    """The driver's step loop runs with the losses' deferred value checks off (restored afterwards, also on an
    error) and reads the running loss sum every CHECK_EVERY steps, so a NaN still stops the run within a few
    steps, on every rank at the same step."""
    from types import SimpleNamespace

    from augcl.train import trainer

    seen, reads = [], []
    losses = [1.0, 2.0, float("nan"), 1.0, 1.0, 1.0]

    def step(r, x, g):
        seen.append(augcl._validate.checks_enabled())
        r.step += 1
        return 0.1, torch.tensor(losses[r.step - 1])

    monkeypatch.setattr(trainer, "_train_step", step)
    monkeypatch.setattr(trainer, "EpochSampler", lambda *a, **k: None)
    monkeypatch.setattr(trainer, "train_loader", lambda *a, **k: [(torch.zeros(1), None)] * 6)
    monkeypatch.setattr(trainer, "CHECK_EVERY", 2)
    cfg = dict(method="simclr", seed=0, hallucinate=False, unmix=False, batch_size=2, num_workers=0, progress=False,
               epochs=1, inflate_weight=None)
    run = SimpleNamespace(cfg=cfg, env=SimpleNamespace(rank=0, world=1, is_main=True), device=torch.device("cpu"),
                          method=None, bundle=SimpleNamespace(train=[0] * 12), num_generated=0, train_set=None,
                          model=torch.nn.Linear(1, 1), steps_per_epoch=6, step=0)
    assert augcl._validate.checks_enabled()
    with pytest.raises(trainer.TrainingError, match="non-finite by step 4"):
        trainer._train_epoch(run, 1)
    assert seen == [False] * 4 and augcl._validate.checks_enabled()
    losses[2] = 3.0
    run.step, seen[:] = 0, []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
    loss, _lr, _s = trainer._train_epoch(run, 1)
    assert loss == pytest.approx(sum(losses) / 6) and seen == [False] * 6 and reads == [1]


# ------------------------------------------------------------------------------------ performance candidates
def _lse_case(m, nc, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(nc, d, generator=g), dim=1)
    pos = torch.randint(-1, nc, (m, 2), generator=g)
    excl = torch.randint(-1, nc, (m, 1), generator=g)
    return a, c, torch.tensor(3.0), pos, excl, torch.randn(m, generator=g)


def _check_lse_candidate(m, nc, d, neg_start=5):
    """Forward and backward of the Triton launchers against the float64 reference (fp32 inputs: the interpreter's
    dots are fp32 whatever precision they are told)."""
    a, c, scale, pos, excl, grad = _lse_case(m, nc, d)
    lse = KC.contrastive_lse_fwd(a, c, scale, pos, excl, neg_start)
    da, dc, ds = KC.contrastive_lse_bwd(grad, a, c, scale, lse, pos, excl, neg_start)
    r_lse = contrastive_lse_reference(a.double(), c.double(), scale.double(), pos, excl, neg_start)
    r = contrastive_lse_backward_reference(grad.double(), a.double(), c.double(), scale.double(), r_lse, pos, excl,
                                           neg_start)
    torch.testing.assert_close(lse.double(), r_lse, rtol=1e-5, atol=1e-5)
    for got, ref in zip((da, dc, ds), r):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("precision", ["ieee", "tf32", "tf32x3", "auto"])
def test_candidate_fp32_precision(monkeypatch, precision):
    """AUGCL_TRITON_FP32 selects tl.dot's input precision for fp32 operands (and the block sizes that go with it);
    every value runs and matches the reference (the interpreter computes the dots in fp32 whatever it is told)."""
    _interpreter_ok()
    monkeypatch.setenv(T.FP32_PRECISION_ENV, precision)
    expected = {"auto": T.input_precision(torch.float32)}.get(precision, precision)
    assert T.input_precision(torch.float32) == expected
    _check_lse_candidate(70, 90, 40)


def test_candidate_switch_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv(T.FP32_PRECISION_ENV, "fast")
    with pytest.raises(ValueError, match="AUGCL_TRITON_FP32"):
        T.input_precision(torch.float32)
    monkeypatch.setenv(KC.TILES_ENV, "256x256")
    with pytest.raises(ValueError, match=KC.TILES_ENV):
        KC._pick_config(64, torch.float16, "ieee")


@needs_interpreter
@pytest.mark.parametrize("tiles", sorted(KC.TILE_CANDIDATES))
def test_candidate_contrastive_tiles(monkeypatch, tiles):
    """AUGCL_CONTRASTIVE_TILES: every tile candidate, single-chunk and chunked D, against the reference."""
    _interpreter_ok()
    monkeypatch.setenv(KC.TILES_ENV, tiles)
    cfg = KC._pick_config(40, torch.float32, "ieee")
    assert (cfg.BLOCK_M, cfg.BLOCK_N) == KC.TILE_CANDIDATES[tiles][:2]
    _check_lse_candidate(70, 150, 40)
    _check_lse_candidate(40, 70, 140)


@needs_interpreter
def test_candidate_tile_autotune(monkeypatch):
    """AUGCL_CONTRASTIVE_TILES=autotune: the first call with a key times every tile candidate (forward + backward)
    and keeps the fastest; later calls with the same key reuse it; the results match the reference; inputs
    without data (torch.compile's fake tensors) get the default tiles without timing anything."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    _interpreter_ok()
    monkeypatch.setenv(KC.TILES_ENV, "autotune")
    monkeypatch.setattr(KC, "_TUNED", {})
    timed = []
    real_time = KC._time_ms
    monkeypatch.setattr(KC, "_time_ms", lambda fn, dev: timed.append(1) or real_time(fn, dev))
    _check_lse_candidate(40, 70, 40)
    assert len(timed) == len(KC.TILE_CANDIDATES)
    (key, chosen), = KC._TUNED.items()
    assert chosen in KC.TILE_CANDIDATES and key[:3] == (40, torch.float32, T.input_precision(torch.float32))
    _check_lse_candidate(40, 70, 40, neg_start=2)  # same key: nothing timed again
    assert len(timed) == len(KC.TILE_CANDIDATES)
    with FakeTensorMode():
        a = torch.empty(40, 40)
        assert KC._tiles_for(a, torch.empty(70, 40), torch.empty(()), torch.empty(40, 2, dtype=torch.long),
                             torch.empty(40, 1, dtype=torch.long), 0) == ""
    assert len(timed) == len(KC.TILE_CANDIDATES)


@needs_interpreter
@pytest.mark.parametrize("chunk", KC.BWD_DO_CANDIDATES)
def test_candidate_backward_output_chunk(monkeypatch, chunk):
    """AUGCL_CONTRASTIVE_BWD_DO: the output D chunk of the chunked-D backward (D = 300: 128, 256 or 512 wide,
    i.e. 3, 2 or 1 output chunks), against the reference."""
    _interpreter_ok()
    monkeypatch.setenv(KC.BWD_DO_ENV, chunk)
    cfg = KC._pick_config(300, torch.float32, "ieee")
    assert cfg.BLOCK_D < 300 and cfg.BLOCK_DO == min(int(chunk), 512)
    _check_lse_candidate(40, 70, 300)


@needs_interpreter
@pytest.mark.parametrize("tiles", ["64x64", "32x32", "16x32", "32x64"])
def test_candidate_sinkhorn_tiles(monkeypatch, tiles):
    """AUGCL_SINKHORN_TILES: the multi-launch path with each tile candidate against the reference."""
    _interpreter_ok()
    from augcl.kernels import sinkhorn as KS
    from augcl.reference.sinkhorn import sinkhorn_reference

    assert tiles in KS.TILE_CANDIDATES
    monkeypatch.setenv(KS.TILES_ENV, tiles)
    scores = torch.randn(70, 45, generator=torch.Generator().manual_seed(2))
    got = KS.sinkhorn_fwd(scores, 0.05, 3, path="multi")
    torch.testing.assert_close(got.double(), sinkhorn_reference(scores.double(), 0.05, 3), rtol=1e-4, atol=1e-6)


def test_candidate_routes(monkeypatch):
    """AUGCL_CONTRASTIVE_ROUTE: fp32 inputs, or D >= 256, to the cuda backend under automatic selection on CUDA;
    nothing changes elsewhere or without the switch, and the dispatcher takes a preferred backend only where it
    can run."""
    from augcl.ops import contrastive as OC

    f32, bf16 = torch.empty(4, 64), torch.empty(4, 64, dtype=torch.bfloat16)
    wide = torch.empty(4, 256, dtype=torch.bfloat16)
    monkeypatch.delenv(OC.ROUTE_ENV, raising=False)
    assert OC._prefer("cuda", f32, f32) is None
    monkeypatch.setenv(OC.ROUTE_ENV, "fp32-cuda")
    assert OC._prefer("cuda", f32, f32) == "cuda" and OC._prefer("cuda", bf16, bf16) is None
    assert OC._prefer("cpu", f32, f32) is None
    monkeypatch.setenv(OC.ROUTE_ENV, "fp32-cuda,large-d-cuda")
    assert OC._prefer("cuda", wide, wide) == "cuda" and OC._prefer("cuda", bf16, bf16) is None
    monkeypatch.setenv(OC.ROUTE_ENV, "everything-cuda")
    with pytest.raises(ValueError, match="unknown routes"):
        OC._prefer("cuda", f32, f32)
    ops = dispatch.OpBackends("probe", {"cpu": dispatch.Backend(("cpu",), (torch.float32,)),
                                        "reference": dispatch.Backend(None, (torch.float32,)),
                                        "cuda": dispatch.Backend(("cuda",), (torch.float32,))},
                              prefer=lambda device_type, x: "reference" if x.shape[0] > 2 else "cuda")
    assert ops.select("cpu", f32) == "reference"  # preferred, and it can run
    assert ops.select("cpu", torch.empty(2, 3)) == "cpu"  # preferred cuda cannot run on cpu tensors: the order


# ----------------------------------------------------------------------------------- on a GPU (gpu_session.sh)
def _backend_or_skip(backend, *inputs):
    reason = dispatch.REGISTRY["contrastive"].reasons(*inputs)[backend]
    if reason is not None:
        pytest.skip(f"backend {backend} cannot run: {reason}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA GPU with compiled Triton")
@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch < 2.9 has only the legacy allow_tf32 flag")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("value", ["tf32", "ieee"])
def test_gpu_fp32_after_new_api(restore_fp32_precision, backend, value):
    """fp32 NT-Xent on both GPU backends with torch.backends.cuda.matmul.fp32_precision set: the Triton launcher
    and the CUDA kernel (Context::float32Precision in C++) read the new API instead of raising."""
    z1, z2 = torch.randn(300, 64, device="cuda"), torch.randn(300, 64, device="cuda")
    _backend_or_skip(backend, z1, z2)
    torch.backends.cuda.matmul.fp32_precision = value
    got = AF.nt_xent(z1, z2, 0.5, backend=backend)
    ref = AF.nt_xent(z1.double(), z2.double(), 0.5, backend="reference")
    tol = 2e-3 if value == "tf32" else 1e-5
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_cuda_bf16_gemm_candidate(monkeypatch):
    """AUGCL_CUDA_BF16_GEMM=1: the cuda backend's bf16 backward on bf16 tensor-core GEMMs (fp32 output), within
    bf16 rounding of the float64 gradient, and as close as the default fp32-GEMM path (x2)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    z1 = torch.randn(700, 512, device="cuda", generator=g).bfloat16()
    z2 = (z1.float() + 0.5 * torch.randn(700, 512, device="cuda", generator=g)).bfloat16()
    _backend_or_skip("cuda", z1, z2)

    def grads(backend, dtype):
        x1 = z1.detach().to(dtype).clone().requires_grad_()
        x2 = z2.detach().to(dtype).clone().requires_grad_()
        AF.nt_xent(x1, x2, 0.2, backend=backend).backward()
        return x1.grad, x2.grad

    ref = grads("reference", torch.float64)
    monkeypatch.delenv("AUGCL_CUDA_BF16_GEMM", raising=False)
    base = grads("cuda", torch.bfloat16)
    monkeypatch.setenv("AUGCL_CUDA_BF16_GEMM", "1")
    got = grads("cuda", torch.bfloat16)
    for x, b, r in zip(got, base, ref):
        assert _rel(x, r) <= 2 * _rel(b, r) + 4e-3, (_rel(x, r), _rel(b, r))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,out_dtype,layout", [(torch.uint8, torch.float32, "nchw"),
                                                   (torch.uint8, torch.bfloat16, "channels_last"),
                                                   (torch.bfloat16, torch.bfloat16, "nchw"),
                                                   (torch.float32, torch.float16, "channels_last")])
def test_gpu_unmix_fast_decode_candidate_is_bitwise_equal(monkeypatch, dtype, out_dtype, layout):
    """AUGCL_UNMIX_CUDA_FAST=1 (one decode per thread, vector stores) changes no arithmetic: the CUDA mix is bitwise
    the default's, at a row size that is a multiple of the vector width and at one that is not (scalar tail)."""
    from augcl.ops.unmix import MIX_IMAGES, mix_images_op

    for shape in ((9, 3, 32, 32), (9, 3, 17, 13)):
        g = torch.Generator().manual_seed(0)
        x = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if dtype == torch.uint8
             else torch.randn(shape, generator=g).to(dtype)).cuda()
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        reason = MIX_IMAGES.reasons(x, out_dtype)["cuda"]
        if reason is not None:
            pytest.skip(f"the cuda backend cannot run: {reason}")
        args = (torch.rand(9, generator=g).cuda(), (torch.arange(9) % 2 == 0).cuda(),
                torch.tensor([[2, 11, 1, 9]] * 9).cuda(), torch.randint(0, 9, (9,), generator=g).cuda(),
                torch.tensor([0.4, 0.5, 0.6]).cuda(), torch.tensor([0.2, 0.3, 0.25]).cuda(), out_dtype)
        monkeypatch.delenv("AUGCL_UNMIX_CUDA_FAST", raising=False)
        base = mix_images_op(x, *args, backend="cuda")
        monkeypatch.setenv("AUGCL_UNMIX_CUDA_FAST", "1")
        fast = mix_images_op(x, *args, backend="cuda")
        assert torch.equal(fast, base) and fast.stride() == base.stride()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA GPU with compiled Triton")
def test_gpu_fp16_backward_of_mean_over_65536_rows():
    """The real size: NT-Xent over 2N = 65536 fp16 rows, mean-reduced, against the float64 loss of the same rounded
    values; the gradient must keep the negatives' share (g * p ~ 2e-10, under fp16's smallest subnormal)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    z1 = torch.randn(32768, 64, device="cuda", generator=g).half()
    z2 = (z1.float() + 0.3 * torch.randn(32768, 64, device="cuda", generator=g)).half()

    def grads(backend, dtype):
        x1 = z1.detach().to(dtype).clone().requires_grad_()
        AF.nt_xent(x1, z2.to(dtype), 1.0, backend=backend).backward()
        return x1.grad

    got, ref = grads("triton", torch.float16), grads("reference", torch.float64)
    assert _rel(got, ref) <= 2 * _rel(ref.half(), ref) + 2e-3, (_rel(got, ref), _rel(ref.half(), ref))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA GPU with compiled Triton")
def test_gpu_no_host_sync_in_hot_paths(checks_restored):
    """CUDA's sync debug mode raises on any synchronising call: MoCo's InfoNCE with checks off and the Un-Mix
    backward (Triton), forward and backward, must make none."""
    from augcl.ops.unmix import mix_images_op

    augcl.set_checks(False)
    q, k = torch.randn(256, 128, device="cuda", requires_grad=True), torch.randn(256, 128, device="cuda")
    queue = torch.randn(4096, 128, device="cuda")
    x = torch.randn(64, 3, 32, 32, device="cuda", requires_grad=True)
    lam = torch.rand(64, device="cuda")
    cut = torch.rand(64, device="cuda") < 0.5
    boxes = torch.tensor([[4, 20, 8, 30]] * 64, device="cuda")
    partner = torch.randint(0, 64, (64,), device="cuda")
    for attempt in range(2):  # the first call compiles the kernels (which may synchronise)
        torch.cuda.set_sync_debug_mode("error" if attempt else 0)
        try:
            AF.info_nce(q, k, queue, 0.2, backend="triton").backward()
            # the op itself: mix_images validates its arguments in one (documented) sync, the backward has none
            mix_images_op(x, lam, cut, boxes, partner, None, None, None, backend="triton").square().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2 or INTERPRETED, reason="needs two CUDA GPUs")
def test_gpu_second_device():
    """Tensors on cuda:1 while cuda:0 is current: every Triton launch runs on cuda:1."""
    z1, z2 = torch.randn(200, 64, device="cuda:1"), torch.randn(200, 64, device="cuda:1")
    with torch.cuda.device(0):
        got = AF.nt_xent(z1, z2, backend="triton")
    torch.testing.assert_close(got.cpu(), AF.nt_xent(z1.cpu(), z2.cpu(), backend="reference"), rtol=1e-4, atol=1e-4)
