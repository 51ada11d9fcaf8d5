#!/usr/bin/env python
"""A lightly SimCLR training step, unpatched and after ``augcl.patch()``: step time and peak memory side by side.

    python benchmarks/bench_patch.py                       # batch 256 and 4096, GPU if there is one, else CPU
    python benchmarks/bench_patch.py --batches 256 --rep 3 --note "shared CPU"

The step is lightly's SimCLR example loop (``examples/pytorch/simclr.py``) with a small backbone in place of its
ResNet, so that the loss is a visible part of the step: a 3x3 convolution (3 -> 32 channels, stride 2), ReLU,
global average pooling, then lightly's ``SimCLRProjectionHead(32, 128, 128)``; two views ``x0, x1`` [B, 3, S, S]
(random, fixed; data loading and augmentation are not measured), ``criterion = lightly.loss.NTXentLoss()``
(temperature 0.5), SGD; one step = ``loss = criterion(model(x0), model(x1)); loss.backward(); optimizer.step()``.

Competitors, each (competitor, batch) in a fresh process (its own allocator; the patch cannot leak):

* ``lightly``: the code as it is;
* ``lightly+augcl.patch()``: the same code after ``augcl.patch(lightly=True)`` (lightly's ``NTXentLoss.forward``
  computed by ``augcl.functional.nt_xent``, with augcl's default per-call value check, one host sync).

Columns: ``ms_median`` / ``ms_p20`` / ``ms_p80`` of whole steps (on a CPU the first, memory-measured step is one of
the samples), ``peak_extra_mib``: the memory the first step needs beyond the model and the inputs (harness.py:
CPU resident-set high-water mark in a fresh process, GPU ``max_memory_allocated``), ``loss_ms_median``: the loss
alone, forward + backward on [B, 128] embeddings, ``loss_first_step`` (the two competitors start from the same
weights and inputs, so it agrees to rounding: ``loss_rel_diff``), and on the patched rows ``speedup`` (lightly's
step time over the patched one) and ``mem_ratio`` (lightly's peak extra memory over the patched one).
Results: ``results/patch_<device-slug>_<date>[_<tag>].csv``.
"""
from __future__ import annotations

import os
import sys
from typing import List

# Sleeping OpenMP waiters on a shared machine (see bench_contrastive.py): set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

import harness as H  # noqa: E402

OP = "patch"
COMPETITORS = ("lightly", "lightly+augcl.patch()")
TEMPERATURE = 0.5
OUT_DIM = 128


def _build(batch: int, size: int, device: torch.device, seed: int):
    """(model, criterion, optimizer, x0, x1) of lightly's SimCLR example with the small backbone."""
    import lightly.loss
    from lightly.models.modules import SimCLRProjectionHead
    from torch import nn

    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.projection_head = SimCLRProjectionHead(32, 128, OUT_DIM)

        def forward(self, x):
            return self.projection_head(self.backbone(x))

    torch.manual_seed(seed)
    model = SimCLR().to(device)
    criterion = lightly.loss.NTXentLoss(temperature=TEMPERATURE)  # looked up now: patched or not
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(batch, 3, size, size, generator=g).to(device)
    x1 = torch.randn(batch, 3, size, size, generator=g).to(device)
    return model, criterion, optimizer, x0, x1


