"""benchmarks/bench_patch.py end to end on a tiny batch: both competitors run in their own process, the patched one
through augcl.patch(), and the CSV holds the side-by-side columns."""
import csv
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_patch.py"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ is not part of this checkout")]
pytest.importorskip("lightly", reason="lightly (a test dependency) is not installed")


def test_bench_patch_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--batches", "16", "--rep", "2",
                          "--out", str(tmp_path), "--tag", "smoke", "--note", "test run"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "note: test run" in out.stdout
    (path,) = tmp_path.glob("patch_*_smoke.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["competitor"] for r in rows] == ["lightly", "lightly+augcl.patch()"]
    assert all(r["status"] == "ok" and r["note"] == "test run" and float(r["peak_extra_mib"]) >= 0 for r in rows)
    patched = rows[1]
    assert float(patched["speedup"]) > 0 and float(patched["mem_ratio"]) > 0
    assert float(patched["loss_rel_diff"]) < 1e-5  # same weights and inputs: the first losses agree to rounding
