"""Kernel-level tests of the CPU ops ``augcl::contrastive_lse`` / ``contrastive_lse_backward`` (csrc/cpu/contrastive.cpp).

The raw ops are called through ``torch.ops.augcl`` and compared with ``augcl.reference.contrastive`` in float64 on
the same rounded inputs, within the tolerance rule of tests/_tolerance.py: at most twice the error of the same
reference run on the inputs' dtype (which accumulates fp16 / bf16 in fp32 and rounds once, as the kernel promises).
No autograd or fake kernels are involved here; those are tested with the Python op layer.
"""
from __future__ import annotations

import glob
import math
import os

import pytest
import torch

try:
    import augcl._C  # noqa: F401  (registers the ops)
except Exception:  # package __init__ not importable yet: load the library directly
    torch.ops.load_library(glob.glob(os.path.join(os.path.dirname(__file__), "..", "augcl", "_C*.so"))[0])

from _tolerance import assert_close_to_reference  # noqa: E402
from augcl.reference.contrastive import (  # noqa: E402
    contrastive_included_mask,
    contrastive_lse_backward_reference,
    contrastive_lse_reference,
)

OPS = torch.ops.augcl


def _lse(a, c, s, p, e, ns):
    return OPS.contrastive_lse(a, c, s, p, e, ns)


def _bwd(g, a, c, s, lse, p, e, ns):
    return OPS.contrastive_lse_backward(g, a, c, s, lse, p, e, ns)


def make_case(m, nc, d, p, e, neg_start, dtype=torch.float64, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(m, d, generator=gen, dtype=torch.float64), dim=1) if d else \
        torch.zeros(m, 0, dtype=torch.float64)
    c = torch.nn.functional.normalize(torch.randn(nc, d, generator=gen, dtype=torch.float64), dim=1) if d else \
        torch.zeros(nc, 0, dtype=torch.float64)
    hi = max(nc, 1)
    pos = torch.randint(0, hi, (m, p), generator=gen) if nc else torch.full((m, p), -1, dtype=torch.long)
    excl = torch.randint(0, hi, (m, e), generator=gen) if nc else torch.full((m, e), -1, dtype=torch.long)
    if p:
        pos[torch.rand(m, p, generator=gen) < 0.2] = -1
    if e:
        excl[torch.rand(m, e, generator=gen) < 0.2] = -1
    g = torch.randn(m, generator=gen, dtype=torch.float64)
    s = torch.tensor(scale, dtype=torch.float64)
    return a.to(dtype), c.to(dtype), s.to(torch.float32 if dtype != torch.float64 else dtype), pos, excl, g, neg_start


def _f64(*tensors):
    return [t.double() for t in tensors]


def check_lse(lse, a, c, s, pos, excl, ns, name="lse"):
    """``lse`` (the kernel's, from a, c, s) within the tolerance rule of the reference in float64 / in a's dtype."""
    assert_close_to_reference(lse, contrastive_lse_reference(*_f64(a, c, s), pos, excl, ns),
                              contrastive_lse_reference(a, c, s, pos, excl, ns), name)


def check_backward(got, g, a, c, s, lse, pos, excl, ns):
    """The kernel's backward ``got`` = (dA, dC, dscale) within the tolerance rule."""
    ref = contrastive_lse_backward_reference(*_f64(g, a, c, s, lse), pos, excl, ns)
    eager = contrastive_lse_backward_reference(g, a, c, s, lse, pos, excl, ns)
    for out, exp in zip(got, eager):
        assert out.dtype == exp.dtype and out.shape == exp.shape
    assert_close_to_reference(got, ref, eager, ["grad_anchors", "grad_candidates", "grad_scale"])


def check_against_reference(a, c, s, pos, excl, g, ns):
    """Forward and backward of the kernel; both backwards get the same lse (the kernel's), so only the backward
    math is compared."""
    lse = _lse(a, c, s, pos, excl, ns)
    eager = contrastive_lse_reference(a, c, s, pos, excl, ns)
    assert lse.dtype == eager.dtype and lse.shape == eager.shape
    check_lse(lse, a, c, s, pos, excl, ns)
    g = g.to(lse.dtype)
    grads = _bwd(g, a, c, s, lse, pos, excl, ns)
    check_backward(grads, g, a, c, s, lse, pos, excl, ns)
    return lse, grads


