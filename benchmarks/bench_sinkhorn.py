#!/usr/bin/env python
"""SwAV's Sinkhorn + swapped-prediction loss, forward + backward: augcl's backends against the reference's
eager loop, torch.compile of it, and lightly's SwaVLoss.

    python benchmarks/bench_sinkhorn.py                 # GPU if there is one, else the CPU defaults
    python benchmarks/bench_sinkhorn.py --quick         # a smoke run
    python benchmarks/bench_sinkhorn.py --sinkhorn-only # codes only (no loss, no backward), e.g. to re-tune
                                                        # the Triton one-program threshold on a GPU

Every competitor gets the same scores of H = 2 large and L = 4 small crops, [B, K] each (leaf tensors with
requires_grad, uniform in [-1, 1) like cosine similarities), and is timed on
``loss = f(high, low); loss.backward()``: the codes of each large crop (Sinkhorn, eps 0.05, 3 iterations, no
gradient) and the soft-target cross-entropy of every other crop at temperature 0.1, differentiated w.r.t. the
scores. augcl's per-call value checks (one host sync each) are off (``augcl.set_checks(False)``).
See benchmarks/README.md ("bench_sinkhorn.py") for the columns and the hardware-limit formula.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

# Sleeping OpenMP waiters on a shared machine (see bench_contrastive.py): set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import harness as H  # noqa: E402

OP = "sinkhorn"
EPSILON, ITERATIONS, TEMPERATURE = 0.05, 3, 0.1
AUGCL_BACKENDS = ("triton", "cpu", "reference")
PEERS = ("eager", "compile", "lightly")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------ the eager reference
@torch.no_grad()
def eager_sinkhorn(out: torch.Tensor, epsilon: float = EPSILON, iterations: int = ITERATIONS) -> torch.Tensor:
    """SwAV's ``distributed_sinkhorn`` (facebookresearch/swav, main_swav.py) for one process, restated:
    exponentiate the scores, transpose to [K, B], normalise the total to 1, then alternately make every
    prototype row sum to 1/K and every sample column sum to 1/B; scale the columns back to sum 1."""
    q = torch.exp(out / epsilon).t()
    n_protos, n_samples = q.shape
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= n_protos
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


def eager_swav_loss(high: List[torch.Tensor], low: List[torch.Tensor]) -> torch.Tensor:
    """SwAV's loss loop (main_swav.py, train()): for each crop used for assignment, its codes are the target
    of the softmax of every other crop; averaged over the other crops, then over the assignment crops."""
    crops = list(high) + list(low)
    total = 0.0
    for i, h in enumerate(high):
        q = eager_sinkhorn(h.detach())
        subloss = 0.0
        for v, z in enumerate(crops):
            if v != i:
                subloss = subloss - torch.mean(torch.sum(q * F.log_softmax(z / TEMPERATURE, dim=1), dim=1))
        total = total + subloss / (len(crops) - 1)
    return total / len(high)


def eager_codes(high: List[torch.Tensor], low: List[torch.Tensor]):
    return [eager_sinkhorn(h.detach()) for h in high]


# ------------------------------------------------------------------------------------------- competitors
def make_competitor(name: str, sinkhorn_only: bool, compile_dynamic: bool = False):
    """fn(high, low) -> a scalar loss (timed with its backward), or with --sinkhorn-only the list of codes."""
    if name.startswith("augcl["):
        import augcl
        from augcl import functional as AF

        augcl.set_checks(False)
        backend = name[len("augcl["):-1]
        path = None
        if backend.startswith("triton-"):  # augcl[triton-single] / augcl[triton-multi]: a forced Triton path
            backend, path = "triton", backend[len("triton-"):]
        if sinkhorn_only:
            if path is not None:
                from augcl.kernels import sinkhorn as TK

                return lambda high, low: [TK.sinkhorn_fwd(h.detach(), EPSILON, ITERATIONS, path=path) for h in high]
            return lambda high, low: [AF.sinkhorn(h.detach(), EPSILON, ITERATIONS, backend=backend) for h in high]
        return lambda high, low: AF.swav_loss(high, low, temperature=TEMPERATURE, sinkhorn_iterations=ITERATIONS,
                                              sinkhorn_epsilon=EPSILON, backend=backend)
    if name == "eager":
        return eager_codes if sinkhorn_only else eager_swav_loss
    if name == "torch.compile":
        torch._dynamo.reset()
        return torch.compile(eager_codes if sinkhorn_only else eager_swav_loss,
                             dynamic=None if compile_dynamic else False, fullgraph=True)
    if name == "lightly":
        from lightly.loss import SwaVLoss
        from lightly.loss.swav_loss import sinkhorn

        if sinkhorn_only:
            return lambda high, low: [sinkhorn(h.detach(), ITERATIONS, EPSILON) for h in high]
        return SwaVLoss(TEMPERATURE, ITERATIONS, EPSILON)
    raise ValueError(name)


def unavailable(name: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None if the competitor can run on (device, dtype), else the reason (the dispatcher's for augcl)."""
    if name.startswith("augcl["):
        try:
            from augcl.dispatch import REGISTRY
        except Exception as exc:  # noqa: BLE001
            return f"augcl cannot be imported: {exc!r}"
        backend = name[len("augcl["):-1].split("-")[0]
        return REGISTRY["sinkhorn"].reasons(torch.zeros(4, 4, device=device, dtype=dtype), False)[backend]
    if name == "lightly":
        try:
            import lightly.loss  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"lightly cannot be imported: {exc!r}"
    return None


