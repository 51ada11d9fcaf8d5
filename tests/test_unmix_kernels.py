"""Kernel-level tests of ``mix_images``: the C++ CPU kernel (torch.ops.augcl.mix_images, CPU key) and the Triton
kernels (kernels/unmix.py) against the reference, forward and backward, over tiny, odd and larger shapes, NCHW /
channels_last / non-contiguous inputs, every supported dtype, with and without the fused normalisation; plus opcheck
of the Triton op and GPU twins (skipped without a GPU). The Triton backend runs on CUDA tensors when a GPU is
visible (compiled), else on CPU tensors through the interpreter; results are compared on the CPU with the reference
computed on the CPU from the same inputs. Tests whose names contain ``gpu`` run only on a GPU (``pytest -k gpu``).

Tolerances. CutMix rows are copies (plus the same correctly rounded /255, -mean, /std in every backend): compared
bitwise. Mixup rows do the same IEEE operations in the same order as the reference (a*x_i, b*x_p, add, in fp32 or
fp64), so on the CPU and under the interpreter they are compared bitwise too. The backward sums the same terms in
the same order as the reference (increasing source row), so it is bitwise on the CPU as well.

On a GPU the compiler may contract the mixup line into an FMA (one rounding fewer), which can flip the rounding of
the output by a unit: there everything but the CutMix rows (still bitwise: copies, correctly rounded div_rn and
subtraction in both) is held to the rule of tests/_tolerance.py, the reference in float64 on the same values the
oracle and the reference at the kernels' precision (the ``want`` of the CPU comparison) the yardstick.
"""
# _devices sets TRITON_INTERPRET (only without a GPU) before any Triton kernel module is imported.
from _devices import gpu_only_marker, import_kernels, kernel_device, to_device

import pytest
import torch

import augcl  # noqa: F401
from augcl import functional as AF
from augcl.dispatch import REGISTRY
from augcl.reference.unmix import mix_images_backward_reference, mix_images_reference
from _tolerance import assert_close_to_reference

UK = import_kernels("unmix", source_tree=False)  # None without triton

# Where the triton backend runs: compiled on the GPU, or on CPU tensors through the interpreter (the build mode is
# fixed when kernels/unmix.py is imported).
DEVICE = kernel_device(UK, "_mix_images_fwd_kernel")
ON_GPU = DEVICE == "cuda"
gpu_only = gpu_only_marker(ON_GPU)


def _device(backend):
    """The device a backend's tensors live on in these tests."""
    return DEVICE if backend == "triton" else "cuda" if backend == "cuda" else "cpu"


def _f64(t):
    return None if t is None else t.cpu().double()


def _reference64(x, lam, cutmix, boxes, partner, mean, std):
    """The reference in float64 on the same values (uint8 images as they are: /255 in float64)."""
    x = x.cpu()
    return mix_images_reference(x if x.dtype == torch.uint8 else x.double(), lam.cpu(), cutmix.cpu(), boxes.cpu(),
                                partner.cpu(), _f64(mean), _f64(std), torch.float64)


def _backward_reference64(g, lam, cutmix, boxes, partner, std):
    return mix_images_backward_reference(g.cpu().double(), lam.cpu(), cutmix.cpu(), boxes.cpu(), partner.cpu(),
                                         _f64(std), torch.float64)


def _assert_matches(got, want, want64, cutmix):
    """Bitwise on the CPU; on a GPU see the module docstring (``want64``: the reference in float64)."""
    if got.device.type == "cpu":
        assert torch.equal(got, want)
        return
    got = got.cpu()
    rows = cutmix.cpu().view(-1, 1, 1, 1).expand_as(got)
    assert torch.equal(got[rows], want[rows]), "CutMix rows differ from the reference"
    assert_close_to_reference(got, want64, want, "mix")


def _assert_matches_bwd(got, want, want64):
    """Bitwise on the CPU; on a GPU the rule (the compiler may contract the sums of own and cross terms)."""
    if got.device.type == "cpu":
        assert torch.equal(got, want)
        return
    assert_close_to_reference(got.cpu(), want64, want, "grad_x")


def _require(backend, x, out_dtype=None):
    reason = REGISTRY["mix_images"].reasons(x, out_dtype)[backend]
    if reason is not None:
        pytest.skip(f"mix_images backend {backend!r} cannot run on {x.device}/{x.dtype}->{out_dtype}: {reason}")


