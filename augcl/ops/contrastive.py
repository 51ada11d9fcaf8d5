"""Registration of the ``contrastive`` op with torch.library, and its backend-dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/contrastive.py``  pure PyTorch (oracle, fallback)
* ``kernels/contrastive.py``          Triton kernels  -> ``augcl::contrastive_lse_triton`` (triton_op)
* ``csrc/cpu/contrastive.cpp``        C++ CPU kernel  -> ``augcl::contrastive_lse`` (CPU key)
* ``csrc/cuda/contrastive.cu``        CUDA C++ kernel -> ``augcl::contrastive_lse`` (CUDA key)
* this file: fake kernels, autograd, the dispatcher entry :func:`contrastive_loss_rows`
* ``augcl/functional/contrastive.py``: ``nt_xent``, ``info_nce``, ``soft_info_nce``, ``contrastive_loss``

Only the O(M * Nc) part — the masked row logsumexp and its backward — is a kernel. The positive term
``sum_p w_ip * S[i, pos_ip]`` is O(M * P * D): a gather and a row dot in plain torch, shared by every backend,
differentiated by autograd.
"""

from typing import Optional, Tuple

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES, acc_dtype
from augcl.dispatch import Backend, first_order_only, register_cpp_autograd, register_op, switch, triton_kernels
from augcl.reference.contrastive import contrastive_lse_backward_reference, contrastive_lse_reference


# --------------------------------------------------------------------------------------------- C++ ops
def _fake_lse(anchors, candidates, scale, pos_idx, excl_idx, neg_start):
    return anchors.new_empty((anchors.shape[0],), dtype=acc_dtype(anchors.dtype))


def _fake_lse_backward(grad_lse, anchors, candidates, scale, lse, pos_idx, excl_idx, neg_start):
    return torch.empty_like(anchors), torch.empty_like(candidates), scale.new_empty(())


def _setup_context(ctx, inputs, output):
    anchors, candidates, scale, pos_idx, excl_idx, neg_start = inputs
    ctx.save_for_backward(anchors, candidates, scale, output, pos_idx, excl_idx)
    ctx.neg_start = neg_start


def _make_backward(backward_op):
    def _backward(ctx, grad_lse):
        anchors, candidates, scale, lse, pos_idx, excl_idx = ctx.saved_tensors
        grad_lse = grad_lse.to(lse.dtype).contiguous()
        da, dc, ds = backward_op(grad_lse, anchors, candidates, scale, lse, pos_idx, excl_idx, ctx.neg_start)
        return da, dc, ds, None, None, None

    return first_order_only("contrastive", _backward)


if _extension.LOADED:
    register_cpp_autograd("contrastive_lse", _fake_lse, _fake_lse_backward, _make_backward, _setup_context)


# ------------------------------------------------------------------------------------------ Triton ops
@torch.library.triton_op("augcl::contrastive_lse_triton", mutates_args=())
def contrastive_lse_triton(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
) -> torch.Tensor:
    """Triton forward of ``contrastive_lse`` (see augcl/reference/contrastive.py for the math)."""
    return triton_kernels("contrastive").contrastive_lse_fwd(anchors, candidates, scale, pos_idx, excl_idx, neg_start)


@torch.library.triton_op("augcl::contrastive_lse_triton_backward", mutates_args=())
def contrastive_lse_triton_backward(
    grad_lse: torch.Tensor,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    lse: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward of ``contrastive_lse``: (grad_anchors, grad_candidates, grad_scale)."""
    return triton_kernels("contrastive").contrastive_lse_bwd(grad_lse, anchors, candidates, scale, lse, pos_idx,
                                                             excl_idx, neg_start)


contrastive_lse_triton.register_autograd(
    _make_backward(lambda *args: contrastive_lse_triton_backward(*args)), setup_context=_setup_context
)


# -------------------------------------------------------------------------------- reference backend
class _ContrastiveLSEReference(torch.autograd.Function):
    """The reference as a backend: explicit backward, so memory stays O(chunk * Nc) like the kernels'."""

    @staticmethod
    def forward(anchors, candidates, scale, pos_idx, excl_idx, neg_start):
        return contrastive_lse_reference(anchors, candidates, scale, pos_idx, excl_idx, neg_start)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_lse):
        return _make_backward(contrastive_lse_backward_reference)(ctx, grad_lse)


