"""Input checks shared by the functional ops: every error names the argument at fault.

Shape, dtype and device checks are free (metadata only). Value checks (non-finite inputs, a non-positive
temperature tensor, an overflowing loss) need the device's answer, so they are folded into ONE deferred check
after the op: a single host sync per call on one boolean; only when it fails are the inputs looked at one by one
to name the culprit. The check is skipped under ``torch.compile`` tracing and can be switched off with
``augcl.set_checks(False)`` or ``AUGCL_CHECKS=0`` (benchmarks do).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

from augcl.reference.contrastive import acc_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")

_checks_enabled = os.environ.get("AUGCL_CHECKS", "1").strip().lower() not in ("0", "false", "off", "no")


def set_checks(enabled: bool) -> None:
    """Turn the deferred value checks (non-finite inputs, temperature <= 0) on or off globally."""
    global _checks_enabled
    _checks_enabled = bool(enabled)


def checks_enabled() -> bool:
    return _checks_enabled


def check_matrix(name: str, t, *, rows: Optional[int] = None, dim: Optional[int] = None) -> None:
    """``t`` must be a non-empty floating 2-D tensor [N, D] (with N == rows and D == dim when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, D], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: a batch of 0 rows (shape {tuple(t.shape)})")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 features (shape {tuple(t.shape)})")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} features (the embedding width), got shape {tuple(t.shape)}")


def check_same_device(named: Iterable[Tuple[str, torch.Tensor]]) -> None:
    named = list(named)
    device = named[0][1].device
    for name, t in named[1:]:
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but {named[0][0]} is on {device}; move them to one device")


def common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """Widest floating dtype among ``tensors`` (a bf16 query under autocast meets an fp32 queue buffer)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def scale_from_temperature(temperature: Union[float, torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
    """``1 / temperature`` as a 0-dim tensor on ``ref``'s device in the accumulation dtype.

    A float must be finite and > 0 (checked now). A one-element tensor may require grad (a learnable
    temperature); its sign is checked by the deferred value check.
    """
    acc = acc_dtype(ref.dtype)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a number or a one-element tensor, got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"temperature must be a floating tensor, got {temperature.dtype}")
        if temperature.device != ref.device:
            raise ValueError(f"temperature is on {temperature.device} but the embeddings are on {ref.device}")
        return 1.0 / temperature.reshape(()).to(acc)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number or a tensor, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return torch.tensor(1.0 / t, dtype=acc, device=ref.device)


def check_index(name: str, idx: torch.Tensor, rows: int, upper: int, device: torch.device,
                allow_pad: bool = True) -> torch.Tensor:
    """``idx`` [rows] or [rows, P] integer tensor with values in [-1 (padding), upper); returns [rows, P] int64."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of indices, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {idx.dtype}")
    if idx.dim() == 1:
        idx = idx.unsqueeze(1)
    if idx.dim() != 2 or idx.shape[0] != rows:
        raise ValueError(f"{name} must have shape [{rows}] or [{rows}, P], got {tuple(idx.shape)}")
    if idx.device != device:
        raise ValueError(f"{name} is on {idx.device} but the embeddings are on {device}")
    idx = idx.to(torch.long).contiguous()
    if idx.numel() and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < (-1 if allow_pad else 0) or hi >= upper:
            raise IndexError(f"{name} has values in [{lo}, {hi}] but must lie in [{-1 if allow_pad else 0}, {upper})"
                             + (" (-1 = padding)" if allow_pad else ""))
    return idx


def deferred_value_check(loss_rows: torch.Tensor, scale: torch.Tensor,
                         named_inputs: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> None:
    """One sync: the per-row losses are finite and the scale (1/temperature) is positive and finite.

    On failure, name the input at fault: a non-positive temperature, then non-finite inputs; if the inputs are
    clean the loss itself overflowed, which with our fp32 accumulation means absurd magnitudes."""
    if not _checks_enabled or torch.compiler.is_compiling():
        return
    s = scale.detach()
    ok = torch.isfinite(loss_rows.detach()).all() & torch.isfinite(s) & (s > 0)
    # Inputs are scanned too (O((M + Nc) * D) reads, small next to the O(M * Nc * D) loss): a -inf logit from
    # an Inf in a negative can leave the loss finite but wrong. Still one sync for the whole check.
    for _, t in named_inputs:
        if t is not None:
            ok = ok & torch.isfinite(t.detach()).all()
    if bool(ok):
        return
    if not (bool(torch.isfinite(s)) and bool(s > 0)):
        raise ValueError(f"temperature must be finite and > 0, got {float(1.0 / s)}")
    for name, t in named_inputs:
        if t is not None and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    raise FloatingPointError(
        "the contrastive loss is not finite although every input is: the logits overflowed "
        "(unnormalised embeddings with huge norms and normalize=False?)"
    )


def reduce(loss_rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss_rows.mean()
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows
