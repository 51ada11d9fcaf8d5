"""Drop-in ``nn.Module`` losses on top of :mod:`augcl.functional`.

* :class:`NTXentLoss` — lightly 1.6.0's ``lightly.loss.NTXentLoss`` (same signature, defaults, memory bank,
  errors and RNG use), computed by the fused ops.
* :class:`MoCoQueue` — MoCo's ring buffer of negative keys (He et al. 2020), with wrap-around.
* :class:`InfoNCELoss` — MoCo / MoCo v3 InfoNCE with an optional :class:`MoCoQueue`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl._numerics import l2_normalize
from augcl.functional.contrastive import info_nce, info_nce_named, nt_xent_named

__all__ = ["NTXentLoss", "MoCoQueue", "InfoNCELoss"]

Temperature = Union[float, Tensor]


@torch.no_grad()
def _gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank (rank order) when torch.distributed runs with > 1 process."""
    _, world = world_info()
    return gather_with_grad(x) if world > 1 else x


class _LightlyMemoryBank(nn.Module):
    """lightly 1.6.0's ``MemoryBankModule`` semantics, rows-first (``bank`` is [num_features, dim]).

    * ``size``: 0 (disabled) or a ``(num_features, dim)`` tuple; a bare positive int, a negative entry or a
      tuple of another length raise lightly's ValueErrors (same messages).
    * ``bank`` is ``F.normalize(torch.randn(size))`` drawn at construction from the global CPU generator (the
      same draws as lightly), ``bank_ptr`` starts at 0. Both buffers are non-persistent, as in lightly, so the
      loss adds nothing to a ``state_dict``.
    * update: the batch is written at ``bank_ptr``; if it reaches or passes the end, only the rows that fit are
      written (the rest of the batch is dropped, not wrapped) and the pointer goes back to 0.
    """

    def __init__(self, size: Union[int, Sequence[int]], gather_distributed: bool = False):
        super().__init__()
        size_tuple = (size,) if isinstance(size, int) else tuple(size)
        if any(x < 0 for x in size_tuple):
            raise ValueError(f"Illegal memory bank size {size}, all entries must be non-negative.")
        if isinstance(size, int) and size > 0:
            raise ValueError(
                f"Memory bank size 'size={size}' does not specify the feature "
                f"dimension. Set it with 'size=({size}, dim)', or pass 'size=0' to "
                "disable the memory bank."
            )
        if size_tuple != (0,) and len(size_tuple) != 2:
            raise ValueError(
                f"Illegal memory bank size {size}, expected a (num_features, dim) "
                "tuple, or 'size=0' to disable the memory bank."
            )
        self.size: Tuple[int, ...] = size_tuple
        self.gather_distributed = gather_distributed
        self.register_buffer("bank", torch.empty(size_tuple, dtype=torch.float), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        if len(size_tuple) > 1:
            with torch.no_grad():
                # Same draws, dtype and order of operations as lightly: bank contents are bit-identical for
                # one seed, and the global RNG advances by the same amount.
                self.bank = F.normalize(torch.randn(size_tuple).type_as(self.bank), dim=-1)

    @property
    def enabled(self) -> bool:
        return self.size[0] > 0

    @torch.no_grad()
    def enqueue(self, batch: Tensor) -> None:
        if self.gather_distributed:
            batch = _gather_no_grad(batch)
        n, k = batch.shape[0], self.size[0]
        ptr = int(self.bank_ptr)  # one host sync per step, as lightly
        if ptr + n >= k:
            self.bank[ptr:] = batch[: k - ptr].detach()
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + n] = batch.detach()
            self.bank_ptr[0] = ptr + n

    def extra_repr(self) -> str:
        return f"size={self.size}, gather_distributed={self.gather_distributed}"


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709) with an optional memory bank
    (MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722): a drop-in for lightly 1.6.0's
    ``lightly.loss.NTXentLoss``.

    Args:
        temperature: logits are ``cos / temperature``. Default 0.5. ``abs(temperature) < 1e-8`` raises
            lightly's ValueError ("Illegal temperature: abs(t) < 1e-8").
        memory_bank_size: 0 (default, SimCLR: in-batch negatives) or a ``(num_features, dim)`` tuple (MoCo-style
            negatives from a bank of past ``out1`` rows). lightly 1.6.0 rejects a bare positive int.
        gather_distributed: without a bank, the negatives are the rows of every rank (gradients flow back to
            every rank); with a bank, ``out1`` of every rank is written to the bank (the loss itself is local).
        backend: augcl backend (``None`` = automatic). Keyword only; not in lightly.

    ``forward(out0, out1)``: ``out0``, ``out1`` [B, D] two views (any float dtype; both are L2-normalised).

    * no bank: the 2B rows of ``[out0; out1]`` each have their other view as positive and every other row
      (2B - 2, or 2BW - 2 gathered) as negatives; mean over the 2B local rows.
    * bank [K, D]: row i of ``out0`` has ``out1[i]`` as positive and the K bank rows (used as stored) as
      negatives; mean over B. The negatives are the bank *before* this call's update. The bank is updated with
      the normalised, detached ``out1`` only when ``out0`` requires grad (i.e. a training step: not under
      ``torch.no_grad()``), exactly as lightly.

    Returns a 0-dim loss in fp32 (fp64 for fp64 inputs).

    Differences from lightly (deliberate): a negative temperature raises ValueError (lightly silently accepts
    it and maximises similarity to negatives), so does a non-finite one, and a temperature that is not a number
    or a one-element tensor raises TypeError / ValueError naming it; inputs whose width differs from the bank's
    raise ValueError naming the sizes (lightly: a RuntimeError from einsum); fp64 inputs work with the fp32 bank
    (lightly raises a dtype error unless the loss module is ``.double()``-ed); the result is fp32 for fp16/bf16
    inputs.
    ``memory_bank.bank`` is stored [num_features, dim] like lightly's ``MemoryBankModule.bank``.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: Union[int, Sequence[int]] = 0,
        gather_distributed: bool = False,
        *,
        backend: Optional[str] = None,
    ):
        super().__init__()
        # Kind and shape first (lightly's abs() test below would fail obscurely on a str or a 2-element tensor).
        if isinstance(temperature, Tensor):
            V.check_temperature(temperature)
        elif isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number or a one-element tensor, got {type(temperature).__name__}")
        elif not math.isfinite(temperature):
            raise ValueError(f"Illegal temperature: {temperature} (augcl requires a finite temperature > 0)")
        self.memory_bank = _LightlyMemoryBank(size=memory_bank_size, gather_distributed=gather_distributed)
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.eps = 1e-8
        if abs(self.temperature) < self.eps:
            raise ValueError("Illegal temperature: abs({}) < 1e-8".format(self.temperature))
        if not isinstance(temperature, Tensor) and temperature < 0:
            raise ValueError(f"Illegal temperature: {temperature} < 0 (lightly accepts negative temperatures, "
                             "augcl does not: it would maximise the similarity to the negatives)")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available. "
                "Please set gather_distributed=False or install a torch version with "
                "distributed support."
            )

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        if not self.memory_bank.enabled:
            return nt_xent_named([out0, out1], ["out0", "out1"], self.temperature,
                                 gather_distributed=self.gather_distributed, backend=self.backend)
        bank = self.memory_bank.bank
        V.check_matrix("out0", out0)
        V.check_matrix("out1", out1, rows=out0.shape[0], dim=out0.shape[1])
        V.check_same_device([("out0", out0), ("out1", out1)])
        if out0.shape[1] != bank.shape[1]:
            raise ValueError(f"out0 has {out0.shape[1]} features but the memory bank stores {bank.shape[1]} "
                             f"(memory_bank_size={self.memory_bank.size})")
        # lightly updates only when its normalised out0 requires grad: out0.requires_grad under grad mode.
        update = torch.is_grad_enabled() and out0.requires_grad
        # A snapshot: the bank is updated in place below, and the loss must use the bank before the update.
        negatives = bank.detach().clone().to(out0.device)
        loss = info_nce_named(out0, out1, negatives, self.temperature, key_negatives=False, backend=self.backend,
                              value_inputs=[("out0", out0), ("out1", out1), ("memory_bank.bank", negatives)])
        if update:
            self.memory_bank.enqueue(l2_normalize(out1.detach()))
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


