"""The driver's checkpoint (augcl/train/checkpoint.py) and ``--resume``: every damaged or foreign last.pt ends
as one line (exit code 2) before any training, a run killed while saving keeps the previous checkpoint, and
the learning rate continues across a resume instead of jumping back up (augcl/train/schedule.py).

Runs are tiny (synthetic data at 8 px, 10 steps per epoch, no baseline); the refused resumes stop before
training.
"""
import csv
import io
import os
import shutil

import pytest
import torch

from augcl.train import main, trainer
from augcl.train.checkpoint import CheckpointError, content_sha256, load_checkpoint, save_checkpoint
from augcl.train.cli import PROG
from augcl.train.methods import build_method
from augcl.train.models import build_backbone
from augcl.train.schedule import continue_schedule, cosine_schedule, lr_at

TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--image-size", "8", "--no-progress",
        "--no-baseline"]
STEPS = 10  # 320 images / batch 32


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished 1-epoch SimCLR run, copied (never changed) by the tests below."""
    out = str(tmp_path_factory.mktemp("ckpt") / "run")
    assert main(TINY + ["--out", out]) == 0
    return out


def _copy(run, tmp_path, name="run"):
    out = str(tmp_path / name)
    shutil.copytree(run, out)
    return out


def _one_line_error(argv, capsys, code=2):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == code, err
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:") and "Traceback" not in err, err
    return lines[0]


def _lr_column(out):
    with open(os.path.join(out, "log.csv")) as f:
        return [float(r["lr"]) for r in csv.DictReader(f) if r["lr"]]


# ------------------------------------------------------------------------------------- format, checksum
def test_checkpoint_is_a_plain_torch_file_with_a_checksum(finished_run):
    path = os.path.join(finished_run, "last.pt")
    raw = torch.load(path, weights_only=True)  # still readable without augcl
    assert raw["format"] == 2 and raw["checksum"] == content_sha256(raw)
    assert raw["schedule"] == [dict(start=0, end=STEPS, peak=raw["config"]["lr"], warmup=0)]
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and ckpt["step"] == STEPS
    assert not os.path.exists(path + ".tmp")


def test_content_sha256_sees_every_kind_of_change():
    state = {"step": 3, "lr": 0.5, "t": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "l": [1, (2, None)],
             "s": "x", "flag": True}
    digest = content_sha256(state)
    assert digest == content_sha256(dict(state, checksum="anything"))  # the checksum entry is not hashed
    changed = [dict(state, step=4), dict(state, lr=0.5000000001), dict(state, flag=1),
               dict(state, t=state["t"].reshape(3, 2)), dict(state, t=state["t"].float()),
               dict(state, l=[1, [2, None]]), dict(state, s="y")]
    t = state["t"].clone()
    t.view(torch.int16)[0, 1] ^= 1  # one flipped bit
    changed.append(dict(state, t=t))
    assert all(content_sha256(c) != digest for c in changed)


def _flip_a_weight_bit(path):
    """Flip one bit inside the stored bytes of the largest weight (torch.load does not notice it)."""
    ckpt = torch.load(path, weights_only=True)
    weight = max(ckpt["method"].values(), key=lambda t: t.numel())
    stored = weight.reshape(-1).view(torch.uint8).numpy().tobytes()
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.find(stored[:64])
    assert at > 0
    data[at + 33] ^= 0x04
    with open(path, "wb") as f:
        f.write(data)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])


def _rewrite(path, edit, checksum=True):
    """Load the checkpoint, apply ``edit`` to it, and write it back (with a valid checksum, or keeping the
    old one, i.e. as a corruption that still unpickles)."""
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    if checksum:
        save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "checksum")})
    else:
        torch.save(ckpt, path)


def _other_method(ckpt):
    backbone, dim = build_backbone("small", 3, True)
    ckpt["method"] = build_method("moco", backbone, dim, queue_size=64).state_dict()


def _reshape_a_weight(ckpt):
    key = next(k for k, v in ckpt["method"].items() if v.dim() == 2)
    ckpt["method"][key] = torch.zeros(3, 5)


def _drop_a_weight(ckpt):
    del ckpt["method"][next(iter(ckpt["method"]))]


def _foreign_optimizer(ckpt):
    ckpt["optimizer"]["param_groups"][0]["params"] = [0, 1]


def _bump_step(ckpt):
    ckpt["step"] += 1


@pytest.mark.parametrize("damage, needle", [
    (_truncate, "truncated or corrupted"),
    (_flip_a_weight_bit, "is corrupted: its content's checksum"),
    (lambda p: _rewrite(p, _bump_step, checksum=False), "is corrupted: its content's checksum"),
    (lambda p: open(p, "wb").close(), "is empty"),
    (lambda p: open(p, "w").write("not a checkpoint"), "not a torch.save zip file"),
    (lambda p: torch.save([1, 2], p), "not a checkpoint written by augcl.train"),
    (lambda p: _rewrite(p, lambda c: c.pop("optimizer")), "is incomplete: no optimizer"),
    (lambda p: _rewrite(p, lambda c: c.update(history={})), "history is a dict, not a list"),
    (lambda p: _rewrite(p, _other_method), "does not fit the simclr / small model"),
    (lambda p: _rewrite(p, _reshape_a_weight), "1 of another shape"),
    (lambda p: _rewrite(p, _drop_a_weight), "1 missing"),
    (lambda p: _rewrite(p, _foreign_optimizer), "does not fit the simclr / small run"),
], ids=["truncated", "bit-flip", "changed-value", "empty", "text", "foreign-pickle", "missing-entry",
        "wrong-type", "other-model", "other-shape", "missing-key", "other-optimizer"])
def test_damaged_checkpoint_is_refused_with_one_line(finished_run, tmp_path, capsys, damage, needle):
    out = _copy(finished_run, tmp_path)
    damage(os.path.join(out, "last.pt"))
    line = _one_line_error(["--resume", "--out", out, "--epochs", "2", "--no-progress"], capsys)
    assert needle in line and "last.pt" in line, line
    assert len(_lr_column(out)) == 1  # nothing was trained


def test_other_model_error_names_the_keys(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    _rewrite(os.path.join(out, "last.pt"), _other_method)
    line = _one_line_error(["--resume", "--out", out, "--epochs", "2", "--no-progress"], capsys)
    assert "unexpected (" in line and "queue" in line, line


def test_format_1_checkpoint_resumes_unverified(finished_run, tmp_path, capsys):
    """A checkpoint of augcl.train before checksums (format 1: no checksum, no schedule) still resumes, saying
    so; its lr schedule is rebuilt from the settings it ran with."""
    out = _copy(finished_run, tmp_path)
    path = os.path.join(out, "last.pt")
    ckpt = torch.load(path, weights_only=True)
    old = {k: v for k, v in ckpt.items() if k not in ("checksum", "schedule")}
    torch.save(dict(old, format=1), path)
    assert main(["--resume", "--out", out, "--epochs", "2", "--lr", "1e-3", "--no-progress"]) == 0
    assert "no checksum" in capsys.readouterr().out
    assert load_checkpoint(path)["schedule"] == [dict(start=0, end=STEPS, peak=ckpt["config"]["lr"], warmup=0),
                                                 dict(start=STEPS, end=2 * STEPS, peak=1e-3, warmup=0)]


def test_killed_while_saving_keeps_the_previous_checkpoint(finished_run, tmp_path, monkeypatch, capsys):
    out = _copy(finished_run, tmp_path)
    path = os.path.join(out, "last.pt")
    with open(path, "rb") as f:
        before = f.read()
    real_save = torch.save

    def half_then_killed(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as g:
                g.write(data)
        else:
            f.write(data)
        raise KeyboardInterrupt  # the process dies half-way through the write

    monkeypatch.setattr(torch, "save", half_then_killed)
    with pytest.raises(SystemExit) as info:
        main(["--resume", "--out", out, "--epochs", "2", "--lr", "1e-3", "--no-progress"])
    assert info.value.code == 130 and "--resume" in capsys.readouterr().err
    monkeypatch.setattr(torch, "save", real_save)
    with open(path, "rb") as f:
        assert f.read() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(out)) == ["curves.png", "last.pt", "log.csv", "metrics.json"]  # no stale .tmp


# --------------------------------------------------------------------------- resume: settings it keeps
@pytest.mark.parametrize("flags, needle", [
    (["--optimizer", "sgd"], "--optimizer"),
    (["--warmup-epochs", "1"], "--warmup-epochs"),
])
def test_resume_keeps_optimizer_and_warmup(finished_run, tmp_path, capsys, flags, needle):
    out = _copy(finished_run, tmp_path)
    line = _one_line_error(["--resume", "--out", out, "--epochs", "2"] + flags, capsys)
    assert needle in line and "resume" in line, line


# ------------------------------------------------------------------------------------ lr across resumes
def test_schedule_continues_without_jumping():
    base = cosine_schedule(100, 10, 1.0)
    plain = [lr_at(base, s) for s in range(100)]
    assert plain[:10] == [(s + 1) / 10 for s in range(10)] and plain[10] == 1.0
    assert continue_schedule(base, 40, 100) is base  # same total: the very same schedule
    assert continue_schedule(base, 100, 80) is base  # nothing left to train
    assert lr_at(continue_schedule(base, 100, 300), 200) == 0.0  # a finished run stays at lr 0 (see --lr)
    for step, total in ((40, 300), (40, 60), (99, 300), (10, 30), (5, 300)):
        sched = continue_schedule(base, step, total)
        lrs = [lr_at(sched, s) for s in range(total)]
        assert lrs[:step] == plain[:step], (step, total)  # the past is unchanged
        after_warmup = lrs[10:]
        assert all(b <= a for a, b in zip(after_warmup, after_warmup[1:])), (step, total)
        assert after_warmup[-1] < 0.01 * after_warmup[0] and lr_at(sched, total) == 0.0
        if step >= 10:
            assert lrs[step] == plain[step]  # continues from where the lr was
    warm = continue_schedule(base, 5, 300)
    assert [lr_at(warm, s) for s in range(11)] == plain[:11]  # resumed during warmup: the warmup goes on
    restarted = continue_schedule(base, 40, 300, peak=0.5)  # --lr given again: a deliberate restart
    assert lr_at(restarted, 40) == 0.5 and lr_at(restarted, 39) == plain[39]


def test_resume_with_more_epochs_continues_the_lr(tmp_path, monkeypatch, capsys):
    """A 2-epoch run interrupted after epoch 1: resumed as it was, it takes exactly the uninterrupted run's
    learning rates; resumed with --epochs 4, its lr never rises across the resume point."""
    lrs = {}
    real_lr_at, real_end = trainer.lr_at, trainer._end_of_epoch

    def record(schedule, step):
        lrs[step] = real_lr_at(schedule, step)
        return lrs[step]

    def end_then_killed(r, epoch, *args):
        real_end(r, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "lr_at", record)
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path / "ref")]) == 0
    uninterrupted = dict(lrs)
    lrs.clear()
    monkeypatch.setattr(trainer, "_end_of_epoch", end_then_killed)
    with pytest.raises(SystemExit):
        main(TINY + ["--epochs", "2", "--out", str(tmp_path / "a")])
    monkeypatch.setattr(trainer, "_end_of_epoch", real_end)
    first = dict(lrs)
    assert sorted(first) == list(range(STEPS)) and first == {s: uninterrupted[s] for s in range(STEPS)}
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    lrs.clear()
    assert main(["--resume", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert {**first, **lrs} == uninterrupted  # bitwise the uninterrupted run's schedule

    lrs.clear()
    assert main(["--resume", "--out", str(tmp_path / "b"), "--epochs", "4", "--no-progress"]) == 0
    assert "lr schedule: continues from" in capsys.readouterr().out
    seq = [first[s] for s in range(STEPS)] + [lrs[s] for s in range(STEPS, 4 * STEPS)]
    assert all(b <= a for a, b in zip(seq, seq[1:])), seq
    assert seq[STEPS] == uninterrupted[STEPS] and 0 < seq[-1] < 0.01 * seq[0]
    column = _lr_column(str(tmp_path / "b"))  # log.csv: the last lr of each epoch
    assert len(column) == 4 and column == sorted(column, reverse=True)


def test_extending_a_finished_run_warns_that_lr_is_0(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    assert main(["--resume", "--out", out, "--epochs", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "give --lr" in err, err
    assert _lr_column(out) == [_lr_column(finished_run)[0], 0.0]


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "last.pt")
