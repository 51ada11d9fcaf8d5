"""Baseline vs +Hallucinator vs +Un-Mix with the training driver, mean ± std over seeds (the README table).

Runs ``python -m augcl.train --method M [--hallucinate | --unmix] --seed S`` on the embedded digits data (one
fresh process per run, the driver's defaults otherwise: small CNN, AdamW + cosine, batch 128, 10 epochs unless
``--epochs``), reads each run's metrics.json and prints a markdown table of the final kNN top-1 (k = 200,
t = 0.1) and linear-probe top-1 on the test split: mean ± sample std (ddof 1) over the seeds, under a first
row for the random-init encoder (the same metrics of each seed's encoder before training, which the driver
measures first). Every run is one row of ``results/<name>_<device-slug>_<date>.csv``; the table goes to the
``.md`` beside it.

A run whose folder already holds metrics.json is not run again (an interrupted table continues where it
stopped), whatever code made it: after changing a recipe, give a new ``--runs`` folder. Digits has 1347
training / 450 test images (a stratified 75/25 split of scikit-learn's 1797): a difference of one point is 4-5
test images, so read the std.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/seed_table.py                      # SimCLR, 3 seeds
    python benchmarks/seed_table.py --methods simclr,mocov2 --epochs 5
    python benchmarks/seed_table.py --methods swav --variants baseline,unmix,unmix-authors --name swav_digits
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import harness as H  # noqa: E402

VARIANTS = {"baseline": [], "hallucinate": ["--hallucinate"], "unmix": ["--unmix"],
            "hallucinate+unmix": ["--hallucinate", "--unmix"],
            "unmix-authors": ["--unmix", "--unmix-swav-form", "authors"]}  # swav only
LABELS = {"baseline": "baseline", "hallucinate": "+Hallucinator", "unmix": "+Un-Mix",
          "hallucinate+unmix": "+Hallucinator +Un-Mix", "unmix-authors": "+Un-Mix (authors' SwAV loss)"}


def _fmt(values, scale=100.0):
    values = [v for v in values if v is not None]  # runs made with --no-baseline have no random-init metrics
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="simclr", help="comma list (default simclr)")
    p.add_argument("--variants", default="baseline,hallucinate,unmix", help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="default: the driver's (10 on digits)")
    p.add_argument("--data", default="digits")
    p.add_argument("--runs", default=os.path.join("runs", "seed_table"), help="folder of the runs")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default="train_table", help="results file prefix (default train_table)")
    p.add_argument("--extra", default="", help="more driver arguments, one string")
    args = p.parse_args(argv)

    import torch

    import augcl

    device = torch.device("cpu" if not torch.cuda.is_available() else "cuda")
    methods = [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown {v!r}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = []
    for method in methods:
        for variant in variants:
            for seed in seeds:
                name = f"{method}-{variant}-e{args.epochs or 'default'}-s{seed}"
                out = os.path.join(args.runs, name)
                cmd = [sys.executable, "-m", "augcl.train", "--method", method, "--data", args.data, "--seed",
                       str(seed), "--no-progress", "--out", out] + VARIANTS[variant] + args.extra.split()
                if args.epochs:
                    cmd += ["--epochs", str(args.epochs)]
                metrics_path = os.path.join(out, "metrics.json")
                if not os.path.exists(metrics_path):
                    if os.path.exists(os.path.join(out, "last.pt")):
                        cmd.append("--resume")
                    t0 = time.perf_counter()
                    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}", flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)
                with open(metrics_path) as f:
                    m = json.load(f)
                rows.append({"method": method, "variant": variant, "seed": seed, "epochs": m["epochs"],
                             "data": args.data, "backbone": m["backbone"], "batch": m["config"]["batch_size"],
                             "knn_top1": m["knn_top1"], "linear_top1": m["linear_top1"],
                             "random_init_knn_top1": m["random_init_knn_top1"],
                             "random_init_linear_top1": m["random_init_linear_top1"],
                             "final_loss": m["final_loss"], "train_time_s": m["train_time_s"],
                             "wall_time_s": m["wall_time_s"], "augcl_backend": m["augcl_backend"],
                             "device": H.device_slug(device), "device_name": H.device_name(device),
                             "date": H.today(), "torch": torch.__version__, "augcl": augcl.__version__,
                             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")})
    os.makedirs(args.out, exist_ok=True)
    path = H.results_path(args.out, args.name, device, "csv")
    H.write_csv(rows, path)
    table = _table(rows, methods, variants, seeds, args)
    md_path = path[:-len(".csv")] + ".md"
    with open(md_path, "w") as f:
        f.write("\n".join(table) + f"\n\nRaw rows: {os.path.basename(path)}\n")
    print("\n" + "\n".join(table))
    print(f"\nwrote {path} and {md_path}")
    return 0


def _table(rows, methods, variants, seeds, args):
    """The markdown lines: a title, the random-init row (one value per seed: every variant of a seed starts
    from the same encoder), then one row per method and variant."""
    first = rows[0]
    lines = [f"{args.data}, {first['backbone']} backbone, batch {first['batch']}, {first['epochs']} epochs, seeds "
             f"{args.seeds}: top-1 (%) on the test split, mean ± std over seeds "
             f"(`python benchmarks/seed_table.py --methods {args.methods} --variants {args.variants}"
             + (f" --epochs {args.epochs}" if args.epochs else "")
             + (f" --name {args.name}" if args.name != "train_table" else "")
             + (f" --extra '{args.extra}'" if args.extra else "") + "`)",
             "",
             "| method | variant | kNN top-1 | linear top-1 | train time per run (s) |",
             "|---|---|---|---|---|"]
    init = {r["seed"]: r for r in rows}
    lines.append(f"| random-init encoder | - | {_fmt([init[s]['random_init_knn_top1'] for s in seeds])} | "
                 f"{_fmt([init[s]['random_init_linear_top1'] for s in seeds])} | - |")
    for method in methods:
        for variant in variants:
            sel = [r for r in rows if r["method"] == method and r["variant"] == variant]
            lines.append(f"| {method} | {LABELS[variant]} | {_fmt([r['knn_top1'] for r in sel])} | "
                         f"{_fmt([r['linear_top1'] for r in sel])} | "
                         f"{statistics.mean(r['train_time_s'] for r in sel):.0f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