SHAPES = [
    # m, nc, d, p, e, neg_start
    (1, 1, 1, 1, 1, 0),
    (1, 1, 4, 0, 0, 0),
    (37, 53, 33, 3, 2, 0),
    (37, 53, 33, 2, 4, 17),
    (64, 40, 16, 1, 1, 40),   # neg_start == Nc: only positives
    (20, 30, 8, 2, 2, 100),   # neg_start > Nc
    (25, 70, 12, 0, 3, 5),    # P = 0
    (25, 70, 12, 3, 0, 5),    # E = 0
    (25, 70, 12, 0, 0, 0),    # plain logsumexp over all columns
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp64_matches_reference(shape):
    a, c, s, pos, excl, g, ns = make_case(*shape, dtype=torch.float64, seed=sum(shape))
    check_against_reference(a, c, s, pos, excl, g, ns)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape):
    a, c, s, pos, excl, g, ns = make_case(*shape, dtype=torch.float32, seed=sum(shape))
    check_against_reference(a, c, s, pos, excl, g, ns)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 53, 33, 3, 2, 0), (48, 96, 24, 2, 2, 16)], ids=lambda s: "x".join(map(str, s)))
def test_half_matches_fp32_reference_on_rounded_inputs(dtype, shape):
    a, c, s, pos, excl, g, ns = make_case(*shape, dtype=dtype, seed=7)
    lse = _lse(a, c, s, pos, excl, ns)
    assert lse.dtype == torch.float32
    # The yardstick is the reference on the same fp16 / bf16 inputs: fp32 math, dA / dC rounded once to the
    # input dtype. The kernel does the same, so only the summation order differs.
    check_lse(lse, a, c, s, pos, excl, ns)
    g32 = g.float()
    da, dc, ds = _bwd(g32, a, c, s, lse, pos, excl, ns)
    assert (da.dtype, dc.dtype, ds.dtype) == (dtype, dtype, torch.float32)
    check_backward((da, dc, ds), g32, a, c, s, lse, pos, excl, ns)


def test_several_row_blocks_default_budget():
    # 1500 x 1500 fp64 logits = 17.2 MiB > the 16 MiB budget: blocks of 1398 + 102 rows.
    a, c, s, pos, excl, g, ns = make_case(1500, 1500, 8, 2, 2, 300, dtype=torch.float64, seed=3)
    check_against_reference(a, c, s, pos, excl, g, ns)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows_per_block", [1, 3, 7])
def test_many_small_blocks(monkeypatch, dtype, rows_per_block):
    m, nc = 41, 29
    elem = 8 if dtype == torch.float64 else 4
    monkeypatch.setenv("AUGCL_CPU_BLOCK_BYTES", str(rows_per_block * nc * elem))
    a, c, s, pos, excl, g, ns = make_case(m, nc, 10, 3, 3, 4, dtype=dtype, seed=rows_per_block)
    lse, grads = check_against_reference(a, c, s, pos, excl, g, ns)
    # Results do not depend on the blocking beyond rounding: the default blocking (one block) is held to the same
    # rule, on the same lse.
    monkeypatch.delenv("AUGCL_CPU_BLOCK_BYTES")
    check_lse(_lse(a, c, s, pos, excl, ns), a, c, s, pos, excl, ns)
    g = g.to(lse.dtype)
    check_backward(_bwd(g, a, c, s, lse, pos, excl, ns), g, a, c, s, lse, pos, excl, ns)


def test_block_budget_smaller_than_one_row(monkeypatch):
    monkeypatch.setenv("AUGCL_CPU_BLOCK_BYTES", "1")  # still one row per block, never zero
    a, c, s, pos, excl, g, ns = make_case(9, 13, 5, 2, 2, 3, dtype=torch.float64, seed=11)
    check_against_reference(a, c, s, pos, excl, g, ns)


