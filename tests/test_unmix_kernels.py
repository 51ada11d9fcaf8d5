"""Kernel-level tests of ``mix_images``: the C++ CPU kernel (torch.ops.augcl.mix_images, CPU key) and the Triton
kernels (kernels/unmix.py, through the interpreter on CPU) against the reference, forward and backward, over tiny,
odd and larger shapes, NCHW / channels_last / non-contiguous inputs, every supported dtype, with and without the
fused normalisation; plus opcheck of the Triton op and GPU twins (skipped without a GPU).

Tolerances. CutMix rows are copies (plus the same correctly rounded /255, -mean, /std in every backend): compared
bitwise. Mixup rows do the same IEEE operations in the same order as the reference (a*x_i, b*x_p, add, in fp32 or
fp64), so on the CPU and under the interpreter they are compared bitwise too; on a GPU the compiler may contract
the line into an FMA (one rounding fewer), i.e. at most 1 ulp of fp32 before the final cast, which can flip the
rounding of an fp16/bf16 output by 1 ulp: there the GPU twins use 2 ulp of the output dtype. The backward sums the
same terms in the same order as the reference (increasing source row), so it is bitwise on the CPU as well.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import augcl  # noqa: E402,F401
from augcl import functional as AF  # noqa: E402
from augcl.dispatch import REGISTRY  # noqa: E402
from augcl.reference.unmix import mix_images_backward_reference, mix_images_reference  # noqa: E402


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
    return [t.to(device) for t in (x, lam, cutmix, boxes, partner)]


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
    if backend == "triton" and (shape[-1] > 16 or layout == "strided") and norm:
        pytest.skip("kept small under the triton interpreter (covered by the cpu backend)")
    x, lam, cutmix, boxes, partner = _inputs(shape, dtype, layout, seed=sum(shape))
    _require(backend, x, odt)
    acc = torch.float64 if torch.float64 in (dtype, odt) else torch.float32
    mean, std = _norm(shape[1], acc) if norm else (None, None)
    got = _run(backend, x, lam, cutmix, boxes, partner, mean, std, odt)
    want = mix_images_reference(x, lam, cutmix, boxes, partner, mean, std, odt)
    assert got.dtype == odt and got.shape == x.shape
    cl = layout == "channels_last" and shape[1] > 1 and shape[2] * shape[3] > 1
    assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 7, 9), (4, 2, 6, 17)])
@pytest.mark.parametrize("xdt,odt", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                     (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
                                     (torch.float32, torch.float16)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("norm", [False, True])
def test_backward_matches_reference(backend, shape, xdt, odt, layout, norm):
    x, lam, cutmix, boxes, partner = _inputs(shape, xdt, layout, seed=3 * sum(shape))
    _require(backend, x, odt)
    acc = torch.float64 if torch.float64 in (xdt, odt) else torch.float32
    std = _norm(shape[1], acc)[1] if norm else None
    g = torch.randn(shape, dtype=torch.float32).to(odt)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    out = AF.mix_images(xr, lam, cutmix, boxes, partner, std=std, out_dtype=odt, backend=backend)
    (got,) = torch.autograd.grad(out, xr, g)
    want = mix_images_backward_reference(g, lam, cutmix, boxes, partner, std, xdt)
    assert got.dtype == xdt
    assert torch.equal(got, want)


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
    x = torch.randn(7, 3, 5, 9)
    _require(backend, x)
    for prob in (0.0, 1.0):
        gen = torch.Generator().manual_seed(11)
        mixed, lam, partner = AF.unmix(x, prob_mixup=prob, per_sample=True, generator=gen, backend=backend)
        gen = torch.Generator().manual_seed(11)
        want, lam_r, _ = AF.unmix(x, prob_mixup=prob, per_sample=True, generator=gen, backend="reference")
        assert torch.equal(mixed, want) and torch.equal(lam, lam_r)
        assert int(partner[3]) == 3


def test_triton_opcheck():
    x, lam, cutmix, boxes, partner = _inputs((3, 2, 4, 5), torch.float32, "nchw", seed=1)
    _require("triton", x)
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
    want = mix_images_reference(x, lam, cutmix, boxes, partner, mean, std, odt)
    rows = cutmix.view(-1, 1, 1, 1).expand_as(got)
    # CutMix rows: copies through the same correctly rounded conversion (the reference's scalar /255 may be a
    # multiplication by the reciprocal on CUDA, hence the 1-ulp slack for uint8 input)
    ulp = torch.finfo(odt).eps
    torch.testing.assert_close(got[rows].double(), want[rows].double(), rtol=2 * ulp, atol=2 * ulp)
    torch.testing.assert_close(got.double(), want.double(), rtol=2 * ulp, atol=4 * ulp)
    if dtype.is_floating_point:
        g = torch.randn(shape, device="cuda").to(odt)
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(_run(backend, xr, lam, cutmix, boxes, partner, mean, std, odt), xr, g)
        wgx = mix_images_backward_reference(g.cpu(), lam.cpu(), cutmix.cpu(), boxes.cpu(), partner.cpu(),
                                            std.cpu(), dtype)
        uin = torch.finfo(dtype).eps
        torch.testing.assert_close(gx.cpu().double(), wgx.double(), rtol=4 * uin, atol=4 * uin)
