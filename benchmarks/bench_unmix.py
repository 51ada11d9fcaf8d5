"""Un-Mix / Mixup / CutMix image mixing benchmark: augcl's fused ``mix_images`` against timm ``Mixup`` (batch and
elem modes), torchvision v2 ``MixUp``/``CutMix`` and kornia ``RandomMixUpV2``/``RandomCutMixV2``, in one run.

Mixing is memory-bound, so the figure of merit is bandwidth: ``GB/s = (bytes of x read once + bytes of the output
written once) / median time``, the traffic of an ideal single pass (the partner row is another row of x, read
once overall). ``copy_frac`` divides it by the device's copy bandwidth measured in the same run
(``dst.copy_(src)`` of a large fp32 buffer: 2 x its bytes / time; ``copy_GBps`` per case is the same copy at the
case's own size and dtype). Forward only: the images carry no gradient in a data pipeline.

Competitors (each on the same input x [B, C, H, W], parameters drawn per call unless said):

* ``augcl[<backend>]``: ``augcl.functional.mix_images`` with per-sample parameters drawn once (half the rows
  CutMix, half mixup, reversed partners): the op alone, every backend the dispatcher can run (others are rows
  ``unavailable`` with its reason); for uint8 input the conversion to float and mean/std normalisation are fused;
* ``augcl.unmix``: ``augcl.functional.unmix(x, per_sample=True)``: draws + op;
* ``augcl.timm-elem``: ``augcl.compat.timm.Mixup(mode='elem', mixup+cutmix)``: timm's numpy draws + op + targets;
* ``timm-batch`` / ``timm-elem``: ``timm.data.Mixup(mixup_alpha=1, cutmix_alpha=1)`` (in place on x; elem loops
  over samples in Python); float input only;
* ``tv-mixup`` / ``tv-cutmix``: torchvision.transforms.v2 (one lam per batch); MixUp needs float input;
* ``kornia-mixup`` / ``kornia-cutmix``: kornia.augmentation ``RandomMixUpV2`` / ``RandomCutMixV2`` (per-sample).

uint8 rows: augcl converts to float32 and normalises in the same pass (out = 4 bytes/element); peers that accept
uint8 (torchvision CutMix) keep uint8. Peers that cannot take the input are rows ``unsupported``.

CPU default grid: CIFAR 512x3x32x32 and ImageNet-size 224x224 with B = 32 (not 256: a 256-batch fp32 case is
154 MB per tensor and timm's elem loop takes seconds per call on 2 shared cores); ``--full`` runs the GPU grid
(B = 256 at 224, every dtype). Usage::

    python benchmarks/bench_unmix.py                 # CPU defaults (or the GPU grid on a GPU)
    python benchmarks/bench_unmix.py --full          # the full grid (256x3x224x224 and 512x3x32x32, fp32/bf16/uint8)
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md: spinning OpenMP waiters on 2 vCPUs

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402

import augcl  # noqa: E402
from augcl import functional as AF  # noqa: E402
from augcl.dispatch import REGISTRY  # noqa: E402
from augcl.ops.unmix import mix_out_dtype  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "uint8": torch.uint8}
AUGCL_BACKENDS = ("triton", "cuda", "cpu", "reference")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 1000


def make_input(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    return torch.rand(shape, generator=g).to(device=device, dtype=dtype)


def per_sample_params(b, h, w, device):
    """Half the rows CutMix (a centred box of half the side), half mixup (lam = 0.3), reversed partners."""
    lam = torch.full((b,), 0.3, device=device)
    cutmix = (torch.arange(b, device=device) % 2 == 0)
    boxes = torch.tensor([h // 4, h // 4 + h // 2, w // 4, w // 4 + w // 2], device=device).repeat(b, 1)
    partner = torch.arange(b - 1, -1, -1, device=device)
    return lam, cutmix, boxes, partner


def competitors(x: torch.Tensor, backends: List[str]) -> Dict[str, Callable[[], object]]:
    """name -> (callable or a string saying why it cannot run on x)."""
    b, c, h, w = x.shape
    dev = x.device
    is_u8 = x.dtype == torch.uint8
    norm = dict(mean=MEAN, std=STD) if is_u8 else {}
    target = torch.randint(0, NUM_CLASSES, (b,), device=dev)
    comps: Dict[str, object] = {}
    reasons = REGISTRY["mix_images"].reasons(x, mix_out_dtype(x.dtype))  # the op's dispatch inputs: (x, out dtype)
    lam, cutmix, boxes, partner = per_sample_params(b, h, w, dev)
    for be in backends:
        if reasons.get(be) is not None:
            comps[f"augcl[{be}]"] = f"unavailable: {reasons[be]}"
            continue
        comps[f"augcl[{be}]"] = (lambda be=be: AF.mix_images(x, lam, cutmix, boxes, partner, backend=be, **norm))
    gen = torch.Generator(device=dev).manual_seed(0)
    comps["augcl.unmix"] = lambda: AF.unmix(x, per_sample=True, generator=gen, **norm)
    from augcl.compat import timm as ctimm
    ours_elem = ctimm.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", num_classes=NUM_CLASSES, **norm)
    comps["augcl.timm-elem"] = lambda: ours_elem(x, target)
    try:
        from timm.data import Mixup as TimmMixup
        for mode in ("batch", "elem"):
            if is_u8:
                comps[f"timm-{mode}"] = "unsupported: timm Mixup mixes float images in place (uint8 fails)"
                continue
            m = TimmMixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, num_classes=NUM_CLASSES)
            comps[f"timm-{mode}"] = (lambda m=m: m(x, target))
    except ImportError as e:
        comps["timm-batch"] = comps["timm-elem"] = f"unavailable: {e}"
    try:
        from torchvision.transforms import v2
        mix, cut = v2.MixUp(num_classes=NUM_CLASSES), v2.CutMix(num_classes=NUM_CLASSES)
        comps["tv-mixup"] = ("unsupported: torchvision MixUp multiplies in place (uint8 fails)" if is_u8
                             else (lambda: mix(x, target)))
        comps["tv-cutmix"] = lambda: cut(x, target)
    except ImportError as e:
        comps["tv-mixup"] = comps["tv-cutmix"] = f"unavailable: {e}"
    try:
        import warnings

        import kornia.augmentation as K
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="kornia")
        if is_u8:
            comps["kornia-mixup"] = comps["kornia-cutmix"] = "unsupported: kornia augmentations expect float images"
        else:
            km = K.RandomMixUpV2(data_keys=["input", "class"]).to(dev)
            kc = K.RandomCutMixV2(data_keys=["input", "class"], use_correct_lambda=True).to(dev)
            comps["kornia-mixup"] = lambda: km(x, target)
            comps["kornia-cutmix"] = lambda: kc(x, target)
    except ImportError as e:
        comps["kornia-mixup"] = comps["kornia-cutmix"] = f"unavailable: {e}"
    return comps


def device_copy_gbps(device, mib: int, warmup: int, rep: int) -> float:
    n = mib * H.MIB // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = H.bench(lambda: dst.copy_(src), device, warmup=warmup, rep=rep)
    return 2 * src.nbytes / (t.median * 1e-3) / 1e9


def run(args) -> None:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    full = args.full or gpu
    augcl.set_checks(False)
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")] if args.shapes else (
        [(256, 3, 224, 224), (512, 3, 32, 32)] if full else [(32, 3, 224, 224), (512, 3, 32, 32)])
    dtypes, warmup, rep, cap_s = args.dtypes, args.warmup, args.rep, args.cap_s
    load_start = os.getloadavg()[0]
    copy_bw = device_copy_gbps(device, 512 if gpu else 64, warmup, rep)
    print(f"device: {H.device_name(device)}; measured copy bandwidth {copy_bw:.1f} GB/s")
    rows = []
    for shape in shapes:
        for dname in dtypes:
            x = make_input(shape, DTYPES[dname], device)
            out_bytes = x.numel() * (4 if x.dtype == torch.uint8 else x.element_size())
            ideal_bytes = x.nbytes + out_bytes
            dst = torch.empty_like(x)
            copy_t = H.bench(lambda: dst.copy_(x), device, warmup=warmup, rep=rep)
            case_copy = 2 * x.nbytes / (copy_t.median * 1e-3) / 1e9
            for name, fn in competitors(x, args.backends).items():
                row = dict(competitor=name, shape="x".join(map(str, shape)), batch=shape[0], dtype_in=dname,
                           device=H.device_name(device), ideal_bytes=ideal_bytes, copy_GBps=case_copy,
                           device_copy_GBps=copy_bw)
                if isinstance(fn, str):
                    row["status"] = fn.split(":")[0]
                    row["reason"] = fn
                    rows.append(row)
                    continue
                try:
                    first = H.time_once_ms(fn, device)
                    t = H.bench(fn, device, warmup=0 if first > cap_s * 250 else warmup,
                                rep=H.reps_within(first, cap_s, rep))
                except Exception as e:  # a peer failing on a case is a result, not a crash of the run
                    row.update(status="error", reason=f"{type(e).__name__}: {str(e)[:160]}")
                    rows.append(row)
                    continue
                gbps = ideal_bytes / (t.median * 1e-3) / 1e9
                row.update(status="ok", ms_median=t.median, ms_p20=t.p20, ms_p80=t.p80, reps=len(t.times_ms),
                           GBps=gbps, copy_frac=gbps / copy_bw)
                rows.append(row)
            del x, dst
    load_end = os.getloadavg()[0]
    for r in rows:
        r.update(load_start=load_start, load_end=load_end, torch=torch.__version__,
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
                 note="" if full else "CPU default grid: 224x224 at batch 32 (not 256) to fit 2 shared cores")
    # speed-ups against timm elem / batch in the same case
    for r in rows:
        if r.get("status") != "ok":
            continue
        for peer in ("timm-elem", "timm-batch"):
            ref = next((p for p in rows if p["competitor"] == peer and p["shape"] == r["shape"]
                        and p["dtype_in"] == r["dtype_in"] and p.get("status") == "ok"), None)
            r[f"speedup_vs_{peer}"] = ref["ms_median"] / r["ms_median"] if ref else None
    os.makedirs(args.out, exist_ok=True)
    csv_path = H.results_path(args.out, "unmix", device, "csv", tag=args.tag)
    H.write_csv(rows, csv_path)
    png_path = H.plot([dict(r, npix=r["batch"]) for r in rows if r.get("status") == "ok"],
                      H.results_path(args.out, "unmix", device, "png", tag=args.tag), x="batch", series="competitor",
                      panels=("shape", "dtype_in"), title=f"image mixing, {H.device_name(device)}", xlabel="batch")
    headers = ["shape", "in", "competitor", "ms", "GB/s", "copy frac", "x timm-elem", "status"]
    H.print_table(headers, [[r["shape"], r["dtype_in"], r["competitor"], H.fmt(r.get("ms_median")),
                             H.fmt(r.get("GBps")), H.fmt(r.get("copy_frac"), ".2f"),
                             H.fmt(r.get("speedup_vs_timm-elem"), ".1f"), r.get("reason") or r["status"]]
                            for r in rows])
    print(f"wrote {csv_path}" + (f" and {png_path}" if png_path else "")
          + f"; load average {load_start:.2f} -> {load_end:.2f}")


def parse_args(argv=None):
    p = H.BenchParser(__doc__, warmup=(5, 1), rep=(30, 5), cap_s=(10.0, 8.0), seed=False)
    p.add_argument("--full", action="store_true", help="the full grid (default on a GPU): 256x3x224x224, 512x3x32x32")
    p.add_argument("--shapes", default=None, help="comma list of BxCxHxW, overrides the grid")
    p.add_names("--dtypes", DTYPES, "input dtypes")
    p.add_names("--backends", AUGCL_BACKENDS, "augcl mix_images backends", note=H.UNAVAILABLE_BACKEND)
    return p.parse(argv)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
