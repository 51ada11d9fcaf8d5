"""The benchmark harness (benchmarks/harness.py) and its optional dependencies.

matplotlib (the ``bench`` and ``train`` extras) and the peer libraries (timm, kornia, lightly, ...) are optional:
a benchmark run without them must still write its CSV, say in one line that it draws no plot, and report a
missing peer as a row ``unavailable`` with the reason instead of failing. The end-to-end test runs the smallest
configuration of bench_unmix.py (the cheapest script: no child processes, no measured FLOP rate) in a fresh
interpreter whose sitecustomize makes those modules unimportable.
"""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.skipif(not (BENCH / "harness.py").is_file(),
                                reason="benchmarks/ is not beside tests/ (an sdist ships the package and tests only)")


def _harness():
    """A fresh copy of benchmarks/harness.py (its once-per-process matplotlib check starts unset)."""
    spec = importlib.util.spec_from_file_location("augcl_bench_harness", BENCH / "harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_unmix_benchmark_writes_its_csv_without_matplotlib_and_peers(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    # Applies to the script's process and to any child it starts: None in sys.modules makes `import x` fail.
    (site / "sitecustomize.py").write_text(
        "import sys\nfor name in ('matplotlib', 'timm', 'kornia'):\n    sys.modules[name] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_unmix.py"), "--device", "cpu", "--shapes", "2x3x8x8", "--dtypes", "fp32",
         "--backends", "cpu,reference", "--warmup", "0", "--rep", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(BENCH.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: no plot")]
    assert len(notes) == 1 and "matplotlib" in notes[0], proc.stdout
    written = list(out.iterdir())
    assert [p.suffix for p in written] == [".csv"], written  # the CSV, and no PNG
    with open(written[0], newline="") as f:
        rows = {r["competitor"]: r for r in csv.DictReader(f)}
    assert rows["augcl[cpu]"]["status"] == "ok"
    for peer, library in (("timm-batch", "timm"), ("timm-elem", "timm"), ("kornia-mixup", "kornia"),
                          ("kornia-cutmix", "kornia")):
        assert rows[peer]["status"] == "unavailable" and library in rows[peer]["reason"], rows[peer]


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    H = _harness()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    p = H.BenchParser("doc", warmup=(5, 1), rep=(30, 5))
    args = p.parse(["--device", "cpu"])
    assert args.plots is False
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and note.startswith("note: no plot") and "matplotlib" in note
    rows = [dict(status="ok", n=1, series="a", panel=0, ms_median=1.0, ms_p20=1.0, ms_p80=1.0)]
    path = tmp_path / "plot.png"
    assert H.plot(rows, str(path), x="n", series="series", panels=("panel",), title="t") is None
    assert not path.exists()
    # A script that draws nothing does not mention plots.
    H.BenchParser("doc", warmup=(5, 1), rep=(30, 5), plots=False).parse(["--device", "cpu"])
    assert capsys.readouterr().out == ""


def test_bench_parser_defaults_by_device_and_checks():
    H = _harness()
    p = H.BenchParser("doc", warmup=(5, 0), rep=(30, 2), cap_s=(20.0, 15.0), plots=False)
    p.add_names("--peers", ("eager", "compile"), "other competitors")
    cpu = p.parse(["--device", "cpu"])
    assert (cpu.device, cpu.warmup, cpu.rep, cpu.cap_s, cpu.seed) == ("cpu", 0, 2, 15.0, 0)
    assert cpu.peers == ["eager", "compile"]
    gpu = p.parse(["--device", "cuda", "--rep", "7", "--peers", " compile,"])  # defaults only; nothing runs on it
    assert (gpu.warmup, gpu.rep, gpu.cap_s, gpu.peers) == (5, 7, 20.0, ["compile"])
    # A script's own defaults go first; what it leaves unset gets the device default.
    quick = p.parse(["--device", "cpu"], adjust=lambda args, is_gpu: setattr(args, "rep", args.rep or 9))
    assert quick.rep == 9 and quick.warmup == 0
    for bad in (["--peers", "eager,lightly"], ["--rep", "0"], ["--warmup", "-1"], ["--cap-s", "0"]):
        with pytest.raises(SystemExit) as exc:
            p.parse(["--device", "cpu"] + bad)
        assert exc.value.code == 2, bad


@pytest.mark.parametrize("script,args,key", [
    ("bench_topk_attention.py", ["--batches", "1", "--heads", "2", "--lengths", "17", "--head-dims", "8",
                                 "--peers", "eager,sdpa"], ("b", "h", "l", "d")),
    ("bench_supcon.py", ["--sizes", "64", "--dims", "16", "--peers", "eager"], ("n", "d")),
], ids=["topk_attention", "supcon"])
def test_per_op_benchmark_smoke(tmp_path, script, args, key):
    """The smallest run of a per-op benchmark (cases in child processes, hardware limits measured, CSV + table):
    every competitor that can run here is ok, augcl's row carries its ratio to each peer, and the CSV has the
    run's metadata (the gpu_session runs these scripts on a lent GPU, where no one is around to fix a typo)."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--device", "cpu", "--backends", "cpu,reference", "--warmup", "0",
         "--rep", "2", "--cap-s", "5", "--out", str(out), "--tag", "smoke", *args],
        capture_output=True, text=True, timeout=600, cwd=str(BENCH.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    csvs = [p for p in out.iterdir() if p.suffix == ".csv"]
    assert len(csvs) == 1 and csvs[0].name.endswith("_smoke.csv"), csvs
    with open(csvs[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["status"] for r in rows} == {"ok"}, [(r["competitor"], r["status"], r["reason"]) for r in rows]
    assert all(r[k] for r in rows for k in key + ("op", "device", "date", "torch", "augcl", "load_start",
                                                  "load_end", "ms_median", "roofline_ms", "limit_source"))
    ours = next(r for r in rows if r["competitor"] == "augcl[cpu]")
    assert float(ours["speedup_vs_eager"]) > 0 and ours["peak_extra_mib"] != ""
    assert "load average:" in proc.stdout and "wrote " in proc.stdout
