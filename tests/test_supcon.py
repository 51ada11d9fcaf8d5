"""The fused supervised contrastive loss (augcl.functional.supcon) against its dense float64 reference.

* values and gradients on every backend that runs here (cpu, reference, and triton under the interpreter), over
  tiny, odd, larger, non-contiguous and batched shapes, fp16 / bf16 (where the backend has it) / fp32 / fp64,
  with anchors that have no positive; the one tolerance rule of tests/_tolerance.py (error at most 2x that of the
  dense reference computed at the same precision, plus a floor);
* float64 gradcheck, torch.compile(fullgraph=True), double backward refused, meta tensors;
* the batched form equals a loop over its groups; labels are only compared for equality;
* pytorch-metric-learning 2.9.0's SupConLoss (installed) against augcl.compat.pml.SupConLoss; solo-learn's
  two-view simclr_loss_func is supcon;
* CPU memory of a forward + backward at N = 32768, D = 128, 10 classes; two gloo processes with
  gather_distributed against one process.
"""
import json
import subprocess
import sys
import textwrap
import traceback
from datetime import timedelta

import pytest
import torch

import augcl
from augcl import functional as AF
from augcl.compat import pml as cpml
from augcl.compat import solo as csolo
from augcl.functional.supcon import class_ids
from augcl.reference.supcon import supcon_reference, supcon_rows_reference
from _tolerance import assert_close_to_reference
from conftest import finish_rank, require_backend, run_ranks

CPU_BACKENDS = ["cpu", "reference", "triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (rows N, width D, classes); the labels always add one anchor without positive (a label of its own)
SHAPES = [(2, 3, 1), (5, 1, 2), (37, 13, 4), (300, 64, 10)]


def _labels(n, classes, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, classes, (*lead, n), generator=g)
    if n > 2:
        y[..., 0] = classes + 7  # an anchor without positive (and a candidate for everyone else)
    return y


def _features(shape, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    if noncontig:  # a transposed view: the rows are strided
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g).transpose(-1, -2)
    else:
        x = torch.randn(*shape, generator=g)
    return x.to(dtype).requires_grad_(True)


def _skip_unless_runs(backend, dtype):
    require_backend(backend, "cpu", dtype)


def _run(fn, x, t=None):
    leaves = [x] if t is None else [x, t]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    return [out.detach(), *grads]


def check_against_reference(backend, dtype, x, labels, temperature=0.1, reduction="mean", normalize=True):
    """augcl at x's precision vs the float64 reference of the same (rounded) inputs, with the reference computed
    at x's precision as the yardstick (None for float64: the floor rule)."""
    def ours(x):
        return AF.supcon(x, labels, temperature, reduction=reduction, normalize=normalize, backend=backend)

    def ref(x):
        return supcon_reference(x, labels, temperature, reduction=reduction, normalize=normalize)

    got = _run(ours, x)
    want = _run(ref, x.detach().double().requires_grad_(True))
    eager = None if dtype == torch.float64 else _run(ref, x.detach().clone().requires_grad_(True))
    # the loss is a difference of logits of magnitude 1 / temperature, its gradient a difference of two
    # averages of rows scaled alike: their rounding is relative to those terms (an exact 0 when they cancel).
    # fp16 / bf16 gradients use most of K = 2 (up to 0.93 of the bound over 15 seeds of these shapes, 2026-12-05):
    # the gradient reaching the fp16 rows is the sum of two fp16-rounded parts (the fused op's and the class-sum
    # term's), the dense reference's is rounded once. fp32 uses under 0.08 of it, fp32 losses under 0.03: the
    # class-sum form <z_i, S - z_i> loses nothing measurable to cancellation, even at ~700 positives a row.
    assert_close_to_reference(got, want, eager, ["loss", "grad_features"],
                              scale=[1.0 / temperature, _grad_scale(x, labels, temperature, reduction, normalize)])
    return got


def _grad_scale(x, labels, temperature, reduction, normalize):
    """Magnitude of each of the two terms of d loss / d x_i: (1 / temperature) times a weighted average of unit
    rows, divided by |x_i| (the normalisation), and by the number of anchors averaged over (reduction="mean")."""
    norms = x.detach().double().norm(dim=-1)
    size = 1.0 / float(norms.min()) if normalize else float(norms.max())
    count = 1.0
    if reduction == "mean":
        count = float((supcon_rows_reference(x.detach().double(), labels)[1] > 0).sum())
    return size / temperature / count


# --------------------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, dtype, shape):
    _skip_unless_runs(backend, dtype)
    n, d, classes = shape
    check_against_reference(backend, dtype, _features((n, d), dtype), _labels(n, classes))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_noncontiguous_batched_and_per_row(backend, dtype):
    _skip_unless_runs(backend, dtype)
    x = _features((3, 23, 9), dtype, seed=3, noncontig=True)
    assert not x.is_contiguous()
    y = _labels(23, 3, seed=3, lead=(3,))
    for reduction in ("mean", "none"):
        check_against_reference(backend, dtype, x, y, temperature=0.2, reduction=reduction)
    check_against_reference(backend, dtype, _features((41, 17), dtype, noncontig=True), _labels(41, 5), 0.07,
                            reduction="none")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_many_positives_per_row(backend):
    """The class-sum form where every row has hundreds of positives (the regime it is built for): 2000 rows over
    3 classes, fp32, against the dense reference of the same inputs."""
    _skip_unless_runs(backend, torch.float32)
    check_against_reference(backend, torch.float32, _features((2000, 32), torch.float32, seed=5),
                            torch.randint(0, 3, (2000,), generator=torch.Generator().manual_seed(5)), 0.05)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_unnormalized_and_learnable_temperature(backend):
    _skip_unless_runs(backend, torch.float64)
    x = _features((19, 6), torch.float64, seed=7)
    y = _labels(19, 3, seed=7)
    check_against_reference(backend, torch.float64, x * 0.3, y, normalize=False)
    t = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    got = _run(lambda x, t: AF.supcon(x, y, t, backend=backend), x, t)
    want = _run(lambda x, t: supcon_reference(x, y, t), x.detach().clone().requires_grad_(True),
                t.detach().clone().requires_grad_(True))
    assert_close_to_reference(got, want, None, ["loss", "grad_features", "grad_temperature"], scale=[4.0, None, None])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    _skip_unless_runs(backend, torch.float64)
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    xb = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2])  # label 3: an anchor without positive
    yb = torch.tensor([[0, 0, 1, 1, 2, 3], [5, 5, 5, 4, 4, 6]])
    assert torch.autograd.gradcheck(lambda x, t: AF.supcon(x, y, t, reduction="none", backend=backend), (x, t))
    assert torch.autograd.gradcheck(lambda x, t: AF.supcon(x, yb, t, backend=backend), (xb, t))


