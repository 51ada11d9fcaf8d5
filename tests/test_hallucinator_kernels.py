"""Kernel-level tests of the Hallucinator op: the C++ CPU kernels (torch.ops.augcl.hallucinate / _backward, CPU
key) and the Triton kernels (kernels/hallucinator.py) against a float64 oracle. The Triton kernels run on CUDA tensors
when a GPU is visible (compiled; TRITON_INTERPRET unset, see tests/conftest.py), else on CPU tensors through the
interpreter; results are moved to the CPU and compared there. Tests whose names contain ``gpu`` run only compiled on
a GPU (bf16, which the interpreter lacks, larger shapes, the TF32 path): ``pytest -k gpu`` selects them.

Oracle: ``hallucinate_reference`` / ``hallucinate_backward_reference`` on the *same rounded inputs* converted
exactly to float64 (its backward is itself checked against float64 autograd in test_hallucinator.py).

Tolerance: the rule of tests/_tolerance.py (flash-attention's): for the output and every gradient, the kernel's max
error against the float64 oracle is at most twice the max error of the same-precision torch reference (fp32
accumulation, the same rounding of a1/a2), plus the rule's floor for cases where the torch reference is exact by
chance. A ReLU whose pre-activation is within rounding of 0 can flip between the two
computations; with random Gaussian data at these sizes that does not happen in the seeded cases. At the GPU-only
larger shapes (millions of pre-activations) such a flip is expected somewhere, and a flipped mask changes a whole
gradient component, so there the backward is checked from the *kernel's own* saved a1 / a2 (oracle and torch
reference both use them: the same masks), and the forward by the rule above (a flip moves an activation by no more
than its rounding error).

fp32 dots run with TF32 off (fixture ``_no_tf32``): the kernels use ``input_precision="ieee"`` then, as the torch
reference; ``test_gpu_triton_tf32`` checks the documented TF32 path, with torch's TF32 matmuls as the yardstick.
"""
# _devices sets TRITON_INTERPRET (only without a GPU) before any Triton kernel module is imported.
from _devices import gpu_only_marker, import_kernels, kernel_device, no_tf32  # noqa: F401 (autouse fixture)

import pytest
import torch

import augcl  # noqa: F401  (loads augcl._C, which registers torch.ops.augcl.hallucinate)
from augcl import _extension
from augcl.reference.hallucinator import hallucinate_backward_reference, hallucinate_reference
from _tolerance import assert_close_to_reference

TK = import_kernels("hallucinator")  # None without triton

# Where the Triton kernels run: compiled on the GPU, or on CPU tensors through the interpreter (the kernels' build
# mode is fixed when their module is imported).
DEVICE = kernel_device(TK, "_linear_fwd_kernel")
ON_GPU = DEVICE == "cuda"
gpu_only = gpu_only_marker(ON_GPU)


NAMES = ("h", "a1", "a2")
GRAD_NAMES = ("dx", "dk", "dw1", "db1", "dw2", "db2", "dw3", "db3")


