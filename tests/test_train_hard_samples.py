"""``--hard-samples`` / ``--hard-pairs`` / ``--synthetic`` and ``--data-fraction`` in the training driver.

Every flag runs one small epoch of digits (a 0.2 fraction, batch 64: 4 steps) through ``main``: log.csv gets
gen_loss, disc_loss, pair_cos, pair_target and sigma (finite where the run measures them), pairs.png is drawn;
the main optimizer holds no generator / discriminator parameter; a run resumed after one epoch equals an
uninterrupted one (G, D, their Adam states and sigma are in last.pt); --data-fraction keeps round(F n_c)
images of each class, from --seed; bad combinations end as one line with exit code 2; two gloo processes keep
identical G and D while generating their own samples, and the CLI runs under torchrun.
"""
import math
import os
import subprocess
import sys
import traceback
from datetime import timedelta

import pytest
import torch

from augcl.train import main
from augcl.train.cli import PROG
from augcl.train.data import digits, stratified_fraction
from _train_runs import exit_code as _exit_code, log_rows as _log, metrics as _metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--data", "digits", "--data-fraction", "0.2", "--epochs", "1", "--batch-size", "64", "--no-progress",
        "--no-baseline"]
TINY = BASE + ["--synthetic-per-batch", "8"]
COLUMNS = ["gen_loss", "disc_loss", "pair_cos", "pair_target", "sigma"]


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """One SimCLR --hard-samples --hard-pairs run of 1 epoch, shared (read-only) by the tests below."""
    out = str(tmp_path_factory.mktemp("hard") / "run")
    assert main(TINY + ["--hard-samples", "--hard-pairs", "--gen-warmup-epochs", "0", "--out", out]) == 0
    return out


@pytest.mark.parametrize("method, flags", [
    ("simclr", ["--hard-samples", "--gen-warmup-epochs", "0"]),
    ("simclr", ["--hard-pairs", "--gen-warmup-epochs", "0", "--pair-sim-start", "0.8", "--pair-gain", "0.5"]),
    ("simclr", ["--hard-samples", "--synthetic", "frozen", "--gen-warmup-epochs", "0.5"]),
    ("moco", ["--hard-samples", "--hard-pairs", "--gen-warmup-epochs", "0", "--queue-size", "128"]),
    ("mocov2", ["--hard-pairs", "--synthetic", "frozen", "--gen-warmup-epochs", "0.25", "--queue-size", "128"]),
])
def test_flags_run_an_epoch(method, flags, tmp_path):
    out = str(tmp_path / "run")
    assert main(TINY + ["--method", method, "--out", out] + flags) == 0
    row = _log(out)[-1]
    pairs = "--hard-pairs" in flags
    for c in COLUMNS:
        assert c in row, row
    measured = ["gen_loss", "disc_loss"] + (["pair_cos", "pair_target", "sigma"] if pairs else [])
    assert all(math.isfinite(float(row[c])) for c in measured), row
    assert all(row[c] == "" for c in COLUMNS if c not in measured), row
    assert math.isfinite(float(row["loss"]))
    assert os.path.getsize(os.path.join(out, "pairs.png")) > 0
    cfg = _metrics(out)["config"]
    assert cfg["hard_pairs"] == pairs and cfg["synthetic"] == ("frozen" if "frozen" in flags else "joint")


def test_both_run_records_the_settings(both_run):
    cfg = _metrics(both_run)["config"]
    assert cfg["hard_samples"] and cfg["hard_pairs"] and cfg["hard_beta"] == 0.1 and cfg["pair_gain"] == 0.05
    assert (cfg["pair_sim_start"], cfg["pair_sim_end"], cfg["synthetic_per_batch"]) == (0.9, 0.5, 8)
    row = _log(both_run)[-1]
    assert 0.5 <= float(row["pair_target"]) <= 0.9 and 0.01 <= float(row["sigma"]) <= 1.5


