"""A PyTorch Lightning run with the patched lightly loss: ``Trainer(accelerator="cpu", devices=2, strategy="ddp")``
on two gloo processes, a LightningModule in lightly's style (SimCLR head, ``NTXentLoss(gather_distributed=True)``:
every rank's negatives are the rows of both ranks, and gradients flow back across the gather).

Two processes are spawned (conftest.run_ranks); each joins the process group itself (file:// rendezvous) and sets
the environment Lightning reads (LOCAL_RANK, ...), so Lightning treats the processes as launched externally
instead of re-running pytest. In each process the same seeded fit runs three times: lightly unpatched in float64
(the oracle, ``precision="64-true"``), lightly unpatched in float32, and after ``augcl.patch(lightly=True)`` in
float32. The loss curve (every step's loss on each rank) and the final parameters of the patched fit are compared
with the unpatched one by the rule of tests/test_patch_tolerance.py, and the patched fit must have run augcl's
op (spied) without a fallback warning.
"""
import os
import traceback
from datetime import timedelta

import pytest
import torch

from conftest import finish_rank, run_ranks
from test_patch_tolerance import assert_like_peer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("pytorch_lightning", reason="pytorch-lightning (a test dependency) is not installed")
pytest.importorskip("lightly", reason="lightly (a test dependency) is not installed")

WORLD = 2
STEPS = 4
BATCH = 8  # per rank


def _fit(precision: str, rank: int):
    """One seeded fit; returns every step's loss and the final parameters (float64 on the host)."""
    import pytorch_lightning as pl
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from torch import nn

    class SimCLR(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.ReLU())
            self.projection_head = SimCLRProjectionHead(16, 16, 8)
            self.criterion = NTXentLoss(temperature=0.3, gather_distributed=True)
            self.losses = []

        def forward(self, x):
            return self.projection_head(self.backbone(x))

        def training_step(self, batch, batch_index):
            x0, x1 = batch
            loss = self.criterion(self(x0), self(x1))
            self.losses.append(loss.detach().double().item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    pl.seed_everything(0, verbose=False)
    model = SimCLR()
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(WORLD * BATCH * STEPS, 3, 6, 6, generator=g),
                                          torch.randn(WORLD * BATCH * STEPS, 3, 6, 6, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)  # Lightning adds the sampler
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", precision=precision, max_steps=STEPS,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader)
    assert (trainer.world_size, trainer.global_rank) == (WORLD, rank), "Lightning did not join the 2-process group"
    out = {f"loss{i}": torch.tensor(v, dtype=torch.float64) for i, v in enumerate(model.losses)}
    out.update({"param." + n: p.detach().double().clone() for n, p in model.named_parameters()})
    return out


def _worker(rank, init_file, out_dir):
    import warnings

    import torch.distributed as dist

    result = {}
    try:
        os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=60))
        torch.set_num_threads(1)
        import importlib

        import augcl

        P = importlib.import_module("augcl.patch")
        result["oracle"] = _fit("64-true", rank)
        result["unpatched"] = _fit("32-true", rank)
        calls = []
        real = P.nt_xent_named
        P.nt_xent_named = lambda *a, **k: calls.append(k.get("gather_distributed")) or real(*a, **k)
        report = augcl.patch(lightly=True, solo=False, timm=False, torchvision=False, pml=False)
        result["report"] = str(report)
        with warnings.catch_warnings():
            warnings.simplefilter("error", P.PatchFallbackWarning)
            result["patched"] = _fit("32-true", rank)
        augcl.unpatch()
        result["calls"] = calls
    except BaseException:  # report instead of dying silently
        result["error"] = traceback.format_exc()
    finally:
        finish_rank(result, out_dir, rank)


def test_lightning_ddp_loss_curve_patched_equals_unpatched(tmp_path):
    results = run_ranks(_worker, WORLD, tmp_path, args=(str(tmp_path / "init"), str(tmp_path)), deadline_s=240.0)
    for rank, res in enumerate(results):
        assert "NTXentLoss.forward" in res["report"] and "patched" in res["report"], res["report"]
        assert res["calls"] == [True] * STEPS, f"rank {rank}: augcl's gathered nt_xent did not run every step"
        assert sorted(res["patched"]) == sorted(res["unpatched"]) == sorted(res["oracle"])
        assert len([k for k in res["oracle"] if k.startswith("loss")]) == STEPS
        assert_like_peer(res["patched"], res["unpatched"], res["oracle"])
    # each rank trains on its own shard (its own losses) ...
    assert not torch.equal(results[0]["patched"]["loss0"], results[1]["patched"]["loss0"])
    # ... and DDP keeps the replicas identical: every rank ends with the same parameters
    for name in results[0]["patched"]:
        if name.startswith("param."):
            assert torch.equal(results[0]["patched"][name], results[1]["patched"][name]), name
