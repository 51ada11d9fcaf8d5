"""lightly shim: ``from augcl.compat.lightly import NTXentLoss`` replaces ``from lightly.loss import NTXentLoss``.

:class:`augcl.nn.NTXentLoss` already has lightly 1.6.0's signature, defaults, memory-bank semantics and errors
(see its docstring for the few deliberate differences); this module only re-exports it under lightly's name.
lightly itself is not imported.
"""
from augcl.nn.contrastive import NTXentLoss

__all__ = ["NTXentLoss"]
