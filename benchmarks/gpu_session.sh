#!/usr/bin/env bash
# One GPU session's checks, in the order they are worth the device time (each step's log lands in $OUT).
# Every step is sized for one 10-minute device call; run `all-bench` to print the benchmark steps in order.
#
#   bash benchmarks/gpu_session.sh quick         # ONE call that fits a 15-minute device budget (about 8 min): build,
#                                                #   kernel tests, a sanitizer pass and a short run of every benchmark,
#                                                #   each step under its own timeout. Start here when a GPU is lent:
#                                                #   bash benchmarks/fetch_wheels.sh, then run(command="bash
#                                                #   benchmarks/gpu_session.sh quick", carry=[".whl"], timeout_s=600)
#   bash benchmarks/gpu_session.sh build         # build augcl._C with CUDA against the machine's torch (~3-6 min)
#   bash benchmarks/gpu_session.sh test          # test-kernels, then test-ops, then test-train (split if > 10 min)
#   bash benchmarks/gpu_session.sh test-kernels  # contrastive -k gpu, test_contrastive_triton, the Triton kernel tests
#   bash benchmarks/gpu_session.sh test-ops      # the op-level test files (hallucinator, unmix, sinkhorn, unmix loss)
#   bash benchmarks/gpu_session.sh test-train    # 1-epoch training smoke runs on cuda (SimCLR+both ops, SwAV+Un-Mix)
#   bash benchmarks/gpu_session.sh sanitize      # the GPU-only kernel tests of every op under compute-sanitizer memcheck
#   bash benchmarks/gpu_session.sh bench-bf16    # NT-Xent benchmark, bf16 sweep  (split to stay under 10 min a call)
#   bash benchmarks/gpu_session.sh bench-fp32    # NT-Xent benchmark, fp32 sweep
#   bash benchmarks/gpu_session.sh bench-hallucinator-bf16   # Hallucinator, the full grid (--full), bf16
#   bash benchmarks/gpu_session.sh bench-hallucinator-fp32   # Hallucinator, --full, fp32 (TF32 off)
#   bash benchmarks/gpu_session.sh bench-unmix-fp32          # mix_images vs timm/torchvision/kornia, full grid, fp32
#   bash benchmarks/gpu_session.sh bench-unmix-bf16          # the same, bf16
#   bash benchmarks/gpu_session.sh bench-unmix-uint8         # the same, uint8 input (fused /255 + normalisation)
#   bash benchmarks/gpu_session.sh bench-sinkhorn-fp32       # SwAV Sinkhorn + loss, K 3000, B 256..4096, fp32
#   bash benchmarks/gpu_session.sh bench-sinkhorn-bf16       # the same, bf16
#   bash benchmarks/gpu_session.sh bench-sinkhorn-codes      # codes only, both Triton paths forced (threshold)
#   bash benchmarks/gpu_session.sh bench-train               # SimCLR ResNet-18 step time, batch 512, fp32 and bf16
#   bash benchmarks/gpu_session.sh all-bench                 # print the bench steps in order (one call each)
#
# Before spending device time, on any machine: python benchmarks/preflight.py compiles every Triton kernel for
# sm_80/86/90 at its launch configs and checks shared memory and registers (no GPU needed; CI runs a subset).
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
# Compiled Triton kernels: some test files set TRITON_INTERPRET=1 unless it is set (for CPU-only machines), and the
# build mode of every kernel module is fixed when it is imported, so it is pinned to 0 here.
export TRITON_INTERPRET=0
GPU_TESTS="tests/test_contrastive.py -k gpu"
KERNEL_TESTS="tests/test_contrastive_triton.py tests/test_hallucinator_kernels.py tests/test_sinkhorn_kernels.py
  tests/test_unmix_kernels.py tests/test_soft_ce.py"
OP_TESTS="tests/test_hallucinator.py tests/test_unmix.py tests/test_sinkhorn.py tests/test_unmix_loss.py"
BENCH_STEPS="bench-bf16 bench-fp32 bench-hallucinator-bf16 bench-hallucinator-fp32 bench-unmix-fp32 bench-unmix-bf16
  bench-unmix-uint8 bench-sinkhorn-fp32 bench-sinkhorn-bf16 bench-sinkhorn-codes bench-train"

test_kernels() {
  python3 -m pytest -q -rs $GPU_TESTS 2>&1 | tee "$OUT/gpu-tests.log"
  python3 -m pytest -q -rs $KERNEL_TESTS 2>&1 | tee "$OUT/gpu-tests-kernels.log"
}
test_ops() {
  python3 -m pytest -q -rs $OP_TESTS 2>&1 | tee "$OUT/gpu-tests-ops.log"
}
test_train() {
  # tests/test_train*.py have no GPU paths (they pin --device cpu); these are the GPU smoke runs of the driver.
  # Run folders in /tmp (last.pt is a ResNet-18 checkpoint); only metrics.json and log.csv come back.
  local runs; runs="$(mktemp -d)"
  { python3 -m augcl.train --data synthetic --epochs 1 --device cuda --hallucinate --unmix --amp bf16 \
      --no-progress --out "$runs/simclr" \
    && python3 -m augcl.train --method swav --data synthetic --epochs 1 --device cuda --unmix --no-progress \
      --out "$runs/swav"; } 2>&1 | tee "$OUT/gpu-train-smoke.log"
  for r in simclr swav; do
    for f in metrics.json log.csv; do [ -f "$runs/$r/$f" ] && cp "$runs/$r/$f" "$OUT/train-smoke-$r-$f"; done
  done
}

