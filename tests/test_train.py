"""Tests of the training driver ``python -m augcl.train`` (augcl/train/): tiny CPU runs through ``main``.

The runs are kept small (synthetic data or 2 epochs of digits) so the file takes about a minute on 2 cores.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from augcl.train import main
from augcl.train.augment import augment, preset
from augcl.train.cli import PROG
from augcl.train.methods.losses import naive_info_nce, naive_nt_xent

import augcl.functional as AF
from _train_runs import exit_code as _exit_code, log_rows as _csv_rows, metrics as _metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--image-size", "8", "--no-progress"]


# ------------------------------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    """One tiny SimCLR run, shared (read-only) by the tests below."""
    out = str(tmp_path_factory.mktemp("simclr") / "run")
    assert main(TINY + ["--out", out]) == 0
    return out


def _check_outputs(out, method):
    for name in ("metrics.json", "log.csv", "curves.png", "last.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    m = _metrics(out)
    assert m["method"] == method and m["epochs"] == 1 and m["seed"] == 0
    for key in ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["final_loss"] > 0 and m["wall_time_s"] > 0
    assert m["augcl_backend"] in ("cpu", "reference", "triton")
    assert [r["epoch"] for r in _csv_rows(out)] == ["0", "1"]  # epoch 0: the random-init encoder
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert {"method", "optimizer", "epoch", "rng", "history"} <= set(ckpt)
    return ckpt


def test_tiny_simclr_run_writes_outputs(simclr_run):
    _check_outputs(simclr_run, "simclr")


def test_tiny_moco_run_writes_outputs(tmp_path):
    out = str(tmp_path / "run")
    assert main(TINY + ["--method", "moco", "--queue-size", "128", "--out", out]) == 0
    ckpt = _check_outputs(out, "moco")
    assert ckpt["method"]["queue"].shape == (128, 128)
    assert torch.allclose(ckpt["method"]["queue"].norm(dim=1), torch.ones(128))  # normalised keys


def test_same_seed_same_run(simclr_run, tmp_path):
    out = str(tmp_path / "again")
    main(TINY + ["--out", out])
    a, b = _metrics(simclr_run), _metrics(out)
    for key in ("final_loss", "knn_top1", "linear_top1", "random_init_knn_top1"):
        assert a[key] == b[key], key


def test_imagefolder_run(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            px = torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(root / c / f"{i}.png")
    out = str(tmp_path / "run")
    main(["--data", f"imagefolder:{root}", "--image-size", "8", "--batch-size", "4", "--epochs", "1",
          "--num-workers", "0", "--out", out, "--no-progress"])
    m = _metrics(out)
    assert (m["num_train"], m["num_test"]) == (12, 4) and 0 <= m["knn_top1"] <= 1


def test_eager_backend_matches_augcl(tmp_path):
    """--backend eager trains with the plain-PyTorch loss: same numbers as augcl's, up to rounding."""
    z1, z2 = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 8, dtype=torch.float64)
    torch.testing.assert_close(naive_nt_xent(z1, z2, 0.2).double(), AF.nt_xent(z1, z2, 0.2).double())
    queue = torch.nn.functional.normalize(torch.randn(40, 8, dtype=torch.float64), dim=1)
    torch.testing.assert_close(naive_info_nce(z1, z2, queue, 0.2).double(), AF.info_nce(z1, z2, queue, 0.2).double())
    out = str(tmp_path / "eager")
    main(TINY + ["--backend", "eager", "--out", out, "--no-baseline"])
    assert _metrics(out)["augcl_backend"] == "eager"


def test_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "augcl.train", "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--method" in r.stdout and "--resume" in r.stdout and "digits" in r.stdout


# --------------------------------------------------------------------------------------------- learning
def test_digits_learns_beyond_random_init(tmp_path):
    """2 epochs of the default SimCLR config on digits: the kNN top-1 clearly beats the random-init encoder's."""
    out = str(tmp_path / "digits")
    main(["--epochs", "2", "--out", out, "--no-progress"])
    m = _metrics(out)
    assert m["data"] == "digits" and m["backbone"] == "small" and m["method"] == "simclr"
    assert m["knn_top1"] >= m["random_init_knn_top1"] + 0.05, m
    assert m["knn_top1"] > 0.8, m
    assert m["linear_top1"] > 0.9, m


