"""solo-learn drop-ins of augcl.compat.solo beyond SimCLR / MoCo: ``swav_loss_func``, ``SinkhornKnopp``,
``byol_loss_func``, ``simsiam_loss_func``.

Two oracles:

* solo's math restated below (``solo_*_math``), run in float64 on the same (upcast) inputs: CI checks parity
  without solo-learn. The restatements follow ``solo/losses/swav.py``, ``solo/utils/sinkhorn_knopp.py``,
  ``solo/losses/byol.py`` and ``solo/losses/simsiam.py`` (solo-learn 1.0.2, unchanged on the main branch).
* solo-learn itself when it is installed (``pip install --no-deps solo-learn==1.0.2`` is enough): those four
  files need only torch and numpy, but ``solo/__init__.py`` imports solo's whole training stack (pytorch-lightning,
  pl_bolts, ...), so they are loaded by path. solo-learn is not a test dependency (its tree is too heavy for CI):
  without it those tests skip, saying why.

Numeric comparisons follow the rule of tests/_tolerance.py with solo as the yardstick: augcl's error against solo's
math in float64 (on the same rounded inputs) is at most twice that of solo's math at the inputs' precision (for
fp16 / bf16 inputs accumulated in fp32 and rounded back, as augcl's own references do; solo's literal fp16
arithmetic only agrees to ~1e-2). Codes are compared as results exp(x) (``assert_close_exp``); where solo's literal
Sinkhorn overflows, augcl's log-domain reference at the scores' precision is the yardstick.
"""
from __future__ import annotations

import importlib.util
import math
import os
import traceback
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from augcl import functional as AF
from augcl.compat import solo as csolo
from augcl.dispatch import REGISTRY
from augcl.reference.sinkhorn import sinkhorn_reference
from _tolerance import assert_close_exp, assert_close_to_reference, float64_inputs
from conftest import finish_rank, run_ranks


# ----------------------------------------------------------------------------------- solo's math, restated
def solo_swav_math(preds, assignments, temperature=0.1):
    """solo's swav_loss_func: over every ordered pair (v1, v2) of distinct views, the cross-entropy of the codes
    assignments[v1] against softmax(preds[v2] / temperature), averaged over rows, then over the pairs."""
    n = len(preds)
    terms = []
    for v1 in range(n):
        for v2 in range(n):
            if v1 != v2:
                log_p = torch.log_softmax(preds[v2] / temperature, dim=1)
                terms.append(-(assignments[v1] * log_p).sum(dim=1).mean())
    return sum(terms) / len(terms)


def solo_sinkhorn_math(Q, num_iters=3, epsilon=0.05, world_size=1, dtype=torch.float64, all_reduce=None):
    """solo's SinkhornKnopp.forward in ``dtype`` (None: Q's own dtype, i.e. solo literally, overflow included).
    ``all_reduce`` sums a tensor over the ranks (solo all-reduces whenever torch.distributed is initialised)."""
    ar = all_reduce or (lambda x: x)
    q = torch.exp(Q.detach().to(dtype or Q.dtype) / epsilon).t()  # [K, B]
    k, b = q.shape
    big_b = b * world_size
    q = q / ar(q.sum())
    for _ in range(num_iters):
        q = q / ar(q.sum(dim=1, keepdim=True)) / k  # per prototype
        q = q / q.sum(dim=0, keepdim=True) / big_b  # per sample
    return (q * big_b).t()


def solo_cosine_math(p, z, simplified=True):
    """mean_i cos(p_i, z_i) with z detached, in solo's two spellings."""
    z = z.detach()
    if simplified:
        return F.cosine_similarity(p, z, dim=-1).mean()
    return (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=1).mean()


