#!/usr/bin/env python
"""Top-k attention (MixedAE's homologous attention), forward + backward: augcl's fused op against the eager form
people write, its torch.compile, and plain softmax attention (F.scaled_dot_product_attention, no selection: the
speed a top-k attention would have if its selection were free).

    python benchmarks/bench_topk_attention.py                    # GPU if there is one, else the CPU defaults
    python benchmarks/bench_topk_attention.py --quick            # a smoke run
    python benchmarks/bench_topk_attention.py --label cpu-shared # name the machine in the file name
    python benchmarks/bench_topk_attention.py --gpu-grid         # the GPU sweep: H 3/6/12, B 64/256, L 65/197/257,
                                                                 # Dh 32/64/128
    python benchmarks/bench_topk_attention.py --help

Every competitor gets the same q, k, v [B, H, L, Dh] (leaves, requires_grad) and output gradient, ``top_k =
(L - 1) // 4`` with ``keep_first=True`` (MixedAE's setting: a class token plus N patches mixed from g = 4
images; the top N / g keys and the class token), scale Dh^-0.5, and is timed on ``out = f(q, k, v);
out.backward(grad)``:

* ``augcl[<backend>]``: ``augcl.functional.topk_attention`` on that backend (one that cannot run here is a row
  ``unavailable`` with the dispatcher's reason); its value check is off (``augcl.set_checks(False)``);
* ``eager``: ``augcl.reference.topk_attention.topk_attention_eager``: logits, ``torch.topk``, a scattered -inf
  mask, softmax, matmul, autograd through all of it ([B, H, L, L] tensors);
* ``torch.compile``: that function under ``torch.compile(fullgraph=True, dynamic=False)`` (compile time excluded,
  reported as ``compile_s``);
* ``sdpa``: ``F.scaled_dot_product_attention(q, k, v)``, plain attention over all L keys.

Work per call (the hardware-limit column): ``14 B H L^2 Dh`` FLOP (forward QK^T and PV, backward recomputation of
QK^T and the four gradient products) and ``2 B H L^2`` exps; the selection's comparisons are not counted.
``limit_fraction`` = roofline time / median time. On a CPU each case runs in a fresh child process (memory: the
RSS high-water mark of the first timed call, see harness.py). On a machine shared with other jobs the absolute
times vary with their load (the 1-minute load average at start and end is in the CSV); ratios between competitors
of one run are what the run measures.
"""
from __future__ import annotations

import os
import sys
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

