"""The ``sinkhorn`` op (SwAV's Sinkhorn-Knopp codes): registration and the dispatching entry point.

Layers of the op (one name everywhere):

* ``augcl/reference/sinkhorn.py``  pure PyTorch, log domain (oracle, fallback, and the multi-process path)
* ``kernels/sinkhorn.py``          Triton kernels -> ``augcl::sinkhorn_triton`` (triton_op)
* ``csrc/cpu/sinkhorn.cpp``        C++ CPU kernel -> ``augcl::sinkhorn`` (CPU key)
* this file: fake kernels, the dispatcher entry :func:`sinkhorn_codes`
* ``augcl/functional/swav.py``: ``sinkhorn`` (validated), ``swav_loss``

Codes carry no gradient (SwAV computes them under ``no_grad``), so there is no backward. The kernels are
single-process: with ``distributed=True`` and more than one rank, the per-prototype sums need an all-reduce
between iterations, which only the reference backend does.
"""

from typing import Optional

import torch

from augcl import _extension
from augcl._numerics import FLOAT_DTYPES, GPU_FLOAT_DTYPES, acc_dtype
from augcl.dispatch import Backend, register_op, triton_kernels
from augcl.distributed import world_info
from augcl.reference.sinkhorn import sinkhorn_reference


# --------------------------------------------------------------------------------------------- C++ op
def _fake_sinkhorn(scores, epsilon, iterations):
    return scores.new_empty(scores.shape, dtype=acc_dtype(scores.dtype))


if _extension.LOADED and hasattr(torch.ops.augcl, "sinkhorn"):
    torch.library.register_fake("augcl::sinkhorn")(_fake_sinkhorn)


# ------------------------------------------------------------------------------------------ Triton op
@torch.library.triton_op("augcl::sinkhorn_triton", mutates_args=())
def sinkhorn_triton(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Triton forward of ``sinkhorn`` (see augcl/reference/sinkhorn.py for the math); fp32 codes."""
    return triton_kernels("sinkhorn").sinkhorn_fwd(scores, epsilon, iterations)


# ------------------------------------------------------------------------------------------- backends
def _single_process(kernel: str):
    """The limit of a single-process kernel: ``distributed=True`` with more than one rank needs all-reduces
    between the iterations, which only the reference backend does."""
    def reason(scores, distributed=False) -> Optional[str]:
        # only a real ``distributed=True`` counts (generic probes such as augcl.info pass other inputs there)
        if distributed is True and world_info()[1] > 1:
            return (f"distributed=True with more than one rank needs all-reduces between the iterations; the "
                    f"{kernel} kernel is single-process (the reference backend does them)")
        return None

    return reason


SINKHORN = register_op(
    "sinkhorn",
    {
        "triton": Backend(("cuda", "cpu"), GPU_FLOAT_DTYPES, triton_module="sinkhorn", triton_inputs=1,
                          limits=_single_process("Triton")),
        "cpu": Backend(("cpu",), FLOAT_DTYPES, cpp_op="sinkhorn", limits=_single_process("C++ CPU")),
        "reference": Backend(None, FLOAT_DTYPES),
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