def test_main_optimizer_holds_no_generator_parameter(both_run):
    ckpt = torch.load(os.path.join(both_run, "last.pt"), weights_only=True)
    state = ckpt["method"]
    n_model = sum(1 for k in state if not k.startswith("hard.") and not k.startswith("key_")
                  and k.endswith(("weight", "bias", "original")) and "running" not in k)
    groups = ckpt["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == n_model  # G and D are not in it
    extra = state["hard._extra_state"]
    assert len(extra["opt_g"]["state"]) > 0 and len(extra["opt_d"]["state"]) > 0 and "hard.sigma" in state


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """A 2-epoch run interrupted after epoch 1 and resumed equals the uninterrupted run in epoch 2: G, D, their
    optimisers and sigma come back from last.pt (without them the generator's losses and sigma differ)."""
    from augcl.train import trainer

    argv = TINY + ["--hard-samples", "--hard-pairs", "--gen-warmup-epochs", "0", "--epochs", "2"]
    straight = str(tmp_path / "straight")
    assert main(argv + ["--out", straight]) == 0
    real_end = trainer._end_of_epoch

    def end_then_killed(r, epoch, *args):
        real_end(r, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_end_of_epoch", end_then_killed)
    resumed = str(tmp_path / "resumed")
    with pytest.raises(SystemExit):
        main(argv + ["--out", resumed])
    monkeypatch.setattr(trainer, "_end_of_epoch", real_end)
    assert main(["--resume", "--out", resumed, "--no-progress"]) == 0
    a, b = _log(resumed), _log(straight)
    assert len(a) == len(b) == 2
    for c in ["loss"] + COLUMNS:
        assert a[-1][c] == b[-1][c], (c, a[-1], b[-1])


def test_resume_keeps_the_flags(both_run, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(both_run, out)
    for flags, needle in ((["--hard-beta", "0.3"], "--hard-beta"), (["--data-fraction", "0.5"], "fraction"),
                          (["--pair-sim-end", "0.3"], "--pair-sim-end")):
        code, err = _exit_code(["--resume", "--out", out, "--epochs", "2"] + flags, capsys)
        assert code == 2 and needle in err and "checkpoint" in err, err


def test_data_fraction_is_stratified_and_seeded():
    train = digits().train
    labels = train.tensors[1]
    part = stratified_fraction(train, 0.2, seed=0)
    want = torch.round(0.2 * torch.bincount(labels).double()).long()
    assert torch.equal(torch.bincount(part.tensors[1]), want)
    again, other = stratified_fraction(train, 0.2, seed=0), stratified_fraction(train, 0.2, seed=1)
    assert torch.equal(part.tensors[0], again.tensors[0]) and not torch.equal(part.tensors[0], other.tensors[0])
    assert stratified_fraction(train, 1.0, seed=0) is train
    assert torch.equal(torch.bincount(stratified_fraction(train, 0.001, seed=0).tensors[1]),
                       torch.ones(10, dtype=torch.long))  # at least one image per class


def test_data_fraction_in_a_plain_run(tmp_path):
    out = str(tmp_path / "run")
    assert main(BASE + ["--method", "simsiam", "--out", out]) == 0  # every method takes it
    m = _metrics(out)
    assert m["num_train"] == 269 and m["config"]["data_fraction"] == 0.2  # round(0.2 n_c) over digits' classes


@pytest.mark.parametrize("argv, needle", [
    (["--method", "byol", "--hard-samples"], "simclr, moco and mocov2"),
    (["--method", "swav", "--hard-pairs"], "--method swav"),
    (["--hard-samples", "--unmix"], "cannot be combined"),
    (["--hard-pairs", "--hallucinate"], "cannot be combined"),
    (["--hard-beta", "0.2"], "add one of them"),
    (["--synthetic", "frozen"], "add one of them"),
    (["--gen-warmup-epochs", "1"], "add one of them"),
    (["--synthetic-per-batch", "8"], "add one of them"),
    (["--hard-pairs", "--hard-beta", "0.2"], "--hard-samples"),
    (["--hard-samples", "--synthetic", "frozen", "--hard-beta", "0.2"], "frozen"),
    (["--hard-samples", "--pair-sim-end", "0.3"], "--hard-pairs"),
    (["--hard-samples", "--pair-gain", "0.3"], "--hard-pairs"),
    (["--hard-pairs", "--pair-sim-start", "0.4", "--pair-sim-end", "0.6"], "falls over training"),
    (["--hard-pairs", "--pair-sim-start", "1.5"], "--pair-sim-start"),
    (["--hard-samples", "--synthetic", "frozen", "--gen-warmup-epochs", "0"], "must then be > 0"),
    (["--hard-samples", "--gen-warmup-epochs", "1"], "never join"),
    (["--hard-pairs", "--synthetic-per-batch", "7"], "even"),
    (["--hard-samples", "--synthetic", "thawed"], "--synthetic"),
    (["--data-fraction", "0"], "--data-fraction"),
    (["--data-fraction", "1.5"], "--data-fraction"),
])
def test_bad_combinations_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    code, err = _exit_code(BASE + argv + ["--out", str(tmp_path / "x")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    assert needle in lines[0] and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "x" / "last.pt")


# ------------------------------------------------------------------------------------------ distributed
def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    from conftest import finish_rank

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=timedelta(seconds=60))
        from augcl.train.methods import build_method
        from augcl.train.models import build_backbone
        from augcl.train.trainer import wrap_ddp

        torch.manual_seed(0)
        backbone, dim = build_backbone("small", 1, True)
        hard = dict(channels=1, image_size=16, mean=(0.3,), std=(0.3,), hard_samples=True, hard_pairs=True,
                    per_step=4)
        method = build_method("simclr", backbone, dim, distributed=True, hard=hard)
        model = wrap_ddp(method, torch.device("cpu"), 2, sync_bn=False)
        opt = torch.optim.AdamW(method.model_parameters(), lr=1e-3)
        method.set_rng(torch.Generator().manual_seed(100 + rank))  # each rank its own samples
        g = torch.Generator().manual_seed(rank)
        for step in range(2):
            x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g)
            extra = method.hard_step(x, step, 10)
            v1, v2 = torch.randn(8, 1, 16, 16, generator=g), torch.randn(8, 1, 16, 16, generator=g)
            loss = model(v1, v2, **extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
        result["game"] = {k: v.clone() for k, v in method.hard.state_dict().items() if isinstance(v, torch.Tensor)
                          and "running" not in k and "num_batches" not in k}  # (G's BN statistics are per rank)
        result["model"] = {k: v.clone() for k, v in method.backbone.state_dict().items() if "running" not in k}
        result["views"] = extra["syn_views"].clone()
    except Exception:  # noqa: BLE001 (reported by the parent)
        result = {"error": traceback.format_exc()}
    finally:
        finish_rank(result, out_dir, rank)


@pytest.mark.distributed
def test_two_ranks_keep_identical_generators(tmp_path):
    from conftest import run_ranks

    r0, r1 = run_ranks(_worker, 2, tmp_path, args=(str(tmp_path / "init"), str(tmp_path)))
    for r in (r0, r1):
        assert "error" not in r, r.get("error")
    differ = [k for k in r0["game"] if not torch.equal(r0["game"][k], r1["game"][k])]
    assert not differ and len(r0["game"]) > 10, differ  # G, D, sigma: averaged gradients and pair_cos
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])  # DDP's average
    assert not torch.equal(r0["views"], r1["views"])  # each process generated its own samples


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "augcl.train", "--hard-samples", "--hard-pairs", "--gen-warmup-epochs", "0", "--data", "synthetic",
           "--epochs", "1", "--batch-size", "32", "--image-size", "8", "--synthetic-per-batch", "8",
           "--no-progress", "--no-baseline", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout
    m = _metrics(out)
    assert m["world_size"] == 2 and m["config"]["hard_pairs"]
    assert sorted(os.listdir(out)) == ["curves.png", "last.pt", "log.csv", "metrics.json", "pairs.png"]
    row = _log(out)[-1]
    assert all(math.isfinite(float(row[c])) for c in COLUMNS), row
