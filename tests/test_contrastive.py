"""The contrastive op family on every backend that can run here, against the float64 reference.

Tolerance rule (flash-attention's): a backend's error against the fp64 reference may be at most a small multiple
of the error that the same computation done naively in the input precision makes, plus a floor for fp32
rounding. Our kernels accumulate in fp32, so on fp16/bf16 inputs they are usually far *more* accurate than that.
The Triton backend runs under TRITON_INTERPRET=1 on the CPU here (small shapes; no bf16).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import augcl
from augcl import functional as AF
from augcl.dispatch import BackendUnavailableError
from augcl.ops.contrastive import contrastive_loss_rows
from augcl.reference.contrastive import contrastive_loss_reference
from _tolerance import assert_close_to_reference, float64_inputs
from conftest import backend_reason, require_backend

BACKENDS = ["reference", "cpu", "triton"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _case(m, nc, d, p=1, e=1, neg_start=0, dtype=torch.float32, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    c = F.normalize(torch.randn(nc, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    if noncontig:
        # Transposed storage and a strided column slice: no kernel may assume row-major contiguous rows.
        a = a.T.contiguous().T
        c = torch.cat([c, c], dim=1)[:, ::2]
        assert not a.is_contiguous() and not c.is_contiguous()
    pos = torch.randint(0, nc, (m, p), generator=g)
    if p > 1:
        pos[0, -1] = -1  # padding
        pos[-1, 0] = pos[-1, -1]  # a duplicated positive: weights add up
    w = torch.rand(m, p, generator=g, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    excl = torch.randint(-1, nc, (m, e), generator=g)
    if e > 0:
        excl[0, 0] = pos[0, 0]  # a positive listed as excluded stays included
    return a, c, pos, w, excl, neg_start


def _run_rows(backend, a, c, scale, pos, w, excl, neg_start):
    return contrastive_loss_rows(a, c, scale, pos, w, excl, neg_start, backend=backend)


def _eager(a, c, scale, pos, w, excl, neg_start, grad_out):
    """Loss, lse and the gradients of anchors, candidates and scale, computed naively in the inputs' dtype
    (flash-attention's yardstick: logits, logsumexp and the positive term all in a.dtype, gradients by autograd)."""
    from augcl.reference.contrastive import contrastive_included_mask

    a = a.detach().clone().requires_grad_(True)
    c = c.detach().clone().requires_grad_(True)
    s = scale.detach().to(a.dtype).requires_grad_(True)
    logits = (a @ c.T) * s
    incl = contrastive_included_mask(a.shape[0], c.shape[0], pos, excl, neg_start)
    lse = torch.logsumexp(logits.masked_fill(~incl, float("-inf")), dim=1)
    wz = torch.where(pos >= 0, w, 0).to(a.dtype)
    loss = wz.sum(1) * lse - (wz * logits.gather(1, pos.clamp(min=0))).sum(1)
    return [loss.detach(), lse.detach(), *torch.autograd.grad(loss, (a, c, s), grad_out.to(a.dtype))]


def _check_against_reference(backend, dtype, m, nc, d, p, e, neg_start, noncontig=False, temperature=0.1,
                             device="cpu"):
    """Loss, lse and the three gradients of ``backend`` against the float64 reference, within the tolerance rule
    (tests/_tolerance.py) of the naive computation in ``dtype``. The fp32-accumulating kernels are usually far
    more accurate than that on fp16 / bf16 inputs."""
    require_backend(backend, device, dtype)
    a, c, pos, w, excl, neg_start = _case(m, nc, d, p, e, neg_start, dtype, noncontig=noncontig)
    a64, c64 = a.double().requires_grad_(True), c.double().requires_grad_(True)
    s64 = torch.tensor(1.0 / temperature, dtype=torch.float64, requires_grad=True)
    ref_loss, ref_lse = contrastive_loss_reference(a64, c64, s64, pos, w, excl, neg_start)
    grad_out = torch.randn(m, dtype=torch.float64)
    ref = [ref_loss.detach(), ref_lse.detach()] + list(torch.autograd.grad(ref_loss, (a64, c64, s64), grad_out))

    a_ = a.detach().to(device).requires_grad_(True)
    c_ = c.detach().to(device).requires_grad_(True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s_ = torch.tensor(1.0 / temperature, dtype=acc, device=device, requires_grad=True)
    loss, lse = _run_rows(backend, a_, c_, s_, pos.to(device), w.to(device, acc), excl.to(device), neg_start)
    assert loss.dtype == acc and lse.dtype == acc
    da, dc, ds = torch.autograd.grad(loss, (a_, c_, s_), grad_out.to(device, acc))
    got = [x.cpu() for x in (loss, lse, da, dc, ds)]
    assert da.dtype == dtype and dc.dtype == dtype
    eager = _eager(a, c, s_.detach().cpu(), pos, w, excl, neg_start, grad_out)
    assert_close_to_reference(got, ref, eager, ["loss", "lse", "grad_anchors", "grad_candidates", "grad_scale"])


SHAPES = [
    # m, nc, d, p, e, neg_start
    (1, 1, 1, 1, 0, 0),        # tiny
    (2, 3, 4, 1, 1, 0),
    (37, 53, 33, 1, 1, 0),     # odd sizes
    (37, 53, 33, 3, 2, 10),    # multi-positive, duplicated positive, padding, positives below neg_start
    (70, 130, 70, 2, 0, 64),   # several tiles in every dim, E = 0
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backend_matches_reference(backend, dtype, shape):
    _check_against_reference(backend, dtype, *shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_noncontiguous_inputs(backend, dtype):
    _check_against_reference(backend, dtype, 29, 41, 24, 2, 1, 5, noncontig=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_larger_than_one_block(backend):
    # Spans several row chunks of the reference/CPU kernel and many tiles.
    _check_against_reference(backend, torch.float32, 1100, 1500, 40, 1, 1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_temperature_fp16_is_stable(backend):
    """temperature 0.05 with fp16 inputs: logits reach 20, exp(20) overflows fp16 but our fp32 path must not."""
    _check_against_reference(backend, torch.float16, 33, 47, 16, 1, 1, 0, temperature=0.05)


def _naive_nt_xent(z1, z2, t):
    """NT-Xent written out (SimCLR), computed in the dtype of z1 / z2."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    s = z @ z.T / t
    s.fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(s, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d", [(1, 3), (9, 17), (40, 64)])
def test_nt_xent_matches_naive(backend, n, d):
    require_backend(backend)
    z1 = torch.randn(n, d, requires_grad=True)
    z2 = torch.randn(n, d, requires_grad=True)
    results = []
    for fn, inputs in ((lambda a, b: AF.nt_xent(a, b, 0.5, backend=backend), (z1, z2)),
                       (lambda a, b: _naive_nt_xent(a, b, 0.5), float64_inputs(z1, z2)),
                       (lambda a, b: _naive_nt_xent(a, b, 0.5), (z1, z2))):
        loss = fn(*inputs)
        results.append([loss.detach(), *torch.autograd.grad(loss, inputs)])
    # n = 1: the loss is lse - positive logit = 0 exactly, a difference of logits of size 1 / T
    assert_close_to_reference(*results, ["loss", "grad_z1", "grad_z2"], scale=[1 / 0.5, None, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nt_xent_multiview(backend):
    require_backend(backend)
    v, n, d = 3, 6, 8

    def formula(views):
        z = F.normalize(torch.cat(views), dim=1)
        s = z @ z.T / 0.2
        s.fill_diagonal_(float("-inf"))
        logp = torch.log_softmax(s, dim=1)
        rows = torch.arange(v * n)
        pos = (rows % n).unsqueeze(1) + n * torch.arange(v).unsqueeze(0)  # all views of the sample...
        keep = pos != rows.unsqueeze(1)  # ...but the row itself
        return -torch.where(keep, logp.gather(1, pos), 0.0).sum(1).div(v - 1).mean()

    # float64 where the backend runs it (the eager formula is then the reference itself), else float32
    dtype = torch.float64 if backend_reason(backend, "cpu", torch.float64) is None else torch.float32
    views = [torch.randn(n, d, dtype=dtype, requires_grad=True) for _ in range(v)]
    results = []
    for fn, inputs in ((lambda x: AF.nt_xent_multiview(x, 0.2, backend=backend), views),
                       (formula, float64_inputs(*views)), (formula, views)):
        loss = fn(inputs)
        results.append([loss.detach(), *torch.autograd.grad(loss, inputs)])
    assert_close_to_reference(*results, ["loss"] + [f"grad_views[{i}]" for i in range(v)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key_negatives", [False, True])
def test_info_nce_matches_moco(backend, key_negatives):
    """MoCo's own formulation: logits [l_pos | l_neg], label 0 (key_negatives=False); MoCo v3: q @ k.T."""
    require_backend(backend)
    b, k, d = 12, 30, 16
    q = torch.randn(b, d, requires_grad=True)
    key = torch.randn(b, d, requires_grad=True)
    queue = F.normalize(torch.randn(k, d), dim=1)

    def moco(q, key, queue):
        qn, kn = F.normalize(q, dim=1), F.normalize(key, dim=1)
        if key_negatives:
            logits = torch.cat([qn @ kn.T, qn @ queue.T], dim=1) / 0.2
            return F.cross_entropy(logits, torch.arange(b))
        l_pos = (qn * kn).sum(1, keepdim=True)
        logits = torch.cat([l_pos, qn @ queue.T], dim=1) / 0.2
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))

    results = []
    for fn, (qi, ki, queue_i) in (
            (lambda *x: AF.info_nce(*x, 0.2, key_negatives=key_negatives, backend=backend), (q, key, queue)),
            (moco, float64_inputs(q, key, queue)), (moco, (q, key, queue))):
        loss = fn(qi, ki, queue_i)
        results.append([loss.detach(), *torch.autograd.grad(loss, (qi, ki))])
    assert_close_to_reference(*results, ["loss", "grad_query", "grad_key"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_info_nce_unmix_targets(backend):
    """Un-Mix: mixture row i has soft positives {key i: lam_i, key B-1-i: 1-lam_i}."""
    require_backend(backend)
    b, k, d = 7, 11, 8  # odd batch: the middle row pairs with itself
    q = torch.randn(b, d, requires_grad=True)
    key = torch.randn(b, d)
    queue = F.normalize(torch.randn(k, d), dim=1)
    lam = torch.rand(b)
    partner = torch.arange(b - 1, -1, -1)
    idx = torch.stack([torch.arange(b), partner], 1)

    def unmix(q, key, queue, lam):
        qn, kn = F.normalize(q, dim=1), F.normalize(key, dim=1)
        logits = torch.cat([qn @ kn.T, qn @ queue.T], 1) / 0.1
        logp = torch.log_softmax(logits.masked_fill(torch.cat([torch.ones(b, b, dtype=torch.bool)
                                                               .scatter(1, idx, False),
                                                               torch.zeros(b, k, dtype=torch.bool)], 1),
                                                    float("-inf")), dim=1)
        return -(lam * logp[torch.arange(b), torch.arange(b)] + (1 - lam) * logp[torch.arange(b), partner]).mean()

    results = []
    for fn, (qi, ki, queue_i, lam_i) in (
            (lambda q, key, queue, lam: AF.soft_info_nce(q, key, idx, torch.stack([lam, 1 - lam], 1), queue, 0.1,
                                                         backend=backend), (q, key, queue, lam)),
            (unmix, float64_inputs(q, key, queue, lam)), (unmix, (q, key, queue, lam))):
        loss = fn(qi, ki, queue_i, lam_i)
        results.append([loss.detach(), *torch.autograd.grad(loss, qi)])
    assert_close_to_reference(*results, ["loss", "grad_query"])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    require_backend(backend, "cpu", torch.float64)
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, 3], [1, -1], [2, 2], [6, 0], [4, 5]])
    w = torch.rand(5, 2, dtype=torch.float64)
    excl = torch.tensor([[1], [0], [-1], [5], [4]])

    def fn(a, c, t):
        return AF.contrastive_loss(a, c, pos, w, temperature=t, excl_idx=excl, neg_start=2, reduction="none",
                                   backend=backend)

    assert torch.autograd.gradcheck(fn, (a, c, t))


def test_gradcheck_triton_float32_interpreter():
    """Triton has no fp64: check its gradients numerically in fp32 with loose, justified tolerances."""
    require_backend("triton")
    a = torch.randn(6, 5, requires_grad=True)
    c = torch.randn(9, 5, requires_grad=True)
    t = torch.tensor(0.5, requires_grad=True)
    pos = torch.tensor([[0], [3], [2], [8], [1], [5]])

    def fn(a, c, t):
        return AF.contrastive_loss(a, c, pos, temperature=t, neg_start=0, reduction="sum", backend="triton")

    assert torch.autograd.gradcheck(fn, (a, c, t), eps=1e-2, atol=5e-2, rtol=5e-2)


def _op_args(dtype=torch.float32, requires_grad=True):
    a, c, pos, w, excl, neg_start = _case(9, 13, 6, 2, 1, 3, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (a.requires_grad_(requires_grad), c.requires_grad_(requires_grad),
            torch.tensor(2.0, dtype=acc, requires_grad=requires_grad), pos, excl, neg_start)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_cpp_op(dtype):
    require_backend("cpu", "cpu", dtype)
    torch.library.opcheck(torch.ops.augcl.contrastive_lse.default, _op_args(dtype))


def test_opcheck_triton_op():
    require_backend("triton")
    from augcl.ops.contrastive import contrastive_lse_triton

    if torch.cuda.is_available():
        args = tuple(x.cuda().detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
                     for x in _op_args())
        torch.library.opcheck(contrastive_lse_triton, args)
    else:
        # Under TRITON_INTERPRET the interpreter copies real storages, so the kernel cannot run on fake tensors,
        # and Inductor cannot lower a Triton kernel on CPU tensors: only schema and autograd registration here.
        torch.library.opcheck(contrastive_lse_triton, _op_args(),
                              test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_fullgraph(backend):
    require_backend(backend)
    torch._dynamo.reset()
    z1 = torch.randn(16, 8, requires_grad=True)
    z2 = torch.randn(16, 8, requires_grad=True)

    def step(z1, z2):
        return AF.nt_xent(z1, z2, 0.5, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(z1, z2)
    ref = step(z1, z2)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, z1)[0], torch.autograd.grad(ref, z1)[0])


def test_learnable_temperature_gradient():
    """d loss / d log T through a float32 log-temperature (exp'd and cast to float64 on the way in)."""
    log_t = torch.tensor(math.log(0.2), requires_grad=True)
    z1, z2 = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 6, dtype=torch.float64)
    grads = []
    for fn, lt in ((lambda t: AF.nt_xent(z1, z2, t), log_t), (lambda t: _naive_nt_xent(z1, z2, t),
                                                              log_t.detach().double().requires_grad_(True)),
                   (lambda t: _naive_nt_xent(z1, z2, t), log_t)):
        grads.append(torch.autograd.grad(fn(lt.exp().double()), lt)[0])
    assert_close_to_reference(*grads, "grad_log_temperature")


# ----------------------------------------------------------------------------------------- bad input
def test_errors_name_the_argument():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="z2 must have 4 rows"):
        AF.nt_xent(z, torch.randn(5, 8))
    with pytest.raises(ValueError, match="z2 must have 8 features"):
        AF.nt_xent(z, torch.randn(4, 7))
    with pytest.raises(ValueError, match="z1 must be a 2-D"):
        AF.nt_xent(torch.randn(4), z)
    with pytest.raises(TypeError, match="z1 must be float16"):
        AF.nt_xent(torch.ones(4, 8, dtype=torch.long), z)
    with pytest.raises(ValueError, match="z1 is empty"):
        AF.nt_xent(torch.randn(0, 8), torch.randn(0, 8))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        AF.nt_xent(z, z, 0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        AF.nt_xent(z, z, -0.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        AF.nt_xent(z, z, float("nan"))
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        AF.nt_xent(z, z, torch.tensor(-0.1))
    with pytest.raises(ValueError, match="z2 is on meta"):
        AF.nt_xent(z, torch.randn(4, 8, device="meta"))
    with pytest.raises(ValueError, match="queue must have 8 features"):
        AF.info_nce(z, z, torch.randn(10, 5))
    with pytest.raises(ValueError, match="no negatives"):
        AF.info_nce(z, z, None)
    with pytest.raises(IndexError, match="pos_idx has values"):
        AF.contrastive_loss(z, z, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        AF.nt_xent(z, z, reduction="avg")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_named(bad):
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    z2[2, 3] = bad
    with pytest.raises(ValueError, match=r"z2 contains non-finite"):
        AF.nt_xent(z1, z2)
    q = torch.randn(4, 8)
    queue = torch.randn(6, 8)
    queue[0, 0] = bad
    with pytest.raises(ValueError, match="queue contains non-finite"):
        AF.info_nce(q, torch.randn(4, 8), queue)


def test_checks_can_be_disabled():
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    z2[0, 0] = float("nan")
    augcl.set_checks(False)
    try:
        assert torch.isnan(AF.nt_xent(z1, z2))
    finally:
        augcl.set_checks(True)


def test_forced_backend_that_cannot_run_raises_with_reason():
    z = torch.randn(4, 8)
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run: .*"):
        AF.nt_xent(z, z, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        AF.nt_xent(z, z, backend="fast")


# --------------------------------------------------------------------------------------------- GPU
# The same checks on CUDA tensors, for the triton and cuda backends (skipped, with the reason, where no GPU is
# visible; their CPU twins above run everywhere: reference, C++ CPU kernel, Triton under the interpreter).
GPU_SHAPES = SHAPES + [
    (1000, 3000, 128, 1, 1, 0),     # many tiles, realistic D
    (256, 20000, 128, 1, 0, 256),   # MoCo: small batch against a long queue (split sweeps)
    (513, 777, 200, 2, 1, 5),       # D not a multiple of any block
]


@pytest.mark.parametrize("backend", ["triton", "cuda", "reference"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_backend_matches_reference(backend, dtype, shape):
    _check_against_reference(backend, dtype, *shape, device="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_noncontiguous_and_small_temperature(backend, dtype):
    _check_against_reference(backend, dtype, 129, 300, 64, 2, 1, 7, noncontig=True, device="cuda")
    _check_against_reference(backend, dtype, 129, 300, 64, 1, 1, 0, temperature=0.05, device="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_torch_compile_fullgraph(backend):
    require_backend(backend, "cuda")
    torch._dynamo.reset()
    z1 = torch.randn(64, 32, device="cuda", requires_grad=True)
    z2 = torch.randn(64, 32, device="cuda", requires_grad=True)

    def step(z1, z2):
        return AF.nt_xent(z1, z2, 0.5, backend=backend)

    got = torch.compile(step, fullgraph=True)(z1, z2)
    ref = step(z1, z2)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, z1)[0], torch.autograd.grad(ref, z1)[0])


def test_gpu_opcheck_cuda_op():
    require_backend("cuda", "cuda")
    args = tuple(x.cuda().detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
                 for x in _op_args())
    torch.library.opcheck(torch.ops.augcl.contrastive_lse.default, args)


def test_gpu_runs_on_current_stream():
    """Kernels must follow torch.cuda.current_stream(): results on a side stream equal the default stream's."""
    require_backend("triton", "cuda")
    z1 = torch.randn(300, 64, device="cuda")
    z2 = torch.randn(300, 64, device="cuda")
    for backend in ("triton", "cuda"):
        if backend_reason(backend, "cuda") is not None:
            continue
        ref = AF.nt_xent(z1, z2, backend=backend)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            got = AF.nt_xent(z1, z2, backend=backend)
        torch.cuda.current_stream().wait_stream(side)
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1, 2, 3])
def test_queue_path_equals_op_over_keys_and_queue(backend, p):
    """soft_info_nce with a queue (MoCo: keys only as positives) skips building [keys; queue]: one fused pass over
    the queue plus the positive logits (functional._queue_info_nce). It must equal the op over the concatenated
    candidates with neg_start = len(keys): values and the gradients of query, key and a learnable temperature,
    with -1 pads and a key listed twice among a row's positives (it enters the logsumexp once)."""
    require_backend(backend)
    g = torch.Generator().manual_seed(p)
    b, bk, k, d = 6, 5, 9, 8
    dtype = torch.float32 if backend == "triton" else torch.float64
    q = torch.randn(b, d, generator=g, dtype=dtype, requires_grad=True)
    key = torch.randn(bk, d, generator=g, dtype=dtype, requires_grad=True)
    queue = F.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=1)
    idx = torch.randint(0, bk, (b, p), generator=g)
    if p > 1:
        idx[0, 1] = idx[0, 0]  # a duplicate positive
        idx[1, -1] = -1  # a pad
    w = torch.rand(b, p, generator=g, dtype=dtype)
    temp = torch.tensor(0.2, dtype=dtype, requires_grad=True)

    def over_keys_and_queue(q, key, queue, w, temp):
        kn = F.normalize(key, dim=1)  # soft_info_nce normalises keys, not the queue (used as stored)
        cands = torch.cat([kn, queue], 0)
        return AF.contrastive_loss(F.normalize(q, dim=1), cands, idx, w, temperature=temp, neg_start=bk,
                                   normalize=False, backend="reference")

    results = []
    for fn, args in ((lambda q, key, queue, w, temp: AF.soft_info_nce(q, key, idx, w, queue, temp, backend=backend),
                      (q, key, queue, w, temp)),
                     (over_keys_and_queue, float64_inputs(q, key, queue, w, temp)),
                     (over_keys_and_queue, (q, key, queue, w, temp))):
        loss = fn(*args)
        results.append([loss.detach(), *torch.autograd.grad(loss, (args[0], args[1], args[4]))])
    assert_close_to_reference(*results, ["loss", "grad_query", "grad_key", "grad_temperature"])


# ------------------------------------------------------------------------- what broke when it was tried
def test_fp16_rows_with_norm_above_fp16_max_normalise_correctly():
    """F.normalize in fp16 computes the norm in fp16: a row of norm > 65504 got an inf norm and became 0."""
    g = torch.Generator().manual_seed(0)
    signs = torch.randn(2, 8, 16, generator=g).sign()
    mags = 20000 + 10000 * torch.rand(2, 8, 16, generator=g)
    z1, z2 = (signs * mags).half()  # every element fits fp16; every row norm is ~1e5 > 65504
    assert bool((z1.float().norm(dim=1) > 65504).all())
    ref = AF.nt_xent(z1.double(), z2.double(), temperature=0.1)
    # The yardstick is the naive loss in fp16 *from unit rows* (normalised in fp32, rounded once to fp16): the
    # naive fp16 computation from z itself is what this test shows to be wrong (its norms overflow).
    eager = _naive_nt_xent(F.normalize(z1.float(), dim=1).half(), F.normalize(z2.float(), dim=1).half(), 0.1)
    for backend in ("reference", "cpu"):
        if backend_reason(backend, dtype=torch.float16) is not None:
            continue
        got = AF.nt_xent(z1, z2, temperature=0.1, backend=backend)
        assert_close_to_reference(got, ref, eager, f"loss ({backend})")


@pytest.mark.parametrize("call", ["multiview", "contrastive_loss", "info_nce"])
def test_float64_inputs_get_float64_default_weights(call):
    """Default positive weights (1/(V-1), 1/P, 1) were built in float32: a float64 loss lost ~8 digits."""
    g = torch.Generator().manual_seed(0)
    if call == "multiview":
        views = [torch.randn(5, 7, dtype=torch.float64, generator=g) for _ in range(4)]
        got = AF.nt_xent_multiview(views, temperature=0.3, backend="reference")
        z = torch.nn.functional.normalize(torch.cat(views), dim=1)
        s = z @ z.T / 0.3
        s.fill_diagonal_(float("-inf"))
        lse = torch.logsumexp(s, 1)
        same = (torch.arange(20).unsqueeze(1) % 5 == torch.arange(20).unsqueeze(0) % 5) & ~torch.eye(20, dtype=bool)
        want = (lse - (s.masked_fill(~same, 0).sum(1) / 3)).mean()
    elif call == "contrastive_loss":
        a, c = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(9, 6, dtype=torch.float64, generator=g)
        pos = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 4, 8]])
        got = AF.contrastive_loss(a, c, pos, temperature=0.3, backend="reference")
        s = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(c, dim=1).T / 0.3
        want = (torch.logsumexp(s, 1) - s.gather(1, pos).sum(1) / 3).mean()
    else:
        q, k = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(4, 6, dtype=torch.float64, generator=g)
        queue = torch.nn.functional.normalize(torch.randn(7, 6, dtype=torch.float64, generator=g), dim=1)
        got = AF.info_nce(q, k, queue, temperature=0.3, backend="reference")
        qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
        pos = (qn * kn).sum(1, keepdim=True) / 0.3
        want = (torch.logsumexp(torch.cat([pos, qn @ queue.T / 0.3], 1), 1) - pos[:, 0]).mean()
    assert got.dtype == torch.float64
    assert_close_to_reference(got, want, None, "loss")  # float64: the eager formula is the reference


def test_temperature_too_small_is_an_error_not_inf():
    z1, z2 = torch.randn(64, 8), torch.randn(64, 8)
    with pytest.raises(ValueError, match=r"temperature 1e-39 is too small: 1 / temperature overflows"):
        AF.nt_xent(z1, z2, temperature=1e-39)
    # finite 1/temperature and finite row losses (~1e36 each), but their sum over 4096 rows overflows float32:
    # the check runs on the returned (reduced) loss
    big1, big2 = torch.randn(2048, 8), torch.randn(2048, 8)
    assert bool(torch.isfinite(AF.nt_xent(big1, big2, temperature=1e-36, reduction="none")).all())
    with pytest.raises(FloatingPointError, match=r"not finite although every input is.*1 / temperature = 1e\+36"):
        AF.nt_xent(big1, big2, temperature=1e-36)
    with pytest.raises(ValueError, match=r"temperature must be finite and > 0.*got 0 or a value below 2\.94e-39"):
        AF.nt_xent(z1, z2, temperature=torch.tensor(1e-39))
    with pytest.raises(ValueError, match=r"temperature must be finite and > 0, got -0\.5"):
        AF.nt_xent(z1, z2, temperature=torch.tensor(-0.5))


def test_rows_with_nothing_to_contrast_are_named():
    z = torch.randn(3, 4)
    # every row: no positive (-1) and its only candidate excluded
    with pytest.raises(ValueError, match=r"3 row\(s\) have nothing to contrast .*first: row 0"):
        AF.contrastive_loss(z, z[:1], torch.full((3,), -1), excl_idx=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("fn", ["nt_xent", "info_nce", "contrastive_loss", "soft_info_nce"])
def test_meta_tensors_run_the_shape_checks_only(fn):
    """Meta tensors (shape inference) have no values: the value and index checks are skipped, not crashed."""
    m = torch.empty(6, 8, device="meta")
    if fn == "nt_xent":
        out = AF.nt_xent(m, m)
    elif fn == "info_nce":
        out = AF.info_nce(m, m, torch.empty(5, 8, device="meta"))
    elif fn == "contrastive_loss":
        out = AF.contrastive_loss(m, m, torch.zeros(6, dtype=torch.long, device="meta"), reduction="none")
    else:
        out = AF.soft_info_nce(m, m, torch.zeros(6, 2, dtype=torch.long, device="meta"),
                               torch.ones(6, 2, device="meta"), torch.empty(5, 8, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == ((6,) if fn == "contrastive_loss" else ())


def test_use_backend_is_per_thread(monkeypatch):
    """A use_backend context entered in one thread does not change the backend of another."""
    import threading

    from augcl.dispatch import requested_backend, use_backend

    monkeypatch.delenv("AUGCL_BACKEND", raising=False)
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen["other"] = requested_backend()
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with use_backend("reference"):
        entered.set()
        release.wait(10)
        seen["mine"] = requested_backend()
    t.join(10)
    assert seen == {"mine": "reference", "other": "auto"}
