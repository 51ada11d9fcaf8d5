"""The ``sinkhorn`` op (SwAV's Sinkhorn-Knopp codes, SPEC §4): registration and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/sinkhorn.py``  pure PyTorch, log domain (oracle, fallback, and the multi-process path)
* ``kernels/sinkhorn.py``          Triton kernels -> ``augcl::sinkhorn_triton`` (triton_op)
* ``csrc/cpu/sinkhorn.cpp``        C++ CPU kernel -> ``augcl::sinkhorn`` (CPU key)
* this file: fake kernels, the dispatcher entry :func:`sinkhorn_codes`
* ``augcl/functional.py``: ``sinkhorn`` (validated), ``swav_loss``

Codes carry no gradient (SwAV computes them under ``no_grad``), so there is no backward. The kernels are
single-process: with ``distributed=True`` and more than one rank, the per-prototype sums need an all-reduce
between iterations, which only the reference backend does.
"""

from typing import Optional

import torch

from augcl import _extension
from augcl.dispatch import register_op, triton_import_reason, triton_kernels
from augcl.distributed import world_info
from augcl.reference.sinkhorn import sinkhorn_codes_dtype, sinkhorn_reference

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------- C++ op
def _fake_sinkhorn(scores, epsilon, iterations):
    return scores.new_empty(scores.shape, dtype=sinkhorn_codes_dtype(scores.dtype))


if _extension.LOADED and hasattr(torch.ops.augcl, "sinkhorn"):
    torch.library.register_fake("augcl::sinkhorn")(_fake_sinkhorn)


# ------------------------------------------------------------------------------------------ Triton op
@torch.library.triton_op("augcl::sinkhorn_triton", mutates_args=())
def sinkhorn_triton(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Triton forward of ``sinkhorn`` (see augcl/reference/sinkhorn.py for the math); fp32 codes."""
    return triton_kernels("sinkhorn").sinkhorn_fwd(scores, epsilon, iterations)


# ------------------------------------------------------------------------------------ backend checks
def _dtype_reason(scores) -> Optional[str]:
    if scores.dtype not in _FLOAT_DTYPES:
        return f"dtype {scores.dtype} is not supported"
    return None


def _multi_rank(distributed) -> bool:
    # Only a real ``distributed=True`` counts (generic probes such as augcl.info pass other inputs there).
    return distributed is True and world_info()[1] > 1


_DISTRIBUTED_REASON = ("distributed=True with more than one rank needs all-reduces between the iterations; "
                       "the {} kernel is single-process (the reference backend does them)")


def _supports_reference(scores, *_):
    return _dtype_reason(scores)


def _supports_cpu(scores, distributed=False, *_):
    reason = _extension.kernel_reason("sinkhorn", "cpu", scores)
    if reason is not None:
        return reason
    if _multi_rank(distributed):
        return _DISTRIBUTED_REASON.format("C++ CPU")
    return _dtype_reason(scores)


def _supports_triton(scores, distributed=False, *_):
    reason = triton_import_reason("sinkhorn")
    if reason is not None:
        return reason
    module = triton_kernels("sinkhorn")
    if _multi_rank(distributed):
        return _DISTRIBUTED_REASON.format("Triton")
    return module.supports(scores)


SINKHORN = register_op(
    "sinkhorn",
    {
        "triton": _supports_triton,
        "cpu": _supports_cpu,
        "reference": _supports_reference,
    },
)


@torch.no_grad()
def sinkhorn_codes(
    scores: torch.Tensor,
    epsilon: float,
    iterations: int,
    distributed: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Codes [B, K] (fp32; fp64 for fp64 scores) on the selected backend, without gradient. Inputs must already
    be validated (augcl.functional.sinkhorn does it)."""
    scores = scores.detach()
    name = SINKHORN.select(scores.device.type, scores, distributed, backend=backend)
    if name == "triton":
        return sinkhorn_triton(scores, float(epsilon), int(iterations))
    if name == "cpu":
        return torch.ops.augcl.sinkhorn(scores, float(epsilon), int(iterations))
    return sinkhorn_reference(scores, float(epsilon), int(iterations), distributed=distributed)
