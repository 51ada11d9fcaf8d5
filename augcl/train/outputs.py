"""The files a run writes into ``--out``: log.csv, curves.png, metrics.json and, with --hard-samples /
--hard-pairs, pairs.png (last.pt: checkpoint.py).

Every file is written to a ``.tmp`` beside it and renamed over the old one, so a reader (or a killed run)
never sees half a file. The folder is checked before anything is loaded or trained (:func:`check_out_dir`),
and matplotlib, needed for curves.png only, is optional: without it the plot is skipped with one note.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from augcl.train.errors import ConfigError

__all__ = ["LOG_COLUMNS", "check_out_dir", "make_out_dir", "write_csv", "write_json", "plot_reason",
           "plot_curves", "plot_pairs"]

LOG_COLUMNS = ["epoch", "loss", "knn_top1", "lr", "time_s", "elapsed_s"]


def check_out_dir(out: Path) -> None:
    """ConfigError (one line) unless ``out`` is a writable folder or can be created as one; creates nothing.

    Checked: ``out`` itself is not a file; the nearest existing ancestor is a folder (not a file) that this
    process may write into (``os.access``; a read-only mount answers no).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    existing = out
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise ConfigError(f"--out {out}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {'it' if existing == out else existing} is not writable")


def make_out_dir(out: Path) -> None:
    """Create ``out`` (and its parents); ConfigError instead of an OSError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be created: {exc.strerror or exc}") from None


def write_csv(path: Path, history: List[Dict]) -> None:
    """log.csv: one row per epoch (epoch 0: the random-init encoder), blank cells for missing values.

    The columns are LOG_COLUMNS followed by any extra keys the rows carry (a method's ``epoch_stats()``, e.g.
    the generator's losses or MixedAE's reconstruction loss), in the order they first appear."""
    columns = list(LOG_COLUMNS)
    for row in history:
        columns += [c for c in row if c not in columns]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in history:
            w.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    os.replace(tmp, path)


def write_json(path: Path, obj: Dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def plot_reason() -> Optional[str]:
    """Why curves.png cannot be drawn (matplotlib missing or broken), or None when it can."""
    try:  # optional dependency (the ``train`` extra): imported here, where its absence is reported
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not importable ({exc}); pip install matplotlib (or augcl[train])"
    return None


def plot_curves(path: Path, history: List[Dict], title: str, baseline_knn: Optional[float]) -> None:
    """loss and kNN top-1 per epoch, side by side (matplotlib's Agg canvas; pyplot's state is not touched)."""
    # matplotlib is optional: imported only once plot_reason() said it is there
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_knn = fig.subplots(1, 2)
    trained = [r for r in history if r["epoch"] > 0]
    ax_loss.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_knn.plot([r["epoch"] for r in history], [r["knn_top1"] for r in history], "o-", ms=3, color="C1")
    if baseline_knn is not None:
        ax_knn.axhline(baseline_knn, ls="--", color="gray", label="random-init encoder")
        ax_knn.legend(loc="lower right")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1", title="kNN monitor (test set)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")  # (savefig picks the format from the suffix)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def plot_pairs(path: Path, previews, title: str) -> None:
    """pairs.png: one row per snapshot ``(epoch, sigma, uint8 [2, P, C, S, S])`` of the generated pairs, each
    pair as ``a`` above ``b`` (the same latents at every snapshot, so a column follows one pair over training)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(previews)
    fig = Figure(figsize=(8, 1.1 * rows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax, (epoch, sigma, img) in zip(axes, previews):
        img = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        two, p, c, s, _ = img.shape
        grid = img.transpose(0, 3, 1, 4, 2).reshape(two * s, p * s, c)  # [a-row; b-row] x pairs side by side
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"ep {epoch}\nσ {sigma:.2f}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
