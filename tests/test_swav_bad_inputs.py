"""Bad input to the SwAV entry points: augcl.functional's sinkhorn and swav_loss (its Un-Mix variant included),
augcl.nn's SwaVLoss and SwaVPrototypes, and the solo-learn drop-ins swav_loss_func and SinkhornKnopp. A clear error
naming the argument, or a finite result where the input is documented to be accepted (tests/_bad_inputs.py has the
machinery and the perturbation families).
"""
from __future__ import annotations

import pytest
import torch

from augcl import functional as AF
from augcl import nn as ANN
from augcl._validate import IndexArgumentError
from augcl.compat import solo as CS
from _bad_inputs import (
    B, D, K, OK, TEMPERATURE, XFAIL_META, begin_cases, case, check_index_checks_stay_on_without_value_checks,
    check_index_error_is_both_index_and_value_error, check_value_checks_can_be_disabled, collect_cases, ctor_cases,
    emb, extra_cases, matrix_cases, run_case, value_cases, with_value,
)

begin_cases()


# ======================================================================================== functional: SwAV
def _sk_base():
    return dict(scores=emb(B, K))


E = "sinkhorn"
matrix_cases(E, AF.sinkhorn, _sk_base, "scores", skip=("meta",), more_rows=(OK, None), wider=(OK, None),
             ndim3=(ValueError, r"scores must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"scores must be a 2-D tensor \[B, K\]"))
case(E, "scores:meta", lambda: AF.sinkhorn(emb(B, K).to("meta")), ValueError, r"scores", marks=XFAIL_META)
extra_cases(E, AF.sinkhorn, _sk_base, {
    "epsilon:zero": (dict(epsilon=0.0), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:negative": (dict(epsilon=-1.0), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:nan": (dict(epsilon=float("nan")), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:inf": (dict(epsilon=float("inf")), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:tensor": (dict(epsilon=torch.tensor(0.05)), TypeError, r"epsilon must be a float"),
    "epsilon:none": (dict(epsilon=None), TypeError, r"epsilon must be a float"),
    "epsilon:tiny": (dict(epsilon=1e-30), OK, None),  # log domain: no overflow
    "iterations:negative": (dict(iterations=-1), ValueError, r"iterations must be >= 0"),
    "iterations:float": (dict(iterations=1.5), TypeError, r"iterations must be an int"),
    "iterations:bool": (dict(iterations=True), TypeError, r"iterations must be an int"),
    "iterations:zero": (dict(iterations=0), OK, None),
    "scores:huge": (dict(scores=emb(B, K) * 1e30), OK, None),
})


def _swav(**kw):
    kw = dict(kw)
    h0 = kw.pop("h0")
    return AF.swav_loss([h0, emb(B, K, seed=1)], **kw)


def _swav_base():
    return dict(h0=emb(B, K), low_resolution_outputs=[emb(B, K, seed=2)])


def _mix(**kw):
    return dict(mixed_outputs=[emb(B, K, seed=3)], mix_lam=0.5, **kw)


E = "swav_loss"
_same = (ValueError, r"high_resolution_outputs\[1\] has shape .* but high_resolution_outputs\[0\] has shape")
matrix_cases(E, _swav, _swav_base, "h0", label="high_resolution_outputs[0]", more_rows=_same, wider=_same,
             ndim3=(ValueError, r"high_resolution_outputs\[0\] must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"high_resolution_outputs\[0\] must be a 2-D tensor \[B, K\]"))
_q = [emb(5, K, seed=4), emb(5, K, seed=5)]
extra_cases(E, _swav, _swav_base, {
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be finite and > 0"),
    "temperature:negative": (dict(temperature=-1.0), ValueError, r"temperature must be finite and > 0"),
    "temperature:nan": (dict(temperature=float("nan")), ValueError, r"temperature must be finite and > 0"),
    "temperature:inf": (dict(temperature=float("inf")), ValueError, r"temperature must be finite and > 0"),
    "temperature:tensor": (dict(temperature=torch.tensor(0.1)), TypeError, r"temperature must be a float"),
    "sinkhorn_epsilon:zero": (dict(sinkhorn_epsilon=0.0), ValueError, r"sinkhorn_epsilon must be finite and > 0"),
    "sinkhorn_iterations:negative": (dict(sinkhorn_iterations=-1), ValueError, r"sinkhorn_iterations must be >= 0"),
    "low[0]:nan": (dict(low_resolution_outputs=[torch.full((B, K), float("nan"))]), ValueError,
                   r"low_resolution_outputs\[0\] contains non-finite"),
    "low[0]:inf": (dict(low_resolution_outputs=[torch.full((B, K), float("inf"))]), ValueError,
                   r"low_resolution_outputs\[0\] contains non-finite"),
    "low[0]:meta": (dict(low_resolution_outputs=[emb(B, K).to("meta")]), ValueError,
                    r"low_resolution_outputs\[0\] is on meta"),
    "low[0]:int": (dict(low_resolution_outputs=[torch.ones(B, K, dtype=torch.long)]), TypeError,
                   r"low_resolution_outputs\[0\] must be float16"),
    "low[0]:fp16": (dict(low_resolution_outputs=[emb(B, K).half()]), OK, None),
    "low:none": (dict(low_resolution_outputs=None), TypeError, r"low_resolution_outputs must be a list of tensors"),
    "low:tensor": (dict(low_resolution_outputs=emb(B, K)), TypeError,
                   r"low_resolution_outputs must be a list of tensors, got a single Tensor"),
    "queue_outputs:ok": (dict(queue_outputs=_q), OK, None),
    "queue_outputs[0]:nan": (dict(queue_outputs=[torch.full((5, K), float("nan")), _q[1]]), ValueError,
                             r"queue_outputs\[0\] contains non-finite"),
    "queue_outputs[0]:meta": (dict(queue_outputs=[_q[0].to("meta"), _q[1]]), ValueError,
                              r"queue_outputs\[0\] is on meta"),
    "queue_outputs[0]:empty": (dict(queue_outputs=[_q[0][:0], _q[1]]), ValueError, r"queue_outputs\[0\] is empty"),
    "queue_outputs[0]:wider": (dict(queue_outputs=[emb(5, K + 1), _q[1]]), ValueError,
                               r"queue_outputs\[0\] must have 6 columns"),
    "queue_outputs[0]:1d": (dict(queue_outputs=[torch.randn(5), _q[1]]), ValueError,
                            r"queue_outputs\[0\] must be a 2-D"),
    "queue_outputs[0]:none": (dict(queue_outputs=[None, _q[1]]), TypeError,
                              r"queue_outputs\[0\] must be a torch\.Tensor"),
    "queue_outputs:too_few": (dict(queue_outputs=_q[:1]), ValueError, r"queue_outputs must hold one tensor"),
    "mixed:ok": (_mix(), OK, None),
    "mixed:nan": (_mix() | dict(mixed_outputs=[torch.full((B, K), float("nan"))]), ValueError,
                  r"mixed_outputs\[0\] contains non-finite"),
    "mixed:inf": (_mix() | dict(mixed_outputs=[torch.full((B, K), float("inf"))]), ValueError,
                  r"mixed_outputs\[0\] contains non-finite"),
    "mixed:tensor": (_mix() | dict(mixed_outputs=emb(B, K)), TypeError, r"mixed_outputs must be a list of tensors"),
    "mix_lam:negative": (_mix() | dict(mix_lam=-0.1), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:above_one": (_mix() | dict(mix_lam=1.5), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:nan": (_mix() | dict(mix_lam=float("nan")), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:inf": (_mix() | dict(mix_lam=float("inf")), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:tensor2": (_mix() | dict(mix_lam=torch.tensor([0.5, 0.5])), ValueError,
                        r"mix_lam must be a float or a tensor of shape"),
    "mix_lam:str": (_mix() | dict(mix_lam="0.5"), TypeError, r"mix_lam must be a float or a floating tensor"),
    "mix_lam:missing": (dict(mixed_outputs=[emb(B, K)]), ValueError, r"mix_lam is required"),
    "mix_partner:too_high": (_mix(mix_partner=torch.full((B,), B)), IndexArgumentError,
                             r"mix_partner holds indices outside"),
    "mix_partner:negative": (_mix(mix_partner=torch.full((B,), -1)), IndexArgumentError,
                             r"mix_partner holds indices outside"),
    "mix_partner:float": (_mix(mix_partner=torch.zeros(B)), TypeError, r"mix_partner must be an integer tensor"),
    "mix_partner:meta": (_mix(mix_partner=torch.zeros(B, dtype=torch.long, device="meta")), ValueError,
                         r"mix_partner is on meta"),
    "mix_partner:list": (_mix(mix_partner=[0, 1, 2, 3]), TypeError, r"mix_partner must be an integer tensor"),
    "mix_form:unknown": (dict(mix_form="x"), ValueError, r"mix_form must be"),
})
case(E, "high:none", lambda: AF.swav_loss(None, []), TypeError, r"high_resolution_outputs must be a list")
case(E, "high:tensor", lambda: AF.swav_loss(emb(B, K), []), TypeError,
     r"high_resolution_outputs must be a list of tensors, got a single Tensor")
case(E, "high:empty", lambda: AF.swav_loss([], []), ValueError, r"high_resolution_outputs must hold at least one")

E = "nn.SwaVLoss"
ctor_cases(E, ANN.SwaVLoss, {
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be finite and > 0"),
    "temperature:negative": (dict(temperature=-1.0), ValueError, r"temperature must be finite and > 0"),
    "temperature:nan": (dict(temperature=float("nan")), ValueError, r"temperature must be finite and > 0"),
    "temperature:str": (dict(temperature="0.1"), TypeError, r"temperature must be a float"),
    "temperature:tensor2": (dict(temperature=torch.tensor([0.1, 0.2])), TypeError, r"temperature must be a float"),
    "sinkhorn_epsilon:zero": (dict(sinkhorn_epsilon=0.0), ValueError, r"sinkhorn_epsilon must be finite and > 0"),
    "sinkhorn_epsilon:negative": (dict(sinkhorn_epsilon=-1.0), ValueError, r"sinkhorn_epsilon must be finite"),
    "sinkhorn_iterations:negative": (dict(sinkhorn_iterations=-1), ValueError, r"sinkhorn_iterations must be >= 0"),
    "sinkhorn_iterations:float": (dict(sinkhorn_iterations=1.5), TypeError, r"sinkhorn_iterations must be an int"),
    "mix_form:unknown": (dict(mix_form="x"), ValueError, r"mix_form must be"),
})
_sw = (lambda **kw: ANN.SwaVLoss()(**kw))
extra_cases(E, _sw, lambda: dict(high_resolution_outputs=[emb(B, K), emb(B, K, seed=1)],
                                 low_resolution_outputs=[emb(B, K, seed=2)]), {
    "valid": (dict(), OK, None),
    "high[0]:nan": (dict(high_resolution_outputs=[torch.full((B, K), float("nan")), emb(B, K)]), ValueError,
                    r"high_resolution_outputs\[0\] contains non-finite"),
    "high:tensor": (dict(high_resolution_outputs=emb(B, K)), TypeError,
                    r"high_resolution_outputs must be a list of tensors, got a single Tensor"),
    "high:none": (dict(high_resolution_outputs=None), TypeError, r"high_resolution_outputs must be a list"),
    "high:empty": (dict(high_resolution_outputs=[]), ValueError, r"high_resolution_outputs must hold at least one"),
})

E = "nn.SwaVPrototypes"
ctor_cases(E, ANN.SwaVPrototypes, {
    "input_dim:zero": (dict(input_dim=0), ValueError, r"input_dim must be an int >= 1"),
    "n_prototypes:zero": (dict(n_prototypes=0), ValueError, r"n_prototypes must be an int >= 1"),
    "n_prototypes:negative": (dict(n_prototypes=-1), ValueError, r"n_prototypes must be an int >= 1"),
    "n_prototypes:empty_list": (dict(n_prototypes=[]), ValueError, r"n_prototypes must be an int >= 1 or a non-empty"),
    "n_prototypes:float": (dict(n_prototypes=2.5), TypeError, r"n_prototypes must be an int"),
    "n_prototypes:list_with_zero": (dict(n_prototypes=[3, 0]), ValueError, r"n_prototypes must be an int >= 1"),
    "n_steps_frozen_prototypes:negative": (dict(n_steps_frozen_prototypes=-1), ValueError,
                                           r"n_steps_frozen_prototypes must be an int >= 0"),
})
_proto = (lambda x: ANN.SwaVPrototypes(input_dim=D, n_prototypes=K)(x))
_xw = (ValueError, r"x must be \[\.\.\., input_dim\] = \[\.\.\., 8\]")
matrix_cases(E, _proto, lambda: dict(x=emb()), "x", skip=("nan", "inf"), ndim3=(OK, None), more_rows=(OK, None),
             ndim1=_xw, wider=_xw, zero_width=_xw, int64=(TypeError, r"x must be a floating tensor"),
             bool=(TypeError, r"x must be a floating tensor"), complex64=(TypeError, r"x must be a floating tensor"),
             fp16=(TypeError, r"x is torch\.float16 but the prototypes are torch\.float32"),
             fp64=(TypeError, r"x is torch\.float64 but the prototypes are torch\.float32"),
             meta=(ValueError, r"x is on meta but the prototypes are on cpu"))
case(E, "x:bf16_under_autocast", lambda: _autocast_proto(), OK)
case(E, "step:missing", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(emb()), ValueError,
     r"provide the `step` argument")
case(E, "step:str", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(emb(), "a"), TypeError,
     r"step must be an int")
case(E, "step:tensor", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(emb(), torch.tensor(7)),
     TypeError, r"step must be an int")  # lightly's requires_grad_(step >= n) fails obscurely on a tensor
case(E, "step:int", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(emb(), 7), OK)


def _autocast_proto():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return ANN.SwaVPrototypes(D, K)(emb().bfloat16()).float()

def _solo_swav(**kw):
    kw = dict(kw)
    p0, a0 = kw.pop("p0"), kw.pop("a0")
    return CS.swav_loss_func([p0, emb(B, K, seed=1)], [a0, _codes(seed=3)], **kw)


def _codes(seed=2):
    return torch.softmax(emb(B, K, seed=seed), dim=1)


def _solo_swav_base():
    return dict(p0=emb(B, K), a0=_codes())


E = "compat.solo.swav_loss_func"
_pshape = (ValueError, r"preds\[1\] has shape .* but preds\[0\] has shape")
matrix_cases(E, _solo_swav, _solo_swav_base, "p0", label="preds[0]", more_rows=_pshape, wider=_pshape,
             ndim3=(ValueError, r"preds\[0\] must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"preds\[0\] must be a 2-D tensor \[B, K\]"))
_ashape = (ValueError, r"assignments\[0\] has shape .* but preds\[0\] has shape")
matrix_cases(E, _solo_swav, _solo_swav_base, "a0", label="assignments[0]", more_rows=_ashape, wider=_ashape,
             ndim3=(ValueError, r"assignments\[0\] must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"assignments\[0\] must be a 2-D tensor \[B, K\]"))
value_cases(E, _solo_swav, _solo_swav_base, "temperature", TEMPERATURE,
            meta_tensor=(ValueError, r"temperature is on meta but preds\[0\] is on cpu"))
_sp = [emb(B, K), emb(B, K, seed=1)]
_sa = [_codes(), _codes(3)]
case(E, "preds:one_view", lambda: CS.swav_loss_func(_sp[:1], _sa), ValueError, r"preds must hold at least 2 views")
case(E, "preds:empty", lambda: CS.swav_loss_func([], []), ValueError, r"preds must hold at least 2 views")
case(E, "preds:none", lambda: CS.swav_loss_func(None, _sa), TypeError, r"preds must be a list of tensors")
case(E, "preds:2d_tensor", lambda: CS.swav_loss_func(_sp[0], _sa), TypeError,
     r"preds must be a list of \[B, K\] tensors .* or a \[V, B, K\] tensor")
case(E, "preds:3d_tensor", lambda: CS.swav_loss_func(torch.stack(_sp), torch.stack(_sa)), OK)
case(E, "preds[1]:none", lambda: CS.swav_loss_func([_sp[0], None], _sa), TypeError,
     r"preds\[1\] must be a torch\.Tensor")
case(E, "assignments:too_few", lambda: CS.swav_loss_func(_sp, _sa[:1]), ValueError,
     r"assignments must hold one \[B, K\] tensor per view of preds \(2\), got 1")
case(E, "assignments:extra_ignored", lambda: CS.swav_loss_func(_sp, _sa + [torch.zeros(1)]), OK)  # as solo
case(E, "assignments:none", lambda: CS.swav_loss_func(_sp, None), TypeError, r"assignments must be a list")
case(E, "assignments:rows_unnormalised", lambda: CS.swav_loss_func(_sp, [3 * _sa[0], _sa[1]]), OK)
case(E, "assignments[1]:fp64", lambda: CS.swav_loss_func(_sp, [_sa[0], _sa[1].double()]), OK)
case(E, "assignments[1]:nan", lambda: CS.swav_loss_func(_sp, [_sa[0], with_value(_sa[1], float("nan"))]), ValueError,
     r"assignments\[1\] contains non-finite")
case(E, "preds:batch_of_one", lambda: CS.swav_loss_func([emb(1, K), emb(1, K, seed=1)], [_codes()[:1]] * 2), OK)
case(E, "preds:huge", lambda: CS.swav_loss_func([emb(B, K) * 1e30, emb(B, K)], _sa), OK)  # ~1e31, as solo
case(E, "preds:overflowing", lambda: CS.swav_loss_func([emb(B, K) * 1e37, emb(B, K)], _sa), FloatingPointError,
     r"the SwAV loss is not finite although every input is")  # solo: inf

E = "compat.solo.SinkhornKnopp"
ctor_cases(E, CS.SinkhornKnopp, {
    "num_iters:negative": (dict(num_iters=-1), ValueError, r"num_iters must be >= 0"),
    "num_iters:float": (dict(num_iters=1.5), TypeError, r"num_iters must be an int"),
    "num_iters:bool": (dict(num_iters=True), TypeError, r"num_iters must be an int"),
    "epsilon:zero": (dict(epsilon=0.0), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:negative": (dict(epsilon=-0.05), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:nan": (dict(epsilon=float("nan")), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:inf": (dict(epsilon=float("inf")), ValueError, r"epsilon must be finite and > 0"),
    "epsilon:tensor": (dict(epsilon=torch.tensor(0.05)), TypeError, r"epsilon must be a float"),
    "epsilon:none": (dict(epsilon=None), TypeError, r"epsilon must be a float"),
    "world_size:zero": (dict(world_size=0), ValueError, r"world_size must be an int >= 1"),
    "world_size:float": (dict(world_size=2.0), TypeError, r"world_size must be an int"),
    "positional_args": (dict(num_iters=3, epsilon=0.05, world_size=1), OK, None),
})
_sk_call = (lambda **kw: CS.SinkhornKnopp()(**kw))
matrix_cases(E, _sk_call, lambda: dict(Q=emb(B, K)), "Q", skip=("meta",), more_rows=(OK, None), wider=(OK, None),
             ndim3=(ValueError, r"Q must be a 2-D tensor \[B, K\]"), ndim1=(ValueError, r"Q must be a 2-D tensor"))
case(E, "Q:meta", lambda: CS.SinkhornKnopp()(emb(B, K).to("meta")), ValueError, r"Q", marks=XFAIL_META)
case(E, "Q:bf16", lambda: CS.SinkhornKnopp()(emb(B, K).bfloat16()), OK)
case(E, "Q:huge", lambda: CS.SinkhornKnopp()(emb(B, K) * 1e30), OK)  # log domain: no overflow
case(E, "epsilon:tiny", lambda: CS.SinkhornKnopp(epsilon=1e-30)(emb(B, K)), OK)
case(E, "num_iters:zero", lambda: CS.SinkhornKnopp(num_iters=0)(emb(B, K)), OK)
case(E, "backend:unknown", lambda: CS.SinkhornKnopp(backend="gpu")(emb(B, K)), ValueError, r"unknown backend")
case(E, "epsilon:set_after_construction", lambda: _set_attr(CS.SinkhornKnopp(), "epsilon", 0.0)(emb(B, K)),
     ValueError, r"epsilon must be finite and > 0")


def _set_attr(module, name, value):
    setattr(module, name, value)
    return module


CASES = collect_cases()


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    run_case(fn, exc, match)


@pytest.mark.parametrize("call", [
    lambda: AF.swav_loss([emb(B, K)], [emb(B, K)], **_mix(mix_partner=torch.full((B,), B))),
], ids=["swav_loss"])
def test_index_argument_error_is_both_index_and_value_error(call):
    check_index_error_is_both_index_and_value_error(call)


@pytest.mark.parametrize("call", [
    lambda: AF.swav_loss([emb(B, K)], [emb(B, K)], **_mix(mix_partner=torch.full((B,), B))),
    lambda: AF.swav_loss([emb(B, K)], [emb(B, K)], **_mix(mix_partner=torch.full((B,), B)), mix_form="authors"),
], ids=["swav_soft", "swav_authors"])
def test_index_checks_stay_on_without_value_checks(call):
    check_index_checks_stay_on_without_value_checks(call)


@pytest.mark.parametrize("call", [
    lambda: AF.swav_loss([with_value(emb(B, K), float("nan")), emb(B, K)], [with_value(emb(B, K), float("nan"))]),
], ids=["swav_loss"])
def test_value_checks_can_be_disabled(call):
    check_value_checks_can_be_disabled(call)


def test_swav_loss_checks_crops_in_one_sync(monkeypatch):
    """The large crops' codes no longer go through the public sinkhorn (one host sync per crop): one deferred
    check names the crop at fault after the loss."""
    calls = []
    monkeypatch.setattr(AF, "sinkhorn", lambda *a, **k: calls.append(1))
    loss = AF.swav_loss([emb(B, K), emb(B, K, seed=1), emb(B, K, seed=2)], [emb(B, K, seed=3)])
    assert calls == [] and torch.isfinite(loss)
