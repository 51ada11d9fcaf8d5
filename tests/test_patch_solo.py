"""``augcl.patch(solo=True)`` against a stand-in of solo-learn's package tree.

solo-learn cannot be a test dependency: the PyPI wheel (1.0.2, the only one) pins torch 1.9 / pytorch-lightning
1.4 and its ``solo/__init__.py`` imports the whole training stack (pl_bolts, wandb, ...), and its SimCLR function
predates the ``simclr_loss_func(z, indexes, temperature)`` of the git main branch (1.0.6) that
``augcl.compat.solo`` reproduces. So the tests write, into a temporary folder on ``sys.path``, a package ``solo``
with solo-learn's module layout and import statements (``solo.losses.<method>`` defining the loss functions,
``solo/losses/__init__.py`` re-exporting them, ``solo.utils.sinkhorn_knopp.SinkhornKnopp``, and
``solo.methods.<method>`` importing what it uses with ``from solo.losses.<method> import <func>``), whose bodies
restate solo-learn's math (main branch, as tests/test_swav_compat_solo.py and tests/test_distributed.py restate it) and
whose methods call the losses the way solo's methods do. Its ``__version__`` plays the installed version (real
solo-learn has none; augcl.patch then reads the distribution's metadata).

Checked: every name is replaced (the defining module, the package re-export, the methods' ``from`` imports, a
method module imported only after ``patch()``) and restored by identity; a module outside the peer that imported
a function before ``patch()`` is reported; the patched functions are augcl's (spied) and give solo's losses and
gradients within the rule of tests/test_patch_tolerance.py; the 1.0.2 layout patches SwAV / Sinkhorn but skips its
other ``simclr_loss_func`` as a signature mismatch, even with ``force=True``.
"""
import importlib
import sys
import textwrap
import types
import warnings

import pytest
import torch

import augcl
from test_patch_tolerance import assert_like_peer, assert_same_function

P = importlib.import_module("augcl.patch")
ONLY_SOLO = dict(lightly=False, solo=True, timm=False, torchvision=False, pml=False)

