"""SwAV's Sinkhorn-Knopp: the log-domain op against the literal float64 reference, its stability,
lightly 1.6.0 SwaVLoss parity, two gloo ranks against one process, argument errors.

Numeric comparisons follow the rule of tests/_tolerance.py. Codes span many orders of magnitude (exp(S / eps)),
so they are compared in the elementwise relative error (``codes_close``), with the package's log-domain
reference at the scores' precision as the yardstick (the literal algorithm in fp32 / fp16 overflows, as shown
below, and is no yardstick)."""
import math
import traceback
from datetime import timedelta

import pytest
import torch

from augcl import functional as AF
from _tolerance import assert_close_exp, assert_close_to_reference, float64_inputs
from conftest import finish_rank, run_ranks
from augcl.dispatch import REGISTRY, BackendUnavailableError
from augcl.nn import SwaVLoss
from augcl.reference.sinkhorn import sinkhorn_naive_reference, sinkhorn_reference


def _scores(b, k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 16, generator=g, dtype=torch.float64), dim=1)
    p = torch.nn.functional.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    return (z @ p.t()).to(dtype)  # cosine similarities in [-1, 1], as SwAV's scores


def codes_close(got, scores, epsilon, iterations, name="codes"):
    """``got``, the codes of ``scores``, within the rule of tests/_tolerance.py for results exp(x): the literal
    algorithm in float64 the reference, the log-domain reference at the scores' precision the yardstick; the
    log-codes are at most |S| / eps + log(B K) in magnitude."""
    assert_close_exp(got, sinkhorn_naive_reference(scores, epsilon, iterations),
                     sinkhorn_reference(scores, epsilon, iterations), name,
                     log_magnitude=scores.double().abs().max().item() / epsilon + math.log(scores.numel()))


