#!/usr/bin/env python
"""The performance candidates of augcl, timed side by side in one run, so that the first GPU session decides
between designs a CPU cannot judge (benchmarks/gpu_session.sh runs it).

    python benchmarks/gpu_candidates.py --out DIR            # GPU sizes
    python benchmarks/gpu_candidates.py --out DIR --dry-run  # tiny sizes on the CPU (Triton under the interpreter)

Each candidate is a switch (an environment variable read at every call, see the modules named) set for its
rows only; every row is timed on the same inputs (forward + backward, median of ``--rep`` timings with CUDA
events after a warm-up that also compiles) and checked against a float64 reference of the same inputs (column
``rel_err``: the relative error of the gradient, the quantity the candidates' numerics change):

========== ===================================================== ===============================================
group      candidates                                            switch
========== ===================================================== ===============================================
fp32       triton ieee (default) / tf32 / tf32x3, cuda (cuBLAS,  AUGCL_TRITON_FP32 (kernels/_triton.py);
           exact and TF32)                                       AUGCL_CONTRASTIVE_ROUTE=fp32-cuda (ops)
large-d    triton backward output chunk 128 (default) / 256 /   AUGCL_CONTRASTIVE_BWD_DO (kernels/contrastive.py);
           512, cuda (chunked cuBLAS; its bf16 backward's GEMMs  AUGCL_CONTRASTIVE_ROUTE=large-d-cuda;
           in fp32, or on bf16 tensor cores)                     AUGCL_CUDA_BF16_GEMM=1 (csrc/cuda/contrastive.cu)
tiles      contrastive tiles 64x64 (default) / 128x64 / 64x128  AUGCL_CONTRASTIVE_TILES (kernels/contrastive.py)
           / 128x128 (8 warps) / autotune (timed on first call)
sinkhorn   multi-launch tiles 64x64 (default) / 32x32 / 16x32   AUGCL_SINKHORN_TILES (kernels/sinkhorn.py)
           / 32x64
unmix      cuda mix_images: per-element decode (default) / one    AUGCL_UNMIX_CUDA_FAST=1 (csrc/cuda/unmix.cu);
           decode per thread + vector stores; triton             the backend choice for mix_images
========== ===================================================== ===============================================

Writes ``candidates.csv`` (one row per candidate, appended as soon as it is measured, so a run stopped at its
time limit keeps every row before) and prints a table with each group's fastest row marked.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # the interpreter's exp2 on masked cells

import harness as H  # noqa: E402

import augcl  # noqa: E402
import augcl.functional as AF  # noqa: E402

COLUMNS = ["group", "candidate", "backend", "switches", "dtype", "shape", "ms_median", "ms_p20", "ms_p80",
           "rel_err", "status", "device"]


@contextlib.contextmanager
def switches(env: dict):
    """Set the environment switches ``env`` for the block (unset ones removed), then restore them."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def matmul_tf32(allowed: bool):
    """torch's fp32 matmul precision for the block (the cuda backend's cuBLAS GEMMs follow it)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if allowed else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:
        old = matmul.allow_tf32
        matmul.allow_tf32 = allowed
        try:
            yield
        finally:
            matmul.allow_tf32 = old


def _nt_xent_rows(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g)
    return z1.to(device=device, dtype=dtype), z2.to(device=device, dtype=dtype)


def _nt_xent_grad(z1, z2, backend):
    a = z1.detach().requires_grad_()
    b = z2.detach().requires_grad_()
    AF.nt_xent(a, b, 0.2, backend=backend).backward()
    return a.grad


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def contrastive_rows(group, n, d, dtype, device, candidates, args):
    """Time NT-Xent forward + backward for each ``(name, backend, env, tf32)`` candidate."""
    z1, z2 = _nt_xent_rows(n, d, dtype, device)
    ref = _nt_xent_grad(z1.double(), z2.double(), "reference")
    for name, backend, env, tf32 in candidates:
        row = dict(group=group, candidate=name, backend=backend, dtype=str(dtype)[6:], shape=f"2N={2 * n} D={d}",
                   switches=" ".join(f"{k}={v}" for k, v in env.items() if v) or "-", device=H.device_name(device))
        try:
            with switches(env), matmul_tf32(tf32):
                grad = _nt_xent_grad(z1, z2, backend)
                timing = H.bench(lambda: _nt_xent_grad(z1, z2, backend), device, warmup=args.warmup, rep=args.rep)
            row.update(ms_median=timing.median, ms_p20=timing.p20, ms_p80=timing.p80, rel_err=_rel(grad, ref),
                       status="ok")
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is a row, not the end of the run
            row.update(status=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        yield row


def sinkhorn_rows(b, k, device, args):
    from augcl.kernels import sinkhorn as KS
    from augcl.reference.sinkhorn import sinkhorn_reference

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(b, k, generator=g).to(device)
    ref = sinkhorn_reference(scores.double(), 0.05, 3)
    for tiles in KS.TILE_CANDIDATES:
        row = dict(group="sinkhorn", candidate=f"tiles {tiles}", backend="triton", dtype="float32",
                   shape=f"B={b} K={k}", switches=f"{KS.TILES_ENV}={tiles}", device=H.device_name(device))
        try:
            with switches({KS.TILES_ENV: tiles}):
                codes = KS.sinkhorn_fwd(scores, 0.05, 3, path="multi")
                timing = H.bench(lambda: KS.sinkhorn_fwd(scores, 0.05, 3, path="multi"), device,
                                 warmup=args.warmup, rep=args.rep)
            row.update(ms_median=timing.median, ms_p20=timing.p20, ms_p80=timing.p80, rel_err=_rel(codes, ref),
                       status="ok")
        except Exception as exc:  # noqa: BLE001
            row.update(status=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        yield row


def unmix_rows(shape, low, device, args):
    """mix_images forward + backward (``low`` in and out; uint8 in, normalised fp32 out: forward only) on the cuda
    backend with and without AUGCL_UNMIX_CUDA_FAST, and on the triton backend; rel_err against the float64
    reference of the same inputs."""
    from augcl.ops.unmix import mix_images_op

    g = torch.Generator().manual_seed(2)
    b, c, h, w = shape
    lam = torch.rand(b, generator=g).to(device)
    cut = (torch.rand(b, generator=g) < 0.5).to(device)
    boxes = torch.tensor([[h // 4, 3 * h // 4, w // 4, 3 * w // 4]] * b).to(device)
    partner = torch.arange(b - 1, -1, -1).to(device)
    mean = torch.tensor([0.485, 0.456, 0.406][:c]).to(device)
    std = torch.tensor([0.229, 0.224, 0.225][:c]).to(device)
    for label, x, kw in ((str(low)[6:], torch.randn(shape, generator=g).to(device, low), {}),
                         ("uint8->fp32", torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device),
                          dict(mean=mean, std=std))):
        ref = mix_images_op(x.double() if x.is_floating_point() else x, lam, cut, boxes, partner,
                            kw.get("mean", None), kw.get("std", None), torch.float64, backend="reference")
        for name, backend, fast in (("cuda", "cuda", None), ("cuda fast decode", "cuda", "1"),
                                    ("triton", "triton", None)):
            row = dict(group="unmix", candidate=name, backend=backend, dtype=label, shape="x".join(map(str, shape)),
                       switches=f"AUGCL_UNMIX_CUDA_FAST={fast}" if fast else "-", device=H.device_name(device))
            odt = low if x.is_floating_point() else torch.float32

            def step():
                xx = x.detach().requires_grad_(x.is_floating_point())
                out = mix_images_op(xx, lam, cut, boxes, partner, kw.get("mean"), kw.get("std"), odt,
                                    backend=backend)
                if xx.requires_grad:
                    out.backward(torch.ones_like(out))
                return out

            try:
                with switches({"AUGCL_UNMIX_CUDA_FAST": fast}):
                    out = step()
                    timing = H.bench(step, device, warmup=args.warmup, rep=args.rep)
                row.update(ms_median=timing.median, ms_p20=timing.p20, ms_p80=timing.p80, rel_err=_rel(out, ref),
                           status="ok")
            except Exception as exc:  # noqa: BLE001
                row.update(status=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            yield row


def plan(device: torch.device, dry: bool):
    """The groups: (callable producing rows). Sizes: GPU ones that fill an H100 / H200, or tiny CPU ones."""
    from augcl.kernels import _triton as T
    from augcl.kernels import contrastive as KC
    from augcl.ops import contrastive as OC

    off = {T.FP32_PRECISION_ENV: None, KC.TILES_ENV: None, KC.BWD_DO_ENV: None, OC.ROUTE_ENV: None,
           "AUGCL_CUDA_BF16_GEMM": None, "AUGCL_UNMIX_CUDA_FAST": None}

    def env(**kw):
        return {**off, **kw}

    n, d, d_large = (24, 16, 140) if dry else (8192, 128, 512)
    low = torch.float32 if dry else torch.bfloat16  # the interpreter has no bf16
    fp32 = [(f"triton {p}", "triton", env(**{T.FP32_PRECISION_ENV: p}), False) for p in T.FP32_PRECISIONS]
    fp32 += [("cuda exact fp32", "cuda", env(), False), ("cuda tf32", "cuda", env(), True)]
    large = [(f"triton bwd chunk {c}", "triton", env(**{KC.BWD_DO_ENV: c}), False) for c in KC.BWD_DO_CANDIDATES]
    large += [("cuda chunked cuBLAS", "cuda", env(), False),
              ("cuda bf16 GEMMs", "cuda", env(AUGCL_CUDA_BF16_GEMM="1"), False)]
    tiles = [(f"triton tiles {t}", "triton", env(**{KC.TILES_ENV: t}), False) for t in KC.TILE_CHOICES]
    sb, sk = (70, 45) if dry else (4096, 3000)
    return [
        lambda a: contrastive_rows("fp32", n, d, torch.float32, device, fp32, a),
        lambda a: contrastive_rows("large-d", n, d_large, low, device, large, a),
        lambda a: contrastive_rows("tiles", n, d, low, device, tiles, a),
        lambda a: sinkhorn_rows(sb, sk, device, a),
        lambda a: unmix_rows((3, 3, 9, 8) if dry else (256, 3, 224, 224), low, device, a),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of candidates.csv")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (plumbing check)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rep", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3)
    args.rep = args.rep if args.rep is not None else (2 if args.dry_run else 20)
    augcl.set_checks(False)  # no per-call host sync inside the timings
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "candidates.csv")
    rows = []
    t0 = time.perf_counter()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for group in plan(device, args.dry_run):
            for row in group(args):
                writer.writerow(row)
                f.flush()
                rows.append(row)
                print(f"{row['group']:9s} {row['candidate']:24s} {row['shape']:18s} "
                      f"{row.get('ms_median', float('nan')):9.3f} ms  rel_err {row.get('rel_err', float('nan')):.2e}"
                      f"  {row['status'][:60]}", flush=True)
    print(f"\ncandidates ({time.perf_counter() - t0:.0f} s; {path}); fastest of each group that ran:")
    for group in dict.fromkeys(r["group"] for r in rows):
        ran = [r for r in rows if r["group"] == group and r["status"] == "ok"]
        if ran:
            best = min(ran, key=lambda r: r["ms_median"])
            print(f"  {group:9s} {best['candidate']:24s} {best['ms_median']:.3f} ms (rel_err {best['rel_err']:.2e})")
        else:
            print(f"  {group:9s} none ran")
    # A candidate that cannot run here (no cuda backend on a CPU) is a row; one that fails (a compile error, out of
    # resources) makes the exit status 1 so the session summary shows it.
    failed = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("BackendUnavailableError")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
