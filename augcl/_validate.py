"""Input checks shared by the functional ops: every error names the argument at fault.

Shape, dtype and device checks are free (metadata only). Value checks (non-finite inputs, a non-positive
temperature tensor, an overflowing loss) need the device's answer, so they are folded into ONE deferred check
after the op: a single host sync per call on one boolean; only when it fails are the inputs looked at one by one
to name the culprit. The check is skipped under ``torch.compile`` tracing and can be switched off with
``augcl.set_checks(False)`` or ``AUGCL_CHECKS=0`` (benchmarks do).

Exception types, everywhere in augcl:

* ``TypeError``: an argument of the wrong kind (not a tensor, a non-floating tensor, a bool where a number is
  expected, ...);
* ``ValueError``: a wrong shape, device, empty batch, or value (temperature <= 0, a probability outside [0, 1],
  non-finite inputs, ...);
* :class:`IndexArgumentError`: an index argument (``pos_idx``, ``excl_idx``, ``partner``, ``mix_partner``, class
  labels) with a value out of range. It subclasses both ``IndexError`` and ``ValueError``, so either ``except``
  catches it. Out-of-range indices are always checked (they would read out of bounds in the kernels), even with
  ``set_checks(False)``; only ``torch.compile`` tracing skips them;
* ``FloatingPointError``: the loss overflowed although every input is finite.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
# FakeTensor is torch-internal; its module path has been the same since torch 2.0 (augcl's floor is 2.6).
from torch._subclasses.fake_tensor import FakeTensor

from augcl._numerics import FLOAT_DTYPES, IMAGE_DTYPES, acc_dtype

REDUCTIONS = ("mean", "sum", "none")

_checks_enabled = os.environ.get("AUGCL_CHECKS", "1").strip().lower() not in ("0", "false", "off", "no")


class IndexArgumentError(IndexError, ValueError):
    """An index argument holds a value out of range (see the module docstring): both an ``IndexError`` and a
    ``ValueError``."""


def set_checks(enabled: bool) -> None:
    """Turn the deferred value checks (non-finite inputs, temperature <= 0) on or off globally."""
    global _checks_enabled
    _checks_enabled = bool(enabled)


def checks_enabled() -> bool:
    return _checks_enabled


def inspectable(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the values of ``tensors`` can be read now: False while torch.compile traces, and for meta or
    fake tensors (shape inference, ``torch._subclasses.FakeTensorMode``), which have shapes but no values. Every
    check that reads values (a host sync) asks this first, so such calls run the shape checks only."""
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and (t.is_meta or _is_fake(t)):
            return False
    return True


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


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

    A float must be finite and > 0, and its inverse must be finite in the accumulation dtype (checked now: a
    temperature of 1e-39 is a positive float64 whose inverse overflows float32). A one-element tensor may require
    grad (a learnable temperature); its value is checked by the deferred value check.
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
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not math.isfinite(1.0 / t) or 1.0 / t > torch.finfo(acc).max:
        raise ValueError(f"temperature {temperature!r} is too small: 1 / temperature overflows {acc} (the logits "
                         f"are computed in {acc}); use a temperature >= {1.0 / torch.finfo(acc).max:.3g}")
    # torch.full, not torch.tensor: a fill kernel on the device, where torch.tensor(value, device="cuda") copies
    # from pageable host memory and waits for the stream (a host sync on every call).
    return torch.full((), 1.0 / t, dtype=acc, device=ref.device)


def check_temperature(temperature, name: str = "temperature") -> None:
    """Eager check of a temperature given at construction time (no device yet): a finite number > 0, or a
    one-element floating tensor (its sign is checked by the deferred value check of each call)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {temperature.dtype}")
        return
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {temperature}")


def check_number(name: str, v, *, lo: float, hi: float) -> float:
    """``v`` must be a real number (not a bool), finite, in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name} must be finite and in [{lo:g}, {hi:g}], got {v}")
    return v


