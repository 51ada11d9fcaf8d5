"""augcl.compat.timm.Mixup against timm.data.Mixup under the same seeds (numpy's global RNG). The torchvision
MixUp / CutMix shims are tested in test_unmix_compat_torchvision.py.

Equality is exact (torch.equal) for targets, CutMix images and the per-sample mixup images (timm's float32
weights; both compute ``lam * x_i + (1 - lam) * x_p`` in float32 with the same roundings). Batch-mode mixup images
(timm: weight ``fp32(1 - lam)`` from a float64 lam; the op: ``1 - fp32(lam)``) can differ by one float32 rounding
of the partner weight: there, and for bf16 and uint8 images, the images follow the rule of tests/_tolerance.py with
timm as the yardstick (timm on float64 copies the reference, timm on the same inputs the eager computation). After
each call the RNG must be in the same state (the next draw is compared), so the draw sequences are the same too.
"""
import itertools

import numpy as np
import pytest
import torch

import augcl
from augcl.compat import timm as ctimm
from _tolerance import assert_close_to_reference

timm_mixup = pytest.importorskip("timm.data.mixup")

CONFIGS = {
    "mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "both": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
    "minmax": dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8)),
    "both_minmax": dict(mixup_alpha=0.4, cutmix_minmax=(0.3, 0.9), switch_prob=0.7),
    "no_correct_prob": dict(mixup_alpha=1.0, cutmix_alpha=0.5, correct_lam=False, prob=0.6),
    "smooth0_prob_low": dict(mixup_alpha=0.3, cutmix_alpha=0.3, prob=0.3, label_smoothing=0.0),
}


def run_both(kw, x, target, seed):
    np.random.seed(seed)
    want_x, want_t = timm_mixup.Mixup(**kw)(x.clone(), target)
    want_next = np.random.rand()
    np.random.seed(seed)
    got_x, got_t = ctimm.Mixup(**kw)(x.clone(), target)
    got_next = np.random.rand()
    return (got_x, got_t, got_next), (want_x, want_t, want_next)


def timm_images(kw, x, target, seed):
    """timm's mixed images of ``x`` (in x's dtype) under numpy seed ``seed``."""
    np.random.seed(seed)
    return timm_mixup.Mixup(**kw)(x.clone(), target)[0]


def mixup_may_round(kw, mode):
    return mode == "batch" and kw.get("mixup_alpha", 1.0) > 0


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_timm_parity(mode, config, hw):
    kw = dict(CONFIGS[config], mode=mode, num_classes=10)
    g = torch.Generator().manual_seed(list(CONFIGS).index(config) * 3 + ["batch", "pair", "elem"].index(mode))
    x = torch.randn(8, 3, *hw, generator=g)
    target = torch.randint(0, 10, (8,), generator=g)
    for seed in range(4):
        (gx, gt, gn), (wx, wt, wn) = run_both(kw, x, target, seed)
        assert gn == wn, "the numpy RNG moved differently"
        assert torch.equal(gt, wt)
        if mixup_may_round(kw, mode):
            assert_close_to_reference(gx, timm_images(kw, x.double(), target, seed), wx, "images")
        else:
            assert torch.equal(gx, wx)


def test_timm_parity_actually_mixes():
    # guard against a parity test that passes because nothing happened: every mode changes the batch
    x = torch.randn(6, 3, 8, 8)
    t = torch.arange(6)
    for mode, config in itertools.product(["batch", "pair", "elem"], ["mixup", "cutmix"]):
        np.random.seed(0)
        out, soft = ctimm.Mixup(**CONFIGS[config], mode=mode, num_classes=6)(x.clone(), t)
        assert not torch.equal(out, x) and soft.shape == (6, 6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_timm_parity_bf16_and_channels_last(mode):
    kw = dict(CONFIGS["both"], mode=mode, num_classes=5)
    x = torch.randn(6, 3, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 5, (6,))
    for seed in range(3):
        (gx, gt, _), (wx, wt, _) = run_both(kw, x, t, seed)
        assert torch.equal(gt, wt)  # elem: timm returns lam in bf16 and so do we
        assert gx.dtype == torch.bfloat16
        # bf16: the op rounds the fp32 mix once, timm rounds each product and the sum
        assert_close_to_reference(gx, timm_images(kw, x.double(), t, seed), wx, "images")


def test_timm_multi_label_and_disabled():
    kw = dict(CONFIGS["both"], mode="elem", num_classes=4, multi_label=True)
    x = torch.randn(4, 2, 6, 6)
    t = (torch.rand(4, 4) > 0.5).float()
    (gx, gt, _), (wx, wt, _) = run_both(kw, x, t, 1)
    assert torch.equal(gt, wt) and torch.equal(gx, wx)
    ours, theirs = ctimm.Mixup(num_classes=4), timm_mixup.Mixup(num_classes=4)
    ours.mixup_enabled = theirs.mixup_enabled = False
    labels = torch.tensor([0, 1, 2, 3])
    a, b = ours(x.clone(), labels), theirs(x.clone(), labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[1].sum(1), torch.ones(4))


def test_timm_mixup_target_smoothing():
    soft = ctimm.mixup_target(torch.tensor([0, 2]), 4, lam=1.0, smoothing=0.2)
    torch.testing.assert_close(soft, torch.tensor([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05]]))
    for lam in (0.3, torch.tensor([[0.3], [0.9]])):
        assert torch.equal(ctimm.mixup_target(torch.tensor([1, 3]), 5, lam, 0.1),
                           timm_mixup.mixup_target(torch.tensor([1, 3]), 5, lam, 0.1))


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_timm_per_sample_modes_call_the_op_once(mode, monkeypatch):
    calls = []
    real = augcl.functional.mix_images

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ctimm, "mix_images", counting)  # the shim imported it by name
    ctimm.Mixup(**CONFIGS["both"], mode=mode, num_classes=3)(torch.randn(16, 3, 4, 4), torch.zeros(16, dtype=torch.long))
    assert len(calls) == 1


def test_timm_uint8_in_float_out():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    t = torch.arange(4)
    kw = dict(CONFIGS["both"], mode="elem", num_classes=4)
    np.random.seed(5)
    got, gt = ctimm.Mixup(**kw)(x, t)
    np.random.seed(5)
    want, wt = timm_mixup.Mixup(**kw)(x.float() / 255, t)
    assert got.dtype == torch.float32 and torch.equal(gt, wt)
    assert_close_to_reference(got, timm_images(kw, x.double() / 255, t, 5), want, "images")


def test_timm_errors():
    m = ctimm.Mixup(num_classes=10)
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="target must hold one entry per image"):
        m(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="even batch size"):
        m(torch.randn(5, 3, 8, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="even batch size"):
        ctimm.Mixup(mode="pair")(torch.randn(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    out, _ = ctimm.Mixup(mode="elem", num_classes=2)(torch.randn(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    assert out.shape == (3, 3, 8, 8)  # odd batch in elem mode: the middle sample pairs with itself
    with pytest.raises(ValueError, match="class indices in"):
        m(x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match="integer class indices"):
        m(x, torch.zeros(4))
    with pytest.raises(ValueError, match="4-D batch"):
        m(torch.randn(4, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be one of"):
        ctimm.Mixup(mode="half")
    with pytest.raises(ValueError, match="one of mixup_alpha"):
        ctimm.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)(x, torch.zeros(4, dtype=torch.long))
