#!/usr/bin/env bash
# One GPU session's checks, in the order they are worth the device time (each step's log lands in $OUT).
#
#   bash benchmarks/gpu_session.sh build      # build augcl._C with CUDA against the machine's torch (~3-6 min)
#   bash benchmarks/gpu_session.sh test       # CUDA + Triton tests on the GPU (the *_gpu_* twins and kernel tests)
#   bash benchmarks/gpu_session.sh sanitize   # the GPU tests once under compute-sanitizer (memcheck)
#   bash benchmarks/gpu_session.sh bench-bf16 # NT-Xent benchmark, bf16 sweep  (split to stay under 10 min a call)
#   bash benchmarks/gpu_session.sh bench-fp32 # NT-Xent benchmark, fp32 sweep
#
# The device machine has no internet: the peer libraries (lightly, pytorch-metric-learning, timm, inf-cl) travel as
# wheels in .whl/ (see the device tool's README) and are installed to /tmp/site when present. Commit the files that
# come back under benchmarks/results/ with the device name and date in their names.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
GPU_TESTS="tests/test_contrastive.py -k gpu"
case "${1:-}" in
  build)
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
    python3 -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -5 | tee "$OUT/build.log"
    python3 -m augcl.info 2>&1 | tee "$OUT/augcl-info.txt" ;;
  test)
    python3 -m pytest -q $GPU_TESTS tests/test_contrastive_triton.py 2>&1 | tee "$OUT/gpu-tests.log" ;;
  sanitize)
    compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest -q -x $GPU_TESTS 2>&1 \
      | tee "$OUT/compute-sanitizer.log" ;;
  bench-bf16)
    python3 benchmarks/bench_contrastive.py --dtypes bf16 --tag bf16 --out "$OUT" 2>&1 | tee "$OUT/bench-bf16.log" ;;
  bench-fp32)
    python3 benchmarks/bench_contrastive.py --dtypes fp32 --tag fp32 --out "$OUT" 2>&1 | tee "$OUT/bench-fp32.log" ;;
  *)
    sed -n 2,13p "$0"; exit 2 ;;
esac
