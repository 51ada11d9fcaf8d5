"""Shims with the call signatures and semantics of other SSL libraries, computed by augcl's fused ops.

* :mod:`augcl.compat.lightly` — ``NTXentLoss`` (lightly 1.6.0 ``lightly.loss.NTXentLoss``).
* :mod:`augcl.compat.solo` — ``simclr_loss_func``, ``mocov2plus_loss_func`` (solo-learn ``solo.losses``).
* :mod:`augcl.compat.pml` — ``NTXentLoss`` (pytorch-metric-learning, usable in ``SelfSupervisedLoss``).

None of them imports the library it imitates.
"""
from augcl.compat import lightly, pml, solo

__all__ = ["lightly", "pml", "solo"]
