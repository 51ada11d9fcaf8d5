"""Packaging: the source distribution carries every file the extension build reads.

An sdist made on a CPU-only machine (AUGCL_CUDA=0) must still hold the CUDA sources and the headers, or
``pip install augcl-*.tar.gz`` fails on the machine that has a GPU (a missing header) or silently builds without
its CUDA kernels. The sdist is built into a temporary folder from a copy of the tree (setup.py writes
augcl.egg-info next to itself).
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sdist_holds_every_csrc_and_kernel_file(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.so", "*.egg-info", "__pycache__",
                                                             "results", ".pytest_cache"))
    env = dict(os.environ, AUGCL_CUDA="0")  # as on a machine without a CUDA toolkit
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (archive,) = glob.glob(str(tmp_path / "dist" / "augcl-*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {os.path.relpath(p, REPO) for pattern in ("csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.h", "kernels/*.py")
              for p in glob.glob(os.path.join(REPO, pattern), recursive=True)}
    assert any(w.endswith(".cu") for w in wanted) and any(w.endswith(".h") for w in wanted)
    missing = sorted(wanted - names)
    assert not missing, f"the sdist lacks {missing}"
    assert {"setup.py", "pyproject.toml", "README.md", "augcl/__init__.py"} <= names
