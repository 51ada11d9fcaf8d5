"""``python -m augcl.info`` probes topk_attention with q, k, v [B, H, L, Dh] (its backends judge 4-D inputs: the
triton backend's length limits apply only to them), so its verdicts are the ones a real call gets."""
import torch

from augcl import info
from augcl.dispatch import REGISTRY


def test_info_probes_topk_attention_with_4d_qkv():
    inputs = info._probe_inputs("cpu", torch.float32, "topk_attention")
    assert len(inputs) == 3 and all(t.dim() == 4 and t.shape == inputs[0].shape for t in inputs)
    real = torch.zeros(2, 3, 5, 8)
    assert REGISTRY["topk_attention"].reasons(*inputs) == REGISTRY["topk_attention"].reasons(real, real, real)
    assert "op topk_attention:" in info.report()
