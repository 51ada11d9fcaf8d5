"""``python -m augcl.info``: versions, what was compiled, every backend's availability with its reason, and which
peer libraries are installed and patchable by ``augcl.patch()``."""
from __future__ import annotations

import os
import platform
import sys

import torch

import augcl
from augcl import _extension
from augcl.dispatch import BACKENDS, REGISTRY, requested_backend
from augcl.patch import peer_status


def _probe_inputs(device: str, dtype: torch.dtype, op_name: str = ""):
    """Small inputs of ``dtype`` for the backends' ``reasons``, as each op's dispatch sees them: soft_ce's second
    operand is its targets, which live in the accumulation dtype (fp32, or fp64 with fp64 scores), whatever the
    scores'; mix_images takes images [B, C, H, W] and the output dtype; sinkhorn the scores and ``distributed``;
    hallucinate its x only; topk_attention q, k, v [B, H, L, Dh] (its backends' limits are on 4-D inputs)."""
    if device == "cuda" and not torch.cuda.is_available():
        return None
    a = torch.zeros((4, 8), device=device, dtype=dtype)
    if op_name == "soft_ce":
        return a, torch.zeros((4, 8), device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    if op_name == "mix_images":
        return torch.zeros((2, 3, 4, 4), device=device, dtype=dtype), dtype
    if op_name == "sinkhorn":
        return a, False
    if op_name == "hallucinate":
        return (a,)
    if op_name == "topk_attention":
        qkv = torch.zeros((1, 1, 4, 8), device=device, dtype=dtype)
        return qkv, qkv, qkv
    return a, a


def report() -> str:
    lines = [
        f"augcl {augcl.__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()})",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()}")
    try:
        import triton

        lines.append(f"triton {triton.__version__} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r})")
    except ImportError as exc:
        lines.append(f"triton: not importable ({exc})")
    if _extension.LOADED:
        lines.append(f"augcl._C: loaded from {_extension.LIBRARY_PATH}")
        lines.append(f"  compiled with CUDA kernels: {_extension.WITH_CUDA}; OpenMP: {_extension.WITH_OPENMP}")
    else:
        lines.append(f"augcl._C: NOT loaded: {_extension.LOAD_ERROR}")
    lines.append(f"requested backend (AUGCL_BACKEND / context): {requested_backend()}")
    for op_name, op in sorted(REGISTRY.items()):
        lines.append(f"op {op_name}:")
        for device in ("cpu", "cuda"):
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                inputs = _probe_inputs(device, dtype, op_name)
                if inputs is None:
                    lines.append(f"  {device:4s} {str(dtype):14s}: no {device} device here")
                    continue
                reasons = op.reasons(*inputs)
                try:
                    chosen = op.select(device, *inputs)
                except Exception as exc:  # report, never fail
                    chosen = f"none ({exc})"
                lines.append(f"  {device:4s} {str(dtype):14s}: automatic choice -> {chosen}")
                for name in BACKENDS:
                    verdict = "can run" if reasons[name] is None else f"declines: {reasons[name]}"
                    lines.append(f"      {name:9s} {verdict}")
    lines.append("peers (augcl.patch()):")
    lines.extend("  " + line for line in peer_status())
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