def check_int(name: str, v, *, lo: int = 0) -> int:
    """``v`` must be an int (not a bool) >= lo."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v}")
    return v


def check_tensor_list(name: str, seq) -> list:
    """``seq`` must be a list / tuple (or other non-tensor iterable) of tensors; returns it as a list."""
    if isinstance(seq, torch.Tensor):
        raise TypeError(f"{name} must be a list of tensors, got a single Tensor of shape {tuple(seq.shape)} "
                        f"(wrap it in a list)")
    if seq is None or isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
        raise TypeError(f"{name} must be a list of tensors, got {type(seq).__name__}")
    return list(seq)


class PendingIndexCheck(NamedTuple):
    """An index argument whose range check waits for the deferred value check (see :func:`check_index`):
    ``bad`` is a 0-dim bool tensor on the device, ``idx`` the argument as given (for the message)."""

    name: str
    idx: torch.Tensor
    lo: int
    upper: int
    allow_pad: bool
    bad: torch.Tensor

    def error(self) -> IndexArgumentError:
        lo, hi = int(self.idx.min()), int(self.idx.max())
        return IndexArgumentError(f"{self.name} has values in [{lo}, {hi}] but must lie in [{self.lo}, {self.upper})"
                                  + (" (-1 = padding)" if self.allow_pad else ""))


def check_index(name: str, idx: torch.Tensor, rows: int, upper: int, device: torch.device,
                allow_pad: bool = True, deferred: Optional[List[PendingIndexCheck]] = None) -> torch.Tensor:
    """``idx`` [rows] or [rows, P] integer tensor with values in [-1 (padding), upper); returns [rows, P] int64.

    The range is checked now (one host sync), or, when a ``deferred`` list is given, by the deferred value check
    of the op's result (:func:`deferred_value_check`, no sync of its own): the check is appended to the list, and
    the returned indices have each out-of-range value replaced by ``-1`` (``0`` without padding), so that no
    kernel reads out of bounds before the deferred check raises the same :class:`IndexArgumentError`."""
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
    if idx.numel() and inspectable(idx):
        lo = -1 if allow_pad else 0
        bad = (idx < lo) | (idx >= upper)
        pending = PendingIndexCheck(name, idx, lo, upper, allow_pad, bad.any())
        if deferred is None:
            if bool(pending.bad):
                raise pending.error()
        else:
            deferred.append(pending)
            idx = torch.where(bad, torch.full((), lo, dtype=idx.dtype, device=idx.device), idx)
    return idx


def check_labels(name: str, labels, shape: Tuple[int, ...], device: torch.device, ref_name: str) -> torch.Tensor:
    """``labels``: an integer tensor (class ids, compared by equality) of ``shape`` -- one label per row of the
    tensor called ``ref_name`` -- on ``device``; returned as it is (any integer dtype)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class labels, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (class labels), got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        want = "[" + ", ".join(str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want} (one label per row of {ref_name}), got "
                         f"{list(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but {ref_name} is on {device}")
    return labels


