"""benchmarks/gpu_session.sh, the one command a lent GPU runs, proven on the CPU by its dry run (--dry-run): the
same steps end to end (Triton under the interpreter, tiny shapes, the sanitizer skipped with its reason), the
device tool's output limits (at most 8 files in $OUT, 16 MiB each, plain names, at most two folders down) and the
time budget (step limits summing to at most 480 s, each step within its limit); a failed build aborts the session,
and a step killed at its limit keeps everything packed before it."""
import os
import re
import subprocess
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.sh")
BUDGET_S = 480
STEPS = ["env", "wheels", "build", "tests-contrastive", "tests-kernels", "tests-marked", "sanitize", "candidates",
         "headline"]
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def _run(tmp_path, timeout, **env):
    out = tmp_path / "out"
    full_env = dict(os.environ, OUT=str(out), GPU_SESSION_SCRATCH=str(tmp_path / "scratch"),
                    GPU_SESSION_SITE=str(tmp_path / "site"), **env)
    full_env.pop("TRITON_INTERPRET", None)  # the script sets it for its own steps
    t0 = time.monotonic()
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, out, time.monotonic() - t0


def _summary_rows(out):
    """{step: (limit, used, rc, status)} from summary.txt, and its text."""
    text = (out / "summary.txt").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(.*)$", line)
        if m and m.group(1) in STEPS:
            rows[m.group(1)] = (int(m.group(2)), int(m.group(3)), m.group(4), m.group(5))
    return rows, text


def _check_output_limits(out):
    """The device tool returns at most 8 files from $OUT, each <= 16 MiB, named plainly, at most two folders
    down: anything else would be lost."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert 1 <= len(files) <= 8, files
    for path in files:
        rel = os.path.relpath(path, out)
        assert rel.count(os.sep) <= 2 and all(NAME_OK.match(part) for part in rel.split(os.sep)), rel
        assert os.path.getsize(path) <= 16 * 2 ** 20, (rel, os.path.getsize(path))
    return sorted(os.path.relpath(p, out) for p in files)


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    proc, out, wall = _run(tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _check_output_limits(out) == ["candidates.csv", "session.tgz", "summary.txt"]
    rows, text = _summary_rows(out)
    assert list(rows) == STEPS, text
    limits = sum(limit for limit, _used, _rc, _status in rows.values())
    assert f"step limits sum to {limits}s" in text and limits <= BUDGET_S, text
    for step, (limit, used, rc, status) in rows.items():
        assert used <= limit + 5, (step, used, limit)  # `timeout -k 5` kills a step at its limit
        if step not in ("wheels", "sanitize"):  # wheels: only where .whl/ exists (not in CI)
            assert rc == "0" and status == "ok", (step, rc, status, text)
    assert rows["sanitize"][3].startswith("skipped: dry run: compute-sanitizer needs a CUDA GPU"), text
    assert "gpu_launch_all.py ran without it: exit 0" in text, text
    total = int(re.search(r"^total done: (\d+)s of the 480s budget$", text, re.M).group(1))
    assert total <= wall + 1 and total < 300, text  # the dry run takes ~1.5 min alone on 2 cores
    with tarfile.open(out / "session.tgz") as tar:
        names = set(tar.getnames())
    for step in STEPS:
        if step not in ("wheels", "sanitize"):
            assert f"./logs/{step}.log" in names, sorted(names)
    for group in ("contrastive", "kernels", "marked"):
        assert f"./junit/{group}.xml" in names, sorted(names)
    assert {"./results/candidates.csv", "./logs/launch-all-dry.log", "./summary.txt"} <= names
    rows_csv = (out / "candidates.csv").read_text().splitlines()
    groups = {line.split(",")[0] for line in rows_csv[1:]}
    assert groups == {"fp32", "large-d", "tiles", "sinkhorn", "unmix"}, rows_csv[:3]
    print(text)


def test_failed_build_aborts(tmp_path):
    """A failed build stops the session (the GPU tests would only skip); what ran is packed."""
    proc, out, _ = _run(tmp_path, timeout=300, GPU_SESSION_BUILD_CMD="echo compiler error >&2; exit 7")
    assert proc.returncode == 1
    rows, text = _summary_rows(out)
    assert rows["build"][2:] == ("7", "exit 7") and "ABORTED: the build failed" in text, text
    assert not any(step.startswith("tests") for step in rows), text
    assert _check_output_limits(out) == ["session.tgz", "summary.txt"]
    with tarfile.open(out / "session.tgz") as tar:
        log = tar.extractfile("./logs/build.log").read().decode()
    assert "compiler error" in log


def test_step_killed_at_its_limit_keeps_what_ran_before(tmp_path):
    """Limits scaled down (0.02: the build gets 3 s of its 180) and a build that sleeps: the build is killed at its
    limit, recorded as such, and the environment step's log is still in the pack."""
    proc, out, wall = _run(tmp_path, timeout=300, GPU_SESSION_LIMIT_SCALE="0.02", GPU_SESSION_BUILD_CMD="sleep 60")
    assert proc.returncode == 1 and wall < 60
    rows, text = _summary_rows(out)
    limit, used, rc, status = rows["build"]
    assert limit == 3 and rc == "124" and status == "KILLED at its 3s limit" and used <= 3 + 5, text
    with tarfile.open(out / "session.tgz") as tar:
        assert "./logs/env.log" in tar.getnames()


def test_sweep_mode_rejects_unknown_sweeps():
    """--sweep NAME (a later session's full benchmark after the build) names the sweeps it knows."""
    proc = subprocess.run(["bash", SCRIPT, "--sweep", "no-such-sweep"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--sweep takes one of:" in proc.stderr
    for name in ("bf16", "fp32", "unmix-uint8", "sinkhorn-codes", "train"):
        assert name in proc.stderr.split("one of:")[1].split()