# --------------------------------------------------------------------------------------- vs the oracle
def _require(backend, scores):
    reason = REGISTRY["sinkhorn"].reasons(scores, False)[backend]
    if reason is not None:
        pytest.skip(f"sinkhorn backend {backend!r} cannot run here: {reason}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("b", [1, 32, 256, 257])  # typical sizes, and odd ones
@pytest.mark.parametrize("k", [5, 100, 101, 3000])
@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
def test_matches_naive_float64(backend, b, k, iterations):
    s = _scores(b, k, seed=b * 7 + k, dtype=torch.float64)
    _require(backend, s)
    want = sinkhorn_naive_reference(s, 0.05, iterations)
    got = AF.sinkhorn(s, 0.05, iterations, backend=backend)
    assert got.dtype == torch.float64 and got.shape == (b, k)
    # float64: the literal algorithm is the reference, the log-domain one in float64 the same-precision eager form
    codes_close(got, s, 0.05, iterations, "codes (float64)")
    s32 = s.float()
    got32 = AF.sinkhorn(s32, 0.05, iterations, backend=backend)
    assert got32.dtype == torch.float32
    codes_close(got32, s32, 0.05, iterations, "codes (float32)")
    if iterations >= 1:
        # the last step normalises each sample: every row of the codes sums to 1
        assert_close_to_reference(got.sum(1), torch.ones(b, dtype=torch.float64), want.sum(1), "row sums")
    else:
        # no iteration: B * softmax over all entries, i.e. the whole matrix sums to B
        assert_close_to_reference(got.sum(), torch.tensor(float(b), dtype=torch.float64), want.sum(), "sum")


@pytest.mark.parametrize("b,k", [(1, 5), (33, 70), (70, 130)])
@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_naive_float64(b, k, iterations, dtype):
    s = _scores(b, k, seed=b + k, dtype=dtype)
    _require("triton", s)
    got = AF.sinkhorn(s, 0.05, iterations, backend="triton")
    assert got.dtype == torch.float32 and got.shape == (b, k)
    codes_close(got, s, 0.05, iterations)


def test_no_gradient():
    s = _scores(8, 10).requires_grad_()
    q = AF.sinkhorn(s)
    assert not q.requires_grad


def test_backend_dispatch():
    s = _scores(4, 6)
    torch.testing.assert_close(AF.sinkhorn(s, backend="reference"), sinkhorn_reference(s))
    reasons = REGISTRY["sinkhorn"].reasons(s, False)
    assert reasons["reference"] is None
    for name, reason in reasons.items():
        if name != "reference" and reason is not None:
            with pytest.raises(BackendUnavailableError, match=f"backend '{name}' cannot run"):
                AF.sinkhorn(s, backend=name)


# ------------------------------------------------------------------------------------------- stability
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_small_epsilon_fp32_naive_overflows_ours_does_not(backend):
    s = _scores(64, 300, seed=3)
    s[:, 0] = 1.0  # exp(1 / 0.01) = e^100 overflows fp32
    naive32 = sinkhorn_naive_reference(s, 0.01, 3, dtype=torch.float32)
    assert not torch.isfinite(naive32).all()
    _require(backend, s)
    got = AF.sinkhorn(s, 0.01, 3, backend=backend)
    assert torch.isfinite(got).all()
    codes_close(got, s, 0.01, 3)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_fp16_input(backend):
    s = _scores(48, 200, seed=4, dtype=torch.float16)
    s[:, 0] = 1.0
    naive16 = sinkhorn_naive_reference(s, 0.05, 3, dtype=torch.float16)  # e^20 > 65504
    assert not torch.isfinite(naive16).all()
    _require(backend, s)
    got = AF.sinkhorn(s, 0.05, 3, backend=backend)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    codes_close(got, s, 0.05, 3)
    got_small = AF.sinkhorn(s, 0.01, 3, backend=backend)
    assert torch.isfinite(got_small).all()
    codes_close(got_small, s, 0.01, 3, "codes (epsilon 0.01)")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_bf16_input(backend):
    s = _scores(16, 40, seed=5, dtype=torch.bfloat16)
    _require(backend, s)
    got = AF.sinkhorn(s, 0.05, 3, backend=backend)
    assert got.dtype == torch.float32
    codes_close(got, s, 0.05, 3)


# ------------------------------------------------------------------------------------------ lightly parity
def _crops(n_high, n_low, b, k, seed):
    g = torch.Generator().manual_seed(seed)
    high = [torch.randn(b, k, generator=g).tanh().requires_grad_() for _ in range(n_high)]
    low = [torch.randn(b, k, generator=g).tanh().requires_grad_() for _ in range(n_low)]
    return high, low


@pytest.mark.parametrize("n_high,n_low", [(2, 0), (2, 4), (3, 2)])
@pytest.mark.parametrize("queue", [False, True])
@pytest.mark.parametrize("iterations,epsilon,temperature", [(3, 0.05, 0.1), (1, 0.1, 0.2), (0, 0.05, 0.1)])
def test_swav_loss_matches_lightly(n_high, n_low, queue, iterations, epsilon, temperature):
    LightlySwaVLoss = pytest.importorskip("lightly.loss").SwaVLoss

    b, k = 12, 30
    high, low = _crops(n_high, n_low, b, k, seed=n_high * 10 + n_low)
    g = torch.Generator().manual_seed(99)
    queue_outputs = [torch.randn(20, k, generator=g).tanh() for _ in range(n_high)] if queue else None

    theirs = LightlySwaVLoss(temperature, iterations, epsilon)
    ours = SwaVLoss(temperature, iterations, epsilon)

    def value_and_grads(fn, high, low, queue):
        value = fn(high, low, queue)
        return [value.detach(), *torch.autograd.grad(value.sum(), high + low)]

    # lightly is the yardstick (tests/_tolerance.py): its float64 result the reference, its float32 one the eager
    want = value_and_grads(theirs, high, low, queue_outputs)
    ref = value_and_grads(theirs, float64_inputs(*high), float64_inputs(*low),
                          None if queue is False else float64_inputs(*queue_outputs))
    got = value_and_grads(ours, high, low, queue_outputs)
    assert got[0].shape == want[0].shape == (1,)
    names = ["loss"] + [f"grad_crop{i}" for i in range(len(high + low))]
    assert_close_to_reference(got, ref, want, names)

    for backend in ("reference", None):
        fn = AF.swav_loss(high, low, queue_outputs, temperature=temperature, sinkhorn_iterations=iterations,
                          sinkhorn_epsilon=epsilon, backend=backend)
        assert fn.dim() == 0
        assert_close_to_reference(fn.reshape(1), ref[0], want[0], f"loss (functional, backend {backend})")


def test_swav_loss_fp16_small_epsilon_finite():
    high, low = _crops(2, 2, 16, 50, seed=1)
    high = [h.detach().half().requires_grad_() for h in high]
    low = [x.detach().half().requires_grad_() for x in low]
    loss = AF.swav_loss(high, low, sinkhorn_epsilon=0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in high + low)


# ---------------------------------------------------------------------------------- distributed (gloo)
WORLD, B, K = 2, 5, 37
JOIN_DEADLINE_S = 120.0


def _global_scores():
    return _scores(WORLD * B, K, seed=11)


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=30))
        s = _global_scores()[rank * B:(rank + 1) * B]
        for it in (0, 1, 3):
            result[f"codes{it}"] = AF.sinkhorn(s, 0.05, it, distributed=True)
        result["codes_eps"] = AF.sinkhorn(s, 0.02, 3, distributed=True)
        result["local"] = AF.sinkhorn(s, 0.05, 3, distributed=False)
        result["declined"] = {}
        for name in ("cpu", "triton"):
            try:
                AF.sinkhorn(s, 0.05, 3, distributed=True, backend=name)
                result["declined"][name] = None
            except BackendUnavailableError as exc:
                result["declined"][name] = str(exc)
    except BaseException:  # noqa: BLE001 - reported to the parent
        result["error"] = traceback.format_exc()
    finally:
        finish_rank(result, out_dir, rank)