# ----------------------------------------------------------------------------------------------- resume
def test_resume_continues_the_curve(simclr_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(simclr_run, out)
    first = _csv_rows(out)
    assert main(["--resume", "--out", out, "--epochs", "2", "--no-progress"]) == 0
    rows = _csv_rows(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert rows[:2] == first  # the epochs already trained are kept as they were
    m = _metrics(out)
    assert m["epochs"] == 2 and m["data"] == "synthetic" and "resuming" in capsys.readouterr().out
    assert m["random_init_knn_top1"] == _metrics(simclr_run)["random_init_knn_top1"]
    # A resumed run keeps the checkpoint's data and method: changing them is refused.
    code, err = _exit_code(["--resume", "--out", out, "--epochs", "3", "--method", "moco"], capsys)
    assert code == 2 and "--method" in err
    # Without --resume, an existing run is not overwritten.
    code, err = _exit_code(TINY + ["--out", out], capsys)
    assert code == 2 and "--resume" in err


# --------------------------------------------------------------------------------------------- bad args
@pytest.mark.parametrize("argv, needle", [
    (["--method", "dino"], "--method"),
    (["--batch-size", "0"], "--batch-size"),
    (["--data", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--data", "cifar100"], "cifar100"),
    (["--data", "mnist"], "mnist"),
    (["--method", "moco", "--batch-size", "64", "--queue-size", "100", "--data", "synthetic"], "--queue-size"),
    (["--batch-size", "5000"], "--batch-size"),
    (["--image-size", "4"], "--image-size"),
    (["--backend", "nccl"], "--backend"),
    (["--resume"], "--out"),
    (["--resume", "--out", "{tmp}/empty"], "last.pt"),
])
def test_bad_args_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "x")]
    code, err = _exit_code(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------- augmentations
def test_augment_shapes_determinism_and_range():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    cfg = preset("mocov2", image_size=64, channels=3)  # includes blur (>= 64 px)
    mean, std = torch.zeros(3), torch.ones(3)
    a = augment(x, cfg, 64, mean, std, torch.Generator().manual_seed(1))
    b = augment(x, cfg, 64, mean, std, torch.Generator().manual_seed(1))
    c = augment(x, cfg, 64, mean, std, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1  # mean 0, std 1: the [0, 1] image itself
    gray = augment(x[:, :1], preset("simclr", image_size=16, channels=1, flip=False), 16, mean[:1], std[:1],
                   torch.Generator().manual_seed(0))
    assert gray.shape == (6, 1, 16, 16) and torch.isfinite(gray).all()


# ------------------------------------------------------------------------------------- --amp and --compile
def test_amp_bf16_run(tmp_path):
    """--amp bf16 on the CPU (torch.autocast): the step runs in bf16 where autocast says so, the loss op gets
    bf16 embeddings and accumulates in fp32; the run finishes with finite metrics."""
    out = str(tmp_path / "run")
    assert main(TINY + ["--amp", "bf16", "--hallucinate", "--unmix", "--out", out]) == 0
    m = _metrics(out)
    assert m["amp"] == "bf16" and 0 <= m["knn_top1"] <= 1
    assert all(float(r["loss"]) > 0 for r in _csv_rows(out)[1:])


@pytest.mark.slow
def test_compile_run(tmp_path):
    """--compile: the encoder and heads through torch.compile (inductor on the CPU), augcl's ops inside the
    compiled step's loss; one tiny epoch finishes and the loss agrees with the uncompiled run's first value."""
    out = str(tmp_path / "run")
    ref = str(tmp_path / "ref")
    argv = TINY + ["--backbone", "small", "--no-baseline"]
    assert main(argv + ["--compile", "--out", out]) == 0
    assert main(argv + ["--out", ref]) == 0
    m, r = _metrics(out), _metrics(ref)
    assert m["compile"] is True and r["compile"] is False
    # same seed, same data: inductor reorders float math, so equal to a tolerance, not bitwise
    assert m["final_loss"] == pytest.approx(r["final_loss"], rel=2e-2)