def run_case(spec: dict) -> dict:
    device = torch.device(spec["device"])
    batch = spec["batch"]
    res: dict = {"batch": batch, "competitor": spec["competitor"], "status": "ok"}
    try:
        model, criterion, optimizer, x0, x1 = _build(batch, spec["image_size"], device, spec["seed"])
        last = {}

        def step():
            loss = criterion(model(x0), model(x1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last["loss"] = loss

        if device.type == "cuda":
            H.time_once_ms(step, device)  # kernels, cuBLAS handles, Triton JIT at the real shape
            # a fresh start, so both competitors' first measured step begins from the same weights
            model, criterion, optimizer, x0, x1 = _build(batch, spec["image_size"], device, spec["seed"])
        else:
            # CPU: lazy init on a tiny batch only, so the measured step's buffers come fresh from the OS and count
            small = _build(8, spec["image_size"], device, spec["seed"])
            small[1](small[0](small[3]), small[0](small[4])).backward()
            del small
        first = H.measure_first_call(step, device)
        res["extra_bytes"], res["mem_method"] = first["extra_bytes"], first["mem_method"]
        res["peak_rss_bytes"] = first["peak_rss_bytes"]
        res["loss_first_step"] = float(last.pop("loss").detach())
        rep = H.reps_within(first["ms"], spec["cap_s"], spec["rep"] - 1) if spec["rep"] > 1 else 0
        timing = H.bench(step, device, warmup=spec["warmup"] if device.type == "cuda" else 0, rep=rep)
        if device.type != "cuda":
            timing.times_ms.insert(0, first["ms"])
        res.update(H.timing_columns(timing))

        g = torch.Generator().manual_seed(spec["seed"] + 2)
        z0 = torch.randn(batch, OUT_DIM, generator=g).to(device).requires_grad_(True)
        z1 = torch.randn(batch, OUT_DIM, generator=g).to(device).requires_grad_(True)

        def loss_only():
            criterion(z0, z1).backward()

        def clear():
            z0.grad = z1.grad = None

        lt = H.bench(loss_only, device, warmup=1, rep=max(3, min(spec["rep"], 10)), setup=clear)
        res["loss_ms_median"] = lt.median
    except Exception as exc:  # noqa: BLE001  (every failure becomes a reported row)
        res.update(H.failure(exc))
    return res


def child_main(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    info = {}
    try:
        import augcl
        import lightly

        info["augcl"], info["lightly"] = augcl.__version__, lightly.__version__
        if spec["competitor"] == "lightly+augcl.patch()":
            report = augcl.patch(lightly=True, solo=False, timm=False, torchvision=False, pml=False)
            if "lightly.loss.ntx_ent_loss.NTXentLoss" not in report.patched:
                raise RuntimeError(f"augcl.patch() did not patch lightly's NTXentLoss:\n{report}")
    except Exception as exc:  # noqa: BLE001
        H.emit_child_result(dict(info, status="unavailable", reason=f"{type(exc).__name__}: {exc}"))
        return
    H.emit_child_result(dict(info, **run_case(spec)))


def parse_args(argv=None):
    p = H.BenchParser(__doc__.split("\n\n")[0], warmup=(5, 0), rep=(20, 5), cap_s=(20.0, 40.0), unit="steps",
                      child=True, plots=False, notes={"rep": "on a CPU the memory-measured step is one of them"})
    p.add_argument("--batches", type=H.int_list, default=[256, 4096], help="comma list of batch sizes (default "
                   "256,4096)")
    p.add_argument("--image-size", type=int, default=16, help="image side S (default 16)")
    p.add_names("--competitors", COMPETITORS, "competitors")
    p.add_argument("--note", default="", help="a remark stored in every row and printed (e.g. 'shared CPU')")
    return p.parse(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if H.serve_child(args, child_main):
        return 0
    device = torch.device(args.device)
    meta = dict(op=OP, device=H.device_slug(device), device_name=H.device_name(device), date=H.today(),
                torch=torch.__version__, threads=torch.get_num_threads(), image_size=args.image_size,
                temperature=TEMPERATURE, out_dim=OUT_DIM, load_start=round(os.getloadavg()[0], 2),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), note=args.note)
    print(f"bench_patch: lightly SimCLR step (small conv backbone, {args.image_size} px), unpatched vs "
          f"augcl.patch(), batches {args.batches} on {meta['device_name']} | torch {meta['torch']} | {meta['date']} | "
          f"load average {meta['load_start']} on {os.cpu_count()} cpus; rep={args.rep} cap={args.cap_s}s"
          + (f"\nnote: {args.note}" if args.note else ""), flush=True)
    rows: List[dict] = []
    for batch in args.batches:
        for name in args.competitors:
            spec = dict(competitor=name, batch=batch, device=str(device), image_size=args.image_size,
                        seed=args.seed, rep=args.rep, warmup=args.warmup, cap_s=args.cap_s,
                        threads=torch.get_num_threads())
            res = H.run_script_child(__file__, spec, timeout_s=300 + 3 * args.cap_s)
            row = dict(meta, batch=batch, competitor=name)
            row.update(res)
            rows.append(row)
            extra = row.get("extra_bytes")
            print(f"  B={batch:5d} {name:22s} {row.get('status')}: "
                  + (f"step {H.fmt(row.get('ms_median'), '.4g')} ms [{H.fmt(row.get('ms_p20'), '.4g')}, "
                     f"{H.fmt(row.get('ms_p80'), '.4g')}], peak extra "
                     f"{H.fmt(None if extra is None else extra / H.MIB, '.4g')} MiB, loss alone "
                     f"{H.fmt(row.get('loss_ms_median'), '.4g')} ms" if row.get("status") == "ok"
                     else row.get("reason", "")), flush=True)
    load_end = round(os.getloadavg()[0], 2)
    for r in rows:
        r["load_end"] = load_end
        extra = r.pop("extra_bytes", None)
        r["peak_extra_mib"] = None if extra is None else extra / H.MIB
    for batch in args.batches:
        by = {r["competitor"]: r for r in rows if r["batch"] == batch and r.get("status") == "ok"}
        base, ours = by.get("lightly"), by.get("lightly+augcl.patch()")
        if base and ours:
            ours["speedup"] = base["ms_median"] / ours["ms_median"]
            ours["loss_speedup"] = base["loss_ms_median"] / ours["loss_ms_median"]
            if base.get("peak_extra_mib") and ours.get("peak_extra_mib"):
                ours["mem_ratio"] = base["peak_extra_mib"] / ours["peak_extra_mib"]
            ours["loss_rel_diff"] = abs(ours["loss_first_step"] - base["loss_first_step"]) / abs(base["loss_first_step"])
    table = []
    for r in rows:
        ok = r.get("status") == "ok"
        table.append([str(r["batch"]), r["competitor"], r.get("status", ""),
                      H.timing_cell(r) if ok else "-", str(r.get("n_reps", "")) if ok else "",
                      H.fmt(r.get("peak_extra_mib"), ".4g"), H.fmt(r.get("loss_ms_median"), ".4g"),
                      H.fmt_speedup(r.get("speedup")), H.fmt(r.get("mem_ratio"), ".3g"),
                      H.fmt(r.get("loss_rel_diff"), ".1e")])
    print()
    H.print_table(["B", "competitor", "status", "step ms median [p20, p80]", "reps", "peak extra MiB",
                   "loss fwd+bwd ms", "step speedup", "memory ratio", "loss rel diff"], table)
    H.print_failures(rows)
    print(f"load average {meta['load_start']} -> {load_end}" + (f"; note: {args.note}" if args.note else ""))
    order = ["op", "device", "device_name", "date", "torch", "augcl", "lightly", "threads", "load_start", "load_end",
             "omp_wait_policy", "note", "batch", "image_size", "temperature", "out_dim", "competitor", "status",
             "reason", "ms_median", "ms_p20", "ms_p80", "n_reps", "peak_extra_mib", "peak_rss_bytes", "mem_method",
             "loss_ms_median", "loss_first_step", "loss_rel_diff", "speedup", "loss_speedup", "mem_ratio", "times_ms"]
    os.makedirs(args.out, exist_ok=True)
    path = H.results_path(args.out, OP, device, "csv", tag=args.tag)
    H.write_csv(H.order_columns(rows, order), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
