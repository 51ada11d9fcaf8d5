"""``augcl.patch()`` inside the peers' own training objects: the same code run unpatched and patched gives the same
losses, gradients and images.

Each test builds the objects the way the peer's documentation shows (lightly's SimCLR / MoCo / SwAV models with
lightly's heads, losses and momentum utilities; timm's ``Mixup`` as its ``train.py`` calls it with
``SoftTargetCrossEntropy``; torchvision's v2 ``CutMix`` / ``MixUp`` in a ``RandomChoice`` after the data loader;
pml's ``SelfSupervisedLoss(NTXentLoss())`` and a supervised ``NTXentLoss``), runs it unpatched and patched from the
same weights and seeds, and compares.

Tolerance: the one rule of tests/test_patch_tolerance.py (float32 patched vs unpatched, both against the peer's
float64 run; float64 runs agree to 1e-10). Every test also asserts that no :class:`PatchFallbackWarning` was
raised (the augcl path ran) and, where it matters, that augcl's op was called.
"""
import copy
import importlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import augcl
from test_patch_tolerance import assert_like_peer, assert_same_function

P = importlib.import_module("augcl.patch")


@pytest.fixture(autouse=True)
def _unpatched():
    """Every test starts and ends unpatched, with fresh one-time warnings, and fails on a fallback warning."""
    augcl.unpatch()
    P._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PatchFallbackWarning)
        yield
    augcl.unpatch()


def _patch(**peers):
    flags = dict(lightly=False, solo=False, timm=False, torchvision=False, pml=False)
    flags.update(peers)
    report = augcl.patch(**flags)
    for t in P.TARGETS:
        if flags[t.peer]:
            assert report[t.key].status == "patched", report
    return report


class _Spy:
    """Counts the calls of a function of augcl.patch's namespace (which the patched methods call by name)."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        real = getattr(P, name)

        def spy(*a, **kw):
            self.calls += 1
            return real(*a, **kw)

        monkeypatch.setattr(P, name, spy)


def _grads(model: nn.Module, prefix: str = "grad.") -> dict:
    return {prefix + n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _params(model: nn.Module) -> dict:
    return {"param." + n: p.detach().clone() for n, p in model.named_parameters()}


def _images(n, seed, size=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(dtype)


def _backbone():
    # a small conv backbone in place of lightly's ResNet (nn.Sequential(*list(resnet.children())[:-1]))
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ------------------------------------------------------------------------------------------------- lightly
lightly = pytest.importorskip("lightly", reason="lightly (a test dependency) is not installed")
from lightly.loss import NTXentLoss as LightlyNTXentLoss  # noqa: E402  (the original, imported before patching)
from lightly.models.modules import (  # noqa: E402
    MoCoProjectionHead,
    SimCLRProjectionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402


class SimCLR(nn.Module):
    """lightly's SimCLR example model (examples/pytorch/simclr.py), small."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(8, 16, 32)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def _simclr_run(dtype, patched: bool, steps: int = 3, gather: bool = False):
    """lightly's SimCLR training loop: ``criterion = NTXentLoss()``, SGD, ``steps`` steps. Returns every step's loss,
    the first step's gradients and the final parameters."""
    import lightly.loss

    torch.manual_seed(0)
    model = SimCLR(_backbone()).to(dtype)
    criterion = lightly.loss.NTXentLoss(temperature=0.5, gather_distributed=gather)  # looked up now: patched or not
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    out = {}
    for step in range(steps):
        x0, x1 = _images(16, 2 * step, dtype=dtype), _images(16, 2 * step + 1, dtype=dtype)
        loss = criterion(model(x0), model(x1))
        optimizer.zero_grad()
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out.update(_grads(model))
        optimizer.step()
    out.update(_params(model))
    return out, criterion