@pytest.mark.distributed
def test_distributed_matches_concatenated_batch(tmp_path):
    results = run_ranks(_worker, WORLD, tmp_path, (str(tmp_path / "init"), str(tmp_path)), JOIN_DEADLINE_S)

    s = _global_scores()
    for it in (0, 1, 3):
        got = torch.cat([res[f"codes{it}"] for res in results])
        codes_close(got, s, 0.05, it, f"codes ({it} iterations)")
    codes_close(torch.cat([res["codes_eps"] for res in results]), s, 0.02, 3, "codes (epsilon 0.02)")
    for res in results:
        for name, msg in res["declined"].items():
            assert msg is not None and "more than one rank" in msg, (name, msg)
    # distributed=False stays local
    torch.testing.assert_close(results[1]["local"], AF.sinkhorn(s[B:], 0.05, 3))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(scores=torch.zeros(3)), ValueError, "scores must be a 2-D"),
    (dict(scores=torch.zeros(0, 4)), ValueError, "scores is empty"),
    (dict(scores=torch.zeros(3, 0)), ValueError, "scores is empty"),
    (dict(scores=torch.zeros(3, 4, dtype=torch.long)), TypeError, "scores must be float16"),
    (dict(scores=[[1.0]]), TypeError, "scores must be a torch.Tensor"),
    (dict(scores=torch.tensor([[1.0, float("nan")]])), ValueError, "scores contains non-finite"),
    (dict(epsilon=0.0), ValueError, "epsilon must be finite and > 0"),
    (dict(epsilon=-1.0), ValueError, "epsilon must be finite and > 0"),
    (dict(epsilon=float("inf")), ValueError, "epsilon must be finite and > 0"),
    (dict(epsilon="0.05"), TypeError, "epsilon must be a float"),
    (dict(iterations=-1), ValueError, "iterations must be >= 0"),
    (dict(iterations=1.5), TypeError, "iterations must be an int"),
    (dict(iterations=True), TypeError, "iterations must be an int"),
])
def test_sinkhorn_errors_name_the_argument(kwargs, exc, match):
    args = dict(scores=torch.randn(3, 4), epsilon=0.05, iterations=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        AF.sinkhorn(args.pop("scores"), **args)


def test_swav_loss_errors_name_the_argument():
    h = [torch.randn(4, 6), torch.randn(4, 6)]
    with pytest.raises(ValueError, match="high_resolution_outputs must hold"):
        AF.swav_loss([], h)
    with pytest.raises(ValueError, match=r"low_resolution_outputs\[0\] has shape"):
        AF.swav_loss(h, [torch.randn(3, 6)])
    with pytest.raises(ValueError, match="at least two crops"):
        AF.swav_loss(h[:1], [])
    with pytest.raises(ValueError, match="queue_outputs must hold one tensor"):
        AF.swav_loss(h, [], [torch.randn(5, 6)])
    with pytest.raises(ValueError, match=r"queue_outputs\[1\] must have 6 columns"):
        AF.swav_loss(h, [], [torch.randn(5, 6), torch.randn(5, 7)])
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        AF.swav_loss(h, [], temperature=0.0)
    with pytest.raises(ValueError, match="sinkhorn_epsilon must be finite and > 0"):
        AF.swav_loss(h, [], sinkhorn_epsilon=-0.1)
    with pytest.raises(ValueError, match="sinkhorn_iterations must be >= 0"):
        AF.swav_loss(h, [], sinkhorn_iterations=-2)


# -------------------------------------------------------------------------------------------- prototypes
@pytest.mark.parametrize("n_prototypes", [7, [7, 5]])
def test_prototypes_match_lightly(n_prototypes):
    LightlySwaVPrototypes = pytest.importorskip("lightly.models.modules").SwaVPrototypes

    from augcl.nn import SwaVPrototypes

    torch.manual_seed(0)
    theirs = LightlySwaVPrototypes(6, n_prototypes, n_steps_frozen_prototypes=3)
    torch.manual_seed(0)
    ours = SwaVPrototypes(6, n_prototypes, n_steps_frozen_prototypes=3)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="provide the `step` argument"):
        ours(x)
    for step in (0, 2, 3, 10):
        a, b = ours(x, step), theirs(x, step)
        for o, t in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(o, t)
        assert all(p.requires_grad == (step >= 3) for p in ours.parameters())
    ours.normalize()
    theirs.normalize()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    assert torch.allclose(ours.heads[0].weight.norm(dim=1), torch.ones(7))