step() {  # step NAME SECONDS COMMAND...: run under a timeout, log to $OUT/quick-NAME.log, never stop the script
  local name="$1" secs="$2"; shift 2
  local t0; t0=$(date +%s)
  timeout -k 10 "$secs" "$@" > "$OUT/quick-$name.log" 2>&1
  local rc=$?
  echo "quick: $name rc=$rc $(( $(date +%s) - t0 ))s (limit ${secs}s)" | tee -a "$OUT/quick-summary.txt"
}

case "${1:-}" in
  quick)
    : > "$OUT/quick-summary.txt"
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    export MAX_JOBS=16
    step build 240 python3 -m pip install --no-build-isolation --no-deps -e .
    python3 -m augcl.info > "$OUT/augcl-info.txt" 2>&1
    step test-kernels 120 python3 -m pytest -q -x -rs $GPU_TESTS tests/test_contrastive_triton.py \
      tests/test_hallucinator_kernels.py tests/test_sinkhorn_kernels.py tests/test_unmix_kernels.py tests/test_soft_ce.py
    step sanitize 50 compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest -q -x \
      tests/test_contrastive.py -k "gpu and not large"
    step bench-nt-xent 100 python3 benchmarks/bench_contrastive.py --sizes 16384,65536 --dims 128 --dtypes bf16 \
      --rep 10 --warmup 2 --cap-s 8 --tag quick --out "$OUT"
    step bench-unmix 40 python3 benchmarks/bench_unmix.py --device cuda --full --dtypes bf16 --tag quick --out "$OUT"
    step bench-hallucinator 40 python3 benchmarks/bench_hallucinator.py --device cuda --sizes 1024,8192 --dims 128,512 \
      --dtypes bf16 --tag quick --out "$OUT"
    step bench-sinkhorn 30 python3 benchmarks/bench_sinkhorn.py --device cuda --sizes 1024,4096 --tag quick --out "$OUT"
    cat "$OUT/quick-summary.txt" ;;
  build)
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
    python3 -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -5 | tee "$OUT/build.log"
    python3 -m augcl.info 2>&1 | tee "$OUT/augcl-info.txt" ;;
  test)
    test_kernels; test_ops; test_train ;;
  test-kernels) test_kernels ;;
  test-ops) test_ops ;;
  test-train) test_train ;;
  sanitize)
    # -k "gpu and not large": the GPU-only tests of every op (contrastive twins, Hallucinator fused / per-layer and
    # TF32, Sinkhorn both paths in bf16, mix_images forward/backward) at modest shapes; memcheck slows each launch.
    compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest -q -x -rs $GPU_TESTS 2>&1 | tee "$OUT/compute-sanitizer-contrastive.log"
    compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest -q -x -rs -k "gpu and not large" \
      tests/test_hallucinator_kernels.py tests/test_sinkhorn_kernels.py tests/test_unmix_kernels.py tests/test_soft_ce.py 2>&1 \
      | tee "$OUT/compute-sanitizer.log" ;;
  bench-bf16)
    python3 benchmarks/bench_contrastive.py --dtypes bf16 --tag bf16 --out "$OUT" 2>&1 | tee "$OUT/bench-bf16.log" ;;
  bench-fp32)
    python3 benchmarks/bench_contrastive.py --dtypes fp32 --tag fp32 --out "$OUT" 2>&1 | tee "$OUT/bench-fp32.log" ;;
  bench-hallucinator-bf16|bench-hallucinator-fp32)
    dt="${1##*-}"
    python3 benchmarks/bench_hallucinator.py --device cuda --full --dtypes "$dt" --tag "$dt" --out "$OUT" 2>&1 \
      | tee "$OUT/bench-hallucinator-$dt.log" ;;
  bench-unmix-fp32|bench-unmix-bf16|bench-unmix-uint8)
    dt="${1##*-}"
    python3 benchmarks/bench_unmix.py --device cuda --full --dtypes "$dt" --tag "$dt" --out "$OUT" 2>&1 \
      | tee "$OUT/bench-unmix-$dt.log" ;;
  bench-sinkhorn-fp32|bench-sinkhorn-bf16)
    dt="${1##*-}"
    python3 benchmarks/bench_sinkhorn.py --device cuda --dtype "$dt" --tag "$dt" --out "$OUT" 2>&1 \
      | tee "$OUT/bench-sinkhorn-$dt.log" ;;
  bench-sinkhorn-codes)
    # small B too, around the one-program threshold B * K = 2^17 (B ~ 43 at K = 3000)
    python3 benchmarks/bench_sinkhorn.py --device cuda --sinkhorn-only --sizes 16,43,64,128,256,1024,4096 \
      --tag codes --out "$OUT" 2>&1 | tee "$OUT/bench-sinkhorn-codes.log" ;;
  bench-train)
    { python3 benchmarks/bench_train.py --device cuda --gpu-config --amp off --tag fp32 --out "$OUT" \
      && python3 benchmarks/bench_train.py --device cuda --gpu-config --amp bf16 --tag bf16 --out "$OUT"; } 2>&1 \
      | tee "$OUT/bench-train.log" ;;
  all-bench)
    # one device call per step (each fits 10 minutes; together they do not)
    for s in $BENCH_STEPS; do echo "bash benchmarks/gpu_session.sh $s"; done ;;
  *)
    sed -n 2,22p "$0"; exit 2 ;;
esac