@pytest.mark.parametrize("gather", [False, True], ids=["local", "gather_distributed-single-process"])
def test_lightly_simclr_losses_gradients_and_steps(monkeypatch, gather):
    ref64, _ = _simclr_run(torch.float64, False, gather=gather)
    base32, base_crit = _simclr_run(torch.float32, False, gather=gather)
    _patch(lightly=True)
    spy = _Spy(monkeypatch, "nt_xent_named")
    got32, crit = _simclr_run(torch.float32, True, gather=gather)
    got64, _ = _simclr_run(torch.float64, True, gather=gather)
    assert spy.calls == 6, "the patched criterion did not run augcl's nt_xent"
    assert type(crit) is type(base_crit) is LightlyNTXentLoss  # the class is patched in place, not replaced
    assert_like_peer(got32, base32, ref64)
    assert_same_function(got64, ref64)


class MoCo(nn.Module):
    """lightly's MoCo example model (examples/pytorch/moco.py): a momentum copy of backbone and head."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(8, 16, 32)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def _moco_run(dtype, steps: int = 4):
    """lightly's MoCo loop: NTXentLoss with a memory bank (the bank wraps after 2 steps), update_momentum,
    evaluation of the loss under no_grad once (which must not touch the bank)."""
    import lightly.loss

    torch.manual_seed(0)
    model = MoCo(_backbone()).to(dtype)
    criterion = lightly.loss.NTXentLoss(temperature=0.1, memory_bank_size=(24, 32)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    out = {}
    for step in range(steps):
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)
        x_query, x_key = _images(16, 2 * step, dtype=dtype), _images(16, 2 * step + 1, dtype=dtype)
        query = model(x_query)
        key = model.forward_momentum(x_key)
        loss = criterion(query, key)
        optimizer.zero_grad()
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out.update(_grads(model))
            with torch.no_grad():
                out["eval_loss"] = criterion(model(x_query), model.forward_momentum(x_key))
        optimizer.step()
    out.update(_params(model))
    out["bank"] = criterion.memory_bank.bank.clone()
    out["bank_ptr"] = criterion.memory_bank.bank_ptr.clone().to(dtype)
    return out


def test_lightly_moco_memory_bank_losses_gradients_and_bank(monkeypatch):
    ref64 = _moco_run(torch.float64)
    base32 = _moco_run(torch.float32)
    _patch(lightly=True)
    spy = _Spy(monkeypatch, "info_nce_named")
    got32 = _moco_run(torch.float32)
    got64 = _moco_run(torch.float64)
    assert spy.calls == 2 * 5  # 4 training steps + 1 evaluation, twice
    assert torch.equal(got32["bank_ptr"], base32["bank_ptr"])
    assert_like_peer(got32, base32, ref64)
    assert_same_function(got64, ref64)


class SwaV(nn.Module):
    """lightly's SwaV example model (examples/pytorch/swav.py)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SwaVProjectionHead(8, 16, 32)
        self.prototypes = SwaVPrototypes(32, n_prototypes=24)

    def forward(self, x):
        x = self.projection_head(self.backbone(x).flatten(start_dim=1))
        x = nn.functional.normalize(x, dim=1, p=2)
        return self.prototypes(x)


def _swav_run(dtype, steps: int = 3):
    """lightly's SwaV loop: 2 high- and 2 low-resolution crops, prototypes normalised every step, SwaVLoss."""
    import lightly.loss

    torch.manual_seed(0)
    model = SwaV(_backbone()).to(dtype)
    criterion = lightly.loss.SwaVLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = {}
    for step in range(steps):
        model.prototypes.normalize()
        high = [model(_images(16, 10 * step + v, 8, dtype)) for v in range(2)]
        low = [model(_images(16, 10 * step + 5 + v, 6, dtype)) for v in range(2)]
        loss = criterion(high, low)
        optimizer.zero_grad()
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out.update(_grads(model))
        optimizer.step()
    out.update(_params(model))
    return out


