"""Loads the compiled extension ``augcl._C`` once and records why it could not be loaded.

The package works without it (reference and Triton backends); the dispatcher reads ``LOAD_ERROR`` to say
why the ``cpu`` and ``cuda`` backends declined.
"""
from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before our library's symbols resolve)

import importlib

try:
    _C = importlib.import_module("augcl._C")

    LOADED = True
    LOAD_ERROR: str | None = None
    WITH_CUDA = bool(getattr(_C, "with_cuda", 0))
    WITH_OPENMP = bool(getattr(_C, "with_openmp", 0))
    LIBRARY_PATH: str | None = getattr(_C, "__file__", None)
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOADED = False
    LOAD_ERROR = f"augcl._C could not be imported ({exc}); reinstall with `pip install --no-build-isolation -e .`"
    WITH_CUDA = False
    WITH_OPENMP = False
    LIBRARY_PATH = None