SOLO_FILES = {
    "solo/__init__.py": '''
        """Stand-in for solo-learn (see tests/test_patch_solo.py)."""
        __version__ = "1.0.6"
    ''',
    "solo/utils/__init__.py": "from solo.utils import misc, sinkhorn_knopp\n",
    "solo/utils/misc.py": '''
        import torch
        import torch.distributed as dist

        def get_rank():
            return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

        def gather(x):
            # single process here: solo's all-gather with gradient is the identity
            return x
    ''',
    "solo/utils/sinkhorn_knopp.py": '''
        import torch
        import torch.distributed as dist

        class SinkhornKnopp(torch.nn.Module):
            def __init__(self, num_iters: int = 3, epsilon: float = 0.05, world_size: int = 1):
                super().__init__()
                self.num_iters, self.epsilon, self.world_size = num_iters, epsilon, world_size

            @torch.no_grad()
            def forward(self, Q):
                q = torch.exp(Q / self.epsilon).t()  # [K, B]
                k, b = q.shape[0], q.shape[1] * self.world_size
                q = q / q.sum()
                for _ in range(self.num_iters):
                    q = q / q.sum(dim=1, keepdim=True) / k  # each prototype: mass 1 / K
                    q = q / q.sum(dim=0, keepdim=True) / b  # each sample: mass 1 / B
                return (q * b).t()
    ''',
    "solo/losses/__init__.py": '''
        from solo.losses.mocov2plus import mocov2plus_loss_func
        from solo.losses.simclr import simclr_loss_func
        from solo.losses.swav import swav_loss_func
    ''',
    "solo/losses/simclr.py": '''
        import torch
        import torch.nn.functional as F
        from solo.utils.misc import gather, get_rank

        def simclr_loss_func(z, indexes, temperature: float = 0.1):
            # -log( sum of exp-similarities to same-index rows / sum over all other rows ), mean over rows
            z = F.normalize(z, dim=-1)
            all_z = gather(z)
            sim = torch.exp(z @ all_z.t() / temperature)
            all_idx = gather(indexes)
            same = indexes.unsqueeze(1) == all_idx.unsqueeze(0)
            same[:, z.size(0) * get_rank():].fill_diagonal_(False)
            other = indexes.unsqueeze(1) != all_idx.unsqueeze(0)
            pos, neg = (sim * same).sum(1), (sim * other).sum(1)
            return -torch.log(pos / (pos + neg)).mean()
    ''',
    "solo/losses/mocov2plus.py": '''
        import torch
        import torch.nn.functional as F

        def mocov2plus_loss_func(query, key, queue, temperature=0.1):
            # queue is [D, K]; the positive logit first, class 0
            logits = torch.cat([(query * key).sum(1, keepdim=True), query @ queue], dim=1) / temperature
            return F.cross_entropy(logits, torch.zeros(query.size(0), dtype=torch.long, device=query.device))
    ''',
    "solo/losses/swav.py": '''
        import numpy as np
        import torch

        def swav_loss_func(preds, assignments, temperature: float = 0.1):
            terms = []
            for v1 in range(len(preds)):
                for v2 in np.delete(np.arange(len(preds)), v1):
                    log_p = torch.log_softmax(preds[v2] / temperature, dim=1)
                    terms.append(-torch.mean(torch.sum(assignments[v1] * log_p, dim=1)))
            return sum(terms) / len(terms)
    ''',
    "solo/methods/__init__.py": "",
    "solo/methods/simclr.py": '''
        import torch
        from torch import nn
        from solo.losses.simclr import simclr_loss_func

        class SimCLR(nn.Module):
            def __init__(self, temperature=0.2):
                super().__init__()
                self.temperature = temperature
                self.projector = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))

            def training_step(self, batch):
                indexes, X = batch  # solo's batch: [indexes, [view, view, ...]]
                z = torch.cat([self.projector(x) for x in X])
                indexes = indexes.repeat(len(X))
                return simclr_loss_func(z, indexes=indexes, temperature=self.temperature)
    ''',
    "solo/methods/mocov2plus.py": '''
        import copy
        import torch
        import torch.nn.functional as F
        from torch import nn
        from solo.losses.mocov2plus import mocov2plus_loss_func

        class MoCoV2Plus(nn.Module):
            def __init__(self, temperature=0.1, queue_size=20):
                super().__init__()
                self.temperature = temperature
                self.projector = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
                self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
                self.register_buffer("queue", F.normalize(torch.randn(2, 8, queue_size), dim=1))

            def training_step(self, batch):
                _, (x1, x2) = batch
                q1, q2 = F.normalize(self.projector(x1), dim=-1), F.normalize(self.projector(x2), dim=-1)
                k1 = F.normalize(self.momentum_projector(x1), dim=-1)
                k2 = F.normalize(self.momentum_projector(x2), dim=-1)
                queue = self.queue.clone().detach()
                return (mocov2plus_loss_func(q1, k2, queue[1], self.temperature)
                        + mocov2plus_loss_func(q2, k1, queue[0], self.temperature)) / 2
    ''',
    "solo/methods/swav.py": '''
        import torch
        import torch.nn.functional as F
        from torch import nn
        from solo.losses.swav import swav_loss_func
        from solo.utils.sinkhorn_knopp import SinkhornKnopp

        class SwAV(nn.Module):
            def __init__(self, temperature=0.1, sk_iters=3, sk_epsilon=0.05):
                super().__init__()
                self.temperature, self.sk_iters, self.sk_epsilon = temperature, sk_iters, sk_epsilon
                self.projector = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
                self.prototypes = nn.Linear(8, 10, bias=False)

            def on_train_start(self):
                self.sk = SinkhornKnopp(self.sk_iters, self.sk_epsilon, 1)

            @torch.no_grad()
            def get_assignments(self, preds):
                return [self.sk(p) for p in preds]

            def training_step(self, batch):
                _, (x1, x2) = batch
                p1 = self.prototypes(F.normalize(self.projector(x1)))
                p2 = self.prototypes(F.normalize(self.projector(x2)))
                preds = [p1, p2]
                return swav_loss_func(preds, self.get_assignments(preds), self.temperature)
    ''',
}
# solo-learn 1.0.2 (the PyPI wheel): another SimCLR signature, and no mocov2plus module
SOLO_102_SIMCLR = '''
    import torch
    import torch.nn.functional as F

    def simclr_loss_func(z1, z2, temperature: float = 0.1, extra_pos_mask=None):
        raise AssertionError("not called in these tests")
'''
FUNCTIONS = {"solo.losses.simclr.simclr_loss_func": ("solo.losses", "solo.methods.simclr"),
             "solo.losses.mocov2plus.mocov2plus_loss_func": ("solo.losses", "solo.methods.mocov2plus"),
             "solo.losses.swav.swav_loss_func": ("solo.losses", "solo.methods.swav")}


