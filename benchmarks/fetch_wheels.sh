#!/usr/bin/env bash
# Fetch, on a machine with the package index, the wheels a GPU session needs, into .whl/ (git-ignored), for the
# device machine: an H200 with Python 3.12, torch 2.11 and triton 3.6, no internet. Its image already has timm,
# huggingface-hub, scipy, scikit-learn, pyyaml, safetensors and an unknown setuptools (the device tool's
# KINDS.md), so only these travel (about 10 MB; a device call carries at most 64 MiB with the working tree):
#
# * setuptools 80.9.0: pyproject.toml's PEP 639 licence (`license = "BSD-3-Clause"`) needs setuptools >= 77 at
#   build time, and `pip install --no-build-isolation` builds with the environment's setuptools. gpu_session.sh
#   puts /tmp/site first on PYTHONPATH, so this one builds the extension whatever the image has.
# * the peer libraries the benchmarks compare against (lightly, pytorch-metric-learning, inf-cl, kornia).
#
# Then: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  setuptools==80.9.0 lightly==1.6.0 pytorch-metric-learning==2.9.0 inf-cl==1.2.1 kornia==0.9.0 kornia-rs==0.2.0
ls -la .whl
