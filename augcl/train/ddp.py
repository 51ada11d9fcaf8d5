"""Multi-process training under ``torchrun`` (DistributedDataParallel): process group, SyncBN, helpers.

``torchrun --nproc_per_node=N -m augcl.train ...`` starts N copies of the driver with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment; :func:`setup` sees them and joins the process group
(NCCL on CUDA, gloo on CPU). Without them the driver runs as one process and nothing here is used.

Conventions of the driver under DDP (see augcl/train/trainer.py):

* ``--batch-size`` is the GLOBAL batch; each rank trains on ``batch_size // world`` images per step (the
  batch must divide evenly), so a run's hyper-parameters (learning-rate scaling, queue sizes) do not change
  with the number of processes.
* Every rank draws the same permutation of the training set per epoch and takes its own slice of each global
  batch, so the union of the ranks' batches is the single-process batch of the same seed.
* Global negatives: the contrastive losses gather every rank's embeddings (``gather_distributed=True``), whose
  backward sums the candidates' gradient over ranks; DDP then averages the parameter gradients, which makes
  the gradient that of the global batch's mean loss.
* Only rank 0 evaluates, prints and writes files.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from augcl.distributed import gather_with_grad, world_info
from augcl.train.errors import ConfigError

__all__ = ["DistEnv", "setup", "teardown", "all_reduce_mean", "broadcast_object", "GlobalBatchNorm",
           "convert_sync_batchnorm", "all_gather_nograd"]


@dataclass
class DistEnv:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process initialised the group, so it destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def setup(device_name: str) -> tuple:
    """``(DistEnv, device name)``: join the torchrun process group if the environment asks for one.

    An already initialised process group (e.g. a test that spawned the ranks itself) is used as it is. Under
    DDP with CUDA, ``--device auto`` / ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK")
        env = DistEnv(rank, world, rank if local is None else local)
    else:
        world = _env_int("WORLD_SIZE") or 1
        if world <= 1:
            return DistEnv(), device_name
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, local = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0
        use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        env = DistEnv(dist.get_rank(), dist.get_world_size(), local, owns_group=True)
    if env.world > 1 and device_name in ("auto", "cuda") and torch.cuda.is_available():
        device_name = f"cuda:{env.local_rank}"
    return env, device_name


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (``t`` itself in a single process); not differentiable."""
    rank, world = world_info()
    if world == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the default output folder, whose name holds a timestamp)."""
    rank, world = world_info()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of every rank, on any device (``nn.SyncBatchNorm`` is GPU-only).

    In training mode under an initialised process group, the per-channel mean and (biased) variance are
    those of all ranks' samples together, computed in two passes (sum, then sum of squared deviations) with
    :func:`augcl.distributed.gather_with_grad`, so the gradient flows through the statistics exactly as in a
    single process holding the whole batch. Running statistics use the unbiased variance, like BatchNorm.
    Elsewhere (eval mode, one process) it is plain ``F.batch_norm``. Used for ``--sync-bn`` on the CPU.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...] input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        _, world = world_info()
        if not self.training or world == 1:
            use_batch = self.training or self.running_mean is None
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            momentum = self._momentum()
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch,
                                momentum, self.eps)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # fp32 statistics for half types
        count = torch.tensor([x.numel() // c], dtype=xf.dtype, device=x.device)
        total = gather_with_grad(torch.cat([xf.sum(dims), count]).unsqueeze(0)).sum(0)
        n = total[c]
        mean = total[:c] / n
        centred = xf - mean.view(shape)
        var = gather_with_grad((centred * centred).sum(dims).unsqueeze(0)).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self._momentum()
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def _momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(self.num_batches_tracked) if self.track_running_stats else 0.0


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` made global-batch: ``nn.SyncBatchNorm`` on CUDA, GlobalBatchNorm elsewhere
    (parameters and running statistics kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        ref = next(t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point())
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
            if module.track_running_stats:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` [n, ...] concatenated in rank order ([W*n, ...]; ``x`` itself in one process); no
    gradient (MoCo's ``concat_all_gather``)."""
    rank, world = world_info()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
