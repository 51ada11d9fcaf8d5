"""``augcl.patch()`` / ``augcl.unpatch()`` mechanics on the installed peers: what is replaced and restored (by
identity), the report, the context-manager form, peers that are missing, broken or of an unchecked version, and
the fallbacks to the peer's own code (options augcl does not implement, subclasses, errors in a single process).
Numerical parity inside the peers' training objects: tests/test_patch_peers.py; solo-learn: tests/test_patch_solo.py;
a Lightning DDP run: tests/test_patch_lightning.py."""
import importlib
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import augcl

P = importlib.import_module("augcl.patch")
lightly_loss = pytest.importorskip("lightly.loss", reason="lightly (a test dependency) is not installed")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")
timm_mixup = pytest.importorskip("timm.data.mixup", reason="timm (a test dependency) is not installed")
tv_augment = pytest.importorskip("torchvision.transforms.v2._augment", reason="torchvision is not installed")

ONLY = dict(lightly=False, solo=False, timm=False, torchvision=False, pml=False)
CLASS_TARGETS = [t for t in P.TARGETS if t.method is not None and t.peer != "solo"]


def only(**peers):
    return dict(ONLY, **peers)


@pytest.fixture(autouse=True)
def _clean():
    augcl.unpatch()
    P._WARNED.clear()
    yield
    augcl.unpatch()


def _class_state():
    """(class, its own hot method or None) of every installed peer's patchable class."""
    out = {}
    for t in CLASS_TARGETS:
        cls = getattr(importlib.import_module(t.module), t.name)
        out[t.key] = (cls, cls.__dict__.get(t.method))
    return out


def _names_of(obj, package):
    return sorted(f"{m}.{n}" for m, mod in list(sys.modules.items()) if m == package or m.startswith(package + ".")
                  for n, v in list(getattr(mod, "__dict__", {}).items()) if v is obj)


# ---------------------------------------------------------------------------------------- what is replaced
def test_classes_are_patched_in_place_and_restored_by_identity():
    before = _class_state()
    names = {k: _names_of(cls, t.peer if t.peer != "pml" else "pytorch_metric_learning")
             for (k, (cls, _)), t in zip(before.items(), CLASS_TARGETS)}
    report = augcl.patch(**only(lightly=True, timm=True, torchvision=True, pml=True))
    assert sorted(report.patched) == sorted(before)
    for t in CLASS_TARGETS:
        cls, own = before[t.key]
        now = cls.__dict__[t.method]
        assert getattr(now, "__augcl_patched__", False) and now is not own
        # the peer's own method (or the inherited one) is what it falls back to
        assert now.__wrapped__ is (own if own is not None else getattr(cls.__mro__[1], t.method))
        # the class object itself is unchanged, so every name of it still is it
        assert getattr(importlib.import_module(t.module), t.name) is cls
    assert lightly_loss.NTXentLoss is lightly_loss.ntx_ent_loss.NTXentLoss
    restored = augcl.unpatch()
    assert sorted(e.target for e in restored.entries if e.status == "restored") == sorted(before)
    after = _class_state()
    for key, (cls, own) in before.items():
        assert after[key][0] is cls and after[key][1] is own  # own method back, or none again (inherited)
    for (k, (cls, _)), t in zip(before.items(), CLASS_TARGETS):
        assert _names_of(cls, t.peer if t.peer != "pml" else "pytorch_metric_learning") == names[k]


def test_report_prints_a_table_and_indexes_by_target():
    report = augcl.patch(**only(lightly=True))
    text = str(report)
    assert text.startswith("augcl.patch(): 2 patched")
    assert "lightly.loss.ntx_ent_loss.NTXentLoss" in text and "lightly 1.6.0" in text
    assert repr(report) == text
    entry = report["lightly.loss.swav_loss.SwaVLoss"]
    assert entry.status == "patched" and entry.checked == ("1.6.0",) and entry.version == "1.6.0"
    with pytest.raises(KeyError):
        report["nope"]
    again = augcl.patch(**only(lightly=True))
    assert {e.status for e in again.entries} == {"already patched"} and again.patched == []


def test_verbose_prints(capsys):
    augcl.patch(**only(pml=True), verbose=True)
    assert "augcl.patch(): 2 patched" in capsys.readouterr().out
    augcl.unpatch(verbose=True)
    assert "restored" in capsys.readouterr().out


