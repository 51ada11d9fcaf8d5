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
    python benchmarks/seed_table.py --variants baseline,hard-samples,hard-pairs,hard-both,frozen-gan \
        --fractions 1.0,0.2 --epochs 6 --pair-gain 0.5 --name hard_samples_digits        # hard-sample generation

``--fractions`` (default 1.0) runs every variant at each ``--data-fraction`` (a stratified part of the training
images; the read-outs use all of them); the table then has a row per fraction, and a "step time" column: each
run's train_time_s per optimizer step (steps = training images // batch x epochs), mean over the seeds, over the
baseline's at the same fraction. With a ``hard-pairs`` / ``hard-both`` variant the table also gets a figure
``<name>_..._pairs.png``: the pairs' measured cosine similarity (log.csv pair_cos) against its target
(pair_target) per epoch, every such run. Step times on a machine shared with other jobs vary with their load.
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
            "unmix-authors": ["--unmix", "--unmix-swav-form", "authors"],  # swav only
            # hard-sample generation (simclr, moco, mocov2)
            "hard-samples": ["--hard-samples"], "hard-pairs": ["--hard-pairs"],
            "hard-both": ["--hard-samples", "--hard-pairs"],
            "frozen-gan": ["--hard-samples", "--synthetic", "frozen"]}
LABELS = {"baseline": "baseline", "hallucinate": "+Hallucinator", "unmix": "+Un-Mix",
          "hallucinate+unmix": "+Hallucinator +Un-Mix", "unmix-authors": "+Un-Mix (authors' SwAV loss)",
          "hard-samples": "+hard samples", "hard-pairs": "+hard pairs", "hard-both": "+hard samples +hard pairs",
          "frozen-gan": "+frozen-GAN control"}
