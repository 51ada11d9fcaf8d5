"""Bad input to every public entry point (augcl.functional, augcl.nn, augcl.compat): the contract is "a clear
error naming the argument, never a crash, a hang or a silently wrong number".

Each case is one call with one bad argument (the others valid) and its expected outcome: an exception type plus
a regex that must name the argument, or a finite result where the input is documented to be accepted (mixed
float dtypes are promoted; a [K, D] queue may have any K; ...). The cases are generated from perturbation
families (wrong ndim, dtype, device, empty, non-finite, not a tensor, ...) applied to each argument of each
entry point, with per-argument overrides where the outcome differs (a row mismatch names the other argument,
...). A meta tensor mixed with CPU tensors stands in for "another device".

Out-of-range indices raise ``augcl._validate.IndexArgumentError``, an IndexError *and* a ValueError.
"""
from __future__ import annotations

import re

import pytest
import torch

import augcl
from augcl import functional as AF
from augcl import nn as ANN
from augcl._validate import IndexArgumentError
from augcl.compat import lightly as CL
from augcl.compat import pml as CP
from augcl.compat import solo as CS
from augcl.compat import timm as CT
from augcl.compat import torchvision as CTV
from conftest import require_backend

B, D, K = 4, 8, 6
OK = None  # expected outcome "returns a finite result"
PROPAGATES = "propagates"  # documented: not checked, returns (mixing: a NaN pixel reaches the rows that mix it,
#                            unless a CutMix box replaces it; with random draws it may or may not survive)
CASES = []