def test_gradcheck_triton_float32_interpreter():
    """Triton has no fp64: its gradients checked numerically in fp32, with the loose tolerances fp32 central
    differences need (as tests/test_contrastive.py does for the op)."""
    _skip_unless_runs("triton", torch.float32)
    x = torch.randn(7, 5, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda x: AF.supcon(x, y, 0.5, reduction="sum", backend="triton"), (x,),
                                    eps=1e-2, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_torch_compile_fullgraph(backend):
    """No graph break (the class ids are a sort, no torch.unique), and the compiled values and gradients are the
    eager ones."""
    _skip_unless_runs(backend, torch.float32)
    torch._dynamo.reset()
    x, xb = _features((20, 8), torch.float32), _features((3, 10, 8), torch.float32, seed=1)
    y, yb = _labels(20, 4), _labels(10, 3, lead=(3,))
    t = torch.tensor(0.2, requires_grad=True)

    def step(x, xb, t):
        return AF.supcon(x, y, t, backend=backend) + AF.supcon(xb, yb, t, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    out = compiled(x, xb, t)
    ref = step(x, xb, t)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, [x, xb, t]), torch.autograd.grad(ref, [x, xb, t])):
        torch.testing.assert_close(a, b)


def test_double_backward_raises():
    _skip_unless_runs("cpu", torch.float64)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    (g,) = torch.autograd.grad(AF.supcon(x, y, backend="cpu"), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the contrastive op is not supported"):
        g.sum().backward()


def test_meta_tensors_give_shapes():
    out = AF.supcon(torch.empty(6, 4, device="meta"), torch.zeros(6, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and out.shape == ()
    out = AF.supcon(torch.empty(2, 6, 4, device="meta"), torch.zeros(2, 6, dtype=torch.long, device="meta"),
                    reduction="none")
    assert out.device.type == "meta" and out.shape == (2, 6)


# ------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_batched_equals_loop_over_groups(backend):
    """G groups in one call = G calls: the per-anchor losses and gradients bitwise, the mean over the anchors with
    a positive of every group together (groups share label values, which must not make them positives)."""
    _skip_unless_runs(backend, torch.float32)
    x = _features((4, 15, 8), torch.float32, seed=2)
    y = _labels(15, 3, seed=2, lead=(4,))
    y[3] = torch.arange(15)  # a group in which no anchor has a positive
    rows = AF.supcon(x, y, 0.2, reduction="none", backend=backend)
    (g_rows,) = torch.autograd.grad(rows.sum(), x)
    loop = torch.stack([AF.supcon(x[g], y[g], 0.2, reduction="none", backend=backend) for g in range(4)])
    (g_loop,) = torch.autograd.grad(loop.sum(), x)
    assert torch.equal(rows, loop) and torch.equal(g_rows, g_loop)
    mean = AF.supcon(x, y, 0.2, backend=backend)
    num_pos = supcon_rows_reference(x.detach(), y)[1]
    torch.testing.assert_close(mean, loop.sum() / (num_pos > 0).sum(), rtol=1e-6, atol=0)
    assert bool((rows[3] == 0).all())


def test_labels_are_only_compared():
    """Any integer dtype and any values (negative, huge): only equality matters, not order or magnitude."""
    x = _features((30, 6), torch.float64, seed=4)
    y = _labels(30, 5, seed=4)
    want = AF.supcon(x, y, backend="reference")
    remap = torch.tensor([2 ** 62, -5, 0, 7, -(2 ** 40), 3, 1, 9, 11, 12, 13, 14, 99])
    for labels in (remap[y], y.to(torch.int8), y.to(torch.uint8), y.to(torch.int32), 3 - y):
        torch.testing.assert_close(AF.supcon(x, labels, backend="reference"), want, rtol=1e-13, atol=0)


def test_class_ids():
    y = torch.tensor([[5, -1, 5, 3, -1, 9], [0, 0, 0, 1, 2, 1]])
    ids = class_ids(y)
    same = ids.unsqueeze(2) == ids.unsqueeze(1)
    assert torch.equal(same, y.unsqueeze(2) == y.unsqueeze(1))  # equal ids exactly for equal labels of a group
    assert not bool(set(ids[0].tolist()) & set(ids[1].tolist()))  # never shared across groups
    assert int(ids.min()) >= 0 and int(ids.max()) < y.numel()
    nan = class_ids(torch.tensor([[1.0, float("nan"), float("nan"), 1.0]]))[0]
    assert nan[0] == nan[3] and len({nan[1].item(), nan[2].item(), nan[0].item()}) == 3  # NaN equals nothing


def test_rows_without_positive_are_left_out():
    x = _features((6, 4), torch.float64)
    y = torch.tensor([0, 0, 1, 2, 3, 3])  # rows 2 and 3 have no positive
    rows = AF.supcon(x, y, reduction="none")
    assert rows[2] == 0 and rows[3] == 0 and bool((rows[[0, 1, 4, 5]] > 0).all())
    torch.testing.assert_close(AF.supcon(x, y), rows.sum() / 4, rtol=1e-14, atol=0)
    torch.testing.assert_close(AF.supcon(x, y, reduction="sum"), rows.sum(), rtol=1e-14, atol=0)
    # they are still negatives of the others: moving row 2 changes the loss of row 0
    x2 = x.detach().clone()
    x2[2] = -x2[2]
    assert AF.supcon(x2, y, reduction="none")[0] != rows[0]


def test_nn_module_is_the_function():
    x, y = _features((12, 5), torch.float32), _labels(12, 3)
    t = torch.nn.Parameter(torch.tensor(0.3))
    module = augcl.nn.SupConLoss(t, reduction="none", backend="reference")
    assert torch.equal(module(x, y), AF.supcon(x, y, t, reduction="none", backend="reference"))
    assert "temperature" in repr(module)


# --------------------------------------------------------------------------------- pytorch-metric-learning
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def _pml_pair(temperature=0.1, backend=None):
    return cpml.SupConLoss(temperature, backend=backend), pml_losses.SupConLoss(temperature=temperature)


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_pml_values_and_gradients(backend, temperature):
    """fp32 against pml in fp32, both against pml in fp64 (the tolerance rule with pml's own fp32 error as the
    yardstick), and fp64 against pml in fp64; the labels leave rows without positive."""
    ours, theirs = _pml_pair(temperature, backend)
    emb = _features((40, 16), torch.float32, seed=8)
    y = _labels(40, 6, seed=8)
    y[1] = 1000  # a second row without positive
    got = _run(lambda e: ours(e, y), emb)
    pml32 = _run(lambda e: theirs(e, y), emb.detach().clone().requires_grad_(True))
    pml64 = _run(lambda e: theirs(e, y), emb.detach().double().requires_grad_(True))
    assert_close_to_reference(got, pml64, pml32, ["loss", "grad_embeddings"], scale=[1 / temperature, None])
    got64 = _run(lambda e: ours(e, y), emb.detach().double().requires_grad_(True))
    assert_close_to_reference(got64, pml64, None, ["loss", "grad_embeddings"], scale=[1 / temperature, None])


@pytest.mark.parametrize("same_labels_object", [False, True])
def test_pml_reference_set(same_labels_object):
    ours, theirs = _pml_pair(0.2)
    emb = _features((20, 8), torch.float64, seed=9)
    ref = _features((30 if not same_labels_object else 20, 8), torch.float64, seed=10)
    y = _labels(20, 4, seed=9)
    ry = y if same_labels_object else _labels(30, 5, seed=10)
    got = _run(lambda e, r: ours(e, y, ref_emb=r, ref_labels=ry), emb, ref)
    want = _run(lambda e, r: theirs(e, y, ref_emb=r, ref_labels=ry), emb.detach().clone().requires_grad_(True),
                ref.detach().clone().requires_grad_(True))
    assert_close_to_reference(got, want, None, ["loss", "grad_embeddings", "grad_ref_emb"], scale=[5.0, None, None])


def test_pml_zero_loss_cases_and_self_supervised_wrapper():
    ours, theirs = _pml_pair()
    emb = _features((6, 4), torch.float32)
    for labels in (torch.arange(6), torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 1, 2, 3, 4])[:2],
                   torch.tensor([0.0, 0.0, 1.5, 1.5, 2.0, 9.0])):
        e = emb[:labels.shape[0]]
        got, want = ours(e, labels), theirs(e, labels)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-7)
    assert ours(emb, torch.arange(6)).item() == 0.0
    a, b = _features((8, 5), torch.float32, seed=1), _features((8, 5), torch.float32, seed=2)
    got = pml_losses.SelfSupervisedLoss(ours)(a, b)
    want = pml_losses.SelfSupervisedLoss(theirs)(a, b)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert type(ours).__name__ in pml_losses.SelfSupervisedLoss.supported_losses()