PAIR_VARIANTS = ("hard-pairs", "hard-both")


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
    p.add_argument("--fractions", default="1.0", help="comma list of --data-fraction values (default 1.0)")
    p.add_argument("--pair-gain", type=float, default=None,
                   help="--pair-gain of the hard-pairs variants (default: the driver's, 0.05)")
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
    fractions = [float(f) for f in args.fractions.split(",") if f]
    rows = []
    # variants interleaved within each seed, so that a shared machine's changing load falls on all of them alike
    for fraction, seed, method, variant in ((f, s, m, v) for f in fractions for s in seeds for m in methods
                                            for v in variants):
        name = f"{method}-{variant}-e{args.epochs or 'default'}-s{seed}" + \
            (f"-f{fraction:g}" if fraction != 1.0 else "")
        out = os.path.join(args.runs, name)
        cmd = [sys.executable, "-m", "augcl.train", "--method", method, "--data", args.data, "--seed",
               str(seed), "--no-progress", "--out", out] + VARIANTS[variant] + args.extra.split()
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if fraction != 1.0:
            cmd += ["--data-fraction", f"{fraction:g}"]
        if variant in PAIR_VARIANTS and args.pair_gain is not None:
            cmd += ["--pair-gain", f"{args.pair_gain:g}"]
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
        steps = m["num_train"] // m["config"]["batch_size"] * m["epochs"]
        rows.append({"method": method, "variant": variant, "fraction": fraction, "seed": seed,
                     "epochs": m["epochs"], "steps": steps,
                     "step_time_s": m["train_time_s"] / steps if steps else None, "run": out,
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
    table = _table(rows, methods, variants, seeds, fractions, args)
    if any(v in PAIR_VARIANTS for v in variants):
        png = path[:-len(".csv")] + "_pairs.png"
        note = _plot_pairs([r for r in rows if r["variant"] in PAIR_VARIANTS], png)
        table.append("")
        table.append(f"pair_cos vs its target over training: {os.path.basename(png)}" if note is None else
                     f"no pair_cos figure: {note}")
    md_path = path[:-len(".csv")] + ".md"
    with open(md_path, "w") as f:
        f.write("\n".join(table) + f"\n\nRaw rows: {os.path.basename(path)}\n")
    print("\n" + "\n".join(table))
    print(f"\nwrote {path} and {md_path}")
    return 0


def _table(rows, methods, variants, seeds, fractions, args):
    """The markdown lines: a title, the random-init row (one value per seed: every variant of a seed starts
    from the same encoder), then one row per method and variant (and fraction, with --fractions)."""
    first = rows[0]
    lines = [f"{args.data}, {first['backbone']} backbone, batch {first['batch']}, {first['epochs']} epochs, seeds "
             f"{args.seeds}: top-1 (%) on the test split, mean ± std over seeds "
             f"(`python benchmarks/seed_table.py --methods {args.methods} --variants {args.variants}"
             + (f" --epochs {args.epochs}" if args.epochs else "")
             + (f" --name {args.name}" if args.name != "train_table" else "")
             + (f" --extra '{args.extra}'" if args.extra else "")
             + (f" --fractions {args.fractions}" if fractions != [1.0] else "")
             + (f" --pair-gain {args.pair_gain:g}" if args.pair_gain is not None else "") + "`)",
             ""]
    many = fractions != [1.0]
    # Step time relative to the first method's first variant (its baseline) at the same fraction: the cost of a
    # variant, or of one method against another (mae, mixedae, ...). A ratio of runs made one after another:
    # on a shared machine the load changes between them.
    lines += ["| method | " + ("data fraction | " if many else "") + "variant | kNN top-1 | linear top-1 | "
              f"train time per run (s) | step time vs {methods[0]} {LABELS[variants[0]]} |",
              "|---|" + ("---|" if many else "") + "---|---|---|---|---|"]
    init = {r["seed"]: r for r in rows}
    lines.append(f"| random-init encoder | " + ("- | " if many else "") + "- | "
                 f"{_fmt([init[s]['random_init_knn_top1'] for s in seeds])} | "
                 f"{_fmt([init[s]['random_init_linear_top1'] for s in seeds])} | - | - |")
    for fraction in fractions:
        base = [r["step_time_s"] for r in rows if r["method"] == methods[0] and r["variant"] == variants[0]
                and r["fraction"] == fraction and r["step_time_s"]]
        for method in methods:
            for variant in variants:
                sel = [r for r in rows if r["method"] == method and r["variant"] == variant and r["fraction"] == fraction]
                step = [r["step_time_s"] for r in sel if r["step_time_s"]]
                ratio = f"{statistics.mean(step) / statistics.mean(base):.2f}x" if base and step else "-"
                lines.append(f"| {method} | " + (f"{fraction:g} | " if many else "") + f"{LABELS[variant]} | "
                             f"{_fmt([r['knn_top1'] for r in sel])} | {_fmt([r['linear_top1'] for r in sel])} | "
                             f"{statistics.mean(r['train_time_s'] for r in sel):.0f} | {ratio} |")
    return lines


def _plot_pairs(rows, path):
    """pair_cos (solid) and pair_target (dashed) per epoch from each run's log.csv, one panel per fraction and
    variant; returns None, or why no figure was drawn."""
    import csv

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    panels = sorted({(r["fraction"], r["method"], r["variant"]) for r in rows}, key=lambda k: (-k[0], k[1], k[2]))
    cols = min(2, len(panels))
    rows_ = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(5.5 * cols, 3.6 * rows_))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows_, cols, squeeze=False).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (fraction, method, variant) in zip(axes, panels):
        for i, r in enumerate(x for x in rows if (x["fraction"], x["method"], x["variant"]) == (fraction, method,
                                                                                             variant)):
            with open(os.path.join(r["run"], "log.csv")) as f:
                log = [row for row in csv.DictReader(f) if row.get("pair_cos")]
            ep = [int(row["epoch"]) for row in log]
            ax.plot(ep, [float(row["pair_cos"]) for row in log], "o-", ms=3, color=f"C{i}",
                    label=f"seed {r['seed']} pair_cos")
            ax.plot(ep, [float(row["pair_target"]) for row in log], "--", color=f"C{i}", alpha=0.6,
                    label=f"seed {r['seed']} target")
        ax.set(xlabel="epoch", ylabel="pair cosine (epoch mean)",
               title=f"{method} {LABELS[variant]}, data fraction {fraction:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("hard pairs: measured cosine similarity (solid) vs its target (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