def _inputs(shape, dtype, layout, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        x = torch.randn(shape, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        # every other column of a wider tensor: neither NCHW- nor channels_last-contiguous
        wide = torch.zeros(shape[:3] + (2 * shape[3],), dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    B, C, H, W = shape
    lam, cutmix, boxes, partner, _ = AF.unmix_params(B, H, W, per_sample=True, pairing="random", generator=g)
    if B >= 2:
        cutmix[0], cutmix[1] = True, False  # both kinds of rows in every batch of two or more
        partner[-1] = partner[0]  # a repeated partner: not a permutation
    return [to_device(t, device) for t in (x, lam, cutmix, boxes, partner)]


def _norm(C, dtype):
    mean = torch.linspace(0.1, 0.6, C, dtype=dtype)
    std = torch.linspace(0.2, 1.7, C, dtype=dtype)
    return mean, std


SHAPES = [(1, 1, 1, 1), (3, 3, 5, 7), (5, 2, 9, 4), (4, 3, 16, 33)]
CASES = [
    # (x dtype, out dtype)
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float64),
    (torch.uint8, torch.float32),
    (torch.uint8, torch.float16),
    (torch.float32, torch.bfloat16),
]


def _run(backend, x, lam, cutmix, boxes, partner, mean, std, odt):
    return AF.mix_images(x, lam, cutmix, boxes, partner, mean=mean, std=std, out_dtype=odt, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,odt", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_matches_reference(backend, shape, dtype, odt, layout, norm):
    if backend == "triton" and not ON_GPU and (shape[-1] > 16 or layout == "strided") and norm:
        pytest.skip("kept small under the triton interpreter (covered by the cpu backend)")
    cpu_args = _inputs(shape, dtype, layout, seed=sum(shape))
    x, lam, cutmix, boxes, partner = (to_device(t, _device(backend)) for t in cpu_args)
    _require(backend, x, odt)
    acc = torch.float64 if torch.float64 in (dtype, odt) else torch.float32
    mean, std = _norm(shape[1], acc) if norm else (None, None)
    got = _run(backend, x, lam, cutmix, boxes, partner, mean, std, odt)
    want = mix_images_reference(*cpu_args, mean, std, odt)
    assert got.dtype == odt and got.shape == x.shape and got.device == x.device
    cl = layout == "channels_last" and shape[1] > 1 and shape[2] * shape[3] > 1
    assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    _assert_matches(got, want, _reference64(*cpu_args, mean, std), cutmix)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 7, 9), (4, 2, 6, 17)])
