"""``--hallucinate`` and ``--unmix`` in the training driver (augcl/train/methods/extras.py and the methods).

Every supported method x {--hallucinate, --unmix, both} runs one tiny epoch of the synthetic data through
``main``; the unsupported combinations end as one line with exit code 2; the Hallucinator's parameters get
gradients and optimizer steps; a run with --unmix reproduces under the same seed and resumes with its flags.
"""
import csv
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import augcl.functional as AF
from augcl.train import main
from augcl.train.cli import PROG
from augcl.train.methods import BOTH_METHODS, HALLUCINATE_METHODS, UNMIX_METHODS, build_method
from augcl.train.methods.byol import regression_rows
from augcl.train.models import build_backbone
from _train_runs import exit_code as _exit_code, metrics as _metrics

# batch 64: 5 steps per epoch of the 320 synthetic images (MoCo's default queue is then 128 = 2 x 64)
TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "64", "--image-size", "8", "--no-progress",
        "--no-baseline"]
EXTRA = {"swav": ["--small-crops", "1", "--prototypes", "16"]}
CASES = ([(m, ["--hallucinate"]) for m in HALLUCINATE_METHODS] + [(m, ["--unmix"]) for m in UNMIX_METHODS]
         + [(m, ["--hallucinate", "--unmix"]) for m in BOTH_METHODS])


def _losses(out):
    with open(os.path.join(out, "log.csv")) as f:
        return [r["loss"] for r in csv.DictReader(f) if r["epoch"] != "0"]


@pytest.fixture(scope="module")
def unmix_run(tmp_path_factory):
    """One tiny SimCLR --unmix run, shared (read-only) by the tests below."""
    out = str(tmp_path_factory.mktemp("unmix") / "run")
    assert main(TINY + ["--unmix", "--out", out]) == 0
    return out


# ------------------------------------------------------------------------------------------- tiny runs
def test_supported_sets():
    assert set(HALLUCINATE_METHODS) == {"simclr", "moco", "mocov2", "simsiam"}
    assert set(UNMIX_METHODS) == {"simclr", "moco", "mocov2", "byol", "swav"}
    assert set(BOTH_METHODS) == {"simclr", "moco", "mocov2"}


@pytest.mark.parametrize("method, flags", CASES, ids=[f"{m}{''.join(f)}" for m, f in CASES])
def test_method_with_flags_runs_an_epoch(method, flags, tmp_path, unmix_run):
    if method == "simclr" and flags == ["--unmix"]:
        out = unmix_run  # the shared run
    else:
        out = str(tmp_path / "run")
        assert main(TINY + ["--method", method, "--out", out] + flags + EXTRA.get(method, [])) == 0
    m = _metrics(out)
    hall, unmix = "--hallucinate" in flags, "--unmix" in flags
    assert m["method"] == method and m["epochs"] == 1 and torch.isfinite(torch.tensor(m["final_loss"]))
    assert m["hallucinate"] is hall and m["unmix"] is unmix
    cfg = m["config"]
    assert (cfg["hallucinate"], cfg["unmix"]) == (hall, unmix)
    if unmix:
        assert (cfg["unmix_alpha"], cfg["unmix_prob_mixup"], cfg["unmix_per_sample"]) == (1.0, 0.5, False)
        assert cfg["unmix_swav_form"] == ("soft" if method == "swav" else None)
    else:
        assert cfg["unmix_alpha"] is None and cfg["unmix_prob_mixup"] is None
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)["method"]
    assert ("hallucinator.fc1.weight" in state) is hall


def test_unmix_options_are_recorded(tmp_path):
    out = str(tmp_path / "run")
    assert main(TINY + ["--method", "moco", "--unmix", "--unmix-alpha", "0.5", "--unmix-prob-mixup", "0",
                        "--unmix-per-sample", "--out", out]) == 0
    cfg = _metrics(out)["config"]
    assert (cfg["unmix_alpha"], cfg["unmix_prob_mixup"], cfg["unmix_per_sample"]) == (0.5, 0.0, True)


# ------------------------------------------------------------------------------------ reproducible, resume
def test_unmix_same_seed_same_curve(unmix_run, tmp_path):
    """Same seed: the same Un-Mix draws (see the next test), hence the same loss curve. Not asserted bitwise:
    two in-process runs through the default (C++) loss backend differ in the 6th significant digit (float
    noise amplified by AdamW); a different seed moves the loss 100x more."""
    out = str(tmp_path / "again")
    assert main(TINY + ["--unmix", "--out", out]) == 0
    a, b = (torch.tensor([float(v) for v in _losses(o)]) for o in (unmix_run, out))
    torch.testing.assert_close(b, a, rtol=2e-5, atol=0)
    other = str(tmp_path / "seed1")
    assert main(TINY + ["--unmix", "--seed", "1", "--out", other]) == 0
    c = torch.tensor([float(v) for v in _losses(other)])
    assert ((c - a).abs() > 1e-3 * a.abs()).all()


def test_unmix_and_hallucinator_draws_follow_the_generator():
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 3, True)
    method = build_method("simclr", backbone, dim, hallucinate=True,
                          unmix=dict(alpha=1.0, prob_mixup=0.5, per_sample=True))
    x = _views(16)[0]
    draws = []
    for seed in (3, 3, 4):
        method.set_rng(torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 100)  # the global generator must not matter
        draws.append((*method.mix(x), method.hallucinate_lam(16, x.device)))
    assert all(torch.equal(u, v) for u, v in zip(draws[0], draws[1]))
    assert not torch.equal(draws[0][1], draws[2][1])


