#!/usr/bin/env python
"""The differentiable augmentation of hard-sample generation, forward + backward to the pixels: augcl's
``diff_augment`` (flip + translation as one gather) against the same with ``affine_grid`` / ``grid_sample`` and
against kornia's equivalent pipeline, at the CPU demo size (16 px, batch 32-160).

    python benchmarks/bench_hard_samples.py --label cpu-shared
    PYTHONPATH=/path/to/kornia python benchmarks/bench_hard_samples.py --label cpu-shared   # with kornia

Every competitor gets images x [B, C, 16, 16] in [0, 1] (a leaf, requires_grad) and is timed on
``y = aug(x); y.square().mean().backward()`` (median of ``--rep`` calls after 5 warm-up calls):

* ``augcl.gather``: ``augcl.functional.hard_samples.diff_augment`` (brightness, saturation, contrast, flip,
  integer translation up to 1/8 of the side with zero fill; the flip and shift one gather);
* ``grid_sample``: the same colour ops, flip + translation through ``affine_grid`` + ``grid_sample``
  (bilinear at integer offsets, zero padding);
* ``kornia``: ``kornia.augmentation`` ColorJiggle(brightness 0.5, contrast 0.5, saturation 1) +
  RandomHorizontalFlip + RandomAffine(degrees 0, translate 1/8), p = 1 (saturation 0 for 1 channel: kornia's
  takes 3-channel images only) (a row ``unavailable`` when kornia is
  not importable; kornia is not an augcl dependency).

The ratio column is each time over augcl.gather's of the same case. On a machine shared with other jobs the
absolute times vary with their load; ratios between competitors of one run are what it measures.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402

from augcl.functional.hard_samples import diff_augment, diff_augment_grid  # noqa: E402


def _grid_pipeline(x, g):
    # the colour ops of diff_augment (translation and flip off), then the resampling variant
    y = diff_augment(x, translate=0.0, flip=False, generator=g)
    return diff_augment_grid(y, generator=g)


def _kornia_pipeline(channels: int):
    try:
        import kornia
        import kornia.augmentation as K
    except ImportError as exc:
        return None, f"kornia not importable ({exc})"
    aug = K.AugmentationSequential(  # (kornia's saturation takes 3-channel images only, as diff_augment's acts)
        K.ColorJiggle(brightness=0.5, contrast=0.5, saturation=1.0 if channels == 3 else 0.0, p=1.0),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=1.0, padding_mode="zeros"))
    return (lambda x, g: aug(x)), f"kornia {kornia.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="32,64,160")
    p.add_argument("--channels", default="1,3")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--rep", type=int, default=50)
    p.add_argument("--label", default="", help="tag of the results file, e.g. cpu-shared")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    device = torch.device("cpu")
    load0 = os.getloadavg()[0]
    rows = []
    for c in H.int_list(args.channels):
        kornia_fn, kornia_note = _kornia_pipeline(c)
        competitors = {"augcl.gather": lambda x, g: diff_augment(x, generator=g), "grid_sample": _grid_pipeline,
                       "kornia": kornia_fn}
        for b in H.int_list(args.batches):
            base = None
            for name, fn in competitors.items():
                row = dict(case=f"B{b}_C{c}_S{args.size}", batch=b, channels=c, size=args.size, competitor=name,
                           threads=torch.get_num_threads(), torch=torch.__version__,
                           note=kornia_note if name == "kornia" else "")
                if fn is None:
                    row["status"] = "unavailable"
                    rows.append(row)
                    continue
                x = torch.rand(b, c, args.size, args.size, requires_grad=True)
                g = torch.Generator().manual_seed(0)

                def call():
                    x.grad = None
                    fn(x, g).square().mean().backward()

                t = H.bench(call, device, warmup=5, rep=args.rep)
                row.update(status="ok", **H.timing_columns(t))
                base = t.median if name == "augcl.gather" else base
                row["time_over_augcl"] = t.median / base
                rows.append(row)
                print(f"{row['case']:>14} {name:>13}: {t.median:8.3f} ms  x{row['time_over_augcl']:.2f}",
                      flush=True)
    for r in rows:
        r["loadavg_1min_start"], r["loadavg_1min_end"] = load0, os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)
    path = H.results_path(args.out, "hard_samples_augment", device, "csv", tag=args.label)
    H.write_csv(rows, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
