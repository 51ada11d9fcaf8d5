"""Packaging and installation: what the sdist carries, what the build compiles and where, and an install that a
folder named ``augcl`` in the working directory cannot shadow.

setup.py is run in subprocesses, on a copy of the tree (it writes build/ and augcl.egg-info next to itself). The
build-decision tests load setup.py with ``setuptools.setup`` replaced by a recorder, so they compile nothing: they
read the extension setup.py would build (sources, flags) and the line it would print.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch

import augcl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COPY_IGNORE = shutil.ignore_patterns(".git", "build", "*.so", "*.egg-info", "__pycache__", "results", ".pytest_cache",
                                      "runs", ".whl", ".gl")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the source tree, without build outputs."""
    src = tmp_path_factory.mktemp("tree") / "src"
    shutil.copytree(REPO, src, ignore=_COPY_IGNORE)
    return src


# Loads setup.py with setup() recorded instead of run, and prints what it would build as JSON.
_PROBE = textwrap.dedent("""
    import json, os, runpy, setuptools
    recorded = {}
    setuptools.setup = lambda **kw: recorded.update(kw)
    ns = runpy.run_path("setup.py")
    (ext,) = recorded["ext_modules"]
    print(json.dumps({
        "note": ns["BUILD_NOTE"],
        "sources": ext.sources,
        "cxx": {"include_dirs": ext.include_dirs, "define_macros": ext.define_macros,
                "undef_macros": ext.undef_macros, "flags": ext.extra_compile_args["cxx"]},
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
    }))
""")