def test_unmix_resume_keeps_the_flags(unmix_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(unmix_run, out)
    assert main(["--resume", "--out", out, "--epochs", "2", "--no-progress"]) == 0
    m = _metrics(out)
    assert m["epochs"] == 2 and m["unmix"] is True and m["config"]["unmix_alpha"] == 1.0
    assert _losses(out)[0] == _losses(unmix_run)[0]  # the trained epoch is kept as it was
    for flags, needle in ((["--hallucinate"], "--hallucinate"), (["--unmix-alpha", "2"], "--unmix-alpha")):
        code, err = _exit_code(["--resume", "--out", out, "--epochs", "3"] + flags, capsys)
        assert code == 2 and needle in err and "checkpoint" in err, err


# --------------------------------------------------------------------------------------------- bad args
@pytest.mark.parametrize("argv, needle", [
    (["--method", "byol", "--hallucinate"], "simclr, moco, mocov2 and simsiam"),
    (["--method", "swav", "--hallucinate"], "simclr, moco, mocov2 and simsiam"),
    (["--method", "swav", "--hallucinate", "--unmix"], "--method swav"),
    (["--method", "simsiam", "--unmix"], "simclr, moco, mocov2, byol and swav"),
    (["--method", "simsiam", "--hallucinate", "--unmix"], "--unmix"),
    (["--unmix-alpha", "2"], "add --unmix"),
    (["--unmix-per-sample"], "add --unmix"),
    (["--unmix", "--unmix-prob-mixup", "1.5"], "--unmix-prob-mixup"),
    (["--unmix", "--unmix-alpha", "0"], "--unmix-alpha"),
    (["--method", "swav", "--unmix-swav-form", "authors"], "add --unmix"),
    (["--unmix", "--unmix-swav-form", "authors"], "--method is simclr"),
    (["--method", "byol", "--unmix", "--unmix-swav-form", "soft"], "--method is byol"),
    (["--method", "swav", "--unmix", "--unmix-swav-form", "author"], "--unmix-swav-form"),
])
def test_bad_combinations_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    code, err = _exit_code(TINY + argv + ["--out", str(tmp_path / "x")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    assert needle in lines[0] and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "x" / "last.pt")


def test_build_method_rejects_unsupported():
    backbone, dim = build_backbone("small", 3, True)
    with pytest.raises(ValueError, match="--hallucinate"):
        build_method("byol", backbone, dim, hallucinate=True)
    with pytest.raises(ValueError, match="--unmix"):
        build_method("simsiam", backbone, dim, unmix=dict(alpha=1.0, prob_mixup=0.5, per_sample=False))


# -------------------------------------------------------------------------------- generator, formulations
def _views(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randn(b, 3, 8, 8, generator=g)


@pytest.mark.parametrize("name, unmix", [("simclr", False), ("moco", False), ("simsiam", False), ("mocov2", True)])
def test_hallucinator_trained_by_the_main_loss(name, unmix):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 3, True)
    kw = dict(queue_size=32) if name.startswith("moco") else {}
    method = build_method(name, backbone, dim, hallucinate=True, **kw,
                          unmix=dict(alpha=1.0, prob_mixup=0.5, per_sample=False) if unmix else None)
    method.set_rng(torch.Generator().manual_seed(1))
    params = [p for p in method.parameters() if p.requires_grad]  # what the trainer hands the optimizer
    gen = list(method.hallucinator.parameters())
    assert len(gen) == 6 and all(any(p is q for q in params) for p in gen)
    before = [p.detach().clone() for p in gen]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = method(*_views())
    loss.backward()
    for p in gen:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, gen))


def test_moco_mixture_term_is_unmix_info_nce_without_the_clean_term():
    """With both flags MoCo adds lam CE(q_m, k) + (1 - lam) CE(q_m, k[partner]) to the Hallucinator's loss:
    the part of unmix_info_nce beyond CE(q, k)."""
    g = torch.Generator().manual_seed(0)
    b, d = 6, 16
    q, k, qm = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3))
    k = F.normalize(k, dim=1)
    queue = F.normalize(torch.randn(20, d, generator=g, dtype=torch.float64), dim=1)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    partner = torch.arange(b - 1, -1, -1)
    full = AF.unmix_info_nce(q, k, qm, lam, partner, queue, 0.2, backend="reference")
    clean = AF.info_nce(q, k, queue, 0.2, backend="reference")
    rows = AF.info_nce(torch.cat([qm, qm]), torch.cat([k, k[partner]]), queue, 0.2, reduction="none",
                       backend="reference")
    torch.testing.assert_close((lam * rows[:b] + (1 - lam) * rows[b:]).mean(), full - clean)


def test_byol_mixture_target_is_the_lam_mix_of_targets():
    """The lam-weighted BYOL regression equals the regression to the lam-mix of the normalised targets."""
    g = torch.Generator().manual_seed(0)
    p, ta, tb = (torch.randn(5, 12, generator=g, dtype=torch.float64) for _ in range(3))
    lam = torch.rand(5, generator=g, dtype=torch.float64)
    weighted = lam * regression_rows(p, ta) + (1 - lam) * regression_rows(p, tb)
    mixed = lam[:, None] * F.normalize(ta, dim=1) + (1 - lam[:, None]) * F.normalize(tb, dim=1)
    torch.testing.assert_close(weighted, 2 - 2 * (F.normalize(p, dim=1) * mixed).sum(1))
