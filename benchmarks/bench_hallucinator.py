#!/usr/bin/env python
"""Hallucinator generator, forward + backward: augcl's backends against the reference's eager module and its
torch.compile.

    python benchmarks/bench_hallucinator.py            # CPU: the reduced grid (B 256,1024,4096; D 128,256; fp32)
    python benchmarks/bench_hallucinator.py --full     # the full grid (B 256..8192; D 128,256,512), GPU dtypes
    python benchmarks/bench_hallucinator.py --help

Every competitor gets the same x, k [B, D] (leaf tensors, requires_grad), the same weights (hidden H = 2D, the
reference's shape) and lam = 0.05, and is timed on ``out = gen(x, k, lam); out.backward(grad)`` with
``out = [x; h]`` [2B, D]. Competitors:

* ``augcl[<backend>]``: ``augcl.nn.Hallucinator`` on that backend (a backend that cannot run is a row
  ``unavailable`` with the dispatcher's reason);
* ``eager``: the reference's ``Generator`` structure (cat, Linear, ReLU), ``augcl.reference.hallucinator``;
* ``compile``: ``torch.compile`` of that module (compile time excluded: it runs in the warm-up).

Work per call (the hardware-limit column): forward 2B(2D H + H^2 + H D) FLOP, backward twice that (weight and
input gradients), i.e. ``6 B (3 D H + H^2)`` FLOP; ``pct_of_peak`` = that over the median time, against the
measured (CPU) or datasheet (GPU) matmul peak of the dtype.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List

# Sleeping OpenMP waiters: on a shared 2-vCPU machine spinning waiters stall whole scheduler slices (see
# bench_contrastive.py). Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

import harness as H  # noqa: E402

OP = "hallucinator"
LAM = 0.05
AUGCL_BACKENDS = ("triton", "cpu", "reference")
PEERS = ("eager", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops(b: int, d: int, h: int) -> float:
    return 6.0 * b * (3 * d * h + h * h)


def make_case(b: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    from augcl.reference.hallucinator import ReferenceGenerator

    torch.manual_seed(seed)
    ref = ReferenceGenerator(2 * d, 2 * d, d).to(device=device, dtype=dtype)
    x = torch.randn(b, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(b, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(2 * b, d, device=device, dtype=dtype)
    return ref, x, k, grad


def competitor(name: str, ref, device: torch.device):
    """(callable gen(x, k, lam) -> [2B, D], its parameters) or (None, reason)."""
    import augcl

    if name.startswith("augcl["):
        backend = name[6:-1]
        gen = augcl.nn.Hallucinator(ref.fc3.out_features, hidden=ref.fc1.out_features, backend=backend)
        gen = gen.to(device=device, dtype=ref.fc1.weight.dtype)
        gen.load_state_dict(ref.state_dict())
        probe = torch.zeros(1, 1, device=device, dtype=ref.fc1.weight.dtype)
        reason = augcl.dispatch.REGISTRY["hallucinate"].reasons(probe)[backend]
        if reason is not None:
            return None, reason
        return gen, list(gen.parameters())
    if name == "eager":
        return ref, list(ref.parameters())
    if name == "compile":
        return torch.compile(ref, dynamic=False), list(ref.parameters())
    raise ValueError(name)


def run_case(name: str, b: int, d: int, dtype: torch.dtype, device: torch.device, args) -> dict:
    torch._dynamo.reset()
    ref, x, k, grad = make_case(b, d, dtype, device, args.seed)
    gen, params = competitor(name, ref, device)
    row = dict(competitor=name, B=b, D=d, H=2 * d, dtype=str(dtype).replace("torch.", ""))
    if gen is None:
        row.update(status="unavailable", note=params)
        return row

    def step():
        out = gen(x, k, LAM)
        out.backward(grad)

    def drop_grads():
        for t in [x, k] + params:
            t.grad = None

    try:
        drop_grads()
        first_ms = H.time_once_ms(step, device)  # includes compilation for `compile`
        rep = H.reps_within(first_ms, args.cap_s, args.rep) if name != "compile" else args.rep
        t = H.bench(step, device, warmup=args.warmup, rep=rep, setup=drop_grads)
    except Exception as exc:  # noqa: BLE001  (an OOM or a backend failure is a row, not a crash)
        row.update(status="oom" if H.is_oom(exc) else "error", note=f"{type(exc).__name__}: {exc}"[:300])
        return row
    row.update(status="ok", ms_median=t.median, ms_p20=t.p20, ms_p80=t.p80, reps=len(t.times_ms),
               first_call_ms=first_ms)
    if device.type == "cuda":
        drop_grads()
        row["peak_extra_mib"] = H.gpu_peak_extra_bytes(step, device) / H.MIB
    return row


def derive(rows: List[dict], limits: Dict[str, "H.Limits"]) -> None:
    eager = {(r["B"], r["D"], r["dtype"]): r["ms_median"] for r in rows if r["competitor"] == "eager"
             and r["status"] == "ok"}
    comp = {(r["B"], r["D"], r["dtype"]): r["ms_median"] for r in rows if r["competitor"] == "compile"
            and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        key = (r["B"], r["D"], r["dtype"])
        f = flops(r["B"], r["D"], r["H"])
        r["gflop"] = f / 1e9
        r["tflops"] = f / (r["ms_median"] * 1e-3) / 1e12
        lim = limits.get(r["dtype"])
        if lim is not None:
            r["pct_of_peak"] = 100.0 * f / (r["ms_median"] * 1e-3) / lim.matmul_flops
        if key in eager:
            r["speedup_vs_eager"] = eager[key] / r["ms_median"]
        if key in comp:
            r["speedup_vs_compile"] = comp[key] / r["ms_median"]


def parse_args(argv=None):
    p = H.BenchParser(__doc__, warmup=(5, 1), rep=(30, 5), cap_s=(20.0, 10.0))
    p.add_argument("--full", action="store_true", help="the full grid: B 256,1024,2048,4096,8192; D 128,256,512; "
                   "GPU dtypes bf16,fp32")
    p.add_argument("--sizes", type=H.int_list, help="comma list of B (default CPU 256,1024,4096)")
    p.add_argument("--dims", type=H.int_list, help="comma list of D (default CPU 128,256)")
    p.add_names("--dtypes", DTYPES, "dtypes", default=None, default_help="GPU bf16,fp32, CPU fp32")
    p.add_names("--backends", AUGCL_BACKENDS, "augcl backends", note=H.UNAVAILABLE_BACKEND)
    p.add_names("--peers", PEERS, "other competitors")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls (every competitor)")
    return p.parse(argv, adjust=_device_defaults)


def _device_defaults(args, gpu: bool) -> None:
    full = args.full or gpu
    args.sizes = args.sizes or ([256, 1024, 2048, 4096, 8192] if full else [256, 1024, 4096])
    args.dims = args.dims or ([128, 256, 512] if full else [128, 256])
    args.dtypes = args.dtypes or (["bf16", "fp32"] if gpu else ["fp32"])


def main(argv=None) -> None:
    args = parse_args(argv)
    import augcl

    augcl.set_checks(False)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes, dims, dtypes = args.sizes, args.dims, args.dtypes
    comps = [f"augcl[{b}]" for b in args.backends] + list(args.peers)

    limits = {}
    for name in dtypes:
        dt = DTYPES[name]
        lim = H.gpu_table_limits(device, dt, args.tf32) if gpu else None
        limits[str(dt).replace("torch.", "")] = lim or H.measured_limits(device, dt)
    load_start = os.getloadavg()[0]
    print(f"{OP}: {H.device_name(device)}; B={sizes} D={dims} dtypes={dtypes}; load {load_start:.2f}")
    t0 = time.time()
    rows = []
    for name in dtypes:
        for d in dims:
            for b in sizes:
                for c in comps:
                    row = run_case(c, b, d, DTYPES[name], device, args)
                    row.update(device=H.device_name(device), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                               torch=torch.__version__)
                    rows.append(row)
                    print(f"  {c:18s} B={b:5d} D={d:4d} {name}: {row['status']} "
                          f"{H.fmt(row.get('ms_median'))} ms {row.get('note', '')}", flush=True)
    derive(rows, limits)
    load_end = os.getloadavg()[0]
    for r in rows:
        r.update(load_start=load_start, load_end=load_end,
                 limit_source=getattr(limits.get(r["dtype"]), "source", ""))
    csv_path = H.results_path(args.out, OP, device, "csv", tag=args.tag)
    H.write_csv(rows, csv_path)
    png_path = H.plot(rows, H.results_path(args.out, OP, device, "png", tag=args.tag), x="B", series="competitor",
                      panels=("D", "dtype"), title=f"Hallucinator fwd+bwd, {H.device_name(device)}", xlabel="B (rows)")
    H.print_table(["competitor", "B", "D", "dtype", "ms", "x eager", "x compile", "% peak"],
                  [[r["competitor"], r["B"], r["D"], r["dtype"], H.fmt(r.get("ms_median")),
                    H.fmt(r.get("speedup_vs_eager")), H.fmt(r.get("speedup_vs_compile")),
                    H.fmt(r.get("pct_of_peak"))] for r in rows if r["status"] == "ok"])
    print(f"wrote {csv_path}" + (f" and {png_path}" if png_path else "") + f" ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
