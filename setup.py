"""Build augcl and its compiled extension ``augcl._C``.

* The C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built.
* The CUDA kernels (``csrc/cuda/*.cu``) are built only when asked for: a GPU is visible, ``TORCH_CUDA_ARCH_LIST``
  is set, or ``AUGCL_CUDA=1``; ``AUGCL_CUDA=0`` forces them off. Otherwise the build is CPU-only and says so:
  compiling them for GPUs that are not there took most of a 16-minute install on a 2-core machine. They also
  need a CUDA build of torch and a CUDA toolkit; ``AUGCL_CUDA=1`` makes a missing one an error, the other
  requests fall back to a CPU-only build with a line saying why.
* With no GPU visible torch cannot pick the architectures, so ``AUGCL_CUDA=1`` alone compiles for ``8.0;9.0``
  (A100, H100/H200).
* Nothing unchanged is recompiled. Objects live in ``build/temp.<platform>-<python>`` (an editable install would
  otherwise compile in a fresh temporary folder every time) and ninja rebuilds only objects whose source,
  headers or command line changed. The ``.cpp`` files get the same command line in CPU-only and CUDA builds
  (CUDA include paths go to nvcc only, and ``AUGCL_WITH_CUDA`` is defined in one generated file that wraps
  ``csrc/augcl.cpp``), so a CUDA build after a CPU-only one compiles only the CUDA files and that wrapper.
* ``CUDA_HOME`` is resolved before ``torch.utils.cpp_extension`` is imported, because that module fixes its own
  guess at import time and guesses wrong when ``nvcc`` on PATH is a wrapper script (it takes
  ``dirname(dirname(which nvcc))``). We ask nvcc itself where its toolkit is (``nvcc --dryrun`` prints TOP=).
* ``kernels/`` (the Triton kernels) is installed as the subpackage ``augcl.kernels``.
* An editable install also puts this folder on ``sys.path`` (see ``editable_wheel``), so a folder named ``augcl``
  in the working directory (a clone's root, say) cannot shadow the installed package.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import torch
from setuptools import find_packages, setup
from setuptools.command.editable_wheel import editable_wheel as _editable_wheel

ROOT = os.path.dirname(os.path.abspath(__file__))
_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


def _cuda_request():
    """(wanted, required, why): whether the CUDA kernels are asked for, whether failing to build them is an error,
    and the reason, for the build's one-line report."""
    flag = os.environ.get("AUGCL_CUDA", "auto").strip().lower()
    if flag in _OFF:
        return False, False, "AUGCL_CUDA=0"
    if flag in _ON:
        return True, True, "AUGCL_CUDA=1"
    if flag not in ("", "auto"):
        raise RuntimeError(f"AUGCL_CUDA={flag!r}: expected 1 (build the CUDA kernels), 0 (do not) or auto")
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, False, f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
    if torch.cuda.is_available():  # imports no cpp_extension, so CUDA_HOME can still be set below
        return True, False, "a GPU is visible"
    return False, False, "no GPU visible, TORCH_CUDA_ARCH_LIST unset"


