"""SimSiam, BYOL, SwAV and AdaInf in the training driver (augcl/train/): tiny CPU runs and unit checks.

Each method runs one epoch of the synthetic data at 8 px through ``main``; the unit tests check what a run
cannot show (BYOL's momentum schedule, SwAV's queue and frozen prototypes, the AdaInf index map's weights).
"""
import math
import os

import numpy as np

import pytest
import torch

from augcl.train import main
from augcl.train.augment import augment, view_plan
from augcl.train.checkpoint import _state_mismatch
from augcl.train.cli import PROG
from augcl.train.data import EpochSampler, InflatedDataset, load_inflation, synthetic
from augcl.train.errors import ConfigError
from augcl.train.methods import build_method
from augcl.train.models import build_backbone
from _train_runs import exit_code as _exit_code, metrics as _metrics

TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--image-size", "8", "--no-progress",
        "--no-baseline"]


# ------------------------------------------------------------------------------------------- tiny runs
@pytest.mark.parametrize("method, extra", [
    ("simsiam", []),
    ("byol", []),
    ("swav", ["--small-crops", "2", "--queue-size", "64", "--swav-queue-start", "0"]),
])
def test_method_runs_an_epoch(method, extra, tmp_path):
    out = str(tmp_path / method)
    assert main(TINY + ["--method", method, "--out", out] + extra) == 0
    m = _metrics(out)
    assert m["method"] == method and m["epochs"] == 1 and 0.0 <= m["knn_top1"] <= 1.0
    assert np.isfinite(m["final_loss"])
    if method == "simsiam":
        assert -1.0 <= m["final_loss"] <= 1.0  # negative cosine
    if method == "byol":
        assert 0.0 <= m["final_loss"] <= 8.0  # two terms of 2 - 2 cos
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    if method == "byol":
        assert {"target_backbone.features.0.0.weight", "tau"} <= set(ckpt["method"])
    if method == "swav":
        assert m["config"]["prototypes"] == 32 and m["config"]["small_crops"] == 2
        assert ckpt["method"]["queue"].shape == (2, 64, 128)
        assert int(ckpt["method"]["queue_filled"]) == 64  # 10 steps x 32 >= 64: full, hence in use


# ---------------------------------------------------------------------------------------- method units
def _small(name, **kw):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 3, True)
    return build_method(name, backbone, dim, **kw)


def test_byol_momentum_schedule_and_target_update():
    m = _small("byol", byol_momentum=0.9)
    m.on_step(0, 100)
    assert float(m.tau) == pytest.approx(0.9)
    m.on_step(50, 100)
    assert float(m.tau) == pytest.approx(0.95)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target_backbone.parameters()]
    m.on_step(100, 100)  # moves the target by (1 - tau_prev) = 0.05 of the gap, then tau -> 1
    assert float(m.tau) == pytest.approx(1.0)
    for b, t, o in zip(before, m.target_backbone.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(t, 0.95 * b + 0.05 * o)
    x = torch.randn(4, 3, 8, 8)
    loss = m(x, x.flip(3))
    loss.backward()
    assert all(p.grad is None for p in m.target_backbone.parameters())  # stop-gradient target


def test_byol_momentum_continues_on_resume_with_another_total():
    """Like the learning rate, tau continues when a run resumes with more (or fewer) steps: from the resume step a
    new cosine from the current tau to 1 at the new end, never back towards tau_base. Same total: the schedule
    of an uninterrupted run (bitwise). A checkpoint without the schedule's pieces still loads."""
    m = _small("byol", byol_momentum=0.9)
    for step in range(51):
        m.on_step(step, 100)
    tau50 = float(m.tau)
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in m.state_dict().items()}

    same = _small("byol", byol_momentum=0.9)
    same.load_state_dict(state)
    m.on_step(51, 100)
    same.on_step(51, 100)
    assert float(same.tau) == float(m.tau)

    longer = _small("byol", byol_momentum=0.9)
    longer.load_state_dict(state)
    taus = []
    for step in range(51, 201):
        longer.on_step(step, 200)
        taus.append(float(longer.tau))
    # step 51 is where the old schedule was (the new piece starts there), then it rises to 1: no jump back
    assert taus[0] == pytest.approx(1 - 0.1 * (math.cos(math.pi * 51 / 100) + 1) / 2) and taus[0] >= tau50
    assert all(b >= a for a, b in zip(taus, taus[1:])) and taus[-1] == pytest.approx(1.0)
    restarted = 1 - 0.1 * (math.cos(math.pi * 51 / 200) + 1) / 2  # what restarting over the new total gave
    assert taus[0] - restarted > 0.02

    old = {k: v for k, v in state.items() if not k.endswith("_extra_state")}  # augcl.train before the pieces
    legacy = _small("byol", byol_momentum=0.9)
    assert _state_mismatch(legacy, old) is None  # what --resume checks before loading
    legacy.load_state_dict(old)
    legacy.on_step(51, 100)
    assert float(legacy.tau) == float(m.tau)

    # the trainer's hook: --epochs alone continues (as above); --lr again restarts tau with the learning rate
    hooked = _small("byol", byol_momentum=0.9)
    hooked.load_state_dict(state)
    hooked.on_resume(51, 200, restart=False)
    hooked.on_step(51, 200)
    assert float(hooked.tau) == taus[0]
    restarted_run = _small("byol", byol_momentum=0.9)
    restarted_run.load_state_dict(state)
    restarted_run.on_resume(51, 200, restart=True)
    restarted_run.on_step(51, 200)
    assert float(restarted_run.tau) == pytest.approx(0.9)
    restarted_run.on_step(200, 200)
    assert float(restarted_run.tau) == pytest.approx(1.0)


