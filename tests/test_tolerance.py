"""The tolerance rule of tests/_tolerance.py can fail: it accepts rounding and rejects wrong values, a non-finite
pattern that differs, and an eager yardstick that overflowed."""
import pytest
import torch

from _tolerance import K, assert_close_exp, assert_close_to_reference, float64_inputs


def _case(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, generator=g, dtype=torch.float64)
    eager = ref.float()  # correctly rounded: the best a float32 computation can do
    # another summation order: a few float32 roundings off, still well inside K x eager + floor
    out = (ref * (1 + 2e-7 * torch.randn(n, generator=g, dtype=torch.float64))).float()
    return out, ref, eager


def test_accepts_rounding_and_rejects_a_wrong_element():
    out, ref, eager = _case()
    assert_close_to_reference(out, ref, eager, "x")
    wrong = out.clone()
    wrong[17] += 1e-4 * ref.abs().max()  # one element off by 1e-4 of the magnitude: ~800 float32 ulps
    with pytest.raises(AssertionError, match=r"x: max error .* > bound .*\n.*at \(17,\)"):
        assert_close_to_reference(wrong, ref, eager, "x")


def test_the_bound_is_k_times_the_eager_error():
    ref = torch.linspace(-1, 1, 101, dtype=torch.float64)
    eager = ref + 1e-3  # a poor yardstick: the bound follows it
    assert_close_to_reference(ref + 0.9 * K * 1e-3, ref, eager)
    with pytest.raises(AssertionError, match="bound"):
        assert_close_to_reference(ref + 1.1 * K * 1e-3, ref, eager)


def test_float64_without_eager_is_held_to_the_floor():
    ref = torch.linspace(1, 2, 50, dtype=torch.float64)
    assert_close_to_reference(ref * (1 + 1e-15), ref, None)  # a few float64 ulps
    with pytest.raises(AssertionError):
        assert_close_to_reference(ref * (1 + 1e-8), ref, None)  # float32 weights in a float64 loss


def test_scale_makes_the_floor_relative_to_cancelling_terms():
    ref = torch.zeros(3, dtype=torch.float64)  # a loss that cancels to 0 exactly
    out = torch.full((3,), 2e-7)
    with pytest.raises(AssertionError):
        assert_close_to_reference(out, ref, ref.float())
    assert_close_to_reference(out, ref, ref.float(), scale=10.0)  # terms of size 10 cancel


def test_half_outputs_may_round_to_the_neighbouring_value():
    ulp = 2.0 ** -10  # fp16's spacing at 1
    ref = torch.tensor([1.0 + 0.245 * ulp], dtype=torch.float64)
    eager = ref.half()  # correctly rounded (down): error 0.245 ulp
    out = torch.tensor([1.0 + ulp], dtype=torch.float16)  # the neighbour: 0.755 ulp < 2 x 0.245 + 1 ulp
    assert_close_to_reference(out, ref, eager)
    with pytest.raises(AssertionError):  # two values up: 1.755 ulp
        assert_close_to_reference(torch.tensor([1.0 + 2 * ulp], dtype=torch.float16), ref, eager)


def test_non_finite_patterns_and_overflowed_yardsticks():
    ref = torch.tensor([1.0, float("inf"), float("nan")], dtype=torch.float64)
    eager = ref.float()
    assert_close_to_reference(eager.clone(), ref, eager)
    with pytest.raises(AssertionError, match="infinities"):
        assert_close_to_reference(torch.tensor([1.0, -float("inf"), float("nan")]), ref, eager)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close_to_reference(torch.tensor([1.0, float("inf"), 0.0]), ref, eager)
    with pytest.raises(AssertionError, match="eager is not finite"):
        assert_close_to_reference(torch.ones(2), torch.ones(2, dtype=torch.float64), torch.tensor([1.0, float("inf")]))


def test_relative_mode_sees_small_entries():
    ref = torch.tensor([1.0, 1e-30], dtype=torch.float64)
    eager = ref.float()
    assert_close_to_reference(eager, ref, eager, relative=True)
    wrong = eager.clone()
    wrong[1] *= 1.01  # 1% off on the small entry: invisible to a max-abs error, not to the relative one
    assert_close_to_reference(wrong, ref, eager)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close_to_reference(wrong, ref, eager, relative=True)
    # results that underflow (below tiny) count by their absolute error
    assert_close_exp(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1e-40], dtype=torch.float64),
                     torch.tensor([1.0, 0.0]), log_magnitude=1.0)


def test_float64_inputs_copies_keep_requires_grad():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3)
    a64, b64, idx = float64_inputs(a, b, torch.arange(3))
    assert a64.dtype == b64.dtype == torch.float64 and a64.requires_grad and not b64.requires_grad
    assert a64.is_leaf and torch.equal(a64, a.detach().double()) and idx.dtype == torch.int64