def _nvcc_toolkit_root():
    """Toolkit root as reported by nvcc itself, or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-E", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if not m:
        return None
    top = os.path.realpath(m.group(1).strip())
    return top if os.path.isfile(os.path.join(top, "bin", "nvcc")) else None


def _find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.isfile(os.path.join(path, "bin", "nvcc")):
            return path
    top = _nvcc_toolkit_root()
    if top:
        return top
    for path in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if os.path.isfile(os.path.join(path, "bin", "nvcc")):
            return path
    return None


_want_cuda, _need_cuda, _why = _cuda_request()
_cuda_home = _find_cuda_home() if _want_cuda else None
if _cuda_home is not None:
    os.environ["CUDA_HOME"] = _cuda_home  # must precede the cpp_extension import

from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension, CppExtension, CUDAExtension, include_paths,
)

_build_cuda = _want_cuda and _cuda_home is not None and torch.version.cuda is not None
if _build_cuda:
    BUILD_NOTE = f"augcl: building the C++ CPU and the CUDA kernels ({_why})"
elif _want_cuda:
    _missing = "no CUDA toolkit (nvcc) found" if _cuda_home is None else \
        f"torch {torch.__version__} is not a CUDA build"
    if _need_cuda:
        raise RuntimeError(f"AUGCL_CUDA=1 but the CUDA kernels cannot be built: {_missing} "
                           f"(CUDA_HOME={_cuda_home!r}, torch.version.cuda={torch.version.cuda!r})")
    BUILD_NOTE = f"augcl: building the C++ CPU kernels only: {_why}, but {_missing}"
elif _why == "AUGCL_CUDA=0":
    BUILD_NOTE = "augcl: building the C++ CPU kernels only (AUGCL_CUDA=0)"
else:
    BUILD_NOTE = (f"augcl: building the C++ CPU kernels only ({_why}); "
                  "set AUGCL_CUDA=1 or TORCH_CUDA_ARCH_LIST to compile the CUDA kernels too")
if _build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"


def _pip_cuda_library_dirs():
    """Include and library dirs of the CUDA math libraries that torch's CUDA wheels install as pip packages.

    A toolkit may ship without cuBLAS/cuSPARSE (as here: /usr/local/cuda-13.0 has nvcc and the runtime only),
    while torch's headers include cusparse.h and our CUDA kernel calls cuBLAS. The wheels put them under
    site-packages/nvidia/cu13/{include,lib} (CUDA 13) or nvidia/<name>/{include,lib} (CUDA 12).
    """
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return [], []
    includes, libs = [], []
    for root in list(getattr(nvidia, "__path__", [])):
        for header in glob.glob(os.path.join(root, "**", "include", "cublas_v2.h"), recursive=True) + \
                glob.glob(os.path.join(root, "**", "include", "cusparse.h"), recursive=True):
            d = os.path.dirname(header)
            if d not in includes:
                includes.append(d)
        for lib in glob.glob(os.path.join(root, "**", "lib", "libcublas.so*"), recursive=True):
            d = os.path.dirname(lib)
            if d not in libs:
                libs.append(d)
    return includes, libs


def _cuda_paths_and_links():
    """(include_dirs, library_dirs, link_args) needed for cuBLAS beyond what CUDAExtension adds."""
    includes, link = [], []
    have_headers = all(os.path.isfile(os.path.join(_cuda_home, "include", h)) for h in ("cublas_v2.h", "cusparse.h"))
    pip_includes, pip_libs = _pip_cuda_library_dirs()
    if not have_headers:
        includes += pip_includes
    toolkit_cublas = glob.glob(os.path.join(_cuda_home, "lib64", "libcublas.so")) + \
        glob.glob(os.path.join(_cuda_home, "lib", "x64", "cublas.lib"))
    if toolkit_cublas:
        link.append("-lcublas")
        return includes, [], link
    for d in pip_libs:
        versioned = sorted(glob.glob(os.path.join(d, "libcublas.so.*")))
        if versioned:
            # Only a versioned soname is shipped (no libcublas.so link): name it exactly, and add an rpath.
            link += [f"-L{d}", f"-l:{os.path.basename(versioned[0])}", f"-Wl,-rpath,{d}"]
            return includes, [d], link
    link.append("-lcublas")
    return includes, [], link


def _module_source_with_cuda():
    """A generated source that compiles ``csrc/augcl.cpp`` with ``AUGCL_WITH_CUDA`` defined, for CUDA builds.

    A define in the extension's flags would change the command line of every ``.cpp`` file and make ninja recompile
    them all when a CUDA build follows a CPU-only one; only this file needs it. Rewritten only when its text changes,
    since a new mtime alone makes ninja recompile it."""
    path = os.path.join("build", "generated", "augcl_with_cuda.cpp")
    text = ("// Generated by setup.py for CUDA builds: csrc/augcl.cpp with AUGCL_WITH_CUDA defined here only.\n"
            "#define AUGCL_WITH_CUDA 1\n"
            f'#include "{os.path.join(ROOT, "csrc", "augcl.cpp")}"\n')
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


debug = os.environ.get("AUGCL_DEBUG", "0") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
cxx_flags += ["-fopenmp", "-fdiagnostics-color=always"]
nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
nvcc_flags += ["--expt-relaxed-constexpr"]  # torch adds the -std it needs (C++20 from 2.10 on)

cpu_sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
# Headers, and the CUDA sources of a CPU-only build: files the build may read but does not compile here. Listed so
# that editing one triggers a rebuild even where ninja's own header tracking does not reach (the setuptools check
# that decides whether to build at all).
depends = sorted(set(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True)
                     + cuda_sources))
# The .cpp command line must not depend on the build kind (see the module docstring): same include dirs, no
# defines, same flags. CppExtension's include dirs are torch's own; CUDA ones are given to nvcc alone.
cpp_include_dirs = include_paths()
if _build_cuda:
    sources = [_module_source_with_cuda()] + [s for s in cpu_sources if s != "csrc/augcl.cpp"] + cuda_sources
    cuda_includes, cuda_libdirs, cuda_links = _cuda_paths_and_links()
    ext = CUDAExtension(
        "augcl._C", sources, depends=[d for d in depends if d not in sources] + ["csrc/augcl.cpp"],
        library_dirs=cuda_libdirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags + [
            f"-I{d}" for d in include_paths(device_type="cuda") + cuda_includes if d not in cpp_include_dirs]},
        extra_link_args=["-fopenmp"] + cuda_links,
    )
    ext.include_dirs = list(cpp_include_dirs)
else:
    ext = CppExtension(
        "augcl._C", cpu_sources, depends=depends,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
    )

packages = find_packages(include=["augcl", "augcl.*"]) + ["augcl.kernels"]


class build_ext(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension (ninja), with a persistent object folder for editable installs and the one-line
    report of what is built."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            # setuptools points editable builds at a fresh temporary folder, which recompiles everything on every
            # install; use the folder a regular build uses, where ninja finds its previous objects and log.
            self.build_temp = os.path.join(
                ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")

    def run(self):
        print(BUILD_NOTE, flush=True)
        super().run()


class _WithRootOnPath:
    """Wraps setuptools' editable-install strategy and adds ``augcl-root.pth``, which puts ROOT on ``sys.path``.

    setuptools installs this layout (``kernels/`` mapped to ``augcl.kernels``) through an import hook that Python
    consults only after ``sys.path``, so a directory ``augcl`` without ``__init__.py`` in the working directory
    (a clone's root) wins as a namespace package, and ``import augcl`` gives an empty module. With ROOT on
    ``sys.path`` the regular package ROOT/augcl is found there, and a regular package beats a namespace portion
    wherever it lies on the path. The hook still serves ``augcl.kernels``."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr("augcl-root.pth", (ROOT + "\n").encode())

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)


class editable_wheel(_editable_wheel):
    """setuptools' editable install plus ROOT on ``sys.path`` (``_WithRootOnPath``)."""

    def _select_strategy(self, name, tag, build_lib):
        return _WithRootOnPath(super()._select_strategy(name, tag, build_lib))


setup(
    packages=packages,
    package_dir={"augcl.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext, "editable_wheel": editable_wheel},
    zip_safe=False,
)