# ------------------------------------------------------------------------------------------- backends
# Routing candidates for automatic selection on CUDA, timed by the first GPU run (benchmarks/gpu_candidates.py):
# AUGCL_CONTRASTIVE_ROUTE, a comma list of
#   "fp32-cuda":    fp32 inputs to the cuda backend (cuBLAS GEMMs, TF32 or exact fp32 as torch says) instead of the
#                   Triton kernels' exact-fp32 FMA dots (no tensor cores unless TF32 is allowed);
#   "large-d-cuda": D >= 256 to the cuda backend (chunked cuBLAS GEMMs) instead of the Triton backward, which
#                   recomputes the logits once per output chunk of D.
# Unset: the default order (triton first). A forced backend (backend=, use_backend, AUGCL_BACKEND) wins.
ROUTE_ENV = "AUGCL_CONTRASTIVE_ROUTE"
ROUTES = ("fp32-cuda", "large-d-cuda")


def _prefer(device_type: str, anchors: torch.Tensor, candidates: torch.Tensor) -> Optional[str]:
    if device_type != "cuda":
        return None
    routes = switch(ROUTE_ENV)
    if not routes:
        return None
    chosen = [r.strip() for r in routes.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in ROUTES]
    if unknown:
        raise ValueError(f"{ROUTE_ENV}: unknown routes {unknown}; expected a comma list of {ROUTES}")
    if "fp32-cuda" in chosen and anchors.dtype == torch.float32:
        return "cuda"
    if "large-d-cuda" in chosen and anchors.shape[1] >= 256:
        return "cuda"
    return None


CONTRASTIVE = register_op(
    "contrastive",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES, triton_module="contrastive"),
        "cuda": Backend(("cuda",), FLOAT_DTYPES, cpp_op="contrastive_lse"),
        "cpu": Backend(("cpu",), FLOAT_DTYPES, cpp_op="contrastive_lse"),
        "reference": Backend(None, FLOAT_DTYPES),
    },
    prefer=_prefer,
)


def contrastive_lse(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Masked row logsumexp ``lse [M]`` on the selected backend (differentiable w.r.t. anchors, candidates,
    scale). Inputs must already be validated (augcl.functional does it)."""
    name = CONTRASTIVE.select(anchors.device.type, anchors, candidates, backend=backend)
    if candidates is anchors:
        # SimCLR passes Z as both; a view gives autograd.Function / Dynamo two distinct inputs (Dynamo refuses
        # the same tensor twice) at no cost. Autograd still sums both gradients into Z.
        candidates = candidates.view_as(candidates)
    args = (anchors, candidates, scale, pos_idx, excl_idx, int(neg_start))
    if name == "triton":
        return contrastive_lse_triton(*args)
    if name in ("cpu", "cuda"):
        return torch.ops.augcl.contrastive_lse(*args)
    return _ContrastiveLSEReference.apply(*args)


def contrastive_loss_rows(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    pos_idx: torch.Tensor,
    pos_weight: torch.Tensor,
    excl_idx: torch.Tensor,
    neg_start: int,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row soft-target InfoNCE ``(loss [M], lse [M])`` in the accumulation dtype.

    ``loss_i = (sum_p w_ip) * lse_i - sum_p w_ip * scale * <a_i, c_{pos_ip}>`` (padding positives -1 count 0).
    """
    acc = acc_dtype(anchors.dtype)
    lse = contrastive_lse(anchors, candidates, scale, pos_idx, excl_idx, neg_start, backend)
    valid = pos_idx >= 0
    w = torch.where(valid, pos_weight.to(acc), torch.zeros((), dtype=acc, device=anchors.device))
    pos_dot = positive_dots(anchors, candidates, pos_idx, acc)
    loss = w.sum(1) * lse - scale.to(acc) * (w * pos_dot).sum(1)
    return loss, lse


def positive_dots(anchors: torch.Tensor, candidates: torch.Tensor, pos_idx: torch.Tensor,
                  acc: torch.dtype) -> torch.Tensor:
    """``[M, P]`` dots ``<a_i, c_{pos_idx[i, p]}>`` in ``acc``; a -1 pad reads row 0 (callers zero its weight).

    The rows are gathered with ``index_select``, whose backward is an ``index_add``: advanced indexing
    (``candidates[idx]``) backpropagates through an accumulating ``index_put``, 5-10x slower on a CPU (measured
    2026-12-01, 2 threads: 1.8 vs 0.18 ms for [1024, 512] fp32, 9.1 vs 1.7 ms for [16384, 128]), which was 5% of
    a whole CPU NT-Xent step at 2N = 1024, D = 512. Both are deterministic under
    ``torch.use_deterministic_algorithms``."""
    idx = pos_idx.clamp(min=0)
    a = anchors.to(acc)
    if idx.shape[1] == 1:
        # The common single-positive case: a row-wise dot with one gathered row, no [M, P, D] buffer.
        return (a * candidates.index_select(0, idx[:, 0]).to(acc)).sum(1, keepdim=True)
    rows = candidates.index_select(0, idx.reshape(-1)).to(acc)
    return torch.einsum("md,mpd->mp", a, rows.view(idx.shape[0], idx.shape[1], candidates.shape[1]))

