"""GPU code generation without a GPU: compile every Triton kernel of augcl for real NVIDIA targets and check
that the results can launch.

The Triton interpreter (CI, CPU) runs the kernels' *semantics* but never the compiler: it accepts code that
fails to lower, and it cannot see the resources a kernel needs. A kernel that asks for more shared memory than
the GPU has, or more registers than a block may hold, compiles and then fails at launch with "out of resource"
on the first real GPU. This script catches those failures here.

How: every launcher in ``augcl.kernels`` is called on CPU tensors of representative shapes and dtypes with its
launch intercepted (``_launch`` replaced by a recorder), so the host code picks block sizes, warps, stages and
constexprs exactly as it would on a GPU. Each recorded launch is then compiled through the kernel's own
``JITFunction.warmup`` - the path a real launch takes, including triton's argument specialisation (16-byte
alignment, stride == 1) - under a stand-in driver that reports the chosen target (sm_80, sm_90) and has no
device. The cubin's resource usage comes from ``cuobjdump -res-usage`` (bundled with triton).

Checks per compiled kernel (a failure makes the exit status 1):

* it compiles (frontend, TTGIR passes, LLVM, ptxas);
* dynamic + static shared memory <= the target's per-block opt-in limit (A100 163 KiB, H100 227 KiB);
* registers x threads per block <= 65536 (the register file a block may use);
* local memory (spills, or arrays ptxas could not keep in registers) is reported, not failed: it is slow, not
  wrong;
* a case whose launcher's ``supports()`` declines it on that GPU (top-k attention's whole-row tiles in float32
  at long rows: ``augcl.kernels.topk_attention.shared_reason``) is marked ``declined``, not failed; one that the
  rule lets through but that does not fit fails, so the rule's estimate is checked on every architecture.

The CUDA C++ kernels of ``augcl._C`` (when built with CUDA) are listed from the extension's embedded cubins the
same way.

Usage::

    python benchmarks/preflight.py                 # every case, sm_80, sm_86, sm_90; table + CSV in benchmarks/results
    python benchmarks/preflight.py --quick --arch 90 --no-csv   # the CI subset (tests/test_preflight.py)

Run it without TRITON_INTERPRET (it refuses otherwise: the interpreter replaces the JIT it needs). It runs
with triton 3.6 (the GPU machine's) and 3.8 (CI's).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("preflight.py compiles for real GPUs: run it without TRITON_INTERPRET")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Per-block shared memory a kernel may opt into, bytes (CUDA programming guide, compute capabilities table).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}
REGISTERS_PER_BLOCK = 65536


# ----------------------------------------------------------------------------------------------- the stand-in driver
class _NoDeviceDriver:
    """Enough of triton's active-driver interface for ``JITFunction.warmup``: a current "device" whose
    target is the architecture being compiled for. Nothing is loaded or launched."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.arch  # one kernel cache per architecture (JITFunction.device_caches is keyed by device)

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_device_interface(self):
        return torch.cuda

    def get_active_torch_device(self):
        return torch.device("cuda", 0)

    def is_active(self):
        return True


# ----------------------------------------------------------------------------------------------- recording launches
@dataclass
class Launch:
    case: str
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict
    # the launcher's supports() rule for this case: limit (bytes of shared memory) -> why it declines, or None
    declined: Optional[Callable[[Optional[int]], Optional[str]]] = None


@dataclass
class Recorder:
    launches: List[Launch] = field(default_factory=list)
    case: str = ""
    declined: Optional[Callable[[Optional[int]], Optional[str]]] = None

    def launch(self, kernel, grid):
        def record(*args, **kwargs):
            self.launches.append(Launch(self.case, kernel, tuple(grid), args, kwargs, self.declined))

        return record