def _emb(rows=B, cols=D, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _unit(rows=B, cols=D, seed=0):
    return torch.nn.functional.normalize(_emb(rows, cols, seed), dim=1)


def _images(seed=0):
    return torch.rand(B, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _with(t, value):
    t = t.clone()
    t.view(-1)[0] = value
    return t


def case(entry: str, what: str, fn, exc=OK, match=None, marks=()):
    CASES.append(pytest.param(fn, exc, match, id=f"{entry}|{what}", marks=marks))


# ------------------------------------------------------------------------------------ perturbation families
# name -> (make the bad value from the good one, exception, message template; {a} = the argument's name)
MATRIX = {
    "ndim3": (lambda t: t.unsqueeze(0), ValueError, r"{a} must be a 2-D"),
    "ndim1": (lambda t: t.reshape(-1), ValueError, r"{a} must be a 2-D"),
    "int64": (lambda t: t.to(torch.int64), TypeError, r"{a} must be float16"),
    "bool": (lambda t: t > 0, TypeError, r"{a} must be float16"),
    "complex64": (lambda t: t.to(torch.complex64), TypeError, r"{a} must be float16"),
    "fp16": (lambda t: t.half(), OK, None),  # documented: dtypes are promoted to the wider one
    "fp64": (lambda t: t.double(), OK, None),
    "meta": (lambda t: t.to("meta"), ValueError, r"{a} is on meta|but {a} is on meta"),
    "empty": (lambda t: t[:0], ValueError, r"{a} is empty"),
    "zero_width": (lambda t: t[:, :0], ValueError, r"{a} (has 0 features|is empty)"),
    "nan": (lambda t: _with(t, float("nan")), ValueError, r"{a} contains non-finite"),
    "inf": (lambda t: _with(t, float("inf")), ValueError, r"{a} contains non-finite"),
    "list": (lambda t: t.tolist(), TypeError, r"{a} must be a torch\.Tensor"),
    "none": (lambda t: None, TypeError, r"{a} must be a torch\.Tensor"),
    # row / width mismatches: the outcome depends on the argument (overridden below); default: rejected
    "more_rows": (lambda t: torch.cat([t, t[:1]]), ValueError, r"{a}"),
    "wider": (lambda t: torch.cat([t, t[:, :1]], 1), ValueError, r"{a}"),
}
INDEX = {
    "too_high": (lambda t, n: torch.full_like(t, n), IndexArgumentError, r"{a} (has values|holds indices)"),
    "minus_two": (lambda t, n: torch.full_like(t, -2), IndexArgumentError, r"{a} (has values|holds indices)"),
    "minus_one": (lambda t, n: torch.full_like(t, -1), IndexArgumentError, r"{a} (has values|holds indices)"),
    "float": (lambda t, n: t.float(), TypeError, r"{a} must be an integer"),
    "bool": (lambda t, n: t > 0, TypeError, r"{a} must be an integer"),
    "int32": (lambda t, n: t.int(), OK, None),
    "meta": (lambda t, n: t.to("meta"), ValueError, r"{a} is on meta"),
    "longer": (lambda t, n: torch.cat([t, t[:1]]), ValueError, r"{a} must have shape"),
    "list": (lambda t, n: t.tolist(), TypeError, r"{a} must be a"),
}
TEMPERATURE = {
    "zero": (0.0, ValueError, r"temperature must be (a )?finite"),
    "negative": (-1.0, ValueError, r"temperature must be (a )?finite"),
    "nan": (float("nan"), ValueError, r"temperature must be (a )?finite"),
    "inf": (float("inf"), ValueError, r"temperature must be (a )?finite"),
    "tensor2": (torch.tensor([0.1, 0.2]), ValueError, r"temperature must be a number or a one-element tensor"),
    "tensor_zero": (torch.tensor(0.0), ValueError, r"temperature must be finite and > 0"),
    "tensor_negative": (torch.tensor(-1.0), ValueError, r"temperature must be finite and > 0"),
    "tensor_nan": (torch.tensor(float("nan")), ValueError, r"temperature must be finite and > 0"),
    "tensor_inf": (torch.tensor(float("inf")), ValueError, r"temperature must be finite and > 0"),
    "int_tensor": (torch.tensor(1), TypeError, r"temperature must be a floating tensor"),
    "str": ("0.1", TypeError, r"temperature must be a number"),
    "none": (None, TypeError, r"temperature must be a number"),
    "bool": (True, TypeError, r"temperature must be a number"),
    "meta_tensor": (torch.tensor(0.1, device="meta"), ValueError, r"temperature is on meta"),
}
LAM_UNIT = {  # Un-Mix weights: lam in [0, 1]
    "negative": (-0.1, ValueError, r"lam must lie in \[0, 1\]"),
    "above_one": (1.5, ValueError, r"lam must lie in \[0, 1\]"),
    "nan": (float("nan"), ValueError, r"lam must lie in \[0, 1\]"),
    "inf": (float("inf"), ValueError, r"lam must lie in \[0, 1\]"),
    "tensor_out": (torch.tensor([0.5, 1.5, 0.5, 0.5]), ValueError, r"lam must lie in \[0, 1\]"),
    "tensor_nan": (torch.tensor([0.5, float("nan"), 0.5, 0.5]), ValueError, r"lam must lie in \[0, 1\]"),
    "int_tensor": (torch.ones(B, dtype=torch.long), TypeError, r"lam must be a float or a floating tensor"),
    "wrong_length": (torch.full((B + 1,), 0.5), ValueError, r"lam must be a number"),
    "meta": (torch.full((B,), 0.5, device="meta"), ValueError, r"lam is on meta"),
    "none": (None, TypeError, r"lam must be a float or a tensor"),
    "str": ("0.5", TypeError, r"lam must be a float or a tensor"),
}
LAM_EXTRAPOLATION = {  # the Hallucinator's lam: any finite strength is documented (U(0, 0.1) by default)
    "negative": (-0.1, OK, None),
    "above_one": (1.5, OK, None),
    "nan": (float("nan"), ValueError, r"lam must be finite"),
    "inf": (float("inf"), ValueError, r"lam must be finite"),
    "tensor_out": (torch.tensor([0.5, 1.5, 0.5, 0.5]), OK, None),
    "tensor_nan": (torch.tensor([0.05, float("nan"), 0.05, 0.05]), ValueError, r"lam contains non-finite"),
    "int_tensor": (torch.ones(B, dtype=torch.long), TypeError, r"lam must be a float or a floating tensor"),
    "wrong_length": (torch.full((B + 1,), 0.05), ValueError, r"lam must be a float, a 0-dim tensor or a \[B\]"),
    "meta": (torch.full((B,), 0.05, device="meta"), ValueError, r"lam is on meta"),
    "none": (None, OK, None),  # drawn from the generator's lam_range
    "str": ("0.5", TypeError, r"lam must be a float or a tensor"),
}


def matrix_cases(entry, call, base, arg, *, label=None, skip=(), **overrides):
    """MATRIX perturbations of tensor argument ``arg`` of ``call(**base())``; errors must name ``label``."""
    label = label or arg
    for pert, (make, exc, tmpl) in MATRIX.items():
        if pert in skip:
            continue
        if pert in overrides:
            exc, tmpl = overrides[pert]
        match = None if tmpl is None else tmpl.format(a=re.escape(label))
        case(entry, f"{arg}:{pert}", lambda make=make: call(**{**base(), arg: make(base()[arg])}), exc, match)


def index_cases(entry, call, base, arg, upper, *, label=None, **overrides):
    label = label or arg
    for pert, (make, exc, tmpl) in INDEX.items():
        if pert in overrides:
            exc, tmpl = overrides[pert]
        match = None if tmpl is None else tmpl.format(a=re.escape(label))
        case(entry, f"{arg}:{pert}", lambda make=make: call(**{**base(), arg: make(base()[arg], upper)}), exc, match)


def value_cases(entry, call, base, arg, family, **overrides):
    for pert, (value, exc, match) in family.items():
        if pert in overrides:
            exc, match = overrides[pert]
        case(entry, f"{arg}:{pert}", lambda value=value: call(**{**base(), arg: value}), exc, match)


def extra_cases(entry, call, base, table):
    """table: {what: (kwargs overriding base(), exception or OK, regex)}"""
    for what, (kwargs, exc, match) in table.items():
        case(entry, what, lambda kwargs=kwargs: call(**{**base(), **kwargs}), exc, match)


def ctor_cases(entry, cls, table):
    for what, (kwargs, exc, match) in table.items():
        case(entry, what, lambda kwargs=kwargs: cls(**kwargs), exc, match)


# ================================================================================ augcl.functional: contrastive
def _cl_base():
    return dict(anchors=_emb(), candidates=_emb(seed=1), pos_idx=torch.arange(B))


E = "contrastive_loss"
matrix_cases(E, AF.contrastive_loss, _cl_base, "anchors",
             more_rows=(ValueError, r"pos_idx must have shape \[5\]"), wider=(ValueError, r"candidates must have 9"))
matrix_cases(E, AF.contrastive_loss, _cl_base, "candidates", more_rows=(OK, None),
             wider=(ValueError, r"candidates must have 8"))
index_cases(E, AF.contrastive_loss, _cl_base, "pos_idx", B, minus_one=(OK, None))  # -1 pads: an all-zero row
value_cases(E, AF.contrastive_loss, _cl_base, "temperature", TEMPERATURE)
extra_cases(E, AF.contrastive_loss, _cl_base, {
    "pos_weight:int": (dict(pos_weight=torch.ones(B, 1, dtype=torch.long)), TypeError,
                       r"pos_weight must be a floating"),
    "pos_weight:list": (dict(pos_weight=[1.0] * B), TypeError, r"pos_weight must be a floating"),
    "pos_weight:nan": (dict(pos_weight=torch.full((B, 1), float("nan"))), ValueError,
                       r"pos_weight contains non-finite"),
    "pos_weight:inf": (dict(pos_weight=torch.full((B, 1), float("inf"))), ValueError,
                       r"pos_weight contains non-finite"),
    "pos_weight:shape": (dict(pos_weight=torch.ones(B, 2)), ValueError, r"pos_weight must have the shape of pos_idx"),
    "pos_weight:meta": (dict(pos_weight=torch.ones(B, 1, device="meta")), ValueError, r"pos_weight is on meta"),
    "pos_weight:negative": (dict(pos_weight=torch.full((B, 1), -1.0)), OK, None),  # the documented formula
    "excl_idx:too_high": (dict(excl_idx=torch.full((B,), B)), IndexArgumentError, r"excl_idx has values"),
    "excl_idx:float": (dict(excl_idx=torch.zeros(B)), TypeError, r"excl_idx must be an integer"),
    "neg_start:negative": (dict(neg_start=-1), ValueError, r"neg_start must be an int >= 0"),
    "neg_start:float": (dict(neg_start=1.5), ValueError, r"neg_start must be an int >= 0"),
    "neg_start:beyond_candidates": (dict(neg_start=B + 1), ValueError,
                                    r"neg_start must be <= the number of candidates"),
    "pos_idx:none": (dict(pos_idx=None), TypeError, r"pos_idx must be a torch\.Tensor"),
    "reduction:unknown": (dict(reduction="avg"), ValueError, r"reduction must be one of"),
    "backend:unknown": (dict(backend="gpu"), ValueError, r"unknown backend"),
})


def _ntx_base():
    return dict(z1=_emb(), z2=_emb(seed=1))


E = "nt_xent"
# every error, shapes and non-finite values alike, names the caller's argument (z1 / z2)
matrix_cases(E, AF.nt_xent, _ntx_base, "z1", more_rows=(ValueError, r"z2 must have 5 rows"),
             wider=(ValueError, r"z2 must have 9 features"), nan=(ValueError, r"z1 contains non-finite"),
             inf=(ValueError, r"z1 contains non-finite"))
matrix_cases(E, AF.nt_xent, _ntx_base, "z2", more_rows=(ValueError, r"z2 must have 4 rows"),
             wider=(ValueError, r"z2 must have 8 features"), nan=(ValueError, r"z2 contains non-finite"),
             inf=(ValueError, r"z2 contains non-finite"))
value_cases(E, AF.nt_xent, _ntx_base, "temperature", TEMPERATURE)
extra_cases(E, AF.nt_xent, _ntx_base, {
    "batch_of_one": (dict(z1=_emb(1), z2=_emb(1, seed=1)), OK, None),  # 0 negatives: loss 0, as lightly
    "reduction:unknown": (dict(reduction="x"), ValueError, r"reduction must be one of"),
})


def _mv_base():
    return dict(views=[_emb(), _emb(seed=1), _emb(seed=2)])


E = "nt_xent_multiview"
value_cases(E, AF.nt_xent_multiview, _mv_base, "temperature", TEMPERATURE)
extra_cases(E, AF.nt_xent_multiview, _mv_base, {
    "views:one": (dict(views=[_emb()]), ValueError, r"views: NT-Xent needs at least 2 views"),
    "views:empty_list": (dict(views=[]), ValueError, r"views: NT-Xent needs at least 2 views"),
    "views:none": (dict(views=None), TypeError, r"views must be a \[V, B, D\] tensor or a sequence"),
    "views:2d_tensor": (dict(views=_emb()), ValueError, r"views must be \[V, B, D\]"),
    "views:3d_tensor": (dict(views=torch.stack([_emb(), _emb(seed=1)])), OK, None),
    "views:generator": (dict(views=(v for v in [_emb(), _emb(seed=1)])), OK, None),
    "views:empty_batch": (dict(views=torch.zeros(2, 0, D)), ValueError, r"views\[0\] is empty"),
    "views[1]:nan": (dict(views=[_emb(), _with(_emb(seed=1), float("nan"))]), ValueError,
                     r"views\[1\] contains non-finite"),
    "views[1]:int": (dict(views=[_emb(), _emb().long()]), TypeError, r"views\[1\] must be float16"),
    "views[1]:meta": (dict(views=[_emb(), _emb().to("meta")]), ValueError, r"views\[1\] is on meta"),
    "views[1]:more_rows": (dict(views=[_emb(), _emb(B + 1)]), ValueError, r"views\[1\] must have 4 rows"),
    "views[1]:fp16": (dict(views=[_emb(), _emb(seed=1).half()]), OK, None),
    "views[0]:zero_width": (dict(views=[_emb()[:, :0], _emb()[:, :0]]), ValueError, r"views\[0\] has 0 features"),
    "views[1]:list": (dict(views=[_emb(), _emb().tolist()]), TypeError, r"views\[1\] must be a torch\.Tensor"),
    "views[1]:none": (dict(views=[_emb(), None]), TypeError, r"views\[1\] must be a torch\.Tensor"),
})


def _info_base():
    return dict(query=_emb(), key=_emb(seed=1), queue=_unit(K, seed=2))


E = "info_nce"
matrix_cases(E, AF.info_nce, _info_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, AF.info_nce, _info_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
_no_negatives = (ValueError, r"queue=None and key_negatives=False")
matrix_cases(E, AF.info_nce, _info_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=_no_negatives)
value_cases(E, AF.info_nce, _info_base, "temperature", TEMPERATURE)
extra_cases(E, AF.info_nce, _info_base, {
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
})


def _soft_base():
    return dict(query=_emb(), key=_emb(seed=1), pos_idx=torch.stack([torch.arange(B), torch.arange(B).flip(0)], 1),
                pos_weight=torch.full((B, 2), 0.5), queue=_unit(K, seed=2))


E = "soft_info_nce"
matrix_cases(E, AF.soft_info_nce, _soft_base, "query", more_rows=(ValueError, r"pos_idx must have shape \[5\]"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, AF.soft_info_nce, _soft_base, "key", more_rows=(OK, None), wider=(ValueError, r"key must have 8"))
matrix_cases(E, AF.soft_info_nce, _soft_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=_no_negatives)
_shape = (ValueError, r"pos_weight must have the shape of pos_idx")
_float = (TypeError, r"pos_weight must be a floating tensor")
matrix_cases(E, AF.soft_info_nce, _soft_base, "pos_weight", ndim3=_shape, ndim1=_shape, empty=_shape,
             zero_width=_shape, more_rows=_shape, wider=_shape, int64=_float, bool=_float, complex64=_float,
             list=_float, none=_float)
index_cases(E, AF.soft_info_nce, _soft_base, "pos_idx", B, minus_one=(OK, None))
value_cases(E, AF.soft_info_nce, _soft_base, "temperature", TEMPERATURE)
extra_cases(E, AF.soft_info_nce, _soft_base, {
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
    "pos_weight:negative": (dict(pos_weight=torch.full((B, 2), -1.0)), OK, None),  # the documented formula
})


# ======================================================================================== functional: SwAV
def _sk_base():
    return dict(scores=_emb(B, K))


E = "sinkhorn"
_xfail_meta = pytest.mark.xfail(strict=True, reason="every input on meta: no values for the value check (left)")
matrix_cases(E, AF.sinkhorn, _sk_base, "scores", skip=("meta",), more_rows=(OK, None), wider=(OK, None),
             ndim3=(ValueError, r"scores must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"scores must be a 2-D tensor \[B, K\]"))
case(E, "scores:meta", lambda: AF.sinkhorn(_emb(B, K).to("meta")), ValueError, r"scores", marks=_xfail_meta)
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
    "scores:huge": (dict(scores=_emb(B, K) * 1e30), OK, None),
})


def _swav(**kw):
    kw = dict(kw)
    h0 = kw.pop("h0")
    return AF.swav_loss([h0, _emb(B, K, seed=1)], **kw)


def _swav_base():
    return dict(h0=_emb(B, K), low_resolution_outputs=[_emb(B, K, seed=2)])


def _mix(**kw):
    return dict(mixed_outputs=[_emb(B, K, seed=3)], mix_lam=0.5, **kw)


E = "swav_loss"
_same = (ValueError, r"high_resolution_outputs\[1\] has shape .* but high_resolution_outputs\[0\] has shape")
matrix_cases(E, _swav, _swav_base, "h0", label="high_resolution_outputs[0]", more_rows=_same, wider=_same,
             ndim3=(ValueError, r"high_resolution_outputs\[0\] must be a 2-D tensor \[B, K\]"),
             ndim1=(ValueError, r"high_resolution_outputs\[0\] must be a 2-D tensor \[B, K\]"))
_q = [_emb(5, K, seed=4), _emb(5, K, seed=5)]
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
    "low[0]:meta": (dict(low_resolution_outputs=[_emb(B, K).to("meta")]), ValueError,
                    r"low_resolution_outputs\[0\] is on meta"),
    "low[0]:int": (dict(low_resolution_outputs=[torch.ones(B, K, dtype=torch.long)]), TypeError,
                   r"low_resolution_outputs\[0\] must be float16"),
    "low[0]:fp16": (dict(low_resolution_outputs=[_emb(B, K).half()]), OK, None),
    "low:none": (dict(low_resolution_outputs=None), TypeError, r"low_resolution_outputs must be a list of tensors"),
    "low:tensor": (dict(low_resolution_outputs=_emb(B, K)), TypeError,
                   r"low_resolution_outputs must be a list of tensors, got a single Tensor"),
    "queue_outputs:ok": (dict(queue_outputs=_q), OK, None),
    "queue_outputs[0]:nan": (dict(queue_outputs=[torch.full((5, K), float("nan")), _q[1]]), ValueError,
                             r"queue_outputs\[0\] contains non-finite"),
    "queue_outputs[0]:meta": (dict(queue_outputs=[_q[0].to("meta"), _q[1]]), ValueError,
                              r"queue_outputs\[0\] is on meta"),
    "queue_outputs[0]:empty": (dict(queue_outputs=[_q[0][:0], _q[1]]), ValueError, r"queue_outputs\[0\] is empty"),
    "queue_outputs[0]:wider": (dict(queue_outputs=[_emb(5, K + 1), _q[1]]), ValueError,
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
    "mixed:tensor": (_mix() | dict(mixed_outputs=_emb(B, K)), TypeError, r"mixed_outputs must be a list of tensors"),
    "mix_lam:negative": (_mix() | dict(mix_lam=-0.1), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:above_one": (_mix() | dict(mix_lam=1.5), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:nan": (_mix() | dict(mix_lam=float("nan")), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:inf": (_mix() | dict(mix_lam=float("inf")), ValueError, r"mix_lam must lie in \[0, 1\]"),
    "mix_lam:tensor2": (_mix() | dict(mix_lam=torch.tensor([0.5, 0.5])), ValueError,
                        r"mix_lam must be a float or a tensor of shape"),
    "mix_lam:str": (_mix() | dict(mix_lam="0.5"), TypeError, r"mix_lam must be a float or a floating tensor"),
    "mix_lam:missing": (dict(mixed_outputs=[_emb(B, K)]), ValueError, r"mix_lam is required"),
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
case(E, "high:tensor", lambda: AF.swav_loss(_emb(B, K), []), TypeError,
     r"high_resolution_outputs must be a list of tensors, got a single Tensor")
case(E, "high:empty", lambda: AF.swav_loss([], []), ValueError, r"high_resolution_outputs must hold at least one")


# ================================================================================ functional: Hallucinator
def _weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    h = 2 * D
    return dict(w1=torch.randn(h, 2 * D, generator=g), b1=torch.randn(h, generator=g),
                w2=torch.randn(h, h, generator=g) / 4, b2=torch.randn(h, generator=g),
                w3=torch.randn(D, h, generator=g) / 4, b3=torch.randn(D, generator=g))


def _hal_base():
    return dict(x=_emb(), k=_emb(seed=1), lam=0.05, **_weights())


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
    return dict(generator=_gen(), q=_emb(), k=_emb(seed=1), queue=_unit(K, seed=2), lam=0.05)


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


case(E, "generator:nan_parameter", lambda: AF.hallucinate_moco_loss(_nan_gen(), _emb(), _emb(seed=1), _unit(K)),
     ValueError, r"generator\.fc2\.weight contains non-finite")


def _hsim_base():
    return dict(generator=_gen(), z1=_emb(), z2=_emb(seed=1), lam=0.05)


E = "hallucinate_simclr_loss"
_z2 = (ValueError, r"z2 must have the shape of z1")
matrix_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "z1", more_rows=_z2, wider=_z2)
matrix_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "z2", more_rows=_z2, wider=_z2, ndim3=_z2, ndim1=_z2, empty=_z2,
             zero_width=_z2)
value_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "temperature", TEMPERATURE)
value_cases(E, AF.hallucinate_simclr_loss, _hsim_base, "lam", LAM_EXTRAPOLATION)
case(E, "generator:nan_parameter", lambda: AF.hallucinate_simclr_loss(_nan_gen(), _emb(), _emb(seed=1)),
     ValueError, r"generator\.fc2\.weight contains non-finite")
case(E, "width:not_generator_dim", lambda: AF.hallucinate_simclr_loss(_gen(), _emb(cols=6), _emb(cols=6)),
     ValueError, r"z1 has width 6 but the generator was built for dim=8")


def _hsiam_base():
    return dict(generator=_gen(), p1=_emb(), p2=_emb(seed=1), z1=_emb(seed=2), z2=_emb(seed=3))


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


# ======================================================================================= functional: Un-Mix
def _uinfo_base():
    return dict(q=_emb(), k=_emb(seed=1), q_mix=_emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0),
                queue=_unit(K, seed=3))


E = "unmix_info_nce"
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "q", more_rows=(ValueError, r"k must have 5 rows"),
             wider=(ValueError, r"k must have 9 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "k", more_rows=(ValueError, r"k must have 4 rows"),
             wider=(ValueError, r"k must have 8 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "q_mix", more_rows=(ValueError, r"q_mix must have 4 rows"),
             wider=(ValueError, r"q_mix must have 8 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=_no_negatives)
index_cases(E, AF.unmix_info_nce, _uinfo_base, "partner", B, longer=(ValueError, r"partner must have shape"))
value_cases(E, AF.unmix_info_nce, _uinfo_base, "temperature", TEMPERATURE)
value_cases(E, AF.unmix_info_nce, _uinfo_base, "lam", LAM_UNIT)
extra_cases(E, AF.unmix_info_nce, _uinfo_base, {
    "partner:none": (dict(partner=None), OK, None),  # the reversed batch
    "form:unknown": (dict(form="x"), ValueError, r"form must be one of"),
    "form_soft:tensor_temperature_zero": (dict(form="soft", temperature=torch.tensor(0.0)), ValueError,
                                         r"temperature must be finite and > 0"),
    "form_soft:lam_nan": (dict(form="soft", lam=float("nan")), ValueError, r"lam must lie in \[0, 1\]"),
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
})


def _usim_base():
    return dict(z1=_emb(), z2=_emb(seed=1), z_mix=_emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0))


E = "unmix_nt_xent"
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z1", more_rows=(ValueError, r"z2 must have 5 rows"),
             wider=(ValueError, r"z2 must have 9 features"))
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z2", more_rows=(ValueError, r"z2 must have 4 rows"),
             wider=(ValueError, r"z2 must have 8 features"))
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z_mix", more_rows=(ValueError, r"z_mix must have 4 rows"),
             wider=(ValueError, r"z_mix must have 8 features"))
index_cases(E, AF.unmix_nt_xent, _usim_base, "partner", B)
value_cases(E, AF.unmix_nt_xent, _usim_base, "temperature", TEMPERATURE)
value_cases(E, AF.unmix_nt_xent, _usim_base, "lam", LAM_UNIT)


# ====================================================================================== functional: mixing
IMAGES = {
    "ndim5": (lambda t: t.unsqueeze(0), ValueError, r"x must be a 4-D tensor"),
    "ndim3": (lambda t: t[0], ValueError, r"x must be a 4-D tensor"),
    "int64": (lambda t: t.long(), TypeError, r"x must be float16, bfloat16, float32, float64 or uint8"),
    "bool": (lambda t: t > 0.5, TypeError, r"x must be float16"),
    "complex64": (lambda t: t.to(torch.complex64), TypeError, r"x must be float16"),
    "fp16": (lambda t: t.half(), OK, None),
    "fp64": (lambda t: t.double(), OK, None),
    "uint8": (lambda t: (t * 255).to(torch.uint8), OK, None),
    "empty": (lambda t: t[:0], ValueError, r"x is empty"),
    "no_channels": (lambda t: t[:, :0], ValueError, r"x is empty"),
    # not scanned: a scan would read the batch a second time in a memory-bound pass (mix_images' docstring)
    "nan": (lambda t: _with(t, float("nan")), PROPAGATES, None),
    "inf": (lambda t: _with(t, float("inf")), PROPAGATES, None),
    "list": (lambda t: t.tolist(), TypeError, r"x must be a torch\.Tensor"),
    "none": (lambda t: None, TypeError, r"x must be a torch\.Tensor"),
    "wider": (lambda t: torch.cat([t, t[..., :1]], -1), OK, None),
}


def image_cases(entry, call, base, **overrides):
    for pert, (make, exc, match) in IMAGES.items():
        if pert in overrides:
            exc, match = overrides[pert]
        case(entry, f"x:{pert}", lambda make=make: call(**{**base(), "x": make(base()["x"])}), exc, match)


def _mix_base():
    return dict(x=_images(), lam=torch.full((B,), 0.5), cutmix=torch.tensor([True, False, True, False]),
                boxes=torch.tensor([[0, 4, 0, 4]] * B), partner=torch.arange(B).flip(0))


E = "mix_images"
image_cases(E, AF.mix_images, _mix_base)
case(E, "x:more_rows", lambda: AF.mix_images(**{**_mix_base(), "x": torch.rand(B + 1, 3, 8, 8)}), ValueError,
     r"lam must have shape \[5\]")
case(E, "x:meta", lambda: AF.mix_images(**{**_mix_base(), "x": _images().to("meta")}), ValueError, r"but x is on meta")
index_cases(E, AF.mix_images, _mix_base, "partner", B)
extra_cases(E, AF.mix_images, _mix_base, {
    "lam:nan": (dict(lam=torch.tensor([0.5, float("nan"), 0.5, 0.5])), ValueError, r"lam contains non-finite"),
    "lam:above_one": (dict(lam=torch.full((B,), 1.5)), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:negative": (dict(lam=torch.full((B,), -0.5)), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:int": (dict(lam=torch.ones(B, dtype=torch.long)), TypeError, r"lam must be a floating tensor"),
    "lam:float": (dict(lam=0.5), TypeError, r"lam must be a torch\.Tensor"),
    "lam:meta": (dict(lam=torch.full((B,), 0.5, device="meta")), ValueError, r"lam is on meta"),
    "cutmix:int": (dict(cutmix=torch.ones(B, dtype=torch.long)), TypeError, r"cutmix must be a bool tensor"),
    "boxes:outside": (dict(boxes=torch.tensor([[0, 9, 0, 4]] * B)), ValueError, r"boxes\[0\] = .* is not a box"),
    "boxes:reversed": (dict(boxes=torch.tensor([[4, 2, 0, 4]] * B)), ValueError, r"boxes\[0\] = .* is not a box"),
    "boxes:float": (dict(boxes=torch.tensor([[0, 4, 0, 4]] * B).float()), TypeError, r"boxes must be an integer"),
    "boxes:three_columns": (dict(boxes=torch.tensor([[0, 4, 0]] * B)), ValueError, r"boxes must have shape \[4, 4\]"),
    "mean:nan": (dict(mean=[0.5, float("nan"), 0.5]), ValueError, r"mean must be finite"),
    "std:zero": (dict(std=[1.0, 0.0, 1.0]), ValueError, r"std must not contain 0"),
    "std:negative": (dict(std=[1.0, -1.0, 1.0]), OK, None),  # torchvision's Normalize allows it too
    "mean:two_values": (dict(mean=[0.5, 0.5]), ValueError, r"mean must hold 3 values"),
    "mean:str": (dict(mean="abc"), TypeError, r"mean must be None, a sequence"),
    "out_dtype:int": (dict(out_dtype=torch.int32), TypeError, r"out_dtype must be None, float16"),
})


def _unmix_base():
    return dict(x=_images())


E = "unmix"
image_cases(E, AF.unmix, _unmix_base)
case(E, "x:more_rows", lambda: AF.unmix(torch.rand(B + 1, 3, 8, 8)), OK)
case(E, "x:meta", lambda: AF.unmix(_images().to("meta")), ValueError, r"x", marks=_xfail_meta)
extra_cases(E, AF.unmix, _unmix_base, {
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:negative": (dict(alpha=-1.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:nan": (dict(alpha=float("nan")), ValueError, r"alpha must be finite and > 0"),
    "alpha:inf": (dict(alpha=float("inf")), ValueError, r"alpha must be finite and > 0"),
    "alpha:tensor": (dict(alpha=torch.tensor(1.0)), TypeError, r"alpha must be a number"),
    "prob_mixup:negative": (dict(prob_mixup=-0.1), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "prob_mixup:above_one": (dict(prob_mixup=1.5), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "prob_mixup:nan": (dict(prob_mixup=float("nan")), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "per_sample:int": (dict(per_sample=1), TypeError, r"per_sample must be a bool"),
    "pairing:unknown": (dict(pairing="x"), ValueError, r"pairing must be one of"),
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "generator:other_device": (dict(x=_images().to("meta"), generator=torch.Generator()), ValueError,
                               r"generator is on cpu but x is on meta"),
})

E = "unmix_params"
extra_cases(E, AF.unmix_params, lambda: dict(batch_size=B, height=8, width=8), {
    "valid": (dict(), OK, None),
    "batch_size:zero": (dict(batch_size=0), ValueError, r"batch_size must be >= 1"),
    "batch_size:negative": (dict(batch_size=-1), ValueError, r"batch_size must be >= 1"),
    "batch_size:float": (dict(batch_size=2.0), TypeError, r"batch_size must be an int"),
    "height:zero": (dict(height=0), ValueError, r"height must be >= 1"),
    "width:bool": (dict(width=True), TypeError, r"width must be an int"),
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "prob_mixup:two": (dict(prob_mixup=2.0), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "device:unknown": (dict(device="nodevice"), ValueError, r"device must be a torch\.device"),
    "generator:other_device": (dict(generator=torch.Generator(), device="meta"), ValueError, r"generator is on cpu"),
})


# ========================================================================================= augcl.nn modules
_T_CTOR = {  # bad temperatures at construction (NTXentLoss keeps lightly's messages for |t| < 1e-8)
    "temperature:negative": (dict(temperature=-1.0), ValueError, r"temperature"),
    "temperature:nan": (dict(temperature=float("nan")), ValueError, r"temperature"),
    "temperature:inf": (dict(temperature=float("inf")), ValueError, r"temperature"),
    "temperature:tensor2": (dict(temperature=torch.tensor([0.1, 0.2])), ValueError,
                            r"temperature must be a number or a one-element tensor"),
    "temperature:str": (dict(temperature="0.5"), TypeError, r"temperature must be a number"),
    "temperature:none": (dict(temperature=None), TypeError, r"temperature must be a number"),
}
for E, cls in (("nn.NTXentLoss", ANN.NTXentLoss), ("compat.lightly.NTXentLoss", CL.NTXentLoss)):
    ctor_cases(E, cls, {
        **_T_CTOR,
        "temperature:zero": (dict(temperature=0.0), ValueError, r"Illegal temperature: abs\(0\.0\) < 1e-8"),
        "temperature:int_tensor": (dict(temperature=torch.tensor(1)), TypeError, r"temperature must be a floating"),
        "memory_bank_size:negative": (dict(memory_bank_size=-1), ValueError, r"Illegal memory bank size"),
        "memory_bank_size:bare_int": (dict(memory_bank_size=5), ValueError, r"does not specify the feature"),
        "memory_bank_size:one_entry": (dict(memory_bank_size=(5,)), ValueError, r"Illegal memory bank size"),
        "memory_bank_size:three_entries": (dict(memory_bank_size=(5, 8, 1)), ValueError, r"Illegal memory bank size"),
    })
    _fresh = (lambda cls=cls: cls())
    _ntx = (lambda out0, out1, cls=cls: cls()(out0, out1))
    # without a bank NTXentLoss is nt_xent(out0, out1), its errors naming the module's arguments out0 / out1
    matrix_cases(E, _ntx, lambda: dict(out0=_emb(), out1=_emb(seed=1)), "out0",
                 more_rows=(ValueError, r"out1 must have 5 rows"), wider=(ValueError, r"out1 must have 9 features"),
                 nan=(ValueError, r"out0 contains non-finite"),
                 inf=(ValueError, r"out0 contains non-finite"))
    matrix_cases(E, _ntx, lambda: dict(out0=_emb(), out1=_emb(seed=1)), "out1",
                 more_rows=(ValueError, r"out1 must have 4 rows"), wider=(ValueError, r"out1 must have 8 features"),
                 nan=(ValueError, r"out1 contains non-finite"),
                 inf=(ValueError, r"out1 contains non-finite"))
    _bank = (lambda out0, out1, cls=cls: cls(memory_bank_size=(K, D))(out0, out1))
    _bank_base = (lambda: dict(out0=_emb().requires_grad_(), out1=_emb(seed=1)))
    matrix_cases(E + "[bank]", _bank, _bank_base, "out0", more_rows=(ValueError, r"out1 must have 5 rows"),
                 wider=(ValueError, r"out1 must have 9 features"))
    matrix_cases(E + "[bank]", _bank, _bank_base, "out1", more_rows=(ValueError, r"out1 must have 4 rows"),
                 wider=(ValueError, r"out1 must have 8 features"))
    case(E + "[bank]", "batch_larger_than_bank", lambda cls=cls: cls(memory_bank_size=(K, D))(
        _emb(K + 2).requires_grad_(), _emb(K + 2, seed=1)), OK)  # lightly drops the rows that do not fit
    case(E + "[bank]", "width_not_bank_width", lambda cls=cls: cls(memory_bank_size=(K, D + 2))(_emb(), _emb(seed=1)),
         ValueError, r"out0 has 8 features but the memory bank stores 10")
    case(E, "tensor_temperature_nan", lambda cls=cls: cls(temperature=torch.tensor(float("nan")))(_emb(), _emb(seed=1)),
         ValueError, r"temperature must be finite and > 0")
    case(E, "tensor_temperature_negative", lambda cls=cls: cls(temperature=torch.tensor(-1.0))(_emb(), _emb(seed=1)),
         ValueError, r"temperature must be finite and > 0")

E = "nn.MoCoQueue"
ctor_cases(E, ANN.MoCoQueue, {
    "dim:zero": (dict(dim=0, size=K), ValueError, r"dim must be an int > 0"),
    "size:zero": (dict(dim=D, size=0), ValueError, r"size must be an int > 0"),
    "dim:negative": (dict(dim=-1, size=K), ValueError, r"dim must be an int > 0"),
    "dim:float": (dict(dim=2.0, size=K), ValueError, r"dim must be an int > 0"),
    "size:bool": (dict(dim=D, size=True), ValueError, r"size must be an int > 0"),
    "dim:none": (dict(dim=None, size=K), ValueError, r"dim must be an int > 0"),
})
_enqueue = (lambda keys: ANN.MoCoQueue(D, K).enqueue(keys))
matrix_cases(E + ".enqueue", lambda keys: (_enqueue(keys), torch.zeros(()))[1], lambda: dict(keys=_emb()), "keys",
             more_rows=(OK, None), wider=(ValueError, r"keys must have 8 features"))
case(E + ".enqueue", "batch_larger_than_queue", lambda: ANN.MoCoQueue(D, K).enqueue(_emb(K + 1)), ValueError,
     r"cannot enqueue a batch of 7 keys into a queue of size 6")
case(E + ".enqueue", "batch_equal_to_queue", lambda: (ANN.MoCoQueue(D, K).enqueue(_emb(K)), torch.zeros(()))[1], OK)

E = "nn.InfoNCELoss"
ctor_cases(E, lambda **kw: ANN.InfoNCELoss(key_negatives=True, **kw), {
    **_T_CTOR,
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    "temperature:int_tensor": (dict(temperature=torch.tensor(1)), TypeError, r"temperature must be a floating"),
    "queue_size:negative": (dict(queue_size=-1), ValueError, r"queue_size must be an int >= 0"),
    "queue_size:no_dim": (dict(queue_size=4), ValueError, r"needs dim="),
    "queue_size:dim_zero": (dict(queue_size=4, dim=0), ValueError, r"dim must be an int > 0"),
    "queue_size:dim_float": (dict(queue_size=4, dim=2.5), ValueError, r"dim must be an int > 0"),
})
case(E, "no_negatives", lambda: ANN.InfoNCELoss(), ValueError, r"no negatives")
_inl = (lambda query, key, **kw: ANN.InfoNCELoss(queue_size=K, dim=D)(query, key, **kw))
_inl_base = (lambda: dict(query=_emb(), key=_emb(seed=1)))
matrix_cases(E, _inl, _inl_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, _inl, _inl_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
case(E, "batch_larger_than_queue", lambda: _inl(_emb(K + 1), _emb(K + 1, seed=1), update=True), ValueError,
     r"batch of 7 keys into a queue of size 6")
case(E, "tensor_temperature_zero", lambda: ANN.InfoNCELoss(torch.tensor(0.0), key_negatives=True)(_emb(), _emb(seed=1)),
     ValueError, r"temperature must be finite and > 0")

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
case(E, "lam_range:negative", lambda: ANN.Hallucinator(D, lam_range=(-1.0, -0.5))(_emb(), _emb(seed=1)), OK)
_hfwd = (lambda x, k, **kw: _gen()(x, k, **kw))
_hfwd_base = (lambda: dict(x=_emb(), k=_emb(seed=1), lam=None))
matrix_cases(E, _hfwd, _hfwd_base, "x", more_rows=_kshape, wider=(ValueError, r"x has width 9 but this Hallucinator"),
             zero_width=(ValueError, r"x has width 0 but this Hallucinator"), empty=_kshape)
matrix_cases(E, _hfwd, _hfwd_base, "k", more_rows=_kshape, wider=_kshape, empty=_kshape, zero_width=_kshape)
value_cases(E, _hfwd, _hfwd_base, "lam", LAM_EXTRAPOLATION)
extra_cases(E, _hfwd, _hfwd_base, {
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "generator:ok": (dict(generator=torch.Generator().manual_seed(0)), OK, None),
})
case(E, "nan_parameter", lambda: _nan_gen()(_emb(), _emb(seed=1)), ValueError, r"fc2\.weight contains non-finite")
case(E + ".hallucinate", "x:nan", lambda: _gen().hallucinate(_with(_emb(), float("nan")), _emb(seed=1)), ValueError,
     r"x contains non-finite")
case(E + ".sample_lam", "batch:negative", lambda: _gen().sample_lam(-1, torch.device("cpu")), ValueError,
     r"batch must be an int >= 1")
case(E + ".sample_lam", "generator:str", lambda: _gen().sample_lam(2, torch.device("cpu"), "g"), TypeError,
     r"generator must be a torch\.Generator")

E = "nn.UnMix"
ctor_cases(E, ANN.UnMix, {
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:nan": (dict(alpha=float("nan")), ValueError, r"alpha must be finite and > 0"),
    "prob_mixup:two": (dict(prob_mixup=2.0), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "pairing:unknown": (dict(pairing="x"), ValueError, r"pairing must be one of"),
    "objective:unknown": (dict(objective="x"), ValueError, r"objective must be"),
    "form:unknown": (dict(form="x"), ValueError, r"form must be one of"),
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    **_T_CTOR,
    "mean:str": (dict(mean="abc"), TypeError, r"mean must be None, a sequence"),
    "mean:nan": (dict(mean=[0.5, float("nan"), 0.5]), ValueError, r"mean must be finite"),
    "mean:empty": (dict(mean=[]), ValueError, r"mean must hold one value per channel"),
    "std:zero": (dict(std=[1.0, 0.0, 1.0]), ValueError, r"std must not contain 0"),
    "std:zero_tensor": (dict(std=torch.tensor([1.0, 0.0, 1.0])), ValueError, r"std must not contain 0"),
    "out_dtype:int": (dict(out_dtype=torch.int32), TypeError, r"out_dtype must be None, float16"),
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "per_sample:int": (dict(per_sample=1), TypeError, r"per_sample must be a bool"),
})
case(E, "mean_std_mismatch_channels", lambda: ANN.UnMix(mean=[0.5, 0.5])(_images()), ValueError, r"mean must hold 3")
image_cases(E + ".mix", lambda x: ANN.UnMix().mix(x), _unmix_base)
_um = (lambda a, b, mixed, lam, partner, queue: ANN.UnMix().loss(a, b, mixed, lam, partner, queue))
_um_base = (lambda: dict(a=_emb(), b=_emb(seed=1), mixed=_emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0),
                         queue=_unit(K, seed=3)))
# UnMix.loss(a, b, mixed, ...) is unmix_info_nce(q, k, q_mix, ...) (documented): errors use those names
matrix_cases(E + ".loss", _um, _um_base, "a", label="q", more_rows=(ValueError, r"k must have 5 rows"),
             wider=(ValueError, r"k must have 9 features"))
matrix_cases(E + ".loss", _um, _um_base, "b", label="k", more_rows=(ValueError, r"k must have 4 rows"),
             wider=(ValueError, r"k must have 8 features"))
matrix_cases(E + ".loss", _um, _um_base, "mixed", label="q_mix", more_rows=(ValueError, r"q_mix must have 4 rows"),
             wider=(ValueError, r"q_mix must have 8 features"))
matrix_cases(E + ".loss", _um, _um_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=(ValueError, r"queue=None and key_negatives=False"))
index_cases(E + ".loss", _um, _um_base, "partner", B)
value_cases(E + ".loss", _um, _um_base, "lam", LAM_UNIT)
case(E + "[simclr].loss", "queue_given", lambda: ANN.UnMix(objective="simclr").loss(_emb(), _emb(), _emb(), 0.5, None,
                                                                                   _unit(K)),
     ValueError, r"queue is only used by objective='moco'")

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
extra_cases(E, _sw, lambda: dict(high_resolution_outputs=[_emb(B, K), _emb(B, K, seed=1)],
                                 low_resolution_outputs=[_emb(B, K, seed=2)]), {
    "valid": (dict(), OK, None),
    "high[0]:nan": (dict(high_resolution_outputs=[torch.full((B, K), float("nan")), _emb(B, K)]), ValueError,
                    r"high_resolution_outputs\[0\] contains non-finite"),
    "high:tensor": (dict(high_resolution_outputs=_emb(B, K)), TypeError,
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
matrix_cases(E, _proto, lambda: dict(x=_emb()), "x", skip=("nan", "inf"), ndim3=(OK, None), more_rows=(OK, None),
             ndim1=_xw, wider=_xw, zero_width=_xw, int64=(TypeError, r"x must be a floating tensor"),
             bool=(TypeError, r"x must be a floating tensor"), complex64=(TypeError, r"x must be a floating tensor"),
             fp16=(TypeError, r"x is torch\.float16 but the prototypes are torch\.float32"),
             fp64=(TypeError, r"x is torch\.float64 but the prototypes are torch\.float32"),
             meta=(ValueError, r"x is on meta but the prototypes are on cpu"))
case(E, "x:bf16_under_autocast", lambda: _autocast_proto(), OK)
case(E, "step:missing", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(_emb()), ValueError,
     r"provide the `step` argument")
case(E, "step:str", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(_emb(), "a"), TypeError,
     r"step must be an int")
case(E, "step:tensor", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(_emb(), torch.tensor(7)),
     TypeError, r"step must be an int")  # lightly's requires_grad_(step >= n) fails obscurely on a tensor
case(E, "step:int", lambda: ANN.SwaVPrototypes(D, K, n_steps_frozen_prototypes=5)(_emb(), 7), OK)


def _autocast_proto():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return ANN.SwaVPrototypes(D, K)(_emb().bfloat16()).float()


# ============================================================================================ augcl.compat
def _solo_base():
    return dict(z=_emb(2 * B), indexes=torch.arange(B).repeat(2), temperature=0.1)


E = "compat.solo.simclr_loss_func"
matrix_cases(E, CS.simclr_loss_func, _solo_base, "z", more_rows=(ValueError, r"indexes must have shape \[9\]"),
             wider=(OK, None), meta=(ValueError, r"indexes is on cpu but the embeddings are on meta"))
value_cases(E, CS.simclr_loss_func, _solo_base, "temperature", TEMPERATURE,
            meta_tensor=(ValueError, r"temperature is on meta but z is on cpu"))
_three = dict(z=_emb(3 * B), indexes=torch.arange(B).repeat(3))
extra_cases(E, CS.simclr_loss_func, _solo_base, {
    "indexes:float": (dict(indexes=torch.arange(B).repeat(2).float()), OK, None),  # ids compared by equality
    "indexes:bool": (dict(indexes=torch.tensor([0, 1] * B).bool()), OK, None),
    "indexes:complex": (dict(indexes=torch.arange(B).repeat(2).to(torch.complex64)), TypeError,
                        r"indexes must be a real tensor"),
    "indexes:meta": (dict(indexes=torch.arange(B).repeat(2).to("meta")), ValueError, r"indexes is on meta"),
    "indexes:list": (dict(indexes=list(range(2 * B))), TypeError, r"indexes must be a torch\.Tensor"),
    "indexes:shorter": (dict(indexes=torch.arange(B).repeat(2)[:-1]), ValueError, r"indexes must have shape \[8\]"),
    "indexes:no_positive": (dict(indexes=torch.arange(2 * B)), ValueError, r"has no positive"),
    "indexes:nan": (dict(indexes=torch.full((2 * B,), float("nan"))), ValueError, r"index nan\) has no positive"),
    "three_views": (_three, OK, None),
    "three_views:temperature_tensor2": (_three | dict(temperature=torch.tensor([0.1, 0.2])), ValueError,
                                        r"temperature must be a number or a one-element tensor"),
    "three_views:temperature_zero": (_three | dict(temperature=0.0), ValueError, r"temperature must be a finite"),
    "three_views:temperature_tensor_zero": (_three | dict(temperature=torch.tensor(0.0)), ValueError,
                                            r"temperature must be finite and > 0"),
    "three_views:temperature_str": (_three | dict(temperature="a"), TypeError, r"temperature must be a number"),
    "three_views:z_nan": (_three | dict(z=torch.full((3 * B, D), float("nan"))), ValueError, r"z contains non-finite"),
})


def _moco_base():
    return dict(query=_emb(), key=_emb(seed=1), queue=_unit(K, seed=2).t().contiguous(), temperature=0.1)


E = "compat.solo.mocov2plus_loss_func"
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"queue must be \[D, K\] with D = 9"))
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
_qdk = (ValueError, r"queue must be (a 2-D tensor \[D, K\]|\[D, K\] with D = 8)")
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "queue", ndim3=_qdk, ndim1=_qdk,
             zero_width=(ValueError, r"queue is empty"), empty=_qdk, more_rows=_qdk, wider=(OK, None))
value_cases(E, CS.mocov2plus_loss_func, _moco_base, "temperature", TEMPERATURE)
extra_cases(E, CS.mocov2plus_loss_func, _moco_base, {
    "queue:rows_first_layout": (dict(queue=_unit(K)), ValueError, r"queue must be \[D, K\] with D = 8"),
})

def _solo_swav(**kw):
    kw = dict(kw)
    p0, a0 = kw.pop("p0"), kw.pop("a0")
    return CS.swav_loss_func([p0, _emb(B, K, seed=1)], [a0, _codes(seed=3)], **kw)


def _codes(seed=2):
    return torch.softmax(_emb(B, K, seed=seed), dim=1)


def _solo_swav_base():
    return dict(p0=_emb(B, K), a0=_codes())


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
_sp = [_emb(B, K), _emb(B, K, seed=1)]
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
case(E, "assignments[1]:nan", lambda: CS.swav_loss_func(_sp, [_sa[0], _with(_sa[1], float("nan"))]), ValueError,
     r"assignments\[1\] contains non-finite")
case(E, "preds:batch_of_one", lambda: CS.swav_loss_func([_emb(1, K), _emb(1, K, seed=1)], [_codes()[:1]] * 2), OK)
case(E, "preds:huge", lambda: CS.swav_loss_func([_emb(B, K) * 1e30, _emb(B, K)], _sa), OK)  # ~1e31, as solo
case(E, "preds:overflowing", lambda: CS.swav_loss_func([_emb(B, K) * 1e37, _emb(B, K)], _sa), FloatingPointError,
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
matrix_cases(E, _sk_call, lambda: dict(Q=_emb(B, K)), "Q", skip=("meta",), more_rows=(OK, None), wider=(OK, None),
             ndim3=(ValueError, r"Q must be a 2-D tensor \[B, K\]"), ndim1=(ValueError, r"Q must be a 2-D tensor"))
case(E, "Q:meta", lambda: CS.SinkhornKnopp()(_emb(B, K).to("meta")), ValueError, r"Q", marks=_xfail_meta)
case(E, "Q:bf16", lambda: CS.SinkhornKnopp()(_emb(B, K).bfloat16()), OK)
case(E, "Q:huge", lambda: CS.SinkhornKnopp()(_emb(B, K) * 1e30), OK)  # log domain: no overflow
case(E, "epsilon:tiny", lambda: CS.SinkhornKnopp(epsilon=1e-30)(_emb(B, K)), OK)
case(E, "num_iters:zero", lambda: CS.SinkhornKnopp(num_iters=0)(_emb(B, K)), OK)
case(E, "backend:unknown", lambda: CS.SinkhornKnopp(backend="gpu")(_emb(B, K)), ValueError, r"unknown backend")
case(E, "epsilon:set_after_construction", lambda: _set_attr(CS.SinkhornKnopp(), "epsilon", 0.0)(_emb(B, K)),
     ValueError, r"epsilon must be finite and > 0")


def _set_attr(module, name, value):
    setattr(module, name, value)
    return module


def _cos_base():
    return dict(p=_emb(), z=_emb(seed=1))


for E, _fn in (("compat.solo.byol_loss_func", CS.byol_loss_func),
               ("compat.solo.simsiam_loss_func", CS.simsiam_loss_func)):
    matrix_cases(E, _fn, _cos_base, "p", more_rows=(ValueError, r"z must have 5 rows"),
                 wider=(ValueError, r"z must have 9 features"), meta=(ValueError, r"z is on cpu but p is on meta"))
    matrix_cases(E, _fn, _cos_base, "z", more_rows=(ValueError, r"z must have 4 rows"),
                 wider=(ValueError, r"z must have 8 features"))
    extra_cases(E, _fn, _cos_base, {
        "simplified:false": (dict(simplified=False), OK, None),
        "simplified:str": (dict(simplified="yes"), TypeError, r"simplified must be a bool"),
        "p:zero_row": (dict(p=torch.zeros(B, D)), OK, None),  # cosine of a zero vector: 0, as solo
        "batch_of_one": (dict(p=_emb(1), z=_emb(1, seed=1)), OK, None),
    })

E = "compat.pml.NTXentLoss"
ctor_cases(E, CP.NTXentLoss, {
    **_T_CTOR,
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    "distance:unsupported": (dict(distance=None), TypeError, r"supports only temperature= and backend="),
})
_pml = (lambda **kw: CP.NTXentLoss()(**kw))
_lab = torch.arange(B).repeat(2)
_pml_base = (lambda: dict(embeddings=_emb(2 * B), labels=_lab))
matrix_cases(E, _pml, _pml_base, "embeddings", more_rows=(ValueError, r"labels must have shape \[9\]"),
             wider=(OK, None), meta=(ValueError, r"labels is on cpu but the embeddings are on meta"))
extra_cases(E, _pml, _pml_base, {
    "labels:none": (dict(labels=None), ValueError, r"labels are required"),
    "labels:float": (dict(labels=_lab.float()), OK, None),  # compared by equality, as pml
    "labels:nan": (dict(labels=torch.full((2 * B,), float("nan"))), ValueError, r"labels contains non-finite"),
    "labels:complex": (dict(labels=_lab.to(torch.complex64)), TypeError, r"labels must be a real tensor"),
    "labels:meta": (dict(labels=_lab.to("meta")), ValueError, r"labels is on meta"),
    "labels:shorter": (dict(labels=_lab[:-1]), ValueError, r"labels must have shape \[8\]"),
    "labels:list": (dict(labels=_lab.tolist()), TypeError, r"labels must be a torch\.Tensor"),
    "labels:2d": (dict(labels=_lab.unsqueeze(1)), ValueError, r"labels must have shape \[8\]"),
    "ref_emb:wider": (dict(ref_emb=_emb(2 * B, D + 1)), ValueError, r"ref_emb must have 8 features"),
    "ref_emb:nan": (dict(ref_emb=torch.full((2 * B, D), float("nan"))), ValueError, r"ref_emb contains non-finite"),
    "ref_emb:meta": (dict(ref_emb=_emb(2 * B).to("meta")), ValueError, r"ref_emb is on meta"),
    "ref_emb:int": (dict(ref_emb=_emb(2 * B).long()), TypeError, r"ref_emb must be float16"),
    "ref_emb:more_rows_without_ref_labels": (dict(ref_emb=_emb(2 * B + 1)), ValueError, r"pass ref_labels"),
    "ref_labels:shorter": (dict(ref_emb=_emb(2 * B + 1), ref_labels=_lab.clone()), ValueError,
                           r"ref_labels must have shape \[9\]"),
    "ref_labels:same_object_as_labels": (dict(ref_emb=_emb(2 * B + 1), ref_labels=_lab), ValueError,
                                         r"pass ref_labels"),
    "indices_tuple": (dict(indices_tuple=(1, 2)), ValueError, r"indices_tuple"),
    "no_positive_pair_nan": (dict(embeddings=_with(_emb(2 * B), float("nan")), labels=torch.arange(2 * B)), ValueError,
                             r"embeddings contains non-finite"),
})
case(E, "tensor_temperature_nan", lambda: CP.NTXentLoss(torch.tensor(float("nan")))(_emb(2 * B), _lab), ValueError,
     r"temperature must be finite and > 0")

E = "compat.timm.Mixup"
ctor_cases(E, CT.Mixup, {
    "mixup_alpha:negative": (dict(mixup_alpha=-1.0), ValueError, r"mixup_alpha and cutmix_alpha must be >= 0"),
    "mixup_alpha:nan": (dict(mixup_alpha=float("nan")), ValueError, r"mixup_alpha must be a finite number"),
    "mixup_alpha:str": (dict(mixup_alpha="1"), TypeError, r"mixup_alpha must be a finite number"),
    "prob:negative": (dict(prob=-0.1), ValueError, r"prob must lie in \[0, 1\]"),
    "prob:above_one": (dict(prob=1.5), ValueError, r"prob must lie in \[0, 1\]"),
    "switch_prob:two": (dict(switch_prob=2.0), ValueError, r"switch_prob must lie in \[0, 1\]"),
    "label_smoothing:negative": (dict(label_smoothing=-0.1), ValueError, r"label_smoothing must lie in \[0, 1\]"),
    "label_smoothing:above_one": (dict(label_smoothing=1.5), ValueError, r"label_smoothing must lie in \[0, 1\]"),
    "num_classes:zero": (dict(num_classes=0), ValueError, r"num_classes must be an int >= 1"),
    "mode:unknown": (dict(mode="x"), ValueError, r"mode must be one of"),
    "cutmix_minmax:reversed": (dict(cutmix_minmax=(0.9, 0.1)), ValueError, r"cutmix_minmax must be \(min, max\) box"),
    "cutmix_minmax:above_one": (dict(cutmix_minmax=(0.0, 2.0)), ValueError, r"cutmix_minmax must be \(min, max\) box"),
    "cutmix_minmax:three": (dict(cutmix_minmax=(0.1, 0.2, 0.3)), ValueError, r"cutmix_minmax must be \(min, max\)"),
    "cutmix_minmax:str": (dict(cutmix_minmax="ab"), TypeError, r"cutmix_minmax must be None or \(min, max\)"),
})
case(E, "both_alphas_zero", lambda: CT.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)(_images(), torch.arange(B)),
     ValueError, r"one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")  # as timm: at the draw
_tgt = torch.tensor([1, 2, 3, 4])
for _mode in ("batch", "elem"):
    _mx = (lambda x, target, _mode=_mode: CT.Mixup(num_classes=10, mode=_mode, cutmix_alpha=1.0)(x, target))
    _mx_base = (lambda: dict(x=_images(), target=_tgt))
    image_cases(f"{E}[{_mode}]", _mx, _mx_base, ndim5=(ValueError, r"x must be a 4-D batch"),
                ndim3=(ValueError, r"x must be a 4-D batch"), list=(TypeError, r"x must be a torch\.Tensor"),
                none=(TypeError, r"x must be a torch\.Tensor"),
                empty=(ValueError, r"target must hold one entry per image: x has 0 images"))
    extra_cases(f"{E}[{_mode}]", _mx, _mx_base, {
        "target:too_high": (dict(target=torch.tensor([1, 2, 3, 10])), IndexArgumentError, r"target has class indices"),
        "target:negative": (dict(target=torch.tensor([1, 2, 3, -1])), IndexArgumentError, r"target has class indices"),
        "target:float": (dict(target=_tgt.float()), TypeError, r"target must hold integer class indices"),
        "target:longer": (dict(target=torch.tensor([1, 2, 3, 4, 5])), ValueError, r"target must hold one entry per"),
        "target:meta": (dict(target=_tgt.to("meta")), ValueError, r"target is on meta"),
        "target:list": (dict(target=_tgt.tolist()), TypeError, r"target must be a torch\.Tensor"),
        "target:none": (dict(target=None), TypeError, r"target must be a torch\.Tensor"),
        "x:meta": (dict(x=_images().to("meta")), ValueError, r"target is on cpu but x is on meta"),
    })
case(f"{E}[multi_label]", "target:nan",
     lambda: CT.Mixup(num_classes=10, multi_label=True)(_images(), torch.full((B, 10), float("nan"))),
     ValueError, r"target contains non-finite")

E = "compat.timm.mixup_target"
extra_cases(E, CT.mixup_target, lambda: dict(target=torch.tensor([1, 2]), num_classes=10), {
    "valid": (dict(), OK, None),
    "target:too_high": (dict(target=torch.tensor([1, 10])), IndexArgumentError,
                        r"target has class indices in \[1, 10\]"),
    "target:negative": (dict(target=torch.tensor([1, -1])), IndexArgumentError, r"target has class indices"),
    "target:float": (dict(target=torch.tensor([1.5, 2.0])), TypeError, r"target must hold integer class indices"),
    "target:list": (dict(target=[1, 2]), TypeError, r"target must be a torch\.Tensor"),
    "num_classes:zero": (dict(target=torch.tensor([0, 0]), num_classes=0), ValueError,
                         r"num_classes must be an int >= 1"),
    "lam:nan": (dict(lam=float("nan")), ValueError, r"lam must be finite and in \[0, 1\]"),
    "lam:above_one": (dict(lam=1.5), ValueError, r"lam must be finite and in \[0, 1\]"),
    "lam:tensor_nan": (dict(lam=torch.tensor([[0.5], [float("nan")]])), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:int_tensor": (dict(lam=torch.ones(2, 1, dtype=torch.long)), TypeError, r"lam must be a float or a floating"),
    "smoothing:nan": (dict(smoothing=float("nan")), ValueError, r"smoothing must be finite and in \[0, 1\]"),
    "smoothing:above_one": (dict(smoothing=1.5), ValueError, r"smoothing must be finite and in \[0, 1\]"),
    "multi_label:nan": (dict(target=torch.full((2, 10), float("nan")), multi_label=True), ValueError,
                        r"target contains non-finite"),
    "multi_label:shape": (dict(target=torch.ones(2, 3), multi_label=True), ValueError, r"target: multi-label mixup"),
})
E = "compat.timm.one_hot"
extra_cases(E, CT.one_hot, lambda: dict(x=torch.tensor([1, 2]), num_classes=10), {
    "valid": (dict(), OK, None),
    "x:too_high": (dict(x=torch.tensor([1, 10])), IndexArgumentError, r"x has class indices"),
    "x:negative": (dict(x=torch.tensor([-1])), IndexArgumentError, r"x has class indices"),
    "num_classes:zero": (dict(x=torch.tensor([0]), num_classes=0), ValueError, r"num_classes must be an int >= 1"),
})

for _name, _cls in (("MixUp", CTV.MixUp), ("CutMix", CTV.CutMix)):
    E = f"compat.torchvision.{_name}"
    ctor_cases(E, _cls, {
        "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be a finite number > 0"),
        "alpha:negative": (dict(alpha=-1.0), ValueError, r"alpha must be a finite number > 0"),
        "alpha:nan": (dict(alpha=float("nan")), ValueError, r"alpha must be a finite number > 0"),
        "num_classes:zero": (dict(num_classes=0), ValueError, r"num_classes must be None or an int >= 1"),
        "labels_getter:int": (dict(labels_getter=3), ValueError, r"labels_getter should either be"),
    })
    _tv = (lambda x, labels, _cls=_cls: _cls(num_classes=10)(x, labels))
    _tv_base = (lambda: dict(x=_images(), labels=_tgt))
    image_cases(E, _tv, _tv_base, ndim5=(ValueError, r"Expected a batched input with 4 dims"),
                ndim3=(ValueError, r"Expected a batched input with 4 dims"),
                empty=(ValueError, r"batch size of the image or video does not match .* 0 != 4"),
                list=(ValueError, r"no image batch \[B, C, H, W\] found"),
                none=(ValueError, r"no image batch \[B, C, H, W\] found"))
    extra_cases(E, _tv, _tv_base, {
        "labels:too_high": (dict(labels=torch.tensor([1, 2, 3, 10])), IndexArgumentError, r"labels has class indices"),
        "labels:negative": (dict(labels=torch.tensor([1, 2, 3, -1])), IndexArgumentError, r"labels has class indices"),
        "labels:float": (dict(labels=_tgt.float()), TypeError, r"labels: index-based labels must be integers"),
        "labels:longer": (dict(labels=torch.tensor([1, 2, 3, 4, 5])), ValueError, r"batch size of the image"),
        "labels:list": (dict(labels=_tgt.tolist()), ValueError, r"Could not infer where the labels are"),
        "labels:2d_nan": (dict(labels=torch.full((B, 10), float("nan"))), ValueError, r"labels contains non-finite"),
        "labels:2d_wrong_classes": (dict(labels=torch.ones(B, 3)), ValueError, r"must match num_classes"),
        "labels:complex": (dict(labels=_tgt.to(torch.complex64)), TypeError, r"labels must be a real tensor"),
        "labels:3d": (dict(labels=torch.ones(B, 10, 1)), ValueError, r"labels should be index based"),
        "empty_batch": (dict(x=_images()[:0], labels=_tgt[:0]), ValueError, r"x is empty"),
    })
    case(E, "labels:meta", lambda _tv=_tv: _tv(_images(), _tgt.to("meta")), ValueError, r"labels",
         marks=_xfail_meta)


# =============================================================================================== the tests
assert len({p.id for p in CASES}) == len(CASES), "duplicate case ids"

def _all_finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, (tuple, list)):
        return all(_all_finite(o) for o in out)
    if isinstance(out, dict):
        return all(_all_finite(o) for o in out.values())
    return True


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    if exc is OK:
        assert _all_finite(fn()), "documented to return a finite result"
        return
    if exc is PROPAGATES:
        fn()  # no error: non-finite pixels are mixed as they are (see mix_images' docstring)
        return
    with pytest.raises(exc, match=match):
        fn()


def test_index_argument_error_is_both_index_and_value_error():
    assert issubclass(IndexArgumentError, IndexError) and issubclass(IndexArgumentError, ValueError)
    for call in (lambda: AF.contrastive_loss(_emb(), _emb(), torch.full((B,), B)),
                 lambda: AF.unmix_info_nce(_emb(), _emb(), _emb(), 0.5, torch.full((B,), B), _unit(K)),
                 lambda: AF.mix_images(**{**_mix_base(), "partner": torch.full((B,), B)}),
                 lambda: AF.swav_loss([_emb(B, K)], [_emb(B, K)], **_mix(mix_partner=torch.full((B,), B)))):
        with pytest.raises(IndexError):
            call()
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("call", [
    lambda: AF.contrastive_loss(_emb(), _emb(), torch.full((B,), B)),
    lambda: AF.unmix_info_nce(_emb(), _emb(), _emb(), 0.5, torch.full((B,), B), _unit(K)),
    lambda: AF.unmix_nt_xent(_emb(), _emb(), _emb(), 0.5, torch.full((B,), -1)),
    lambda: AF.mix_images(**{**_mix_base(), "partner": torch.full((B,), B)}),
    lambda: AF.swav_loss([_emb(B, K)], [_emb(B, K)], **_mix(mix_partner=torch.full((B,), B))),
    lambda: AF.swav_loss([_emb(B, K)], [_emb(B, K)], **_mix(mix_partner=torch.full((B,), B)), mix_form="authors"),
], ids=["pos_idx", "unmix_info_nce", "unmix_nt_xent", "mix_images", "swav_soft", "swav_authors"])
def test_index_checks_stay_on_without_value_checks(call):
    """set_checks(False) switches off the value checks, never the index range checks (out-of-bounds reads)."""
    augcl.set_checks(False)
    try:
        with pytest.raises(IndexArgumentError, match="partner|pos_idx"):
            call()
    finally:
        augcl.set_checks(True)


@pytest.mark.parametrize("call", [
    lambda: AF.hallucinate(_with(_emb(), float("nan")), _emb(seed=1), 0.05, **_weights()),
    lambda: AF.swav_loss([_with(_emb(B, K), float("nan")), _emb(B, K)], [_with(_emb(B, K), float("nan"))]),
    lambda: AF.hallucinate_simsiam_loss(_gen(), _with(_emb(), float("nan")), _emb(), _emb(), _emb()),
    lambda: ANN.MoCoQueue(D, K).enqueue(_with(_emb(), float("nan"))),
], ids=["hallucinate", "swav_loss", "simsiam", "enqueue"])
def test_value_checks_can_be_disabled(call):
    augcl.set_checks(False)
    try:
        call()  # no error: the caller asked for no value checks (the result may be non-finite)
    finally:
        augcl.set_checks(True)
    with pytest.raises(ValueError, match="non-finite"):
        call()


def test_swav_loss_checks_crops_in_one_sync(monkeypatch):
    """The large crops' codes no longer go through the public sinkhorn (one host sync per crop): one deferred
    check names the crop at fault after the loss."""
    calls = []
    monkeypatch.setattr(AF, "sinkhorn", lambda *a, **k: calls.append(1))
    loss = AF.swav_loss([_emb(B, K), _emb(B, K, seed=1), _emb(B, K, seed=2)], [_emb(B, K, seed=3)])
    assert calls == [] and torch.isfinite(loss)


def test_hallucinator_losses_check_once(monkeypatch):
    """The loss helpers fold the generator's non-finite check into their own (one sync per call, not two)."""
    from augcl import _validate as V

    seen = []
    real = V.deferred_value_check
    monkeypatch.setattr(V, "deferred_value_check", lambda *a, **k: (seen.append(k.get("what")), real(*a, **k))[1])
    gen = _gen()
    AF.hallucinate_moco_loss(gen, _emb(), _emb(seed=1), _unit(K))
    AF.hallucinate_simclr_loss(gen, _emb(), _emb(seed=1))
    AF.hallucinate_simsiam_loss(gen, _emb(), _emb(seed=1), _emb(seed=2), _emb(seed=3))
    assert len(seen) == 3, seen
    gen(_emb(), _emb(seed=1))  # the module alone checks its output
    assert len(seen) == 4 and seen[-1] == "the hallucinated h"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compile_fullgraph_with_new_checks(backend):
    """The new checks need host values only outside torch.compile tracing."""
    require_backend(backend)
    torch._dynamo.reset()
    gen = _gen()

    def step(q, k, queue):
        return AF.hallucinate_moco_loss(gen, q, k, queue, lam=0.05, backend=backend)

    q, k, queue = _emb(), _emb(seed=1), _unit(K)
    got = torch.compile(step, fullgraph=True, backend="eager")(q, k, queue)
    torch.testing.assert_close(got, step(q, k, queue))