def test_context_manager_undoes_only_what_it_patched():
    cls = lightly_loss.NTXentLoss
    own = cls.__dict__["forward"]
    with augcl.patch(**only(lightly=True)) as report:
        assert report.patched and cls.__dict__["forward"] is not own
    assert cls.__dict__["forward"] is own
    outer = augcl.patch(**only(lightly=True))
    with augcl.patch(**only(lightly=True, pml=True)) as inner:
        assert inner["lightly.loss.ntx_ent_loss.NTXentLoss"].status == "already patched"
        assert inner["pytorch_metric_learning.losses.ntxent_loss.NTXentLoss"].status == "patched"
    assert cls.__dict__["forward"] is not own  # the outer patch stays
    assert "forward" not in pml_losses.NTXentLoss.__dict__  # the inner one is undone (pml inherits forward)
    assert outer.patched


def test_bad_flags():
    with pytest.raises(TypeError, match="lightly must be True or False"):
        augcl.patch(lightly="yes")
    with pytest.raises(TypeError, match="force"):
        augcl.patch(force=1)


# -------------------------------------------------------------------------------- missing and unknown peers
def _hide(monkeypatch, package):
    """Make ``package`` look uninstalled: every loaded module of it becomes None in sys.modules (an import then
    raises ModuleNotFoundError), restored by monkeypatch."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize("peer,package", [("timm", "timm"), ("pml", "pytorch_metric_learning"),
                                          ("lightly", "lightly"), ("torchvision", "torchvision")])
def test_a_missing_peer_is_reported_skipped(monkeypatch, peer, package):
    state = _class_state()
    _hide(monkeypatch, package)
    report = augcl.patch()  # every peer asked for: the hidden one is skipped, the others patched, nothing raises
    for t in P.TARGETS:
        if t.peer == peer:
            assert report[t.key].status == "skipped" and report[t.key].reason.endswith("is not installed")
        elif t.peer != "solo":
            assert report[t.key].status == "patched"
    for t in CLASS_TARGETS:
        cls, own = state[t.key]
        if t.peer == peer:
            assert cls.__dict__.get(t.method) is own  # untouched


def test_a_peer_that_fails_to_import_is_reported_skipped(monkeypatch, tmp_path):
    broken = tmp_path / "timm"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('half-installed')\n")
    _hide(monkeypatch, "timm")
    monkeypatch.delitem(sys.modules, "timm")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = augcl.patch(**only(timm=True))
    assert report["timm.data.mixup.Mixup"].status == "skipped"
    assert "cannot be imported: RuntimeError: half-installed" in report["timm.data.mixup.Mixup"].reason


def test_unchecked_version_needs_force(monkeypatch):
    import lightly

    own = lightly_loss.NTXentLoss.__dict__["forward"]
    monkeypatch.setattr(lightly, "__version__", "1.5.9")
    report = augcl.patch(**only(lightly=True))
    entry = report["lightly.loss.ntx_ent_loss.NTXentLoss"]
    assert entry.status == "skipped" and "1.5.9 not checked (checked: 1.6.0)" in entry.reason
    assert lightly_loss.NTXentLoss.__dict__["forward"] is own
    forced = augcl.patch(**only(lightly=True), force=True)
    entry = forced["lightly.loss.ntx_ent_loss.NTXentLoss"]
    assert entry.status == "patched" and entry.reason.startswith("forced: lightly 1.5.9")


def test_a_changed_signature_is_skipped_even_with_force(monkeypatch):
    def forward(self, out0, out1, extra=None):  # a future lightly with another forward
        raise AssertionError("not called")

    monkeypatch.setattr(lightly_loss.NTXentLoss, "forward", forward)
    report = augcl.patch(**only(lightly=True), force=True)
    entry = report["lightly.loss.ntx_ent_loss.NTXentLoss"]
    assert entry.status == "skipped" and "signature differs" in entry.reason
    assert "forward(out0, out1, extra)" in entry.reason
    assert lightly_loss.NTXentLoss.__dict__["forward"] is forward


@pytest.mark.parametrize("version,release", [("0.29.1+cu130", "0.29.1"), ("1.0.6.dev0", "1.0.6"), ("1.6", "1.6.0"),
                                             ("2.9.0", "2.9.0"), ("", None), (None, None), ("dev", None)])
def test_release(version, release):
    assert P._release(version) == release


def test_peer_status_lines():
    lines = P.peer_status()
    assert any(line.startswith("lightly 1.6.0:") for line in lines)
    assert any("NTXentLoss" in line and "patchable" in line for line in lines)
    assert any(line.startswith("solo-learn") for line in lines)
    augcl.patch(**only(timm=True))
    assert any("Mixup" in line and "patched now" in line for line in P.peer_status())


def test_info_lists_the_peers(monkeypatch):
    import augcl.info

    monkeypatch.setattr(augcl.info, "REGISTRY", {})  # skip the backend probes: only the peers section here
    text = augcl.info.report()
    assert "peers (augcl.patch()):" in text and "pytorch-metric-learning 2.9.0:" in text


# ------------------------------------------------------------------------------------------------ fallbacks
def _warned(record, fragment):
    return [w for w in record if issubclass(w.category, P.PatchFallbackWarning) and fragment in str(w.message)]


@pytest.mark.parametrize("kwargs,fragment", [
    (lambda: dict(distance=importlib.import_module("pytorch_metric_learning.distances").LpDistance()), "distance="),
    (lambda: dict(distance=importlib.import_module("pytorch_metric_learning.distances").CosineSimilarity(power=2)),
     "distance="),
    (lambda: dict(reducer=importlib.import_module("pytorch_metric_learning.reducers").SumReducer()), "reducer="),
    (lambda: dict(embedding_regularizer=importlib.import_module("pytorch_metric_learning.regularizers")
                  .LpRegularizer()), "embedding_regularizer"),
    (lambda: dict(collect_stats=True), "collect_stats"),
    (lambda: dict(reducer=importlib.import_module("pytorch_metric_learning.reducers").MeanReducer()),
     "reducer=MeanReducer (augcl: AvgNonZeroReducer())"),
    (lambda: dict(reducer=importlib.import_module("pytorch_metric_learning.reducers").ThresholdReducer(low=0.1)),
     "reducer=ThresholdReducer"),
], ids=["LpDistance", "cosine-power2", "SumReducer", "regularizer", "collect_stats", "supcon-MeanReducer",
        "supcon-ThresholdReducer"])
def test_pml_options_augcl_does_not_implement_keep_pml(request, kwargs, fragment):
    loss_class = pml_losses.SupConLoss if "supcon" in request.node.callspec.id else pml_losses.NTXentLoss
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 6, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    expected = loss_class(**kwargs())(emb, labels)
    augcl.patch(**only(pml=True))
    loss_fn = loss_class(**kwargs())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = loss_fn(emb, labels)
        got2 = loss_fn(emb, labels)
    assert torch.equal(got, expected) and torch.equal(got2, expected)  # pml's own code: bitwise
    assert len(_warned(record, fragment)) == 1  # once


def test_pml_miner_indices_keep_pml():
    miners = importlib.import_module("pytorch_metric_learning.miners")
    g = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(12, 5, generator=g), torch.arange(6).repeat(2)
    miner = miners.MultiSimilarityMiner()
    expected = pml_losses.NTXentLoss()(emb, labels, miner(emb, labels))
    augcl.patch(**only(pml=True))
    with pytest.warns(P.PatchFallbackWarning, match="indices_tuple"):
        got = pml_losses.NTXentLoss()(emb, labels, miner(emb, labels))
    assert torch.equal(got, expected)


def test_lightly_negative_temperature_keeps_lightly():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    expected = lightly_loss.NTXentLoss(temperature=-0.5)(a, b)  # lightly accepts it, augcl does not
    augcl.patch(**only(lightly=True))
    with pytest.warns(P.PatchFallbackWarning, match="temperature"):
        got = lightly_loss.NTXentLoss(temperature=-0.5)(a, b)
    assert torch.equal(got, expected)


def test_an_error_of_augcl_falls_back_in_a_single_process():
    """A NaN input: augcl raises (naming out0), lightly returns NaN; patched, training sees lightly's NaN."""
    a = torch.randn(6, 4)
    a[2, 1] = float("nan")
    b = torch.randn(6, 4)
    augcl.patch(**only(lightly=True))
    with pytest.warns(P.PatchFallbackWarning, match="augcl raised ValueError: out0"):
        got = lightly_loss.NTXentLoss()(a, b)
    assert torch.isnan(got)