class MoCoQueue(nn.Module):
    """MoCo's queue of negative keys (He et al. 2020, https://arxiv.org/abs/1911.05722) as a ring buffer.

    Args:
        dim: key width D. size: number of keys K (>= the global batch that is enqueued at once).
        normalize: L2-normalise keys when they are enqueued (default True; a no-op up to rounding for MoCo's
            already-normalised keys), so the queue always holds unit rows like its random initialisation.
        gather_distributed: when torch.distributed runs with W > 1 processes, ``enqueue`` gathers the keys of
            every rank (rank order) first, so every rank's queue receives the same W*B keys (MoCo's
            ``concat_all_gather``). Default True.

    Buffers (persistent, so the queue travels in ``state_dict``): ``queue`` [K, D] float32, initialised with
    ``F.normalize(torch.randn(K, D))`` (row-major, unlike MoCo's [D, K]), and ``ptr`` (0-dim int64), the next
    row to overwrite. Ranks with different seeds start from different queues unless the buffers are
    broadcast (DDP does so for buffers of the wrapped module).

    ``enqueue(keys)`` writes the detached keys [B, D] at ``ptr``, wrapping around the end (MoCo requires K to be
    a multiple of the batch; here any B <= K works); a batch larger than K, keys on another device than the
    queue or non-finite keys raise ValueError. ``forward()``
    returns a detached snapshot of the queue [K, D].
    """

    def __init__(self, dim: int, size: int, *, normalize: bool = True, gather_distributed: bool = True):
        super().__init__()
        for name, value in (("dim", dim), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MoCoQueue: {name} must be an int > 0, got {value!r}")
        self.dim, self.size = dim, size
        self.normalize = normalize
        self.gather_distributed = gather_distributed
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self) -> Tensor:
        return self.queue.detach().clone()

    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` [B, D] (B <= size; on the queue's device) at ``ptr``. Non-finite keys raise ValueError
        (one host sync; ``augcl.set_checks(False)`` skips it), so they never poison the queue."""
        self._enqueue(keys, checked=False)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor, checked: bool) -> None:
        """``checked``: the caller's loss already verified that ``keys`` are finite (InfoNCELoss)."""
        V.check_matrix("keys", keys, dim=self.dim)
        if keys.device != self.queue.device:
            raise ValueError(f"keys is on {keys.device} but the queue is on {self.queue.device}; move the "
                             f"MoCoQueue (or the module holding it) with .to(device)")
        if not checked and V.checks_enabled() and not torch.compiler.is_compiling():
            if not V.all_finite(keys):
                raise ValueError("keys contains non-finite values (NaN or Inf); they would poison the queue")
        keys = keys.detach()
        if self.gather_distributed:
            keys = _gather_no_grad(keys)
        n = keys.shape[0]
        if n > self.size:
            _, world = world_info() if self.gather_distributed else (0, 1)
            per_rank = f" ({world} ranks x {n // world})" if world > 1 else ""
            raise ValueError(f"MoCoQueue: cannot enqueue a batch of {n} keys{per_rank} into a queue of size "
                             f"{self.size}: the queue is smaller than the batch; use size >= {n}")
        if self.normalize:
            keys = l2_normalize(keys)
        # ring buffer: rows (ptr + i) % K, pointer arithmetic on the device (no host sync)
        rows = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.queue.index_copy_(0, rows.to(self.queue.device), keys.to(self.queue.dtype).to(self.queue.device))
        self.ptr.copy_((self.ptr + n) % self.size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}, normalize={self.normalize}"


class InfoNCELoss(nn.Module):
    """InfoNCE of MoCo (He et al. 2020, https://arxiv.org/abs/1911.05722) and MoCo v3 (Chen et al. 2021,
    https://arxiv.org/abs/2104.02057), see :func:`augcl.functional.info_nce`.

    Args:
        temperature: default 0.1 (solo-learn's MoCo v2+; MoCo v2 used 0.2, MoCo v3 0.2). A float or a
            one-element tensor (may be an ``nn.Parameter``).
        queue_size: K > 0 keeps a :class:`MoCoQueue` of the last K keys as negatives (``dim`` required);
            0 (default): no queue.
        dim: key width D; required when ``queue_size > 0``.
        key_negatives: the other keys of the batch are negatives too (MoCo v3). With ``queue_size=0`` it must
            be True (otherwise no row has a negative).
        gather_distributed: with ``key_negatives`` the keys of every rank are negatives (with gradient); with a
            queue, the queue receives the keys of every rank (the queue loss itself is local, as in MoCo).
        backend: augcl backend (None = automatic).

    ``forward(query, key, update=None)``: query, key [B, D] (L2-normalised inside). The loss uses the queue as
    it was *before* this call; then the normalised, detached keys are enqueued. ``update=None`` enqueues when the
    module is in training mode and grad mode is on (a training step), True/False force it.
    Returns the mean loss over the B local rows, fp32 (fp64 for fp64 inputs).
    """

    def __init__(
        self,
        temperature: Temperature = 0.1,
        queue_size: int = 0,
        dim: Optional[int] = None,
        key_negatives: bool = False,
        gather_distributed: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"InfoNCELoss: queue_size must be an int >= 0, got {queue_size!r}")
        if queue_size > 0 and dim is None:
            raise ValueError(f"InfoNCELoss: queue_size={queue_size} needs dim= (the key width) to size the queue")
        if queue_size == 0 and not key_negatives:
            raise ValueError("InfoNCELoss: no negatives: pass queue_size > 0 (MoCo) or key_negatives=True "
                             "(MoCo v3 / in-batch negatives)")
        V.check_temperature(temperature)  # a float must be finite and > 0, a tensor have one element: fail now
        self.temperature = temperature
        self.key_negatives = key_negatives
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.queue: Optional[MoCoQueue] = (
            MoCoQueue(dim, queue_size, gather_distributed=gather_distributed) if queue_size > 0 else None
        )

    def forward(self, query: Tensor, key: Tensor, update: Optional[bool] = None) -> Tensor:
        negatives = self.queue() if self.queue is not None else None
        # Without key negatives the other ranks' keys would be candidates of no row: skip that gather.
        loss = info_nce(query, key, negatives, self.temperature, key_negatives=self.key_negatives,
                        gather_distributed=self.gather_distributed and self.key_negatives, backend=self.backend)
        if update is None:
            update = self.training and torch.is_grad_enabled()
        if update and self.queue is not None:
            # info_nce's deferred check has verified key (unless checks are off): no second sync here.
            self.queue._enqueue(key, checked=True)
        return loss

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, key_negatives={self.key_negatives}, "
                f"gather_distributed={self.gather_distributed}")
