"""Drop-in SwAV modules for lightly 1.6.0 users.

* :class:`SwaVLoss` — ``lightly.loss.SwaVLoss`` (same signature, defaults and values), with the codes from
  augcl's stable log-domain Sinkhorn (:func:`augcl.functional.sinkhorn`), plus the keyword-only Un-Mix
  variant (``mixed_outputs``, ``mix_lam``, ``mix_partner``) in either form (``mix_form``: "soft" or the
  authors' "authors").
* :class:`SwaVPrototypes` — ``lightly.models.modules.SwaVPrototypes`` (same parameters, state_dict keys,
  initialisation and freezing), plus optional re-normalisation of the prototypes on every training forward.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Union

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from augcl import _validate as V
from augcl.functional.swav import SWAV_MIX_FORMS, swav_loss

__all__ = ["SwaVLoss", "SwaVPrototypes"]


class SwaVLoss(nn.Module):
    """SwAV's swapped prediction loss (Caron et al. 2020), as lightly 1.6.0's ``SwaVLoss``.

    Args:
        temperature: temperature of the cross-entropy's softmax.
        sinkhorn_iterations: Sinkhorn iterations for the codes.
        sinkhorn_epsilon: entropic regularisation of the Sinkhorn.
        sinkhorn_gather_distributed: compute the codes over every rank's samples (when torch.distributed is
            initialised).
        mix_form: (augcl addition) how Un-Mix mixtures passed to ``forward`` enter the loss: ``"soft"`` (default;
            each mixture is an extra crop predicting the lam-mix of the large crops' codes) or ``"authors"``
            (szq0214/Un-Mix's main_swav_unmix.py: the mixture replaces crop 0 in two more SwAV losses whose
            crop-0 codes are the mixture's own, in batch and in partner order, weighted lam and 1 - lam; one
            lam per batch there). See :func:`augcl.functional.swav_loss`. Without mixtures both are plain SwAV.

    ``forward`` returns a one-element tensor of shape [1], like lightly's (fp32; fp64 for fp64 inputs).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_gather_distributed: bool = False,
        mix_form: str = "soft",
    ):
        super().__init__()
        if mix_form not in SWAV_MIX_FORMS:
            raise ValueError(f"mix_form must be 'soft' or 'authors', got {mix_form!r}")
        # Checked now rather than at the first forward (same messages as augcl.functional.swav_loss).
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        V.check_sinkhorn_args(sinkhorn_epsilon, sinkhorn_iterations, "sinkhorn_epsilon", "sinkhorn_iterations")
        if sinkhorn_gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "sinkhorn_gather_distributed is True but torch.distributed is not "
                "available. Please set gather_distributed=False or install a torch "
                "version with distributed support."
            )
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed
        self.mix_form = mix_form

    def forward(
        self,
        high_resolution_outputs: List[Tensor],
        low_resolution_outputs: List[Tensor],
        queue_outputs: Optional[List[Tensor]] = None,
        *,
        mixed_outputs: Optional[List[Tensor]] = None,
        mix_lam: Optional[Union[float, Tensor]] = None,
        mix_partner: Optional[Tensor] = None,
    ) -> Tensor:
        """The loss [1]. Positional arguments as lightly's (scores [B, K] of the high- and low-resolution crops,
        optional queue scores [Bq, K] per high-resolution crop). Keyword-only, the Un-Mix variant (see
        :func:`augcl.functional.swav_loss`): ``mixed_outputs`` (M tensors [B, K], scores of the mixtures),
        ``mix_lam`` (float or [B] in [0, 1], weight of sample b in mixture b) and ``mix_partner`` ([B] long,
        default the reversed batch); the form is the module's ``mix_form``."""
        loss = swav_loss(
            high_resolution_outputs,
            low_resolution_outputs,
            queue_outputs,
            temperature=self.temperature,
            sinkhorn_iterations=self.sinkhorn_iterations,
            sinkhorn_epsilon=self.sinkhorn_epsilon,
            distributed=self.sinkhorn_gather_distributed,
            mixed_outputs=mixed_outputs,
            mix_lam=mix_lam,
            mix_partner=mix_partner,
            mix_form=self.mix_form,
        )
        return loss.reshape(1)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, sinkhorn_iterations={self.sinkhorn_iterations}, "
                f"sinkhorn_epsilon={self.sinkhorn_epsilon}, "
                f"sinkhorn_gather_distributed={self.sinkhorn_gather_distributed}"
                + (f", mix_form={self.mix_form!r}" if self.mix_form != "soft" else ""))


