"""Shared benchmark harness for augcl: timing, peak memory, hardware limits, CSV / PNG / table output, and the
CLI, child-process and result-row helpers the bench_*.py scripts have in common.

Design notes (why it is built this way):

* Timing follows ``triton.testing.do_bench``: warm-up calls first, then ``rep`` timed calls, each preceded by
  an untimed setup (gradients dropped, and on GPU the L2 cache flushed by zeroing a 256 MiB buffer), and the
  result is summarised as the median and the 20th / 80th percentiles (linear interpolation, like
  ``torch.quantile`` which do_bench uses). GPU calls are timed with CUDA events and one
  ``torch.cuda.synchronize()`` at the end; CPU calls with ``time.perf_counter()``.
* Peak memory is the extra memory a call needs beyond its inputs, measured on the first forward+backward:
  GPU: ``max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus ``memory_allocated()`` just before
  the call (the inputs, already allocated). CPU: the caching-free CPU allocator returns memory to the OS, so
  the resident-set peak of the process is a fair measure; every CPU case runs in a fresh subprocess (no
  allocator state or fragmentation carried over from another library, and an out-of-memory stays in the child).
  In the child the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``) after the inputs are
  built, and ``extra = VmHWM after the call - VmRSS before it``. Where that file is not writable the fallback is
  the one-child-minus-baseline-child method: ``ru_maxrss`` of the case child minus ``ru_maxrss`` of a child that
  only imports and builds the inputs.
* The hardware limit of a case is a roofline ``max(flops / peak_matmul, exps / peak_exp)``. GPU peaks come from
  a table of datasheet numbers (:data:`GPU_PEAKS`); CPU peaks are measured in the same run (a large ``torch.mm``
  and ``torch.exp``), because CPU models, core counts and BLAS builds vary too much for a table.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch

MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------- CLI
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ALL = object()  # BenchParser.add_names: the option's default is every known name
UNAVAILABLE_BACKEND = "one that cannot run here is reported with the dispatcher's reason"
UNAVAILABLE_PEER = "one that cannot run here (e.g. a library that is not installed) is reported with the reason"


def int_list(text: str) -> List[int]:
    """argparse type: a comma list of integers ("256,1024")."""
    return [int(x) for x in text.split(",") if x]


def name_list(text: str) -> List[str]:
    """argparse type: a comma list of names (blanks around and empty items dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _number(kind: type, least: float, what: str) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


non_negative_int = _number(int, 0, "a whole number >= 0")
positive_int = _number(int, 1, "a whole number >= 1")
positive_float = _number(float, float.fromhex("0x1p-1074"), "a number > 0")


def reject_unknown_names(p: argparse.ArgumentParser, *pairs: Tuple[Iterable[str], Iterable[str]]) -> None:
    """``p.error`` (exit 2) naming every name of a ``(given, known)`` pair that is not among its known ones."""
    bad = [n for given, known in pairs for n in given if n not in known]
    if bad:
        p.error(f"unknown names {bad}")


class BenchParser(argparse.ArgumentParser):
    """The command line of a bench script: its docstring as the description, the options every script has
    (``--device``, ``--warmup``, ``--rep``, optionally ``--cap-s``, ``--out``, ``--tag``, optionally ``--seed`` and
    the hidden ``--child``), comma-list options checked against their known names (:meth:`add_names`), and the
    device-dependent defaults filled in by :meth:`parse`.

    ``warmup``, ``rep`` and ``cap_s`` are ``(GPU default, CPU default)`` pairs; ``unit`` names what is repeated
    ("calls", "steps"); ``notes`` adds a script's own remark to the help of ``"rep"`` or ``"cap_s"``; ``plots``:
    whether the script draws a PNG (then :meth:`parse` checks for matplotlib up front, see :func:`plot_problem`).
    """

    def __init__(self, doc: str, *, warmup: Tuple[int, int], rep: Tuple[int, int],
                 cap_s: Optional[Tuple[float, float]] = None, unit: str = "calls", seed: bool = True,
                 child: bool = False, plots: bool = True, notes: Optional[Dict[str, str]] = None):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        notes = notes or {}
        self._device_defaults = {"warmup": warmup, "rep": rep, "cap_s": cap_s}
        self._known: Dict[str, Tuple[str, ...]] = {}
        self._plots = plots

        def more(key: str) -> str:
            return f"; {notes[key]}" if key in notes else ""

        self.add_argument("--device", default=None,
                          help="cuda[:N] or cpu (default: cuda if a GPU is visible, else cpu)")
        self.add_argument("--warmup", type=non_negative_int, default=None,
                          help=f"untimed {unit} before timing (default GPU {warmup[0]}, CPU {warmup[1]})")
        self.add_argument("--rep", type=positive_int, default=None,
                          help=f"timed {unit} per case (default GPU {rep[0]}, CPU {rep[1]}){more('rep')}")
        if cap_s is not None:
            self.add_argument("--cap-s", type=positive_float, default=None,
                              help=f"per-case time cap in seconds (default GPU {cap_s[0]:g}, CPU {cap_s[1]:g}): "
                                   f"fewer timed {unit} where they would take longer{more('cap_s')}")
        self.add_argument("--out", default=RESULTS_DIR, help="directory of the result files (default: results/ "
                          "beside this script)")
        self.add_argument("--tag", default="", help="suffix of the result file names (to tell runs of one day apart)")
        if seed:
            self.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
        if child:
            add_child_arg(self)

    def add_names(self, flag: str, known: Iterable[str], what: str, default=ALL, default_help: str = "all",
                  note: str = "") -> None:
        """A comma-list option of ``what`` whose names must be among ``known`` (checked by :meth:`parse`); by
        default every known name, in the order given (``default_help`` describes another default)."""
        known = tuple(known)
        self._known[flag.lstrip("-").replace("-", "_")] = known
        self.add_argument(flag, type=name_list, default=list(known) if default is ALL else default,
                          help=f"comma list of {what} from {','.join(known)} (default {default_help})"
                               + (f"; {note}" if note else ""))

    def parse(self, argv: Optional[Sequence[str]] = None,
              adjust: Optional[Callable[[argparse.Namespace, bool], None]] = None) -> argparse.Namespace:
        """Parse ``argv`` and fill in the defaults. In a child started by :func:`run_script_child` the arguments
        are returned as they are (the spec carries everything). Otherwise: ``args.device`` becomes the device's
        name (:func:`pick_device`), ``adjust(args, gpu)`` sets the script's own device-dependent defaults, then
        every ``--warmup`` / ``--rep`` / ``--cap-s`` still unset gets its GPU or CPU default, the name lists are
        checked, and a script that plots says up front whether it can (``args.plots``)."""
        args = self.parse_args(argv)
        if getattr(args, "child", None):
            return args
        device = pick_device(args.device)
        args.device = str(device)
        gpu = device.type == "cuda"
        if adjust is not None:
            adjust(args, gpu)
        for name, defaults in self._device_defaults.items():
            if defaults is not None and getattr(args, name) is None:
                setattr(args, name, defaults[0] if gpu else defaults[1])
        reject_unknown_names(self, *((getattr(args, name) or [], known) for name, known in self._known.items()))
        args.plots = self._plots and plot_problem() is None
        if self._plots and not args.plots:
            print(f"note: no plot in this run: {plot_problem()}; the CSV is written as usual", flush=True)
        return args


# ------------------------------------------------------------------------------------------- devices
def cpu_model() -> str:
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model


def device_name(device: torch.device) -> str:
    """Human-readable device name: the GPU's name, or the CPU model with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    """File-name-safe lower-case slug ("NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def pick_device(name: Optional[str] = None) -> torch.device:
    """The device called ``name``; none (or "auto"): cuda if a GPU is visible, else cpu."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return f"cpu-{slug(cpu_model())}-{torch.get_num_threads()}t"


def today() -> str:
    return _dt.date.today().isoformat()


def results_path(out_dir: str, op: str, device: torch.device, ext: str, date: Optional[str] = None,
                 tag: str = "") -> str:
    """``<out_dir>/<op>_<device-slug>_<YYYY-MM-DD>[_<tag>].<ext>``."""
    suffix = f"_{slug(tag)}" if tag else ""
    return os.path.join(out_dir, f"{op}_{device_slug(device)}_{date or today()}{suffix}.{ext}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    """True for GPU OOM and for the CPU allocator's failure (e.g. under the RLIMIT_DATA set by the child)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "std::bad_alloc" in text)


def failure(exc: BaseException) -> dict:
    """A case that raised, as result columns: status "oom" or "error", and the exception's first line as reason."""
    text = str(exc).strip()
    return {"status": "oom" if is_oom(exc) else "error",
            "reason": f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"}


# -------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    times_ms: List[float]

    def quantile(self, q: float) -> float:
        return quantile(self.times_ms, q)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def p20(self) -> float:
        return self.quantile(0.2)

    @property
    def p80(self) -> float:
        return self.quantile(0.8)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's / torch.quantile's default, as used by triton's do_bench)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class _L2Flush:
    """Zeroes a 256 MiB buffer before each GPU repetition so no call profits from the previous one's L2
    contents (do_bench does the same). No-op on CPU, where caches are small next to these working sets."""

    def __init__(self, device: torch.device):
        self.buf = torch.empty(256 * MIB, dtype=torch.int8, device=device) if device.type == "cuda" else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.zero_()


def time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one synchronised call (used for the first call, compile time and the time cap)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def bench(fn: Callable[[], object], device: torch.device, *, warmup: int, rep: int,
          setup: Optional[Callable[[], None]] = None) -> Timing:
    """Time ``fn`` ``rep`` times after ``warmup`` untimed calls; ``setup`` runs untimed before every call."""
    setup = setup or (lambda: None)
    flush = _L2Flush(device)
    for _ in range(warmup):
        setup()
        fn()
    sync(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        for s, e in zip(starts, ends):
            setup()
            flush()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return Timing([s.elapsed_time(e) for s, e in zip(starts, ends)])
    times = []
    for _ in range(rep):
        setup()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(times)


def reps_within(first_ms: float, cap_s: float, rep: int) -> int:
    """How many timed repetitions fit in the per-case time cap (at least 1, at most ``rep``)."""
    if first_ms <= 0:
        return rep
    return max(1, min(rep, int(cap_s * 1e3 // first_ms)))


def timing_columns(timing: Timing) -> dict:
    """A timing as result columns: median, p20 and p80 (ms), the number of samples and every sample."""
    return dict(ms_median=timing.median, ms_p20=timing.p20, ms_p80=timing.p80, n_reps=len(timing.times_ms),
                times_ms=";".join(f"{t:.5g}" for t in timing.times_ms))


# -------------------------------------------------------------------------------------------- memory
def gpu_peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated before it (the inputs)."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> Optional[int]:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """Resident-set high-water mark of this process (VmHWM; ru_maxrss where /proc is missing)."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def release_free_heap() -> None:
    """glibc keeps freed chunks below its (dynamic, up to 32 MiB) mmap threshold in the heap; resident pages
    reused from there would not raise the high-water mark. ``malloc_trim(0)`` hands them back to the OS, so
    the measured call's buffers are counted even after a warm-up call (e.g. torch.compile's)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim, or no way to; the measurement may then undercount small buffers


def cpu_peak_extra_bytes(fn: Callable[[], object]) -> Dict[str, object]:
    """Run ``fn`` once in this (fresh child) process and return its extra resident memory.

    Returns ``{"extra": bytes or None, "peak": bytes, "method": str}``; ``extra`` is None when the high-water
    mark could not be reset, and the parent then subtracts a baseline child (see the module docstring)."""
    gc.collect()
    release_free_heap()
    if reset_peak_rss():
        base = rss_bytes()
        fn()
        peak = peak_rss_bytes()
        return {"extra": peak - base, "peak": peak, "method": "VmHWM-after minus VmRSS-before (clear_refs reset)"}
    fn()
    return {"extra": None, "peak": peak_rss_bytes(), "method": "ru_maxrss of case child minus baseline child"}


def measure_first_call(step: Callable[[], object], device: torch.device) -> dict:
    """Time one call of ``step`` and measure the extra memory it needs (GPU: in this process; CPU: call this in a
    fresh child, see the module docstring). Returns ``{"ms", "extra_bytes", "mem_method", "peak_rss_bytes"}``:
    ``extra_bytes`` None where the parent must subtract a baseline child, ``peak_rss_bytes`` None on a GPU."""
    first = {}

    def measured():
        first["ms"] = time_once_ms(step, device)

    if device.type == "cuda":
        extra = gpu_peak_extra_bytes(measured, device)
        return {"ms": first["ms"], "extra_bytes": extra,
                "mem_method": "cuda max_memory_allocated - memory_allocated before", "peak_rss_bytes": None}
    mem = cpu_peak_extra_bytes(measured)
    return {"ms": first["ms"], "extra_bytes": mem["extra"], "mem_method": mem["method"], "peak_rss_bytes": mem["peak"]}


def release_memory(device: torch.device) -> None:
    """After a case: collect its garbage and, on a GPU, hand the caching allocator's free blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def limit_child_memory(extra_budget_bytes: int) -> bool:
    """Cap this process's data segment at its current size + budget, so a competitor that would need more
    fails with an allocation error we can report instead of waking the OOM killer (which may pick a
    neighbour). Large tensors come from mmap, which RLIMIT_DATA counts since Linux 4.7."""
    kib = _proc_status_kib("VmData")
    if kib is None:
        return False
    limit = kib * 1024 + extra_budget_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return True


# ------------------------------------------------------------------------------------ child processes
CHILD_MARK = "@@BENCH_RESULT@@ "


def emit_child_result(result: dict) -> None:
    """Child side: print the result as one marked JSON line on stdout (anything else printed is ignored)."""
    sys.stdout.write(CHILD_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(argv: List[str], timeout_s: float) -> dict:
    """Parent side: run ``argv`` (a fresh Python process) and parse its marked result line.

    A crash, a kill (e.g. by the OOM killer) or a timeout becomes a result with status and reason."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"too slow: exceeded the child timeout of {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK):])
    if proc.returncode < 0 and -proc.returncode == 9:
        return {"status": "oom", "reason": "child killed by SIGKILL (likely the OOM killer)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error", "reason": f"child exited with code {proc.returncode}: {' | '.join(tail)}"}


def add_child_arg(p: argparse.ArgumentParser) -> None:
    """The hidden ``--child <spec as JSON>`` option through which :func:`run_script_child` starts a script
    (``BenchParser(child=True)`` adds it)."""
    p.add_argument("--child", help=argparse.SUPPRESS)


def run_script_child(script: str, spec: dict, timeout_s: float) -> dict:
    """Parent side: ``run_child`` of the bench script ``script`` (its ``__file__``) with ``--child <spec as JSON>``."""
    return run_child([sys.executable, os.path.abspath(script), "--child", json.dumps(spec)], timeout_s)


def serve_child(args: argparse.Namespace, child_main: Callable[[dict], None]) -> bool:
    """Child side: if this process was started by :func:`run_script_child`, run ``child_main(spec)`` and return
    True (the script then ends); False in the parent."""
    if not args.child:
        return False
    child_main(json.loads(args.child))
    return True


# ---------------------------------------------------------------------------------- hardware limits
# Dense (no sparsity) datasheet peaks. bf16/fp16 and tf32 are tensor-core rates; fp32 is the non-tensor FMA
# rate (what fp32 matmuls get when TF32 is disabled, torch's default for matmul). Sources: NVIDIA H100
# datasheet (SXM5 / PCIe / NVL), H200 datasheet (same compute as H100 SXM), A100 datasheet; the datasheets
# quote "with sparsity" numbers for tensor cores, halved here.
# The exp limit assumes exp(x) runs as one MUFU.EX2 per element on the SFUs: 16 results / clock / SM for
# compute capability 8.x and 9.x (CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table),
# times SMs times the boost clock (H100 SXM: 132 * 16 * 1.98 GHz = 4.18e12 exp/s). A kernel can exceed it by
# emulating part of its exps with FMA polynomials, so it is a practical rather than absolute limit.
GPU_PEAKS = [
    # (substring of the device name, fields); first match wins, so specific names come first.
    ("H100 PCIe", dict(bf16=756e12, tf32=378e12, fp32=51.2e12, sms=114, boost_ghz=1.755)),
    ("H100 NVL", dict(bf16=835e12, tf32=418e12, fp32=60e12, sms=132, boost_ghz=1.785)),
    ("H200 NVL", dict(bf16=835e12, tf32=418e12, fp32=60e12, sms=132, boost_ghz=1.785)),
    ("H200", dict(bf16=989.4e12, tf32=494.7e12, fp32=66.9e12, sms=132, boost_ghz=1.98)),
    ("H100", dict(bf16=989.4e12, tf32=494.7e12, fp32=66.9e12, sms=132, boost_ghz=1.98)),  # SXM5
    ("A100", dict(bf16=312e12, tf32=156e12, fp32=19.5e12, sms=108, boost_ghz=1.41)),
]
SFU_EXP_PER_CLK_PER_SM = 16


@dataclass
class Limits:
    matmul_flops: float  # FLOP/s of the matmul units for this dtype
    exp_rate: float  # exp/s
    source: str


def gpu_table_limits(device: torch.device, dtype: torch.dtype, tf32: bool) -> Optional[Limits]:
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS:
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                mm, kind = peaks["bf16"], "bf16 dense tensor core"
            elif dtype == torch.float32 and tf32:
                mm, kind = peaks["tf32"], "tf32 dense tensor core"
            else:
                mm, kind = peaks["fp32"], "fp32 non-tensor"
            # The SM count from the driver (right under MIG too); the clock from the table.
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            exp_rate = sms * SFU_EXP_PER_CLK_PER_SM * peaks["boost_ghz"] * 1e9
            return Limits(mm, exp_rate, f"datasheet {key}: {kind} {mm / 1e12:.1f} TFLOP/s; "
                                        f"exp {sms} SMs x {SFU_EXP_PER_CLK_PER_SM}/clk x {peaks['boost_ghz']} GHz")
    return None


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: Optional[int] = None,
                         tries: int = 5) -> float:
    """Best FLOP/s of a square ``torch.mm`` in ``dtype`` (2 * size^3 FLOPs per call)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up (BLAS thread pool, cuBLAS handle)
    best = min(time_once_ms(lambda: torch.mm(a, b, out=out), device) for _ in range(tries))
    return 2 * size ** 3 / (best / 1e3)


def measure_exp_rate(device: torch.device, tries: int = 5) -> Dict[str, float]:
    """exp/s of ``torch.exp`` on fp32: on a large tensor (64 MiB, as asked: includes memory traffic) and on a
    cache-resident one (128 KiB, repeated: the arithmetic rate). Returns both; the limit uses the larger."""
    out = {}
    big = torch.randn(1 << 24, device=device)
    big_out = torch.empty_like(big)
    torch.exp(big, out=big_out)
    best = min(time_once_ms(lambda: torch.exp(big, out=big_out), device) for _ in range(tries))
    out["large"] = big.numel() / (best / 1e3)
    small = torch.randn(1 << 15, device=device)
    small_out = torch.empty_like(small)
    loops = 512

    def many():
        for _ in range(loops):
            torch.exp(small, out=small_out)

    many()
    best = min(time_once_ms(many, device) for _ in range(tries))
    out["cached"] = small.numel() * loops / (best / 1e3)
    return out


def measured_limits(device: torch.device, dtype: torch.dtype, when: str = "") -> Limits:
    mm = measure_matmul_flops(device, dtype)
    ex = measure_exp_rate(device)
    rate = max(ex.values())
    return Limits(mm, rate, f"measured{when}: torch.mm {str(dtype).replace('torch.', '')} {mm / 1e9:.1f} GFLOP/s; "
                            f"torch.exp fp32 {ex['large'] / 1e9:.2f} Gexp/s (64 MiB), "
                            f"{ex['cached'] / 1e9:.2f} Gexp/s (128 KiB, cached)")


def augcl_info() -> str:
    """augcl's version and whether augcl._C loaded (and why not), for the run's tags."""
    try:
        import augcl
        from augcl import _extension
    except Exception as exc:  # noqa: BLE001
        return f"not importable: {exc!r}"
    info = f"{augcl.__version__} (_C loaded: {_extension.LOADED})"
    return info if _extension.LOADED else f"{info}: {_extension.LOAD_ERROR}"


def start_limits(device: torch.device, dtypes: Dict[str, torch.dtype], tf32: bool = False
                 ) -> Tuple[Dict[str, Limits], List[str]]:
    """``(limits, measured)``: the peak each dtype name's "% limit" column divides by (the GPU's datasheet row,
    else measured now), and the names that were measured, to measure again with :func:`end_limits`."""
    limits, measured = {}, []
    for name, dtype in dtypes.items():
        lim = gpu_table_limits(device, dtype, tf32) if device.type == "cuda" else None
        if lim is None:  # CPU, or a GPU not in the table: measure now, and again at the end
            lim = measured_limits(device, dtype, " at start")
            measured.append(name)
        limits[name] = lim
    return limits, measured


def end_limits(device: torch.device, dtypes: Dict[str, torch.dtype], limits: Dict[str, Limits],
               measured: List[str]) -> None:
    """Measure the peaks of ``measured`` again after the run and keep the higher of the two (in place)."""
    for name in measured:
        limits[name] = best_limits(limits[name], measured_limits(device, dtypes[name], " at end"))


def best_limits(a: Limits, b: Limits) -> Limits:
    """The higher of two measurements of each peak (e.g. at the start and the end of a run): on a shared
    machine a measurement can only be too low, and a too-low peak would overstate the limit fraction."""
    mm, ex = max(a.matmul_flops, b.matmul_flops), max(a.exp_rate, b.exp_rate)
    return Limits(mm, ex, f"{a.source} | {b.source} | limit = the higher of each: matmul {mm / 1e9:.1f} GFLOP/s, "
                          f"exp {ex / 1e9:.2f} Gexp/s")


# ------------------------------------------------------------------------ per-op benchmark scaffolding
# The shape shared by the per-op scripts (bench_supcon.py, bench_topk_attention.py): each case of (competitor,
# sizes, dtype) is measured by the script's own ``run_case(spec) -> dict``, on a CPU in a fresh child process of
# the script; the rows get roofline columns and ratios; one CSV, one PNG, one table.

def case_child_main(spec: dict, run_case: Callable[[dict], dict], build_inputs: Callable[[dict], object]) -> None:
    """The child process of a per-op script: ``run_case(spec)``, or for ``spec["baseline"]`` (the fallback memory
    baseline where the RSS high-water mark cannot be reset) only ``build_inputs(spec)`` and the peak RSS."""
    torch.set_num_threads(spec["threads"])
    if spec.get("baseline"):
        build_inputs(spec)
        emit_child_result({"status": "ok", "peak_rss_bytes": peak_rss_bytes()})
        return
    emit_child_result(run_case(spec))


def measure_case(script: str, spec: dict, device: torch.device, run_case: Callable[[dict], dict], baselines: dict,
                 key: tuple) -> dict:
    """One case: in this process on a GPU; on a CPU in a fresh child of ``script`` (timeout: 180 s + 3 caps, +600 s
    for torch.compile), its extra memory by the child's high-water mark or, where that cannot be reset, minus a
    baseline child that only builds the inputs (one per ``key``, cached in ``baselines``)."""
    if device.type == "cuda":
        return run_case(spec)
    timeout = 180 + 3 * spec["cap_s"] + (600 if spec["competitor"] == "torch.compile" else 0)
    res = run_script_child(script, spec, timeout)
    if res.get("status") == "ok" and res.get("extra_bytes") is None and "peak_rss_bytes" in res:
        if key not in baselines:
            baselines[key] = run_script_child(script, dict(spec, baseline=True), 600).get("peak_rss_bytes")
        if baselines[key] is not None:
            res["extra_bytes"] = res["peak_rss_bytes"] - baselines[key]
    return res


def roofline_rows(rows: List[dict], limits: Dict[str, "Limits"], meta: dict,
                  work: Callable[[dict], Tuple[float, float]]) -> List[dict]:
    """Each row with the run's ``meta`` and the roofline columns: ``gflop``, ``roofline_ms``, ``limit_source``,
    ``peak_extra_mib`` and, for rows ``ok``, ``limit_fraction``; ``work(row) -> (flops, exps)``."""
    out = []
    for r in rows:
        r = dict(meta, **r)
        flops, exps = work(r)
        lim = limits[r["dtype"]]
        r["gflop"] = flops / 1e9
        r["roofline_ms"] = roofline_ms(flops, exps, lim)
        r["limit_source"] = lim.source
        extra = r.pop("extra_bytes", None)
        r.pop("peak_rss_bytes", None)
        r["peak_extra_mib"] = None if extra is None else extra / MIB
        if r.get("status") == "ok":
            r["limit_fraction"] = r["roofline_ms"] / r["ms_median"]
        out.append(r)
    return out


def op_benchmark_main(args: argparse.Namespace, *, op: str, describe: str, dtypes: Dict[str, torch.dtype],
                      run_all: Callable, derive: Callable, column_order: List[str],
                      plot: Optional[Callable[[List[dict], str, dict], Optional[str]]],
                      table: Tuple[List[str], Callable[[dict], list]]) -> None:
    """The main of a per-op script after its arguments are parsed (and its child served): the run's metadata and
    header line, hardware limits measured around ``run_all(args, device) -> rows``, ``derive(rows, limits, meta)``,
    the CSV ``<op>_<device or --label>_<date>[_<tag>].csv``, the PNG (``plot(rows, path, meta)``, where
    ``args.plots``), then ``table = (headers, row -> cells)``, the failures and the load average."""
    device = torch.device(args.device)
    meta = dict(op=op, device=args.label or device_slug(device), device_name=device_name(device), date=today(),
                torch=torch.__version__, augcl=augcl_info(), threads=torch.get_num_threads(),
                load_start=round(os.getloadavg()[0], 2), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    print(f"{op} benchmark on {meta['device_name']} | torch {meta['torch']} | augcl {meta['augcl']} | {meta['date']} "
          f"| load average {meta['load_start']} on {os.cpu_count()} cpus | {describe}")
    limits, measured = start_limits(device, dtypes)
    rows = run_all(args, device)
    meta["load_end"] = round(os.getloadavg()[0], 2)
    end_limits(device, dtypes, limits, measured)
    rows = order_columns(derive(rows, limits, meta), column_order)
    name = f"{op}_{slug(meta['device'])}_{meta['date']}" + (f"_{slug(args.tag)}" if args.tag else "")
    csv_path = os.path.join(args.out, name + ".csv")
    write_csv(rows, csv_path)
    png_path = plot(rows, csv_path[:-4] + ".png", meta) if plot is not None and getattr(args, "plots", True) else None
    headers, cells = table
    print_table(headers, [cells(r) for r in rows])
    print_failures(rows)
    print(f"load average: {meta['load_start']} at the start, {meta['load_end']} at the end")
    print(f"wrote {csv_path}" + (f" and {png_path}" if png_path else ""))


def timing_cell(r: dict) -> str:
    """``median [p20, p80]`` of a row, for the tables."""
    return f"{fmt(r.get('ms_median'), '.4g')} [{fmt(r.get('ms_p20'), '.4g')}, {fmt(r.get('ms_p80'), '.4g')}]"


def roofline_ms(flops: float, exps: float, limits: Limits) -> float:
    """Lower bound on the time: the slower of the matmul work and the exp work at their peak rates."""
    return max(flops / limits.matmul_flops, exps / limits.exp_rate) * 1e3


# ------------------------------------------------------------------------------------------- results
def add_comparisons(rows: List[dict], case: Callable[[dict], Hashable], refs: Sequence[str], others: Sequence[str],
                    ours: Callable[[dict], bool]) -> None:
    """Among the rows of each case (``case(row)``): ``loss_rel_diff`` of every row with a loss against the first of
    ``refs`` that ran ("ok"), and for the rows that ``ours`` picks ``speedup_vs_<o>`` = time of o / time of the row
    for each competitor o of ``others`` (None unless both ran)."""
    by_case: Dict[Hashable, List[dict]] = {}
    for r in rows:
        by_case.setdefault(case(r), []).append(r)
    for group in by_case.values():
        ok = {r["competitor"]: r for r in group if r.get("status") == "ok"}
        ref = next((ok[c] for c in refs if c in ok), None)
        for r in group:
            if ref is not None and r.get("loss") is not None:
                r["loss_rel_diff"] = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            if not ours(r):
                continue
            for o in others:
                mine, theirs = ok.get(r["competitor"]), ok.get(o)
                r[f"speedup_vs_{o}"] = theirs["ms_median"] / mine["ms_median"] if mine and theirs else None


def order_columns(rows: List[dict], order: Sequence[str]) -> List[dict]:
    """Every row with the columns of ``order`` first (None where a row lacks one), then its others."""
    return [{k: r.get(k) for k in list(order) + [k for k in r if k not in order]} for r in rows]


def write_csv(rows: List[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fields: List[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_csv(r.get(k)) for k in fields})


def _fmt_csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def fmt(v: Optional[float], spec: str = ".3g", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def fmt_speedup(v: Optional[float]) -> str:
    """A speed-up table cell: "2.5x", or "-" where there is none."""
    return fmt(v, ".3g") + ("x" if v else "")


def print_failures(rows: Iterable[dict]) -> None:
    """One line per row that did not run ("ok" rows are in the table): competitor, status and reason."""
    for r in rows:
        if r.get("status") != "ok" and r.get("reason"):
            print(f"    {r['competitor']}: {r['status']}: {r['reason']}")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> None:
    """Plain fixed-width table (readable in a log file, no terminal codes)."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print(indent + "  ".join("-" * w for w in widths))
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)))


_PLOT_PROBLEM: List[Optional[str]] = []


def plot_problem() -> Optional[str]:
    """None if matplotlib can be imported, else why not (checked once per process). matplotlib is an optional
    dependency (the ``bench`` and ``train`` extras): without it a run writes its CSV and skips the plot."""
    if not _PLOT_PROBLEM:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            _PLOT_PROBLEM.append(f"matplotlib cannot be imported ({exc}; pip install matplotlib)")
        else:
            _PLOT_PROBLEM.append(None)
    return _PLOT_PROBLEM[0]


def plot(rows: List[dict], path: str, *, x: str, series: str, panels: Sequence[str], title: str,
         xlabel: Optional[str] = None) -> Optional[str]:
    """Two rows of log-log panels, one column per value of ``panels`` (e.g. (D, dtype)): median time with
    the p20-p80 band, and peak extra memory, against ``x``, one line per ``series``. Only "ok" rows.

    Returns ``path``, or None where nothing was drawn: no "ok" rows, or no matplotlib (:func:`plot_problem`,
    which :meth:`BenchParser.parse` reports at the start of the run)."""
    if plot_problem() is not None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    keys = sorted({tuple(r[p] for p in panels) for r in ok}, key=str)
    if not keys:
        return None
    names = list(dict.fromkeys(r[series] for r in ok))
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, len(keys), figsize=(5.5 * len(keys), 8), squeeze=False)
    for col, key in enumerate(keys):
        sub = [r for r in ok if tuple(r[p] for p in panels) == key]
        for name in names:
            pts = sorted((r for r in sub if r[series] == name), key=lambda r: r[x])
            if not pts:
                continue
            xs = [r[x] for r in pts]
            c = colours[name]
            axes[0][col].plot(xs, [r["ms_median"] for r in pts], "o-", color=c, label=name)
            axes[0][col].fill_between(xs, [r["ms_p20"] for r in pts], [r["ms_p80"] for r in pts], color=c, alpha=0.2)
            mem = [(r[x], r["peak_extra_mib"]) for r in pts if r.get("peak_extra_mib") not in (None, "")]
            if mem:
                axes[1][col].plot(*zip(*mem), "o-", color=c, label=name)
        label = ", ".join(f"{p}={v}" for p, v in zip(panels, key))
        for row, ylab in ((0, "fwd+bwd time, ms (median, p20-p80)"), (1, "peak extra memory, MiB")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(ylab)
            ax.set_title(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ memory bandwidth
def measure_copy_bandwidth(device: torch.device, nbytes: Optional[int] = None, tries: int = 5) -> float:
    """Best bytes/s of ``dst.copy_(src)`` on ``nbytes`` of fp32 (default 1 GiB on GPU, 256 MiB on CPU: well
    beyond the caches), counting the read and the write (2 * nbytes per copy). The limit for memory-bound ops."""
    nbytes = nbytes or ((1024 if device.type == "cuda" else 256) * MIB)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch of dst's pages, thread pool
    best = min(time_once_ms(lambda: dst.copy_(src), device) for _ in range(tries))
    return 2 * src.numel() * 4 / (best / 1e3)


def best_bandwidth(*measurements: float) -> float:
    """The highest of several bandwidth measurements (on a shared machine one can only come out too low)."""
    return max(measurements)
