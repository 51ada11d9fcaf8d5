"""Functional API of augcl: one module per family, re-exported here.

* :mod:`augcl.functional.contrastive` — ``contrastive_loss``, ``nt_xent``, ``nt_xent_multiview``, ``info_nce``,
  ``soft_info_nce`` (the fused InfoNCE / NT-Xent family).
* :mod:`augcl.functional.supcon` — ``supcon`` (supervised contrastive, SupCon L_out; batched form).
* :mod:`augcl.functional.swav` — ``sinkhorn``, ``swav_loss``.
* :mod:`augcl.functional.hallucinator` — ``hallucinate`` and the MoCo / SimCLR / SimSiam Hallucinator losses.
* :mod:`augcl.functional.unmix` — ``mix_images``, ``unmix``, ``unmix_params`` and the Un-Mix losses.
* :mod:`augcl.functional.mixedae` — MixedAE's patch mixing (``mix_partition``, ``mix_patches``, ``unmix_patches``,
  ``homology_precision``) and MAE's ``patchify`` / ``mae_loss``.
* :mod:`augcl.functional.attention` — ``topk_attention`` (MixedAE's homologous top-k attention).
* :mod:`augcl.functional.hard_samples` — hard-sample generation's hinge GAN losses, ``diff_augment`` and the
  pair-hardness controller (``pair_target``, ``pair_sigma_update``).

Every fused op takes ``backend=`` (see :mod:`augcl.dispatch`) and raises errors that name the argument at fault.
"""
from augcl.functional.attention import topk_attention
from augcl.functional.contrastive import contrastive_loss, info_nce, nt_xent, nt_xent_multiview, soft_info_nce
from augcl.functional.hallucinator import (
    hallucinate,
    hallucinate_moco_loss,
    hallucinate_simclr_loss,
    hallucinate_simsiam_loss,
)
from augcl.functional.hard_samples import diff_augment, hinge_d_loss, hinge_g_loss, pair_sigma_update, pair_target
from augcl.functional.mixedae import homology_precision, mae_loss, mix_partition, mix_patches, patchify, unmix_patches
from augcl.functional.supcon import supcon
from augcl.functional.swav import SWAV_MIX_FORMS, sinkhorn, swav_loss
from augcl.functional.unmix import mix_images, unmix, unmix_info_nce, unmix_nt_xent, unmix_params

__all__ = ["contrastive_loss", "nt_xent", "nt_xent_multiview", "info_nce", "soft_info_nce", "supcon", "sinkhorn",
           "swav_loss", "SWAV_MIX_FORMS",
           "hallucinate", "hallucinate_moco_loss", "hallucinate_simclr_loss", "hallucinate_simsiam_loss",
           "mix_images", "unmix", "unmix_params", "unmix_info_nce", "unmix_nt_xent",
           "topk_attention", "mix_partition", "mix_patches", "unmix_patches", "homology_precision", "patchify",
           "mae_loss",
           "hinge_d_loss", "hinge_g_loss", "diff_augment", "pair_sigma_update", "pair_target"]
