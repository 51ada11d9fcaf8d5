#!/usr/bin/env python
"""Launch every kernel of augcl once, forward and backward, at odd shapes: the script compute-sanitizer runs in
benchmarks/gpu_session.sh (memcheck over the test suite would not fit a device call).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/gpu_launch_all.py
    python benchmarks/gpu_launch_all.py --device cpu     # the same calls on the CPU (Triton under the interpreter)

Odd shapes so that every mask and tail is exercised: row / column counts that are not multiples of any block,
D below, at and above one logit chunk, a split sweep (few anchors, many candidates), strided inputs, uint8 and
channels_last images, Sinkhorn's one-program and multi-launch paths, top-k attention over key rows of 65 / 197 / 257
(odd block tails) from strided q, k, v views. Each case runs through the functional API
with its backend forced (``triton`` and, when augcl._C has CUDA kernels, ``cuda``), and its gradient is taken, so
the backward kernels run too. With the caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) every tensor is
its own cudaMalloc, so an out-of-bounds access cannot land silently in a neighbour's block.

Prints one line per case (``ok``, ``skipped: reason`` or ``FAILED: error``) and exits 1 if any case failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))  # a source checkout of augcl, if it is not installed

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel module is imported
    # the interpreter evaluates exp2 / log2 on masked cells too (zeroed afterwards): numpy's overflow warnings
    warnings.filterwarnings("ignore", category=RuntimeWarning)

import augcl  # noqa: E402
import augcl.functional as AF  # noqa: E402
from augcl.dispatch import REGISTRY  # noqa: E402


def _cases(device: torch.device, small: bool):
    """(name, backend-selecting tensor builder, call) triples; ``small``: CPU sizes (the interpreter is slow)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    lo = (torch.float32, torch.float16) if small else (torch.float32, torch.float16, torch.bfloat16)
    cases = []
    for dtype in lo:
        for n, d in ((37, 33), (21, 130)) if small else ((517, 33), (300, 130), (129, 512)):
            cases.append((f"nt_xent {str(dtype)[6:]} N={n} D={d}",
                          lambda n=n, d=d, dtype=dtype: (rnd(n, d, dtype=dtype), rnd(n, d, dtype=dtype)),
                          lambda z1, z2: AF.nt_xent(z1, z2, 0.3)))
        q_rows, queue = (5, 300) if small else (7, 70001)
        cases.append((f"info_nce split sweep {str(dtype)[6:]} B={q_rows} K={queue}",
                      lambda dtype=dtype, q_rows=q_rows, queue=queue: (
                          rnd(q_rows, 48, dtype=dtype), rnd(q_rows, 48, dtype=dtype), rnd(queue, 48, dtype=dtype)),
                      lambda q, k, u: AF.info_nce(q, k, u.detach(), 0.2)))
    cases.append(("contrastive_loss strided, P=3, E=2",
                  lambda: (rnd(64, 41)[::2], rnd(95, 41).t().contiguous().t()),
                  lambda a, c: AF.contrastive_loss(a, c, torch.randint(-1, 95, (32, 3), generator=g).to(device),
                                                   excl_idx=torch.randint(-1, 95, (32, 2), generator=g).to(device),
                                                   neg_start=7)))
    b, dim, hid = (11, 24, 40) if small else (1001, 96, 200)
    for dim_ in (dim, 136):
        cases.append((f"hallucinate B={b} D={dim_} H={hid}",
                      lambda dim_=dim_: (rnd(b, dim_), rnd(b, dim_), rnd(hid, 2 * dim_) * 0.1, rnd(hid) * 0.1,
                                         rnd(hid, hid) * 0.1, rnd(hid) * 0.1, rnd(dim_, hid) * 0.1, rnd(dim_) * 0.1),
                      lambda x, k, *w: AF.hallucinate(x, k, 0.4, *w)))
    for bsz, k in ((13, 29), (71, 45)) if small else ((13, 3000), (4097, 3001)):
        cases.append((f"sinkhorn B={bsz} K={k}", lambda bsz=bsz, k=k: (rnd(bsz, k),),
                      lambda s: AF.sinkhorn(s, 0.05, 3)))
        cases.append((f"swav_loss B={bsz} K={k}", lambda bsz=bsz, k=k: (rnd(bsz, k), rnd(bsz, k)),
                      lambda s1, s2: AF.swav_loss([s1, s2], sinkhorn_iterations=3)))
    bimg, c, h, w = (5, 3, 9, 7) if small else (37, 3, 67, 71)
    for name, build in (
        ("mix_images fp32 NCHW", lambda: (rnd(bimg, c, h, w),)),
        ("mix_images fp16 channels_last", lambda: (rnd(bimg, c, h, w, dtype=torch.float16)
                                                   .contiguous(memory_format=torch.channels_last),)),
        ("mix_images uint8 -> fp32, normalised", lambda: (torch.randint(0, 256, (bimg, c, h, w), generator=g,
                                                                        dtype=torch.uint8).to(device),)),
    ):
        cases.append((name, build, lambda x: _mix(x, g)))
    for length, dh in ((5, 8), (33, 16)) if small else ((65, 32), (197, 64), (257, 128)):
        for dtype in lo:
            # q, k, v as strided views of one [B, L, 3, H, Dh] projection; L not a power of two, key 0 kept
            cases.append((f"topk_attention {str(dtype)[6:]} L={length} Dh={dh} qkv views",
                          lambda length=length, dh=dh, dtype=dtype: tuple(
                              rnd(3, length, 3, 2, dh, dtype=dtype)[:, :, i].transpose(1, 2) for i in range(3)),
                          lambda q, k, v: AF.topk_attention(q, k, v, max(1, (q.shape[2] - 1) // 4),
                                                            keep_first=True)))
    return cases


def _mix(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _c, h, w = x.shape
    dev = x.device
    lam = torch.rand(b, generator=g).to(dev)
    cut = (torch.arange(b) % 2 == 0).to(dev)
    y0 = torch.randint(0, h, (b,), generator=g)
    x0 = torch.randint(0, w, (b,), generator=g)
    boxes = torch.stack([y0, torch.minimum(y0 + 3, torch.tensor(h)), x0, torch.minimum(x0 + 4, torch.tensor(w))],
                        1).to(dev)
    partner = torch.randint(0, b, (b,), generator=g).to(dev)  # repeats and rows nobody picks: the general backward
    kw = {}
    if x.dtype == torch.uint8:
        kw = dict(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], out_dtype=torch.float32)
    return AF.mix_images(x, lam, cut, boxes, partner, **kw)


def _backends(device: torch.device):
    names = ["triton"]
    if device.type == "cuda":
        names.append("cuda")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    augcl.set_checks(False)  # the value checks' syncs add nothing here
    failed = 0
    launched = 0
    for name, build, call in _cases(device, small=device.type != "cuda"):
        for backend in _backends(device):
            label = f"{backend:6s} {name}"
            try:
                inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in build()]
                with augcl.use_backend(backend):
                    out = call(*inputs)
                leaves = [t for t in inputs if t.requires_grad]
                if out.requires_grad and leaves:
                    torch.autograd.grad(out.float().sum(), leaves, allow_unused=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                launched += 1
                print(f"ok       {label}", flush=True)
            except augcl.BackendUnavailableError as exc:
                print(f"skipped  {label}: {str(exc).splitlines()[0][:200]}", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every failure, then exit 1
                failed += 1
                print(f"FAILED   {label}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                traceback.print_exc(limit=3)
    print(f"launch_all: {launched} cases ran, {failed} failed ({', '.join(sorted(REGISTRY))} ops; device {device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