def test_an_error_of_augcl_is_raised_under_several_ranks(monkeypatch):
    a = torch.randn(6, 4)
    a[0, 0] = float("inf")
    augcl.patch(**only(lightly=True))
    monkeypatch.setattr(P, "world_info", lambda: (0, 2))  # as seen by the fallback rule only
    with pytest.raises(ValueError, match="out0"):
        lightly_loss.NTXentLoss()(a, torch.randn(6, 4))


def test_timm_unknown_mode_keeps_timm():
    x = torch.rand(4, 3, 8, 8)
    y = torch.arange(4)
    np.random.seed(0)
    expected = timm_mixup.Mixup(mode="per-batch", num_classes=4)(x.clone(), y)
    augcl.patch(**only(timm=True))
    np.random.seed(0)
    with pytest.warns(P.PatchFallbackWarning, match="mode='per-batch'"):
        got = timm_mixup.Mixup(mode="per-batch", num_classes=4)(x.clone(), y)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_subclasses_overriding_a_helper_keep_the_peer_and_others_reach_augcl(monkeypatch):
    class HalfSubloss(lightly_loss.SwaVLoss):
        def subloss(self, z, q):
            return 0.5 * super().subloss(z, q)

    g = torch.Generator().manual_seed(3)
    high = [torch.randn(8, 5, generator=g) for _ in range(2)]
    expected = HalfSubloss()(high, [])
    directclr_expected = lightly_loss.DirectCLRLoss(loss_dim=3)(high[0], high[1])
    augcl.patch(**only(lightly=True))
    with pytest.warns(P.PatchFallbackWarning, match="HalfSubloss.*overrides subloss"):
        got = HalfSubloss()(high, [])
    assert torch.equal(got, expected)
    calls = []
    real = P.nt_xent_named
    monkeypatch.setattr(P, "nt_xent_named", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PatchFallbackWarning)
        got = lightly_loss.DirectCLRLoss(loss_dim=3)(high[0], high[1])  # overrides __init__ and forward only
    assert calls == [1]
    torch.testing.assert_close(got, directclr_expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ objects over time
def test_objects_built_before_patch_are_routed_and_after_unpatch_run_the_peer(monkeypatch):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    loss = lightly_loss.NTXentLoss(temperature=0.2)
    expected = loss(a, b)
    calls = []
    real = P.nt_xent_named
    monkeypatch.setattr(P, "nt_xent_named", lambda *x, **k: calls.append(1) or real(*x, **k))
    augcl.patch(**only(lightly=True))
    loss.temperature = 0.2  # attributes are read at each call (a temperature schedule keeps working)
    torch.testing.assert_close(loss(a, b), expected, rtol=2e-6, atol=0)
    bound = loss.forward  # a bound method kept across unpatch() also goes back to lightly
    augcl.unpatch()
    assert torch.equal(loss(a, b), expected) and torch.equal(bound(a, b), expected)
    assert calls == [1]


def test_cached_drop_ins_stay_out_of_state_dict_and_pickles(tmp_path):
    augcl.patch(**only(torchvision=True, pml=True))
    mix = tv_augment.MixUp(num_classes=3)
    mix(torch.rand(4, 3, 5, 5), torch.arange(4) % 3)
    loss = pml_losses.NTXentLoss(temperature=0.3)
    loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    assert "_augcl_drop_in" in mix.__dict__ and "_augcl_drop_in" in loss.__dict__
    assert list(mix.children()) == [] and mix.state_dict() == {} and list(loss.state_dict()) == \
        list(pml_losses.NTXentLoss(temperature=0.3).state_dict())
    path = tmp_path / "loss.pt"
    torch.save(loss, path)
    augcl.unpatch()
    back = torch.load(path, weights_only=False)
    assert type(back) is pml_losses.NTXentLoss and back.temperature == 0.3
    assert type(pickle.loads(pickle.dumps(mix))) is tv_augment.MixUp


def test_holders_finds_the_peer_names_and_the_outside_ones(monkeypatch):
    """The walk behind the replacement of functions (tests/test_patch_solo.py patches solo-learn's): the peer's
    modules that hold the object, and the modules outside the peer (a user's script) that do."""
    fake = types.ModuleType("user_train_script")
    fake.Mixup = timm_mixup.Mixup
    monkeypatch.setitem(sys.modules, "user_train_script", fake)
    inside, outside = P._holders(timm_mixup.Mixup, "timm")
    assert "user_train_script.Mixup" in outside
    assert {m.__name__ for m, _ in inside} >= {"timm.data", "timm.data.mixup"}


def test_a_call_the_peer_rejects_gets_the_peers_error():
    augcl.patch(**only(lightly=True))
    with pytest.warns(P.PatchFallbackWarning, match="augcl raised TypeError"):
        with pytest.raises(TypeError, match="out1"):
            lightly_loss.NTXentLoss()(torch.randn(4, 3))  # lightly's own "missing ... 'out1'" error
