"""Gathering across ranks with correct gradients (torch.distributed; works under torchrun, DDP, NCCL and gloo).

Candidates are gathered from every rank *with gradient*. Every rank's loss depends on every rank's
candidates, so the gradient arriving at the gathered tensor on rank r is d(loss_r)/d(all candidates). The local
candidates' true gradient is the sum over ranks of the slice belonging to this rank, so the backward is an
all-reduce (sum) followed by taking the local slice. Peers that return only the local slice of the local
gradient (no all-reduce) silently drop every other rank's contribution.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist


def world_info(group: Optional[dist.ProcessGroup] = None) -> Tuple[int, int]:
    """``(rank, world_size)`` of ``group``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group):
        world = dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        lo = ctx.rank * ctx.rows
        return grad[lo:lo + ctx.rows], None


def gather_with_grad(x: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every rank along dim 0 ([W*B, ...], rank order), keeping gradients.

    Every rank must pass the same shape. Without an initialised process group it returns ``x`` unchanged.
    """
    rank, world = world_info(group)
    if world == 1:
        return x
    # all_gather needs equal shapes on every rank (a mismatch can hang NCCL), so compare them first with one
    # tiny collective; it costs one small all_gather per call.
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    if any(not torch.equal(s, shape) for s in shapes):
        got = [tuple(s.tolist()) for s in shapes]
        raise ValueError(f"gather_with_grad: every rank must pass the same shape, got {got}")
    return _GatherWithGrad.apply(x, group)
