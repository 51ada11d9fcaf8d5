"""MixedAE read-outs over training, from the seed-table runs' log.csv: homology precision, homologous contrastive
loss and kNN top-1 per epoch, mean over seeds with the min-max band (one PNG and one CSV of the curves), and a
markdown table per label from the runs' metrics.json and log.csv (kNN / linear top-1 mean ± std, per-step train
time, the contrastive loss after epoch 1 and at the end, the final homology precision).

    python benchmarks/plot_mixedae.py --run mae=runs/mixedae_digits/mae-baseline-e10 \\
        --run "MixedAE (segment encoder)=runs/mixedae_digits/mixedae-baseline-e10" ...

``--run LABEL=PREFIX``: the runs ``PREFIX-s<seed>/log.csv`` (seed_table.py's folder names). The homology precision
is the share of each query's top-k keys (k = N / g) from its own image, averaged over the encoder blocks and an
epoch's steps (chance 1 / g = 0.25); the contrastive loss's floor is log(N / g - 1) (all of an image's tokens
equal, other images' far) and its collapsed value log(N - 1) (all tokens equal).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics

COLUMNS = ("homology_precision", "hc_loss", "knn_top1")
TITLES = {"homology_precision": "homology precision (top-k keys from own image)",
          "hc_loss": "homologous contrastive loss", "knn_top1": "kNN top-1 (plain attention)"}


def read_runs(prefix: str):
    """{column: {epoch: [value per seed]}} of the runs ``prefix-s*/log.csv`` (epoch 0, the random init, left out)."""
    curves = {c: {} for c in COLUMNS}
    paths = sorted(glob.glob(f"{prefix}-s*/log.csv"))
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                epoch = int(row["epoch"])
                for c in COLUMNS:
                    if epoch > 0 and row.get(c) not in (None, ""):
                        curves[c].setdefault(epoch, []).append(float(row[c]))
    return curves, len(paths)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=PREFIX")
    p.add_argument("--out", required=True, help="output path without extension (.png, .csv and .md are written)")
    p.add_argument("--patches", type=int, default=64, help="N (default 64)")
    p.add_argument("--group", type=int, default=4, help="g (default 4)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for spec in args.run:
        label, _, prefix = spec.partition("=")
        curves, n = read_runs(prefix)
        if n == 0:
            p.error(f"--run {spec}: no {prefix}-s*/log.csv")
        series.append((label, curves, n))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    rows = []
    colors = {label: f"C{i}" for i, (label, _, _) in enumerate(series)}  # one colour per run in every panel
    for ax, col in zip(axes, COLUMNS):
        for label, curves, n in series:
            pts = sorted(curves[col].items())
            if not pts or (col == "hc_loss" and not any(v for _, vs in pts for v in vs)):
                continue  # (a run without the contrastive term logs hc_loss 0)
            epochs = [e for e, _ in pts]
            mean = [statistics.mean(v) for _, v in pts]
            ax.plot(epochs, mean, marker="o", ms=3, color=colors[label], label=f"{label} ({n} seeds)")
            ax.fill_between(epochs, [min(v) for _, v in pts], [max(v) for _, v in pts], color=colors[label],
                            alpha=0.15)
            rows += [{"label": label, "column": col, "epoch": e, "mean": round(m, 6), "min": min(v), "max": max(v),
                      "seeds": len(v)} for (e, v), m in zip(pts, mean)]
        if col == "homology_precision":
            ax.axhline(1 / args.group, color="gray", ls="--", lw=1, label=f"chance 1/g = {1 / args.group:g}")
        if col == "hc_loss":
            n, g = args.patches, args.group
            ax.axhline(math.log(n // g - 1), color="green", ls="--", lw=1,
                       label=f"floor log(N/g - 1) = {math.log(n // g - 1):.3f}")
            ax.axhline(math.log(n - 1), color="red", ls="--", lw=1,
                       label=f"collapsed log(N - 1) = {math.log(n - 1):.3f}")
        ax.set_title(TITLES[col])
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(_table(args.run)) + "\n")
    print(f"wrote {args.out}.png, .csv and .md")
    return 0


def _pm(values, scale=1.0, digits=1):
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _table(specs):
    lines = ["| run | seeds | kNN top-1 (%) | linear top-1 (%) | train ms / step | hc_loss epoch 1 | hc_loss last "
             "| homology precision last |", "|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        label, _, prefix = spec.partition("=")
        ms, first, last = [], [], []
        for path in sorted(glob.glob(f"{prefix}-s*/metrics.json")):
            with open(path) as f:
                ms.append(json.load(f))
            with open(os.path.join(os.path.dirname(path), "log.csv")) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) > 0]
            first.append(rows[0])
            last.append(rows[-1])
        steps = [m["num_train"] // m["config"]["batch_size"] * m["epochs"] for m in ms]

        def col(rows, key):
            return [float(r[key]) if r.get(key) not in (None, "") else None for r in rows]

        lines.append(f"| {label} | {len(ms)} | {_pm([m['knn_top1'] for m in ms], 100)} | "
                     f"{_pm([m['linear_top1'] for m in ms], 100)} | "
                     f"{_pm([m['train_time_s'] / s * 1e3 for m, s in zip(ms, steps)], digits=0)} | "
                     f"{_pm(col(first, 'hc_loss'), digits=3)} | {_pm(col(last, 'hc_loss'), digits=3)} | "
                     f"{_pm(col(last, 'homology_precision'), digits=3)} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
