"""Build augcl and its compiled extension ``augcl._C``.

* C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built.
* CUDA kernels (``csrc/cuda/*.cu``) are built when a CUDA toolkit is found and torch is a CUDA build.
  ``AUGCL_CUDA=0`` forces them off, ``AUGCL_CUDA=1`` makes a missing toolkit an error.
* ``CUDA_HOME`` is resolved before ``torch.utils.cpp_extension`` is imported, because that module fixes its
  own guess at import time and guesses wrong when ``nvcc`` on PATH is a wrapper script (it takes
  ``dirname(dirname(which nvcc))``). We ask nvcc itself where its toolkit is (``nvcc --dryrun`` prints TOP=).
* With no GPU visible, torch cannot pick the architectures, so ``TORCH_CUDA_ARCH_LIST`` defaults to
  ``8.0;9.0`` (A100, H100/H200) unless the user set it.
* ``kernels/`` (the Triton kernels) is installed as the subpackage ``augcl.kernels``.
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup
from setuptools.command.sdist import sdist as _sdist

ROOT = os.path.dirname(os.path.abspath(__file__))


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


_want_cuda = os.environ.get("AUGCL_CUDA", "auto").lower()
_cuda_home = None if _want_cuda in ("0", "off", "false", "no") else _find_cuda_home()
if _cuda_home is not None:
    os.environ["CUDA_HOME"] = _cuda_home  # must precede the cpp_extension import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

_build_cuda = _cuda_home is not None and torch.version.cuda is not None
if _want_cuda in ("1", "on", "true", "yes") and not _build_cuda:
    raise RuntimeError(
        f"AUGCL_CUDA=1 but CUDA cannot be built: CUDA_HOME={_cuda_home!r}, torch.version.cuda={torch.version.cuda!r}"
    )
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


debug = os.environ.get("AUGCL_DEBUG", "0") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
cxx_flags += ["-fopenmp", "-fdiagnostics-color=always"]
nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
nvcc_flags += ["--expt-relaxed-constexpr"]  # torch adds the -std it needs (C++20 from 2.10 on)

sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
# Every file the build may read but does not compile here: the headers, and the CUDA sources of a CPU-only build.
# As ``depends`` they trigger rebuilds when edited; the sdist command below adds them to the sdist (recent setuptools
# does so by itself, setuptools <= 65 does not), so an sdist made on a CPU-only machine still builds the CUDA kernels
# elsewhere.
depends = sorted(set(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True)
                     + glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")) - set(sources))
define_macros = []
if _build_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    define_macros.append(("AUGCL_WITH_CUDA", "1"))
    cuda_includes, cuda_libdirs, cuda_links = _cuda_paths_and_links()
    depends = [d for d in depends if d not in sources]
    ext = CUDAExtension(
        "augcl._C", sources, define_macros=define_macros, depends=depends,
        include_dirs=cuda_includes, library_dirs=cuda_libdirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"] + cuda_links,
    )
else:
    ext = CppExtension(
        "augcl._C", sources, define_macros=define_macros, depends=depends,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
    )

packages = find_packages(include=["augcl", "augcl.*"]) + ["augcl.kernels"]


class sdist(_sdist):
    """The sdist with every csrc file the build may read (see ``depends``), whatever the setuptools version."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, sorted(set(files) | set(depends) | set(sources)))

setup(
    packages=packages,
    package_dir={"augcl.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "sdist": sdist},
    zip_safe=False,
)
