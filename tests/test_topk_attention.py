"""The fused top-k attention (augcl.functional.topk_attention, MixedAE's homologous attention) against its
float64 reference.

* values and gradients (q, k, v) on every backend that runs here (cpu, reference, and triton under the
  interpreter), over tiny, odd (L = 5, 17, 65) and L = 257 shapes, non-contiguous views (the [B, L, 3, H, Dh]
  layout of a fused qkv projection), fp32 / fp64 / fp16 / bf16 (where the backend has them), with and without
  ``keep_first``; the one tolerance rule of tests/_tolerance.py;
* ties: integer-valued q and k give logits with many exact ties; every backend keeps the same set as the reference
  (the lower key index wins) in the forward and in the backward, and -0.0 ties with +0.0;
* top_k = L is plain softmax attention (F.scaled_dot_product_attention); keep_first semantics;
* float64 gradcheck (reference, cpu), opcheck, torch.compile(fullgraph=True), double backward refused, meta
  tensors; the op saves no [L, L] tensor for the backward.

Random logits can hold near-ties at the top_k boundary (two logits closer than the backends' rounding
differences), where two correct computations may keep different keys. Such rows (found from the float64 logits)
are left out of the output comparison and get a zero output gradient, so they contribute to no gradient; the
tests assert that they are rare. Exact ties are the subject of the tie tests.
"""
import pytest
import torch
import torch.nn.functional as F

import augcl
from augcl import functional as AF
from augcl.dispatch import REGISTRY
from augcl.kernels import topk_attention as TK  # importable without triton (stand-ins); launched only with it
from augcl.kernels._triton import tl, triton
from augcl.reference.topk_attention import (topk_attention_eager, topk_attention_kept, topk_attention_reference)
from _tolerance import assert_close_to_reference

BACKENDS = ["cpu", "reference", "triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (B, H, L, Dh, top_k)
# (top_k > L / 2 too: the C++ selection then walks its bucket counts from the bottom)
SHAPES = [(1, 1, 1, 4, 1), (2, 3, 5, 8, 2), (1, 2, 17, 16, 5), (2, 2, 33, 8, 25), (2, 2, 65, 32, 16)]
# a near-tie: a gap at the top_k boundary below this fraction of the row's largest |logit|
NEAR_TIE = 1e-4


def _require(backend, dtype=torch.float32, device="cpu"):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.zeros(1, 1, 2, 4, dtype=dtype, device=device)
    reason = REGISTRY["topk_attention"].reasons(x, x, x)[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot run topk_attention on {device}/{dtype}: {reason}")


def _qkv(shape, dtype, seed=0, layout="contiguous"):
    """q, k, v leaves [B, H, L, Dh]; ``layout="qkv"``: views into one [B, L, 3, H, Dh] tensor (non-contiguous, as
    a fused qkv projection gives them)."""
    b, h, l, d = shape
    g = torch.Generator().manual_seed(seed)
    if layout == "qkv":
        x = torch.randn(b, l, 3, h, d, generator=g).to(dtype).permute(2, 0, 3, 1, 4).detach().requires_grad_(True)
        return x[0], x[1], x[2], x
    leaves = [torch.randn(b, h, l, d, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]
    return (*leaves, None)


def _near_tie_rows(q, k, top_k, scale=None):
    """[B, H, L] bool: rows whose top_k-th and (top_k + 1)-th float64 logits are closer than NEAR_TIE times the
    row's largest |logit| (see the module docstring)."""
    l = q.shape[2]
    if top_k >= l:
        return torch.zeros(q.shape[:3], dtype=torch.bool)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.detach().double() @ k.detach().double().transpose(-1, -2)) * scale
    top = s.sort(dim=-1, descending=True).values
    gap = top[..., top_k - 1] - top[..., top_k]
    return gap <= NEAR_TIE * s.abs().amax(-1)


def _run(fn, leaves, grad_out):
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach(), *grads]


def check_against_reference(backend, q, k, v, top_k, *, scale=None, keep_first=False, seed=0):
    """augcl at q's precision vs the float64 reference of the same (rounded) inputs, with the reference computed
    at q's precision (fp32 accumulation) as the yardstick (None for float64: the floor rule)."""
    dtype = q.dtype
    tie = _near_tie_rows(q, k, top_k, scale)
    assert tie.float().mean() < 0.05, "too many near-ties for a meaningful comparison"
    good = ~tie
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 100)).to(device=q.device, dtype=dtype)
    g = g * good.unsqueeze(-1).to(dtype)

    def ours(q, k, v):
        return AF.topk_attention(q, k, v, top_k, scale=scale, keep_first=keep_first, backend=backend)

    def ref(q, k, v):
        return topk_attention_reference(q, k, v, top_k, scale, keep_first)

    leaves = [q, k, v]
    got = _run(ours, leaves, g)
    want = _run(ref, [t.detach().double().requires_grad_(True) for t in leaves], g.double())
    eager = None if dtype == torch.float64 else _run(ref, [t.detach().clone().requires_grad_(True) for t in leaves],
                                                     g)
    # the output only where the kept set is unambiguous; the gradients everywhere (near-tie rows carry no gradient)
    got[0], want[0] = got[0][good], want[0][good]
    if eager is not None:
        eager[0] = eager[0][good]
    assert_close_to_reference(got, want, eager, ["out", "grad_q", "grad_k", "grad_v"],
                              scale=[None, *_grad_scales(q, k, v, g, top_k, scale, keep_first)])
    return got