# ------------------------------------------------------------------------------------ solo-learn, if present
def _load_real_solo():
    """(namespace of solo's four objects, None) or (None, why not)."""
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError) as exc:
        return None, f"solo-learn cannot be located ({exc})"
    if spec is None or not spec.submodule_search_locations:
        return None, ("solo-learn is not installed (optional: `pip install --no-deps solo-learn==1.0.2` to compare "
                      "against its own functions; the restated math is checked either way)")
    root = list(spec.submodule_search_locations)[0]
    files = {"swav": ("losses/swav.py", "swav_loss_func"), "sk": ("utils/sinkhorn_knopp.py", "SinkhornKnopp"),
             "byol": ("losses/byol.py", "byol_loss_func"), "simsiam": ("losses/simsiam.py", "simsiam_loss_func")}
    found = {}
    for key, (rel, attr) in files.items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            return None, f"the installed `solo` package ({root}) has no {rel}: not solo-learn?"
        try:
            mspec = importlib.util.spec_from_file_location(f"_real_solo_{key}", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
            found[attr] = getattr(module, attr)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot compare", reported in the skip
            return None, f"solo-learn's {rel} does not load on its own ({type(exc).__name__}: {exc})"
    return SimpleNamespace(**found), None


REAL_SOLO, REAL_SOLO_REASON = _load_real_solo()


@pytest.fixture
def real_solo():
    if REAL_SOLO is None:
        pytest.skip(REAL_SOLO_REASON)
    return REAL_SOLO


# ---------------------------------------------------------------------------------------------- inputs
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _scores(b, k, seed=0, dtype=torch.float32, scale=1.0, dim=16):
    """Cosine similarities of normalised features and prototypes (SwAV's scores), times ``scale``; a small
    ``dim`` puts some features close to a prototype (scores near 1, as in a trained model)."""
    g = _gen(seed)
    z = F.normalize(torch.randn(b, dim, generator=g, dtype=torch.float64), dim=1)
    p = F.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    return (scale * (z @ p.t())).to(dtype)


def _codes(b, k, seed, dtype=torch.float64, kind="sinkhorn"):
    """Codes [B, K]: solo's Sinkhorn codes of other scores, a random softmax, or random positive weights whose
    rows do not sum to 1 (the loss is defined for any weights)."""
    if kind == "sinkhorn":
        return solo_sinkhorn_math(_scores(b, k, seed, torch.float64)).to(dtype)
    g = _gen(seed)
    if kind == "softmax":
        return torch.softmax(3 * torch.randn(b, k, generator=g, dtype=torch.float64), dim=1).to(dtype)
    return torch.rand(b, k, generator=g, dtype=torch.float64).to(dtype)


def _views(v, b, k, dtype, seed=0, scale=1.0, kind="sinkhorn"):
    preds = [_scores(b, k, seed + 10 * i, dtype, scale).requires_grad_() for i in range(v)]
    codes = [_codes(b, k, seed + 10 * i + 5, dtype, kind) for i in range(v)]
    return preds, codes


def _value_and_grads(fn, leaves):
    out = fn()
    grads = torch.autograd.grad(out, leaves)
    return out.detach(), grads


def _run(fn, leaves, consts):
    """[fn(leaves, consts), d/d leaves]."""
    out = fn(leaves, consts)
    return [out.detach(), *torch.autograd.grad(out, leaves)]


def _accumulated(tensors):
    """fp16 / bf16 tensors upcast to fp32 (the accumulation dtype of augcl's references), as new leaves where the
    originals require grad; others unchanged."""
    return [t.detach().float().requires_grad_(t.requires_grad) if t.dtype in (torch.float16, torch.bfloat16) else t
            for t in tensors]


def assert_loss_matches(ours, theirs, leaves, consts=(), name="loss"):
    """Value and gradients (w.r.t. ``leaves``) of ``ours(leaves, consts)`` within the tolerance rule, ``theirs``
    the yardstick: the reference is ``theirs`` on float64 copies of every input, the eager computation ``theirs``
    at the inputs' precision (fp16 / bf16 accumulated in fp32, its gradients rounded back to the leaves' dtypes)."""
    leaves, consts = list(leaves), list(consts)
    got = _run(ours, leaves, consts)
    ref = _run(theirs, float64_inputs(*leaves), float64_inputs(*consts))
    eager_leaves = _accumulated(leaves)
    eager = _run(theirs, eager_leaves, _accumulated(consts))
    eager[1:] = [g.to(x.dtype) for g, x in zip(eager[1:], leaves)]
    assert_close_to_reference(got, ref, eager, [name] + [f"grad_{name}[{i}]" for i in range(len(leaves))])


def log_magnitude(scores, epsilon):
    """max |log code| bound: |S| / eps + log(B K) (the codes are exp(S / eps - u - v) with potentials of that size)."""
    return scores.double().abs().max().item() / epsilon + math.log(scores.numel())


# ======================================================================================== swav_loss_func
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [1, 7, 32])
@pytest.mark.parametrize("k", [5, 100])
@pytest.mark.parametrize("v", [2, 3, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.05, 1.0])
def test_swav_loss_matches_solo_math(dtype, b, k, v, temperature):
    preds, codes = _views(v, b, k, dtype, seed=b * 31 + k + v)
    got, g_got = _value_and_grads(lambda: csolo.swav_loss_func(preds, codes, temperature), preds)
    assert got.dtype == dtype and got.shape == ()
    assert all(gg.dtype == p.dtype for gg, p in zip(g_got, preds))
    assert_loss_matches(lambda ps, cs: csolo.swav_loss_func(ps, cs, temperature),
                        lambda ps, cs: solo_swav_math(ps, cs, temperature), preds, codes)


