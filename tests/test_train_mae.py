"""``python -m augcl.train --method mae | mixedae | mixedae-naive`` (augcl/train/methods/mae.py).

Each method trains one epoch of digits at 8 px (patch 2: N = 16) through ``main``: metrics.json and the read-out
columns of log.csv (rec_loss; hc_loss and homology_precision for the mixing methods). Bad option combinations
end with one line and exit code 2. One run under torchrun with 2 gloo processes.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from augcl.train import main
from augcl.train.augment import view_plan
from augcl.train.cli import PROG
from _train_runs import exit_code as _exit, log_rows as _log, metrics as _metrics

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data", "digits", "--epochs", "1", "--image-size", "8", "--patch-size", "2", "--no-progress",
        "--no-baseline"]


@pytest.mark.parametrize("method, extra, columns", [
    ("mae", [], {"rec_loss"}),
    ("mixedae", ["--segment", "decoder", "--top-k", "6"], {"rec_loss", "hc_loss", "homology_precision"}),
    ("mixedae-naive", [], {"rec_loss", "hc_loss", "homology_precision"}),
])
def test_method_trains_an_epoch_on_digits(method, extra, columns, tmp_path):
    out = str(tmp_path / method)
    assert main(TINY + ["--method", method, "--out", out] + extra) == 0
    m = _metrics(out)
    assert m["method"] == method and m["epochs"] == 1 and m["backbone"] == "vit"
    assert 0.0 <= m["knn_top1"] <= 1.0 and m["final_loss"] > 0
    cfg = m["config"]
    assert cfg["patch_size"] == 2 and cfg["optimizer"] == "adamw"
    row = _log(out)[-1]
    assert columns <= set(row) and not ({"rec_loss", "hc_loss", "homology_precision"} - columns) & set(row)
    assert float(row["rec_loss"]) > 0
    if method == "mixedae":
        assert (cfg["group"], cfg["top_k"], cfg["segment"], cfg["hc_weight"], cfg["temperature"]) == (
            4, 6, "decoder", 1.0, 0.2)
        assert 0.0 < float(row["hc_loss"]) and 0.0 <= float(row["homology_precision"]) <= 1.0
        assert abs(float(row["loss"]) - float(row["rec_loss"]) - float(row["hc_loss"])) < 1e-4
    if method == "mixedae-naive":
        assert (cfg["group"], cfg["top_k"], cfg["segment"], cfg["hc_weight"]) == (4, None, None, None)
        assert float(row["hc_loss"]) == 0.0
    if method == "mae":
        assert (cfg["group"], cfg["top_k"], cfg["segment"], cfg["hc_weight"]) == (None,) * 4
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert "model.encoder.blocks.0.attn.qkv.weight" in ckpt["method"]
    assert ("model.segment_embed" in ckpt["method"]) == (method == "mixedae")


def test_colour_images_and_bf16(tmp_path):
    """3-channel images (the synthetic set, flips on) and bf16 autocast: top-k attention, SupCon and the
    read-outs in bf16, the reconstruction loss accumulated in fp32."""
    out = str(tmp_path / "rgb")
    assert main(TINY + ["--method", "mixedae", "--data", "synthetic", "--amp", "bf16", "--out", out]) == 0
    m = _metrics(out)
    assert m["amp"] == "bf16" and m["config"]["patch_size"] == 2 and m["knn_top1"] > 0
    assert float(_log(out)[-1]["hc_loss"]) > 0


def test_view_plan_is_one_mild_view():
    (view,) = view_plan("mixedae", image_size=16, channels=1, flip=False)
    assert view.size == 16 and view.cfg.crop_scale == (0.5, 1.0) and view.cfg.flip_p == 0.0
    assert view.cfg.jitter_p == 0.0 and view.cfg.blur_p == 0.0 and view.cfg.rotate == 0.0
    (view,) = view_plan("mae", image_size=32, channels=3, flip=True)
    assert view.cfg.crop_scale == (0.2, 1.0) and view.cfg.flip_p == 0.5 and view.cfg.gray_p == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--method", "simclr", "--group", "4"], "--group is an option of --method mixedae / mixedae-naive; "
                                             "--method is simclr"),
    (["--method", "mae", "--segment", "encoder"], "--segment is an option of --method mixedae; --method is mae"),
    (["--method", "mixedae-naive", "--hc-weight", "1"], "--hc-weight is an option of --method mixedae;"),
    (["--method", "mixedae-naive", "--top-k", "4"], "--top-k is an option of --method mixedae;"),
    (["--method", "byol", "--patch-size", "4"], "--patch-size is an option of --method mae / mixedae"),
    (["--method", "mae", "--backbone", "small"], "--method mae trains a ViT encoder (--backbone vit)"),
    (["--method", "simclr", "--backbone", "vit"], "--backbone vit is the encoder of --method mae"),
    (["--method", "mae", "--image-size", "10", "--patch-size", "4"], "--patch-size 4 must divide --image-size 10"),
    (["--method", "mixedae", "--batch-size", "30"], "--batch-size 30 must be a multiple of --group 4"),
    (["--method", "mixedae", "--patch-size", "16"], "--group 4 must divide the 1 patches"),
    (["--method", "mixedae", "--image-size", "8", "--patch-size", "2", "--top-k", "18"],
     "--top-k 18 is more than the 17 tokens"),
    (["--method", "mae", "--temperature", "0.5"], "--temperature: mae has no temperature (its loss is a pixel MSE)"),
    (["--method", "mixedae", "--group", "1"], "argument --group: must be >= 2, got 1"),
    (["--method", "mixedae", "--segment", "input"], "argument --segment: invalid choice"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys, tmp_path):
    code, err = _exit(argv + ["--epochs", "1", "--no-progress", "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: "), err
    assert message in err, err


def test_resume_keeps_the_mixing_settings(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY + ["--method", "mixedae-naive", "--out", out]) == 0
    capsys.readouterr()
    code, err = _exit(["--resume", "--out", out, "--group", "2", "--epochs", "2"], capsys)
    assert code == 2 and "--group is 2 but the checkpoint was trained with 4" in err, err


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_mixedae_two_processes(tmp_path):
    """MixedAE under torchrun (2 gloo processes, 16 images = 4 groups per process): one set of outputs."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "augcl.train",
           "--method", "mixedae", *TINY, "--batch-size", "32", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout  # rank 0 alone writes
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["per_process_batch"] == 16 and m["method"] == "mixedae"
    row = _log(str(out))[-1]
    assert float(row["hc_loss"]) > 0 and 0.0 <= float(row["homology_precision"]) <= 1.0
