"""The machinery of the bad-input tests (tests/test_<family>_bad_inputs.py): every public entry point
(augcl.functional, augcl.nn, augcl.compat) meets bad input with "a clear error naming the argument, never a crash, a
hang or a silently wrong number".

Each case is one call with one bad argument (the others valid) and its expected outcome: an exception type plus
a regex that must name the argument, or a finite result where the input is documented to be accepted (mixed
float dtypes are promoted; a [K, D] queue may have any K; ...). The cases are generated from perturbation
families (wrong ndim, dtype, device, empty, non-finite, not a tensor, ...) applied to each argument of each
entry point, with per-argument overrides where the outcome differs (a row mismatch names the other argument,
...). A meta tensor mixed with CPU tensors stands in for "another device".

Out-of-range indices raise ``augcl._validate.IndexArgumentError``, an IndexError *and* a ValueError.

A family's test file declares its cases with ``case`` / ``matrix_cases`` / ``index_cases`` / ``value_cases`` /
``extra_cases`` / ``ctor_cases`` at import, then takes them with ``collect_cases()`` (which also checks that their
ids are unique) and runs each with ``run_case``; ``begin_cases()`` at its top drops what a module that failed to
import may have left behind.
"""
from __future__ import annotations

import re

import pytest
import torch

import augcl
from augcl._validate import IndexArgumentError

B, D, K = 4, 8, 6
OK = None  # expected outcome "returns a finite result"
PROPAGATES = "propagates"  # documented: not checked, returns (mixing: a NaN pixel reaches the rows that mix it,
#                            unless a CutMix box replaces it; with random draws it may or may not survive)
#: a case on meta tensors only: the value checks have no values to look at (left as a known gap)
XFAIL_META = pytest.mark.xfail(strict=True, reason="every input on meta: no values for the value check (left)")
_PENDING = []  # the cases declared since the last begin_cases() / collect_cases()


def emb(rows=B, cols=D, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def unit(rows=B, cols=D, seed=0):
    return torch.nn.functional.normalize(emb(rows, cols, seed), dim=1)


def images(seed=0):
    return torch.rand(B, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def with_value(t, value):
    t = t.clone()
    t.view(-1)[0] = value
    return t


def case(entry: str, what: str, fn, exc=OK, match=None, marks=()):
    """One case: ``fn()`` must raise ``exc`` with a message matching ``match``, return a finite result (``OK``) or
    just return (``PROPAGATES``); its id is ``entry|what``."""
    _PENDING.append(pytest.param(fn, exc, match, id=f"{entry}|{what}", marks=marks))


def begin_cases() -> None:
    """Start a family's cases (drops any left by a module that failed halfway through its import)."""
    _PENDING.clear()


def collect_cases() -> list:
    """The cases declared since ``begin_cases()``, as pytest params with unique ids; starts a new collection."""
    cases = list(_PENDING)
    _PENDING.clear()
    ids = [p.id for p in cases]
    assert len(set(ids)) == len(ids), f"duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    return cases


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
    "nan": (lambda t: with_value(t, float("nan")), ValueError, r"{a} contains non-finite"),
    "inf": (lambda t: with_value(t, float("inf")), ValueError, r"{a} contains non-finite"),
    "list": (lambda t: t.tolist(), TypeError, r"{a} must be a torch\.Tensor"),
    "none": (lambda t: None, TypeError, r"{a} must be a torch\.Tensor"),
    # row / width mismatches: the outcome depends on the argument (overridden below); default: rejected
    "more_rows": (lambda t: torch.cat([t, t[:1]]), ValueError, r"{a}"),
    "wider": (lambda t: torch.cat([t, t[:, :1]], 1), ValueError, r"{a}"),
}
#: a call with neither a queue nor the keys as negatives (the contrastive ops' and Un-Mix's MoCo form's message)
NO_NEGATIVES = (ValueError, r"queue=None and key_negatives=False")
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
TEMPERATURE_CTOR = {  # bad temperatures at construction (NTXentLoss keeps lightly's messages for |t| < 1e-8)
    "temperature:negative": (dict(temperature=-1.0), ValueError, r"temperature"),
    "temperature:nan": (dict(temperature=float("nan")), ValueError, r"temperature"),
    "temperature:inf": (dict(temperature=float("inf")), ValueError, r"temperature"),
    "temperature:tensor2": (dict(temperature=torch.tensor([0.1, 0.2])), ValueError,
                            r"temperature must be a number or a one-element tensor"),
    "temperature:str": (dict(temperature="0.5"), TypeError, r"temperature must be a number"),
    "temperature:none": (dict(temperature=None), TypeError, r"temperature must be a number"),
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


# ------------------------------------------------------------------------------------------------- running
def _all_finite(out) -> bool:
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, (tuple, list)):
        return all(_all_finite(o) for o in out)
    if isinstance(out, dict):
        return all(_all_finite(o) for o in out.values())
    return True


def run_case(fn, exc, match) -> None:
    """Run one case (see ``case``)."""
    if exc is OK:
        assert _all_finite(fn()), "documented to return a finite result"
        return
    if exc is PROPAGATES:
        fn()  # no error: non-finite pixels are mixed as they are (see mix_images' docstring)
        return
    with pytest.raises(exc, match=match):
        fn()


def check_index_error_is_both_index_and_value_error(call) -> None:
    """An out-of-range index raises IndexArgumentError, which ``except IndexError`` and ``except ValueError`` both
    catch."""
    assert issubclass(IndexArgumentError, IndexError) and issubclass(IndexArgumentError, ValueError)
    with pytest.raises(IndexError):
        call()
    with pytest.raises(ValueError):
        call()


def check_index_checks_stay_on_without_value_checks(call) -> None:
    """set_checks(False) switches off the value checks, never the index range checks (out-of-bounds reads)."""
    augcl.set_checks(False)
    try:
        with pytest.raises(IndexArgumentError, match="partner|pos_idx"):
            call()
    finally:
        augcl.set_checks(True)


def check_value_checks_can_be_disabled(call) -> None:
    """With set_checks(False) a non-finite input passes (the caller asked for no value checks; the result may be
    non-finite); with the checks on it is an error naming it."""
    augcl.set_checks(False)
    try:
        call()
    finally:
        augcl.set_checks(True)
    with pytest.raises(ValueError, match="non-finite"):
        call()

