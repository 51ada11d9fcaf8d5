#!/usr/bin/env python
"""SupCon (supervised contrastive) loss, forward + backward: augcl's fused op against the dense form people write,
its torch.compile, and pytorch-metric-learning's SupConLoss.

    python benchmarks/bench_supcon.py                    # GPU if there is one, else the CPU defaults
    python benchmarks/bench_supcon.py --quick            # a smoke run
    python benchmarks/bench_supcon.py --label cpu-shared # name the machine in the file name (see --label)
    python benchmarks/bench_supcon.py --help

Every competitor gets the same features x [N, D] (a leaf, requires_grad) and labels [N] drawn uniformly from
``--classes`` classes (default 10: ~N/10 positives a row), temperature 0.1, and is timed on
``loss = f(x, labels); loss.backward()``:

* ``augcl[<backend>]``: ``augcl.functional.supcon`` on that backend (one that cannot run here is a row
  ``unavailable`` with the dispatcher's reason); its value check is off (``augcl.set_checks(False)``) so it has no
  host sync the others do not have;
* ``eager``: the dense form, ``augcl.reference.supcon.supcon_reference`` ([N, N] logits and masks);
* ``torch.compile``: that function under ``torch.compile(fullgraph=True, dynamic=False)`` (compile time excluded:
  it runs in an untimed first call, reported as ``compile_s``);
* ``pml``: ``pytorch_metric_learning.losses.SupConLoss`` (its default cosine distance and reducer).

On a CPU every case runs in a fresh child process (memory: the kernel's RSS high-water mark reset after the inputs
are built, see harness.py); the dense competitors are skipped, with the reason, where their predicted memory
(measured at a smaller N, scaled by N^2) exceeds ``--mem-budget-gb``. Work per call (the hardware-limit column)
is that of the fused pass: ``8 N^2 D`` FLOP (forward logits, backward recomputation and the two gradient
products) and ``2 N^2`` exps; ``limit_fraction`` = roofline time / median time against the matmul and exp peaks
measured at the start and the end of the run. On a machine shared with other jobs the absolute times vary with
their load (the 1-minute load average at start and end is in the CSV); ratios between competitors of one run
are what the run measures.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

# Sleeping OpenMP waiters: on a shared 2-vCPU machine spinning waiters stall whole scheduler slices (see
# bench_contrastive.py). Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

import harness as H  # noqa: E402

OP = "supcon"
TEMPERATURE = 0.1
AUGCL_BACKENDS = ("triton", "cuda", "cpu", "reference")
PEERS = ("eager", "compile", "pml")
PEER_NAMES = {"eager": "eager", "compile": "torch.compile", "pml": "pml"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 1024 ** 3
# Rough peak extra bytes per N^2 on a CPU in fp32, used to skip a dense case before running it when no smaller N
# has run yet (afterwards the measured peak at the largest smaller N, scaled by N^2, is used).
DENSE_BYTES_PER_N2 = {"eager": 30.0, "torch.compile": 12.0, "pml": 40.0}


# ------------------------------------------------------------------------------------------- competitors
def make_competitor(name: str, device: torch.device):
    """``fn(x, labels) -> loss`` of competitor ``name``, or a str: why it cannot run here."""
    if name.startswith("augcl["):
        import augcl
        from augcl.dispatch import REGISTRY

        backend = name[len("augcl["):-1]
        augcl.set_checks(False)
        probe = torch.zeros(8, 4, device=device)
        reason = REGISTRY["contrastive"].reasons(probe, probe)[backend]
        if reason is not None:
            return reason
        return lambda x, y: augcl.functional.supcon(x, y, TEMPERATURE, backend=backend)
    from augcl.reference.supcon import supcon_reference

    if name == "eager":
        return lambda x, y: supcon_reference(x, y, TEMPERATURE)
    if name == "torch.compile":
        # a fresh compiled function per case: dynamo's recompile limit would otherwise send later shapes to eager
        torch._dynamo.reset()
        return torch.compile(lambda x, y: supcon_reference(x, y, TEMPERATURE), fullgraph=True, dynamic=False)
    if name == "pml":
        try:
            from pytorch_metric_learning.losses import SupConLoss
        except Exception as exc:  # noqa: BLE001  (any import failure is the reason)
            return f"pytorch_metric_learning cannot be imported: {exc!r}"
        return SupConLoss(temperature=TEMPERATURE)
    raise ValueError(name)


def make_inputs(n: int, d: int, classes: int, dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    return x, y


# ------------------------------------------------------------------------------------- one measured case
def run_case(spec: dict) -> dict:
    """Measure one (competitor, N, D, dtype): first call (compile) time, extra memory of the first timed call, then
    the timing. In a fresh child on a CPU, in this process on a GPU."""
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    res: dict = {"status": "ok", "reason": ""}
    fn = make_competitor(spec["competitor"], device)
    if isinstance(fn, str):
        return {"status": "unavailable", "reason": fn}
    x = y = None
    try:
        x, y = make_inputs(spec["n"], spec["d"], spec["classes"], dtype, device, spec["seed"])
        last = {}

        def step():
            loss = fn(x, y)
            loss.backward()
            last["loss"] = loss

        def drop_grads():
            x.grad = None

        if spec["competitor"] == "torch.compile" or device.type == "cuda":
            res["warm_call_s"] = H.time_once_ms(step, device) / 1e3  # compiles (or JIT-compiles the kernels)
            if spec["competitor"] == "torch.compile":
                res["compile_s"] = res["warm_call_s"]
            drop_grads()
        else:
            # one call on tiny inputs: thread pools and lazy initialisation are not the measured call's memory
            tx, ty = make_inputs(64, spec["d"], spec["classes"], dtype, device, spec["seed"])
            fn(tx, ty).backward()
            del tx, ty
        if device.type == "cpu" and spec.get("mem_budget"):
            H.limit_child_memory(int(spec["mem_budget"]))
        first = H.measure_first_call(step, device)
        res.update(extra_bytes=first["extra_bytes"], peak_rss_bytes=first["peak_rss_bytes"],
                   mem_method=first["mem_method"], mem_call_ms=first["ms"])
        res["loss"] = float(last["loss"].detach().float())
        drop_grads()
        is_augcl = spec["competitor"].startswith("augcl[")
        if first["ms"] > spec["cap_s"] * 1e3:
            if not is_augcl:  # augcl is what is benchmarked: it keeps its one sample
                res.update(status="skipped", reason=f"too slow: one fwd+bwd took {first['ms'] / 1e3:.1f} s > cap "
                                                    f"{spec['cap_s']} s")
                return res
            res.update(H.timing_columns(H.Timing([first["ms"]])))
            return res
        rep = H.reps_within(first["ms"], spec["cap_s"], spec["rep"])
        timing = H.bench(step, device, warmup=spec["warmup"] if first["ms"] < 1000 else 0, rep=rep, setup=drop_grads)
        res.update(H.timing_columns(timing))
    except Exception as exc:  # noqa: BLE001  (every failure becomes a reported row)
        res.update(H.failure(exc))
    finally:
        del x, y, fn
        H.release_memory(device)
    return res


def child_main(spec: dict) -> None:
    H.case_child_main(spec, run_case, lambda sp: make_inputs(sp["n"], sp["d"], sp["classes"], DTYPES[sp["dtype"]],
                                                               torch.device("cpu"), sp["seed"]))


def pre_skip(name: str, n: int, dtype: torch.dtype, budget: Optional[float], seen: Optional[dict]) -> Optional[str]:
    """Why a dense competitor is not run at N: its memory predicted from the largest smaller N it ran at (or the
    rough per-N^2 coefficient) exceeds the budget."""
    if budget is None or name not in DENSE_BYTES_PER_N2:
        return None
    if seen and seen.get("extra"):
        need = seen["extra"] * (n / seen["n"]) ** 2
        how = f"measured {seen['extra'] / H.MIB:.0f} MiB at N={seen['n']}, scaled by N^2"
    else:
        coef = DENSE_BYTES_PER_N2[name] * torch.tensor([], dtype=dtype).element_size() / 4
        need = coef * n ** 2
        how = f"~{coef:g} bytes x N^2"
    if need > budget:
        return f"would need ~{need / GIB:.1f} GiB ({how}) > memory budget {budget / GIB:g} GiB"
    return None


def run_all(args, device: torch.device) -> List[dict]:
    names = [f"augcl[{b}]" for b in args.backends] + [PEER_NAMES[p] for p in args.peers]
    budget = args.mem_budget_gb * GIB if args.mem_budget_gb else None
    rows, seen, baselines = [], {}, {}
    for dt in args.dtypes:
        for d in args.dims:
            for n in sorted(args.sizes):
                for name in names:
                    row = dict(n=n, d=d, classes=args.classes, dtype=dt, competitor=name,
                               kind="augcl" if name.startswith("augcl[") else ("peer" if name == "pml" else "baseline"))
                    reason = pre_skip(name, n, DTYPES[dt], budget, seen.get((name, d, dt)))
                    if reason is not None:
                        rows.append(dict(row, status="skipped", reason=reason))
                    else:
                        spec = dict(row, device=str(device), seed=args.seed, threads=torch.get_num_threads(),
                                    warmup=args.warmup, rep=args.rep, cap_s=args.cap_s, mem_budget=budget)
                        # no HWM reset possible: the baseline child per (N, D, dtype) builds the inputs only
                        rows.append(dict(row, **H.measure_case(__file__, spec, device, run_case, baselines,
                                                               (n, d, dt))))
                        r = rows[-1]
                        if r.get("status") == "ok":
                            seen[(name, d, dt)] = dict(n=n, extra=r.get("extra_bytes"))
                    r = rows[-1]
                    print(f"  {name:18s} N={n:6d} D={d:4d} {dt}: {r['status']:11s} {H.fmt(r.get('ms_median'), '.4g')} ms "
                          f"{H.fmt((r.get('extra_bytes') or 0) / H.MIB if r.get('extra_bytes') else None, '.4g')} MiB "
                          f"{r.get('reason', '')}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ results
def work(n: int, d: int) -> tuple:
    """FLOPs and exps of one fused forward + backward (see the module docstring)."""
    return 8 * n * n * d, 2 * n * n


def derive(rows: List[dict], limits: Dict[str, "H.Limits"], meta: dict) -> List[dict]:
    out = H.roofline_rows(rows, limits, meta, lambda r: work(r["n"], r["d"]))
    H.add_comparisons(out, lambda r: (r["n"], r["d"], r["dtype"]), refs=("augcl[reference]", "eager", "pml"),
                      others=("eager", "torch.compile", "pml"), ours=lambda r: r["kind"] == "augcl")
    return out


COLUMN_ORDER = [
    "op", "device", "device_name", "date", "torch", "augcl", "threads", "load_start", "load_end", "omp_wait_policy",
    "n", "d", "classes", "dtype", "competitor", "kind", "status", "reason", "ms_median", "ms_p20", "ms_p80", "n_reps",
    "mem_call_ms", "compile_s", "peak_extra_mib", "mem_method", "loss", "loss_rel_diff", "gflop", "roofline_ms",
    "limit_fraction", "speedup_vs_eager", "speedup_vs_torch.compile", "speedup_vs_pml", "limit_source", "times_ms",
]


def parse_args(argv=None):
    p = H.BenchParser(__doc__, warmup=(5, 1), rep=(30, 5), cap_s=(20.0, 30.0), child=True,
                      notes={"rep": "capped by --cap-s",
                             "cap_s": "a non-augcl case whose single call exceeds it is reported as skipped"})
    p.add_argument("--sizes", type=H.int_list, help="comma list of N (rows); GPU default 4096,16384,65536, CPU "
                   "default 1024,4096,16384")
    p.add_argument("--dims", type=H.int_list, help="comma list of D; default 128")
    p.add_argument("--classes", type=H.positive_int, default=10, help="number of classes the labels are drawn "
                   "from (default 10)")
    p.add_names("--dtypes", DTYPES, "dtypes", default=None, default_help="GPU bf16,fp32, CPU fp32")
    p.add_names("--backends", AUGCL_BACKENDS, "augcl backends", note=H.UNAVAILABLE_BACKEND)
    p.add_names("--peers", PEERS, "other competitors", note=H.UNAVAILABLE_PEER)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (smoke test)")
    p.add_argument("--mem-budget-gb", type=float, default=None, help="skip dense cases predicted to need more "
                   "extra memory than this (CPU default 6, also enforced in the child with RLIMIT_DATA; GPU: none)")
    p.add_argument("--label", default=None, help="the machine's part of the result file name (default: the device "
                   "slug, e.g. cpu-amd-epyc-2t); e.g. cpu-shared for a machine shared with other jobs")
    return p.parse(argv, adjust=_device_defaults)


def _device_defaults(args, gpu: bool) -> None:
    if args.quick:
        args.sizes = args.sizes or ([1024, 4096] if gpu else [256, 1024])
        args.rep = args.rep or 3
    args.sizes = args.sizes or ([4096, 16384, 65536] if gpu else [1024, 4096, 16384])
    args.dims = args.dims or [128]
    args.dtypes = args.dtypes or (["bf16", "fp32"] if gpu else ["fp32"])
    if args.mem_budget_gb is None and not gpu:
        args.mem_budget_gb = 6.0


SHOWN = ("eager", "torch.compile", "pml")


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.serve_child(args, child_main):
        return
    H.op_benchmark_main(
        args, op=OP, dtypes={dt: DTYPES[dt] for dt in args.dtypes}, run_all=run_all, derive=derive,
        column_order=COLUMN_ORDER,
        describe=(f"N={args.sizes} D={args.dims} classes={args.classes} dtypes={args.dtypes} rep={args.rep} "
                  f"cap={args.cap_s}s budget={args.mem_budget_gb} GiB; augcl value checks off"),
        plot=lambda rows, path, meta: H.plot(
            rows, path, x="n", series="competitor", panels=("d", "dtype"), xlabel="N (rows)",
            title=f"SupCon forward+backward, {meta['device_name']}, {meta['date']}"),
        table=(["competitor", "N", "D", "dtype", "status", "ms median [p20, p80]", "extra MiB", "% limit", "loss"]
               + [f"vs {o}" for o in SHOWN],
               lambda r: [r["competitor"], r["n"], r["d"], r["dtype"], r["status"], H.timing_cell(r),
                          H.fmt(r.get("peak_extra_mib"), ".4g"),
                          H.fmt(100 * r["limit_fraction"], ".3g") if r.get("limit_fraction") else "-",
                          H.fmt(r.get("loss"), ".6g")]
               + [H.fmt_speedup(r.get(f"speedup_vs_{o}")) for o in SHOWN]))


if __name__ == "__main__":
    main()
