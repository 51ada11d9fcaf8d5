"""Shims with the call signatures and semantics of other SSL libraries, computed by augcl's fused ops.

* :mod:`augcl.compat.lightly` — ``NTXentLoss`` (lightly 1.6.0 ``lightly.loss.NTXentLoss``).
* :mod:`augcl.compat.solo` — ``simclr_loss_func``, ``mocov2plus_loss_func``, ``swav_loss_func``,
  ``byol_loss_func``, ``simsiam_loss_func`` (solo-learn ``solo.losses``) and ``SinkhornKnopp``
  (``solo.utils.sinkhorn_knopp``).
* :mod:`augcl.compat.pml` — ``NTXentLoss``, ``SupConLoss`` (pytorch-metric-learning 2.9.0, usable in
  ``SelfSupervisedLoss``).
* :mod:`augcl.compat.timm` — ``Mixup`` (timm ``timm.data.Mixup``, same numpy draws), ``mixup_target``.
* :mod:`augcl.compat.torchvision` — ``MixUp``, ``CutMix`` (``torchvision.transforms.v2``, same torch draws).

None of them imports the library it imitates.
"""
from augcl.compat import lightly, pml, solo
from augcl.compat import timm, torchvision

__all__ = ["lightly", "pml", "solo", "timm", "torchvision"]