def _probe(tree, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("AUGCL_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU visible, on any machine
    env.update(env_overrides)
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fake_cuda_home(tmp_path_factory):
    """A CUDA_HOME setup.py accepts (it has bin/nvcc): enough to choose a CUDA build, which these tests never run."""
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build: setup.py never builds the CUDA kernels with it")
    home = tmp_path_factory.mktemp("cuda")
    (home / "bin").mkdir()
    (home / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    return str(home)


def _is_cuda(build):
    return any(s.endswith(".cu") for s in build["sources"])


def test_no_gpu_builds_cpu_only_and_says_how_to_get_cuda(tree):
    build = _probe(tree)
    assert not _is_cuda(build), build["sources"]
    assert "csrc/augcl.cpp" in build["sources"]
    assert "CPU kernels only" in build["note"] and "AUGCL_CUDA=1" in build["note"], build["note"]


def test_augcl_cuda_0_wins_over_an_arch_list(tree):
    build = _probe(tree, AUGCL_CUDA="0", TORCH_CUDA_ARCH_LIST="9.0")
    assert not _is_cuda(build) and "AUGCL_CUDA=0" in build["note"], build


def test_bad_augcl_cuda_value_is_an_error(tree):
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, env=dict(os.environ, AUGCL_CUDA="maybe"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "AUGCL_CUDA='maybe'" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("ask", [{"AUGCL_CUDA": "1"}, {"TORCH_CUDA_ARCH_LIST": "8.0"}])
def test_cuda_is_built_when_asked_for(tree, fake_cuda_home, ask):
    build = _probe(tree, CUDA_HOME=fake_cuda_home, **ask)
    assert _is_cuda(build) and "CUDA kernels" in build["note"], build
    # AUGCL_CUDA=1 with no GPU visible compiles for A100 and H100/H200; an explicit list is kept.
    assert build["arch_list"] == ask.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")


def test_cpp_files_compile_alike_with_and_without_cuda(tree, fake_cuda_home):
    """A CUDA build after a CPU-only one must not recompile the C++ CPU kernels: ninja recompiles an object whose
    command line changed, so include dirs, defines and flags of the .cpp files must not depend on the build kind.
    Only csrc/augcl.cpp differs (AUGCL_WITH_CUDA), through a generated wrapper with its own object."""
    cpu = _probe(tree)
    cuda = _probe(tree, AUGCL_CUDA="1", CUDA_HOME=fake_cuda_home)
    assert cpu["cxx"] == cuda["cxx"]
    cpu_kernels = [s for s in cpu["sources"] if s.startswith("csrc/cpu/")]
    assert cpu_kernels and set(cpu_kernels) <= set(cuda["sources"])
    (wrapper,) = set(cuda["sources"]) - set(cpu["sources"]) - {s for s in cuda["sources"] if s.endswith(".cu")}
    text = (tree / wrapper).read_text()
    assert "#define AUGCL_WITH_CUDA 1" in text and os.path.join("csrc", "augcl.cpp") in text


def test_editable_build_keeps_its_objects(tree):
    """setuptools compiles an editable install in a fresh temporary folder; setup.py's build_ext moves it to the
    persistent build/temp.* folder, where ninja finds the objects of the previous install."""
    code = textwrap.dedent("""
        import runpy, setuptools
        from setuptools.dist import Distribution
        recorded = {}
        setuptools.setup = lambda **kw: recorded.update(kw)
        runpy.run_path("setup.py")
        for editable in (True, False):
            dist = Distribution(recorded)
            dist.get_command_obj("build").build_temp = "/tmp/fresh-temporary-folder"
            cmd = dist.get_command_obj("build_ext")
            cmd.editable_mode = editable
            cmd.ensure_finalized()
            print(cmd.build_temp)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=dict(os.environ, AUGCL_CUDA="0"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    editable, regular = r.stdout.split()[-2:]
    assert editable.startswith(os.path.join(str(tree), "build", "temp.")), editable
    assert regular == "/tmp/fresh-temporary-folder"


@pytest.mark.slow
def test_sdist_holds_every_file_the_build_and_the_tests_read(tree, tmp_path):
    """The sdist carries the headers and CUDA sources even when made on a CPU-only machine (or ``pip install
    augcl-*.tar.gz`` fails, or silently drops its CUDA kernels, on a GPU machine), the tests' conftest.py and
    _devices.py (without them the tests cannot run from it), the benchmark scripts a test runs, and the licence."""
    env = dict(os.environ, AUGCL_CUDA="0")  # as on a machine without a CUDA toolkit
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (archive,) = glob.glob(str(tmp_path / "dist" / f"augcl-{augcl.__version__}.tar.gz"))
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(next(n for n in tar.getnames() if n.endswith("/PKG-INFO"))).read().decode()
    wanted = {os.path.relpath(p, REPO) for pattern in ("csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.h", "kernels/*.py",
                                                       "tests/*.py", "benchmarks/*.py")
              for p in glob.glob(os.path.join(REPO, pattern), recursive=True)}
    assert any(w.endswith(".cu") for w in wanted) and any(w.endswith(".h") for w in wanted)
    assert {"tests/conftest.py", "tests/_devices.py", "benchmarks/preflight.py"} <= wanted
    missing = sorted(wanted - names)
    assert not missing, f"the sdist lacks {missing}"
    assert {"setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "augcl/__init__.py"} <= names
    assert not [n for n in names if n.startswith("build/") or n.endswith((".so", ".pyc"))]
    assert "License-Expression: BSD-3-Clause" in pkg_info and "License-File: LICENSE" in pkg_info


def _shadowing_cwd(tmp_path):
    """A working directory holding a folder ``augcl`` without __init__.py, like the parent of a clone named augcl."""
    (tmp_path / "augcl").mkdir()
    (tmp_path / "augcl" / "README.md").write_text("a clone's root, say\n")
    return tmp_path


def test_folder_named_augcl_in_cwd_does_not_shadow_the_install(tmp_path):
    cwd = _shadowing_cwd(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import augcl; print(augcl.__file__, augcl.__version__)"], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    where, version = r.stdout.split()[-2:]
    assert where == os.path.realpath(augcl.__file__) or where == augcl.__file__, where
    assert version == augcl.__version__
    r = subprocess.run([sys.executable, "-m", "augcl.train", "--help"], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stdout[-1000:] + r.stderr[-2000:]


def test_train_refuses_a_namespace_augcl_at_import(tmp_path):
    """Where ``augcl`` does resolve to such a folder (an install made before the fix, say), ``python -m augcl.train``
    stops before training with one line naming the folder, instead of failing after the run. Python runs without
    site-packages here, so nothing but the folder can provide ``augcl``."""
    cwd = _shadowing_cwd(tmp_path)
    main = os.path.join(REPO, "augcl", "train", "__main__.py")
    code = f"import runpy, sys; sys.path.insert(0, {str(cwd)!r}); runpy.run_path({main!r}, run_name='__main__')"
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(cwd / "augcl") in r.stderr and "__init__.py" in r.stderr, r.stderr


def test_ci_runs_the_readme_test_command():
    """.ci/run is the README's test command verbatim (the one that asks for the CUDA compile), so what CI checks is
    what a reader runs."""
    with open(os.path.join(REPO, ".ci", "run")) as f:
        command = [line for line in f.read().splitlines() if line.strip()][-1]
    assert "AUGCL_CUDA=1 pip install" in command and "pytest" in command, command
    with open(os.path.join(REPO, "README.md")) as f:
        assert command in f.read(), f"README.md does not show the command .ci/run runs: {command}"
