"""How the reference backends hand back their outputs (shared by the reference files)."""
from typing import Optional

import torch


def as_output(t: torch.Tensor, dtype: torch.dtype, memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
    """``t.to(dtype).contiguous(memory_format=...)``, but with no call at all where it would be a no-op.

    Why: the reference backends run inside ``torch.autograd.Function.forward``, and torch.compile in torch <= 2.11
    loses the incoming gradient of such a Function when an output is a no-op ``.to`` / ``.contiguous`` alias of an
    intermediate: its backward graph gets a zero tangent, and the gradients are silently wrong (found on torch
    2.11 by tests/test_hallucinator.py::test_torch_compile_fullgraph and test_unmix.py's compile test; fine in
    2.14). Returning the intermediate itself avoids the alias.
    """
    if t.dtype != dtype:
        t = t.to(dtype)
    if memory_format is not None and not t.is_contiguous(memory_format=memory_format):
        t = t.contiguous(memory_format=memory_format)
    return t
