"""Training-step throughput of the driver ``python -m augcl.train``: SimCLR, ResNet-18 (CIFAR stem), 32x32 images,
with augcl's fused NT-Xent vs the same driver on the eager loss (``--backend eager``), and the share of the step
time the loss takes.

A step is what augcl/train/trainer.py does per batch: two augmented views on the device (augment.view_plan +
augment), one encoder + projector pass over both, the loss, backward, SGD step. It is built from the driver's
own modules (models.build_backbone, methods.build_method, augment), on one fixed batch of random uint8 images
(data loading is not measured).

Measured per competitor (``augcl``: the dispatcher's backend; ``eager``: the [2B, 2B] similarity matrix +
cross_entropy of methods/losses.py):

* ``steps_per_s``: ``rep`` whole steps, each timed (synchronised), after ``warmup`` untimed ones; median.
* the breakdown, from separately timed steps with a synchronisation between sections: ``aug_ms`` (both views),
  ``encoder_fwd_ms``, ``loss_fwd_ms``, ``backward_ms`` (encoder and loss), ``optimizer_ms``;
* ``loss_fwd_bwd_ms``: the loss alone, forward + backward, on embeddings of the step's shape [B, 128] x 2
  (timed like bench_contrastive.py), and ``loss_share = loss_fwd_bwd_ms / step_ms``: the part of the step the
  loss is responsible for.

With ``--ops`` (default ``none,unmix+hallucinate``) each competitor is also timed with the driver's
``--unmix --hallucinate`` step (SimCLR with a Hallucinator(128) after the projector and Un-Mix on view 1:
``method(x1, x2)`` of augcl/train/methods/simclr.py, then backward and the SGD step; the ``eager`` competitor
runs that step with ``--backend eager``, i.e. the naive loss where there is one and augcl's pure-PyTorch
reference of the other ops). On those rows:

* ``mix_ms``: the mixing alone on the step's view [B, 3, S, S] fp32 (draws included): augcl:
  ``augcl.functional.unmix`` (the dispatcher's backend); eager: ``eager_unmix`` below, the reference's
  numpy draws + ``torch.flip`` + lerp / box copy;
* ``hallucinator_ms``: the generator alone, forward + backward on [B, 128] x 2: augcl: ``augcl.nn.Hallucinator``
  (the fused op); eager: ``augcl.reference.hallucinator.ReferenceGenerator`` (the paper's module structure,
  same weights);
* ``mix_share`` / ``hallucinator_share``: those times over the median step time of the row.

Defaults: on a GPU the reference configuration, batch 512 (``--batch 512``, and ``--amp bf16`` is the usual
training setting); on a CPU, batch 32, because one ResNet-18 step at batch 512 on 32 px images is ~0.9 TFLOP
(15-20 s on 2 cores). The CSV notes the reduced batch. Results: ``results/train_<device-slug>_<date>.csv``.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_contrastive.py: spinning OpenMP waiters on 2 vCPUs

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

import harness as H  # noqa: E402

ISSUE_BATCH = 512


def _build(backend: str, device: torch.device, batch: int, size: int, seed: int, **method_options):
    """(method, optimizer, views plan, images, mean, std) as the driver builds them for SimCLR / ResNet-18;
    ``method_options`` go to ``build_method`` (e.g. ``hallucinate=True``)."""
    from augcl.train.augment import view_plan
    from augcl.train.methods import build_method
    from augcl.train.models import build_backbone

    torch.manual_seed(seed)
    backbone, dim = build_backbone("resnet18", 3, cifar_stem=True)
    method = build_method("simclr", backbone, dim, temperature=0.2, backend="eager" if backend == "eager" else None,
                          **method_options).to(device)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.3 * batch / 256, momentum=0.9, weight_decay=5e-4)
    views = view_plan("simclr", image_size=size, channels=3)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8).to(device)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=device)
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=device)
    return method, optimizer, views, images, mean, std


def eager_unmix(x: torch.Tensor, rng, alpha: float = 1.0, prob_mixup: float = 0.5):
    """Un-Mix's batch mixture as the reference writes it (unmix_c10.py): numpy draws, torch.flip, lerp or a
    CutMix box copy; returns (mixed, lam) with lam corrected to the kept pixel fraction for CutMix."""
    import math

    lam = float(rng.beta(alpha, alpha))
    reverse = torch.flip(x, (0,))
    if rng.random() < prob_mixup:
        return lam * x + (1 - lam) * reverse, lam
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = reverse[:, :, y0:y1, x0:x1]
    return mixed, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def run_ops_case(backend: str, device: torch.device, batch: int, size: int, amp: str, warmup: int, rep: int,
                 seed: int = 0) -> dict:
    """The driver's SimCLR --unmix --hallucinate step, whole, and the mixing / generator alone."""
    import numpy as np

    import augcl.functional as AF
    from augcl.nn import Hallucinator
    from augcl.reference.hallucinator import ReferenceGenerator
    from augcl.train.augment import augment

    method, optimizer, views, images, mean, std = _build(
        backend, device, batch, size, seed, hallucinate=True, unmix=dict(alpha=1.0, prob_mixup=0.5, per_sample=False))
    method.set_rng(torch.Generator(device=device).manual_seed(seed + 2))
    method.train()
    g_aug = torch.Generator(device=device).manual_seed(seed)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def step():
        import contextlib

        vs = [augment(images, v.cfg, v.size, mean, std, g_aug) for v in views]
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = method(*vs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    loss_value = step().item()
    whole = H.bench(step, device, warmup=max(0, warmup - 1), rep=rep)

    x1 = augment(images, views[0].cfg, views[0].size, mean, std, g_aug)
    if backend == "eager":
        rng = np.random.default_rng(seed)
        mix = lambda: eager_unmix(x1, rng)  # noqa: E731
    else:
        g_mix = torch.Generator(device=device).manual_seed(seed)
        mix = lambda: AF.unmix(x1, generator=g_mix)  # noqa: E731
    mt = H.bench(mix, device, warmup=max(1, warmup), rep=max(rep, 5))

    out_dim = 128
    gz = torch.Generator().manual_seed(seed + 1)
    z1 = torch.randn(batch, out_dim, generator=gz).to(device).requires_grad_(True)
    z2 = torch.randn(batch, out_dim, generator=gz).to(device).requires_grad_(True)
    grad_out = torch.randn(2 * batch, out_dim, generator=gz).to(device)
    gen = Hallucinator(out_dim).to(device)
    if backend == "eager":
        ref = ReferenceGenerator(2 * out_dim, 2 * out_dim, out_dim).to(device)
        ref.load_state_dict(gen.state_dict(), strict=False)
        hall = lambda: ref(z1, z2, 0.05).backward(grad_out)  # noqa: E731
    else:
        hall = lambda: gen(z1, z2, 0.05).backward(grad_out)  # noqa: E731

    def clear():
        z1.grad = z2.grad = None
        for p in method.parameters():
            p.grad = None

    ht = H.bench(hall, device, warmup=max(1, warmup), rep=max(rep, 5), setup=clear)
    return {"competitor": "augcl" if backend != "eager" else "eager", "ops": "unmix+hallucinate",
            "loss_value_first_step": loss_value, "step_ms_median": whole.median, "step_ms_p20": whole.p20,
            "step_ms_p80": whole.p80, "steps_per_s": 1e3 / whole.median, "images_per_s": batch * 1e3 / whole.median,
            "n_reps": rep, "mix_ms": mt.median, "mix_share": mt.median / whole.median,
            "hallucinator_ms": ht.median, "hallucinator_share": ht.median / whole.median}


def run_case(backend: str, device: torch.device, batch: int, size: int, amp: str, warmup: int, rep: int,
             seed: int = 0) -> dict:
    import time

    from augcl.train.augment import augment

    method, optimizer, views, images, mean, std = _build(backend, device, batch, size, seed)
    method.train()
    g_aug = torch.Generator(device=device).manual_seed(seed)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def autocast():
        import contextlib

        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(sections=None):
        def mark(name):
            if sections is not None:
                H.sync(device)
                now = time.perf_counter()
                sections[name] = sections.get(name, 0.0) + (now - mark.t) * 1e3
                mark.t = now

        mark.t = time.perf_counter()
        vs = [augment(images, v.cfg, v.size, mean, std, g_aug) for v in views]
        mark("aug_ms")
        with autocast():
            z = method.projector(method.backbone(torch.cat(vs)))
            mark("encoder_fwd_ms")
            z1, z2 = z.chunk(2)
            loss = method.loss_fn(z1, z2, method.temperature)
        mark("loss_fwd_ms")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark("backward_ms")
        optimizer.step()
        mark("optimizer_ms")
        return loss

    loss_value = step().item()  # first call: lazy init, Triton JIT
    whole = H.bench(step, device, warmup=max(0, warmup - 1), rep=rep)
    sections: dict = {}
    for _ in range(rep):
        step(sections)
    # the loss alone on the step's embedding shape
    g = torch.Generator().manual_seed(seed + 1)
    out_dim = 128
    z1 = torch.randn(batch, out_dim, generator=g).to(device).requires_grad_(True)
    z2 = torch.randn(batch, out_dim, generator=g).to(device).requires_grad_(True)

    def loss_only():
        with autocast():
            method.loss_fn(z1, z2, method.temperature).backward()

    def clear():
        z1.grad = z2.grad = None

    lt = H.bench(loss_only, device, warmup=max(1, warmup), rep=max(rep, 5), setup=clear)
    row = {"competitor": "augcl" if backend != "eager" else "eager", "ops": "none", "loss_value_first_step": loss_value,
           "step_ms_median": whole.median, "step_ms_p20": whole.p20, "step_ms_p80": whole.p80,
           "steps_per_s": 1e3 / whole.median, "images_per_s": batch * 1e3 / whole.median, "n_reps": rep,
           "loss_fwd_bwd_ms": lt.median, "loss_share": lt.median / whole.median}
    row.update({k: v / rep for k, v in sections.items()})
    return row


def parse_args(argv=None):
    p = H.BenchParser(__doc__.split("\n\n")[0], warmup=(5, 1), rep=(30, 3), unit="steps", seed=False, plots=False)
    p.add_argument("--batch", type=int, default=None, help=f"batch size (default {ISSUE_BATCH} on GPU, 32 on CPU)")
    p.add_argument("--gpu-config", action="store_true",
                   help=f"the GPU configuration whatever the device: batch {ISSUE_BATCH}")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_names("--backends", ("augcl", "eager"), "competitors", note="augcl: the dispatcher's backend; eager: "
                "the driver's --backend eager")
    p.add_names("--ops", ("none", "unmix+hallucinate"), "steps", note="none: the plain SimCLR step; "
                "unmix+hallucinate: the --unmix --hallucinate step")
    return p.parse(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    import augcl
    from augcl.train.trainer import _loss_backend

    augcl.set_checks(False)  # no per-call host sync in the loss while timing (bench_contrastive.py does the same)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = ISSUE_BATCH if args.gpu_config else (args.batch or (ISSUE_BATCH if gpu else 32))
    warmup, rep = args.warmup, args.rep
    note = "" if batch == ISSUE_BATCH else f"reduced batch {batch} (issue: {ISSUE_BATCH}; too slow on this device)"
    load_start = os.getloadavg()[0]
    base = {"case": "simclr_resnet18_cifar_stem", "device": H.device_slug(device),
            "device_name": H.device_name(device), "date": H.today(), "torch": torch.__version__,
            "augcl": augcl.__version__, "threads": torch.get_num_threads(), "batch": batch,
            "image_size": args.image_size, "amp": args.amp, "note": note,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    print(f"bench_train: SimCLR ResNet-18 (CIFAR stem), {args.image_size} px, batch {batch}, amp {args.amp} on "
          f"{base['device_name']}; {warmup} warm-up + {rep} timed steps" + (f"; {note}" if note else ""))
    rows = []
    ops_list = args.ops
    for ops in ops_list:
        for name in args.backends:
            lb = _loss_backend("eager" if name == "eager" else "auto", device,
                               {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
            row = dict(base, loss_backend=lb)
            if ops == "none":
                row.update(run_case(name, device, batch, args.image_size, args.amp, warmup, rep))
                print(f"  {row['competitor']:>5} [{lb}]: {row['steps_per_s']:.3f} steps/s ({row['step_ms_median']:.0f} "
                      f"ms/step; aug {row['aug_ms']:.0f}, encoder fwd {row['encoder_fwd_ms']:.0f}, loss fwd "
                      f"{row['loss_fwd_ms']:.1f}, backward {row['backward_ms']:.0f}, optimizer "
                      f"{row['optimizer_ms']:.0f} ms); loss fwd+bwd alone {row['loss_fwd_bwd_ms']:.2f} ms = "
                      f"{100 * row['loss_share']:.2f}% of the step")
            else:
                row.update(run_ops_case(name, device, batch, args.image_size, args.amp, warmup, rep))
                print(f"  {row['competitor']:>5} +unmix +hallucinate: {row['steps_per_s']:.3f} steps/s "
                      f"({row['step_ms_median']:.0f} ms/step); mixing alone {row['mix_ms']:.3f} ms = "
                      f"{100 * row['mix_share']:.2f}%, hallucinator fwd+bwd alone {row['hallucinator_ms']:.3f} ms = "
                      f"{100 * row['hallucinator_share']:.2f}% of the step")
            rows.append(row)
    load_end = os.getloadavg()[0]
    for ops in ops_list:
        by = {r["competitor"]: r for r in rows if r["ops"] == ops}
        for r in by.values():
            r["load_start"], r["load_end"] = round(load_start, 2), round(load_end, 2)
        if "eager" in by and "augcl" in by:
            a, e = by["augcl"], by["eager"]
            a["speedup_vs_eager"] = e["step_ms_median"] / a["step_ms_median"]
            msg = f"  augcl vs eager ({ops}): step {a['speedup_vs_eager']:.3f}x"
            if ops == "none":
                a["loss_speedup_vs_eager"] = e["loss_fwd_bwd_ms"] / a["loss_fwd_bwd_ms"]
                msg += f", loss fwd+bwd {a['loss_speedup_vs_eager']:.2f}x"
            else:
                a["mix_speedup_vs_eager"] = e["mix_ms"] / a["mix_ms"]
                a["hallucinator_speedup_vs_eager"] = e["hallucinator_ms"] / a["hallucinator_ms"]
                msg += (f", mixing {a['mix_speedup_vs_eager']:.2f}x, hallucinator "
                        f"{a['hallucinator_speedup_vs_eager']:.2f}x")
            print(msg + f" (load average {load_start:.1f} -> {load_end:.1f})")
    os.makedirs(args.out, exist_ok=True)
    path = H.results_path(args.out, "train", device, "csv", tag=args.tag)
    H.write_csv(rows, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
