"""The one tolerance rule of augcl's numeric tests, after flash-attention's (Dao-AILab/flash-attention,
tests/test_flash_attn.py: "FlashAttention's numerical error is at most twice the numerical error of a Pytorch
implementation").

A result ``out`` of an augcl kernel or backend, computed from inputs held at precision p, is compared with

* ``ref``: the same quantity in float64, computed from the *same* (already rounded) inputs converted exactly to
  float64, so the inputs' own rounding is no part of anybody's error; and
* ``eager``: the same computation in plain PyTorch at precision p: the package's reference implementation called
  with the precision-p inputs (it accumulates fp16 / bf16 in fp32, as the kernels promise to), or, where a kernel
  rounds intermediates to p on purpose (tensor-core products of fp16 operands), the eager formula carried out
  in p;

and must satisfy, for the output and for every gradient::

    err(out) <= K * err(eager) + floor,    err(x) = max_i |x_i - ref_i|,
    floor = FLOOR_ULPS * eps(acc) * scale + eps(out.dtype) * max_i |ref_i|,    scale = max_i |ref_i| by default

``K = 2``: flash-attention's factor for outputs and gradients. A kernel may sum in another order, block its
reductions or fuse an FMA, which costs about as much rounding again as the eager computation makes, not more; a
factor of 2 still catches a lost term, a wrong index or a mistimed rounding, which cost orders of magnitude.

The floor bounds what is left when the eager computation happens to be (nearly) exact: in float64, where the eager
computation *is* the reference (err(eager) = 0), or for a result every eager rounding lands on exactly. Its terms:

* ``FLOOR_ULPS = 64`` units of roundoff of the accumulation (``acc``: float64 for float64 results, float32 for all
  others, which every kernel accumulates in at least): a reduction over n terms summed in another order differs by
  O(sqrt(n)) units of its largest partial sums, so 64 ~ sqrt(4096) covers reductions of thousands of terms; it also
  covers the vectorised CPU kernels' exp (ATen's exp_u20, up to 20 units of roundoff per term). For float32
  results it is 7.6e-6 of the magnitude: below the 1e-5 the tests used to hand-pick and far below any real error.
  Where a result is the difference of larger terms (a loss ``lse - positive logit`` that cancels to ~0, a sum of
  signed terms), the test passes the magnitude of those terms as ``scale``: the roundoff is relative to them.
* one unit of roundoff of the output dtype at the result's magnitude: a correctly rounded eager result is off by at
  most half a unit, and a kernel whose float32 accumulator differs from the eager one by a hair may round to the
  neighbouring fp16 / bf16 value, a full unit (flash-attention's floor is likewise about two units at the
  output's precision). Negligible next to the first term for float32 / float64 results.

``relative=True`` measures errors elementwise relative to ``|ref|`` (``err(x) = max_i |x_i - ref_i| / max(|ref_i|,
tiny)``, the floor's magnitude and default scale 1) for results whose entries span many orders of magnitude, where an absolute
max-error would not see the small entries (Sinkhorn's codes: the relative error of a code is the absolute error of
its logarithm, which is what the log-domain kernels control). ``tiny`` is by default the smallest normal number of
the output's dtype: an entry that underflows there (to a subnormal or 0) counts by its absolute error in units of
``tiny``, not as a relative error of 1. A test passes a larger ``tiny`` where a kernel flushes results near the
underflow threshold on purpose, with the reason.

Non-finite entries: wherever ``ref`` is +-inf or NaN, ``out`` must be the same (the same infinities, NaN where
NaN); the errors are measured over the finite entries. ``eager`` must be finite wherever ``ref`` is: an eager
computation that overflows is no yardstick (the bound would be infinite and the test could not fail), so the
helper refuses it and the test has to pick a stable eager form (the log-domain reference, say).

On failure the assertion message lists the worst elements: index, out, ref, eager.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

#: flash-attention's factor: the kernel's error may be at most K times the eager computation's.
K = 2.0
#: units of roundoff of the accumulation (float32, or float64 for float64 results) in the floor.
FLOOR_ULPS = 64
#: how many of the worst elements a failure lists.
SHOW_WORST = 5
#: ``tiny`` for relative comparisons of fp32 results of the vectorised CPU kernels: their exp (ATen's exp_u20)
#: returns 0 for results below ~sqrt(2) * FLT_MIN (its 2^n scale factor underflows there), an absolute error below
#: 2 * FLT_MIN, which the floor (FLOOR_ULPS units of fp32 roundoff, relative) covers for results of this size
#: (~3e-33) and up; below it results count by their absolute error in units of it.
EXP_U20_TINY = 2 * torch.finfo(torch.float32).tiny / (FLOOR_ULPS * torch.finfo(torch.float32).eps)

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


def _floor_units(dtype: torch.dtype) -> tuple:
    """(unit roundoff of the accumulation, unit roundoff of the output) for results of ``dtype``; integer results
    (uint8 images) are rounded results with no floor beyond K * err(eager)."""
    if not dtype.is_floating_point:
        return 0.0, 0.0
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.finfo(acc).eps, torch.finfo(dtype).eps


def _errors(x: torch.Tensor, ref: torch.Tensor, finite: torch.Tensor, tiny: Optional[float]) -> torch.Tensor:
    """|x - ref| over the finite entries of ref (0 elsewhere), divided by max(|ref|, tiny) when ``tiny`` is given."""
    err = (x.double() - ref).abs()
    if tiny is not None:
        err = err / ref.abs().clamp_min(tiny)
    return torch.where(finite, err, torch.zeros_like(err))


def _worst(out, ref, eager, err_out, n: int) -> str:
    flat = err_out.flatten()
    n = min(n, flat.numel())
    if n == 0:
        return ""
    idx = torch.topk(flat, n).indices
    lines = []
    for i in idx.tolist():
        pos = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), out.shape)) if out.dim() else ()
        lines.append(f"    at {pos}: out {out.double().flatten()[i].item():.9g}, ref {ref.flatten()[i].item():.9g}, "
                     f"eager {eager.double().flatten()[i].item():.9g} (error {flat[i].item():.3g})")
    return "\n".join(lines)


def error_bound(out: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, *, k: float = K,
                relative: bool = False, scale: Optional[float] = None, tiny: Optional[float] = None,
                floor: Optional[float] = None) -> tuple:
    """``(err(out), bound, elementwise errors of out, err(eager))`` of the rule for one tensor (see the module
    docstring); asserts the non-finite pattern and a finite eager as described there. All three tensors must have
    the same shape."""
    out, eager = out.detach().cpu(), eager.detach().cpu()
    ref = ref.detach().cpu().double()
    assert out.shape == ref.shape == eager.shape, (out.shape, ref.shape, eager.shape)
    finite = torch.isfinite(ref)
    out64 = out.double()
    if not bool(finite.all()):
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(out64), nan), "out is NaN where ref is not, or the other way round"
        inf = ~finite & ~nan
        assert torch.equal(out64[inf], ref[inf]), "out's infinities differ from ref's"
    assert bool(torch.isfinite(out64[finite]).all()), "out is not finite where ref is"
    assert bool(torch.isfinite(eager.double()[finite]).all()), \
        "eager is not finite where ref is: an overflowing eager computation is no yardstick, pick a stable one"
    if not relative:
        tiny = None
    elif tiny is None:
        tiny = torch.finfo(out.dtype if out.dtype.is_floating_point else torch.float32).tiny
    err_out = _errors(out64, ref, finite, tiny)
    err_eager = _errors(eager.double(), ref, finite, tiny)
    e_out = err_out.max().item() if err_out.numel() else 0.0
    e_eager = err_eager.max().item() if err_eager.numel() else 0.0
    magnitude = 1.0 if relative else (ref[finite].abs().max().item() if bool(finite.any()) else 0.0)
    if floor is not None:  # a caller's own relative floor (the peer-parity tests: tighter than the default)
        return e_out, k * e_eager + floor * (magnitude if scale is None else scale), err_out, e_eager
    eps_acc, eps_out = _floor_units(out.dtype)
    bound = k * e_eager + FLOOR_ULPS * eps_acc * (magnitude if scale is None else scale) + eps_out * magnitude
    return e_out, bound, err_out, e_eager


def assert_close_to_reference(out: Tensors, ref: Tensors, eager: Optional[Tensors],
                              name: Union[str, Sequence[str]] = "out",
                              *, k: float = K, relative: bool = False,
                              scale: Union[None, float, Sequence[Optional[float]]] = None,
                              tiny: Optional[float] = None, floor: Optional[float] = None) -> None:
    """Assert the rule for one tensor or, given sequences, for each of them (an output and its gradients).

    Args:
        out: augcl's result(s) at precision p (any dtype, any device).
        ref: the float64 result(s) from the same rounded inputs.
        eager: the plain-PyTorch result(s) at precision p; None where p is float64, the eager computation then
            being the reference itself (the bound is the floor).
        name: what each tensor is ("loss", "grad_anchors", ...), for the message.
        k: the factor K; a test passes its own only with a reason written next to it.
        relative: measure elementwise relative errors (see the module docstring); ``tiny``: where they become
            absolute (default: the smallest normal number of the output's dtype).
        scale: the magnitude the floor is relative to (default max |ref|; see the module docstring), one for all
            tensors or one per tensor.
        floor: replaces the default floor by ``floor * magnitude`` (a caller with a reason for another floor).
    """
    if isinstance(out, torch.Tensor):
        out, ref, eager, name = [out], [ref], [eager], [name]
    elif isinstance(name, str):
        name = [f"{name}[{i}]" for i in range(len(out))]
    if eager is None:
        eager = ref
    eager = [r if e is None else e for e, r in zip(eager, ref)]
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * len(out)
    assert len(out) == len(ref) == len(eager) == len(name), (len(out), len(ref), len(eager), len(name))
    for o, r, e, n, sc in zip(out, ref, eager, name, scales):
        e_out, bound, err_out, e_eager = error_bound(o, r, e, k=k, relative=relative, scale=sc, tiny=tiny,
                                                     floor=floor)
        if e_out > bound:
            kind = "relative " if relative else ""
            raise AssertionError(
                f"{n}: max {kind}error {e_out:.3g} > bound {bound:.3g} = {k:g} x eager's {e_eager:.3g} + floor "
                f"{bound - k * e_eager:.3g} ({o.dtype}, shape {tuple(o.shape)}); worst elements:\n"
                + _worst(o.detach().cpu(), r.detach().cpu().double(), e.detach().cpu(), err_out, SHOW_WORST))


def assert_close_exp(out: torch.Tensor, ref: torch.Tensor, eager: Optional[torch.Tensor], name: str = "out", *,
                     log_magnitude: float) -> None:
    """The rule for results of the form exp(x) whose entries span many orders of magnitude (Sinkhorn's codes):
    elementwise relative errors, i.e. absolute errors of x.

    fp32 results: ``tiny = EXP_U20_TINY`` (the vectorised CPU kernels flush results near FLT_MIN), floor relative.
    float64 results: the eager computation is then float64 as well, as precise as the reference, so its error only
    shows how differently the two round, not float64's roundoff at this size; the floor (the bound there) is taken
    at the magnitude of x, ``log_magnitude`` (max |x|: |S| / eps + log(B K) for Sinkhorn), since that is what every
    rounding of x is relative to.
    """
    fp32 = out.dtype == torch.float32
    assert_close_to_reference(out, ref, eager, name, relative=True, tiny=EXP_U20_TINY if fp32 else None,
                              scale=log_magnitude if out.dtype == torch.float64 else None)


def float64_inputs(*tensors: Optional[torch.Tensor], requires_grad: Optional[bool] = None) -> list:
    """The same values in float64 (exact), detached, as new leaves that require grad where the originals do (or
    as ``requires_grad`` says). Non-floating tensors and None are passed through."""
    out = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            out.append(t)
        else:
            rg = t.requires_grad if requires_grad is None else requires_grad
            out.append(t.detach().double().requires_grad_(rg))
    return out
