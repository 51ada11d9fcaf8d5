"""Bad input to the Hallucinator entry points: augcl.functional's hallucinate and the MoCo / SimCLR / SimSiam loss
helpers, and augcl.nn.Hallucinator. A clear error naming the argument, or a finite result where the input is
documented to be accepted (tests/_bad_inputs.py has the machinery and the perturbation families).
"""
from __future__ import annotations

import pytest
import torch

from augcl import functional as AF
from augcl import nn as ANN
from _bad_inputs import (
    D, K, LAM_EXTRAPOLATION, OK, TEMPERATURE, begin_cases, case, check_value_checks_can_be_disabled, collect_cases,
    ctor_cases, emb, extra_cases, matrix_cases, run_case, unit, value_cases, with_value,
)
from conftest import require_backend

begin_cases()


# ================================================================================ functional: Hallucinator
def _weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    h = 2 * D
    return dict(w1=torch.randn(h, 2 * D, generator=g), b1=torch.randn(h, generator=g),
                w2=torch.randn(h, h, generator=g) / 4, b2=torch.randn(h, generator=g),
                w3=torch.randn(D, h, generator=g) / 4, b3=torch.randn(D, generator=g))


def _hal_base():
    return dict(x=emb(), k=emb(seed=1), lam=0.05, **_weights())


E = "hallucinate"
_kshape = (ValueError, r"k must have the shape of x")
matrix_cases(E, AF.hallucinate, _hal_base, "x", more_rows=_kshape, wider=_kshape)
matrix_cases(E, AF.hallucinate, _hal_base, "k", more_rows=_kshape, wider=_kshape, ndim3=_kshape, ndim1=_kshape,
             empty=_kshape, zero_width=_kshape, list=(TypeError, r"k must be a torch\.Tensor"))
for _w in ("w1", "b1", "w2", "b3"):
    _wshape = (ValueError, rf"{_w} must have shape")
    _wtype = (TypeError, rf"{_w} must be a floating tensor")
    matrix_cases(E, AF.hallucinate, _hal_base, _w, skip=("zero_width", "wider") if _w[0] == "b" else (),
                 ndim3=_wshape, ndim1=_wshape if _w[0] == "w" else (OK, None), empty=_wshape, zero_width=_wshape,
                 more_rows=(ValueError, r"(w1|b1|w2|w3|b2|b3) must have shape"), wider=_wshape,
                 int64=_wtype, bool=_wtype, complex64=_wtype, list=(TypeError, rf"{_w} must be a torch\.Tensor"),
                 none=(TypeError, rf"{_w} must be a torch\.Tensor"))
value_cases(E, AF.hallucinate, _hal_base, "lam", LAM_EXTRAPOLATION,
            none=(TypeError, r"lam must be a float or a tensor"))


def _gen():
    torch.manual_seed(3)
    return ANN.Hallucinator(D)


def _hmoco_base():
    return dict(generator=_gen(), q=emb(), k=emb(seed=1), queue=unit(K, seed=2), lam=0.05)


E = "hallucinate_moco_loss"
_kq = (ValueError, r"k must have the shape of q")
matrix_cases(E, AF.hallucinate_moco_loss, _hmoco_base, "q", more_rows=_kq, wider=_kq)
matrix_cases(E, AF.hallucinate_moco_loss, _hmoco_base, "k", more_rows=_kq, wider=_kq, ndim3=_kq, ndim1=_kq, empty=_kq,
             zero_width=_kq)
matrix_cases(E, AF.hallucinate_moco_loss, _hmoco_base, "queue", more_rows=(OK, None),
             wider=(ValueError, r"queue must have 8"), none=(ValueError, r"queue is None, so no row has a negative"))
value_cases(E, AF.hallucinate_moco_loss, _hmoco_base, "temperature", TEMPERATURE)
value_cases(E, AF.hallucinate_moco_loss, _hmoco_base, "lam", LAM_EXTRAPOLATION)
extra_cases(E, AF.hallucinate_moco_loss, _hmoco_base, {
    "generator:none": (dict(generator=None), TypeError, r"generator must be an augcl\.nn\.Hallucinator"),
    "generator:frozen": (dict(generator=_gen().requires_grad_(False)), OK, None),
})


def _nan_gen():
    g = _gen()
    with torch.no_grad():
        g.fc2.weight[0, 0] = float("nan")
    return g


case(E, "generator:nan_parameter", lambda: AF.hallucinate_moco_loss(_nan_gen(), emb(), emb(seed=1), unit(K)),
     ValueError, r"generator\.fc2\.weight contains non-finite")


def _hsim_base():
    return dict(generator=_gen(), z1=emb(), z2=emb(seed=1), lam=0.05)


E = "hallucinate_simclr_loss"
_z2 = (ValueError, r"z2 must have the shape of z1")
matrix_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "z1", more_rows=_z2, wider=_z2)
matrix_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "z2", more_rows=_z2, wider=_z2, ndim3=_z2, ndim1=_z2, empty=_z2,
             zero_width=_z2)
value_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "temperature", TEMPERATURE)
value_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "lam", LAM_EXTRAPOLATION)
case(E, "generator:nan_parameter", lambda: AF.hallucinate_simclr_loss(_nan_gen(), emb(), emb(seed=1)),
     ValueError, r"generator\.fc2\.weight contains non-finite")
case(E, "width:not_generator_dim", lambda: AF.hallucinate_simclr_loss(_gen(), emb(cols=6), emb(cols=6)),
     ValueError, r"z1 has width 6 but the generator was built for dim=8")


def _hsiam_base():
    return dict(generator=_gen(), p1=emb(), p2=emb(seed=1), z1=emb(seed=2), z2=emb(seed=3))


