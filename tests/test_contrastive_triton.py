"""Triton kernels of the contrastive logsumexp (kernels/contrastive.py) against the float64 reference.

Runs on CPU through the triton interpreter (TRITON_INTERPRET=1 must be set before triton is imported, hence
the first lines; it is the default here), or compiled on a GPU with TRITON_INTERPRET=0 set explicitly. Shapes
are small because the interpreter executes every program in numpy.

Every check feeds the *same rounded inputs* (fp32 or fp16 tensors) to the kernels and, converted exactly to
float64, to augcl/reference/contrastive.py, and holds lse, dA, dC and dscale to the tolerance rule of
tests/_tolerance.py: at most twice the error of the same-precision PyTorch computation, plus a floor. The yardstick:

* fp32: the reference run on the fp32 inputs (fp32 throughout, as the kernels with tl.dot "ieee").
* fp16: the naive computation in fp16 (``_eager_fp16``), flash-attention's yardstick: the kernels round G to fp16
  for the tensor-core product dA = G @ C (relative 2**-11 per term) and store dA / dC in fp16, as an fp16 eager
  computation does; lse and dscale are accumulated in fp32 from fp32 G and logits.

dscale adds M * Nc signed terms: its floor is relative to sum_ij |G_ij dot_ij|, the size of the terms it adds up.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed: the triton kernels of augcl cannot run")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:
    import augcl.kernels.contrastive as K  # installed package
except ImportError:
    import kernels.contrastive as K  # source tree, before `pip install`

from _devices import no_tf32  # noqa: E402,F401  (autouse: exact fp32 dots; the tolerances assume it)
from _tolerance import assert_close_to_reference  # noqa: E402
from augcl.reference.contrastive import (  # noqa: E402
    contrastive_included_mask,
    contrastive_lse_backward_reference,
    contrastive_lse_reference,
)

# The interpreter evaluates exp2 / log2 in numpy on masked cells too (the kernels zero them afterwards with
# tl.where) and numpy warns about the resulting inf; that is expected, not an error.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

if torch.cuda.is_available() and not K._interpreted():
    DEVICE = "cuda"
else:
    DEVICE = "cpu"

DTYPES = [torch.float32, torch.float16]


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rows(n, d, dtype, g, normalize=True):
    x = torch.randn(n, d, generator=g)
    if normalize and d > 0:
        x = torch.nn.functional.normalize(x, dim=1)
    return x.to(dtype).to(DEVICE)


def _idx(m, k, lo, hi, g, pad_frac=0.25):
    """[m, k] int64 indices in [lo, hi) with about pad_frac of them -1."""
    if k == 0:
        return torch.empty((m, 0), dtype=torch.int64, device=DEVICE)
    idx = torch.randint(lo, max(hi, lo + 1), (m, k), generator=g)
    pad = torch.rand(m, k, generator=g) < pad_frac
    return torch.where(pad, -1, idx).to(DEVICE)


def _scalar(v):
    return torch.tensor(v, dtype=torch.float32, device=DEVICE)


def _eager_fp16(grad, A, C, scale, lse, pos, excl, neg_start):
    """The backward written out naively in fp16 (fp32 logits and G rounded to fp16, fp16 products)."""
    dt = A.dtype
    A, C, grad, lse, s = (t.cpu() for t in (A, C, grad, lse, scale))
    incl = contrastive_included_mask(A.shape[0], C.shape[0], pos.cpu(), excl.cpu(), neg_start)
    dots = A @ C.T
    gp = (grad[:, None] * torch.exp(s * dots.float() - lse[:, None]).masked_fill(~incl, 0.0)).to(dt)
    s16 = s.to(dt)
    return s16 * (gp @ C), s16 * (gp.T @ A)


def _check(A, C, scale, pos, excl, neg_start, grad=None, seed=0):
    """Forward and backward of the kernels against the float64 reference on the same inputs, within the tolerance
    rule (the eager yardstick runs on the kernels' device, under the same allow_tf32)."""
    M, NC = A.shape[0], C.shape[0]
    A64, C64, s64 = A.double(), C.double(), scale.double()

    lse = K.contrastive_lse_fwd(A, C, scale, pos, excl, neg_start)
    assert lse.dtype == torch.float32 and lse.shape == (M,)
    assert_close_to_reference(lse, contrastive_lse_reference(A64, C64, s64, pos, excl, neg_start),
                              contrastive_lse_reference(A, C, scale, pos, excl, neg_start), "lse")

    if grad is None:
        grad = torch.randn(M, generator=_gen(seed + 1)).to(DEVICE)
    da, dc, ds = K.contrastive_lse_bwd(grad, A, C, scale, lse, pos, excl, neg_start)
    # Every backward is fed the kernel's lse (rounded to fp32), so only the backward math is compared.
    ref = contrastive_lse_backward_reference(grad.double(), A64, C64, s64, lse.double(), pos, excl, neg_start)
    eager = list(contrastive_lse_backward_reference(grad, A, C, scale, lse, pos, excl, neg_start))
    if A.dtype == torch.float16:
        eager[:2] = _eager_fp16(grad, A, C, scale, lse, pos, excl, neg_start)
    assert da.dtype == A.dtype and da.shape == A.shape
    assert dc.dtype == C.dtype and dc.shape == C.shape
    assert ds.dtype == torch.float32 and ds.dim() == 0
    if M and NC:
        dots = A64 @ C64.T
        incl = contrastive_included_mask(M, NC, pos, excl, neg_start)
        p = torch.exp(s64 * dots - lse.double()[:, None]).masked_fill(~incl, 0.0)
        mag = (grad.double()[:, None] * p * dots).abs().sum().item()
    else:
        mag = 0.0
    assert_close_to_reference([da, dc, ds], ref, eager, ["dA", "dC", "dscale"], scale=[None, None, mag])
    return lse, (da, dc, ds)


def _small_blocks(monkeypatch, block_d=16, block_do=16):
    """Force 16-wide tiles so that small shapes span several tiles in M, Nc and D (chunked path)."""
    cfg = K._Config(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, BLOCK_DO=block_do,
                    fwd_warps=4, fwd_stages=2, bwd_warps=4, bwd_stages=2)
    monkeypatch.setattr(K, "_pick_config", lambda D, dtype, precision: cfg)


# ------------------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------------------


def test_tiny_1x1():
    g = _gen(1)
    A, C = _rows(1, 1, torch.float32, g, normalize=False), _rows(1, 1, torch.float32, g, normalize=False)
    pos = torch.zeros((1, 1), dtype=torch.int64, device=DEVICE)
    excl = torch.empty((1, 0), dtype=torch.int64, device=DEVICE)
    _check(A, C, _scalar(2.0), pos, excl, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_shape_default_config(dtype):
    g = _gen(2)
    M, NC, D = 37, 53, 33
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    _check(A, C, _scalar(1 / 0.07), _idx(M, 2, 0, NC, g), _idx(M, 3, 0, NC, g), 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_chunked_path_when_one_chunk_covers_d(monkeypatch, dtype):
    """bwd_single_d=False (what triton < 3.3 gets for exact fp32, see _pick_config): the backward takes the
    chunked-D code with a single chunk (BLOCK_D = BLOCK_DO = 32 >= D = 21); the forward stays single-chunk."""
    cfg = K._Config(BLOCK_M=16, BLOCK_N=16, BLOCK_D=32, BLOCK_DO=32, fwd_warps=4, fwd_stages=2, bwd_warps=4,
                    bwd_stages=2, bwd_single_d=False)
    monkeypatch.setattr(K, "_pick_config", lambda D, dtype, precision: cfg)
    g = _gen(31)
    M, NC, D = 37, 45, 21
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    _check(A, C, _scalar(1 / 0.1), _idx(M, 1, 0, NC, g), _idx(M, 1, 0, NC, g), 0)


def test_pick_config_works_around_triton_3_2(monkeypatch):
    """The two triton 3.2 compiler failures benchmarks/preflight.py found have config workarounds, applied only
    before triton 3.3."""
    for old in (True, False):
        monkeypatch.setattr(K, "_TRITON_BEFORE_3_3", old)
        assert K._pick_config(16, torch.float32, "ieee").bwd_single_d is (not old)
        assert K._pick_config(512, torch.float16, "ieee").bwd_warps == (4 if old else 8)
        assert K._pick_config(512, torch.float32, "tf32").bwd_warps == 8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_do", [16, 32])
def test_several_tiles_every_dim_chunked_d(monkeypatch, dtype, block_do):
    """16-wide tiles: 3 row tiles, 4 column tiles, 3 D chunks for the logits, 3 or 2 output D chunks."""
    _small_blocks(monkeypatch, block_d=16, block_do=block_do)
    g = _gen(3)
    M, NC, D = 37, 53, 33
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    _check(A, C, _scalar(1 / 0.1), _idx(M, 2, 0, NC, g), _idx(M, 2, 0, NC, g), 7, seed=3)


def test_several_tiles_default_config():
    """Default 64 x 64 tiles: 3 row tiles, 3 column tiles, single D chunk (D = 40 -> BLOCK_D = 64)."""
    g = _gen(4)
    M, NC, D = 150, 140, 40
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    _check(A, C, _scalar(1 / 0.07), _idx(M, 1, 0, NC, g), _idx(M, 1, 0, NC, g), 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_d_default_config(dtype):
    """D = 130 > 128: default config takes the chunked path (32/64-wide D chunks, 2 output chunks of 128)."""
    g = _gen(5)
    M, NC, D = 70, 66, 130
    cfg = K._pick_config(D, dtype, K._input_precision(dtype))
    assert cfg.BLOCK_D < D and cfg.BLOCK_DO < D
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    _check(A, C, _scalar(1 / 0.07), _idx(M, 1, 0, NC, g), _idx(M, 2, 0, NC, g), 0, seed=5)


def test_unnormalized_inputs_small_scale():
    g = _gen(6)
    M, NC, D = 20, 45, 17
    A, C = _rows(M, D, torch.float32, g, normalize=False), _rows(NC, D, torch.float32, g, normalize=False)
    _check(A, C, _scalar(0.37), _idx(M, 2, 0, NC, g), _idx(M, 2, 0, NC, g), 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,NC", [(20, 600), (600, 20)])
def test_split_sweeps_default_config(dtype, M, NC):
    """Few rows and a long candidate list (MoCo), or the reverse: the grid is too small to fill the device
    (the interpreter counts as 4 SMs), so the fwd/dA column sweep (or the dC row sweep) is split into partial
    results combined by the launcher."""
    g = _gen(18)
    D = 32
    cfg = K._pick_config(D, dtype, K._input_precision(dtype))
    few, many = (M, NC) if M < NC else (NC, M)
    assert K._split_plan(K.triton.cdiv(few, 64), K.triton.cdiv(many, 64), torch.device(DEVICE))[0] > 1
    assert cfg.BLOCK_M == cfg.BLOCK_N == 64
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    # MoCo-like mask when M < NC (positive i below neg_start = M), SimCLR-like otherwise.
    if M < NC:
        pos = torch.arange(M, device=DEVICE)[:, None]
        excl = torch.empty((M, 0), dtype=torch.int64, device=DEVICE)
        neg_start = M
    else:
        pos, excl, neg_start = _idx(M, 1, 0, NC, g), _idx(M, 1, 0, NC, g), 2
    _check(A, C, _scalar(1 / 0.07), pos, excl, neg_start, seed=18)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_sweeps_forced(monkeypatch, dtype):
    """Every sweep split into one-tile pieces (16-wide tiles, 64 'SMs'), including splits in which some rows
    include nothing (columns below neg_start = 40 hold only their positives): partial lse = -inf there."""
    _small_blocks(monkeypatch, block_d=16, block_do=32)
    monkeypatch.setattr(K, "_num_sms", lambda device: 64)
    monkeypatch.setattr(K, "_MIN_TILES_PER_SPLIT", 1)
    assert K._split_plan(3, 4, torch.device(DEVICE)) == (4, 1)
    g = _gen(19)
    M, NC, D = 37, 53, 33
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    _check(A, C, _scalar(1 / 0.07), _idx(M, 2, 0, NC, g), _idx(M, 2, 0, NC, g), 40, seed=19)


def test_split_plan():
    dev = torch.device("cpu")
    target = K._PROGRAMS_PER_SM * K._num_sms(dev)
    assert K._split_plan(target, 1000, dev) == (1, 1000)  # grid already large enough
    assert K._split_plan(1, 2 * K._MIN_TILES_PER_SPLIT - 1, dev)[0] == 1  # sweep too short to split
    assert K._split_plan(1, 0, dev) == (1, 1)
    for programs in (1, 2, 3, 5):
        for n_tiles in (8, 9, 10, 31, 100, 1000):
            s, t = K._split_plan(programs, n_tiles, dev)
            assert (s - 1) * t < n_tiles <= s * t  # whole tiles, no empty split
            assert s == 1 or t >= K._MIN_TILES_PER_SPLIT


# ------------------------------------------------------------------------------------------------------------
# strides
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", ["small", "default"])
def test_noncontiguous_inputs(monkeypatch, dtype, blocks):
    """Transposed / sliced views for A, C, the index tensors, grad_lse (stride 2 and stride 0) and lse, through
    the chunked-D path (16-wide blocks) and the single-D-chunk path (default config: D = 21 fits one chunk)."""
    if blocks == "small":
        _small_blocks(monkeypatch, block_d=16, block_do=32)
    else:
        assert K._pick_config(21, dtype, K._input_precision(dtype)).BLOCK_D >= 21
    g = _gen(7)
    M, NC, D = 29, 41, 21
    A = _rows(D, M, dtype, g).t()  # [M, D], strides (1, M)
    C = _rows(NC, 2 * D, dtype, g)[:, 1::2]  # [NC, D], strides (2D, 2)
    pos = _idx(2, M, 0, NC, g, pad_frac=0.0).t()  # [M, 2], strides (1, M)
    excl = _idx(M, 6, 0, NC, g)[:, ::2]  # [M, 3], strides (6, 2)
    assert not (A.is_contiguous() or C.is_contiguous() or pos.is_contiguous() or excl.is_contiguous())
    scale = _scalar(1 / 0.2)
    neg_start = 6
    lse, (da, dc, ds) = _check(A, C, scale, pos, excl, neg_start, seed=7)

    # Same results as with contiguous copies.
    lse_c = K.contrastive_lse_fwd(A.contiguous(), C.contiguous(), scale, pos.contiguous(), excl.contiguous(),
                                  neg_start)
    torch.testing.assert_close(lse, lse_c, rtol=0, atol=0)

    # grad_lse with stride 2, lse with stride 3.
    grad = torch.randn(2 * M, generator=_gen(70)).to(DEVICE)[::2]
    lse_s = torch.zeros(3 * M, device=DEVICE)[::3]
    lse_s.copy_(lse)
    out_s = K.contrastive_lse_bwd(grad, A, C, scale, lse_s, pos, excl, neg_start)
    out_c = K.contrastive_lse_bwd(grad.contiguous(), A, C, scale, lse, pos, excl, neg_start)
    for x, y in zip(out_s, out_c):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

    # grad_lse expanded from a scalar (stride 0), as autograd produces for loss = lse.sum() * c.
    grad0 = torch.full((), -0.75, device=DEVICE).expand(M)
    assert grad0.stride(0) == 0
    _check(A, C, scale, pos, excl, neg_start, grad=grad0)


# ------------------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_neg_start_positives_below_it(monkeypatch, dtype):
    """MoCo layout: candidates = [batch keys (M), queue (K)], positive of row i is key i < neg_start = M."""
    _small_blocks(monkeypatch)
    g = _gen(8)
    M, K_, D = 23, 30, 19
    NC = M + K_
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    pos = torch.arange(M, device=DEVICE)[:, None]
    excl = torch.empty((M, 0), dtype=torch.int64, device=DEVICE)
    _check(A, C, _scalar(1 / 0.07), pos, excl, M)


def test_excluded_positive_duplicates_and_padding(monkeypatch):
    """A positive listed in excl stays included; duplicate positives count once; -1 pads are ignored."""
    _small_blocks(monkeypatch)
    g = _gen(9)
    M, NC, D = 21, 35, 18
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    base = torch.randint(0, NC, (M,), generator=g).to(DEVICE)
    pos = torch.stack([base, base, torch.full_like(base, -1), (base + 3) % NC], dim=1)  # duplicate + pad
    excl = torch.stack([base, torch.full_like(base, -1), (base + 1) % NC, (base + 1) % NC], dim=1)
    incl = contrastive_included_mask(M, NC, pos, excl, 2)
    assert incl[torch.arange(M), base].all()  # the reference agrees the excluded positive is included
    _check(A, C, _scalar(1 / 0.05), pos, excl, 2)


def test_simclr_layout_shared_tensor():
    """SimCLR: anchors and candidates are the same tensor, positive = the other view, excluded = self."""
    g = _gen(10)
    N, D = 19, 24
    Z = _rows(2 * N, D, torch.float32, g)
    i = torch.arange(2 * N, device=DEVICE)
    pos = ((i + N) % (2 * N))[:, None]
    excl = i[:, None]
    _check(Z, Z, _scalar(1 / 0.5), pos, excl, 0)


@pytest.mark.parametrize("P,E", [(0, 2), (2, 0), (0, 0)])
def test_empty_index_tensors(P, E):
    g = _gen(11)
    M, NC, D = 17, 26, 20
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    _check(A, C, _scalar(3.0), _idx(M, P, 0, NC, g), _idx(M, E, 0, NC, g), 4)


def test_rows_with_nothing_included():
    """neg_start >= Nc and padded-only positives: lse = -inf for those rows, zero gradients, no NaN."""
    g = _gen(12)
    M, NC, D = 9, 14, 10
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    pos = _idx(M, 2, 0, NC, g)
    pos[::2] = -1  # even rows: no positive at all
    excl = _idx(M, 1, 0, NC, g)
    lse, (da, dc, ds) = _check(A, C, _scalar(5.0), pos, excl, NC)
    assert torch.isinf(lse[::2]).all() and (lse[::2] < 0).all()
    assert (da[::2] == 0).all()


# ------------------------------------------------------------------------------------------------------------
# gradients and degenerate sizes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_zeros_and_negatives(dtype):
    g = _gen(13)
    M, NC, D = 25, 31, 16
    A, C = _rows(M, D, dtype, g), _rows(NC, D, dtype, g)
    pos, excl = _idx(M, 1, 0, NC, g), _idx(M, 2, 0, NC, g)
    grad = torch.randn(M, generator=g)
    grad[::3] = 0.0
    grad[1::3] = -grad[1::3].abs()
    _check(A, C, _scalar(1 / 0.07), pos, excl, 1, grad=grad.to(DEVICE))
    # All-zero grad_lse gives exactly zero gradients.
    lse = K.contrastive_lse_fwd(A, C, _scalar(1 / 0.07), pos, excl, 1)
    da, dc, ds = K.contrastive_lse_bwd(torch.zeros(M, device=DEVICE), A, C, _scalar(1 / 0.07), lse, pos, excl, 1)
    assert (da == 0).all() and (dc == 0).all() and ds.item() == 0.0


@pytest.mark.parametrize("M,NC", [(0, 7), (5, 0), (0, 0)])
def test_empty_m_or_nc(M, NC):
    g = _gen(14)
    D = 8
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    pos, excl = _idx(M, 1, 0, max(NC, 1), g), _idx(M, 1, 0, max(NC, 1), g)
    lse, (da, dc, ds) = _check(A, C, _scalar(2.0), pos, excl, 0)
    assert (da == 0).all() and (dc == 0).all() and ds.item() == 0.0


def test_zero_width_d():
    """D = 0: every logit is 0, lse_i = log |incl(i)|."""
    g = _gen(15)
    M, NC = 6, 9
    A, C = _rows(M, 0, torch.float32, g), _rows(NC, 0, torch.float32, g)
    _check(A, C, _scalar(2.0), _idx(M, 1, 0, NC, g), _idx(M, 1, 0, NC, g), 2)


def test_deterministic():
    """No atomics: repeated launches are bitwise identical."""
    g = _gen(16)
    M, NC, D = 33, 40, 20
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    args = (_scalar(1 / 0.07), _idx(M, 1, 0, NC, g), _idx(M, 1, 0, NC, g), 3)
    grad = torch.randn(M, generator=g).to(DEVICE)
    lse1 = K.contrastive_lse_fwd(A, C, *args)
    lse2 = K.contrastive_lse_fwd(A, C, *args)
    assert torch.equal(lse1, lse2)
    out1 = K.contrastive_lse_bwd(grad, A, C, args[0], lse1, *args[1:])
    out2 = K.contrastive_lse_bwd(grad, A, C, args[0], lse1, *args[1:])
    assert all(torch.equal(x, y) for x, y in zip(out1, out2))


# ------------------------------------------------------------------------------------------------------------
# launch options and capability check
# ------------------------------------------------------------------------------------------------------------


def test_input_precision_follows_allow_tf32():
    assert K._input_precision(torch.float32) == "ieee"
    torch.backends.cuda.matmul.allow_tf32 = True  # restored by the autouse fixture
    assert K._input_precision(torch.float32) == "tf32"
    assert K._input_precision(torch.float16) == "ieee"


def test_fp32_with_tf32_allowed():
    """allow_tf32 = True selects INPUT_PRECISION="tf32" and the tensor-core config (one 64-wide D chunk at
    D = 33). The interpreter computes tf32 dots in full fp32; on a GPU tf32 rounds the operands to 10 mantissa
    bits, and so does the eager yardstick (torch's matmul on the GPU under the same allow_tf32)."""
    torch.backends.cuda.matmul.allow_tf32 = True  # restored by the autouse fixture
    assert K._input_precision(torch.float32) == "tf32"
    assert K._pick_config(33, torch.float32, "tf32").BLOCK_D >= 33
    g = _gen(17)
    M, NC, D = 37, 53, 33
    A, C = _rows(M, D, torch.float32, g), _rows(NC, D, torch.float32, g)
    _check(A, C, _scalar(1 / 0.07), _idx(M, 2, 0, NC, g), _idx(M, 3, 0, NC, g), 5)


def test_pick_config_blocks_are_tensor_core_sized():
    for dtype, precision in [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"),
                             (torch.bfloat16, "ieee")]:
        for D in (1, 16, 33, 64, 100, 128, 129, 256, 512, 1000):
            cfg = K._pick_config(D, dtype, precision)
            for b in (cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_D, cfg.BLOCK_DO):
                assert b >= 16 and b & (b - 1) == 0, (D, dtype, cfg)
            if cfg.BLOCK_D >= D:  # single D chunk: one output chunk that covers D
                assert cfg.BLOCK_DO == cfg.BLOCK_D


def test_supports():
    a = torch.zeros(3, 4, device=DEVICE)
    assert K.supports(a, a) is None
    assert K.supports(a.half(), a.half()) is None
    assert "float64" in K.supports(a.double(), a.double())
    assert "same dtype" in K.supports(a, a.half())
    if K._interpreted():
        assert "interpreter" in K.supports(a.bfloat16(), a.bfloat16())


_TRACE_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)  # compiled-mode JITFunctions, which wrap_triton can trace
sys.path.insert(0, sys.argv[1])
import torch
from torch.fx.experimental.proxy_tensor import make_fx
try:
    import augcl.kernels.contrastive as K
except ImportError:
    import kernels.contrastive as K

def f(a, c, s, pos, excl, g):
    lse = K.contrastive_lse_fwd(a, c, s, pos, excl, 3)
    return (lse,) + tuple(K.contrastive_lse_bwd(g, a, c, s, lse, pos, excl, 3))

args = (torch.randn(20, 16, dtype=torch.float16), torch.randn(30, 16, dtype=torch.float16), torch.tensor(2.0),
        torch.randint(0, 30, (20, 1)), torch.randint(0, 30, (20, 2)), torch.randn(20))
gm = make_fx(f, tracing_mode="symbolic")(*args)  # fake tensors: nothing is launched
print("KERNELS", gm.code.count("triton_kernel_wrapper_mutation("))
"""


def test_launchers_are_traceable_by_wrap_triton():
    """The launchers only allocate, launch through wrap_triton and sum: make_fx (symbolic shapes, fake
    tensors) must capture all three kernels as triton_kernel_wrapper_mutation nodes. Runs in a subprocess
    without TRITON_INTERPRET, since wrap_triton passes interpreted kernels through untraced."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT, ROOT], capture_output=True, text=True, env=env,
                         timeout=300)
    if out.returncode != 0 and "active drivers" in out.stderr:
        # torch <= 2.6's wrap_triton asks the triton driver for the device: without a GPU there is none
        pytest.skip("this torch/triton needs a GPU driver to trace wrap_triton: " + out.stderr.strip().splitlines()[-1])
    assert out.returncode == 0, out.stderr[-4000:]
    assert "KERNELS 3" in out.stdout, out.stdout + out.stderr[-4000:]
