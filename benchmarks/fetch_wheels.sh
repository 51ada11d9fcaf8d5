#!/usr/bin/env bash
# Fetch, on a machine with the package index, the peer libraries the GPU benchmarks compare against, as wheels in
# .whl/ (git-ignored), for the device machine (Python 3.12, no internet). Its image already has timm,
# huggingface-hub, scipy, scikit-learn, pyyaml and safetensors (the device tool's KINDS.md), so only these travel
# (about 8 MB; a device call carries at most 64 MiB with the working tree). Then, for example:
#   run(command="bash benchmarks/gpu_session.sh quick", carry=[".whl"])
# gpu_session.sh installs .whl/*.whl to /tmp/site and puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  lightly==1.6.0 pytorch-metric-learning==2.9.0 inf-cl==1.2.1 kornia==0.9.0 kornia-rs==0.2.0
ls -la .whl