def deferred_value_check(loss: torch.Tensor, scale: Optional[torch.Tensor],
                         named_inputs: Sequence[Tuple[str, Optional[torch.Tensor]]], *,
                         lse: Optional[torch.Tensor] = None,
                         what: str = "the contrastive loss",
                         hint: str = "the logits overflowed (a temperature this small, or unnormalised "
                                     "embeddings with huge norms and normalize=False?)",
                         index_checks: Sequence[PendingIndexCheck] = ()) -> None:
    """One sync: the loss is finite and the scale (1/temperature) is positive and finite.

    ``index_checks``: the range checks :func:`check_index` deferred to here. They are folded into the same sync
    and raised first; unlike the value checks they also run with ``set_checks(False)`` (then in a sync of their
    own), since out-of-range indices are always an error.

    ``loss`` is the value the caller returns (pass it after the reduction: per-row losses can all be finite while
    their sum overflows, e.g. at an absurdly small temperature). On failure, name the input at fault: a temperature
    tensor that is not > 0 or whose inverse overflows, then non-finite inputs, then rows with nothing to contrast
    (``lse`` [M], the rows' logsumexp: -inf where a row has no included column); if all of that is clean, the loss
    itself overflowed, which with fp32 accumulation means absurd magnitudes (``hint`` says which).

    ``scale`` may be None (no tensor temperature: only the result and the inputs are checked). ``what`` names the
    result in the overflow message."""
    if not inspectable(loss):
        return
    if not _checks_enabled:
        if index_checks and bool(torch.stack([c.bad for c in index_checks]).any()):
            raise next(c for c in index_checks if bool(c.bad)).error()
        return
    ok = finite_hint(loss)
    for c in index_checks:
        ok = ok & ~c.bad
    if scale is not None:
        s = scale.detach()
        ok = ok & torch.isfinite(s) & (s > 0)
    # Inputs are scanned too (O((M + Nc) * D) reads, small next to the O(M * Nc * D) loss): a -inf logit from
    # an Inf in a negative can leave the loss finite but wrong. Still one sync for the whole check; each tensor
    # by its sum (finite_hint), which can only err towards "look closer".
    for _, t in named_inputs:
        if t is not None:
            ok = ok & finite_hint(t)
    if bool(ok):
        return
    # Something may be wrong (or a sum merely overflowed): from here on every test is exact.
    loss_ok = all_finite(loss)
    for c in index_checks:  # an index out of range explains whatever else went wrong
        if bool(c.bad):
            raise c.error()
    if scale is not None:
        inv = float(s)  # 1 / temperature
        if math.isnan(inv):
            raise ValueError("temperature must be finite and > 0, got nan")
        if inv <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {1.0 / inv if inv else float('inf')!r}")
        if math.isinf(inv):
            tiny = 1.0 / torch.finfo(s.dtype).max
            raise ValueError(f"temperature must be finite and > 0, with 1 / temperature finite in {s.dtype} (the "
                             f"logits are computed in {s.dtype}); got 0 or a value below {tiny:.3g}")
    for name, t in named_inputs:
        if t is not None and not all_finite(t):
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    if lse is not None:
        empty = torch.isneginf(lse.detach())
        if bool(empty.any()):
            rows = empty.nonzero().flatten()
            raise ValueError(f"{int(rows.numel())} row(s) have nothing to contrast (no positive and no negative "
                             f"left after the exclusions; first: row {int(rows[0])}): check pos_idx, excl_idx and "
                             f"neg_start")
    if loss_ok:
        return  # only a sum overflowed: every input and the result are finite
    scale_note = "" if scale is None else f"; 1 / temperature = {float(s):.3g}"
    raise FloatingPointError(f"{what} is not finite although every input is: {hint}{scale_note}")