def _write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture
def solo_tree(tmp_path, monkeypatch):
    """Import the stand-in ``solo`` package (a fresh copy per test); its modules leave sys.modules afterwards."""
    for name in [m for m in sys.modules if m == "solo" or m.startswith("solo.")]:
        monkeypatch.delitem(sys.modules, name)
    augcl.unpatch()
    P._WARNED.clear()

    def build(files=SOLO_FILES, methods=("simclr", "mocov2plus", "swav")):
        _write_tree(tmp_path, files)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        importlib.import_module("solo.losses")
        for m in methods:
            importlib.import_module(f"solo.methods.{m}")
        return sys.modules["solo"]

    yield build
    augcl.unpatch()
    for name in [m for m in sys.modules if m == "solo" or m.startswith("solo.")]:
        del sys.modules[name]


def _obj(path):
    module, name = path.rsplit(".", 1)
    return getattr(sys.modules[module], name)


def test_every_name_is_replaced_and_restored(solo_tree, monkeypatch):
    solo_tree(methods=("simclr", "mocov2plus"))  # solo.methods.swav is imported only after patch()
    originals = {k: _obj(k) for k in FUNCTIONS}
    sk_forward = sys.modules["solo.utils.sinkhorn_knopp"].SinkhornKnopp.__dict__["forward"]
    script = types.ModuleType("user_script")  # a user's script that imported a loss before patch()
    script.simclr_loss_func = originals["solo.losses.simclr.simclr_loss_func"]
    monkeypatch.setitem(sys.modules, "user_script", script)

    report = augcl.patch(**ONLY_SOLO)
    assert sorted(report.patched) == sorted(t.key for t in P.TARGETS if t.peer == "solo"), report
    for key, holders in FUNCTIONS.items():
        new = _obj(key)
        assert new is not originals[key] and new.__wrapped__ is originals[key] and new.__name__ == key.split(".")[-1]
        for mod in holders:
            if mod in sys.modules:
                assert getattr(sys.modules[mod], key.split(".")[-1]) is new, mod
    simclr = report["solo.losses.simclr.simclr_loss_func"]
    assert simclr.modules == ("solo.losses", "solo.losses.simclr", "solo.methods.simclr")
    assert simclr.elsewhere == ("user_script.simclr_loss_func",)
    assert "held elsewhere" in str(report)
    assert script.simclr_loss_func is originals["solo.losses.simclr.simclr_loss_func"]  # not ours to change

    swav_method = importlib.import_module("solo.methods.swav")  # imported while patched: gets the replacement
    assert swav_method.swav_loss_func is _obj("solo.losses.swav.swav_loss_func")
    assert swav_method.SinkhornKnopp.__dict__["forward"] is not sk_forward

    augcl.unpatch()
    for key, holders in FUNCTIONS.items():
        assert _obj(key) is originals[key]
        for mod in holders:
            assert getattr(sys.modules[mod], key.split(".")[-1]) is originals[key], mod
    assert sys.modules["solo.utils.sinkhorn_knopp"].SinkhornKnopp.__dict__["forward"] is sk_forward


