"""Distributed training driver (augcl/train/ddp.py, trainer.wrap_ddp): 2 gloo processes on the CPU.

* One SimCLR step of 2 DDP processes with global-batch BN (--sync-bn: GlobalBatchNorm on CPU) and global
  negatives equals the single-process step on the same global batch: the loss (mean over ranks) and every
  parameter gradient (DDP's average).
* MoCo under DDP with shuffle-BN: the queues of both ranks stay identical (gathered keys) and hold keys of
  both ranks; SwAV's distributed Sinkhorn step runs and its loss agrees across ranks' mean.
* ``python -m torch.distributed.run --nproc_per_node=2 -m augcl.train ...`` finishes, rank 0 alone writes the
  outputs, and metrics.json records the world size.
"""
import json
import os
import subprocess
import sys
import traceback
from datetime import timedelta

import pytest
import torch

from conftest import finish_rank, run_ranks

pytestmark = pytest.mark.distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
B = 8  # global batch of the step tests (4 per rank)
SIZE = 8


def _views(seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, SIZE, SIZE, generator=g), torch.randn(B, 3, SIZE, SIZE, generator=g)


def _simclr(distributed, extras=False):
    from augcl.train.methods import build_method
    from augcl.train.models import build_backbone

    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 3, True)
    kw = dict(hallucinate=True, unmix=dict(alpha=1.0, prob_mixup=0.5, per_sample=False)) if extras else {}
    # fp64: the comparison then measures the algorithm (statistics, gathers, averaging), not fp32 rounding
    method = build_method("simclr", backbone, dim, temperature=0.2, distributed=distributed, **kw).double()
    if extras:
        _fix_draws(method, rows=B // WORLD if distributed else B)
    return method


def _fix_draws(method, rows):
    """Deterministic Un-Mix and Hallucinator draws, the same for 2 x 4 images as for 1 x 8: a mixup with lam 0.7
    whose partner is the reversed batch *within each rank's block of 4* (under DDP every rank mixes its own
    images, so the single process gets the per-rank partners mapped to global rows), and the Hallucinator's
    lam fixed at 0.05."""
    block = B // WORLD
    local = torch.arange(block - 1, -1, -1)
    partner = torch.cat([local + r * block for r in range(rows // block)])

    def mix(x):
        lam = torch.full((x.shape[0],), 0.7, dtype=torch.float32)
        return 0.7 * x + 0.3 * x[partner], lam, partner

    method.mix = mix
    method.hallucinate_lam = lambda batch, device: torch.tensor(0.05, dtype=torch.float64)


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=60))
        from augcl.train.ddp import all_reduce_mean
        from augcl.train.methods import build_method
        from augcl.train.models import build_backbone
        from augcl.train.trainer import wrap_ddp

        cpu = torch.device("cpu")
        sl = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        # 1. SimCLR step with global-batch BN: the rank's slice of the global batch
        method = _simclr(distributed=True)
        model = wrap_ddp(method, cpu, WORLD, sync_bn=True)
        x1, x2 = _views()
        loss = model(x1[sl].double(), x2[sl].double())
        loss.backward()
        result["simclr_loss"] = all_reduce_mean(loss.detach())
        result["simclr_grads"] = {n: p.grad.clone() for n, p in method.named_parameters()}
        result["bn_types"] = sorted({type(m).__name__ for m in method.modules() if "Norm" in type(m).__name__})

        # 1b. SimCLR with --hallucinate and --unmix: the same equality (global negatives in both extra losses)
        method = _simclr(distributed=True, extras=True)
        model = wrap_ddp(method, cpu, WORLD, sync_bn=True)
        loss = model(x1[sl].double(), x2[sl].double())
        loss.backward()
        result["simclr_extras_loss"] = all_reduce_mean(loss.detach())
        result["simclr_extras_grads"] = {n: p.grad.clone() for n, p in method.named_parameters()}

        # 2. MoCo v2 with shuffle-BN (per-rank BN): two steps, then the queues
        torch.manual_seed(0)
        backbone, dim = build_backbone("small", 3, True)
        moco = build_method("mocov2", backbone, dim, queue_size=64, distributed=True, shuffle_bn=True)
        ddp = wrap_ddp(moco, cpu, WORLD, sync_bn=False)
        opt = torch.optim.SGD(moco.parameters(), lr=0.1)
        for step in range(2):
            v1, v2 = _views(seed=step)
            loss = ddp(v1[sl], v2[sl])
            opt.zero_grad()
            loss.backward()
            opt.step()
        result["moco_queue"] = moco.queue.clone()
        result["moco_ptr"] = int(moco.queue_ptr)
        result["moco_loss"] = loss.item()

        # 3. SwAV: distributed Sinkhorn (codes normalised over both ranks' samples)
        torch.manual_seed(0)
        backbone, dim = build_backbone("small", 3, True)
        swav = build_method("swav", backbone, dim, n_prototypes=16, queue_size=0, distributed=True)
        sw = wrap_ddp(swav, cpu, WORLD, sync_bn=False)
        v1, v2 = _views(seed=3)
        small = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
        swav.on_step(0, 10)
        loss = sw(v1[sl], v2[sl], small[sl])
        loss.backward()
        result["swav_loss"] = loss.item()
        result["swav_proto_grad"] = swav.prototypes.heads[0].weight.grad is not None
    except Exception:  # noqa: BLE001 (reported by the parent)
        result = {"error": traceback.format_exc()}
    finally:
        finish_rank(result, out_dir, rank)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_ddp")
    return run_ranks(_worker, WORLD, d, args=(str(d / "init"), str(d)))


def test_simclr_ddp_step_equals_single_process(ranks):
    """2 processes x 4 images (global BN, global negatives) == 1 process x 8 images: loss and gradients."""
    method = _simclr(distributed=False)
    x1, x2 = _views()
    loss = method(x1.double(), x2.double())
    loss.backward()
    assert ranks[0]["bn_types"] == ["GlobalBatchNorm"]
    for r in ranks:
        torch.testing.assert_close(r["simclr_loss"], loss.detach(), rtol=1e-10, atol=1e-12)
    grads = {n: p.grad for n, p in method.named_parameters()}
    assert set(grads) == set(ranks[0]["simclr_grads"])
    for r in ranks:
        for name, g in grads.items():
            torch.testing.assert_close(r["simclr_grads"][name], g, rtol=1e-8, atol=1e-10, msg=lambda m: name + m)
    # the per-process batch alone gives a different loss: the equality above needs the global batch
    solo = _simclr(distributed=False)
    assert not torch.allclose(solo(x1[:4].double(), x2[:4].double()), loss)


def test_simclr_hallucinate_unmix_ddp_step_equals_single_process(ranks):
    """--hallucinate --unmix under DDP: hallucinate_simclr_loss and unmix_nt_xent gather every rank's rows as
    negatives, so 2 processes x 4 images equal 1 process x 8 images (same mixtures, same lam): loss and every
    parameter gradient, the Hallucinator's included."""
    method = _simclr(distributed=False, extras=True)
    x1, x2 = _views()
    loss = method(x1.double(), x2.double())
    loss.backward()
    grads = {n: p.grad for n, p in method.named_parameters()}
    assert any(n.startswith("hallucinator.") for n in grads)
    assert set(grads) == set(ranks[0]["simclr_extras_grads"])
    for r in ranks:
        torch.testing.assert_close(r["simclr_extras_loss"], loss.detach(), rtol=1e-10, atol=1e-12)
        for name, g in grads.items():
            torch.testing.assert_close(r["simclr_extras_grads"][name], g, rtol=1e-8, atol=1e-10,
                                       msg=lambda m: name + m)
    # without the gather (per-rank negatives) the mean of the two half-batch losses differs
    halves = []
    for r in range(WORLD):
        part = _simclr(distributed=False, extras=True)
        _fix_draws(part, rows=B // WORLD)
        sl = slice(r * B // WORLD, (r + 1) * B // WORLD)
        halves.append(part(x1[sl].double(), x2[sl].double()).detach())
    assert not torch.allclose(torch.stack(halves).mean(), loss.detach())


def test_moco_ddp_queues_identical_with_both_ranks_keys(ranks):
    q0, q1 = ranks[0]["moco_queue"], ranks[1]["moco_queue"]
    torch.testing.assert_close(q0, q1, rtol=0, atol=0)
    # 2 steps x 2 views x 8 global images enqueued
    assert ranks[0]["moco_ptr"] == 32
    torch.testing.assert_close(q0[:32].norm(dim=1), torch.ones(32))
    assert ranks[0]["moco_loss"] != ranks[1]["moco_loss"]  # each rank's own queries


def test_swav_ddp_step(ranks):
    for r in ranks:
        assert torch.isfinite(torch.tensor(r["swav_loss"])) and r["swav_loss"] > 0
        assert r["swav_proto_grad"]  # not frozen (freeze_prototypes_steps=0)


def _torchrun(out, *args):
    """``python -m torch.distributed.run --nproc_per_node=2 -m augcl.train`` on 1 epoch of tiny synthetic data;
    returns (stdout, metrics.json) after asserting a clean exit and a single set of outputs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "augcl.train", *args, "--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--image-size", "8",
           "--no-progress", "--no-baseline", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout  # rank 0 alone writes
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and 0 <= m["knn_top1"] <= 1 and m["final_loss"] > 0
    return r.stdout, m


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """The real CLI under torchrun (2 gloo processes): one set of outputs, written by rank 0."""
    out = tmp_path / "run"
    stdout, m = _torchrun(out, "--method", "mocov2", "--queue-size", "192")
    assert stdout.count("augcl.train: mocov2") == 1, stdout
    assert "DDP: 2 processes (gloo), 16 images per process" in stdout
    assert m["per_process_batch"] == 16 and m["epochs"] == 1
    assert sorted(os.listdir(out)) == ["curves.png", "last.pt", "log.csv", "metrics.json"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["method"]["queue_ptr"] == 64  # 10 steps x 2 views x 32 global images, mod 192


@pytest.mark.slow
def test_torchrun_simclr_hallucinate_unmix(tmp_path):
    """SimCLR with both options under torchrun (global negatives in both extra losses)."""
    _, m = _torchrun(tmp_path / "run", "--method", "simclr", "--hallucinate", "--unmix")
    assert m["hallucinate"] and m["unmix"]