def test_non_contiguous_inputs():
    m, nc, d = 19, 31, 12
    a_c, c_c, s, pos_c, excl_c, g, ns = make_case(m, nc, d, 3, 2, 6, dtype=torch.float64, seed=5)
    a = a_c.t().contiguous().t()                                       # column-major [M, D]
    c_big = torch.zeros(2 * nc, d + 5, dtype=torch.float64)
    c_big[::2, 2:2 + d] = c_c
    c = c_big[::2, 2:2 + d]                                            # strided rows and a column offset
    pos = pos_c.t().contiguous().t()                                   # transposed index matrix
    excl_big = torch.full((m, 2 * excl_c.shape[1]), 999, dtype=torch.long)
    excl_big[:, ::2] = excl_c
    excl = excl_big[:, ::2]                                            # strided columns (999s must be skipped)
    g_big = torch.zeros(2 * m, dtype=torch.float64)
    g_big[::2] = g
    gs = g_big[::2]
    assert not (a.is_contiguous() or c.is_contiguous() or pos.is_contiguous() or excl.is_contiguous())
    lse = _lse(a, c, s, pos, excl, ns)
    # The strided views are read where they are: the same results as from contiguous copies, bit for bit.
    assert torch.equal(lse, _lse(a_c, c_c, s, pos_c, excl_c, ns))
    check_lse(lse, a_c, c_c, s, pos_c, excl_c, ns)
    lse_strided = torch.zeros(2 * m, dtype=torch.float64)
    lse_strided[::2] = lse
    got = _bwd(gs, a, c, s, lse_strided[::2], pos, excl, ns)
    assert all(torch.equal(x, y) for x, y in zip(got, _bwd(g, a_c, c_c, s, lse, pos_c, excl_c, ns)))
    check_backward(got, g, a_c, c_c, s, lse, pos_c, excl_c, ns)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_mask_semantics_exact(dtype):
    """Positives below neg_start, positives also listed as excluded, duplicates and padding, checked by hand."""
    nc, d = 6, 3
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, d, generator=gen, dtype=torch.float64).to(dtype)
    c = torch.randn(nc, d, generator=gen, dtype=torch.float64).to(dtype)
    s = torch.tensor(1.7, dtype=dtype)
    ns = 3
    pos = torch.tensor([[0, 0, -1], [4, -1, -1], [1, 5, 1], [-1, -1, -1]])
    excl = torch.tensor([[0, 3, 3], [4, 5, -1], [-1, -1, -1], [3, 4, 5]])
    expected_incl = [
        [0, 4, 5],        # positive 0 below neg_start (duplicated), 0 also excluded, 3 excluded twice
        [3, 4],           # positive 4 also excluded stays, 5 excluded
        [1, 3, 4, 5],     # duplicate positive counts once
        [],               # everything excluded, no positive: empty row
    ]
    lse = _lse(a, c, s, pos, excl, ns)

    def by_hand(a, c, s):
        logits = s * (a @ c.T)
        return torch.stack([torch.logsumexp(logits[i, cols], 0) if cols else torch.tensor(-math.inf, dtype=a.dtype)
                            for i, cols in enumerate(expected_incl)])

    assert_close_to_reference(lse, by_hand(*_f64(a, c, s)), by_hand(a, c, s), "lse")
    mask = contrastive_included_mask(4, nc, pos, excl, ns)
    assert [torch.nonzero(r).flatten().tolist() for r in mask] == expected_incl

    g = torch.tensor([0.5, -1.0, 2.0, 1.0], dtype=dtype)
    da, dc, ds = _bwd(g, a, c, s, lse, pos, excl, ns)
    assert torch.isfinite(da).all() and torch.isfinite(dc).all() and torch.isfinite(ds)
    assert torch.equal(da[3], torch.zeros(d, dtype=dtype))  # empty row: no gradient, no NaN
    check_backward((da, dc, ds), g, a, c, s, lse, pos, excl, ns)


def test_backward_matches_autograd_of_reference():
    a, c, s, pos, excl, g, ns = make_case(23, 31, 7, 2, 2, 5, dtype=torch.float64, seed=9, scale=2.5)
    a_, c_, s_ = (t.clone().requires_grad_() for t in (a, c, s))
    lse = contrastive_lse_reference(a_, c_, s_, pos, excl, ns)
    ga, gc, gs = torch.autograd.grad(lse, (a_, c_, s_), g)
    da, dc, ds = _bwd(g, a, c, s, lse.detach(), pos, excl, ns)
    # float64: the reference's autograd is both the reference and the eager computation
    assert_close_to_reference([da, dc, ds], [ga, gc, gs], None, ["grad_anchors", "grad_candidates", "grad_scale"])


