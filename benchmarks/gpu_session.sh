#!/usr/bin/env bash
# The whole first GPU session in ONE device call: build, GPU tests, compute-sanitizer, headline benchmarks and the
# performance candidates side by side. /work/notes/gpu_runbook.md (merged into benchmarks/README.md) says what each
# step decides.
#
#   bash benchmarks/fetch_wheels.sh        # once, on a machine with the package index: .whl/ (setuptools, peers)
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
#   bash benchmarks/gpu_session.sh --dry-run  # the same steps on a CPU: Triton under the interpreter, tiny shapes,
#                                              # the sanitizer skipped with its reason (CI: tests/test_gpu_session.py)
#   bash benchmarks/gpu_session.sh --sweep bf16   # a later session: build, then one full benchmark sweep (bf16,
#                                              # fp32, hallucinator-*, unmix-*, sinkhorn-*, train, topk-attention-*;
#                                              # see SWEEPS below)
#
# Steps and their time limits (seconds; each runs under `timeout`, the sum is checked against BUDGET_S = 480, which
# leaves a 10-minute call room for the machine's start and a rerun of a short step within 15 minutes of device time):
#
#   env 10        nvidia-smi, versions of python / torch / triton / setuptools / nvcc
#   wheels 10     .whl/*.whl installed to /tmp/site, first on PYTHONPATH (setuptools >= 77 for the build, peers)
#   build 180     pip install -e . with the CUDA kernels for sm_90 (TORCH_CUDA_ARCH_LIST=9.0); the session ABORTS here
#                 when the build fails or augcl._C has no CUDA kernels (the GPU tests would only skip)
#   tests-* 130   three groups, each its own pytest run with --maxfail=5 (not -x) and a junit file:
#                 contrastive 50  test_contrastive*triton*.py + test_contrastive.py, whole (compiled on the GPU)
#                 kernels     45  test_*kernels*.py, test_*soft_ce*.py: the other Triton kernel files, whole (they
#                                 follow the device by themselves)
#                 marked      35  -m gpu over every other test file that has GPU tests (found by their marker)
#   sanitize 40   PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck over benchmarks/gpu_launch_all.py
#                 (every kernel once, forward and backward, at odd shapes)
#   candidates 75 benchmarks/gpu_candidates.py: the performance candidates side by side (candidates.csv)
#   headline 35   benchmarks/bench_contrastive.py, NT-Xent bf16 2N = 16384 and 65536, D = 128, augcl vs eager
#
# Output: everything lands in a scratch folder, packed after EVERY step into $OUT (at most 8 files; here 3):
# summary.txt (the step table), session.tgz (all logs, junit files, CSVs) and candidates.csv; a step killed at its
# limit, or the call itself, loses nothing packed before. Without $OUT (a local run) they go to /tmp/gpu-session-out.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

DRY=0
SWEEP=""
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --sweep) SWEEP="${2:-}" ;;
  "") ;;
  *) sed -n 2,38p "$0"; exit 2 ;;
esac
# Full benchmark sweeps, for later sessions (one device call each: env, wheels, build, then the sweep under a
# 280 s limit; its CSVs and log packed like the session's).
CODE_SIZES=16,43,64,128,256,1024,4096  # around Sinkhorn's one-program threshold B * K = 2^17 (B ~ 43 at K = 3000)
declare -A SWEEPS=(
  [bf16]="python3 benchmarks/bench_contrastive.py --dtypes bf16 --tag bf16"
  [fp32]="python3 benchmarks/bench_contrastive.py --dtypes fp32 --tag fp32"
  [hallucinator-bf16]="python3 benchmarks/bench_hallucinator.py --device cuda --full --dtypes bf16 --tag bf16"
  [hallucinator-fp32]="python3 benchmarks/bench_hallucinator.py --device cuda --full --dtypes fp32 --tag fp32"
  [unmix-bf16]="python3 benchmarks/bench_unmix.py --device cuda --full --dtypes bf16 --tag bf16"
  [unmix-uint8]="python3 benchmarks/bench_unmix.py --device cuda --full --dtypes uint8 --tag uint8"
  [sinkhorn-fp32]="python3 benchmarks/bench_sinkhorn.py --device cuda --dtype fp32 --tag fp32"
  [sinkhorn-codes]="python3 benchmarks/bench_sinkhorn.py --device cuda --sinkhorn-only --tag codes --sizes $CODE_SIZES"
  [train]="python3 benchmarks/bench_train.py --device cuda --gpu-config --amp bf16 --tag bf16"
  [topk-attention-bf16]="python3 benchmarks/bench_topk_attention.py --device cuda --gpu-grid --batches 256 --dtypes bf16 --backends triton --peers eager,sdpa --rep 20 --cap-s 5 --tag gpu-grid-bf16"
  [topk-attention-compile]="python3 benchmarks/bench_topk_attention.py --device cuda --batches 256 --heads 12 --head-dims 64 --dtypes bf16,fp32 --tag compile"
)
if [ -n "$SWEEP" ] && [ -z "${SWEEPS[$SWEEP]:-}" ]; then
  echo "gpu_session: --sweep takes one of: ${!SWEEPS[*]}" >&2
  exit 2