class SwaVPrototypes(nn.Module):
    """SwAV's prototypes: one linear head per prototype set (lightly 1.6.0's ``SwaVPrototypes``).

    Args:
        input_dim: width of the (normalised) features.
        n_prototypes: number of prototypes, or a list of numbers (one head each; ``forward`` then returns a
            list).
        n_steps_frozen_prototypes: the prototypes get no gradient while ``step < n_steps_frozen_prototypes``
            (SwAV freezes them for the first iterations); ``forward`` then needs ``step``.
        normalize_on_forward: (augcl addition, default off as in lightly) re-normalise every prototype to unit
            length at the start of each forward in training mode, i.e. once per step as SwAV does. With it
            off, call :meth:`normalize` yourself each step, as with lightly.

    The heads are ``nn.Linear(input_dim, n)`` with a bias, as in lightly (the same parameters and
    ``state_dict`` keys ``heads.<i>.weight`` / ``heads.<i>.bias``).
    """

    def __init__(
        self,
        input_dim: int = 128,
        n_prototypes: Union[List[int], int] = 3000,
        n_steps_frozen_prototypes: int = 0,
        *,
        normalize_on_forward: bool = False,
    ):
        super().__init__()
        V.check_int("input_dim", input_dim, lo=1)
        if isinstance(n_prototypes, list):
            if not n_prototypes:
                raise ValueError("n_prototypes must be an int >= 1 or a non-empty list of them, got []")
            for n in n_prototypes:
                V.check_int("n_prototypes", n, lo=1)
        else:
            V.check_int("n_prototypes", n_prototypes, lo=1)
        V.check_int("n_steps_frozen_prototypes", n_steps_frozen_prototypes, lo=0)
        self.n_prototypes = n_prototypes if isinstance(n_prototypes, list) else [n_prototypes]
        self._is_single_prototype = isinstance(n_prototypes, int)
        self.heads = nn.ModuleList([nn.Linear(input_dim, n) for n in self.n_prototypes])
        self.n_steps_frozen_prototypes = n_steps_frozen_prototypes
        self.normalize_on_forward = normalize_on_forward

    def forward(self, x: Tensor, step: Optional[int] = None) -> Union[Tensor, List[Tensor]]:
        """Scores ``x @ prototypes.T + bias`` per head: one tensor, or a list when built with a list.

        ``x`` [..., input_dim] floating, non-empty, on the prototypes' device, in their dtype unless autocast is
        on (as ``nn.Linear``); otherwise TypeError / ValueError naming ``x``."""
        self._check_input(x)
        self._freeze_prototypes_if_required(step)
        if self.normalize_on_forward and self.training:
            self.normalize()
        out = [layer(x) for layer in self.heads]
        return out[0] if self._is_single_prototype else out

    @torch.no_grad()
    def normalize(self) -> None:
        """Scale every prototype (a row of each head's weight) to unit L2 norm, in place."""
        for layer in self.heads:
            layer.weight.div_(torch.norm(layer.weight, dim=1, keepdim=True))

    def _check_input(self, x) -> None:
        w = self.heads[0].weight
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"x must be [..., input_dim] = [..., {w.shape[1]}], got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"x is empty (shape {tuple(x.shape)})")
        if x.device != w.device:
            raise ValueError(f"x is on {x.device} but the prototypes are on {w.device}")
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the prototypes are {w.dtype}: cast x, convert the module "
                            f"(.to(dtype)) or run under torch.autocast")

    def _freeze_prototypes_if_required(self, step: Optional[int] = None) -> None:
        if self.n_steps_frozen_prototypes > 0:
            if step is None:
                raise ValueError(
                    "`n_steps_frozen_prototypes` is greater than 0, please"
                    " provide the `step` argument to the `forward()` method."
                )
            if isinstance(step, bool) or not isinstance(step, numbers.Integral):
                raise TypeError(f"step must be an int (the training step), got {type(step).__name__}")
            self.requires_grad_(step >= self.n_steps_frozen_prototypes)