def reduce(loss_rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss_rows.mean()
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows


def check_pos_weight(pos_weight, pos_idx: torch.Tensor, ref_name: str, device: torch.device) -> torch.Tensor:
    """``pos_weight`` [M] or [M, P]: floating, the shape of ``pos_idx`` [M, P], on ``device`` (that of the
    tensor called ``ref_name``); returned as [M, P]."""
    if not isinstance(pos_weight, torch.Tensor) or not pos_weight.is_floating_point():
        got = pos_weight.dtype if isinstance(pos_weight, torch.Tensor) else type(pos_weight).__name__
        raise TypeError(f"pos_weight must be a floating tensor, got {got}")
    if pos_weight.dim() == 1:
        pos_weight = pos_weight.unsqueeze(1)
    if tuple(pos_weight.shape) != tuple(pos_idx.shape):
        raise ValueError(f"pos_weight must have the shape of pos_idx {tuple(pos_idx.shape)}, got {tuple(pos_weight.shape)}")
    if pos_weight.device != device:
        raise ValueError(f"pos_weight is on {pos_weight.device} but {ref_name} is on {device}")
    return pos_weight


# ------------------------------------------------------------------------------------------------ SwAV
def check_sinkhorn_args(epsilon, iterations, eps_name: str = "epsilon", it_name: str = "iterations") -> None:
    """Sinkhorn's ``epsilon`` (a finite float > 0) and ``iterations`` (an int >= 0), named as the caller's
    arguments."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"{eps_name} must be a float, got {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"{eps_name} must be finite and > 0, got {epsilon}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"{it_name} must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"{it_name} must be >= 0, got {iterations}")


def check_scores(name: str, t) -> None:
    """``t`` must be a non-empty floating [B, K] tensor of scores (samples x prototypes)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [B, K] (samples x prototypes), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def finite_hint(t: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor (no host sync): True proves every element of ``t`` finite; False means "look closer".

    The sum of the elements is finite only if each one is (a NaN or an Inf makes any IEEE sum NaN or Inf), so one
    fast reduction answers for the common clean case. ``torch.isfinite(t).all()`` costs about 18x the sum on the
    CPU (it runs several element-wise kernels and allocates a bool tensor of t's size: 144 us against 8 us for 133K
    floats), which was a third of a top-k attention call at L = 65. The sum can overflow with every element finite
    (|values| near the dtype's max), so False is only a hint: callers re-check with :func:`all_finite` before
    raising. fp16 / bf16 sum in fp32 (their max is small); non-floating tensors are always finite."""
    if not t.is_floating_point():
        return torch.ones((), dtype=torch.bool, device=t.device)
    t = t.detach()
    return torch.isfinite(t.sum(dtype=acc_dtype(t.dtype)))


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite (one host sync; exact): the sum's hint, else the element check."""
    if bool(finite_hint(t)):
        return True
    return bool(torch.isfinite(t.detach()).all())


def check_finite(name: str, t: torch.Tensor) -> None:
    """An eager non-finite check (one host sync), for ops without a result to fold it into (Sinkhorn's codes)."""
    if _checks_enabled and inspectable(t) and not all_finite(t):
        raise ValueError(f"{name} contains non-finite values (inf or nan)")


def check_float_temperature(temperature, name: str = "temperature") -> float:
    """A plain-number temperature (finite, > 0), for the ops that take no tensor temperature (SwAV)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {temperature}")
    return float(temperature)


# ---------------------------------------------------------------------------------------- Hallucinator
def check_param(name: str, t, shape: tuple, what: str) -> None:
    """A weight or bias: a floating tensor of exactly ``shape`` (``what`` spells the shape in the message)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} ({what}), got {list(t.shape)}")


def check_torch_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


# ----------------------------------------------------------------------------------------------- Un-Mix
UNMIX_PAIRINGS = ("reverse", "roll", "random")


def check_images(name: str, x) -> None:
    """``x`` must be a non-empty [B, C, H, W] tensor of a float dtype or uint8."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in IMAGE_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32, float64 or uint8, got {x.dtype}")
    if x.numel() == 0:
        # An empty batch is an error, as everywhere in augcl: nothing can be mixed and it is almost surely a bug.
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); B, C, H and W must all be >= 1")


def check_out_dtype(out_dtype) -> None:
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be None, float16, bfloat16, float32 or float64, got {out_dtype}")


def check_unmix_args(alpha, prob_mixup, per_sample, pairing) -> None:
    """Un-Mix's draw parameters: alpha (Beta(alpha, alpha), finite > 0), prob_mixup in [0, 1], per_sample a bool,
    pairing one of :data:`UNMIX_PAIRINGS`."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be finite and > 0 (the Beta(alpha, alpha) parameter), got {alpha}")
    if isinstance(prob_mixup, bool) or not isinstance(prob_mixup, (int, float)):
        raise TypeError(f"prob_mixup must be a number, got {type(prob_mixup).__name__}")
    if not (0.0 <= prob_mixup <= 1.0):
        raise ValueError(f"prob_mixup must lie in [0, 1], got {prob_mixup}")
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {type(per_sample).__name__}")
    if pairing not in UNMIX_PAIRINGS:
        raise ValueError(f"pairing must be one of {UNMIX_PAIRINGS}, got {pairing!r}")