fi

BUDGET_S=480
OUT="${OUT:-/tmp/gpu-session-out}"
SCRATCH="${GPU_SESSION_SCRATCH:-$(mktemp -d /tmp/gpu-session.XXXXXX)}"
mkdir -p "$OUT" "$SCRATCH/logs" "$SCRATCH/junit" "$SCRATCH/results"
SUMMARY="$SCRATCH/summary.txt"
T_START=$(date +%s)
export PYTHONUNBUFFERED=1

# Step limits, in the order the steps run. GPU_SESSION_LIMIT_SCALE (default 1) scales them for tests of the plumbing.
STEPS=(env wheels build tests-contrastive tests-kernels tests-marked sanitize candidates headline)
declare -A LIMIT=([env]=10 [wheels]=10 [build]=180 [tests-contrastive]=50 [tests-kernels]=45 [tests-marked]=35
                  [sanitize]=40 [candidates]=75 [headline]=35)
if [ -n "$SWEEP" ]; then
  STEPS=(env wheels build "sweep-$SWEEP")
  LIMIT["sweep-$SWEEP"]=280
fi
total=0
for s in "${STEPS[@]}"; do total=$((total + LIMIT[$s])); done
if [ "$total" -gt "$BUDGET_S" ]; then
  echo "gpu_session: the step limits sum to ${total}s, over the ${BUDGET_S}s budget" >&2
  exit 2
fi
SCALE="${GPU_SESSION_LIMIT_SCALE:-1}"

{
  where="on $(hostname)"
  [ $DRY = 1 ] && where="DRY RUN on $(hostname), CPU"
  echo "augcl GPU session ($where), $(date -u +%FT%TZ)"
  echo "budget ${BUDGET_S}s; step limits sum to ${total}s"
  printf '%-18s %6s %6s %4s  %s\n' step limit used rc status
} > "$SUMMARY"