E = "hallucinate_simsiam_loss"
_p1 = (ValueError, r"must have the shape of p1")
matrix_cases(E, AF.hallucinate_simsiam_loss, _hsiam_base, "p1", more_rows=_p1, wider=_p1)
for _a in ("p2", "z1", "z2"):
    _s = (ValueError, rf"{_a} must have the shape of p1")
    matrix_cases(E, AF.hallucinate_simsiam_loss, _hsiam_base, _a, more_rows=_s, wider=_s, ndim3=_s, ndim1=_s, empty=_s,
                 zero_width=_s)
extra_cases(E, AF.hallucinate_simsiam_loss, _hsiam_base, {
    "lam:nan_pair": (dict(lam=(float("nan"), float("nan"))), ValueError, r"lam must be finite"),
    "lam:tensor_nan": (dict(lam=(torch.tensor(float("nan")), None)), ValueError, r"lam\[0\] contains non-finite"),
    "lam:large_pair": (dict(lam=(2.0, 2.0)), OK, None),
    "lam:one_entry": (dict(lam=(0.1,)), ValueError, r"lam must be a pair"),
    "lam:none": (dict(lam=None), TypeError, r"lam must be a pair"),
})

E = "nn.Hallucinator"
ctor_cases(E, ANN.Hallucinator, {
    "dim:zero": (dict(dim=0), ValueError, r"dim must be an int >= 1"),
    "hidden:zero": (dict(dim=D, hidden=0), ValueError, r"hidden must be an int >= 1"),
    "lam_range:reversed": (dict(dim=D, lam_range=(0.1, 0.0)), ValueError, r"lam_range must be finite with lo <= hi"),
    "lam_range:nan": (dict(dim=D, lam_range=(0.0, float("nan"))), ValueError, r"lam_range must be finite"),
    "lam_range:str": (dict(dim=D, lam_range="ab"), TypeError, r"lam_range must be a pair of floats"),
    "lam_range:three": (dict(dim=D, lam_range=(0.0, 0.1, 0.2)), TypeError, r"lam_range must be a pair"),
    "lam_range:none": (dict(dim=D, lam_range=None), TypeError, r"lam_range must be a pair"),
})
case(E, "lam_range:negative", lambda: ANN.Hallucinator(D, lam_range=(-1.0, -0.5))(emb(), emb(seed=1)), OK)
_hfwd = (lambda x, k, **kw: _gen()(x, k, **kw))
_hfwd_base = (lambda: dict(x=emb(), k=emb(seed=1), lam=None))
matrix_cases(E, _hfwd, _hfwd_base, "x", more_rows=_kshape, wider=(ValueError, r"x has width 9 but this Hallucinator"),
             zero_width=(ValueError, r"x has width 0 but this Hallucinator"), empty=_kshape)
matrix_cases(E, _hfwd, _hfwd_base, "k", more_rows=_kshape, wider=_kshape, empty=_kshape, zero_width=_kshape)
value_cases(E, _hfwd, _hfwd_base, "lam", LAM_EXTRAPOLATION)
extra_cases(E, _hfwd, _hfwd_base, {
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "generator:ok": (dict(generator=torch.Generator().manual_seed(0)), OK, None),
})
case(E, "nan_parameter", lambda: _nan_gen()(emb(), emb(seed=1)), ValueError, r"fc2\.weight contains non-finite")
case(E + ".hallucinate", "x:nan", lambda: _gen().hallucinate(with_value(emb(), float("nan")), emb(seed=1)), ValueError,
     r"x contains non-finite")
case(E + ".sample_lam", "batch:negative", lambda: _gen().sample_lam(-1, torch.device("cpu")), ValueError,
     r"batch must be an int >= 1")
case(E + ".sample_lam", "generator:str", lambda: _gen().sample_lam(2, torch.device("cpu"), "g"), TypeError,
     r"generator must be a torch\.Generator")


CASES = collect_cases()


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    run_case(fn, exc, match)


@pytest.mark.parametrize("call", [
    lambda: AF.hallucinate(with_value(emb(), float("nan")), emb(seed=1), 0.05, **_weights()),
    lambda: AF.hallucinate_simsiam_loss(_gen(), with_value(emb(), float("nan")), emb(), emb(), emb()),
], ids=["hallucinate", "simsiam"])
def test_value_checks_can_be_disabled(call):
    check_value_checks_can_be_disabled(call)


def test_hallucinator_losses_check_once(monkeypatch):
    """The loss helpers fold the generator's non-finite check into their own (one sync per call, not two)."""
    from augcl import _validate as V

    seen = []
    real = V.deferred_value_check
    monkeypatch.setattr(V, "deferred_value_check", lambda *a, **k: (seen.append(k.get("what")), real(*a, **k))[1])
    gen = _gen()
    AF.hallucinate_moco_loss(gen, emb(), emb(seed=1), unit(K))
    AF.hallucinate_simclr_loss(gen, emb(), emb(seed=1))
    AF.hallucinate_simsiam_loss(gen, emb(), emb(seed=1), emb(seed=2), emb(seed=3))
    assert len(seen) == 3, seen
    gen(emb(), emb(seed=1))  # the module alone checks its output
    assert len(seen) == 4 and seen[-1] == "the hallucinated h"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compile_fullgraph_with_new_checks(backend):
    """The new checks need host values only outside torch.compile tracing."""
    require_backend(backend)
    torch._dynamo.reset()
    gen = _gen()

    def step(q, k, queue):
        return AF.hallucinate_moco_loss(gen, q, k, queue, lam=0.05, backend=backend)

    q, k, queue = emb(), emb(seed=1), unit(K)
    got = torch.compile(step, fullgraph=True, backend="eager")(q, k, queue)
    torch.testing.assert_close(got, step(q, k, queue))