def test_simsiam_stop_gradient():
    m = _small("simsiam")
    x = torch.randn(4, 3, 8, 8)
    loss = m(x, x.flip(3))
    assert -1.0 <= loss.item() <= 1.0
    loss.backward()
    assert all(p.grad is not None for p in m.predictor.parameters())


def test_swav_multicrop_queue_and_frozen_prototypes():
    m = _small("swav", n_prototypes=16, queue_size=8, queue_start_step=1, freeze_prototypes_steps=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x1, x2, s1, s2 = (torch.randn(4, 3, 8, 8) for _ in range(4))
    w0 = m.prototypes.heads[0].weight.detach().clone()
    for step in range(4):
        m.on_step(step, 4)
        norms = m.prototypes.heads[0].weight.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))  # re-normalised before every step
        if step == 1:
            # frozen at step 0: only the normalisation moved the prototypes
            torch.testing.assert_close(m.prototypes.heads[0].weight, w0 / w0.norm(dim=1, keepdim=True))
            assert int(m.queue_filled) == 0  # filling starts at step 1
        if step == 3:
            assert m.queue_active  # 2 steps x 4 rows filled the 8 rows
        loss = m(x1, x2, s1, s2)
        opt.zero_grad()
        loss.backward()
        m.after_backward()
        assert (m.prototypes.heads[0].weight.grad is None) == (step == 0)
        opt.step()
    assert torch.isfinite(loss)
    # the queue holds the newest large-crop embeddings first
    with torch.no_grad():
        z = torch.nn.functional.normalize(m.projector(m.backbone(torch.cat([x1, x2]))), dim=1)
    assert m.queue[0, :4].shape == z[:4].shape


def test_view_plans():
    simclr = view_plan("simclr", image_size=32, channels=3)
    assert [v.size for v in simclr] == [32, 32] and simclr[0].cfg == simclr[1].cfg
    byol = view_plan("byol", image_size=64, channels=3)
    assert byol[0].cfg.blur_p == 1.0 and byol[1].cfg.blur_p == 0.1 and byol[1].cfg.solarize_p == 0.2
    swav = view_plan("swav", image_size=32, channels=3, small_crops=3)
    assert [v.size for v in swav] == [32, 32, 14, 14, 14]
    assert swav[0].cfg.crop_scale == (0.14, 1.0) and swav[2].cfg.crop_scale == (0.05, 0.14)
    weak = view_plan("simclr", image_size=32, channels=3, aug="weak")
    assert weak[0].cfg.crop_scale == (0.2, 1.0) and weak[0].cfg.jitter_p == 0.4
    weak_byol = view_plan("byol", image_size=32, channels=3, aug="weak")
    assert weak_byol[0].cfg.saturation == 0.2 and weak_byol[0].cfg.jitter_p == 0.4  # BYOL keeps strengths
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    outs = [augment(x, v.cfg, v.size, torch.zeros(3), torch.ones(3), g) for v in byol]
    assert all(o.shape == (3, 3, 64, 64) and torch.isfinite(o).all() for o in outs)