@contextlib.contextmanager
def _tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cases(quick: bool) -> List[Tuple[str, Callable[[], None]]]:
    """(name, thunk) pairs; each thunk calls launchers on CPU tensors (the launches are recorded, not run)."""
    from augcl.kernels import contrastive as KC
    from augcl.kernels import hallucinator as KH
    from augcl.kernels import sinkhorn as KS
    from augcl.kernels import soft_ce as KSC
    from augcl.kernels import topk_attention as KT
    from augcl.kernels import unmix as KU

    g = torch.Generator().manual_seed(0)
    cases: List[Tuple[str, Callable[[], None]]] = []

    # --- contrastive: NT-Xent-like (1 positive, 1 excluded cell) and MoCo-like (no exclusion); fwd + bwd
    dims = (33, 128, 512) if quick else (16, 33, 64, 128, 130, 256, 512)
    precisions = (("fp32", False), ("fp32", True), ("fp16", False), ("bf16", False))
    for d in dims:
        for dt_name, tf32 in precisions:
            for layout in (("contig", "strided") if d == 128 else ("contig",)):
                def thunk(d=d, dt=_DT[dt_name], tf32=tf32, layout=layout):
                    m = 256
                    a = torch.randn(m, d, generator=g).to(dt)
                    c = torch.randn(2 * m, d, generator=g).to(dt)
                    if layout == "strided":  # D stride 2: no stride == 1 specialisation
                        a = torch.randn(m, 2 * d, generator=g).to(dt)[:, ::2]
                        c = torch.randn(2 * m, 2 * d, generator=g).to(dt)[:, ::2]
                    scale = torch.tensor(2.0)
                    pos = torch.arange(m).view(m, 1)
                    excl = (torch.arange(m) + m).view(m, 1)
                    with _tf32(tf32):
                        lse = KC.contrastive_lse_fwd(a, c, scale, pos, excl, 0)
                        KC.contrastive_lse_bwd(torch.ones(m), a, c, scale, lse, pos, excl, 0)
                        none = torch.empty(m, 0, dtype=torch.long)
                        KC.contrastive_lse_fwd(a, c, scale, pos, none, 0)
                cases.append((f"contrastive d={d} {dt_name}{'+tf32' if tf32 else ''} {layout}", thunk))
    # a long queue against few anchors: the split (partial) path of every kernel
    for dt_name in ("fp32", "bf16"):
        def thunk(dt=_DT[dt_name]):
            a = torch.randn(64, 128, generator=g).to(dt)
            c = torch.randn(65536, 128, generator=g).to(dt)
            pos = torch.zeros(64, 1, dtype=torch.long)
            none = torch.empty(64, 0, dtype=torch.long)
            lse = KC.contrastive_lse_fwd(a, c, torch.tensor(10.0), pos, none, 1)
            KC.contrastive_lse_bwd(torch.ones(64), a, c, torch.tensor(10.0), lse, pos, none, 1)
        cases.append((f"contrastive moco-queue {dt_name}", thunk))

    # --- the performance candidates of benchmarks/gpu_candidates.py (switches), so that the first GPU run does not
    # find a candidate that cannot launch; --quick keeps the three with the most state per program
    cands = [("AUGCL_CONTRASTIVE_TILES", t, d, dt_name, tf32) for t in ("128x64", "64x128", "128x128")
             for d in (128, 512) for dt_name, tf32 in (("bf16", False), ("fp32", True), ("fp32", False))]
    cands += [("AUGCL_CONTRASTIVE_BWD_DO", c, 512, dt_name, tf32) for c in ("256", "512")
              for dt_name, tf32 in (("bf16", False), ("fp32", True), ("fp32", False))]
    cands += [("AUGCL_TRITON_FP32", "tf32x3", d, "fp32", False) for d in (128, 512)]
    if quick:
        cands = [("AUGCL_CONTRASTIVE_TILES", "128x128", 128, "bf16", False),
                 ("AUGCL_CONTRASTIVE_BWD_DO", "512", 512, "bf16", False),
                 ("AUGCL_TRITON_FP32", "tf32x3", 128, "fp32", False)]
    for var, value, d, dt_name, tf32 in cands:
        def thunk(var=var, value=value, d=d, dt=_DT[dt_name], tf32=tf32):
            m = 256
            a = torch.randn(m, d, generator=g).to(dt)
            c = torch.randn(2 * m, d, generator=g).to(dt)
            pos = torch.arange(m).view(m, 1)
            excl = (torch.arange(m) + m).view(m, 1)
            old = os.environ.get(var)
            os.environ[var] = value
            try:
                with _tf32(tf32):
                    lse = KC.contrastive_lse_fwd(a, c, torch.tensor(2.0), pos, excl, 0)
                    KC.contrastive_lse_bwd(torch.ones(m), a, c, torch.tensor(2.0), lse, pos, excl, 0)
            finally:
                if old is None:
                    os.environ.pop(var)
                else:
                    os.environ[var] = old
        cases.append((f"candidate {var}={value} contrastive d={d} {dt_name}{'+tf32' if tf32 else ''}", thunk))
    for tiles in (() if quick else ("32x32", "16x32", "32x64")):
        def thunk(tiles=tiles):
            os.environ["AUGCL_SINKHORN_TILES"] = tiles
            try:
                KS.sinkhorn_fwd(torch.randn(4096, 3000, generator=g), 0.05, 3, path="multi")
            finally:
                os.environ.pop("AUGCL_SINKHORN_TILES")
        cases.append((f"candidate AUGCL_SINKHORN_TILES={tiles} sinkhorn multi 4096x3000 fp32", thunk))

    # --- hallucinate: the one-launch forward (2D, H <= 128) and the per-layer kernels; fwd + bwd
    # (the per-layer kernels' code depends only on the dtype and alignment, so D = 512 adds nothing in --quick)
    for d in ((4, 64) if quick else (4, 33, 64, 128, 256, 512)):
        for dt_name, tf32 in precisions:
            def thunk(d=d, dt=_DT[dt_name], tf32=tf32):
                b, h = 300, 2 * d
                x = torch.randn(b, d, generator=g).to(dt)
                k = torch.randn(b, d, generator=g).to(dt)
                lam = torch.rand(b, generator=g)
                w1, b1 = torch.randn(h, 2 * d).to(dt), torch.randn(h).to(dt)
                w2, b2 = torch.randn(h, h).to(dt), torch.randn(h).to(dt)
                w3, b3 = torch.randn(d, h).to(dt), torch.randn(d).to(dt)
                with _tf32(tf32):
                    out, a1, a2 = KH.hallucinate_fwd(x, k, lam, w1, b1, w2, b2, w3, b3)
                    if KH.uses_fused_forward(d, h):
                        KH.hallucinate_fwd(x, k, lam, w1, b1, w2, b2, w3, b3, fused=False)
                    KH.hallucinate_bwd(torch.ones_like(out), x, k, lam, w1, w2, w3, a1, a2)
            cases.append((f"hallucinate d={d} {dt_name}{'+tf32' if tf32 else ''}", thunk))

    # --- sinkhorn: one-program and multi-launch paths
    for dt_name in ("fp32", "fp16", "bf16"):
        for path, (b, k) in (("single", (256, 100)), ("multi", (4096, 3000))):
            def thunk(dt=_DT[dt_name], path=path, b=b, k=k):
                KS.sinkhorn_fwd(torch.randn(b, k, generator=g).to(dt), 0.05, 3, path=path)
            cases.append((f"sinkhorn {path} {b}x{k} {dt_name}", thunk))

    # --- soft_ce: forward, backward with and without the target gradient
    for dt_name in ("fp32", "fp16", "bf16"):
        def thunk(dt=_DT[dt_name]):
            z = torch.randn(512, 3000, generator=g).to(dt)
            t = torch.rand(512, 3000, generator=g).to(dt)
            rows, lse = KSC.soft_ce_fwd(z, t, 10.0)
            KSC.soft_ce_bwd(torch.ones(512), z, t, lse, 10.0, False)
            KSC.soft_ce_bwd(torch.ones(512), z, t, lse, 10.0, True)
        cases.append((f"soft_ce 512x3000 {dt_name}", thunk))

    # --- mix_images: uint8 / float in, every output dtype, NCHW and channels_last, normalisation on/off
    ins = (("u8", torch.uint8), ("bf16", torch.bfloat16))
    if not quick:
        ins += (("fp32", torch.float32), ("fp16", torch.float16))
    outs = ("fp32", "bf16") if quick else ("fp32", "bf16", "fp16")
    for in_name, in_dt in ins:
        for out_name in outs:
            for cl in (False, True):
                def thunk(in_dt=in_dt, out_dt=_DT[out_name], cl=cl):
                    b = 8
                    x = (torch.randint(0, 255, (b, 3, 33, 35), generator=g)).to(in_dt)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    lam = torch.rand(b, generator=g)
                    cut = torch.tensor([i % 2 for i in range(b)], dtype=torch.bool)
                    boxes = torch.tensor([[1, 2, 20, 30]] * b)
                    partner = torch.arange(b - 1, -1, -1)
                    mean = torch.tensor([0.5, 0.4, 0.3])
                    std = torch.tensor([0.2, 0.2, 0.2])
                    KU.mix_images_fwd(x, lam, cut, boxes, partner, mean, std, out_dt)
                    KU.mix_images_fwd(x, lam, cut, boxes, partner, None, None, out_dt)
                    if in_dt != torch.uint8:
                        go = torch.randn(x.shape, generator=g).to(out_dt)
                        if cl:
                            go = go.contiguous(memory_format=torch.channels_last)
                        KU.mix_images_bwd(go, lam, cut, boxes, partner, std, in_dt)
                cases.append((f"mix_images {in_name}->{out_name} {'channels_last' if cl else 'nchw'}", thunk))
    # --- topk_attention: the whole key row on chip, so the longest rows and widest heads are the ones that can run
    # out of registers / shared memory (L 257 -> BLOCK_N 512 with Dh 128 in the backward); fwd + bwd
    shapes = ((257, 128), (65, 32)) if quick else tuple((L, dh) for L in (17, 65, 197, 257, 512) for dh in (32, 64, 128))
    for L, dh in shapes:
        for dt_name in (("fp32", "bf16") if quick else ("fp32", "fp16", "bf16")):
            def thunk(L=L, dh=dh, dt=_DT[dt_name]):
                q, k, v = (torch.randn(2, 3, L, dh, generator=g).to(dt) for _ in range(3))
                top_k = max(1, (L - 1) // 4)
                out, lse = KT.topk_attention_fwd(q, k, v, top_k, dh ** -0.5, True)
                KT.topk_attention_bwd(torch.ones_like(out), q, k, v, out, lse, top_k, dh ** -0.5, True)
            # (the shapes whose row tile cannot fit are declined by supports() on the GPU; the estimate it uses is
            # checked here against ptxas on every architecture)
            cases.append((f"topk_attention L={L} Dh={dh} {dt_name}", thunk,
                          lambda limit, L=L, dh=dh, dt=_DT[dt_name]: KT.shared_reason(L, dh, dt, limit)))
    return cases


def record_launches(quick: bool, only: Optional[str] = None) -> Tuple[List[Launch], List[dict]]:
    """Every launch the cases make (not run), and a failure row for each case whose host code raised."""
    import augcl.kernels.contrastive
    import augcl.kernels.hallucinator
    import augcl.kernels.sinkhorn
    import augcl.kernels.soft_ce
    import augcl.kernels.topk_attention
    import augcl.kernels.unmix

    modules = [augcl.kernels.contrastive, augcl.kernels.hallucinator, augcl.kernels.sinkhorn,
               augcl.kernels.soft_ce, augcl.kernels.topk_attention, augcl.kernels.unmix]
    rec = Recorder()
    saved = [(m, m._launch) for m in modules]
    failures = []
    try:
        for m in modules:
            m._launch = rec.launch
        for name, thunk, *declined in _cases(quick):
            if only and only not in name:
                continue
            rec.case, rec.declined = name, (declined[0] if declined else None)
            try:
                thunk()
            except Exception as exc:  # noqa: BLE001 - reported as a failed case
                failures.append({"case": name, "kernel": "-", "status": "FAIL",
                                 "note": f"host code raised {type(exc).__name__}: {exc}"})
    finally:
        for m, fn in saved:
            m._launch = fn
    return rec.launches, failures


# ----------------------------------------------------------------------------------------------- resources
def _cuobjdump() -> Optional[str]:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(bundled):
        return bundled
    return shutil.which("cuobjdump")


_ARCH = re.compile(r"^arch = (sm_\d+)")
_FUNC = re.compile(r"^\s*Function ([^:\s]+):")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(binary_path: str) -> List[dict]:
    """``cuobjdump -res-usage`` of a cubin or a host ELF with embedded cubins: one dict per (arch, function)
    with its mangled name and REG, STACK, SHARED (static, bytes), LOCAL (bytes per thread)."""
    tool = _cuobjdump()
    if tool is None:
        return []
    out = subprocess.run([tool, "-res-usage", binary_path], capture_output=True, text=True).stdout
    rows, arch, fn = [], "", None
    for line in out.splitlines():
        if _ARCH.match(line):
            arch = _ARCH.match(line).group(1)
        elif _FUNC.match(line):
            fn = _FUNC.match(line).group(1)
        elif fn is not None and _USAGE.search(line):
            reg, stack, shared, local = map(int, _USAGE.search(line).groups())
            rows.append({"arch": arch, "function": fn, "REG": reg, "STACK": stack, "SHARED": shared, "LOCAL": local})
            fn = None
    return rows


def _demangle(names: List[str]) -> List[str]:
    """Readable kernel names: c++filt when present, then the part before the argument list, namespace dropped."""
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return names
    short = []
    for name in out:
        name = name.replace("augcl::(anonymous namespace)::", "").replace("c10::", "")
        head = name.split("(")[0]
        short.append(head.replace("void ", "", 1))
    return short


_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _describe(launch: Launch) -> str:
    """The constexpr and launch options of a launch, compactly (one compiled variant per distinct string)."""
    items = [f"{k}={v}" for k, v in sorted(launch.kwargs.items())]
    return " ".join(items)


def compile_all(launches: List[Launch], arch: int, workdir: str, shared_limit: Optional[int] = None,
                verbose: bool = False) -> List[dict]:
    """Compile each distinct launch for ``arch`` and check its resources; one row per compiled kernel.
    ``shared_limit`` overrides the architecture's shared-memory limit (bytes)."""
    from triton.runtime import driver

    driver.set_active(_NoDeviceDriver(arch))
    rows, seen = [], {}
    limit = shared_limit if shared_limit is not None else SHARED_LIMIT.get(arch)
    for launch in launches:
        name = launch.kernel.fn.__name__
        if verbose:  # before the compile: a compiler that aborts the process leaves this as the last line
            print(f"compiling sm_{arch} {name} [{launch.case}] {_describe(launch)}", flush=True)
        try:
            compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
        except Exception as exc:  # noqa: BLE001 - a compile failure is the finding
            msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
            rows.append({"arch": f"sm_{arch}", "case": launch.case, "kernel": name, "status": "FAIL",
                         "note": "compile failed: " + " | ".join(msg[-3:])[:400], "config": _describe(launch)})
            continue
        if id(compiled) in seen:  # same specialisation as an earlier launch: already checked
            continue
        seen[id(compiled)] = True
        path = os.path.join(workdir, f"{name}_{arch}_{len(seen)}.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = next((u for u in resource_usage(path) if u["function"] == name), {})
        meta = compiled.metadata
        threads = meta.num_warps * 32
        shared = int(meta.shared) + usage.get("SHARED", 0)
        regs = usage.get("REG")
        problems, notes = [], []
        if limit is not None and shared > limit:
            problems.append(f"shared memory {shared} B > {limit} B")
        if regs is not None and regs * threads > REGISTERS_PER_BLOCK:
            problems.append(f"{regs} registers x {threads} threads > {REGISTERS_PER_BLOCK}")
        if usage.get("LOCAL", 0) > 0:
            notes.append(f"{usage['LOCAL']} B local memory per thread (spills)")
        declined = launch.declined(limit) if launch.declined is not None else None
        if declined:  # supports() sends these calls elsewhere: not a failure, but the estimate must cover them
            notes.insert(0, f"declined by supports(): {declined}" + ("" if problems else " (it would fit)"))
            problems, notes = [], problems + notes
        if not usage:
            notes.append("no cuobjdump: registers unknown")
        rows.append({
            "arch": f"sm_{arch}", "case": launch.case, "kernel": name,
            "status": "FAIL" if problems else ("declined" if declined else
                                               "WARN" if usage.get("LOCAL", 0) > 0 else "ok"),
            "num_warps": meta.num_warps, "num_stages": meta.num_stages, "registers": regs,
            "local_bytes": usage.get("LOCAL"), "shared_bytes": shared, "shared_limit": limit,
            "note": "; ".join(problems + notes), "config": _describe(launch),
        })
    return rows


def cuda_extension_rows() -> List[dict]:
    """Resource usage of the CUDA C++ kernels embedded in augcl._C, per architecture (none if it was built
    without CUDA). Their blocks are at most 256 threads (so any register count <= 255 fits) and their dynamic
    shared memory (contrastive.cu's staged index lists) is bounded there by kMaxStagedIdxBytes, so
    registers and local memory are what there is to check here."""
    try:
        import augcl._C as ext
    except ImportError:
        return []
    usage = resource_usage(ext.__file__)
    names = _demangle([u["function"] for u in usage])
    rows = []
    for u, name in zip(usage, names):
        rows.append({"arch": u["arch"], "case": "augcl._C (CUDA C++)", "kernel": name,
                     "status": "WARN" if u["LOCAL"] > 0 else "ok", "registers": u["REG"],
                     "local_bytes": u["LOCAL"], "shared_bytes": u["SHARED"],
                     "note": f"{u['LOCAL']} B local memory per thread" if u["LOCAL"] else ""})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=harness.int_list, default=[80, 86, 90], help="compute capabilities, e.g. 80,90")
    p.add_argument("--quick", action="store_true", help="the CI subset of shapes")
    p.add_argument("--only", default=None, help="only the cases whose name contains this text")
    p.add_argument("--shared-limit", type=int, default=None,
                   help="shared memory limit in bytes instead of the architecture's (e.g. 101376 for sm_86/89)")
    p.add_argument("--no-csv", action="store_true", help="print only")
    p.add_argument("--verbose", action="store_true", help="print each launch before compiling it")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)

    import triton

    launches, rows = record_launches(args.quick, args.only)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            rows += compile_all(launches, arch, tmp, args.shared_limit, args.verbose)
    rows += cuda_extension_rows()

    triton_rows = [r for r in rows if r.get("case") != "augcl._C (CUDA C++)"]
    kernels = sorted({r["kernel"] for r in triton_rows if r["kernel"] != "-"})
    print(f"triton {triton.__version__}, torch {torch.__version__}; {len(launches)} launches recorded, "
          f"{len(triton_rows)} compiled variants of {len(kernels)} Triton kernels; "
          f"{len(rows) - len(triton_rows)} CUDA C++ kernels (per arch) in augcl._C")
    harness.print_table(
        ["arch", "kernel", "status", "warps", "stages", "regs", "local B", "shared B", "case / note"],
        [[r["arch"], r["kernel"], r["status"], str(r.get("num_warps", "")), str(r.get("num_stages", "")),
          str(r.get("registers", "")), str(r.get("local_bytes", "")), str(r.get("shared_bytes", "")),
          (r["case"] + ("; " + r["note"] if r.get("note") else ""))[:110]] for r in rows])
    bad = [r for r in rows if r["status"] == "FAIL"]
    warn = [r for r in rows if r["status"] == "WARN"]
    declined = [r for r in rows if r["status"] == "declined"]
    print(f"\n{len(rows)} rows: {len(bad)} FAIL, {len(warn)} WARN (local memory), {len(declined)} declined by "
          f"supports() (those calls run on another backend), {len(rows) - len(bad) - len(warn) - len(declined)} ok")
    for r in bad:
        print(f"FAIL {r['arch']} {r['kernel']} [{r['case']}]: {r['note']}")
    if not args.no_csv:
        name = f"preflight_triton-{triton.__version__}_torch-{torch.__version__.split('+')[0]}"
        path = os.path.join(args.out_dir, f"{name}_{harness.today()}.csv")
        harness.write_csv(rows, path)
        print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
