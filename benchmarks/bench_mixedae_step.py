"""One training step (forward + backward + AdamW) of MAE, naive mixing and MixedAE at the driver's digits size.

What MixedAE adds, step by step: naive mixing (the mix / unmix gathers, a full-length encoder sequence per group
instead of MAE's 25% per image), then top-k attention in the encoder (MixedAE with ``hc_weight=0`` and no
segment embedding), then the homologous contrastive term (the projector and the batched SupCon: full MixedAE).
A last row times the mix / unmix gathers alone (forward + backward at the encoder's width): the share of a step
that fusing them with the patch embedding could save at most.

    python benchmarks/bench_mixedae_step.py [--batch 128] [--image-size 16] [--patch-size 2] [--repeats 15]

All models in one process on the same random batch, interleaved (one step of each in turn, ``--repeats`` rounds
after 3 warm-up rounds), so a shared machine's load falls on all of them alike; the median per step is reported
with its ratio to MAE's. Writes ``results/mixedae_step_<device>_<date>.csv``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import harness as H  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)

    import torch

    import augcl
    from augcl import set_checks
    from augcl.functional import mix_partition, mix_patches, unmix_patches
    from augcl.nn import MAE, MixedAE, ViTEncoder

    set_checks(False)  # as in the driver's training loop
    device = torch.device("cpu")
    kw = dict(image_size=args.image_size, patch_size=args.patch_size, in_channels=args.channels, width=128, depth=4,
              heads=4)
    torch.manual_seed(0)
    models = {
        "mae": MAE(ViTEncoder(**kw)),
        "mixedae-naive": MixedAE(ViTEncoder(**kw), naive=True),
        "mixedae (hc 0, segment none)": MixedAE(ViTEncoder(**kw), segment="none", hc_weight=0.0),
        "mixedae": MixedAE(ViTEncoder(**kw)),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), 1e-4) for name, m in models.items()}
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size)
    n_patches = (args.image_size // args.patch_size) ** 2
    tokens = torch.randn(args.batch, n_patches, kw["width"], requires_grad=True)
    mask_token = torch.zeros(kw["width"], requires_grad=True)
    gathers = "mix + unmix gathers only"
    times = {name: [] for name in [*models, gathers]}
    for r in range(args.repeats + 3):
        for name, m in models.items():
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            loss = m(x, generator=g)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if r >= 3:
                times[name].append(time.perf_counter() - t0)
        source = mix_partition(args.batch, n_patches, 4, generator=torch.Generator().manual_seed(r))
        t0 = time.perf_counter()
        unmix_patches(mix_patches(tokens, source, 4), source, mask_token, 4).sum().backward()
        if r >= 3:
            times[gathers].append(time.perf_counter() - t0)
    base = statistics.median(times["mae"])
    rows = []
    print(f"batch {args.batch}, {args.image_size} px, patch {args.patch_size} "
          f"(N = {(args.image_size // args.patch_size) ** 2}), {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        q1, q3 = statistics.quantiles(ts, n=4)[0], statistics.quantiles(ts, n=4)[2]
        print(f"{name:32s} {med * 1e3:8.1f} ms/step  (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f})  x{med / base:.2f} of MAE")
        rows.append({"model": name, "batch": args.batch, "image_size": args.image_size, "patch_size": args.patch_size,
                     "median_ms": round(med * 1e3, 2), "q1_ms": round(q1 * 1e3, 2), "q3_ms": round(q3 * 1e3, 2),
                     "ratio_to_mae": round(med / base, 3), "repeats": len(ts), "threads": torch.get_num_threads(),
                     "device": H.device_slug(device), "device_name": H.device_name(device), "date": H.today(),
                     "torch": torch.__version__, "augcl": augcl.__version__})
    os.makedirs(args.out, exist_ok=True)
    path = H.results_path(args.out, "mixedae_step", device, "csv")
    H.write_csv(rows, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