def competitor_names(backends: List[str], peers: List[str], sinkhorn_only: bool) -> List[str]:
    names = []
    for b in backends:
        if b == "triton" and sinkhorn_only:
            names += ["augcl[triton-single]", "augcl[triton-multi]"]
        names.append(f"augcl[{b}]")
    return names + [{"eager": "eager", "compile": "torch.compile", "lightly": "lightly"}[p] for p in peers]


# ------------------------------------------------------------------------------------------ measurement
def make_inputs(b: int, k: int, n_high: int, n_low: int, dtype, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    crops = [(torch.rand(b, k, generator=g) * 2 - 1).to(device=device, dtype=dtype).requires_grad_()
             for _ in range(n_high + n_low)]
    return crops[:n_high], crops[n_high:]


def run_sizes(spec: dict) -> List[dict]:
    """Every size of one competitor (ascending B), in this process: the first call at each size measures the
    peak extra memory, then the timed calls. A size whose single call exceeds the cap ends the sweep."""
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    name = spec["competitor"]
    out = []
    fn = None
    too_slow = None
    for b in spec["sizes"]:
        # The 1-minute load average as this size starts: on a shared machine, children that run at different
        # times see different loads, so the ratios between competitors are only as good as this column.
        res = {"b": b, "status": "ok", "reason": "", "load_1m": round(os.getloadavg()[0], 2)}
        if too_slow:
            out.append(dict(res, status="skipped", reason=too_slow))
            continue
        high = low = None
        try:
            high, low = make_inputs(b, spec["k"], spec["n_high"], spec["n_low"], dtype, device, spec["seed"])
            if fn is None or (name == "torch.compile" and not spec["compile_dynamic"]):
                # torch.compile: fresh per shape (dynamic=False), or one function for every B with torch's
                # automatic dynamic shapes (--compile-dynamic, the CPU default: one recompile, not one per B)
                fn = make_competitor(name, spec["sinkhorn_only"], spec["compile_dynamic"])
            last = {}

            def step():
                r = fn(high, low)
                if not spec["sinkhorn_only"]:
                    r.backward()
                last["out"] = r

            def drop_grads():
                for t in high + low:
                    t.grad = None

            if name == "torch.compile" or device.type == "cuda":
                # An untimed call at the real shape: torch.compile compiles (or recompiles) here, Triton JITs.
                res["warm_call_s"] = H.time_once_ms(step, device) / 1e3
                if name == "torch.compile":
                    res["compile_s"] = res["warm_call_s"]
                drop_grads()
            else:
                # CPU: a call on tiny inputs only (thread pools, lazy init), so the measured call's buffers still
                # come fresh from the OS and count as its memory; on 2 cores a real-shape warm-up costs minutes.
                th, tl_ = make_inputs(8, spec["k"], spec["n_high"], spec["n_low"], dtype, device, spec["seed"])
                r = fn(th, tl_)
                if not spec["sinkhorn_only"]:
                    r.backward()
                del th, tl_, r
            first = H.measure_first_call(step, device)
            res["extra_bytes"], res["mem_method"] = first["extra_bytes"], first["mem_method"]
            r = last.pop("out")
            # --sinkhorn-only: a checksum of the codes (sum of squares; their plain sum is B per crop by design)
            res["loss"] = (sum(float(c.double().square().sum()) for c in r) if spec["sinkhorn_only"]
                           else float(r.detach().double()))
            del r
            drop_grads()
            if first["ms"] > spec["cap_s"] * 1e3 and not name.startswith("augcl"):
                res.update(status="skipped", reason=f"too slow: one call took {first['ms'] / 1e3:.1f} s > cap "
                                                     f"{spec['cap_s']} s")
                too_slow = f"a smaller B={b} already exceeded the cap"
                out.append(res)
                continue
            if device.type == "cuda":
                rep = H.reps_within(first["ms"], spec["cap_s"], spec["rep"])
                timing = H.bench(step, device, warmup=spec["warmup"] if first["ms"] < 1000 else 0, rep=rep,
                                 setup=drop_grads)
            else:
                # CPU: the memory call is the first timing sample (a 2-core run must stay within minutes; its
                # fresh-page faults make it, if anything, slower), then rep - 1 more calls within the cap.
                rep = H.reps_within(first["ms"], spec["cap_s"], spec["rep"] - 1) if spec["rep"] > 1 else 0
                timing = H.bench(step, device, warmup=0, rep=rep, setup=drop_grads) if rep else H.Timing([])
                timing.times_ms.insert(0, first["ms"])
            res.update(H.timing_columns(timing))
        except Exception as exc:  # noqa: BLE001  (every failure becomes a reported row)
            res.update(H.failure(exc))
        finally:
            high = low = None  # free the inputs before the next size
            H.release_memory(device)
        out.append(res)
    return out


def child_main(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    name = spec["competitor"]
    reason = unavailable(name, torch.device(spec["device"]), DTYPES[spec["dtype"]])
    info = {}
    if name.startswith("augcl"):
        import augcl
        from augcl import _extension

        info["augcl"] = f"{augcl.__version__} (_C loaded: {_extension.LOADED})"
    if reason is not None:
        rows = [dict(b=b, status="unavailable", reason=reason) for b in spec["sizes"]]
    else:
        make_competitor(name, spec["sinkhorn_only"])  # imports (augcl, lightly) before any memory case
        rows = run_sizes(spec)
    H.emit_child_result(dict(info, status="ok", rows=rows))


# ------------------------------------------------------------------------------------------ derived columns
def min_bytes(b: int, k: int, n_crops: int, n_high: int, elem: int, sinkhorn_only: bool) -> int:
    """Unavoidable memory traffic: every crop's scores read once and every gradient written once (loss), or
    every large crop's scores read once and its fp32 codes written once (--sinkhorn-only)."""
    if sinkhorn_only:
        return n_high * b * k * (elem + 4)
    return 2 * n_crops * b * k * elem


def derive(rows: List[dict], bandwidth: float, meta: dict, args) -> List[dict]:
    elem = torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
    n_crops = args.n_high + args.n_low
    for r in rows:
        r.update({k: v for k, v in meta.items() if k not in r})
        r["k"], r["dtype"], r["n_high"], r["n_low"] = args.k, args.dtype, args.n_high, args.n_low
        nbytes = min_bytes(r["b"], args.k, n_crops, args.n_high, elem, args.sinkhorn_only)
        r["gbytes_min"] = nbytes / 1e9
        r["roofline_ms"] = nbytes / bandwidth * 1e3
        r["in_plus_grad_mib"] = n_crops * r["b"] * args.k * elem * (1 if args.sinkhorn_only else 2) / H.MIB
        extra = r.pop("extra_bytes", None)
        r["peak_extra_mib"] = None if extra is None else extra / H.MIB
        r["mem_ratio"] = None if extra is None else extra / (r["in_plus_grad_mib"] * H.MIB)
        if r.get("status") == "ok":
            r["limit_fraction"] = r["roofline_ms"] / r["ms_median"]
            r["gbps_effective"] = nbytes / (r["ms_median"] / 1e3) / 1e9
    H.add_comparisons(rows, lambda r: r["b"], refs=("augcl[reference]", "eager", "lightly"),
                      others=("eager", "torch.compile", "lightly"), ours=lambda r: r["competitor"].startswith("augcl"))
    return rows


COLUMN_ORDER = [
    "op", "mode", "device", "device_name", "date", "torch", "augcl", "threads", "load_start", "load_end",
    "omp_wait_policy", "load_1m", "b", "k", "n_high", "n_low", "dtype", "competitor", "status", "reason", "ms_median",
    "ms_p20", "ms_p80", "n_reps", "warm_call_s", "compile_s", "peak_extra_mib", "in_plus_grad_mib", "mem_ratio",
    "mem_method", "loss", "loss_rel_diff", "gbytes_min", "roofline_ms", "limit_fraction", "gbps_effective",
    "speedup_vs_eager", "speedup_vs_torch.compile", "speedup_vs_lightly", "limit_source", "times_ms",
]


def print_results(rows: List[dict], args) -> None:
    shown = ("eager", "torch.compile", "lightly")
    for b in dict.fromkeys(r["b"] for r in rows):
        group = [r for r in rows if r["b"] == b]
        r0 = group[0]
        print(f"\n== {r0['mode']} B={b} K={args.k} crops {args.n_high}+{args.n_low} {args.dtype}: "
              f"min traffic {r0['gbytes_min']:.3g} GB, roofline {r0['roofline_ms']:.3g} ms")
        table = []
        for r in group:
            ok = r.get("status") == "ok"
            t = f"{r['ms_median']:.4g} [{r['ms_p20']:.4g}, {r['ms_p80']:.4g}]" if ok else "-"
            mem = "-" if r.get("peak_extra_mib") is None else f"{r['peak_extra_mib']:.4g} ({r['mem_ratio']:.3g}x)"
            ups = [H.fmt_speedup(r.get(f"speedup_vs_{o}")) for o in shown]
            table.append([r["competitor"], r.get("status", ""), t, str(r.get("n_reps", "")) if ok else "", mem,
                          H.fmt(100 * r["limit_fraction"], ".3g") + "%" if ok else "-", H.fmt(r.get("loss"), ".7g"),
                          H.fmt(r.get("loss_rel_diff"), ".1e"), H.fmt(r.get("compile_s"), ".3g")] + ups)
        H.print_table(["competitor", "status", "ms median [p20, p80]", "reps", "extra MiB (x in+grad)", "% limit",
                       "loss", "rel diff", "compile s"] + [f"vs {o}" for o in shown], table)
        H.print_failures(group)
    print(f"\nlimit: {rows[0]['limit_source']}")


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = H.BenchParser(__doc__, warmup=(5, 0), rep=(30, 2), cap_s=(20.0, 15.0), child=True,
                      notes={"rep": "on a CPU the memory call is one of them"})
    p.add_argument("--sizes", type=H.int_list, default=None, help="comma list of B (default 256,1024,4096)")
    p.add_argument("--k", type=int, default=3000, help="prototypes K (default 3000)")
    p.add_argument("--n-high", type=int, default=2, help="large crops (default 2)")
    p.add_argument("--n-low", type=int, default=4, help="small crops (default 4)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_names("--backends", AUGCL_BACKENDS, "augcl backends", note=H.UNAVAILABLE_BACKEND)
    p.add_names("--peers", PEERS, "other competitors", note=H.UNAVAILABLE_PEER)
    p.add_argument("--sinkhorn-only", action="store_true", help="time the codes of the large crops only (no "
                   "loss, no backward); augcl[triton] then also runs with each path forced")
    p.add_argument("--compile-dynamic", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile once for every B with automatic dynamic shapes (CPU default) instead of "
                        "a fresh dynamic=False compile per B (GPU default)")
    p.add_argument("--quick", action="store_true", help="B = 256,1024 and 2 repetitions (smoke run)")
    return p.parse(argv, adjust=_device_defaults)


def _device_defaults(args, gpu: bool) -> None:
    args.sizes = args.sizes or ([256, 1024] if args.quick else [256, 1024, 4096])
    if args.quick:
        args.rep = args.rep or 2
    # CPU: the untimed call at the real shape is the warm-up (default 0); more calls only cost minutes on 2 cores.
    if args.compile_dynamic is None:
        args.compile_dynamic = not gpu


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.serve_child(args, child_main):
        return
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    mode = "sinkhorn only" if args.sinkhorn_only else "sinkhorn+loss fwd+bwd"
    meta = dict(op=OP, mode=mode, device=H.device_slug(device), device_name=H.device_name(device), date=H.today(),
                torch=torch.__version__, threads=torch.get_num_threads(), load_start=round(os.getloadavg()[0], 2),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    bw_start = H.measure_copy_bandwidth(device)
    print(f"{OP} benchmark ({mode}) on {meta['device_name']} | torch {meta['torch']} | {meta['date']} | load "
          f"average {meta['load_start']} on {os.cpu_count()} cpus | copy bandwidth {bw_start / 1e9:.1f} GB/s")
    print(f"B={args.sizes} K={args.k} crops {args.n_high} large + {args.n_low} small, {args.dtype}, eps {EPSILON}, "
          f"{ITERATIONS} iterations, T {TEMPERATURE}; rep={args.rep} warmup={args.warmup} cap={args.cap_s}s")

    rows: List[dict] = []
    augcl_tag = None
    for name in competitor_names(args.backends, args.peers, args.sinkhorn_only):
        spec = dict(competitor=name, device=str(device), dtype=args.dtype, sizes=sorted(args.sizes), k=args.k,
                    n_high=args.n_high, n_low=args.n_low, seed=args.seed, rep=args.rep, warmup=args.warmup,
                    cap_s=args.cap_s, threads=torch.get_num_threads(), sinkhorn_only=args.sinkhorn_only,
                    compile_dynamic=args.compile_dynamic)
        if device.type == "cuda":
            reason = unavailable(name, device, dtype)
            if reason is not None:
                rows += [dict(b=b, competitor=name, status="unavailable", reason=reason) for b in spec["sizes"]]
                print(f"{name}: unavailable: {reason}", flush=True)
                continue
        if device.type == "cuda":
            got = run_sizes(spec)
        else:
            timeout = 120 + len(args.sizes) * (3 * args.cap_s + (300 if name == "torch.compile" else 0))
            # CPU: one fresh child per competitor (its own allocator and imports; it never shares augcl._C with
            # this process), which also decides availability (the dispatcher's reason for augcl).
            res = H.run_script_child(__file__, spec, timeout)
            augcl_tag = augcl_tag or res.get("augcl")
            got = res["rows"] if res.get("status") == "ok" else [dict(b=b, status=res.get("status", "error"),
                                                                       reason=res.get("reason")) for b in spec["sizes"]]
        for r in got:
            r["competitor"] = name
            print(f"{name} B={r['b']}: {r['status']} {H.fmt(r.get('ms_median'), '.4g')} ms {r.get('reason', '')}",
                  flush=True)
        rows += got
    if augcl_tag is None:
        try:
            import augcl

            augcl_tag = augcl.__version__
        except Exception as exc:  # noqa: BLE001
            augcl_tag = f"not importable: {exc!r}"
    meta["augcl"] = augcl_tag
    meta["load_end"] = round(os.getloadavg()[0], 2)
    bw_end = H.measure_copy_bandwidth(device)
    bandwidth = H.best_bandwidth(bw_start, bw_end)
    meta["limit_source"] = (f"measured copy bandwidth (read + write of {1024 if device.type == 'cuda' else 256} MiB "
                            f"fp32, best of 5): {bw_start / 1e9:.2f} GB/s at start, {bw_end / 1e9:.2f} GB/s at end, "
                            f"limit = {bandwidth / 1e9:.2f} GB/s")
    rows = derive(rows, bandwidth, meta, args)
    rows = H.order_columns(rows, COLUMN_ORDER)
    tag = "_".join(t for t in (args.tag, "codes" if args.sinkhorn_only else "") if t)
    csv_path = H.results_path(args.out, OP, device, "csv", tag=tag)
    H.write_csv(rows, csv_path)
    png_path = H.plot(rows, csv_path[:-4] + ".png", x="b", series="competitor", panels=("k", "dtype"),
                      title=f"SwAV {mode} ({args.n_high}+{args.n_low} crops, K={args.k})\n{meta['device_name']}, "
                            f"{meta['date']}", xlabel="B (samples per crop)")
    print_results(rows, args)
    print(f"\nwrote {csv_path}" + (f"\nwrote {png_path}" if png_path else ""))


if __name__ == "__main__":
    main()