# ---------------------------------------------------------------------------------------------- AdaInf
def _npz(path, arr, key="images"):
    np.savez(path, **{key: arr})
    return str(path)


def test_epoch_sampler_weights_and_ranks():
    """Real samples are drawn real_weight times per epoch, generated ones once; ranks split each batch."""
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    s = EpochSampler(10, 8, g(), num_generated=6, real_weight=3)
    idx = torch.tensor([i for batch in s for i in batch])
    assert len(s) == (10 * 3 + 6) // 8 == 4 and idx.numel() == 32
    full = EpochSampler(10, 36, g(), num_generated=6, real_weight=3)  # one batch = the whole index map
    counts = torch.bincount(torch.tensor(next(iter(full))), minlength=16)
    assert counts[:10].tolist() == [3] * 10 and counts[10:].tolist() == [1] * 6
    ranks = [list(EpochSampler(10, 8, g(), num_generated=6, real_weight=3, rank=r, world=2)) for r in range(2)]
    for k, batch in enumerate(EpochSampler(10, 8, g(), num_generated=6, real_weight=3)):
        assert ranks[0][k] + ranks[1][k] == batch  # the ranks' halves make the one-process batch
    assert [len(b) for b in ranks[0]] == [4] * 4


def test_inflated_dataset_and_npz_layouts(tmp_path):
    bundle = synthetic()
    real = bundle.train
    hwc = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    gen = load_inflation(_npz(tmp_path / "hwc.npz", hwc), real, 3)
    assert gen.shape == (5, 3, 16, 16) and torch.equal(gen[2], torch.from_numpy(hwc[2]).permute(2, 0, 1))
    chw = load_inflation(_npz(tmp_path / "chw.npz", np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), "x"), real, 3)
    assert torch.equal(chw, gen)
    ds = InflatedDataset(real, gen)
    assert len(ds) == 325
    x, y = ds[[0, 321, 5, 324]]
    assert y.tolist() == [real[0][1].item(), -1, real[5][1].item(), -1]
    assert torch.equal(x[1], gen[1]) and torch.equal(x[0], real[0][0]) and torch.equal(x[3], gen[4])
    assert ds[322][1] == -1
    for bad, needle in [(hwc.astype(np.float32), "uint8"), (hwc[:, :8, :8], "(C, H, W)"),
                        (hwc[..., 0], "(C, H, W)"), (hwc[:0], "no images"), (hwc[:, :, :, :2], "[N, H, W]")]:
        with pytest.raises(ConfigError, match="--inflate") as info:
            load_inflation(_npz(tmp_path / "bad.npz", bad), real, 3)
        assert needle in str(info.value)
    np.savez(tmp_path / "two.npz", a=hwc, b=hwc)
    with pytest.raises(ConfigError, match="one array"):
        load_inflation(str(tmp_path / "two.npz"), real, 3)


def test_inflate_run(tmp_path):
    """--inflate: the epoch is the real data r times + the generated data; probes see real data only."""
    gen = _npz(tmp_path / "gen.npz", np.random.default_rng(1).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8))
    out = str(tmp_path / "run")
    assert main(TINY + ["--inflate", gen, "--inflate-weight", "2", "--batch-size", "64", "--out", out]) == 0
    m = _metrics(out)
    assert m["num_generated"] == 40 and m["num_train"] == 320 and m["config"]["aug"] == "weak"
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["step"] == (320 * 2 + 40) // 64  # 10 steps


@pytest.mark.parametrize("argv, needle", [
    (["--method", "simsiam", "--temperature", "0.1"], "--temperature"),
    (["--method", "byol", "--queue-size", "64"], "--queue-size"),
    (["--method", "simclr", "--prototypes", "10"], "--prototypes"),
    (["--inflate", "/nonexistent/gen.npz"], "/nonexistent/gen.npz"),
    (["--inflate-weight", "3"], "--inflate"),
    (["--inflate-weight", "0"], "--inflate-weight"),
    (["--aug", "strong"], "--aug"),
    (["--method", "swav", "--small-crops", "-1"], "--small-crops"),
    (["--inflate", "{tmp}/wrong.npz"], "(C, H, W)"),
])
def test_bad_args_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    np.savez(tmp_path / "wrong.npz", images=np.zeros((4, 8, 8, 3), dtype=np.uint8))  # real: 16 x 16
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = _exit_code(TINY + argv + ["--out", str(tmp_path / "x")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    assert needle in lines[0], err
