"""Bad input to augcl.functional.topk_attention: a clear error naming the argument, or a finite result where the
input is documented to be accepted.

Each case is one call with one bad argument (the others valid) and its expected outcome: an exception type and a
regex that must match the message, or ``OK`` (a finite result). A meta tensor next to CPU tensors stands in for
"another device". The C++ kernel's own checks (reached only by calling torch.ops.augcl.topk_attention directly)
are tested at the end.
"""
from __future__ import annotations

import pytest
import torch

import augcl
from augcl import functional as AF
from augcl.dispatch import BackendUnavailableError, REGISTRY

B, H, L, DH = 2, 3, 7, 4
OK = None
CASES = []


def _t(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*(shape or (B, H, L, DH)), generator=torch.Generator().manual_seed(seed)).to(dtype)


def _with(t, value):
    t = t.clone()
    t.view(-1)[0] = value
    return t


def case(what, fn, exc=OK, match=None):
    CASES.append(pytest.param(fn, exc, match, id=f"topk_attention|{what}"))


def _call(**kw):
    args = dict(q=_t(seed=1), k=_t(seed=2), v=_t(seed=3), top_k=3)
    args.update(kw)
    return lambda: AF.topk_attention(**args)


case("valid", _call())
case("valid:top_k_1", _call(top_k=1))
case("valid:top_k_L", _call(top_k=L))
case("valid:keep_first", _call(keep_first=True, top_k=L))
case("valid:scale", _call(scale=2))
case("valid:fp16", _call(q=_t(seed=1, dtype=torch.float16), k=_t(seed=2, dtype=torch.float16),
                         v=_t(seed=3, dtype=torch.float16)))
case("valid:length_1", _call(q=_t(B, H, 1, DH), k=_t(B, H, 1, DH), v=_t(B, H, 1, DH), top_k=1))
for arg in ("q", "k", "v"):
    for name, bad, exc, match in [
        ("none", None, TypeError, rf"{arg} must be a torch\.Tensor"),
        ("list", _t().tolist(), TypeError, rf"{arg} must be a torch\.Tensor"),
        ("3d", _t(B * H, L, DH), ValueError, rf"{arg} must be a 4-D tensor \[B, H, L, Dh\]"),
        ("5d", _t(1, B, H, L, DH), ValueError, rf"{arg} must be a 4-D tensor \[B, H, L, Dh\]"),
        ("int", _t().long(), TypeError, rf"{arg} must be float16, bfloat16, float32 or float64"),
        ("bool", _t() > 0, TypeError, rf"{arg} must be float16, bfloat16, float32 or float64"),
        ("complex", _t().to(torch.complex64), TypeError, rf"{arg} must be float16"),
        ("empty_batch", _t(0, H, L, DH), ValueError, rf"{arg} is empty"),
        ("empty_length", _t(B, H, 0, DH), ValueError, rf"{arg} is empty"),
        ("empty_width", _t(B, H, L, 0), ValueError, rf"{arg} is empty"),
        ("nan", _with(_t(), float("nan")), ValueError, rf"{arg} contains non-finite"),
        ("inf", _with(_t(), float("inf")), ValueError, rf"{arg} contains non-finite"),
        ("neg_inf", _with(_t(), float("-inf")), ValueError, rf"{arg} contains non-finite"),
    ]:
        case(f"{arg}:{name}", _call(**{arg: bad}), exc, match)
for arg in ("k", "v"):
    for name, bad, exc, match in [
        ("longer", _t(B, H, L + 1, DH), ValueError, rf"{arg} must have the shape of q \[2, 3, 7, 4\]"),
        ("wider", _t(B, H, L, DH + 1), ValueError, rf"{arg} must have the shape of q"),
        ("more_heads", _t(B, H + 1, L, DH), ValueError, rf"{arg} must have the shape of q"),
        ("broadcastable", _t(1, H, L, DH), ValueError, rf"{arg} must have the shape of q"),
        ("float64", _t(dtype=torch.float64), TypeError, rf"{arg} has dtype torch\.float64 but q has torch\.float32"),
        ("float16", _t(dtype=torch.float16), TypeError, rf"{arg} has dtype torch\.float16 but q has"),
        ("meta", torch.empty(B, H, L, DH, device="meta"), ValueError, rf"{arg} is on meta but q is on cpu"),
    ]:
        case(f"{arg}:{name}", _call(**{arg: bad}), exc, match)
