"""MixedAE read-outs over training, from the seed-table runs' log.csv: homology precision, homologous contrastive
loss and kNN top-1 per epoch, mean over seeds with the min-max band (one PNG and one CSV of the curves).

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
import math
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
    p.add_argument("--out", required=True, help="output path without extension (.png and .csv are written)")
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
    for ax, col in zip(axes, COLUMNS):
        for label, curves, n in series:
            pts = sorted(curves[col].items())
            if not pts:
                continue
            epochs = [e for e, _ in pts]
            mean = [statistics.mean(v) for _, v in pts]
            ax.plot(epochs, mean, marker="o", ms=3, label=f"{label} ({n} seeds)")
            ax.fill_between(epochs, [min(v) for _, v in pts], [max(v) for _, v in pts], alpha=0.2)
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
    print(f"wrote {args.out}.png and {args.out}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