pack() {
  # Everything under the scratch folder into $OUT: summary.txt, session.tgz and the candidates' CSV (3 files of the
  # 8 allowed), each written to a temporary name and renamed, so a kill while packing leaves the previous pack.
  # Logs above 4 MiB (a sanitizer flood) keep their first and last 2 MiB.
  local f
  for f in "$SCRATCH"/logs/*.log; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt 4194304 ]; then
      { head -c 2097152 "$f"; printf '\n[... cut by gpu_session.sh ...]\n'; tail -c 2097152 "$f"; } > "$f.cut" \
        && mv "$f.cut" "$f"
    fi
  done
  tar -czf "$OUT/.session.tgz.tmp" -C "$SCRATCH" . && mv "$OUT/.session.tgz.tmp" "$OUT/session.tgz"
  cp "$SUMMARY" "$OUT/.summary.tmp" && mv "$OUT/.summary.tmp" "$OUT/summary.txt"
  if [ -f "$SCRATCH/results/candidates.csv" ]; then
    cp "$SCRATCH/results/candidates.csv" "$OUT/.candidates.tmp" && mv "$OUT/.candidates.tmp" "$OUT/candidates.csv"
  fi
}

record() {  # record NAME LIMIT USED RC STATUS
  printf '%-18s %6s %6s %4s  %s\n' "$1" "$2" "$3" "$4" "$5" >> "$SUMMARY"
}

step() {
  # step NAME COMMAND...: run under the step's time limit, log to logs/NAME.log, record, pack; never stops the
  # script (the caller decides). Returns the command's exit status (124 = killed at the limit).
  local name="$1"; shift
  local limit; limit=$(awk -v l="${LIMIT[$name]}" -v s="$SCALE" 'BEGIN { v = int(l * s); print (v < 1 ? 1 : v) }')
  local t0 rc used status
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*" | tee -a "$SCRATCH/logs/session.log"
  if declare -F "$1" > /dev/null; then
    # a function of this script: timeout runs programs, so it runs in a bash that inherits it (export -f)
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@" > "$SCRATCH/logs/$name.log" 2>&1
  else
    timeout -k 5 "$limit" "$@" > "$SCRATCH/logs/$name.log" 2>&1
  fi
  rc=$?
  used=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status="KILLED at its ${limit}s limit" ;;
    *) status="exit $rc" ;;
  esac
  record "$name" "$limit" "$used" "$rc" "$status"
  tail -n 3 "$SCRATCH/logs/$name.log" | sed "s/^/    $name: /" | tee -a "$SCRATCH/logs/session.log"
  pack
  return $rc
}

skip() {  # skip NAME REASON
  record "$1" "${LIMIT[$1]}" 0 - "skipped: $2"
  echo "=== $1 skipped: $2" | tee -a "$SCRATCH/logs/session.log"
  pack
}

finish() {
  echo "total ${1}: $(( $(date +%s) - T_START ))s of the ${BUDGET_S}s budget" >> "$SUMMARY"
  pack
  cat "$SUMMARY"
}

# ------------------------------------------------------------------------------------------------ environment
if [ $DRY = 1 ]; then
  export TRITON_INTERPRET=1  # every Triton kernel on the CPU through the interpreter
  DEVICE=cpu
else
  export TRITON_INTERPRET=0  # compiled kernels; some test files default it to 1 when they see no GPU
  DEVICE=cuda
fi

env_report() {
  command -v nvidia-smi > /dev/null && nvidia-smi
  python3 - <<'EOF'
import platform, sys
import setuptools, torch
print("python", sys.version.split()[0], platform.machine())
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", gpu)
print("setuptools", setuptools.__version__)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
EOF
  command -v nvcc > /dev/null && nvcc --version | tail -2
  command -v compute-sanitizer > /dev/null && compute-sanitizer --version | head -2
  return 0
}
export -f env_report
step env env_report

# The device machine has no package index: wheels carried in .whl/ (benchmarks/fetch_wheels.sh) go to /tmp/site,
# first on the path, so that a newer setuptools (pyproject's PEP 639 licence needs >= 77) builds the extension.
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  SITE="${GPU_SESSION_SITE:-/tmp/site}"
  step wheels python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .whl/*.whl && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import setuptools; print('setuptools', setuptools.__version__, 'from', setuptools.__file__)" \
    >> "$SCRATCH/logs/wheels.log" 2>&1
else
  skip wheels "no .whl/ folder (benchmarks/fetch_wheels.sh): the machine's own setuptools and packages"
fi

# ------------------------------------------------------------------------------------------------------ build
check_build() {
  # augcl imports from this tree, augcl._C is loaded, and on the GPU its CUDA kernels are there and Triton compiles
  python3 - "$DRY" <<'EOF'
import sys
dry = sys.argv[1] == "1"
from augcl import _extension as E
import augcl.kernels.contrastive as K
print("augcl._C loaded:", E.LOADED, "with CUDA:", E.WITH_CUDA, E.LOAD_ERROR or "")
print("triton kernels interpreted:", K._interpreted())
if not E.LOADED:
    sys.exit("augcl._C did not load")
if not dry and (not E.WITH_CUDA or K._interpreted()):
    sys.exit("no CUDA kernels in augcl._C, or Triton in interpreter mode: the GPU tests would only skip")
EOF
  python3 -m augcl.info
}
build() {
  if [ -n "${GPU_SESSION_BUILD_CMD:-}" ]; then
    bash -c "$GPU_SESSION_BUILD_CMD" || return $?
  elif [ $DRY = 1 ]; then
    echo "dry run: no rebuild (CI built augcl with AUGCL_CUDA=1); on the GPU this step runs:"
    echo "  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e ."
  else
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 AUGCL_CUDA=1 \
      python3 -m pip install --no-build-isolation --no-deps -e . || return $?
  fi
  check_build
}
export DRY
export -f build check_build
if ! step build build; then
  echo "ABORTED: the build failed (see logs/build.log); nothing after it was run" >> "$SUMMARY"
  finish aborted
  exit 1
fi

if [ -n "$SWEEP" ]; then
  # (word splitting of the command line is intended: the table above holds plain arguments)
  # shellcheck disable=SC2086
  step "sweep-$SWEEP" ${SWEEPS[$SWEEP]} --out "$SCRATCH/results"
  finish done
  exit 0
fi

# ------------------------------------------------------------------------------------------------------ tests
# Groups of files, each found by name so that renamed or split files are still picked up; a group with no file is
# recorded as skipped. The device-following files run whole; every other file with a test marked gpu runs -m gpu.
# In the dry run every group runs -m gpu (the GPU tests skip on a CPU: the commands, flags and paths are proven,
# not the kernels, which CI's own suite covers under the interpreter).
PYTEST=(python3 -m pytest -q -rs --maxfail=5 -p no:cacheprovider)
if [ $DRY = 0 ] && [ "${GPU_SESSION_XDIST:-8}" != 0 ] && python3 -c "import xdist" 2> /dev/null; then
  # one GPU, several processes (compiling Triton kernels is most of a first run; the on-disk cache shares them)
  PYTEST+=(-n "${GPU_SESSION_XDIST:-8}")
fi
# dry run: only the GPU tests (marked or named gpu), which skip on a CPU
[ $DRY = 1 ] && DRY_MARK=(-k gpu) || DRY_MARK=()

files_like() { local f; for f in "$@"; do [ -f "$f" ] && echo "$f"; done; }
mapfile -t G_CONTRASTIVE < <(files_like tests/test_contrastive*triton*.py tests/test_contrastive.py)
mapfile -t G_KERNELS < <(files_like tests/test_*kernels*.py tests/test_*soft_ce*.py)
EXCLUDE=("${G_CONTRASTIVE[@]}" "${G_KERNELS[@]}" tests/test_gpu_session.py)  # (the last one runs this script)
mapfile -t G_MARKED < <(grep -lE "pytest\.mark\.gpu|gpu_only_marker" tests/test_*.py 2> /dev/null \
                         | grep -vxF -f <(printf '%s\n' "${EXCLUDE[@]}"))

run_group() {  # run_group NAME MARK_ARGS... -- FILES...
  local name="$1"; shift
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  if [ $# -eq 0 ]; then skip "tests-$name" "no test file of this group found"; return; fi
  step "tests-$name" "${PYTEST[@]}" "${args[@]}" --junitxml="$SCRATCH/junit/$name.xml" "$@"
}
run_group contrastive "${DRY_MARK[@]}" -- "${G_CONTRASTIVE[@]}"
run_group kernels "${DRY_MARK[@]}" -- "${G_KERNELS[@]}"
run_group marked -m gpu -- "${G_MARKED[@]}"

# -------------------------------------------------------------------------------------------------- sanitizer
if [ $DRY = 1 ]; then
  # The launch script itself still runs (plainly, under the interpreter), so the sanitizer step's command is proven.
  python3 benchmarks/gpu_launch_all.py --device cpu > "$SCRATCH/logs/launch-all-dry.log" 2>&1
  skip sanitize "dry run: compute-sanitizer needs a CUDA GPU (gpu_launch_all.py ran without it: exit $?)"
elif ! command -v compute-sanitizer > /dev/null; then
  skip sanitize "compute-sanitizer is not on the PATH"
else
  step sanitize env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --print-limit 50 \
    --error-exitcode 3 python3 benchmarks/gpu_launch_all.py --device cuda
fi

# ------------------------------------------------------------------------------------------------- benchmarks
if [ $DRY = 1 ]; then
  step candidates python3 benchmarks/gpu_candidates.py --out "$SCRATCH/results" --dry-run
  step headline python3 benchmarks/bench_contrastive.py --device cpu --sizes 64 --dims 16 --dtypes fp32 \
    --backends triton,reference --peers eager --rep 2 --warmup 1 --no-memtest --tag dry-run --out "$SCRATCH/results"
else
  step candidates python3 benchmarks/gpu_candidates.py --out "$SCRATCH/results"
  step headline python3 benchmarks/bench_contrastive.py --device cuda --sizes 16384,65536 --dims 128 --dtypes bf16 \
    --backends triton,cuda --peers eager --rep 10 --warmup 2 --cap-s 5 --tag session --out "$SCRATCH/results"
fi

finish done
