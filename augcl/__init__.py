"""augcl: fused kernels for augmented contrastive self-supervised learning.

``augcl.functional`` holds the ops (``nt_xent``, ``info_nce``, ...), ``augcl.nn`` the drop-in modules,
``augcl.compat`` shims matching lightly / solo-learn / pytorch-metric-learning, ``augcl.patch()`` /
``augcl.unpatch()`` those shims put under the installed peer libraries, ``python -m augcl.info`` what was built and
which backend can run. See README.md.
"""
from augcl import _extension  # noqa: F401  (loads augcl._C and registers its ops, if built)
from augcl import ops  # noqa: F401
from augcl.ops import contrastive as _contrastive_ops  # noqa: F401  (registers fake kernels / autograd)
from augcl.ops import hallucinator as _hallucinator_ops  # noqa: F401  (registers fake kernels / autograd)
from augcl.ops import unmix as _unmix_ops  # noqa: F401  (registers the mix_images op)
from augcl.ops import soft_ce as _soft_ce_ops  # noqa: F401  (registers fake kernels / autograd)
from augcl.ops import topk_attention as _topk_attention_ops  # noqa: F401  (registers fake kernels / autograd)
from augcl import functional  # noqa: F401
from augcl import nn  # noqa: F401
from augcl import compat  # noqa: F401
from augcl.patch import PatchFallbackWarning, patch, unpatch  # the module stays in sys.modules["augcl.patch"]
from augcl._validate import IndexArgumentError, set_checks
from augcl.dispatch import BACKENDS, BackendUnavailableError, use_backend

from augcl._version import __version__

__all__ = ["functional", "nn", "compat", "patch", "unpatch", "PatchFallbackWarning", "use_backend", "set_checks",
           "BACKENDS", "BackendUnavailableError", "IndexArgumentError", "__version__"]