@pytest.mark.parametrize("xdt,odt", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                     (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
                                     (torch.float32, torch.float16)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("norm", [False, True])
def test_backward_matches_reference(backend, shape, xdt, odt, layout, norm):
    cpu_args = _inputs(shape, xdt, layout, seed=3 * sum(shape))
    dev = _device(backend)
    x, lam, cutmix, boxes, partner = (to_device(t, dev) for t in cpu_args)
    _require(backend, x, odt)
    acc = torch.float64 if torch.float64 in (xdt, odt) else torch.float32
    std = _norm(shape[1], acc)[1] if norm else None
    g = torch.randn(shape, dtype=torch.float32).to(odt)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    out = AF.mix_images(xr, lam, cutmix, boxes, partner, std=std, out_dtype=odt, backend=backend)
    (got,) = torch.autograd.grad(out, xr, to_device(g, dev))
    want = mix_images_backward_reference(g, *cpu_args[1:], std, xdt)
    assert got.dtype == xdt and got.device == x.device
    _assert_matches_bwd(got, want, _backward_reference64(g, *cpu_args[1:], std))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_larger_odd_shape(layout):
    # larger(ish) than the sweeps above: odd B, H and W, several OpenMP tasks per thread
    shape = (9, 3, 67, 65)
    for dtype in (torch.uint8, torch.float32):
        x, lam, cutmix, boxes, partner = _inputs(shape, dtype, layout, seed=9)
        _require("cpu", x)
        mean, std = _norm(3, torch.float32)
        got = _run("cpu", x, lam, cutmix, boxes, partner, mean, std, torch.float32)
        assert torch.equal(got, mix_images_reference(x, lam, cutmix, boxes, partner, mean, std, torch.float32))
    g = torch.randn(shape).contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                                      torch.contiguous_format)
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(_run("cpu", xr, lam, cutmix, boxes, partner, mean, std, torch.float32), xr, g)
    assert torch.equal(gx, mix_images_backward_reference(g, lam, cutmix, boxes, partner, std, torch.float32))


def test_cpp_op_rejects_bad_rows():
    # the op itself (not only augcl.functional) refuses indices that would read out of bounds
    x, lam, cutmix, boxes, partner = _inputs((3, 1, 4, 4), torch.float32, "nchw", seed=2)
    _require("cpu", x)
    with pytest.raises(RuntimeError, match="partner"):
        torch.ops.augcl.mix_images(x, lam, cutmix, boxes, torch.tensor([0, 1, 3]), None, None, torch.float32)
    bad = boxes.clone()
    bad[0] = torch.tensor([0, 5, 0, 1])
    with pytest.raises(RuntimeError, match="boxes"):
        torch.ops.augcl.mix_images(x, lam, cutmix, bad, partner, None, None, torch.float32)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_reverse_pairing_odd_batch(backend):
    dev = _device(backend)
    x = to_device(torch.randn(7, 3, 5, 9), dev)
    _require(backend, x)
    for prob in (0.0, 1.0):
        # the draws happen on x's device (the generator must live there); the reference backend runs there too
        gen = torch.Generator(device=dev).manual_seed(11)
        mixed, lam, partner = AF.unmix(x, prob_mixup=prob, per_sample=True, generator=gen, backend=backend)
        gen = torch.Generator(device=dev).manual_seed(11)
        want, lam_r, _ = AF.unmix(x, prob_mixup=prob, per_sample=True, generator=gen, backend="reference")
        assert torch.equal(lam, lam_r)
        if dev == "cpu" or prob == 0.0:  # CutMix rows are copies everywhere
            assert torch.equal(mixed, want)
        else:  # mixup rows: the GPU may contract a*x + b*x_p into an FMA (module docstring)
            gen = torch.Generator(device=dev).manual_seed(11)
            want64 = AF.unmix(x.double(), prob_mixup=prob, per_sample=True, generator=gen, backend="reference")[0]
            assert_close_to_reference(mixed, want64, want, "mix")
        assert int(partner[3]) == 3


def test_triton_opcheck():
    x, lam, cutmix, boxes, partner = _inputs((3, 2, 4, 5), torch.float32, "nchw", seed=1)
    _require("triton", to_device(x, DEVICE))
    from augcl.ops.unmix import mix_images_triton  # noqa: F401  (registers augcl::mix_images_triton)

    mean, std = _norm(2, torch.float32)
    args = (x.requires_grad_(), lam, cutmix, boxes, partner, mean, std, torch.float32)
    if torch.cuda.is_available():
        args = tuple(t.cuda().detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                     for t in args)
        torch.library.opcheck(torch.ops.augcl.mix_images_triton.default, args)
    else:
        # Under TRITON_INTERPRET the interpreter copies real storages, so the kernel cannot run on fake tensors
        # (as in tests/test_contrastive.py): only schema and autograd registration here.
        torch.library.opcheck(torch.ops.augcl.mix_images_triton.default, args,
                              test_utils=("test_schema", "test_autograd_registration"))


# ---------------------------------------------------------------------------------------------- GPU twins
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,odt", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_forward_backward(backend, dtype, odt, layout):
    shape = (7, 3, 33, 65)
    x, lam, cutmix, boxes, partner = _inputs(shape, dtype, layout, seed=5, device="cuda")
    _require(backend, x, odt)
    acc = torch.float64 if torch.float64 in (dtype, odt) else torch.float32
    mean, std = (t.cuda() for t in _norm(3, acc))
    got = _run(backend, x, lam, cutmix, boxes, partner, mean, std, odt)
    # the reference on the GPU (its scalar /255 may be a multiplication by the reciprocal there) is the yardstick
    want = mix_images_reference(x, lam, cutmix, boxes, partner, mean, std, odt)
    assert_close_to_reference(got, _reference64(x, lam, cutmix, boxes, partner, mean, std), want, "mix")
    if dtype.is_floating_point:
        g = torch.randn(shape, device="cuda").to(odt)
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(_run(backend, xr, lam, cutmix, boxes, partner, mean, std, odt), xr, g)
        wgx = mix_images_backward_reference(g.cpu(), lam.cpu(), cutmix.cpu(), boxes.cpu(), partner.cpu(),
                                            std.cpu(), dtype)
        assert_close_to_reference(gx, _backward_reference64(g, lam, cutmix, boxes, partner, std), wgx, "grad_x")


# ------------------------------------------------------------------------------- triton, compiled on a GPU only
TRITON_CASES = [c for c in CASES if torch.float64 not in c]


@gpu_only
@pytest.mark.parametrize("shape", [(64, 3, 224, 224), (513, 3, 32, 32), (3, 5, 257, 1031)])
@pytest.mark.parametrize("dtype,odt", TRITON_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_triton_larger_shapes(shape, dtype, odt, layout):
    # ImageNet- and CIFAR-size batches (many 1024-element blocks per row; B > 256 rows on grid axis 1) and an odd
    # shape, forward with the fused normalisation and backward, against the CPU reference; bf16 included.
    cpu_args = _inputs(shape, dtype, layout, seed=7)
    x, lam, cutmix, boxes, partner = (to_device(t, DEVICE) for t in cpu_args)
    _require("triton", x, odt)
    mean, std = _norm(shape[1], torch.float32)
    got = _run("triton", x, lam, cutmix, boxes, partner, mean, std, odt)
    want = mix_images_reference(*cpu_args, mean, std, odt)
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                             torch.contiguous_format)
    _assert_matches(got, want, _reference64(*cpu_args, mean, std), cutmix)
    if dtype.is_floating_point:
        g = torch.randn(shape).to(odt)
        if layout == "channels_last":
            g = g.contiguous(memory_format=torch.channels_last)
        xr = x.clone().requires_grad_()
        out = _run("triton", xr, lam, cutmix, boxes, partner, mean, std, odt)
        (gx,) = torch.autograd.grad(out, xr, to_device(g, DEVICE))
        want_gx = mix_images_backward_reference(g, *cpu_args[1:], std, dtype)
        _assert_matches_bwd(gx, want_gx, _backward_reference64(g, *cpu_args[1:], std))


@gpu_only
def test_gpu_triton_large_int64_offsets():
    """B * C*H*W = 2.2e9 > 2**31 elements (fp16: 4.4 GB per tensor, about 18 GB in all): rows past the int32 range
    must be read and written at their own offsets. Reverse pairing, so row i mixes (and its gradient collects)
    exactly rows i and B-1-i: rows 0, B/2 and B-1 are checked against the reference on those two rows alone."""
    B, C, H, W = 40, 3, 4300, 4300
    assert B * C * H * W > 2 ** 31
    x = torch.randn(B, C, H, W, device=DEVICE, dtype=torch.float16)
    _require("triton", x, torch.float16)
    gen = torch.Generator().manual_seed(3)
    lam, cutmix, boxes, partner, _ = AF.unmix_params(B, H, W, per_sample=True, pairing="reverse", generator=gen)
    cutmix[0], cutmix[-1] = True, False  # row 0 CutMix, the last row (past 2**31) mixup
    mean, std = _norm(C, torch.float32)
    dev_params = [t.to(DEVICE) for t in (lam, cutmix, boxes, partner)]
    xr = x.requires_grad_()
    out = _run("triton", xr, *dev_params, mean, std, torch.float16)
    g = torch.randn(B, C, H, W, device=DEVICE, dtype=torch.float16)
    (gx,) = torch.autograd.grad(out, xr, g)
    for i in (0, B // 2, B - 1):
        j = B - 1 - i
        sub = [i, j]
        sub_params = (lam[sub], cutmix[sub], boxes[sub], torch.tensor([1, 0]))
        x_sub = x.detach()[sub].cpu()
        want = mix_images_reference(x_sub, *sub_params, mean, std, torch.float16)[0]
        _assert_matches(out[i:i + 1].detach(), want[None], _reference64(x_sub, *sub_params, mean, std)[:1],
                        cutmix[i:i + 1])
        g_sub = g[sub].cpu()
        want_gx = mix_images_backward_reference(g_sub, *sub_params, std, torch.float16)[0]
        _assert_matches_bwd(gx[i:i + 1], want_gx[None], _backward_reference64(g_sub, *sub_params, std)[:1])
