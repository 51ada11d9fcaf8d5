"""Un-Mix image mixtures: the reference against a per-row fp64 loop oracle, unmix_params' draws
(Beta, modes, boxes, pairings, generator reproducibility), odd batches and images, channels_last, uint8 +
normalisation, gradients (gradcheck fp64, determinism), opcheck, torch.compile and every argument error.

Numeric comparisons follow the rule of tests/_tolerance.py: the oracle in float64 is the reference and the same
oracle computed in the mix's precision (fp32 for fp32 / uint8 images) the yardstick; in float64 it is both."""
import math

import pytest
import torch

from augcl import functional as AF
from augcl.dispatch import REGISTRY, BackendUnavailableError
from augcl.reference.unmix import mix_images_backward_reference, mix_images_reference
from _tolerance import assert_close_to_reference


def _params(B, H, W, seed=0, per_sample=True, pairing="random", prob_mixup=0.5):
    g = torch.Generator().manual_seed(seed)
    return AF.unmix_params(B, H, W, per_sample=per_sample, pairing=pairing, prob_mixup=prob_mixup, generator=g)


def _oracle(x, lam, cutmix, boxes, partner, mean=None, std=None, dtype=torch.float64):
    """Row by row in ``dtype`` (float64: the reference), straight from the definition (slices, no masks)."""
    xd = x.to(dtype)
    out = torch.empty_like(xd)
    for i in range(x.shape[0]):
        p = int(partner[i])
        if bool(cutmix[i]):
            y0, y1, x0, x1 = (int(v) for v in boxes[i])
            row = xd[i].clone()
            row[:, y0:y1, x0:x1] = xd[p, :, y0:y1, x0:x1]
        else:
            a = float(lam[i])
            row = a * xd[i] + (1 - a) * xd[p]
        out[i] = row
    if x.dtype == torch.uint8:
        out = out / 255
    if mean is not None:
        out = out - torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)
    if std is not None:
        out = out / torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)
    return out


# ------------------------------------------------------------------------------------- reference vs oracle
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 7, 9), (6, 2, 8, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.uint8])
def test_reference_matches_oracle(shape, dtype):
    B, C, H, W = shape
    x = (torch.rand(shape) * 255).to(dtype) if dtype == torch.uint8 else torch.randn(shape, dtype=dtype)
    lam, cutmix, boxes, partner, _ = _params(B, H, W, seed=B + H)
    mean, std = ([0.1 * c for c in range(C)], [0.5 + c for c in range(C)]) if dtype == torch.uint8 else (None, None)
    got = mix_images_reference(x, lam, cutmix, boxes, partner,
                               None if mean is None else torch.tensor(mean), None if std is None else torch.tensor(std))
    want = _oracle(x, lam, cutmix, boxes, partner, mean, std)
    assert got.dtype == (torch.float32 if dtype == torch.uint8 else dtype)
    assert_close_to_reference(got, want, _oracle(x, lam, cutmix, boxes, partner, mean, std, dtype=got.dtype), "mix")


def test_cutmix_rows_are_exact_copies():
    x = torch.randn(4, 3, 10, 12)
    lam, cutmix, boxes, partner, _ = _params(4, 10, 12, prob_mixup=0.0)
    assert bool(cutmix.all())
    out = AF.mix_images(x, lam, cutmix, boxes, partner, backend="reference")
    assert torch.equal(out, _oracle(x, lam, cutmix, boxes, partner).float())


