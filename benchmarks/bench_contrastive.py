#!/usr/bin/env python
"""NT-Xent (SimCLR) loss, forward + backward: augcl's backends against what people use today.

    python benchmarks/bench_contrastive.py            # GPU if there is one, else the CPU defaults
    python benchmarks/bench_contrastive.py --quick    # a smoke run
    python benchmarks/bench_contrastive.py --help

Every competitor gets the same inputs z1, z2 [N, D] (leaf tensors, requires_grad) and is timed on
``loss = f(z1, z2); loss.backward()``. augcl's per-call value check (one host sync) is switched off with
``augcl.set_checks(False)`` so its timings have no sync the other competitors do not have.
See benchmarks/README.md for the columns and the hardware-limit formulas.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

# OpenMP threads that spin while waiting (libgomp's default) stall for a whole scheduler slice whenever the
# other core is busy: on a shared 2-vCPU machine every parallel torch op (torch.exp of 4096 elements
# included) then cost ~8 ms instead of ~0.02 ms, for every competitor. Sleeping waiters avoid that. Set
# before torch is imported (libgomp reads it once); inherited by the child processes; an explicit
# OMP_WAIT_POLICY in the environment wins (e.g. ACTIVE on a dedicated machine). Recorded in the CSV.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # `import harness` when run as a script (also in the child processes)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))  # a source checkout of augcl, if it is not installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import harness as H  # noqa: E402

OP = "nt_xent"
TEMPERATURE = 0.5
AUGCL_BACKENDS = ("triton", "cuda", "cpu", "reference")
PEERS = ("eager", "compile", "lightly", "pml", "infcl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 1024 ** 3
# In the CPU memory case (2N = 32768) the O(N^2) competitors are skipped when they would need more than this.
MEMTEST_BUDGET = 6 * GIB


# ------------------------------------------------------------------------------------- competitors
def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The NT-Xent users write by hand: the full [2N, 2N] similarity matrix, the diagonal masked out,
    cross-entropy towards the other view. O(N^2) memory, several passes over the matrix."""
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    two_n = z.shape[0]
    n = two_n // 2
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(two_n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, two_n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(sim, targets)


def _augcl(backend: str):
    import augcl

    augcl.set_checks(False)  # no per-call host sync while timing (see module docstring)
    return lambda z1, z2: augcl.functional.nt_xent(z1, z2, TEMPERATURE, backend=backend)


# CPU runs fill this from a probe child (see probe_augcl), so the parent process never loads augcl._C.
_PROBED_REASONS: Optional[Dict[str, Optional[str]]] = None


def _reason_key(backend: str, dtype: torch.dtype, d: int) -> str:
    return f"{backend}|{dtype}|{d}"


def _augcl_unavailable(backend: str):
    def reason(device, dtype, d):
        if _PROBED_REASONS is not None and device.type == "cpu":
            return _PROBED_REASONS.get(_reason_key(backend, dtype, d), "augcl could not be probed (see the augcl tag)")
        try:
            from augcl.dispatch import REGISTRY
        except Exception as exc:  # noqa: BLE001  (report any import failure as the reason)
            return f"augcl cannot be imported: {exc!r}"
        probe = torch.zeros(8, d, device=device, dtype=dtype)
        return REGISTRY["contrastive"].reasons(probe, probe)[backend]

    return reason


def _make_compile(device, dtype, d):
    # A fresh compiled function per case: dynamo's per-function recompile limit would otherwise make later
    # shapes silently fall back to eager. dynamic=False: each case compiles for its exact shape.
    torch._dynamo.reset()
    return torch.compile(naive_nt_xent, dynamic=False, fullgraph=True)


def _make_lightly(device, dtype, d):
    from lightly.loss import NTXentLoss

    return NTXentLoss(temperature=TEMPERATURE)


def _make_pml(device, dtype, d):
    from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

    return SelfSupervisedLoss(NTXentLoss(temperature=TEMPERATURE))


def _infcl_head_dim(d: int) -> Optional[int]:
    # inf-cl views rows as [heads, head_dim] (head_dim in 16..256) and sums the heads' dot products.
    for hd in (256, 128, 64, 32, 16):
        if d % hd == 0:
            return hd
    return None


def _make_infcl(device, dtype, d):
    """inf-cl's ``cal_inf_loss(q, k, labels)`` is a one-directional CLIP loss: row i of q against every row
    of k, ``mean_i( logsumexp_j q_i.k_j - q_i.k_labels[i] )``, no mask. The closest NT-Xent equivalent is
    q = k = normalised [z1; z2] / T with labels = the other view: the same 2N x 2N problem, except that its
    logsumexp also contains the self-similarity term j = i (exp(1/T)), which NT-Xent excludes. inf-cl also
    casts to fp32 internally (its Triton dots then use TF32)."""
    from inf_cl import cal_inf_loss

    head_dim = _infcl_head_dim(d)

    def loss(z1, z2):
        z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
        n = z1.shape[0]
        labels = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
        return cal_inf_loss(z / TEMPERATURE, z, labels=labels, head_dim=head_dim)

    return loss


def _needs_import(module: str):
    def reason(device, dtype, d):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001
            return f"{module} cannot be imported: {exc!r}"
        return None

    return reason


def _infcl_unavailable(device, dtype, d):
    if device.type != "cuda":
        return "inf-cl is Triton-only and needs CUDA tensors"
    if _infcl_head_dim(d) is None:
        return f"inf-cl needs D divisible by a head_dim in 16..256, got D={d}"
    return _needs_import("inf_cl")(device, dtype, d)


@dataclass
class Competitor:
    name: str
    kind: str  # "augcl", "baseline" (eager / torch.compile) or "peer" (another library)
    make: Callable  # (device, dtype, d) -> fn(z1, z2) -> scalar loss
    unavailable: Callable  # (device, dtype, d) -> reason or None
    # Rough peak extra bytes per (2N)^power, measured on CPU fp32 (see README); 0 for the augcl backends,
    # whose memory is O(N * D + tile). Only used to skip, before running it, a case that would need more
    # than --mem-budget-gb; once a smaller size has run, its measured peak scaled by (2N)^power is used.
    mem_coef: float = 0.0
    compiles: bool = False
    # Time and (for the O(N^2) competitors) memory grow as (2N)^power; pml's NTXentLoss builds a
    # [positive pairs, negative pairs] = [2N, 2N(2N-2)] mask, so it is cubic.
    power: int = 2


def competitors(backends: List[str], peers: List[str]) -> List[Competitor]:
    out = [Competitor(f"augcl[{b}]", "augcl", lambda dev, dt, d, b=b: _augcl(b), _augcl_unavailable(b))
           for b in backends]
    table = {
        "eager": Competitor("eager", "baseline", lambda dev, dt, d: naive_nt_xent, lambda *a: None, 25.0),
        "compile": Competitor("torch.compile", "baseline", _make_compile, lambda *a: None, 8.0, compiles=True),
        "lightly": Competitor("lightly", "peer", _make_lightly, _needs_import("lightly.loss"), 25.0),
        "pml": Competitor("pml", "peer", _make_pml, _needs_import("pytorch_metric_learning.losses"), 17.0, power=3),
        "infcl": Competitor("inf-cl", "peer", _make_infcl, _infcl_unavailable),
    }
    return out + [table[p] for p in peers]


# ------------------------------------------------------------------------------------ one measured case
def make_inputs(two_n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int):
    """The same z1, z2 for every competitor of a case (generated in fp32 on the CPU, then converted)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(two_n, d, generator=g).to(device=device, dtype=dtype)
    n = two_n // 2
    z1 = z[:n].clone().requires_grad_(True)
    z2 = z[n:].clone().requires_grad_(True)
    del z
    return z1, z2


def run_case(spec: dict, comp: Competitor, in_child: bool) -> dict:
    """Measure one (competitor, 2N, D, dtype): compile time, peak extra memory of the first timed call,
    then the timing. Runs in a fresh child process on CPU, in this process on GPU."""
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    res: dict = {"status": "ok", "reason": ""}
    z1 = z2 = fn = None
    try:
        z1, z2 = make_inputs(spec["two_n"], spec["d"], dtype, device, spec["seed"])
        fn = comp.make(device, dtype, spec["d"])
        last = {}

        def step():
            loss = fn(z1, z2)
            loss.backward()
            last["loss"] = loss

        def drop_grads():
            z1.grad = None
            z2.grad = None

        if comp.compiles or device.type == "cuda":
            # An untimed first call at the real shape: torch.compile compiles its forward and backward graphs
            # here; on GPU, Triton kernels (augcl, inf-cl) are JIT-compiled / autotuned. The CUDA allocator's
            # allocated-bytes statistics do not depend on its cache, so this does not hide GPU memory.
            res["warm_call_s"] = H.time_once_ms(step, device) / 1e3
            if comp.compiles:
                res["compile_s"] = res["warm_call_s"]
            drop_grads()
        else:
            # CPU: one call on tiny inputs only, so one-time costs (thread pools, lazy library init) are not
            # counted as memory of the measured call while its big buffers still come fresh from the OS.
            t1, t2 = make_inputs(16, spec["d"], dtype, device, spec["seed"])
            fn(t1, t2).backward()
            del t1, t2
        if in_child and spec.get("mem_budget"):
            H.limit_child_memory(int(spec["mem_budget"]))

        first = H.measure_first_call(step, device)
        res.update(extra_bytes=first["extra_bytes"], peak_rss_bytes=first["peak_rss_bytes"],
                   mem_method=first["mem_method"])
        res["mem_call_ms"] = first["ms"]
        res["loss"] = float(last["loss"].detach().float())
        drop_grads()
        # The measured call is the only timing sample in the CPU memory case (rep=0), and for an augcl
        # backend whose single call exceeds the cap: augcl is what is benchmarked, so it is not skipped.
        if spec["rep"] == 0 or (comp.kind == "augcl" and first["ms"] > spec["cap_s"] * 1e3):
            res.update(H.timing_columns(H.Timing([first["ms"]])))
            return res
        if first["ms"] > spec["cap_s"] * 1e3:
            res["status"] = "skipped"
            res["reason"] = f"too slow: one fwd+bwd took {first['ms'] / 1e3:.1f} s > cap {spec['cap_s']} s"
            return res
        rep = H.reps_within(first["ms"], spec["cap_s"], spec["rep"])
        # The memory call warmed up already; more warm-up only where calls are short.
        warmup = spec["warmup"] if first["ms"] < 1000 else 0
        timing = H.bench(step, device, warmup=warmup, rep=rep, setup=drop_grads)
        res.update(H.timing_columns(timing))
    except Exception as exc:  # noqa: BLE001  (every failure becomes a reported row)
        res.update(H.failure(exc))
    finally:
        del z1, z2, fn
        H.release_memory(device)
        if comp.compiles:
            torch._dynamo.reset()
    return res


def baseline_child(spec: dict) -> dict:
    """Fallback memory baseline: a child that only imports and builds the inputs (see harness docstring)."""
    make_inputs(spec["two_n"], spec["d"], DTYPES[spec["dtype"]], torch.device("cpu"), spec["seed"])
    return {"status": "ok", "peak_rss_bytes": H.peak_rss_bytes()}


def probe_child(spec: dict) -> dict:
    """augcl's version and every backend's verdict for each (D, dtype) of the run, on CPU tensors."""
    reasons = {}
    for d, dt in spec["combos"]:
        for b in AUGCL_BACKENDS:
            reasons[_reason_key(b, DTYPES[dt], d)] = _augcl_unavailable(b)(torch.device("cpu"), DTYPES[dt], d)
    return {"status": "ok", "augcl": H.augcl_info(), "reasons": reasons}


def probe_augcl(args) -> str:
    """CPU runs: ask a child for augcl's version and backend verdicts. The parent then never maps augcl._C,
    so rebuilding that file in place (as `pip install -e .` does) cannot crash a long run; it could only
    fail the one child that was loading it at the time, which is reported."""
    global _PROBED_REASONS
    combos = sorted({(c["d"], c["dtype"]) for c in build_cases(args, torch.device("cpu"))})
    res = H.run_script_child(__file__, {"probe": True, "combos": combos, "threads": torch.get_num_threads()}, 600)
    if res.get("status") != "ok":
        _PROBED_REASONS = {}
        return f"probe failed: {res.get('reason')}"
    _PROBED_REASONS = res["reasons"]
    return res["augcl"]


def child_main(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    if spec.get("probe"):
        H.emit_child_result(probe_child(spec))
        return
    if spec.get("baseline"):
        H.emit_child_result(baseline_child(spec))
        return
    comp = {c.name: c for c in competitors(list(AUGCL_BACKENDS), list(PEERS))}[spec["competitor"]]
    if comp.kind == "augcl":
        comp.make(torch.device("cpu"), None, None)  # import augcl (and set_checks) before memory is measured
    elif comp.kind == "peer":
        comp.unavailable(torch.device(spec["device"]), None, spec["d"])  # import the library up front too
    res = run_case(spec, comp, in_child=True)
    H.emit_child_result(res)


# ------------------------------------------------------------------------------------------ the sweep
def pre_skip(comp: Competitor, two_n: int, dtype: torch.dtype, budget: Optional[float], cap_s: Optional[float],
             seen: Optional[dict]) -> Optional[str]:
    """Reason to skip a case without running it: its predicted peak memory exceeds the budget, or its
    predicted single call exceeds the time cap. ``seen`` = (2N, extra bytes, first-call ms) of the largest
    smaller size this competitor ran at (same D and dtype); predictions scale it by (2N)^power."""
    p = comp.power
    if budget is not None and comp.mem_coef:
        if seen and seen.get("extra"):
            need = seen["extra"] * (two_n / seen["two_n"]) ** p
            how = f"measured {seen['extra'] / H.MIB:.0f} MiB at 2N={seen['two_n']}, scaled by (2N)^{p}"
        else:
            coef = comp.mem_coef * torch.tensor([], dtype=dtype).element_size() / 4  # coefficients are for fp32
            need = coef * two_n ** p
            how = f"~{coef:g} bytes x (2N)^{p}"
        if need > budget:
            return f"would need ~{need / GIB:.1f} GiB ({how}) > memory budget {budget / GIB:g} GiB"
    if cap_s is not None and seen and seen.get("ms"):
        t = seen["ms"] / 1e3 * (two_n / seen["two_n"]) ** p
        if t > cap_s:
            return (f"too slow: one call predicted ~{t:.0f} s ({seen['ms'] / 1e3:.2g} s at 2N={seen['two_n']}, "
                    f"scaled by (2N)^{p}) > cap {cap_s:g} s")
    return None


def measure_one(args, comp: Competitor, case: dict, device: torch.device, baselines: dict) -> dict:
    memtest = case["case"] == "memtest"
    spec = dict(case, competitor=comp.name, device=str(device), seed=args.seed, threads=torch.get_num_threads(),
                # The memory case needs one call, not a timing distribution: rep=0 (the measured call is the
                # only sample), its own (longer) cap.
                warmup=0 if memtest else args.warmup, rep=0 if memtest else args.rep,
                cap_s=args.memtest_cap_s if memtest and comp.kind == "augcl" else args.cap_s,
                mem_budget=None)
    if args.mem_budget_gb:
        spec["mem_budget"] = min(args.mem_budget_gb * GIB, MEMTEST_BUDGET) if memtest else args.mem_budget_gb * GIB
    if device.type == "cuda":
        return run_case(spec, comp, in_child=False)
    timeout = 120 + 3 * spec["cap_s"] + (600 if comp.compiles else 0)
    res = H.run_script_child(__file__, spec, timeout)
    if res.get("status") in ("ok", "skipped") and res.get("extra_bytes") is None and "peak_rss_bytes" in res:
        # No HWM reset possible in the child: subtract a child that only builds the inputs.
        key = (case["two_n"], case["d"], case["dtype"])
        if key not in baselines:
            base = H.run_script_child(__file__, dict(spec, baseline=True), 600)
            baselines[key] = base.get("peak_rss_bytes")
        if baselines[key] is not None:
            res["extra_bytes"] = res["peak_rss_bytes"] - baselines[key]
    return res


def build_cases(args, device) -> List[dict]:
    cases = [dict(case="sweep", two_n=s, d=d, dtype=t)
             for t in args.dtypes for d in args.dims for s in sorted(args.sizes)]
    if device.type == "cpu" and not args.no_memtest:
        # The memory requirement: 2N = 32768, D = 128 fp32 fwd+bwd well under 1 GB on the CPU
        # backend (the full fp32 [2N, 2N] matrix alone is 4 GiB).
        cases.append(dict(case="memtest", two_n=args.memtest_size, d=128, dtype="fp32"))
    return cases


def run_all(args, device, comps: List[Competitor]) -> List[dict]:
    from tqdm import tqdm

    rows: List[dict] = []
    baselines: dict = {}
    budget = args.mem_budget_gb * GIB if args.mem_budget_gb else None
    # Per (competitor, D, dtype): what the largest size run so far cost, and whether a smaller size already
    # failed, so a larger size is skipped with the reason instead of spending minutes to fail again.
    seen: Dict[tuple, dict] = {}
    failed: Dict[tuple, str] = {}
    todo = [(c, comp) for c in build_cases(args, device) for comp in comps
            if c["case"] == "sweep" or comp.name in args.memtest_competitors]
    for case, comp in tqdm(todo, desc=OP, file=sys.stderr, dynamic_ncols=True):
        memtest = case["case"] == "memtest"
        group = (comp.name, case["d"], case["dtype"])
        row = dict(case, competitor=comp.name, kind=comp.kind)
        reason = comp.unavailable(device, DTYPES[case["dtype"]], case["d"])
        if reason is not None:
            rows.append(dict(row, status="unavailable", reason=reason))
            continue
        # augcl backends are never skipped on a prediction (they are what is benchmarked; a too-long call
        # just leaves them with one timing sample); the others may be.
        if comp.kind != "augcl":
            case_budget = min(budget, MEMTEST_BUDGET) if memtest and budget else budget
            reason = failed.get(group) or pre_skip(comp, case["two_n"], DTYPES[case["dtype"]], case_budget,
                                                   args.cap_s, seen.get(group))
            if reason is not None:
                rows.append(dict(row, status="skipped", reason=reason))
                continue
        res = measure_one(args, comp, case, device, baselines)
        rows.append(dict(row, **res))
        if res["status"] in ("ok", "skipped") and res.get("mem_call_ms"):
            seen[group] = dict(two_n=case["two_n"], extra=res.get("extra_bytes"),
                               ms=res.get("ms_median") or res["mem_call_ms"])
        if res["status"] != "ok":
            failed[group] = f"{res['status']} at smaller 2N={case['two_n']}: {res['reason']}"
    return rows


# --------------------------------------------------------------------------------------- derived columns
def work(two_n: int, d: int) -> tuple:
    """FLOPs and exps of one fused forward+backward pass (README, "hardware limit")."""
    flops = 8 * two_n ** 2 * d  # fwd S = A C^T: 2 (2N)^2 D; bwd recomputes S and does dA, dC: 6 (2N)^2 D
    exps = 2 * two_n ** 2  # exp(S) in the forward and again in the backward
    return flops, exps


def derive(rows: List[dict], limits: Dict[str, H.Limits], meta: dict) -> List[dict]:
    """Add units, the hardware-limit fraction, memory ratios, loss agreement and speed-ups."""
    out = []
    for r in rows:
        dtype = DTYPES[r["dtype"]]
        lim = limits[r["dtype"]]
        flops, exps = work(r["two_n"], r["d"])
        r = dict(meta, **r)
        r["n"] = r["two_n"] // 2
        r["gflop"] = flops / 1e9
        r["gexp"] = exps / 1e9
        r["roofline_ms"] = H.roofline_ms(flops, exps, lim)
        r["limit_source"] = lim.source
        in_grad = 2 * r["two_n"] * r["d"] * torch.tensor([], dtype=dtype).element_size()
        r["in_plus_grad_mib"] = in_grad / H.MIB
        extra = r.pop("extra_bytes", None)
        r.pop("peak_rss_bytes", None)
        r["peak_extra_mib"] = None if extra is None else extra / H.MIB
        r["mem_ratio"] = None if extra is None else extra / in_grad
        if r.get("status") == "ok":
            r["limit_fraction"] = r["roofline_ms"] / r["ms_median"]
            r["tflops_effective"] = flops / (r["ms_median"] / 1e3) / 1e12
        out.append(r)
    # Speed-ups of each augcl backend over every non-augcl competitor of the same case (t_other / t_augcl),
    # and every loss relative to the first available of augcl[reference], eager, torch.compile, lightly
    # (inf-cl differs by design).
    H.add_comparisons(out, lambda r: (r["case"], r["two_n"], r["d"], r["dtype"]),
                      refs=("augcl[reference]", "eager", "torch.compile", "lightly"),
                      others=("eager", "torch.compile", "lightly", "pml", "inf-cl"),
                      ours=lambda r: r["kind"] == "augcl")
    return out


# ------------------------------------------------------------------------------------------------- output
COLUMN_ORDER = [
    "op", "case", "device", "device_name", "date", "torch", "augcl", "threads", "tf32", "load_start", "load_end",
    "omp_wait_policy", "two_n", "n", "d", "dtype", "competitor", "kind", "status", "reason", "ms_median", "ms_p20",
    "ms_p80", "n_reps", "mem_call_ms", "warm_call_s", "compile_s", "peak_extra_mib", "in_plus_grad_mib", "mem_ratio",
    "mem_method", "loss", "loss_rel_diff", "gflop", "gexp", "roofline_ms", "limit_fraction", "tflops_effective",
    "speedup_vs_eager", "speedup_vs_torch.compile", "speedup_vs_lightly", "speedup_vs_pml", "speedup_vs_inf-cl",
    "limit_source", "times_ms",
]


def fmt_ms(v: Optional[float]) -> str:
    return H.fmt(v, ".4g") if v is None or v < 1e4 else f"{v:.0f}"


def print_results(rows: List[dict], limits: Dict[str, H.Limits]) -> None:
    shown = ["eager", "torch.compile", "lightly", "pml", "inf-cl"]
    cases = list(dict.fromkeys((r["case"], r["two_n"], r["d"], r["dtype"]) for r in rows))
    for key in cases:
        group = [r for r in rows if (r["case"], r["two_n"], r["d"], r["dtype"]) == key]
        r0 = group[0]
        print(f"\n== {OP} fwd+bwd [{key[0]}] 2N={key[1]} D={key[2]} {key[3]}: roofline {fmt_ms(r0['roofline_ms'])} ms "
              f"({r0['gflop']:.3g} GFLOP, {r0['gexp'] * 1e3:.3g} Mexp); inputs+grads {r0['in_plus_grad_mib']:.3g} MiB")
        table = []
        for r in group:
            ok = r.get("status") == "ok"
            t = f"{fmt_ms(r.get('ms_median'))} [{fmt_ms(r.get('ms_p20'))}, {fmt_ms(r.get('ms_p80'))}]" if ok else "-"
            mem = "-"
            if r.get("peak_extra_mib") is not None:
                mem = f"{H.fmt(r['peak_extra_mib'], '.4g')} ({H.fmt(r.get('mem_ratio'), '.3g')}x)"
            ups = [H.fmt_speedup(r.get(f"speedup_vs_{o}")) if r["kind"] == "augcl" else "" for o in shown]
            table.append([r["competitor"], r.get("status", ""), t, str(r.get("n_reps", "")) if ok else "",
                          mem, H.fmt(100 * r["limit_fraction"], '.3g') + "%" if ok else "-",
                          H.fmt(r.get("loss"), '.6g'), H.fmt(r.get("loss_rel_diff"), '.1e'),
                          H.fmt(r.get("compile_s"), '.3g')] + ups)
        H.print_table(["competitor", "status", "ms median [p20, p80]", "reps", "extra MiB (x in+grad)",
                       "% limit", "loss", "rel diff", "compile s"] + [f"vs {o}" for o in shown], table)
        H.print_failures(group)
    print("\nhardware limits used (roofline = max(8*(2N)^2*D / matmul peak, 2*(2N)^2 / exp peak)):")
    for dt, lim in limits.items():
        print(f"  {dt}: {lim.source}")
    for r in rows:
        if r["case"] == "memtest" and r["kind"] == "augcl" and r.get("peak_extra_mib") is not None:
            mib = r["peak_extra_mib"]
            verdict = "well under" if mib < 1024 / 4 else ("under" if mib < 1024 else "NOT under")
            print(f"memtest: {r['competitor']} 2N={r['two_n']} D={r['d']} {r['dtype']}: peak extra "
                  f"{r['peak_extra_mib']:.1f} MiB ({verdict} 1 GiB; the fp32 [2N,2N] matrix alone is "
                  f"{r['two_n'] ** 2 * 4 / GIB:.1f} GiB)")


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = H.BenchParser(__doc__, warmup=(5, 1), rep=(30, 5), cap_s=(20.0, 30.0), child=True,
                      notes={"rep": "capped by --cap-s",
                             "cap_s": "a case whose single call exceeds it is reported as skipped, too slow"})
    p.add_argument("--sizes", type=H.int_list, help="comma list of 2N (rows of [z1; z2]); GPU default "
                   "4096,16384,65536, CPU default 1024,4096,16384")
    p.add_argument("--dims", type=H.int_list, help="comma list of D; GPU default 128,512, CPU default 128")
    p.add_names("--dtypes", DTYPES, "dtypes", default=None, default_help="GPU bf16,fp32, CPU fp32")
    p.add_names("--backends", AUGCL_BACKENDS, "augcl backends", note=H.UNAVAILABLE_BACKEND)
    p.add_names("--peers", PEERS, "other competitors", note=H.UNAVAILABLE_PEER)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (smoke test)")
    p.add_argument("--mem-budget-gb", type=float, default=None, help="skip cases predicted to need more extra "
                   "memory than this (CPU default 8, and 6 in the memory case; also enforced in the CPU child "
                   "with RLIMIT_DATA; GPU default: none, everything is tried and an OOM is caught and reported)")
    p.add_argument("--no-memtest", action="store_true", help="CPU: skip the 2N=32768 D=128 memory case")
    p.add_argument("--memtest-size", type=int, default=32768, help="2N of the CPU memory case (D=128, fp32)")
    p.add_argument("--memtest-cap-s", type=float, default=600.0, help="time cap of the augcl backends in the CPU "
                   "memory case (the other competitors keep --cap-s)")
    p.add_argument("--memtest-competitors", type=H.name_list, default=None,
                   help="competitors run in the CPU memory case (default augcl[cpu],eager,torch.compile,lightly,pml: "
                        "the O(N^2) ones are skipped by the memory budget, with the reason)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls (all competitors) and use "
                   "the TF32 peak as the fp32 limit")
    return p.parse(argv, adjust=_device_defaults)


def _device_defaults(args, gpu: bool) -> None:
    if args.quick:  # a smoke run: two small sizes, three repetitions, no CPU memory case
        args.sizes = args.sizes or ([1024, 4096] if gpu else [512, 2048])
        args.rep = args.rep or 3
        args.no_memtest = True
    args.sizes = args.sizes or ([4096, 16384, 65536] if gpu else [1024, 4096, 16384])
    args.dims = args.dims or ([128, 512] if gpu else [128])
    args.dtypes = args.dtypes or (["bf16", "fp32"] if gpu else ["fp32"])
    if args.mem_budget_gb is None and not gpu:
        args.mem_budget_gb = 8.0
    args.memtest_competitors = args.memtest_competitors or ["augcl[cpu]", "eager", "torch.compile", "lightly", "pml"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.serve_child(args, child_main):
        return
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    info = H.augcl_info() if device.type == "cuda" else probe_augcl(args)
    meta = dict(op=OP, device=H.device_slug(device), device_name=H.device_name(device), date=H.today(),
                torch=torch.__version__, augcl=info, threads=torch.get_num_threads(), tf32=args.tf32,
                load_start=round(os.getloadavg()[0], 2), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    # The 1-minute load average at start and end: a shared machine's CPU timings mean little without it.
    print(f"{OP} benchmark on {meta['device_name']} | torch {meta['torch']} | augcl {info} | {meta['date']} "
          f"| load average {meta['load_start']} on {os.cpu_count()} cpus | OMP_WAIT_POLICY={meta['omp_wait_policy']}")
    print(f"sizes 2N={args.sizes} D={args.dims} dtypes={args.dtypes} rep={args.rep} warmup={args.warmup} "
          f"cap={args.cap_s}s mem budget={args.mem_budget_gb} GiB; augcl value checks off (set_checks(False))")

    dtypes = {dt: DTYPES[dt] for dt in
              dict.fromkeys(list(args.dtypes) + (["fp32"] if device.type == "cpu" and not args.no_memtest else []))}
    limits, measured = H.start_limits(device, dtypes, args.tf32)
    for dt, lim in limits.items():
        print(f"limit {dt}: {lim.source}")

    comps = competitors(args.backends, args.peers)
    raw = run_all(args, device, comps)
    meta["load_end"] = round(os.getloadavg()[0], 2)
    print(f"load average at the end: {meta['load_end']}")
    H.end_limits(device, dtypes, limits, measured)
    rows = derive(raw, limits, meta)
    rows = H.order_columns(rows, COLUMN_ORDER)
    csv_path = H.results_path(args.out, OP, device, "csv", tag=args.tag)
    H.write_csv(rows, csv_path)
    png_path = H.plot([r for r in rows if r["case"] == "sweep"], csv_path[:-4] + ".png", x="two_n",
                      series="competitor", panels=("d", "dtype"), xlabel="2N (rows of [z1; z2])",
                      title=f"{OP} forward+backward, {meta['device_name']}, {meta['date']}")
    print_results(rows, limits)
    print(f"\nwrote {csv_path}" + (f"\nwrote {png_path}" if png_path else ""))


if __name__ == "__main__":
    main()
