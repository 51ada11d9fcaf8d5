"""The one tolerance rule of the ``augcl.patch()`` tests (tests/test_patch_peers.py, test_patch_solo.py,
test_patch_lightning.py), and tests that it can fail.

augcl sums in another order than the peer (a fused logsumexp instead of a [2B, 2B] matrix and cross_entropy; a
log-domain Sinkhorn), so in float32 a patched run and an unpatched run differ by rounding. Both are measured
against the peer's own run in float64 (the oracle): for every tensor compared (a loss, each gradient, each
parameter after some optimizer steps), the patched run's worst error must be at most ``K = 4`` times the unpatched
run's worst error plus ``REL_FLOOR = 2e-6`` times the oracle's largest magnitude (the rule of augcl's kernel tests,
after flash-attention's: the kernel's error may be a small multiple of the same-precision PyTorch error).

* ``K = 4``: an equally accurate summation order can have a few times another's rounding error on a given
  element; a wrong formula is off by orders of magnitude more.
* ``REL_FLOOR = 2e-6``: ~30 float32 unit roundoffs (6e-8 each), the depth of these computations (normalisation,
  dot products over D <= 32, a logsumexp over <= 64 logits, backward through a two-layer head, a few optimizer
  steps), for elements where the unpatched error happens to be ~0.

And in float64 the patched and unpatched runs must agree to ``FP64_REL = 1e-10`` of the largest magnitude
(float64 rounds at ~1e-16 per operation): this checks that augcl computes the *same function* as the peer, which a
float32 tolerance alone could hide (a missing term of size 1e-6 would pass in float32).
"""
import pytest
import torch
from _tolerance import assert_close_to_reference

K = 4.0
REL_FLOOR = 2e-6
FP64_REL = 1e-10


def assert_like_peer(patched: dict, unpatched: dict, oracle: dict, k: float = K, rel_floor: float = REL_FLOOR):
    """For every name: ``max|patched - oracle| <= k * max|unpatched - oracle| + rel_floor * max|oracle|``: the
    suite's rule (tests/_tolerance.py) with the unpatched peer as the same-precision yardstick, K and the floor
    above; the message names the tensor and lists the worst elements."""
    assert patched.keys() == unpatched.keys() == oracle.keys(), (sorted(patched), sorted(oracle))
    names = list(oracle)
    assert_close_to_reference([patched[n].detach() for n in names], [oracle[n].detach().double() for n in names],
                              [unpatched[n].detach() for n in names], names, k=k, floor=rel_floor)


def assert_same_function(a: dict, b: dict, rel: float = FP64_REL):
    """Two float64 runs: every tensor agrees to ``rel`` of its largest magnitude."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for name in a:
        x, y = a[name].detach(), b[name].detach()
        assert x.shape == y.shape, (name, x.shape, y.shape)
        scale = max(x.abs().max().item(), 1e-30)
        diff = (x - y).abs().max().item()
        assert diff <= rel * scale, f"{name}: float64 runs differ by {diff:.3g} (scale {scale:.3g})"


def test_the_rule_accepts_rounding_and_rejects_a_wrong_value():
    g = torch.Generator().manual_seed(0)
    oracle = torch.randn(100, generator=g, dtype=torch.float64)
    unpatched = oracle.float()
    rounded_elsewhere = (oracle * (1 + 1e-7 * torch.randn(100, generator=g, dtype=torch.float64))).float()
    assert_like_peer({"x": rounded_elsewhere}, {"x": unpatched}, {"x": oracle})
    wrong = unpatched.clone()
    wrong[7] += 1e-4 * oracle.abs().max()
    with pytest.raises(AssertionError, match=r"x: max error .* > bound"):
        assert_like_peer({"x": wrong}, {"x": unpatched}, {"x": oracle})


def test_the_fp64_check_rejects_a_small_formula_difference():
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert_same_function({"x": x}, {"x": x * (1 + 1e-14)})
    with pytest.raises(AssertionError, match="float64 runs differ"):
        assert_same_function({"x": x}, {"x": x + 1e-8})