def _inputs(b, d, h, dtype, seed, per_sample=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    x, k = r(b, d), r(b, d)
    lam = (torch.rand(b, generator=g, dtype=torch.float64) * 0.1 if per_sample
           else torch.full((b,), 0.07, dtype=torch.float64))
    lam = lam.to(torch.float64 if dtype == torch.float64 else torch.float32)
    # nn.Linear-like scales so activations stay O(1) at every width
    ws = [r(h, 2 * d, s=(2 * d) ** -0.5), r(h, s=0.1), r(h, h, s=h ** -0.5), r(h, s=0.1), r(d, h, s=h ** -0.5),
          r(d, s=0.1)]
    return x, k, lam, ws, r(b, d)


def _check(got, ref_same, ref64, names):
    """``got`` (the kernel's tensors) within the tolerance rule: ``ref64`` the float64 oracle, ``ref_same`` the
    torch reference at the inputs' precision."""
    for name, a, r in zip(names, got, ref_same):
        assert a.dtype == r.dtype and a.shape == r.shape, name
    assert_close_to_reference(list(got), list(ref64), list(ref_same), list(names))


def _run_and_check(fwd, bwd, b, d, h, dtype, seed, per_sample=True, transform=lambda t: t, device="cpu",
                   bwd_from_kernel_acts=False):
    """Forward and backward of (fwd, bwd) on ``device`` against the CPU references (see the module docstring).

    The kernels get copies on ``device`` (``transform`` applied there too, so its strides survive); with
    ``bwd_from_kernel_acts`` both backward references use the kernel's saved a1 / a2 instead of their own."""
    x, k, lam, ws, gh = _inputs(b, d, h, dtype, seed, per_sample)
    x, k = transform(x), transform(k)
    w1, b1, w2, b2, w3, b3 = ws
    ref_same = hallucinate_reference(x, k, lam, *ws)
    d64 = [t.double() for t in (x, k, lam, *ws)]
    ref64 = hallucinate_reference(*d64)
    if device == "cpu":
        xd, kd, lamd, wsd, ghd = x, k, lam, ws, gh
    else:
        # .contiguous() then transform on the device: the kernels see the same strides as the CPU copies
        xd, kd = transform(x.contiguous().to(device)), transform(k.contiguous().to(device))
        lamd, ghd = lam.to(device), gh.to(device)
        wsd = [t.to(device) for t in ws]
        assert xd.stride() == x.stride() and kd.stride() == k.stride()
    got = fwd(xd, kd, lamd, *wsd)
    for t in got:
        assert t.device.type == torch.device(device).type
    _check(got, ref_same, ref64, NAMES)
    # Backward from the kernel's own saved activations; oracle and torch reference from the oracle's a1/a2 and the
    # rounded ones respectively, so each compares like with like (or all from the kernel's, see above).
    gb = bwd(ghd, xd, kd, lamd, wsd[0], wsd[2], wsd[4], got[1], got[2])
    if bwd_from_kernel_acts:
        a1, a2 = got[1].cpu(), got[2].cpu()
        acts_same, acts64 = (a1, a2), (a1.double(), a2.double())
    else:
        acts_same, acts64 = (ref_same[1], ref_same[2]), (ref64[1], ref64[2])
    gb_same = hallucinate_backward_reference(gh, x, k, lam, w1, w2, w3, *acts_same)
    gb64 = hallucinate_backward_reference(gh.double(), d64[0], d64[1], d64[2], d64[3], d64[5], d64[7], *acts64)
    _check(gb, gb_same, gb64, GRAD_NAMES)


# --------------------------------------------------------------------------------------------- C++ CPU
def _require_cpu():
    if not (_extension.LOADED and hasattr(torch.ops.augcl, "hallucinate")):
        pytest.skip(f"augcl._C with the hallucinate kernel is not loaded: {_extension.LOAD_ERROR}")


# B crosses the 512-row blocks of the first layer (520, 1030, 3000); D covers the widths.
CPU_SHAPES = [(1, 4), (7, 33), (520, 33), (3000, 4), (1030, 128), (33, 256), (130, 512)]


@pytest.mark.parametrize("b,d", CPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpu_kernel_matches_oracle(b, d, dtype):
    _require_cpu()
    _run_and_check(torch.ops.augcl.hallucinate, torch.ops.augcl.hallucinate_backward, b, d, 2 * d, dtype,
                   seed=b * 31 + d)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("b,d,h", [(9, 33, 66), (70, 128, 48)])
def test_cpu_kernel_half_dtypes(b, d, h, dtype):
    _require_cpu()
    _run_and_check(torch.ops.augcl.hallucinate, torch.ops.augcl.hallucinate_backward, b, d, h, dtype, seed=d + h)


def test_cpu_kernel_noncontiguous_and_scalar_lam():
    _require_cpu()
    # x and k as column slices of wider buffers, lam constant
    _run_and_check(torch.ops.augcl.hallucinate, torch.ops.augcl.hallucinate_backward, 45, 33, 20,
                   torch.float32, seed=3, per_sample=False,
                   transform=lambda t: torch.cat((t, t), 1)[:, ::2].clone().t().contiguous().t())


def test_cpu_kernel_deterministic():
    _require_cpu()
    x, k, lam, ws, gh = _inputs(1100, 33, 66, torch.float32, 5)
    out1 = torch.ops.augcl.hallucinate(x, k, lam, *ws)
    out2 = torch.ops.augcl.hallucinate(x, k, lam, *ws)
    g1 = torch.ops.augcl.hallucinate_backward(gh, x, k, lam, ws[0], ws[2], ws[4], out1[1], out1[2])
    g2 = torch.ops.augcl.hallucinate_backward(gh, x, k, lam, ws[0], ws[2], ws[4], out1[1], out1[2])
    for a, b in zip(out1 + g1, out2 + g2):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- Triton
def _require_triton(dtype=torch.float32):
    if TK is None:
        pytest.skip("triton is not installed")
    reason = TK.supports(torch.zeros(1, 1, dtype=dtype, device=DEVICE))
    if reason is not None:
        pytest.skip(f"triton kernels cannot run here: {reason}")


def _fwd(fused):
    return lambda *args: TK.hallucinate_fwd(*args, fused=fused)


# Tiny shapes: the interpreter runs every tl op in numpy. Fused forward (H, 2D <= 128) and the per-layer path.
TRITON_SHAPES = [(1, 4, 8, None), (5, 33, 66, None), (37, 33, 66, False), (70, 20, 40, False), (3, 4, 8, False),
                 (33, 64, 128, None), (17, 128, 256, None)]


@pytest.mark.parametrize("b,d,h,fused", TRITON_SHAPES)
def test_triton_matches_oracle(b, d, h, fused):
    _require_triton()
    if fused is None:
        assert TK.uses_fused_forward(d, h) == (2 * d <= 128 and h <= 128)
    _run_and_check(_fwd(fused), TK.hallucinate_bwd, b, d, h, torch.float32, seed=b + d + h, device=DEVICE)


@pytest.mark.parametrize("fused", [None, False])
def test_triton_fp16(fused):
    _require_triton(torch.float16)
    _run_and_check(_fwd(fused), TK.hallucinate_bwd, 19, 24, 48, torch.float16, seed=11, device=DEVICE)


def test_triton_noncontiguous_inputs():
    _require_triton()
    _run_and_check(_fwd(None), TK.hallucinate_bwd, 21, 12, 24, torch.float32, seed=2, per_sample=False,
                   transform=lambda t: t.t().contiguous().t(), device=DEVICE)


def test_triton_split_weight_gradient_sweep():
    # 300 rows: the weight-gradient sweep is cut into row splits (fp32 partials summed by torch); same oracle.
    _require_triton()
    assert TK._num_splits(300, 1, torch.device(DEVICE)) > 1
    _run_and_check(_fwd(None), TK.hallucinate_bwd, 300, 8, 16, torch.float32, seed=4, device=DEVICE)


def test_triton_and_cpu_agree():
    """Both forward paths of the Triton kernels and the C++ kernel on the same inputs, and both backwards from the
    C++ kernel's activations: each within the rule of the oracle (so within rounding of each other)."""
    _require_triton()
    _require_cpu()
    x, k, lam, ws, gh = _inputs(40, 33, 66, torch.float32, 9)
    xd, kd, lamd, ghd = (t.to(DEVICE) for t in (x, k, lam, gh))
    wsd = [t.to(DEVICE) for t in ws]
    d64 = [t.double() for t in (x, k, lam, *ws)]
    ref_same, ref64 = hallucinate_reference(x, k, lam, *ws), hallucinate_reference(*d64)
    c = torch.ops.augcl.hallucinate(x, k, lam, *ws)
    _check(c, ref_same, ref64, [f"{n} (C++)" for n in NAMES])
    for fused in (None, False):
        _check(TK.hallucinate_fwd(xd, kd, lamd, *wsd, fused=fused), ref_same, ref64,
               [f"{n} (triton, fused={fused})" for n in NAMES])
    a1d, a2d = c[1].to(DEVICE), c[2].to(DEVICE)
    gb_same = hallucinate_backward_reference(gh, x, k, lam, ws[0], ws[2], ws[4], c[1], c[2])
    gb64 = hallucinate_backward_reference(gh.double(), d64[0], d64[1], d64[2], d64[3], d64[5], d64[7],
                                          c[1].double(), c[2].double())
    _check(TK.hallucinate_bwd(ghd, xd, kd, lamd, wsd[0], wsd[2], wsd[4], a1d, a2d), gb_same, gb64,
           [f"{n} (triton)" for n in GRAD_NAMES])
    _check(torch.ops.augcl.hallucinate_backward(gh, x, k, lam, ws[0], ws[2], ws[4], c[1], c[2]), gb_same, gb64,
           [f"{n} (C++)" for n in GRAD_NAMES])


def test_triton_declines_float64():
    _require_triton()
    assert "float64" in TK.supports(torch.zeros(2, 2, dtype=torch.float64))


# ------------------------------------------------------------------------------------- compiled on a GPU only
@gpu_only
@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("b,d,h", [(19, 24, 48), (300, 40, 80), (257, 128, 256)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_triton_half_dtypes(b, d, h, dtype, fused):
    # bf16 (the interpreter has none) and fp16 beyond the interpreter's tiny shapes, on both forward paths
    # (fused=None picks the single-launch kernel where it fits: (19, 24, 48) and (300, 40, 80)).
    _require_triton(dtype)
    _run_and_check(_fwd(fused), TK.hallucinate_bwd, b, d, h, dtype, seed=b + d + h + 1, device=DEVICE,
                   bwd_from_kernel_acts=b > 100)


# (B, D, H, fused): the fused forward over many row blocks (H, 2D <= 128), the per-layer path at the widths
# (D 128..512, H = 2D) with odd B and D, and B large enough that the weight-gradient sweep is split along B.
GPU_SHAPES = [(1000, 64, 128, None), (4099, 32, 64, None), (777, 100, 200, None), (1030, 128, 256, None),
              (2048, 256, 512, None), (513, 512, 1024, None), (8192, 128, 256, None), (1001, 60, 120, False)]


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("b,d,h,fused", GPU_SHAPES)
def test_gpu_triton_larger_shapes(b, d, h, fused, dtype):
    _require_triton(dtype)
    if fused is None:
        assert TK.uses_fused_forward(d, h) == (2 * d <= 128 and h <= 128)
    _run_and_check(_fwd(fused), TK.hallucinate_bwd, b, d, h, dtype, seed=b + d + h, device=DEVICE,
                   bwd_from_kernel_acts=True)


@gpu_only
def test_gpu_triton_weight_gradient_is_split():
    # On the GPU the split count follows the SM count: dW1 at B = 8192, D = 128, H = 256 (a case of GPU_SHAPES)
    # must be cut into several row splits, so that case exercises the fp32 partial sums.
    import triton

    tiles = triton.cdiv(256, TK._BLOCK_N) * triton.cdiv(2 * 128, TK._BLOCK_K)
    assert TK._num_splits(8192, tiles, torch.device(DEVICE)) > 1


@gpu_only
@pytest.mark.parametrize("fused", [None, False])
def test_gpu_triton_tf32(fused):
    """The documented TF32 path (fp32 inputs, torch.backends.cuda.matmul.allow_tf32 = True): operands rounded to
    TF32's 10-bit mantissa, fp32 accumulation. The yardstick is the torch reference on the GPU under the same
    allow_tf32 (its matmuls round the operands alike). Backward from the kernel's own a1 / a2 (ReLU flips are likely
    at TF32 precision), for the references too."""
    _require_triton()
    torch.backends.cuda.matmul.allow_tf32 = True  # restored by the _no_tf32 fixture
    assert TK._input_precision(torch.float32) == "tf32"
    b, d, h = 700, 64, 128
    x, k, lam, ws, gh = _inputs(b, d, h, torch.float32, 21)
    dev = [t.to(DEVICE) for t in (x, k, lam, *ws)]
    got = TK.hallucinate_fwd(*dev, fused=fused)
    d64 = [t.double() for t in (x, k, lam, *ws)]
    gb = TK.hallucinate_bwd(gh.to(DEVICE), dev[0], dev[1], dev[2], dev[3], dev[5], dev[7], got[1], got[2])
    gb64 = hallucinate_backward_reference(gh.double(), d64[0], d64[1], d64[2], d64[3], d64[5], d64[7],
                                          got[1].cpu().double(), got[2].cpu().double())
    gb_tf32 = hallucinate_backward_reference(gh.to(DEVICE), dev[0], dev[1], dev[2], dev[3], dev[5], dev[7], got[1],
                                             got[2])
    _check(got, hallucinate_reference(*dev), hallucinate_reference(*d64), NAMES)
    _check(gb, gb_tf32, gb64, GRAD_NAMES)