def _views(seed, n=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.arange(n), [torch.randn(n, 12, generator=g).to(dtype) for _ in range(2)]


def _method_run(method_name, cls_name, dtype, steps=3):
    torch.manual_seed(0)
    method = getattr(importlib.import_module(f"solo.methods.{method_name}"), cls_name)().to(dtype)
    if hasattr(method, "on_train_start"):
        method.on_train_start()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    out = {}
    for step in range(steps):
        loss = method.training_step(_views(step, dtype=dtype))
        opt.zero_grad()
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out.update({"grad." + n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
        opt.step()
    out.update({"param." + n: p.detach().clone() for n, p in method.named_parameters()})
    return out


@pytest.mark.parametrize("method_name,cls_name,spied", [
    ("simclr", "SimCLR", "simclr_loss_func"),
    ("mocov2plus", "MoCoV2Plus", "mocov2plus_loss_func"),
    ("swav", "SwAV", "swav_loss_func"),
])
def test_solo_methods_patched_equal_unpatched(solo_tree, monkeypatch, method_name, cls_name, spied):
    solo_tree()
    ref64 = _method_run(method_name, cls_name, torch.float64)
    base32 = _method_run(method_name, cls_name, torch.float32)
    augcl.patch(**ONLY_SOLO)
    calls = []
    real = getattr(P._csolo, spied)
    monkeypatch.setattr(P._csolo, spied, lambda *a, **k: calls.append(1) or real(*a, **k))
    sk_calls = []
    real_sk = P._csolo.SinkhornKnopp.forward
    monkeypatch.setattr(P._csolo.SinkhornKnopp, "forward", lambda self, Q: sk_calls.append(1) or real_sk(self, Q))
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PatchFallbackWarning)
        got32 = _method_run(method_name, cls_name, torch.float32)
        got64 = _method_run(method_name, cls_name, torch.float64)
    per_step = 2 if method_name == "mocov2plus" else 1
    assert len(calls) == 2 * 3 * per_step
    assert len(sk_calls) == (2 * 3 * 2 if method_name == "swav" else 0)
    assert_like_peer(got32, base32, ref64)
    assert_same_function(got64, ref64)


def test_solo_simclr_multiview_and_supervised(solo_tree):
    solo_tree()
    g = torch.Generator().manual_seed(9)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64)
    indexes = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])  # 3 views
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])  # supervised: classes as indexes

    def run(idx):
        zz = z.clone().requires_grad_()
        loss = sys.modules["solo.losses"].simclr_loss_func(zz, idx, temperature=0.3)
        loss.backward()
        return {"loss": loss.detach(), "grad": zz.grad}

    expected = [run(indexes), run(labels)]
    augcl.patch(**ONLY_SOLO)
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PatchFallbackWarning)
        for idx, exp in zip((indexes, labels), expected):
            assert_same_function(run(idx), exp)


def test_solo_row_without_positive_falls_back_to_solo(solo_tree):
    """An index that appears once: augcl raises (naming it), solo returns inf / NaN; patched, solo's value."""
    solo_tree()
    z = torch.randn(4, 3)
    idx = torch.tensor([0, 0, 1, 2])
    expected = sys.modules["solo.losses"].simclr_loss_func(z, idx)
    augcl.patch(**ONLY_SOLO)
    with pytest.warns(P.PatchFallbackWarning, match="augcl raised ValueError"):
        got = sys.modules["solo.losses"].simclr_loss_func(z, idx)
    assert torch.equal(got, expected) or (torch.isnan(got) and torch.isnan(expected))


def test_solo_102_layout(solo_tree):
    files = dict(SOLO_FILES)
    files["solo/__init__.py"] = '__version__ = "1.0.2"\n'
    files["solo/losses/simclr.py"] = SOLO_102_SIMCLR
    files["solo/losses/__init__.py"] = ("from solo.losses.simclr import simclr_loss_func\n"
                                        "from solo.losses.swav import swav_loss_func\n")
    del files["solo/losses/mocov2plus.py"], files["solo/methods/mocov2plus.py"], files["solo/methods/simclr.py"]
    solo_tree(files, methods=("swav",))
    for force in (False, True):
        report = augcl.patch(**ONLY_SOLO, force=force)
        simclr = report["solo.losses.simclr.simclr_loss_func"]
        assert simclr.status == "skipped" and "signature differs in solo-learn 1.0.2" in simclr.reason
        assert "simclr_loss_func(z1, z2, temperature, extra_pos_mask)" in simclr.reason
        moco = report["solo.losses.mocov2plus.mocov2plus_loss_func"]
        assert moco.status == "skipped" and "not found" in moco.reason
        assert report["solo.losses.swav.swav_loss_func"].status in ("patched", "already patched")
        assert report["solo.utils.sinkhorn_knopp.SinkhornKnopp"].status in ("patched", "already patched")


def test_solo_unknown_version_needs_force(solo_tree, monkeypatch):
    import importlib.metadata

    files = dict(SOLO_FILES)
    files["solo/__init__.py"] = "\n"  # a source checkout: no __version__ and no distribution metadata
    solo_tree(files)

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    report = augcl.patch(**ONLY_SOLO)
    assert report.patched == [] and all("(unknown version) not checked" in e.reason for e in report.entries)
    assert sorted(augcl.patch(**ONLY_SOLO, force=True).patched) == sorted(e.target for e in report.entries)