def _grad_scales(q, k, v, g, top_k, scale, keep_first):
    """Magnitudes of the terms whose differences dq and dk are: dS_ij = P_ij (dP_ij - D_i) cancels (to exactly 0
    where a row keeps one key, as at L = 1), so rounding is relative to |dP| ~ |dO_i| |v_j| rather than to the
    result; dq_i sums P_i. |dP| |k| (P_i sums to 1), dk_j sums P_.j |dP| |q| over the queries (column sums of P up to
    L). dv has no cancellation: its own magnitude (None)."""
    q, k, v, g = (t.detach().double() for t in (q, k, v, g))
    s = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * s
    p = torch.softmax(logits.masked_fill(~topk_attention_kept(logits, top_k, keep_first), float("-inf")), -1)
    dp = float(g.norm(dim=-1).max() * v.norm(dim=-1).max())
    return [s * dp * float(k.abs().max()), s * dp * float(q.abs().max()) * float(p.sum(-2).max()), None]


# --------------------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("keep_first", [False, True], ids=["topk", "keep_first"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, dtype, shape, keep_first):
    _require(backend, dtype)
    *qkv_shape, top_k = shape
    q, k, v, _ = _qkv(qkv_shape, dtype)
    check_against_reference(backend, q, k, v, top_k, keep_first=keep_first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_long_rows_l257(backend, dtype):
    """L = 257 (a 16 x 16 patch grid + class token: BLOCK_N = 512 in the Triton kernel), top_k = 64 + key 0."""
    _require(backend, dtype)
    q, k, v, _ = _qkv((1, 2, 257, 32), dtype, seed=1)
    check_against_reference(backend, q, k, v, 64, keep_first=True, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_noncontiguous_qkv_views_and_scale(backend, dtype):
    _require(backend, dtype)
    q, k, v, base = _qkv((2, 3, 17, 8), dtype, seed=2, layout="qkv")
    assert not q.is_contiguous()
    got = check_against_reference(backend, q, k, v, 6, scale=0.7, seed=2)
    assert got[0].is_contiguous()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_many_chunks_cpu_blocking(backend, monkeypatch):
    """The C++ kernel processes heads in chunks bounded by AUGCL_CPU_BLOCK_BYTES: one head per chunk gives the
    same results (the forward and backward use the same chunks, so the same kept sets)."""
    _require(backend)
    q, k, v, _ = _qkv((3, 2, 33, 8), torch.float32, seed=3)
    monkeypatch.setenv("AUGCL_CPU_BLOCK_BYTES", "1")
    check_against_reference(backend, q, k, v, 7, seed=3)


@pytest.mark.parametrize("block_bytes", [None, "1", "4096"], ids=["default", "one-row-blocks", "small-blocks"])
@pytest.mark.parametrize("shape", [(1, 1, 150, 16), (2, 3, 129, 8)], ids=["one-head", "six-heads"])
def test_long_rows_blocked_path(shape, block_bytes, monkeypatch):
    """Rows of L >= 128 go through row blocks of one head; with fewer heads than threads the backward sums dk / dv
    over per-block slots, otherwise per head. Every block split gives the reference's values and gradients."""
    _require("cpu")
    q, k, v, _ = _qkv(shape, torch.float32, seed=5)
    if block_bytes is not None:
        monkeypatch.setenv("AUGCL_CPU_BLOCK_BYTES", block_bytes)
    check_against_reference("cpu", q, k, v, 37, keep_first=True, seed=5)


# ---------------------------------------------------------------------- C++ kernel: sparse / dense products
# After the selection the C++ kernel either runs dense GEMMs over P (zeros off the kept set; its backward recomputes
# the selection) or gathers / scatters over the kept keys only (kk = top_k + keep_first <= 0.4 L, the "sparse
# products"; the forward returns the kept keys and the backward reuses them); AUGCL_CPU_TOPK_PRODUCTS forces one
# (augcl.ops.topk_attention.sparse_products), AUGCL_CPU_VEC=0 the portable (non-AVX2) build of the row kernels.
PRODUCT_SHAPES = [
    (2, 3, 65, 64, 16),   # MixedAE's ViT-S/16 setting: chunks of heads
    (1, 1, 65, 40, 16),   # one head (fewer heads than threads: the scatter splits Dh), Dh not a multiple of 32
    (2, 2, 19, 5, 2),     # Dh < 8: scalar tails only
    (1, 2, 150, 16, 37),  # blocked rows (L >= 128), fewer heads than threads: per-block dk / dv slots
    (3, 4, 130, 24, 20),  # blocked rows, whole heads per task
]


@pytest.mark.parametrize("vec", ["1", "0"], ids=["avx2-if-present", "portable"])
@pytest.mark.parametrize("products", ["sparse", "dense"])
@pytest.mark.parametrize("keep_first", [False, True], ids=["topk", "keep_first"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", PRODUCT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_sparse_and_dense_products(shape, dtype, keep_first, products, vec, monkeypatch):
    _require("cpu", dtype)
    monkeypatch.setenv("AUGCL_CPU_TOPK_PRODUCTS", products)
    monkeypatch.setenv("AUGCL_CPU_VEC", vec)
    *qkv_shape, top_k = shape
    q, k, v, _ = _qkv(qkv_shape, dtype, seed=7)
    check_against_reference("cpu", q, k, v, top_k, keep_first=keep_first, seed=7)


@pytest.mark.parametrize("shape", [(2, 3, 65, 32), (1, 2, 150, 16)], ids=["chunks", "blocks"])
def test_cpu_products_rule_and_agreement(shape, monkeypatch):
    """The automatic choice is the sparse products at a quarter of the keys and the dense GEMMs at half of them
    (bitwise equal to the forced choice), and the two agree to rounding on the same input."""
    _require("cpu")
    q, k, v, _ = _qkv(shape, torch.float32, seed=8)
    l = shape[2]
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))

    def run(top_k, products):
        if products is None:
            monkeypatch.delenv("AUGCL_CPU_TOPK_PRODUCTS", raising=False)
        else:
            monkeypatch.setenv("AUGCL_CPU_TOPK_PRODUCTS", products)
        return _run(lambda *t: AF.topk_attention(*t, top_k, keep_first=True, backend="cpu"), [q, k, v], g)

    for top_k, chosen in (((l - 1) // 4, "sparse"), (l // 2, "dense")):
        auto, forced = run(top_k, None), run(top_k, chosen)
        assert all(torch.equal(a, b) for a, b in zip(auto, forced)), (top_k, chosen)
        other = run(top_k, "dense" if chosen == "sparse" else "sparse")
        assert not all(torch.equal(a, b) for a, b in zip(auto, other))  # really two computations
        for a, b in zip(auto, other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vec", ["1", "0"], ids=["avx2-if-present", "portable"])
@pytest.mark.parametrize("shape,top_k", [((2, 3, 65, 16), 16), ((1, 2, 150, 8), 37)], ids=["chunks", "blocks"])
def test_cpu_saved_kept_keys_are_the_reference_set(shape, top_k, vec, monkeypatch):
    """With the sparse products the forward saves each row's kept keys ([B, H, L, top_k + 1] int32, ascending, -1
    past the last) for the backward, which reuses them instead of selecting again: they are exactly the
    reference's kept set of the float64 logits (rows with a near-tie at the boundary excepted); with the dense
    products nothing of the kind is saved ([B, H, L, 0])."""
    _require("cpu")
    monkeypatch.setenv("AUGCL_CPU_VEC", vec)
    q, k, v, _ = _qkv(shape, torch.float32, seed=12)
    for products in ("sparse", "dense"):
        monkeypatch.setenv("AUGCL_CPU_TOPK_PRODUCTS", products)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            AF.topk_attention(q, k, v, top_k, keep_first=True, backend="cpu")
        kept = [t for t in saved if t.dtype == torch.int32]
        assert len(kept) == 1 and kept[0].shape == (*shape[:3], top_k + 1 if products == "sparse" else 0)
    out, lse, kept_sparse = torch.ops.augcl.topk_attention(q.detach(), k.detach(), v.detach(), top_k,
                                                           shape[3] ** -0.5, True, True)
    s = (q.detach().double() @ k.detach().double().transpose(-1, -2)) * shape[3] ** -0.5
    want = topk_attention_kept(s, top_k, True)
    idx = kept_sparse.long()
    l = shape[2]
    got = torch.zeros(*want.shape[:-1], l + 1, dtype=torch.bool)
    got.scatter_(-1, torch.where(idx >= 0, idx, l), True)  # -1 entries land in a spare column
    got = got[..., :l]
    good = ~_near_tie_rows(q, k, top_k)
    assert torch.equal(got[good], want[good])
    assert bool((idx[..., :-1] < idx[..., 1:]).logical_or(idx[..., 1:] < 0).all())  # ascending, then -1s


@pytest.mark.parametrize("products", ["sparse", "dense"])
@pytest.mark.parametrize("shape", [(2, 2, 40, 8), (1, 2, 140, 8)], ids=["chunks", "blocks"])
def test_cpu_non_finite_row_poisons_its_head_only(shape, products, monkeypatch):
    """A non-finite logit row (an Inf in one query) has no top_k: that row's output is NaN, and in the backward the
    row's dq and its head's dk and dv are NaN (the dense GEMMs spread the NaN row that way; the sparse products
    do the same), while other heads stay finite. With checks on, the functional API names the input."""
    _require("cpu")
    monkeypatch.setenv("AUGCL_CPU_TOPK_PRODUCTS", products)
    q, k, v, _ = _qkv(shape, torch.float32, seed=10)
    with torch.no_grad():
        q[0, 1, 3, 0] = float("inf")
    augcl.set_checks(False)
    try:
        out = AF.topk_attention(q, k, v, 5, keep_first=True, backend="cpu")
    finally:
        augcl.set_checks(True)
    bad = torch.zeros(shape[:3], dtype=torch.bool)
    bad[0, 1, 3] = True
    assert bool(out[bad].isnan().all()) and bool(torch.isfinite(out[~bad]).all())
    dq, dk, dv = torch.autograd.grad(out, [q, k, v], torch.ones_like(out))
    assert bool(dq[0, 1, 3].isnan().all()) and bool(dk[0, 1].isnan().all()) and bool(dv[0, 1].isnan().all())
    assert bool(torch.isfinite(dk[:, 0]).all()) and bool(torch.isfinite(dv[:, 0]).all())
    with pytest.raises(ValueError, match="q contains non-finite"):
        AF.topk_attention(q, k, v, 5, keep_first=True, backend="cpu")


# ----------------------------------------------------------------------------------------------- ties
def _integer_qkv(shape, seed, lo=-1, hi=2, dtype=torch.float32):
    """Integer-valued q, k (logits are exact small integers times scale: many exact ties in every dtype)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(lo, hi, shape, generator=g).to(dtype).requires_grad_(True)
    k = torch.randint(lo, hi, shape, generator=g).to(dtype).requires_grad_(True)
    v = torch.randn(shape, generator=g).to(dtype).requires_grad_(True)
    return q, k, v


def _kept_by_probe(backend, q, k, top_k, keep_first):
    """Which keys a backend keeps, read off its outputs: with v = one-hot rows (v_j = e_j), out_ij = P_ij, which is
    > 0 exactly on the kept set; and in the backward, dv_j = sum_i P_ij dO_i with dO = one-hot rows picks P's
    columns, so the backward's kept set is read off dv."""
    b, h, l, _ = q.shape
    eye = torch.eye(l, dtype=q.dtype, device=q.device).expand(b, h, l, l)
    qq = F.pad(q.detach(), (0, l - q.shape[-1])) if q.shape[-1] < l else q.detach()
    kk = F.pad(k.detach(), (0, l - k.shape[-1])) if k.shape[-1] < l else k.detach()
    v = eye.clone().requires_grad_(True)
    scale = q.shape[-1] ** -0.5  # the logits of the unpadded inputs
    out = AF.topk_attention(qq, kk, v, top_k, scale=scale, keep_first=keep_first, backend=backend)
    (dv,) = torch.autograd.grad(out, v, eye)
    return out.detach() > 0, dv.transpose(-1, -2) > 0


@pytest.mark.parametrize("top_k", [5, 17])
@pytest.mark.parametrize("keep_first", [False, True], ids=["topk", "keep_first"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_keep_the_lower_index_in_forward_and_backward(backend, keep_first, top_k):
    """Integer-valued q and k (Dh = 3, values in {-1, 0, 1}): each row of 24 logits takes at most 7 distinct values,
    so the top_k boundary falls inside a group of equal logits in most rows. The kept set, read off the forward's
    output and off the backward's dv, is the reference's (the lowest indices among the equal logits) on every
    backend, and the outputs and gradients match the reference."""
    _require(backend)
    q, k, v = _integer_qkv((2, 2, 24, 3), seed=4)
    scale = 3 ** -0.5
    s = (q.detach().double() @ k.detach().double().transpose(-1, -2)) * scale
    want = topk_attention_kept(s, top_k, keep_first)
    # most rows really have a tie at the boundary (else the test would not test ties)
    top = s.sort(-1, descending=True).values
    assert (top[..., top_k - 1] == top[..., top_k]).float().mean() > 0.5
    fwd, bwd = _kept_by_probe(backend, q, k, top_k, keep_first)
    assert torch.equal(fwd, want)
    assert torch.equal(bwd, want)
    # values and gradients on these tie-heavy inputs (the reference keeps the lowest indices, see the by-hand test)
    got = AF.topk_attention(q, k, v, top_k, keep_first=keep_first, backend=backend)
    ref = topk_attention_reference(q.detach().double(), k.detach().double(), v.detach().double(), top_k, None,
                                   keep_first)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [q, k, v], g)
    qd, kd, vd = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = topk_attention_reference(qd, kd, vd, top_k, None, keep_first)
    for a, b in zip(grads, torch.autograd.grad(ref, [qd, kd, vd], g.double())):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vec", ["1", "0"], ids=["avx2-if-present", "portable"])
@pytest.mark.parametrize("products", ["sparse", "dense"])
@pytest.mark.parametrize("top_k", [3, 17])
def test_cpu_ties_with_either_products(top_k, products, vec, monkeypatch):
    """The tie rule of the C++ kernel holds whichever products consume the selection and whichever build of the row
    kernels runs (the AVX2 compaction packs kept lanes through a permutation table: any slip shows here)."""
    _require("cpu")
    monkeypatch.setenv("AUGCL_CPU_TOPK_PRODUCTS", products)
    monkeypatch.setenv("AUGCL_CPU_VEC", vec)
    q, k, _ = _integer_qkv((2, 2, 24, 3), seed=11)
    s = (q.detach().double() @ k.detach().double().transpose(-1, -2)) * 3 ** -0.5
    for keep_first in (False, True):
        want = topk_attention_kept(s, top_k, keep_first)
        fwd, bwd = _kept_by_probe("cpu", q, k, top_k, keep_first)
        assert torch.equal(fwd, want) and torch.equal(bwd, want)


def test_reference_tie_rule_by_hand():
    """The reference itself: equal logits keep the lowest indices; -0.0 ties with +0.0 (index order decides)."""
    s = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, -0.0], [-0.0, 0.0, -1.0, -0.0, 5.0, 0.0]])
    assert topk_attention_kept(s, 2).tolist() == [[False, True, True, False, False, False],
                                                 [True, False, False, False, True, False]]
    assert topk_attention_kept(s, 4).tolist() == [[True, True, True, False, True, False],
                                                 [True, True, False, True, True, False]]
    assert topk_attention_kept(s, 1, keep_first=True).tolist() == [[True, True, False, False, False, False],
                                                                  [True, False, False, False, True, False]]


@triton.jit
def _selection_probe_kernel(S, OUT, L, top_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            KEEP_FIRST: tl.constexpr):
    """OUT[i, j] = 1 where the Triton kernels' selection keeps logit S[i, j] (rows of L, contiguous)."""
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < L
    s = tl.load(S + rows[:, None] * L + cols[None, :], mask=col_ok[None, :], other=0.0)
    kept = TK._kept(s, cols, col_ok, top_k, BLOCK_M, KEEP_FIRST)
    tl.store(OUT + rows[:, None] * L + cols[None, :], kept.to(tl.int8), mask=col_ok[None, :])


def test_triton_selection_on_given_logits():
    """The Triton kernels' selection (binary search over the int32 images of the floats, cumsum tie rule) on
    logits chosen by hand: signed zeros (which must tie: the int32 image of -0.0 lies below that of +0.0, so the
    kernel first makes it +0.0), the largest and smallest floats, subnormals, negative values, runs of equal
    values, a row length that is no power of two; every top_k against the reference's stable sort."""
    _require("triton")
    big, sub = 3.0e38, 1.0e-45
    s = torch.tensor([
        [-0.0, 0.0, 1.0, -0.0, 0.0, -1.0, -0.0],
        [big, -big, sub, -sub, 0.0, -0.0, big],
        [-2.0, -2.0, -3.0, -1.0, -2.0, -1.0, -5.0],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    ], dtype=torch.float32)
    for keep_first in (False, True):
        for top_k in range(1, 8):
            out = torch.zeros(s.shape, dtype=torch.int8)
            _selection_probe_kernel[(1,)](s, out, 7, top_k, BLOCK_M=4, BLOCK_N=8, KEEP_FIRST=keep_first)
            assert torch.equal(out.bool(), topk_attention_kept(s, top_k, keep_first)), (top_k, keep_first, out)


# ------------------------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_top_k_equal_to_l_is_plain_attention(backend, dtype):
    """top_k = L keeps every key: F.scaled_dot_product_attention, values and gradients (its float64 form the
    reference, its own dtype the yardstick)."""
    _require(backend, dtype)
    q, k, v, _ = _qkv((2, 3, 17, 8), dtype, seed=5)
    g = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(6))
    got = _run(lambda q, k, v: AF.topk_attention(q, k, v, 17, backend=backend), [q, k, v], g)
    want = _run(F.scaled_dot_product_attention, [t.detach().double().requires_grad_(True) for t in (q, k, v)],
                g.double())
    eager = None if dtype == torch.float64 else _run(
        F.scaled_dot_product_attention, [t.detach().clone().requires_grad_(True) for t in (q, k, v)], g)
    assert_close_to_reference(got, want, eager, ["out", "grad_q", "grad_k", "grad_v"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_first(backend):
    """keep_first keeps key 0 for every query on top of the top_k best: top_k + 1 keys where key 0 is not among
    them, top_k where it is; without it key 0 is kept only where it is among the best."""
    _require(backend)
    q, k, _v, _ = _qkv((1, 2, 12, 4), torch.float32, seed=7)
    k = k.detach().clone()
    k[..., 0, :] = -3 * q.detach().mean(2)  # key 0 scores low for most queries
    fwd_plain, _ = _kept_by_probe(backend, q, k, 3, False)
    fwd_first, bwd_first = _kept_by_probe(backend, q, k, 3, True)
    assert torch.equal(fwd_first, bwd_first)
    assert bool(fwd_first[..., 0].all())
    in_top = fwd_plain[..., 0]
    assert (~in_top).any() and torch.equal(fwd_first.sum(-1), 3 + (~in_top).long())
    assert torch.equal(fwd_first[..., 1:], fwd_plain[..., 1:])


def test_eager_baseline_agrees_where_no_ties():
    """The benchmarks' eager form (torch.topk + scatter mask + softmax + matmul) is the same function where there
    are no ties at the boundary."""
    q, k, v, _ = _qkv((2, 2, 33, 8), torch.float64, seed=8)
    assert not _near_tie_rows(q, k, 9).any()
    for keep_first in (False, True):
        torch.testing.assert_close(topk_attention_eager(q, k, v, 9, keep_first=keep_first),
                                   topk_attention_reference(q, k, v, 9, None, keep_first))


# ------------------------------------------------------------------------------- autograd and compile
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    _require(backend, torch.float64)
    q, k, v, _ = _qkv((1, 2, 9, 4), torch.float64, seed=9)
    assert not _near_tie_rows(q, k, 3).any()  # finite differences must not cross a selection boundary
    for keep_first in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v: AF.topk_attention(q, k, v, 3, keep_first=keep_first, backend=backend), (q, k, v))


def test_opcheck_cpp_ops():
    _require("cpu")
    q, k, v, _ = _qkv((2, 2, 7, 4), torch.float32, seed=10)
    q, k, v = q.detach(), k.detach(), v.detach()
    for save_kept in (False, True):  # dense products (kept [.., 0]) and sparse ones (kept [.., 4])
        args = (q, k, v, 3, 0.5, True, save_kept)
        torch.library.opcheck(torch.ops.augcl.topk_attention.default, args)
        out, lse, kept = torch.ops.augcl.topk_attention(*args)
        assert kept.dtype == torch.int32 and kept.shape == (2, 2, 7, 4 if save_kept else 0)
        torch.library.opcheck(torch.ops.augcl.topk_attention_backward.default,
                              (torch.randn_like(out), q, k, v, out, lse, kept, 3, 0.5, True))


def test_opcheck_triton_op():
    _require("triton")
    from augcl.ops.topk_attention import topk_attention_triton

    q, k, v, _ = _qkv((1, 2, 7, 4), torch.float32, seed=11)
    # Under TRITON_INTERPRET the kernels cannot run on fake tensors (see test_contrastive): schema + autograd.
    torch.library.opcheck(topk_attention_triton, (q, k, v, 3, 0.5, False),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_fullgraph(backend):
    _require(backend)
    torch._dynamo.reset()
    q, k, v, _ = _qkv((2, 2, 9, 8), torch.float32, seed=12)

    def step(q, k, v):
        return AF.topk_attention(q, k, v, 4, keep_first=True, backend=backend)

    got = torch.compile(step, fullgraph=True)(q, k, v)
    want = step(q, k, v)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.square().sum(), [q, k, v]),
                    torch.autograd.grad(want.square().sum(), [q, k, v])):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_triton_interpreter():
    """The triton backend traces in one graph too. backend="eager": under the interpreter the kernels are plain
    Python, which AOTAutograd cannot put into a graph (tests/test_gpu_readiness.py says why)."""
    _require("triton")
    torch._dynamo.reset()
    q, k, v, _ = _qkv((1, 2, 9, 8), torch.float32, seed=12)

    def step(q, k, v):
        return AF.topk_attention(q, k, v, 4, keep_first=True, backend="triton")

    got = torch.compile(step, fullgraph=True, backend="eager")(q, k, v)
    want = step(q, k, v)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.square().sum(), [q, k, v]),
                    torch.autograd.grad(want.square().sum(), [q, k, v])):
        torch.testing.assert_close(a, b)


