"""What the training driver checks before it trains: the output folder, the optional dependencies
(matplotlib for curves.png, scikit-learn for digits and the linear probe) and an --amp that is slow on the
device. Every refusal is one line (exit code 2); a missing plot or probe never costs the run's results.

Runs are tiny (synthetic data at 8 px, one epoch of 10 steps); the refusals stop before any data is loaded.
"""
import json
import os
import sys

import pytest

from augcl.train import main, trainer
from augcl.train.cli import PROG

TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--image-size", "8", "--no-progress",
        "--no-baseline", "--device", "cpu"]


def _one_line_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:") and "Traceback" not in err, err
    return lines[0]


def _no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the output folder was checked")

    monkeypatch.setattr(trainer, "load_data", refuse)


def _block(monkeypatch, package, submodules):
    """Make ``package`` unimportable in this process, as if it were not installed (None in sys.modules)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + \
            [package] + [f"{package}.{s}" for s in submodules]:
        monkeypatch.setitem(sys.modules, name, None)


def _outputs(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return sorted(os.listdir(out)), json.load(f)


# ------------------------------------------------------------------------------------------ --out
def test_out_that_is_a_file(tmp_path, capsys, monkeypatch):
    _no_data_loading(monkeypatch)
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    line = _one_line_error(TINY + ["--out", str(f)], capsys)
    assert f"--out {f} is a file" in line, line
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("below", ["run", "a/b/run"])
def test_out_below_a_file(tmp_path, capsys, monkeypatch, below):
    """A parent that is a regular file makes --out uncreatable (the way to test it when tests run as root)."""
    _no_data_loading(monkeypatch)
    f = tmp_path / "file"
    f.write_text("")
    out = f / below
    line = _one_line_error(TINY + ["--out", str(out)], capsys)
    assert "cannot be created" in line and f"{f} is a file" in line, line


def test_out_not_writable(tmp_path, capsys, monkeypatch):
    """A folder this process may not write into (os.access says no: permissions, a read-only mount)."""
    _no_data_loading(monkeypatch)
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(tmp_path))
    line = _one_line_error(TINY + ["--out", str(tmp_path / "run")], capsys)
    assert f"{tmp_path} is not writable" in line, line
    assert not (tmp_path / "run").exists()


def test_out_checked_before_resume_too(tmp_path, capsys, monkeypatch):
    _no_data_loading(monkeypatch)
    f = tmp_path / "file"
    f.write_text("")
    line = _one_line_error(["--resume", "--out", str(f)], capsys)
    assert "is a file" in line, line


# ------------------------------------------------------------------------------------------- --amp
def test_fp16_on_cpu_warns_once(tmp_path, capsys):
    """The warning comes first, at start (here the run then stops on a bad --batch-size, before training)."""
    with pytest.raises(SystemExit):
        main(TINY + ["--amp", "fp16", "--batch-size", "5000", "--out", str(tmp_path / "x")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{PROG}: warning: --amp fp16 on a CPU"), lines
    assert "--amp bf16" in lines[0] and lines[1].startswith(f"{PROG}: error: --batch-size"), lines
    with pytest.raises(SystemExit):
        main(TINY + ["--amp", "bf16", "--batch-size", "5000", "--out", str(tmp_path / "x")])
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------- optional dependencies
def test_without_matplotlib_the_run_keeps_its_results(tmp_path, capsys, monkeypatch):
    _block(monkeypatch, "matplotlib", ["figure", "backends", "backends.backend_agg"])
    out = str(tmp_path / "run")
    assert main(TINY + ["--out", out]) == 0
    files, metrics = _outputs(out)
    assert files == ["last.pt", "log.csv", "metrics.json"] and metrics["epochs"] == 1
    stdout = capsys.readouterr().out
    assert stdout.count("note: no curves.png: matplotlib is not importable") == 1, stdout
    assert "wrote " + out + "/: metrics.json, log.csv, last.pt" in stdout


def test_a_failing_plot_does_not_lose_the_run(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts\nat all")

    monkeypatch.setattr(trainer, "plot_curves", broken)
    out = str(tmp_path / "run")
    assert main(TINY + ["--epochs", "2", "--out", out]) == 0
    files, metrics = _outputs(out)
    assert files == ["last.pt", "log.csv", "metrics.json"] and metrics["epochs"] == 2
    stdout = capsys.readouterr().out
    assert stdout.count("note: curves.png not drawn (RuntimeError: no fonts at all)") == 1, stdout


def test_without_sklearn_the_run_skips_the_linear_probe(tmp_path, capsys, monkeypatch):
    _block(monkeypatch, "sklearn", ["datasets", "linear_model", "model_selection", "exceptions", "pipeline",
                                    "preprocessing"])
    out = str(tmp_path / "run")
    assert main([a for a in TINY if a != "--no-baseline"] + ["--out", out]) == 0
    _, metrics = _outputs(out)
    assert metrics["linear_top1"] is None and metrics["random_init_linear_top1"] is None
    assert 0 <= metrics["knn_top1"] <= 1
    stdout = capsys.readouterr().out
    assert stdout.count("note: no linear probe: scikit-learn is not importable") == 1, stdout
    assert "linear top-1 n/a" in stdout


def test_digits_without_sklearn_is_one_line(tmp_path, capsys, monkeypatch):
    _block(monkeypatch, "sklearn", ["datasets", "linear_model", "model_selection"])
    line = _one_line_error(["--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert "--data digits" in line and "scikit-learn" in line and "augcl[train]" in line, line
    assert not (tmp_path / "run").exists()


def test_imagefolder_split_without_sklearn_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchvision")
    from PIL import Image

    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    _block(monkeypatch, "sklearn", ["datasets", "linear_model", "model_selection"])
    line = _one_line_error(["--data", f"imagefolder:{root}", "--out", str(tmp_path / "run")], capsys)
    assert "split" in line and "scikit-learn" in line, line
