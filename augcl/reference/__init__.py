"""Pure-PyTorch references: the oracle of the tests, the baseline of the benchmarks, the fallback backend."""
from augcl.reference.contrastive import (
    contrastive_included_mask,
    contrastive_lse_backward_reference,
    contrastive_lse_reference,
    contrastive_loss_reference,
)

__all__ = [
    "contrastive_included_mask",
    "contrastive_lse_reference",
    "contrastive_lse_backward_reference",
    "contrastive_loss_reference",
]
from augcl.reference.sinkhorn import sinkhorn_naive_reference, sinkhorn_reference

__all__ += ["sinkhorn_reference", "sinkhorn_naive_reference"]
from augcl.reference.supcon import supcon_reference, supcon_rows_reference

__all__ += ["supcon_reference", "supcon_rows_reference"]
from augcl.reference.topk_attention import (
    topk_attention_bwd_reference,
    topk_attention_eager,
    topk_attention_fwd_reference,
    topk_attention_kept,
    topk_attention_reference,
)

__all__ += ["topk_attention_reference", "topk_attention_fwd_reference", "topk_attention_bwd_reference",
            "topk_attention_kept", "topk_attention_eager"]