def test_double_backward_raises():
    _require("cpu", torch.float64)
    q, k, v, _ = _qkv((1, 1, 6, 4), torch.float64)
    out = AF.topk_attention(q, k, v, 2, backend="cpu")
    (gq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the topk_attention op is not supported"):
        gq.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_no_square_tensor(backend):
    """What autograd keeps for the backward: q, k, v, out and lse, nothing of size [L, L]."""
    _require(backend)
    q, k, v, _ = _qkv((1, 2, 40, 4), torch.float32, seed=13)
    sizes = []

    def pack(t):
        sizes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        AF.topk_attention(q, k, v, 5, backend=backend)
    assert sizes and max(torch.Size(s).numel() for s in sizes) < 40 * 40, sizes


def test_meta_tensors_give_shapes():
    q = torch.empty(2, 3, 10, 8, device="meta")
    out = AF.topk_attention(q, q, q, 4)
    assert out.device.type == "meta" and out.shape == (2, 3, 10, 8)


def test_default_backend_and_module_export():
    q, k, v, _ = _qkv((1, 1, 6, 4), torch.float32)
    assert augcl.functional.topk_attention is AF.topk_attention
    want = "cpu" if REGISTRY["topk_attention"].reasons(q, k, v)["cpu"] is None else "reference"
    assert REGISTRY["topk_attention"].select("cpu", q, k, v) == want


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4, 3, 65, 32, 16), (1, 4, 197, 128, 49), (2, 12, 257, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_reference(dtype, shape):
    _require("triton", dtype, "cuda")
    *qkv_shape, top_k = shape
    q, k, v = [t.detach().cuda().requires_grad_(True) for t in _qkv(qkv_shape, dtype, seed=14)[:3]]
    check_against_reference("triton", q, k, v, top_k, keep_first=True, seed=14)


@pytest.mark.gpu
def test_gpu_ties_forward_and_backward():
    _require("triton", torch.float32, "cuda")
    q, k, _v = _integer_qkv((2, 2, 24, 3), seed=15)
    s = (q.detach().double() @ k.detach().double().transpose(-1, -2)) * 3 ** -0.5
    want = topk_attention_kept(s, 5, True)
    fwd, bwd = _kept_by_probe("triton", q.detach().cuda(), k.detach().cuda(), 5, True)
    assert torch.equal(fwd.cpu(), want) and torch.equal(bwd.cpu(), want)


# ------------------------------------------------------------------------------------- GPU shared memory
# What ptxas reported for the larger of the two kernels (benchmarks/preflight.py, triton 3.8, sm_80/86/90).
_PTXAS_SHARED = [((65, 128, torch.float32), 163840), ((65, 64, torch.float32), 114688),
                 ((197, 32, torch.float32), 102400), ((197, 64, torch.float32), 139264),
                 ((197, 128, torch.float32), 212992), ((197, 128, torch.float16), 131072),
                 ((257, 32, torch.float32), 134144), ((257, 64, torch.float32), 201728),
                 ((257, 128, torch.float32), 336896), ((257, 128, torch.float16), 152576),
                 ((257, 64, torch.float16), 84992), ((257, 32, torch.float16), 51200)]


@pytest.mark.parametrize("case,measured", _PTXAS_SHARED, ids=[f"L{c[0]}-Dh{c[1]}-{c[2]}" for c, _ in _PTXAS_SHARED])
def test_shared_memory_estimate_covers_what_ptxas_reported(case, measured):
    """The Triton backend declines shapes whose kernels would not launch ("out of resource") on the GPU at hand;
    its estimate must never be below what the compiler needed."""
    kt = pytest.importorskip("augcl.kernels.topk_attention")
    assert kt.shared_bytes_estimate(*case) >= measured


def test_shared_memory_rule_declines_long_fp32_rows_and_names_the_shape():
    kt = pytest.importorskip("augcl.kernels.topk_attention")
    h100, a100 = 232448, 166912
    reason = kt.shared_reason(257, 128, torch.float32, h100)
    assert reason is not None and "L = 257" in reason and "Dh = 128" in reason and "227 KiB" in reason
    assert kt.shared_reason(257, 128, torch.bfloat16, h100) is None  # ViT-style bf16 rows fit an H100
    assert kt.shared_reason(257, 128, torch.bfloat16, a100) is not None
    assert kt.shared_reason(197, 64, torch.bfloat16, a100) is None
    assert kt.shared_reason(257, 128, torch.float32, None) is None  # limit unknown: the launch decides