def test_prototypes_normalize_on_forward():
    from augcl.nn import SwaVPrototypes

    protos = SwaVPrototypes(6, 9, normalize_on_forward=True)
    with torch.no_grad():
        protos.heads[0].weight.mul_(3.0)
    protos.eval()
    protos(torch.randn(2, 6))
    assert not torch.allclose(protos.heads[0].weight.norm(dim=1), torch.ones(9))  # eval: untouched
    protos.train()
    protos(torch.randn(2, 6))
    torch.testing.assert_close(protos.heads[0].weight.norm(dim=1), torch.ones(9))


# ------------------------------------------------------------------------------------------------ the queue
@pytest.mark.parametrize("iterations", [0, 3])
def test_swav_loss_queue_matches_swav_order(iterations):
    """facebookresearch/swav puts the queue's scores *before* the batch and keeps the codes' last B rows;
    lightly (and augcl) append the queue and keep the first B. Sinkhorn is equivariant under row permutations
    (every normalisation is over all rows or within one row), so both give the same codes: checked here in
    float64 against SwAV's order written out, with a queue longer than the batch."""
    b, bq, k = 6, 15, 20
    high, low = _crops(2, 1, b, k, seed=21)
    high = [h.detach().double().requires_grad_() for h in high]
    low = [x.detach().double().requires_grad_() for x in low]
    g = torch.Generator().manual_seed(5)
    queue = [torch.randn(bq, k, generator=g, dtype=torch.float64).tanh() for _ in range(2)]
    crops = high + low
    want = 0.0
    for i in range(2):
        q = sinkhorn_naive_reference(torch.cat([queue[i], high[i].detach()]), 0.05, iterations)[-b:]
        sub = sum(-torch.mean(torch.sum(q * torch.log_softmax(z / 0.1, dim=1), dim=1))
                  for v, z in enumerate(crops) if v != i)
        want = want + sub / (len(crops) - 1)
    want = want / 2
    got = AF.swav_loss(high, low, queue, sinkhorn_iterations=iterations)
    # float64: SwAV's order written out is both the reference and the eager computation
    assert_close_to_reference([got.detach(), *torch.autograd.grad(got, crops)],
                              [want.detach(), *torch.autograd.grad(want, crops)], None,
                              ["loss"] + [f"grad_crop{i}" for i in range(len(crops))])