# ----------------------------------------------------------------------------------------- unmix_params
def test_params_per_batch_share_one_draw():
    lam, cutmix, boxes, partner, lam_eff = _params(7, 9, 11, seed=3, per_sample=False, pairing="reverse")
    assert lam.dtype == torch.float32 and lam_eff.dtype == torch.float32
    assert boxes.dtype == torch.int64 and partner.dtype == torch.int64 and cutmix.dtype == torch.bool
    for t in (lam, cutmix, lam_eff):
        assert bool((t == t[0]).all())
    assert bool((boxes == boxes[0]).all())
    assert partner.tolist() == [6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("per_sample", [False, True])
def test_params_boxes_and_effective_lam(per_sample):
    H, W = 13, 8
    for seed in range(20):
        lam, cutmix, boxes, partner, lam_eff = _params(9, H, W, seed=seed, per_sample=per_sample)
        y0, y1, x0, x1 = boxes.unbind(1)
        assert bool(((0 <= y0) & (y0 <= y1) & (y1 <= H) & (0 <= x0) & (x0 <= x1) & (x1 <= W)).all())
        for i in range(9):
            if cutmix[i]:
                # the CutMix convention: side int(H * sqrt(1 - lam)), centre cy, [cy - s // 2, cy + s // 2) clipped
                s_h = int(H * math.sqrt(1 - float(lam[i])))
                assert int(y1[i] - y0[i]) <= 2 * (s_h // 2)
                kept = 1 - int(y1[i] - y0[i]) * int(x1[i] - x0[i]) / (H * W)
                assert float(lam_eff[i]) == pytest.approx(kept, abs=1e-7)
            else:
                assert float(lam_eff[i]) == float(lam[i])


def test_params_distribution():
    lam, cutmix, _, _, _ = _params(4000, 4, 4, seed=1, per_sample=True, prob_mixup=0.3)
    # Beta(1, 1) is uniform: mean 1/2, variance 1/12; 4000 draws -> std of the mean 0.0046.
    assert abs(float(lam.mean()) - 0.5) < 0.025
    assert abs(float(lam.var()) - 1 / 12) < 0.01
    # fraction of mixup rows ~ prob_mixup (std 0.0072)
    assert abs(float((~cutmix).float().mean()) - 0.3) < 0.04
    lam2, _, _, _, _ = AF.unmix_params(4000, 4, 4, alpha=0.2, per_sample=True,
                                      generator=torch.Generator().manual_seed(2))
    # Beta(0.2, 0.2) is U-shaped: variance 1 / (4 * (2 * 0.2 + 1)) = 0.1786
    assert abs(float(lam2.var()) - 0.1786) < 0.02
    assert bool(AF.unmix_params(50, 4, 4, prob_mixup=1.0, per_sample=True)[1].logical_not().all())
    assert bool(AF.unmix_params(50, 4, 4, prob_mixup=0.0, per_sample=True)[1].all())


def test_pairings():
    B = 7
    x = torch.arange(B).view(B, 1, 1, 1).float()
    _, _, _, p_roll, _ = AF.unmix_params(B, 1, 1, pairing="roll")
    # torchvision.transforms.v2 MixUp/CutMix mix each sample with batch.roll(1, 0)
    assert torch.equal(x[p_roll], x.roll(1, 0))
    _, _, _, p_rand, _ = AF.unmix_params(B, 1, 1, pairing="random", generator=torch.Generator().manual_seed(0))
    assert sorted(p_rand.tolist()) == list(range(B))
    _, _, _, p_rev, _ = AF.unmix_params(B, 1, 1, pairing="reverse")
    assert torch.equal(x[p_rev], x.flip(0))


def test_generator_reproducibility():
    x = torch.randn(6, 3, 8, 8)
    runs = [AF.unmix(x, per_sample=True, pairing="random", generator=torch.Generator().manual_seed(s))
            for s in (5, 5, 6)]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[2][0])


# ------------------------------------------------------------------------------------- unmix semantics
@pytest.mark.parametrize("prob_mixup", [0.0, 1.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_odd_batch_middle_row_pairs_with_itself(prob_mixup, per_sample):
    x = torch.randn(5, 3, 7, 9)
    mixed, lam, partner = AF.unmix(x, prob_mixup=prob_mixup, per_sample=per_sample,
                                   generator=torch.Generator().manual_seed(0))
    assert int(partner[2]) == 2
    # x[2] mixed with itself is x[2] up to the rounding of lam * x + (1 - lam) * x (exact for CutMix)
    if prob_mixup == 0.0:
        assert torch.equal(mixed[2], x[2])
    else:
        assert_close_to_reference(mixed[2], x[2].double(), x[2], "row 2 (mixed with itself)")
    draws = _same_draws(x, prob_mixup, per_sample)
    assert_close_to_reference(mixed, _oracle(x, *draws), _oracle(x, *draws, dtype=torch.float32), "mix")


def _same_draws(x, prob_mixup, per_sample):
    B, _, H, W = x.shape
    lam, cutmix, boxes, partner, _ = AF.unmix_params(B, H, W, prob_mixup=prob_mixup, per_sample=per_sample,
                                                     generator=torch.Generator().manual_seed(0))
    return lam, cutmix, boxes, partner


def test_returned_lam_is_effective_weight():
    x = torch.randn(8, 1, 6, 6)
    mixed, lam, partner = AF.unmix(x, prob_mixup=0.0, per_sample=True, generator=torch.Generator().manual_seed(1))
    lam_, cutmix, boxes, _, lam_eff = AF.unmix_params(8, 6, 6, prob_mixup=0.0, per_sample=True,
                                                      generator=torch.Generator().manual_seed(1))
    assert torch.equal(lam, lam_eff)
    # the kept fraction is the fraction of pixels still equal to x itself (x is continuous: no ties)
    kept = (mixed == x).double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(kept.float(), lam)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_channels_last_same_numbers(backend):
    x = torch.randn(5, 3, 7, 9)
    args = _params(5, 7, 9, seed=4)[:4]
    _require(backend, x)
    a = AF.mix_images(x, *args, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 3.0], backend=backend)
    b = AF.mix_images(x.contiguous(memory_format=torch.channels_last), *args, mean=[0.1, 0.2, 0.3],
                      std=[1.0, 2.0, 3.0], backend=backend)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert a.is_contiguous()
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_uint8_normalise(backend):
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    _require(backend, x)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    lam = torch.tensor([0.3, 0.7, 1.0, 0.5])
    cutmix = torch.tensor([False, False, False, True])
    boxes = torch.tensor([[0, 0, 0, 0]] * 3 + [[1, 4, 2, 5]])
    partner = torch.tensor([1, 0, 3, 2])
    for out_dtype in (None, torch.float16, torch.bfloat16, torch.float64):
        got = AF.mix_images(x, lam, cutmix, boxes, partner, mean=mean, std=std, out_dtype=out_dtype,
                            backend=backend)
        assert got.dtype == (out_dtype or torch.float32)
        want = _oracle(x, lam, cutmix, boxes, partner, mean, std)
        # the yardstick: the reference backend, which mixes in fp32 (fp64 for an fp64 output) and rounds once
        eager = AF.mix_images(x, lam, cutmix, boxes, partner, mean=mean, std=std, out_dtype=out_dtype,
                              backend="reference")
        assert_close_to_reference(got, want, eager, f"mix (out_dtype {out_dtype})")
    # mixed in fp32, not rounded to uint8: 0.3 * 10 + 0.7 * 11 = 10.7, not 11
    x2 = torch.zeros(2, 1, 1, 1, dtype=torch.uint8)
    x2[0], x2[1] = 10, 11
    out = AF.mix_images(x2, torch.tensor([0.3, 0.3]), torch.tensor([False, False]), torch.zeros(2, 4, dtype=torch.long),
                        torch.tensor([1, 0]), backend=backend)
    assert float(out[0]) == pytest.approx(10.7 / 255, rel=1e-6)
    # plain uint8 without mean/std: value / 255 as float32
    out = AF.mix_images(x2, torch.ones(2), torch.tensor([False, False]), torch.zeros(2, 4, dtype=torch.long),
                        torch.tensor([0, 1]), backend=backend)
    assert out.dtype == torch.float32 and float(out[1]) == pytest.approx(11 / 255)


def _require(backend, x, out_dtype=None):
    reason = REGISTRY["mix_images"].reasons(x, out_dtype)[backend]
    if reason is not None:
        pytest.skip(f"mix_images backend {backend!r} cannot run here: {reason}")


def test_backend_dispatch():
    x = torch.randn(2, 1, 3, 3)
    args = _params(2, 3, 3)[:4]
    reasons = REGISTRY["mix_images"].reasons(x, x.dtype)
    assert reasons["reference"] is None
    for name, reason in reasons.items():
        if name != "reference" and reason is not None:
            with pytest.raises(BackendUnavailableError, match=f"backend '{name}' cannot run"):
                AF.mix_images(x, *args, backend=name)


# ------------------------------------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(backend, channels_last):
    B, C, H, W = 5, 2, 3, 4
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _require(backend, x)
    lam, cutmix, boxes, _, _ = _params(B, H, W, seed=7)
    cutmix[:2] = torch.tensor([True, False])
    partner = torch.tensor([1, 1, 4, 0, 2])  # not a permutation: row 1 receives two cross terms, row 3 none
    x.requires_grad_()

    def f(t):
        return AF.mix_images(t, lam, cutmix, boxes, partner, mean=[0.5, -1.0], std=[0.5, 3.0], backend=backend)

    # fast_mode: a random projection of the Jacobian (the full Jacobian is compared below via the explicit
    # backward against autograd through the plain reference ops)
    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    # the explicit backward against autograd through the plain reference composition
    g = torch.randn(B, C, H, W, dtype=torch.float64)
    (gx,) = torch.autograd.grad(f(x), x, g)
    x2 = x.detach().clone().requires_grad_()
    (gx2,) = torch.autograd.grad(mix_images_reference(x2, lam, cutmix, boxes, partner, torch.tensor([0.5, -1.0]),
                                                      torch.tensor([0.5, 3.0])), x2, g)
    assert_close_to_reference(gx, gx2, None, "grad_x")  # float64: autograd of the reference is the reference


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backward_deterministic_and_low_precision(backend):
    x = torch.randn(6, 3, 9, 7, dtype=torch.float16)
    _require(backend, x)
    lam, cutmix, boxes, partner, _ = _params(6, 9, 7, seed=2)
    partner = torch.tensor([0, 0, 0, 5, 5, 1])
    g = torch.randn(6, 3, 9, 7, dtype=torch.float16)
    grads = []
    for _ in range(2):
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(AF.mix_images(xr, lam, cutmix, boxes, partner, backend=backend), xr, g)
        grads.append(gx)
    assert gx.dtype == torch.float16
    assert torch.equal(grads[0], grads[1])
    want = mix_images_backward_reference(g.double(), lam, cutmix, boxes, partner, None, torch.float64)
    eager = mix_images_backward_reference(g, lam, cutmix, boxes, partner, None, torch.float16)
    assert_close_to_reference(grads[0], want, eager, "grad_x")


def test_uint8_has_no_gradient():
    x = torch.randint(0, 255, (2, 1, 3, 3), dtype=torch.uint8)
    out = AF.mix_images(x, *_params(2, 3, 3)[:4])
    assert not out.requires_grad


# ---------------------------------------------------------------------------------------- opcheck, compile
def _op_args(dtype=torch.float32, channels_last=False, norm=True):
    x = torch.randn(3, 2, 5, 4, dtype=dtype) if dtype != torch.uint8 else torch.randint(0, 256, (3, 2, 5, 4)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lam, cutmix, boxes, partner, _ = _params(3, 5, 4, seed=1)
    cutmix[0], cutmix[1] = True, False
    mean = torch.tensor([0.1, 0.2]) if norm else None
    std = torch.tensor([0.5, 2.0]) if norm else None
    odt = torch.float32 if dtype == torch.uint8 else dtype
    return x, lam, cutmix, boxes, partner, mean, std, odt


@pytest.mark.parametrize("dtype,channels_last,norm", [(torch.float32, False, True), (torch.float64, True, False),
                                                      (torch.uint8, False, True)])
def test_opcheck(dtype, channels_last, norm):
    if not hasattr(torch.ops.augcl, "mix_images"):
        pytest.skip("augcl._C was built without mix_images")
    args = _op_args(dtype, channels_last, norm)
    if dtype.is_floating_point:
        args = (args[0].requires_grad_(),) + args[1:]
    torch.library.opcheck(torch.ops.augcl.mix_images.default, args)
    g = torch.randn(args[0].shape, dtype=args[7])
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.augcl.mix_images_backward.default,
                          (g, args[1], args[2], args[3], args[4], args[6], torch.float32))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("normalize", [True, False])
def test_torch_compile_fullgraph(backend, normalize):
    """Values and gradients under torch.compile equal eager. The reference backend without normalisation is the
    case torch 2.11 got wrong (a no-op .to alias as the Function's output: zero gradient; see
    augcl/reference/_outputs.py)."""
    reason = REGISTRY["mix_images"].reasons(torch.zeros(1, 3, 2, 2), None)[backend]
    if reason is not None:
        pytest.skip(reason)
    x = torch.randn(5, 3, 6, 7)
    lam, cutmix, boxes, partner, _ = _params(5, 6, 7, seed=3)
    norm = dict(mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4]) if normalize else {}
    w = torch.randn(5, 3, 6, 7)

    def f(t, lam, cutmix, boxes, partner):
        return AF.mix_images(t, lam, cutmix, boxes, partner, backend=backend, **norm)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xr = x.clone().requires_grad_()
    got = compiled(xr, lam, cutmix, boxes, partner)
    want = f(x, lam, cutmix, boxes, partner)
    assert torch.equal(got, want)
    (got * w).sum().backward()
    xe = x.clone().requires_grad_()
    (f(xe, lam, cutmix, boxes, partner) * w).sum().backward()
    assert torch.equal(xr.grad, xe.grad)


# ----------------------------------------------------------------------------------------------- errors
def _good():
    x = torch.randn(4, 3, 5, 5)
    lam, cutmix, boxes, partner, _ = _params(4, 5, 5)
    return x, lam, cutmix, boxes, partner


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: {**a, "x": torch.randn(3, 5, 5)}, ValueError, "x must be a 4-D"),
    (lambda a: {**a, "x": a["x"].to(torch.int32)}, TypeError, "x must be float16"),
    (lambda a: {**a, "x": [1, 2]}, TypeError, "x must be a torch.Tensor"),
    (lambda a: {**a, "lam": a["lam"][:3]}, ValueError, "lam must have shape"),
    (lambda a: {**a, "lam": torch.ones(4, dtype=torch.long)}, TypeError, "lam must be a floating"),
    (lambda a: {**a, "lam": torch.tensor([0.5, float("nan"), 0.5, 0.5])}, ValueError, "lam contains non-finite"),
    (lambda a: {**a, "cutmix": a["cutmix"].long()}, TypeError, "cutmix must be a bool"),
    (lambda a: {**a, "cutmix": a["cutmix"][None]}, ValueError, "cutmix must have shape"),
    (lambda a: {**a, "boxes": a["boxes"][:, :3]}, ValueError, "boxes must have shape"),
    (lambda a: {**a, "boxes": a["boxes"].float()}, TypeError, "boxes must be an integer"),
    (lambda a: {**a, "boxes": torch.tensor([[0, 6, 0, 1]] * 4)}, ValueError, r"boxes\[0\]"),
    (lambda a: {**a, "boxes": torch.tensor([[0, 1, 0, 1]] * 3 + [[3, 2, 0, 1]])}, ValueError, r"boxes\[3\]"),
    (lambda a: {**a, "boxes": torch.tensor([[0, 1, -1, 1]] * 4)}, ValueError, r"boxes\[0\]"),
    (lambda a: {**a, "partner": torch.tensor([0, 1, 2, 4])}, IndexError, "partner has values"),
    (lambda a: {**a, "partner": torch.tensor([0, 1, 2, -1])}, IndexError, "partner has values"),
    (lambda a: {**a, "partner": a["partner"].float()}, TypeError, "partner must be an integer"),
    (lambda a: {**a, "partner": a["partner"][:2]}, ValueError, "partner must have shape"),
    (lambda a: {**a, "mean": [0.1, 0.2]}, ValueError, "mean must hold 3"),
    (lambda a: {**a, "std": [0.1, 0.0, 0.2]}, ValueError, "std must not contain 0"),
    (lambda a: {**a, "std": torch.tensor([0.1, 0.0, 0.2])}, ValueError, "std must not contain 0"),
    (lambda a: {**a, "std": torch.ones(2)}, ValueError, "std must hold 3"),
    (lambda a: {**a, "mean": "abc"}, TypeError, "mean must be None"),
    (lambda a: {**a, "out_dtype": torch.int32}, TypeError, "out_dtype must be"),
    (lambda a: {**a, "x": torch.randn(0, 3, 5, 5), "lam": torch.ones(0), "cutmix": torch.ones(0, dtype=torch.bool),
                "boxes": torch.zeros(0, 4, dtype=torch.long), "partner": torch.zeros(0, dtype=torch.long)},
     ValueError, "x is empty"),
])
def test_mix_images_errors(mutate, exc, match):
    x, lam, cutmix, boxes, partner = _good()
    a = mutate(dict(x=x, lam=lam, cutmix=cutmix, boxes=boxes, partner=partner, mean=None, std=None, out_dtype=None))
    with pytest.raises(exc, match=match):
        AF.mix_images(a["x"], a["lam"], a["cutmix"], a["boxes"], a["partner"], mean=a["mean"], std=a["std"],
                      out_dtype=a["out_dtype"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put a tensor on another device")
def test_mix_images_device_mismatch():
    x, lam, cutmix, boxes, partner = _good()
    with pytest.raises(ValueError, match="partner is on"):
        AF.mix_images(x.cuda(), lam.cuda(), cutmix.cuda(), boxes.cuda(), partner)


def test_device_mismatch_meta():
    # A meta tensor stands in for "another device" on CPU-only machines.
    x, lam, cutmix, boxes, partner = _good()
    with pytest.raises(ValueError, match="lam is on meta"):
        AF.mix_images(x, lam.to("meta"), cutmix, boxes, partner)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(alpha=0.0), ValueError, "alpha must be finite and > 0"),
    (dict(alpha=-1.0), ValueError, "alpha must be finite and > 0"),
    (dict(alpha=float("inf")), ValueError, "alpha must be finite"),
    (dict(alpha="1"), TypeError, "alpha must be a number"),
    (dict(prob_mixup=1.5), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    (dict(prob_mixup=-0.1), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    (dict(prob_mixup=float("nan")), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    (dict(per_sample=1), TypeError, "per_sample must be a bool"),
    (dict(pairing="flip"), ValueError, "pairing must be one of"),
    (dict(generator=3), TypeError, "generator must be a torch.Generator"),
])
def test_unmix_errors(kwargs, exc, match):
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(exc, match=match):
        AF.unmix(x, **kwargs)


def test_generator_on_another_device():
    # A meta tensor stands in for "another device" on CPU-only machines (a CUDA generator needs a GPU).
    x = torch.empty(4, 3, 5, 5, device="meta")
    with pytest.raises(ValueError, match="generator is on cpu but x is on meta"):
        AF.unmix(x, generator=torch.Generator())


def test_unmix_x_errors():
    with pytest.raises(ValueError, match="x must be a 4-D"):
        AF.unmix(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match="x is empty"):
        AF.unmix(torch.randn(0, 3, 5, 5))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        AF.unmix_params(0, 5, 5)
    with pytest.raises(TypeError, match="height must be an int"):
        AF.unmix_params(2, 5.0, 5)
    with pytest.raises(ValueError, match="generator is on cpu"):
        AF.unmix_params(2, 5, 5, generator=torch.Generator(), device="meta")