@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swav_loss_many_prototypes(v, b, dtype):
    """K = 3000 prototypes: the C++ scalar kernel (float64) sums w = sum_k t and <t, z> / T with compensation; a
    plain serial sum was ~200 ulps off the float64 reference here (a strict xfail until then)."""
    preds, codes = _views(v, b, 3000, dtype, seed=v + b)
    assert_loss_matches(lambda ps, cs: csolo.swav_loss_func(ps, cs, 0.1), lambda ps, cs: solo_swav_math(ps, cs, 0.1),
                        preds, codes)


@pytest.mark.parametrize("kind", ["softmax", "weights"])
@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swav_loss_any_codes_and_unnormalised_scores(kind, scale, dtype):
    """Codes whose rows need not sum to 1 and scores beyond [-1, 1]: solo's formula still, term by term."""
    preds, codes = _views(3, 9, 40, dtype, seed=3, scale=scale, kind=kind)
    assert_loss_matches(lambda ps, cs: csolo.swav_loss_func(ps, cs, 0.1), lambda ps, cs: solo_swav_math(ps, cs, 0.1),
                        preds, codes)


@pytest.mark.parametrize("v", [2, 4])
def test_swav_loss_gradients_to_assignments_and_tensor_temperature(v):
    """solo does not detach the codes and divides by the temperature: both get their gradients (float64)."""
    preds, codes = _views(v, 6, 11, torch.float64, seed=7, kind="softmax")
    codes = [c.requires_grad_() for c in codes]
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    # float64: solo's math is both the reference and the eager computation
    assert_loss_matches(lambda ls, _: csolo.swav_loss_func(ls[:v], ls[v:2 * v], ls[-1]),
                        lambda ls, _: solo_swav_math(ls[:v], ls[v:2 * v], ls[-1]), preds + codes + [t])
    # float temperature == tensor temperature; an fp32 tensor temperature with fp32 scores
    want = solo_swav_math(preds, codes, 0.2).detach()
    assert_close_to_reference(csolo.swav_loss_func(preds, codes, 0.2), want, None, "loss (float temperature)")
    p32 = [p.detach().float() for p in preds]
    c32 = [c.detach().float() for c in codes]
    assert_close_to_reference(csolo.swav_loss_func(p32, c32, torch.tensor(0.2)),
                              solo_swav_math([p.double() for p in p32], [c.double() for c in c32], 0.2),
                              solo_swav_math(p32, c32, torch.tensor(0.2)), "loss (fp32)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("v", [2, 3])
def test_swav_loss_half_scores(dtype, v):
    """fp16/bf16 scores (and codes): accumulated in fp32, so the loss is the exact math on the given values to
    fp32 accuracy; gradients come back in the scores' dtype. solo's math in fp16 itself only agrees to ~1e-2."""
    preds, codes = _views(v, 8, 100, dtype, seed=v)
    got, g_got = _value_and_grads(lambda: csolo.swav_loss_func(preds, codes, 0.1), preds)
    assert got.dtype == torch.float32
    assert all(gg.dtype == dtype for gg in g_got)
    # the yardstick: solo's math accumulated in fp32, the gradient rounded once to the scores' dtype
    assert_loss_matches(lambda ps, cs: csolo.swav_loss_func(ps, cs, 0.1), lambda ps, cs: solo_swav_math(ps, cs, 0.1),
                        preds, codes)
    if dtype == torch.float16:
        literal = solo_swav_math([p.detach() for p in preds], codes, 0.1)  # solo's arithmetic in fp16
        want = solo_swav_math([p.detach().double() for p in preds], [c.double() for c in codes], 0.1)
        assert_close_to_reference(got, want, literal, "loss against solo's fp16 arithmetic")


def test_swav_loss_mixed_dtypes_promote():
    preds, codes = _views(2, 5, 7, torch.float32, seed=1)
    got = csolo.swav_loss_func([preds[0].half(), preds[1].double()], codes)
    assert got.dtype == torch.float64
    want = solo_swav_math([preds[0].half().double(), preds[1].double()], [c.double() for c in codes])
    assert_close_to_reference(got, want.detach(), None, "loss")  # float64: solo's math is the reference


def test_swav_loss_stacked_views_and_extra_assignments():
    """solo only indexes its arguments by view: a [V, B, K] tensor works, extra assignments are ignored."""
    preds, codes = _views(3, 5, 7, torch.float64, seed=2)
    want = csolo.swav_loss_func(preds, codes)
    # the same computation on the same values whatever the containers: bit for bit
    assert torch.equal(csolo.swav_loss_func(torch.stack(preds), torch.stack(codes)), want)
    assert torch.equal(csolo.swav_loss_func(tuple(preds), codes + [torch.rand(5, 7).double()]), want)


def test_swav_loss_equals_functional_swav_loss():
    """With solo's codes of each view, solo's loss is augcl.functional.swav_loss of the same views (the lightly
    form averages the same pairs)."""
    preds = [_scores(12, 30, seed=s, dtype=torch.float64) for s in range(3)]
    sk = csolo.SinkhornKnopp()
    got = csolo.swav_loss_func(preds, [sk(p) for p in preds], 0.1)
    want = AF.swav_loss(preds, [], temperature=0.1)
    assert_close_to_reference(got, want, None, "loss")  # float64 both: the floor


def test_swav_loss_solo_training_step_shape():
    """solo's SwAV step: codes of each view from SinkhornKnopp (optionally with a queue's scores appended,
    cut back to the batch), then swav_loss_func on the two views."""
    b, k, queue = 16, 50, 24
    preds = [_scores(b, k, seed=s).requires_grad_() for s in (1, 2)]
    queue_scores = [_scores(queue, k, seed=s) for s in (3, 4)]
    sk = csolo.SinkhornKnopp(3, 0.05)
    codes = [sk(torch.cat((p, q)))[:b] for p, q in zip(preds, queue_scores)]
    assert all(not c.requires_grad for c in codes)

    def solo_step(ps, qs):  # solo's codes (in the scores' dtype: no overflow at eps 0.05) and loss
        codes = [solo_sinkhorn_math(torch.cat((p, q)), dtype=None)[:b] for p, q in zip(ps, qs)]
        return solo_swav_math(ps, codes, 0.1)

    assert_loss_matches(lambda ps, qs: csolo.swav_loss_func(ps, [sk(torch.cat((p, q)))[:b] for p, q in zip(ps, qs)],
                                                            0.1), solo_step, preds, queue_scores)


def test_swav_loss_compiles_fullgraph():
    torch._dynamo.reset()
    preds, codes = _views(3, 6, 10, torch.float32, seed=4)

    def step(p0, p1, p2, a0, a1, a2):
        return csolo.swav_loss_func([p0, p1, p2], [a0, a1, a2], 0.1)

    got, g_got = _value_and_grads(lambda: torch.compile(step, fullgraph=True, backend="eager")(*preds, *codes),
                                  preds)
    want, g_want = _value_and_grads(lambda: step(*preds, *codes), preds)
    torch.testing.assert_close(got, want)
    for gg, gw in zip(g_got, g_want):
        torch.testing.assert_close(gg, gw)


# ========================================================================================= SinkhornKnopp
def _require_sinkhorn(backend, scores):
    if backend is None:
        return
    reason = REGISTRY["sinkhorn"].reasons(scores, False)[backend]
    if reason is not None:
        pytest.skip(f"sinkhorn backend {backend!r} cannot run here: {reason}")


@pytest.mark.parametrize("backend", [None, "reference", "cpu"])
@pytest.mark.parametrize("b,k", [(1, 5), (7, 5), (7, 100), (64, 100), (3, 3000)])
@pytest.mark.parametrize("num_iters", [0, 1, 3])
@pytest.mark.parametrize("epsilon", [0.05, 0.1])
def test_sinkhorn_knopp_matches_solo_math(backend, b, k, num_iters, epsilon):
    s = _scores(b, k, seed=b * 13 + k, dtype=torch.float64)
    _require_sinkhorn(backend, s)
    sk = csolo.SinkhornKnopp(num_iters, epsilon, backend=backend)
    got = sk(s)
    assert got.dtype == torch.float64 and got.shape == (b, k) and not got.requires_grad
    mag = log_magnitude(s, epsilon)
    assert_close_exp(got, solo_sinkhorn_math(s, num_iters, epsilon), None, "codes (float64)", log_magnitude=mag)
    # fp32: solo's own arithmetic in fp32 (no overflow at these epsilons) is the yardstick
    s32 = s.float()
    got32 = sk(s32)
    assert got32.dtype == torch.float32
    assert_close_exp(got32, solo_sinkhorn_math(s32, num_iters, epsilon),
                     solo_sinkhorn_math(s32, num_iters, epsilon, dtype=None), "codes (float32)", log_magnitude=mag)


@pytest.mark.parametrize("num_iters", [0, 3])
def test_sinkhorn_knopp_world_size_without_process_group(num_iters):
    """Without torch.distributed, solo computes locally whatever world_size says; world_size only enters its
    factor B = batch * world_size, which cancels after one iteration (num_iters=0 keeps it)."""
    s = _scores(6, 9, seed=5, dtype=torch.float64)
    got = csolo.SinkhornKnopp(num_iters, 0.05, world_size=4)(s)
    assert_close_exp(got, solo_sinkhorn_math(s, num_iters, 0.05, world_size=4), None, "codes",
                     log_magnitude=log_magnitude(s, 0.05))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("epsilon", [0.05, 0.01])
def test_sinkhorn_knopp_half_scores_are_finite_where_solo_overflows(dtype, epsilon):
    """fp16 / bf16 scores: the codes (fp32) are the exact codes of the given values; solo's exp(Q / eps) in
    fp16 overflows for Q / eps > 11 (cosine scores at eps 0.05 already) and returns NaN."""
    s = _scores(32, 100, seed=9, dtype=dtype, dim=3)
    got = csolo.SinkhornKnopp(3, epsilon)(s)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    # solo's fp16 arithmetic overflows: augcl's log-domain reference (fp32 work) is the yardstick
    assert_close_exp(got, solo_sinkhorn_math(s, 3, epsilon), sinkhorn_reference(s, epsilon, 3), "codes",
                     log_magnitude=log_magnitude(s, epsilon))
    torch.testing.assert_close(got.sum(1), torch.ones(32))
    if dtype == torch.float16:
        assert not bool(torch.isfinite(solo_sinkhorn_math(s, 3, epsilon, dtype=None)).all())


@pytest.mark.parametrize("backend", [None, "reference", "cpu"])
def test_sinkhorn_knopp_fp32_small_epsilon(backend):
    """eps 0.01 on cosine scores: Q / eps up to 100 > 88, solo's fp32 exp overflows to inf (NaN codes); ours
    are finite and equal the float64 computation."""
    s = _scores(16, 100, seed=11, dtype=torch.float32, dim=3)
    _require_sinkhorn(backend, s)
    assert float(s.max()) / 0.01 > 88.8
    literal = solo_sinkhorn_math(s, 3, 0.01, dtype=None)
    assert not bool(torch.isfinite(literal).all())
    got = csolo.SinkhornKnopp(3, 0.01, backend=backend)(s)
    assert bool(torch.isfinite(got).all())
    assert_close_exp(got, solo_sinkhorn_math(s, 3, 0.01), sinkhorn_reference(s, 0.01, 3), "codes",
                     log_magnitude=log_magnitude(s, 0.01))


def test_sinkhorn_knopp_module_behaviour():
    sk = csolo.SinkhornKnopp()
    assert isinstance(sk, torch.nn.Module)
    assert (sk.num_iters, sk.epsilon, sk.world_size) == (3, 0.05, 1)
    assert sk.state_dict() == {} and list(sk.parameters()) == []
    assert "num_iters=3, epsilon=0.05, world_size=1" in repr(sk)
    q = _scores(5, 7).requires_grad_()
    out = sk(q)
    assert not out.requires_grad  # no gradient, as solo's @torch.no_grad forward
    torch.testing.assert_close(out, AF.sinkhorn(q.detach(), 0.05, 3))
    sk.epsilon, sk.num_iters = 0.1, 1  # public attributes, as solo's: read at each call
    torch.testing.assert_close(sk(q), AF.sinkhorn(q.detach(), 0.1, 1))
    sk.num_iters = -1
    with pytest.raises(ValueError, match="num_iters must be >= 0"):
        sk(q)


def test_sinkhorn_knopp_compiles_fullgraph():
    torch._dynamo.reset()
    sk = csolo.SinkhornKnopp(3, 0.05)
    q = _scores(9, 20)
    got = torch.compile(lambda x: sk(x), fullgraph=True, backend="eager")(q)
    torch.testing.assert_close(got, sk(q))


# ========================================================================================= BYOL, SimSiam
@pytest.mark.parametrize("simplified", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [1, 9])
def test_byol_and_simsiam_match_solo_math(simplified, dtype, b):
    g = _gen(b)
    p = torch.randn(b, 32, generator=g, dtype=dtype, requires_grad=True)
    z = torch.randn(b, 32, generator=g, dtype=dtype, requires_grad=True)
    for ours, theirs in ((csolo.byol_loss_func, lambda p, z, s: 2 - 2 * solo_cosine_math(p, z, s)),
                         (csolo.simsiam_loss_func, lambda p, z, s: -solo_cosine_math(p, z, s))):
        assert ours(p, z, simplified).dtype == dtype
        assert_loss_matches(lambda ps, zs: ours(ps[0], zs[0], simplified),
                            lambda ps, zs: theirs(ps[0], zs[0], simplified), [p], [z])
        ours(p, z, simplified).backward()
        assert z.grad is None  # the target branch is detached
        p.grad = None


# ============================================================================== against solo-learn itself
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("b", [1, 7])
def test_against_real_solo_swav(real_solo, dtype, v, b):
    preds = [_scores(b, 100, seed=s, dtype=dtype).requires_grad_() for s in range(v)]
    codes = [real_solo.SinkhornKnopp(3, 0.05)(_scores(b, 100, seed=s + 50, dtype=dtype)) for s in range(v)]
    for s in range(v):
        scores = _scores(b, 100, seed=s + 50, dtype=dtype)
        assert_close_exp(csolo.SinkhornKnopp(3, 0.05)(scores), real_solo.SinkhornKnopp(3, 0.05)(scores.double()),
                         codes[s], f"codes[{s}]", log_magnitude=log_magnitude(scores, 0.05))
    assert_loss_matches(lambda ps, cs: csolo.swav_loss_func(ps, cs, 0.1),
                        lambda ps, cs: real_solo.swav_loss_func(ps, cs, 0.1), preds, codes)


@pytest.mark.parametrize("num_iters,epsilon", [(3, 0.05), (1, 0.1), (0, 0.05)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_real_solo_sinkhorn(real_solo, num_iters, epsilon, dtype):
    s = _scores(33, 300, seed=num_iters, dtype=dtype)
    got = csolo.SinkhornKnopp(num_iters, epsilon)(s)
    assert_close_exp(got, real_solo.SinkhornKnopp(num_iters, epsilon)(s.double()),
                     real_solo.SinkhornKnopp(num_iters, epsilon)(s), "codes", log_magnitude=log_magnitude(s, epsilon))


def test_against_real_solo_sinkhorn_overflow(real_solo):
    s = _scores(16, 100, seed=11, dim=3)
    assert not bool(torch.isfinite(real_solo.SinkhornKnopp(3, 0.01)(s)).all())  # solo: inf / NaN
    assert not bool(torch.isfinite(real_solo.SinkhornKnopp(3, 0.05)(s.half())).all())
    for q in (s, s.half()):
        got = csolo.SinkhornKnopp(3, 0.01)(q)
        # solo overflows: augcl's log-domain reference at the scores' precision is the yardstick
        assert_close_exp(got, real_solo.SinkhornKnopp(3, 0.01)(q.double()), sinkhorn_reference(q, 0.01, 3),
                         f"codes ({q.dtype})", log_magnitude=log_magnitude(q, 0.01))


@pytest.mark.parametrize("simplified", [True, False])
def test_against_real_solo_byol_simsiam(real_solo, simplified):
    g = _gen(3)
    p = torch.randn(9, 32, generator=g, requires_grad=True)
    z = torch.randn(9, 32, generator=g)
    for ours, theirs in ((csolo.byol_loss_func, real_solo.byol_loss_func),
                         (csolo.simsiam_loss_func, real_solo.simsiam_loss_func)):
        got, (gp,) = _value_and_grads(lambda: ours(p, z, simplified), [p])
        want, (wp,) = _value_and_grads(lambda: theirs(p, z, simplified), [p])
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same torch ops
        torch.testing.assert_close(gp, wp, rtol=0, atol=0)


# ================================================================================ two gloo ranks (SinkhornKnopp)
WORLD, ROWS, PROTOS = 2, 5, 11


def _global_scores():
    return _scores(WORLD * ROWS, PROTOS, seed=77, dtype=torch.float64)


def _sk_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    result = {}
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=30))

        def all_reduce(x):
            x = x.clone()
            dist.all_reduce(x)
            return x

        local = _global_scores()[rank * ROWS:(rank + 1) * ROWS]
        for num_iters in (0, 3):
            for world_size in (WORLD, 1):  # solo all-reduces whenever the process group is up, either way
                for dtype in (torch.float64, torch.float32):
                    q = local.to(dtype)
                    ours = csolo.SinkhornKnopp(num_iters, 0.05, world_size)(q)
                    # solo's distributed arithmetic in float64 (the reference) and in q's dtype (the yardstick)
                    theirs = [solo_sinkhorn_math(q, num_iters, 0.05, world_size, dtype=dt, all_reduce=all_reduce)
                              for dt in (torch.float64, None)]
                    result[(num_iters, world_size, dtype)] = (ours, *theirs)
        result["eps0.01"] = csolo.SinkhornKnopp(3, 0.01, WORLD)(local.float())
    except BaseException:  # report instead of dying silently
        result["error"] = traceback.format_exc()
    finally:
        finish_rank(result, out_dir, rank)


@pytest.mark.distributed
def test_sinkhorn_knopp_two_ranks(tmp_path):
    results = run_ranks(_sk_worker, WORLD, tmp_path, (str(tmp_path / "init"), str(tmp_path)), 150.0)
    whole = _global_scores()
    mag = log_magnitude(whole, 0.05)
    for rank, res in enumerate(results):
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        for num_iters in (0, 3):
            for world_size in (WORLD, 1):
                for dtype in (torch.float64, torch.float32):
                    ours, theirs, theirs_eager = res[(num_iters, world_size, dtype)]
                    name = f"codes (rank {rank}, {num_iters} iterations, world_size {world_size}, {dtype})"
                    assert_close_exp(ours, theirs, theirs_eager, name, log_magnitude=mag)
                    if world_size == WORLD or num_iters > 0:  # one process on the global batch
                        single = [solo_sinkhorn_math(whole.to(dtype), num_iters, 0.05, dtype=dt)[rows]
                                  for dt in (torch.float64, None)]
                        assert_close_exp(ours, *single, name + " against one process", log_magnitude=mag)
        got = res["eps0.01"]
        assert bool(torch.isfinite(got).all())
        # solo's fp32 arithmetic overflows at eps 0.01: augcl's log-domain reference on one process is the yardstick
        assert_close_exp(got, solo_sinkhorn_math(whole.float(), 3, 0.01)[rows],
                         sinkhorn_reference(whole.float(), 0.01, 3)[rows], "codes (eps 0.01)",
                         log_magnitude=log_magnitude(whole, 0.01))