@pytest.mark.parametrize("scale", [-2.0, 0.0, 40.0, 100.0])
def test_unusual_scales(scale):
    # Negative and zero scales: the kernel must not assume s > 0 (s = 0 gives lse = log |incl(i)| and a zero dA).
    # s = 40 is a realistic large scale (temperature 0.025); s = 100 (CLIP's largest logit scale) makes many exp
    # terms underflow fp32 (logit spread up to 200 > 87), the case the kernel flushes to exact zeros; logits
    # beyond fp32's exp range are covered by test_large_logits_are_stable_fp32.
    for dtype in (torch.float64, torch.float32):
        a, c, s, pos, excl, g, ns = make_case(17, 23, 9, 2, 2, 3, dtype=dtype, seed=2, scale=scale)
        check_against_reference(a, c, s, pos, excl, g, ns)


def test_large_logits_are_stable_fp32():
    a, c, s, pos, excl, g, ns = make_case(16, 20, 4, 1, 1, 0, dtype=torch.float32, seed=4, scale=500.0)
    lse = _lse(a, c, s, pos, excl, ns)
    assert torch.isfinite(lse).all()
    check_against_reference(a, c, s, pos, excl, g, ns)


def test_infinite_logit_gives_infinite_lse_in_its_row_only():
    # D = 1 keeps the dots exact: row 1 has logits +inf, -inf and +inf (fp32 overflow of s * dot).
    a = torch.tensor([[1.0], [1e38]])
    c = torch.tensor([[1.0], [-1.0], [0.5]])
    s = torch.tensor(10.0)
    pos = torch.full((2, 1), -1, dtype=torch.long)
    excl = torch.full((2, 1), -1, dtype=torch.long)
    lse = _lse(a, c, s, pos, excl, 0)
    ref = contrastive_lse_reference(a, c, s, pos, excl, 0)
    assert lse[1].item() == math.inf and ref[1].item() == math.inf
    check_lse(lse[:1], a[:1], c, s, pos[:1], excl[:1], 0, "lse[0]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_candidate_in_excluded_column_is_ignored_by_forward(dtype):
    # Excluded cells are overwritten with -inf whatever they held: a NaN / inf candidate that no row includes
    # changes no lse (as in the reference, which masks with masked_fill before the logsumexp).
    a, c, s, pos, excl, g, ns = make_case(6, 9, 4, 2, 1, 0, dtype=dtype, seed=15)
    pos[pos == 0] = 1
    c[0, 1] = float("nan")
    c[0, 2] = float("inf")
    lse = _lse(a, c, s, pos, excl, 1)  # neg_start = 1: column 0 is never a negative, and no positive
    ref = contrastive_lse_reference(a, c, s, pos, excl, 1)
    assert torch.isfinite(lse).all() and torch.isfinite(ref).all()
    check_lse(lse, a, c, s, pos, excl, 1)


def test_nan_propagates_to_its_row_only():
    a, c, s, pos, excl, g, ns = make_case(5, 7, 3, 1, 1, 0, dtype=torch.float32, seed=6)
    a[2, 1] = float("nan")
    lse = _lse(a, c, s, pos, excl, ns)
    ref = contrastive_lse_reference(a, c, s, pos, excl, ns)
    assert torch.isnan(lse[2]) and torch.isnan(ref[2])
    keep = torch.tensor([0, 1, 3, 4])
    check_lse(lse[keep], a[keep], c, s, pos[keep], excl[keep], ns, "lse of the other rows")


def test_wide_rows_fp32_are_accurate():
    """fp32 row sums over Nc = 300000 terms, checked against an fp64 reference on the same fp32 inputs.

    A running fp32 sum of these terms is off by ~3e-4 in lse (measured while writing this test: its rounding
    errors all have the same sign); the kernel's row sums (ATen's cascade summation) must stay within the rule of
    the fp32 reference's (torch.logsumexp, also a cascade), a few ulps of lse (one ulp is ~1e-6 here).
    """
    a, c, s, pos, excl, g, ns = make_case(4, 300_000, 32, 2, 2, 3, dtype=torch.float32, seed=12, scale=1 / 0.07)
    lse = _lse(a, c, s, pos, excl, ns)
    check_lse(lse, a, c, s, pos, excl, ns)
    g32 = g.float()
    check_backward(_bwd(g32, a, c, s, lse, pos, excl, ns), g32, a, c, s, lse, pos, excl, ns)


@pytest.mark.parametrize("rows_per_block", [None, 7])
def test_repeated_calls_are_bitwise_identical(monkeypatch, rows_per_block):
    m, nc = 300, 700
    if rows_per_block is not None:
        monkeypatch.setenv("AUGCL_CPU_BLOCK_BYTES", str(rows_per_block * nc * 4))
    a, c, s, pos, excl, g, ns = make_case(m, nc, 24, 2, 2, 10, dtype=torch.float32, seed=13, scale=14.0)
    g = g.float()

    def run():
        lse = _lse(a, c, s, pos, excl, ns)
        return (lse, *_bwd(g, a, c, s, lse, pos, excl, ns))

    first = run()
    for _ in range(3):
        assert all(torch.equal(x, y) for x, y in zip(run(), first))


def test_scale_dtype_and_output_dtypes():
    a, c, _, pos, excl, g, ns = make_case(8, 9, 4, 1, 1, 0, dtype=torch.float32, seed=1)
    s64 = torch.tensor(2.0, dtype=torch.float64)
    lse = _lse(a, c, s64, pos, excl, ns)
    assert lse.dtype == torch.float32
    da, dc, ds = _bwd(g.float(), a, c, s64, lse, pos, excl, ns)
    assert (da.dtype, dc.dtype, ds.dtype, ds.dim()) == (torch.float32, torch.float32, torch.float64, 0)
    a16, c16 = a.half(), c.half()
    s16 = torch.tensor(2.0, dtype=torch.bfloat16)
    lse = _lse(a16, c16, s16, pos, excl, ns)
    da, dc, ds = _bwd(g.float(), a16, c16, s16, lse, pos, excl, ns)
    assert (lse.dtype, da.dtype, dc.dtype, ds.dtype) == (torch.float32, torch.float16, torch.float16, torch.bfloat16)


def test_empty_dimensions():
    f = torch.float64
    s = torch.tensor(1.0, dtype=f)
    # M = 0
    a, c = torch.zeros(0, 4, dtype=f), torch.randn(5, 4, dtype=f)
    p, e = torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    lse = _lse(a, c, s, p, e, 0)
    assert lse.shape == (0,) and lse.dtype == f
    da, dc, ds = _bwd(torch.zeros(0, dtype=f), a, c, s, lse, p, e, 0)
    assert da.shape == (0, 4) and torch.equal(dc, torch.zeros(5, 4, dtype=f)) and ds.item() == 0.0
    # Nc = 0: logsumexp over nothing
    a, c = torch.randn(3, 4, dtype=f), torch.zeros(0, 4, dtype=f)
    p, e = torch.full((3, 2), -1, dtype=torch.long), torch.zeros(3, 0, dtype=torch.long)
    lse = _lse(a, c, s, p, e, 0)
    assert torch.equal(lse, torch.full((3,), -math.inf, dtype=f))
    assert torch.equal(lse, contrastive_lse_reference(a, c, s, p, e, 0))
    da, dc, ds = _bwd(torch.ones(3, dtype=f), a, c, s, lse, p, e, 0)
    assert torch.equal(da, torch.zeros(3, 4, dtype=f)) and dc.shape == (0, 4) and ds.item() == 0.0
    # D = 0: all logits are 0, lse = log |incl(i)|
    a, c = torch.zeros(3, 0, dtype=f), torch.zeros(5, 0, dtype=f)
    p, e = torch.tensor([[0], [-1], [4]]), torch.tensor([[1], [2], [4]])
    lse = _lse(a, c, s, p, e, 2)
    # incl = {0, 2, 3, 4}, {3, 4}, {2, 3, 4}
    assert_close_to_reference(lse, torch.log(torch.tensor([4.0, 2.0, 3.0], dtype=f)), None, "lse")
    check_lse(lse, a, c, s, p, e, 2)
    da, dc, ds = _bwd(torch.ones(3, dtype=f), a, c, s, lse, p, e, 2)
    assert da.shape == (3, 0) and dc.shape == (5, 0) and ds.item() == 0.0


def _valid_args(dtype=torch.float32):
    a, c, s, pos, excl, g, ns = make_case(4, 6, 3, 2, 2, 1, dtype=dtype, seed=0)
    return a, c, s, pos, excl, ns


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a, c, s, p, e, ns: (a.int(), c.int(), s, p, e, ns), "anchors must be float32"),
        (lambda a, c, s, p, e, ns: (a, c.double(), s, p, e, ns), "candidates must have the dtype of anchors"),
        (lambda a, c, s, p, e, ns: (a, c[:, :2], s, p, e, ns), "same D"),
        (lambda a, c, s, p, e, ns: (a[0], c, s, p, e, ns), "anchors must be 2-D"),
        (lambda a, c, s, p, e, ns: (a, c[0], s, p, e, ns), "candidates must be 2-D"),
        (lambda a, c, s, p, e, ns: (a, c, s.reshape(1), p, e, ns), "scale must be a 0-dim"),
        (lambda a, c, s, p, e, ns: (a, c, torch.tensor(2), p, e, ns), "scale must be floating"),
        (lambda a, c, s, p, e, ns: (a, c, s, p.int(), e, ns), "pos_idx must be int64"),
        (lambda a, c, s, p, e, ns: (a, c, s, p, e.int(), ns), "excl_idx must be int64"),
        (lambda a, c, s, p, e, ns: (a, c, s, p[:3], e, ns), "pos_idx must be 2-D"),
        (lambda a, c, s, p, e, ns: (a, c, s, p, e[:, 0], ns), "excl_idx must be 2-D"),
        (lambda a, c, s, p, e, ns: (a, c, s, p, e, -1), "neg_start must be >= 0"),
        (lambda a, c, s, p, e, ns: (a, c, s, p.fill_(6), e, ns), r"pos_idx\[0, 0\] = 6 is out of range"),
        (lambda a, c, s, p, e, ns: (a, c, s, p, e.index_fill_(0, torch.tensor([2]), -2), ns),
         r"excl_idx\[2, 0\] = -2 is out of range"),
    ],
    ids=["anchors-dtype", "mixed-dtype", "D", "anchors-dim", "candidates-dim", "scale-dim", "scale-int",
         "pos-int32", "excl-int32", "pos-rows", "excl-dim", "neg-start", "pos-range", "excl-range"],
)
def test_errors_name_the_argument(mutate, match):
    a, c, s, p, e, ns = mutate(*_valid_args())
    with pytest.raises(RuntimeError, match=match):
        _lse(a, c, s, p, e, ns)
    g = torch.zeros(a.shape[0] if a.dim() else 1)
    lse = torch.zeros_like(g)
    with pytest.raises(RuntimeError, match=match):
        _bwd(g, a, c, s, lse, p, e, ns)


def test_backward_specific_errors():
    a, c, s, p, e, ns = _valid_args()
    lse = _lse(a, c, s, p, e, ns)
    with pytest.raises(RuntimeError, match="grad_lse must be 1-D"):
        _bwd(torch.zeros(3), a, c, s, lse, p, e, ns)
    with pytest.raises(RuntimeError, match="lse must be 1-D"):
        _bwd(torch.zeros(4), a, c, s, lse[:2], p, e, ns)
    with pytest.raises(RuntimeError, match="grad_lse must be floating"):
        _bwd(torch.zeros(4, dtype=torch.long), a, c, s, lse, p, e, ns)


def test_index_error_with_no_candidates():
    a, c = torch.randn(2, 3), torch.zeros(0, 3)
    s = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="pos_idx / excl_idx must be -1"):
        _lse(a, c, s, torch.tensor([[0], [-1]]), torch.zeros(2, 0, dtype=torch.long), 0)
