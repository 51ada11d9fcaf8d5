"""augcl._validate's finiteness test (finite_hint / all_finite) and the deferred value check built on it.

The check sums each input once (a NaN or an Inf makes the sum non-finite) instead of running torch.isfinite over
it; a sum can also overflow with every element finite, so a non-finite sum only sends the check to the exact
element-wise test. These tests pin both directions: every NaN / Inf position and dtype is caught, and huge finite
inputs whose sum overflows are neither reported nor crash the check.
"""
import pytest
import torch

from augcl import _validate as V
from augcl import functional as AF

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", [0, 7, -1], ids=["first", "middle", "last"])
def test_any_non_finite_element_is_caught(dtype, bad, where):
    x = torch.randn(4, 5, dtype=torch.float64).to(dtype)
    assert bool(V.finite_hint(x)) and V.all_finite(x)
    x.view(-1)[where] = bad
    assert not bool(V.finite_hint(x)) and not V.all_finite(x)
    # both infinities together sum to NaN: still caught
    y = torch.zeros(3, dtype=dtype)
    y[0], y[2] = float("inf"), float("-inf")
    assert not bool(V.finite_hint(y)) and not V.all_finite(y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_overflowing_sum_of_finite_values_is_only_a_hint(dtype):
    big = torch.finfo(dtype).max
    x = torch.full((64,), big, dtype=dtype)
    assert bool(torch.isfinite(x).all())
    if dtype == torch.float16:
        assert bool(V.finite_hint(x))  # summed in float32: 64 x 65504 fits
    assert V.all_finite(x)
    x[3] = float("nan")
    assert not V.all_finite(x)


def test_finite_hint_is_false_on_overflow_but_all_finite_is_exact():
    x = torch.full((8,), 3e38, dtype=torch.float32)
    assert not bool(V.finite_hint(x))
    assert V.all_finite(x)


def test_non_floating_and_non_contiguous_inputs():
    assert V.all_finite(torch.arange(5)) and bool(V.finite_hint(torch.ones(3, dtype=torch.bool)))
    x = torch.randn(6, 8).t()
    x[2, 3] = float("inf")
    assert not x.is_contiguous() and not V.all_finite(x)


def test_deferred_check_passes_huge_finite_inputs_whose_sum_overflows():
    """Finite inputs of magnitude 1e38 (their sum overflows float32) with a finite result: no error, where a sum
    test alone would have reported a non-finite input or an overflow."""
    q = torch.full((1, 1, 4, 2), 1e38)
    k = torch.full((1, 1, 4, 2), 1e-38)
    v = torch.randn(1, 1, 4, 2)
    out = AF.topk_attention(q, k, v, 2, backend="reference")
    assert bool(torch.isfinite(out).all())
    loss = torch.tensor(1.0)
    V.deferred_value_check(loss, None, [("q", q), ("k", k)])  # no raise


def test_deferred_check_still_names_the_input_at_fault():
    q = torch.randn(1, 1, 4, 2)
    k = torch.full((1, 1, 4, 2), 1e38)
    k[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="k contains non-finite"):
        AF.topk_attention(q, k, torch.randn(1, 1, 4, 2), 2, backend="reference")
    with pytest.raises(ValueError, match="z1 contains non-finite"):
        a = torch.randn(4, 8)
        a[1, 1] = float("inf")
        AF.nt_xent(a, torch.randn(4, 8))