def test_pml_semantics_equal_supcon_when_every_row_has_a_positive():
    """pml's reducer keeps the rows whose loss is > 0, i.e. those with a positive: then it is supcon's mean."""
    emb = _features((24, 6), torch.float64, seed=11)
    y = torch.arange(12).repeat(2)
    torch.testing.assert_close(cpml.SupConLoss(0.3)(emb, y), AF.supcon(emb, y, 0.3), rtol=1e-13, atol=0)


# --------------------------------------------------------------------------------------------- solo-learn
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_solo_two_views_is_supcon(backend):
    """With two views of each id solo-learn's simclr_loss_func is SupCon over the ids: the same computation."""
    _skip_unless_runs(backend, torch.float32)
    z = _features((16, 8), torch.float32, seed=12)
    idx = torch.arange(8).repeat(2)[torch.randperm(16, generator=torch.Generator().manual_seed(12))]
    got = _run(lambda z: csolo.simclr_loss_func(z, idx, 0.2, backend=backend), z)
    want = _run(lambda z: AF.supcon(z, idx, 0.2, backend=backend), z)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------- memory
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, augcl
    sys.path.insert(0, sys.argv[3])
    import harness as H
    torch.manual_seed(0)
    n, d = int(sys.argv[1]), int(sys.argv[2])
    augcl.set_checks(False)
    x = torch.randn(n, d, requires_grad=True)
    x.grad = torch.zeros_like(x)  # a training step holds the input gradient anyway: not counted
    y = torch.randint(0, 10, (n,))
    augcl.functional.supcon(x[:64], y[:64], backend="cpu").backward()  # one-time costs (thread pools) first

    def step():
        loss = augcl.functional.supcon(x, y, 0.1, backend="cpu")
        loss.backward()
        assert torch.isfinite(loss)

    mem = H.cpu_peak_extra_bytes(step)
    print(json.dumps({"extra": mem["extra"], "peak": mem["peak"], "method": mem["method"]}))
    """
)


@pytest.mark.slow
def test_cpu_memory_n32768_d128_10_classes():
    """Forward + backward at N = 32768, D = 128 over 10 classes (~3277 positives a row) needs well under 1 GiB
    beyond the inputs and their gradient; the dense [N, N] fp32 logits alone are 4 GiB. Measured in a fresh
    process as benchmarks/harness.py does (kernel RSS high-water mark reset after the inputs are built)."""
    require_backend("cpu")
    import os

    bench_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "32768", "128", bench_dir], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    if mem["extra"] is None:
        pytest.skip(f"the RSS high-water mark cannot be reset here ({mem['method']})")
    extra_mib = mem["extra"] / 2 ** 20
    print(f"supcon N=32768 D=128 10 classes fp32 fwd+bwd, cpu backend: peak extra {extra_mib:.1f} MiB")
    assert extra_mib < 1024, f"{extra_mib:.0f} MiB"


# -------------------------------------------------------------------------------------------- distributed
WORLD, B, D = 2, 5, 6
# rank 0 holds labels [0, 1, 2, 3, 4], rank 1 [0, 1, 2, 5, 5]: labels 0-2 have their positive on the other rank
# only, 3 and 4 none at all, 5 a local one.
GLOBAL_LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 5, 5])


def _worker(rank, init_file, data_path, out_dir):
    import torch.distributed as dist

    result = {}
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=30))
        x_all = torch.load(data_path)
        sl = slice(rank * B, (rank + 1) * B)
        for backend in (None, "reference"):
            for reduction in ("none", "mean"):
                x = x_all[sl].clone().requires_grad_(True)
                out = AF.supcon(x, GLOBAL_LABELS[sl], 0.3, reduction=reduction, gather_distributed=True,
                                backend=backend)
                out.sum().backward()
                result[f"{backend}/{reduction}"] = (out.detach(), x.grad)
    except BaseException:  # report instead of dying silently
        result["error"] = traceback.format_exc()
    finally:
        finish_rank(result, out_dir, rank)


@pytest.mark.distributed
def test_gather_distributed_matches_one_process(tmp_path):
    """Rank r's per-anchor losses are rows [r*B, (r+1)*B) of the one-process loss of the global batch; its
    gradient is that of the sum over ranks of the rank losses (the gather's backward all-reduces)."""
    x_all = torch.randn(WORLD * B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    torch.save(x_all, str(tmp_path / "x.pt"))
    results = run_ranks(_worker, WORLD, tmp_path, (str(tmp_path / "init"), str(tmp_path / "x.pt"), str(tmp_path)))
    x = x_all.clone().requires_grad_(True)
    rows, num_pos = supcon_rows_reference(x, GLOBAL_LABELS, 0.3)
    (g_rows,) = torch.autograd.grad(rows.sum(), x, retain_graph=True)
    has = num_pos > 0
    rank_means = [rows[r * B:(r + 1) * B][has[r * B:(r + 1) * B]].mean() for r in range(WORLD)]
    (g_means,) = torch.autograd.grad(sum(rank_means), x)
    close = dict(rtol=1e-10, atol=1e-12)
    for backend in (None, "reference"):
        for r, res in enumerate(results):
            sl = slice(r * B, (r + 1) * B)
            out, grad = res[f"{backend}/none"]
            torch.testing.assert_close(out, rows[sl].detach(), **close)
            torch.testing.assert_close(grad, g_rows[sl], **close)
            out, grad = res[f"{backend}/mean"]
            torch.testing.assert_close(out, rank_means[r].detach(), **close)
            torch.testing.assert_close(grad, g_means[sl], **close)


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_matches_reference(backend, dtype):
    require_backend(backend, "cuda", dtype)
    x = _features((1000, 128), dtype).detach().cuda().requires_grad_(True)
    y = _labels(1000, 10).cuda()

    def ours(x):
        return AF.supcon(x, y, 0.1, backend=backend)

    got = _run(ours, x)
    want = _run(lambda x: supcon_reference(x, y, 0.1), x.detach().double().requires_grad_(True))
    eager = _run(lambda x: supcon_reference(x, y, 0.1), x.detach().clone().requires_grad_(True))
    assert_close_to_reference(got, want, eager, ["loss", "grad_features"], scale=[10.0, None])