OP = "topk_attention"
AUGCL_BACKENDS = ("triton", "cpu", "reference")
PEERS = ("eager", "compile", "sdpa")
PEER_NAMES = {"eager": "eager", "compile": "torch.compile", "sdpa": "sdpa"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: --gpu-grid: (batches, heads, lengths, head widths)
GPU_GRID = ([64, 256], [3, 6, 12], [65, 197, 257], [32, 64, 128])


def top_k_of(length: int) -> int:
    """MixedAE's k for a sequence of one class token and L - 1 patches mixed from 4 images."""
    return max(1, (length - 1) // 4)


# ------------------------------------------------------------------------------------------- competitors
def make_competitor(name: str, device: torch.device):
    """``fn(q, k, v, top_k) -> out`` of competitor ``name``, or a str: why it cannot run here."""
    if name.startswith("augcl["):
        import augcl
        from augcl.dispatch import REGISTRY

        backend = name[len("augcl["):-1]
        augcl.set_checks(False)
        probe = torch.zeros(1, 1, 4, 8, device=device)
        reason = REGISTRY[OP].reasons(probe, probe, probe)[backend]
        if reason is not None:
            return reason
        return lambda q, k, v, top_k: augcl.functional.topk_attention(q, k, v, top_k, keep_first=True,
                                                                      backend=backend)
    from augcl.reference.topk_attention import topk_attention_eager

    if name == "eager":
        return lambda q, k, v, top_k: topk_attention_eager(q, k, v, top_k, keep_first=True)
    if name == "torch.compile":
        torch._dynamo.reset()  # a fresh compiled function per case (dynamo's recompile limit)
        return torch.compile(lambda q, k, v, top_k: topk_attention_eager(q, k, v, top_k, keep_first=True),
                             fullgraph=True, dynamic=False)
    if name == "sdpa":
        return lambda q, k, v, top_k: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    raise ValueError(name)


def make_inputs(b: int, h: int, length: int, d: int, dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, d, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
               for _ in range(3))
    grad = torch.randn(b, h, length, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v, grad


# ------------------------------------------------------------------------------------- one measured case
def run_case(spec: dict) -> dict:
    """Measure one (competitor, B, H, L, Dh, dtype): first call (compile) time, extra memory of the first timed
    call, then the timing. In a fresh child on a CPU, in this process on a GPU."""
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    res: dict = {"status": "ok", "reason": ""}
    fn = make_competitor(spec["competitor"], device)
    if isinstance(fn, str):
        return {"status": "unavailable", "reason": fn}
    q = k = v = grad = None
    top_k = top_k_of(spec["l"])
    try:
        q, k, v, grad = make_inputs(spec["b"], spec["h"], spec["l"], spec["d"], dtype, device, spec["seed"])
        last = {}

        def step():
            out = fn(q, k, v, top_k)
            out.backward(grad)
            last["out"] = out

        def drop_grads():
            q.grad = k.grad = v.grad = None

        if spec["competitor"] == "torch.compile" or device.type == "cuda":
            res["warm_call_s"] = H.time_once_ms(step, device) / 1e3
            if spec["competitor"] == "torch.compile":
                res["compile_s"] = res["warm_call_s"]
            drop_grads()
        else:
            tq, tk, tv, tg = make_inputs(1, 1, spec["l"], spec["d"], dtype, device, spec["seed"])
            fn(tq, tk, tv, top_k).backward(tg)  # thread pools and lazy initialisation: not the measured memory
            del tq, tk, tv, tg
        first = H.measure_first_call(step, device)
        res.update(extra_bytes=first["extra_bytes"], peak_rss_bytes=first["peak_rss_bytes"],
                   mem_method=first["mem_method"], mem_call_ms=first["ms"])
        # a checksum of the output, compared across competitors (sdpa attends to every key: it differs)
        res["loss"] = float(last["out"].detach().float().square().mean())
        drop_grads()
        is_augcl = spec["competitor"].startswith("augcl[")
        if first["ms"] > spec["cap_s"] * 1e3:
            if not is_augcl:
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
        del q, k, v, grad, fn
        H.release_memory(device)
    return res


def child_main(spec: dict) -> None:
    H.case_child_main(spec, run_case, lambda sp: make_inputs(sp["b"], sp["h"], sp["l"], sp["d"], DTYPES[sp["dtype"]],
                                                               torch.device("cpu"), sp["seed"]))


def cases(args):
    for dt in args.dtypes:
        for b in args.batches:
            for h in args.heads:
                for d in args.head_dims:
                    for length in args.lengths:
                        yield dt, b, h, length, d


def run_all(args, device: torch.device) -> List[dict]:
    names = [f"augcl[{b}]" for b in args.backends] + [PEER_NAMES[p] for p in args.peers]
    rows, baselines = [], {}
    for dt, b, h, length, d in cases(args):
        for name in names:
            row = dict(b=b, h=h, l=length, d=d, top_k=top_k_of(length), dtype=dt, competitor=name,
                       kind="augcl" if name.startswith("augcl[") else "baseline")
            spec = dict(row, device=str(device), seed=args.seed, threads=torch.get_num_threads(),
                        warmup=args.warmup, rep=args.rep, cap_s=args.cap_s)
            key = (b, h, length, d, dt)
            rows.append(dict(row, **H.measure_case(__file__, spec, device, run_case, baselines, key)))
            r = rows[-1]
            mib = (r.get("extra_bytes") or 0) / H.MIB if r.get("extra_bytes") else None
            print(f"  {name:18s} B={b:4d} H={h:3d} L={length:4d} Dh={d:4d} {dt}: {r['status']:11s} "
                  f"{H.fmt(r.get('ms_median'), '.4g')} ms {H.fmt(mib, '.4g')} MiB {r.get('reason', '')}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ results
def work(b: int, h: int, length: int, d: int) -> tuple:
    """FLOPs and exps of one fused forward + backward (see the module docstring)."""
    return 14 * b * h * length * length * d, 2 * b * h * length * length


def derive(rows: List[dict], limits: Dict[str, "H.Limits"], meta: dict) -> List[dict]:
    out = H.roofline_rows(rows, limits, meta, lambda r: work(r["b"], r["h"], r["l"], r["d"]))
    H.add_comparisons(out, lambda r: (r["b"], r["h"], r["l"], r["d"], r["dtype"]),
                      refs=("augcl[reference]", "eager"), others=("eager", "torch.compile", "sdpa"),
                      ours=lambda r: r["kind"] == "augcl")
    return out


COLUMN_ORDER = [
    "op", "device", "device_name", "date", "torch", "augcl", "threads", "load_start", "load_end", "omp_wait_policy",
    "b", "h", "l", "d", "top_k", "dtype", "competitor", "kind", "status", "reason", "ms_median", "ms_p20", "ms_p80",
    "n_reps", "mem_call_ms", "compile_s", "peak_extra_mib", "mem_method", "loss", "loss_rel_diff", "gflop",
    "roofline_ms", "limit_fraction", "speedup_vs_eager", "speedup_vs_torch.compile", "speedup_vs_sdpa",
    "limit_source", "times_ms",
]


def parse_args(argv=None):
    # CPU: 5 warm-up calls and 30 timed ones (capped by --cap-s). With 1 and 7 the first timed calls of the ms-sized
    # cases still ran 1.7-2.3x slower than later ones (per-thread buffers growing, glibc's mmap threshold adapting
    # to the gradients' size), which put warm-up into the median: augcl 1.94 ms at L = 65 then, 1.35 ms steady.
    p = H.BenchParser(__doc__, warmup=(5, 5), rep=(30, 30), cap_s=(20.0, 20.0), child=True,
                      notes={"rep": "capped by --cap-s",
                             "cap_s": "a non-augcl case whose single call exceeds it is reported as skipped"})
    p.add_argument("--batches", type=H.int_list, help="comma list of B (sequences); GPU default 256, CPU 8")
    p.add_argument("--heads", type=H.int_list, help="comma list of H; GPU default 3,6,12, CPU 4")
    p.add_argument("--lengths", type=H.int_list, help="comma list of L; default 65,197,257")
    p.add_argument("--head-dims", type=H.int_list, help="comma list of Dh; default 64")
    p.add_argument("--gpu-grid", action="store_true", help="the GPU sweep: B 64,256 x H 3,6,12 x L 65,197,257 x "
                   "Dh 32,64,128 (explicit --batches etc. still win)")
    p.add_names("--dtypes", DTYPES, "dtypes", default=None, default_help="GPU bf16,fp32, CPU fp32")
    p.add_names("--backends", AUGCL_BACKENDS, "augcl backends", note=H.UNAVAILABLE_BACKEND)
    p.add_names("--peers", PEERS, "other competitors", note=H.UNAVAILABLE_PEER)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (smoke test)")
    p.add_argument("--label", default=None, help="the machine's part of the result file name (default: the device "
                   "slug, e.g. cpu-amd-epyc-2t); e.g. cpu-shared for a machine shared with other jobs")
    return p.parse(argv, adjust=_device_defaults)


def _device_defaults(args, gpu: bool) -> None:
    if args.gpu_grid:
        batches, heads, lengths, dims = GPU_GRID
        args.batches, args.heads = args.batches or batches, args.heads or heads
        args.lengths, args.head_dims = args.lengths or lengths, args.head_dims or dims
    if args.quick:
        args.batches, args.heads = args.batches or [2], args.heads or [2]
        args.lengths = args.lengths or [65]
        args.rep = args.rep or 3
    args.batches = args.batches or ([256] if gpu else [8])
    args.heads = args.heads or ([3, 6, 12] if gpu else [4])
    args.lengths = args.lengths or [65, 197, 257]
    args.head_dims = args.head_dims or [64]
    args.dtypes = args.dtypes or (["bf16", "fp32"] if gpu else ["fp32"])


SHOWN = ("eager", "torch.compile", "sdpa")


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.serve_child(args, child_main):
        return
    H.op_benchmark_main(
        args, op=OP, dtypes={dt: DTYPES[dt] for dt in args.dtypes}, run_all=run_all, derive=derive,
        column_order=COLUMN_ORDER,
        describe=(f"B={args.batches} H={args.heads} L={args.lengths} Dh={args.head_dims} top_k=(L-1)//4 + key 0 "
                  f"dtypes={args.dtypes} rep={args.rep} cap={args.cap_s}s; augcl value checks off"),
        plot=lambda rows, path, meta: H.plot(
            rows, path, x="l", series="competitor", panels=("d", "dtype"), xlabel="L (sequence length)",
            title=f"top-k attention forward+backward, {meta['device_name']}, {meta['date']}"),
        table=(["competitor", "B", "H", "L", "Dh", "dtype", "status", "ms median [p20, p80]", "extra MiB", "% limit"]
               + [f"vs {o}" for o in SHOWN],
               lambda r: [r["competitor"], r["b"], r["h"], r["l"], r["d"], r["dtype"], r["status"], H.timing_cell(r),
                          H.fmt(r.get("peak_extra_mib"), ".4g"),
                          H.fmt(100 * r["limit_fraction"], ".3g") if r.get("limit_fraction") else "-"]
               + [H.fmt_speedup(r.get(f"speedup_vs_{o}")) for o in SHOWN]))


if __name__ == "__main__":
    main()