for name, kw, exc, match in [
    ("top_k:0", dict(top_k=0), ValueError, r"top_k must lie in \[1, L\] = \[1, 7\].*got 0"),
    ("top_k:negative", dict(top_k=-2), ValueError, r"top_k must lie in \[1, L\] = \[1, 7\]"),
    ("top_k:above_L", dict(top_k=L + 1), ValueError, r"top_k must lie in \[1, L\] = \[1, 7\].*got 8"),
    ("top_k:float", dict(top_k=3.0), TypeError, r"top_k must be an int, got float"),
    ("top_k:bool", dict(top_k=True), TypeError, r"top_k must be an int, got bool"),
    ("top_k:tensor", dict(top_k=torch.tensor(3)), TypeError, r"top_k must be an int, got Tensor"),
    ("top_k:none", dict(top_k=None), TypeError, r"top_k must be an int, got NoneType"),
    ("scale:zero", dict(scale=0.0), ValueError, r"scale must be a finite number > 0, got 0.0"),
    ("scale:negative", dict(scale=-1.0), ValueError, r"scale must be a finite number > 0"),
    ("scale:nan", dict(scale=float("nan")), ValueError, r"scale must be a finite number > 0"),
    ("scale:inf", dict(scale=float("inf")), ValueError, r"scale must be a finite number > 0"),
    ("scale:str", dict(scale="0.5"), TypeError, r"scale must be a float or None, got str"),
    ("scale:bool", dict(scale=True), TypeError, r"scale must be a float or None, got bool"),
    ("scale:tensor", dict(scale=torch.tensor(0.5)), TypeError, r"scale must be a float or None, got Tensor"),
    ("keep_first:int", dict(keep_first=1), TypeError, r"keep_first must be a bool, got int"),
    ("keep_first:none", dict(keep_first=None), TypeError, r"keep_first must be a bool, got NoneType"),
    ("backend:unknown", dict(backend="fast"), ValueError, r"unknown backend 'fast'"),
    ("backend:cuda", dict(backend="cuda"), BackendUnavailableError,
     r"backend 'cuda' cannot run: topk_attention has no cuda backend"),
    ("backend:triton_fp64", dict(q=_t(dtype=torch.float64), k=_t(dtype=torch.float64), v=_t(dtype=torch.float64),
                                 backend="triton"),
     BackendUnavailableError, r"backend 'triton' cannot run: .*float64 is not supported"),
    ("scale:overflow", dict(scale=1e38), FloatingPointError, r"the top-k attention output is not finite although "
                                                             r"every input is"),
]:
    case(name, _call(**kw), exc, match)


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    if exc is OK:
        out = fn()
        assert bool(torch.isfinite(out).all()), out
        return
    with pytest.raises(exc, match=match):
        fn()


def test_double_backward_names_the_op():
    q, k, v = (_t(seed=s, dtype=torch.float64).requires_grad_(True) for s in (1, 2, 3))
    (gq,) = torch.autograd.grad(AF.topk_attention(q, k, v, 3, backend="reference").sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the topk_attention op is not supported"):
        gq.sum().backward()


def test_without_checks_non_finite_input_propagates():
    """Documented: augcl.set_checks(False) skips the deferred check; a NaN in k then reaches the rows that see it
    (here: every row, since a NaN logit ranks above every number and is kept)."""
    augcl.set_checks(False)
    try:
        out = AF.topk_attention(_t(seed=1), _with(_t(seed=2), float("nan")), _t(seed=3), 3, backend="reference")
    finally:
        augcl.set_checks(True)
    assert not bool(torch.isfinite(out).all())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_overflowing_logits_give_nan_rows_not_a_crash(backend):
    """Finite inputs whose logits overflow float32 (scale 1e38): no top_k is defined (the C++ kernel's selection
    sees a non-finite row); the output is non-finite and the deferred check says so."""
    if REGISTRY["topk_attention"].reasons(_t(), _t(), _t())[backend] is not None:
        pytest.skip(f"backend {backend!r} cannot run here")
    augcl.set_checks(False)
    try:
        out = AF.topk_attention(_t(seed=1), _t(seed=2), _t(seed=3), 3, scale=1e38, backend=backend)
    finally:
        augcl.set_checks(True)
    assert not bool(torch.isfinite(out).all())


def test_cpp_kernel_checks_its_inputs():
    """The C++ op called directly (no functional validation): shapes, dtypes, top_k are still refused, with the
    argument named, instead of reading out of bounds."""
    if REGISTRY["topk_attention"].reasons(_t(), _t(), _t())["cpu"] is not None:
        pytest.skip("the C++ kernel is not built")
    op = torch.ops.augcl.topk_attention
    q = _t()
    with pytest.raises(RuntimeError, match=r"top_k must lie in \[1, L = 7\], got 8"):
        op(q, q, q, 8, 0.5, False, False)
    with pytest.raises(RuntimeError, match=r"top_k must lie in \[1, L = 7\], got 0"):
        op(q, q, q, 0, 0.5, False, True)
    with pytest.raises(RuntimeError, match=r"k and v must have the shape of q"):
        op(q, _t(B, H, L + 1, DH), q, 3, 0.5, False, False)
    with pytest.raises(RuntimeError, match=r"q must be 4-D"):
        op(_t(H, L, DH), _t(H, L, DH), _t(H, L, DH), 3, 0.5, False, False)
    with pytest.raises(RuntimeError, match=r"k and v must have the dtype of q"):
        op(q, q, q.double(), 3, 0.5, False, False)
    with pytest.raises(RuntimeError, match=r"q must be float32, float64, float16 or bfloat16"):
        op(q.long(), q.long(), q.long(), 3, 0.5, False, False)
    out, lse, kept = op(q, q, q, 3, 0.5, False, True)
    bwd = torch.ops.augcl.topk_attention_backward
    with pytest.raises(RuntimeError, match=r"lse must be \[B, H, L\]"):
        bwd(out, q, q, q, out, lse[:, :, :-1], kept, 3, 0.5, False)
    # the saved kept keys: shape, dtype, and indices in range (the kernel reads k and v rows at them)
    with pytest.raises(RuntimeError, match=r"kept must be an int32 CPU tensor \[B, H, L, 0\] or \[B, H, L, top_k"):
        bwd(out, q, q, q, out, lse, kept[..., :-1], 3, 0.5, False)
    with pytest.raises(RuntimeError, match=r"kept must be an int32 CPU tensor"):
        bwd(out, q, q, q, out, lse, kept.long(), 3, 0.5, False)
    for bad in (L, -2):
        wrong = kept.clone()
        wrong[0, 0, 0, 0] = bad
        with pytest.raises(RuntimeError, match=r"kept holds key indices outside \[-1, L = 7\)"):
            bwd(out, q, q, q, out, lse, wrong, 3, 0.5, False)