def test_lightly_swav_losses_and_gradients(monkeypatch):
    ref64 = _swav_run(torch.float64)
    base32 = _swav_run(torch.float32)
    _patch(lightly=True)
    spy = _Spy(monkeypatch, "swav_loss")
    got32 = _swav_run(torch.float32)
    got64 = _swav_run(torch.float64)
    assert spy.calls == 6
    assert got32["loss0"].shape == base32["loss0"].shape == (1,)  # lightly's [1] loss
    assert_like_peer(got32, base32, ref64)
    assert_same_function(got64, ref64)


def test_lightly_swav_with_queue(monkeypatch):
    import lightly.loss

    g = torch.Generator().manual_seed(3)
    high = [torch.randn(8, 12, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    low = [torch.randn(8, 12, generator=g, dtype=torch.float64, requires_grad=True)]
    queue = [torch.randn(16, 12, generator=g, dtype=torch.float64) for _ in range(2)]

    def run(dtype):
        h = [t.detach().to(dtype).requires_grad_() for t in high]
        lo = [t.detach().to(dtype).requires_grad_() for t in low]
        loss = lightly.loss.SwaVLoss(temperature=0.2)(h, lo, [q.to(dtype) for q in queue])
        loss.sum().backward()
        return {"loss": loss.detach(), **{f"g{i}": t.grad for i, t in enumerate(h + lo)}}

    ref64, base32 = run(torch.float64), run(torch.float32)
    _patch(lightly=True)
    assert_like_peer(run(torch.float32), base32, ref64)
    assert_same_function(run(torch.float64), ref64)


# ---------------------------------------------------------------------------------------------------- timm
timm_mixup = pytest.importorskip("timm.data.mixup", reason="timm (a test dependency) is not installed")


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("kind", ["mixup+cutmix", "cutmix-minmax"])
def test_timm_mixup_as_train_py_uses_it(mode, kind):
    """timm's train.py: ``mixup_fn = Mixup(**mixup_args)``, then per batch ``input, target = mixup_fn(input, target)``
    and ``SoftTargetCrossEntropy``; ``mixup_fn.mixup_enabled = False`` after ``--mixup-off-epoch``."""
    import timm.data
    from timm.loss import SoftTargetCrossEntropy

    mixup_args = dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=0.9, switch_prob=0.5, mode=mode,
                      label_smoothing=0.1, num_classes=10)
    if kind == "cutmix-minmax":
        mixup_args.update(cutmix_minmax=(0.3, 0.8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).double()
    train_loss_fn = SoftTargetCrossEntropy()

    def run():
        np.random.seed(7)
        mixup_fn = timm.data.Mixup(**mixup_args)  # looked up now: patched or not
        out = {}
        for step in range(4):
            if step == 3:
                mixup_fn.mixup_enabled = False
            g = torch.Generator().manual_seed(step)
            inp = torch.rand(8, 3, 16, 16, generator=g)
            target = torch.randint(0, 10, (8,), generator=g)
            mixed, soft = mixup_fn(inp, target)
            assert mixed is inp  # timm mixes in place and returns the batch
            loss = train_loss_fn(model(mixed.double()), soft.double())
            out[f"x{step}"], out[f"target{step}"], out[f"loss{step}"] = mixed.clone(), soft, loss.detach()
        return out, mixup_fn

    base, base_fn = run()
    _patch(timm=True)
    got, fn = run()
    assert type(fn) is type(base_fn) is timm_mixup.Mixup
    assert isinstance(fn.__dict__["_augcl_drop_in"][1], P._ctimm.Mixup)  # the augcl Mixup ran
    for name in base:
        # images: CutMix boxes are copies (bitwise); a mixup blend may round its second weight differently
        # (1 - lam in float32, one ulp), so |diff| <= 2 ulp of the largest pixel; targets and losses likewise
        torch.testing.assert_close(got[name], base[name], rtol=0, atol=2 * torch.finfo(torch.float32).eps)


# --------------------------------------------------------------------------------------------- torchvision
v2 = pytest.importorskip("torchvision.transforms.v2", reason="torchvision (a test dependency) is not installed")


def test_torchvision_cutmix_or_mixup_after_the_dataloader():
    """torchvision's "How to use CutMix and MixUp" recipe: ``cutmix_or_mixup = v2.RandomChoice([v2.CutMix(
    num_classes=N), v2.MixUp(num_classes=N)])`` applied to each batch, then cross_entropy with the soft labels."""
    import torchvision.transforms.v2 as T

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 5))

    def run():
        torch.manual_seed(11)
        cutmix = T.CutMix(num_classes=5)
        mixup = T.MixUp(num_classes=5, alpha=0.7)
        cutmix_or_mixup = T.RandomChoice([cutmix, mixup])
        out = {}
        for step in range(6):
            images = torch.rand(8, 3, 12, 12)
            labels = torch.randint(0, 5, (8,))
            images, labels = cutmix_or_mixup(images, labels)
            loss = nn.functional.cross_entropy(model(images), labels)
            out[f"x{step}"], out[f"y{step}"], out[f"loss{step}"] = images, labels, loss.detach()
        return out, (cutmix, mixup)

    base, (bc, bm) = run()
    _patch(torchvision=True)
    got, (c, m) = run()
    assert type(c) is type(bc) and type(m) is type(bm)
    assert isinstance(c.__dict__["_augcl_drop_in"][1], P._ctv.CutMix)  # augcl's ran
    assert isinstance(m.__dict__["_augcl_drop_in"][1], P._ctv.MixUp)
    for name in base:
        # CutMix: bitwise; MixUp: torchvision's weight fp32(1 - lam) vs augcl's 1 - fp32(lam), one ulp apart
        torch.testing.assert_close(got[name], base[name], rtol=0, atol=2 * torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------------------------------- pml
pml_losses = pytest.importorskip("pytorch_metric_learning.losses",
                                 reason="pytorch-metric-learning (a test dependency) is not installed")


def _pml_run(dtype, loss_name: str, supervised: bool):
    """pml's self-supervised recipe ``loss_func = SelfSupervisedLoss(NTXentLoss(temperature=0.1))``,
    ``loss = loss_func(embeddings, ref_emb)``; or the supervised ``NTXentLoss()(embeddings, labels)`` /
    ``SupConLoss()(embeddings, labels)``."""
    from pytorch_metric_learning import losses

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8)).to(dtype)
    g = torch.Generator().manual_seed(5)
    x, x_aug = torch.randn(12, 6, generator=g).to(dtype), torch.randn(12, 6, generator=g).to(dtype)
    loss_class = getattr(losses, loss_name)
    if supervised:
        labels = torch.randint(0, 4, (12,), generator=g)
        loss = loss_class()(model(x), labels)
    else:
        loss = losses.SelfSupervisedLoss(loss_class(temperature=0.1))(model(x), model(x_aug))
    loss.backward()
    return {"loss": loss.detach(), **_grads(model)}


@pytest.mark.parametrize("loss_name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("supervised", [False, True], ids=["SelfSupervisedLoss", "supervised"])
def test_pml_losses(monkeypatch, loss_name, supervised):
    ref64, base32 = _pml_run(torch.float64, loss_name, supervised), _pml_run(torch.float32, loss_name, supervised)
    _patch(pml=True)
    seen = []
    drop_in = getattr(P._cpml, loss_name)
    real = drop_in.forward
    monkeypatch.setattr(drop_in, "forward", lambda self, *a: seen.append(1) or real(self, *a))
    got32, got64 = _pml_run(torch.float32, loss_name, supervised), _pml_run(torch.float64, loss_name, supervised)
    assert len(seen) == 2  # augcl's loss ran, in both runs
    assert_like_peer(got32, base32, ref64)
    assert_same_function(got64, ref64)
