"""Masked autoencoders on a small ViT: ``MAE`` (He et al. 2022) and ``MixedAE`` (Chen et al., CVPR 2023,
https://arxiv.org/abs/2303.17152), with the naive-mixing baseline as ``MixedAE(..., naive=True)``.

The ViT is written here with torch alone: a strided-convolution patch embedding, a fixed 2-D sin-cos position
embedding (MAE's), a class token, pre-norm blocks (LayerNorm -> multi-head attention -> LayerNorm -> GELU MLP)
whose attention is either ``F.scaled_dot_product_attention`` (plain) or ``augcl.functional.topk_attention``
(MixedAE's homologous attention).

What follows MixedAE's paper (its abstract, figures and introduction; the method section and code are not
public): plain mixing added to MAE hurts; the fix is homologous recognition, with homologous attention used in
pre-training only (ordinary attention afterwards), segment embeddings, and a homologous contrastive term added to
the reconstruction loss; the cost is about MAE's (+3%).

What is augcl's design (see the README): one mixed sequence per group of ``g`` images (each image fills N / g
random positions, the same visible share as MAE's 25% at g = 4); top-k attention in every encoder block with
k = N / g and the class token always kept; the unmixed per-image decoder input (own tokens at own positions, the
mask token elsewhere); the reconstruction loss on the positions an image did not contribute; the contrastive
term as SupCon per mixed sequence with the source ids as labels, temperature 0.2, weight 1; where the segment
embedding goes (``segment``); the features evaluated (the mean of the final-norm patch tokens, plain attention,
all patches of an unmixed image).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import augcl.functional as AF

__all__ = ["ViTEncoder", "MAE", "MixedAE", "sincos_pos_embed_2d", "SEGMENTS"]

SEGMENTS = ("encoder", "decoder", "none")
# The homology-precision read-out of a training step looks at the first READOUT_GROUPS mixed sequences only
# (8 x heads x N query rows per block: plenty for an epoch mean); on all 32 of a 128-image batch its logits and
# selection cost about 15% of a CPU step.
READOUT_GROUPS = 8


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding: [grid * grid, dim] float32, row-major positions.

    Half of the channels encode the row, half the column, each as sin / cos of ``pos / 10000^(2i / (dim / 2))``.
    ``dim`` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def enc(p):
        out = p.reshape(-1, 1) * omega.view(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([enc(cols), enc(rows)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention, [B, L, D] -> [B, L, D]; plain (SDPA) or top-k (``top_k`` given)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, top_k: Optional[int] = None, keep_first: bool = False,
                readout: Optional[Tuple[torch.Tensor, int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, L, D]; ``top_k``: None = plain softmax attention, else augcl.functional.topk_attention (with
        ``keep_first``: key 0, the class token, always kept). ``readout``: (source [G, L - 1], k): also return the
        homology precision of this block's logits (class token first) over the first G <= B sequences. Returns
        (out, precision or None)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if top_k is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = AF.topk_attention(q, k, v, top_k, keep_first=keep_first)
        precision = None
        if readout is not None:
            with torch.no_grad():
                g = readout[0].shape[0]
                scores = (q[:g] @ k[:g].transpose(-2, -1)).float() * (q.shape[-1] ** -0.5)
                precision = AF.homology_precision(scores, readout[0], readout[1], first_is_cls=True)
        return self.proj(out.transpose(1, 2).reshape(b, length, d)), precision


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (MLP: Linear-GELU-Linear)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, top_k=None, keep_first=False, readout=None):
        a, precision = self.attn(self.norm1(x), top_k, keep_first, readout)
        x = x + a
        return x + self.mlp(self.norm2(x)), precision


def _init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViTEncoder(nn.Module):
    """A small ViT encoder: images [B, C, S, S] -> features [B, width] (the mean of the final-norm patch tokens,
    plain attention: what the kNN monitor and the linear probe evaluate).

    Args (defaults: the CPU digits setting, 16 px images in 2 px patches, N = 64):
        image_size: S (default 16); patch_size: p, dividing S (default 2); in_channels: C (default 3).
        width: token width D (default 128, divisible by 4 and by ``heads``); depth: blocks (default 4);
        heads: attention heads (default 4); mlp_ratio: MLP hidden / width (default 4).

    Pre-training entry points: :meth:`embed` (patch tokens with their position embedding, [B, N, D]) and
    :meth:`encode_tokens` (class token prepended, the blocks with plain or top-k attention, final norm).
    """

    def __init__(self, image_size: int = 16, patch_size: int = 2, in_channels: int = 3, width: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid = image_size // patch_size
        self.num_patches = self.grid ** 2
        self.width, self.out_dim = width, width
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        _init_weights(self)
        w = self.patch_embed.weight.data  # MAE: the patch projection initialised like a Linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, S, S] -> patch tokens + position embedding [B, N, D] (row-major patches)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return x + self.pos_embed.to(x.dtype)

    def encode_tokens(self, tokens: torch.Tensor, top_k: Optional[int] = None,
                      readout: Optional[Tuple[torch.Tensor, int]] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """tokens [B, L, D] (any subset or mixture of patch tokens) -> [B, 1 + L, D] after the final norm, the
        class token first. ``top_k``: None = plain attention in every block, else top-k attention with the
        class token always kept. ``readout`` = (source [G, L], k): also the homology precision of the first
        G <= B sequences, averaged over the blocks (0-dim float32), else None."""
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        precisions = []
        for block in self.blocks:
            x, p = block(x, top_k, top_k is not None, readout)
            if p is not None:
                precisions.append(p)
        return self.norm(x), (torch.stack(precisions).mean() if precisions else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, S, S] -> [B, D]: the mean of the final-norm patch tokens, plain attention."""
        return self.encode_tokens(self.embed(images))[0][:, 1:].mean(dim=1)


class _Decoder(nn.Module):
    """MAE's light decoder: encoder tokens [B, 1 + N, D] with mask tokens already in place -> predicted
    patches [B, N, p * p * C] (the class token's output dropped)."""

    def __init__(self, enc_width: int, grid: int, patch_dim: int, width: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(enc_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = torch.cat([torch.zeros(1, width), sincos_pos_embed_2d(width, grid)])  # the class token's: zeros
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch_dim)
        _init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x, _ = block(x)
        return self.pred(self.norm(x))[:, 1:]


def _encoder_from(encoder: Optional[ViTEncoder], kw: Dict) -> ViTEncoder:
    return encoder if encoder is not None else ViTEncoder(**kw)


class MAE(nn.Module):
    """Masked autoencoder (He et al. 2022) on a small ViT: ``forward(images) -> loss``.

    Args:
        encoder: a :class:`ViTEncoder` to train (default: one built from ``image_size``, ``patch_size``,
            ``in_channels``, ``width``, ``depth``, ``heads``; defaults 16 / 2 / 3 / 128 / 4 / 4).
        decoder_width, decoder_depth, decoder_heads: the decoder (default 64, 2, 4).
        mask_ratio: share of patches hidden from the encoder (default 0.75, MAE's).
        norm_pix: normalised-pixel targets (default True).

    ``forward(images [B, C, S, S], generator=None)``: a random ``mask_ratio`` of each image's patches is hidden
    (argsort of uniform noise, drawn from ``generator``); the encoder (plain attention) sees the rest, the decoder
    all positions with mask tokens; the loss is :func:`augcl.functional.mae_loss` over the hidden patches.
    ``last_stats``: {"rec_loss": the detached loss} of the last forward.
    """

    def __init__(self, encoder: Optional[ViTEncoder] = None, *, decoder_width: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75, norm_pix: bool = True, **encoder_kw):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = _encoder_from(encoder, encoder_kw)
        e = self.encoder
        self.keep = max(1, int(round(e.num_patches * (1.0 - mask_ratio))))
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.decoder = _Decoder(e.width, e.grid, e.patch_size ** 2 * e.in_channels, decoder_width, decoder_depth,
                                decoder_heads)
        self.last_stats: Dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        e = self.encoder
        tokens = e.embed(images)
        b, n, d = tokens.shape
        noise = torch.rand(b, n, generator=generator, device=images.device)
        order = noise.argsort(dim=1)  # the first `keep` positions of each row stay visible
        visible = order[:, :self.keep]
        latent, _ = e.encode_tokens(tokens.gather(1, visible.unsqueeze(-1).expand(-1, -1, d)))
        x = self.decoder.embed(latent)
        full = self.decoder.mask_token.to(x.dtype).expand(b, n, -1).clone()
        full.scatter_(1, visible.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])
        pred = self.decoder(torch.cat([x[:, :1], full], dim=1))
        mask = torch.ones(b, n, device=images.device).scatter_(1, visible, 0.0)
        loss = AF.mae_loss(pred, AF.patchify(images, e.patch_size), mask, norm_pix=self.norm_pix)
        self.last_stats = {"rec_loss": loss.detach()}
        return loss


class MixedAE(nn.Module):
    """MixedAE (Chen et al., CVPR 2023) on a small ViT, or the naive-mixing baseline (``naive=True``).

    Args:
        encoder: a :class:`ViTEncoder` (default: built from ``**encoder_kw`` as in :class:`MAE`).
        group: images g per mixed sequence (default 4); the batch must be a multiple of g, N of g.
        top_k: keys kept per query by the encoder's top-k attention in pre-training (default N / g, the positions
            of one image; the class token is kept in addition). ``naive``: plain attention instead.
        segment: where a learned segment embedding e_j (j = the source image's slot in its group) is added:
            ``"encoder"`` (default; to the mixed input tokens, with the position embedding), ``"decoder"`` (to
            image j's own encoded tokens after unmixing) or ``"none"``. Initialised N(0, 1/2), the position
            embedding's scale.
        hc_weight: weight of the homologous contrastive term (default 1.0; 0 drops it and its projector).
        temperature: its SupCon temperature (default 0.2).
        proj_dim: width of its projector Linear-GELU-Linear on the final patch tokens (default 64).
        naive: the naive-mixing baseline: the same mixing with plain attention, no contrastive term and no
            segment embedding (giving ``top_k``, ``segment`` or ``hc_weight`` with it is a ValueError).
        decoder_width, decoder_depth, decoder_heads, norm_pix: as in :class:`MAE`.
        backend: augcl backend of the SupCon op (None = automatic).

    ``forward(images [B, C, S, S], generator=None) -> loss``: :func:`augcl.functional.mix_partition` (from
    ``generator``) -> :func:`~augcl.functional.mix_patches` -> encoder with top-k attention ->
    :func:`~augcl.functional.unmix_patches` -> decoder -> ``mae_loss`` on the positions each image did not
    contribute + ``hc_weight`` x ``augcl.functional.supcon`` over [G, N, proj_dim] with the source ids as labels.
    ``last_stats`` of the last forward (detached): ``rec_loss``, ``hc_loss`` (0 without the term) and
    ``homology_precision`` (mean over the encoder blocks of the share of each query's top-k keys, k = top_k,
    from its own image, over the first ``READOUT_GROUPS`` = 8 sequences; chance 1 / g; for ``naive`` measured on
    the plain attention's logits with k = N / g).
    Evaluation (``encoder(images)``) uses plain attention on unmixed images.
    """

    def __init__(self, encoder: Optional[ViTEncoder] = None, *, group: int = 4, top_k: Optional[int] = None,
                 segment: Optional[str] = None, hc_weight: Optional[float] = None, temperature: float = 0.2,
                 proj_dim: int = 64, naive: bool = False, decoder_width: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix: bool = True, backend: Optional[str] = None, **encoder_kw):
        super().__init__()
        if naive:
            given = [name for name, v in (("top_k", top_k), ("segment", segment), ("hc_weight", hc_weight))
                     if v is not None]
            if given:
                raise ValueError(f"naive=True is plain attention, no segment embedding and no contrastive term; "
                                 f"do not give {', '.join(given)}")
        segment = "none" if naive else (segment or "encoder")
        if segment not in SEGMENTS:
            raise ValueError(f"segment must be one of {SEGMENTS}, got {segment!r}")
        hc_weight = 0.0 if naive else (1.0 if hc_weight is None else float(hc_weight))
        if not (hc_weight >= 0.0 and math.isfinite(hc_weight)):
            raise ValueError(f"hc_weight must be finite and >= 0, got {hc_weight}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder = _encoder_from(encoder, encoder_kw)
        e = self.encoder
        if isinstance(group, bool) or not isinstance(group, int) or group < 2 or e.num_patches % group:
            raise ValueError(f"group must be an int >= 2 dividing the {e.num_patches} patches, got {group}")
        self.group, self.naive, self.segment = group, naive, segment
        self.readout_k = e.num_patches // group
        self.top_k = None if naive else (self.readout_k if top_k is None else int(top_k))
        if self.top_k is not None and not 1 <= self.top_k <= e.num_patches + 1:
            raise ValueError(f"top_k must be in [1, {e.num_patches + 1}] (keys of the mixed sequence), got {top_k}")
        self.hc_weight, self.temperature, self.backend, self.norm_pix = hc_weight, temperature, backend, norm_pix
        self.decoder = _Decoder(e.width, e.grid, e.patch_size ** 2 * e.in_channels, decoder_width, decoder_depth,
                                decoder_heads)
        # created only when used: DDP requires every parameter to get a gradient
        self.segment_embed = (nn.Parameter(torch.zeros(group, e.width if segment == "encoder" else decoder_width))
                              if segment != "none" else None)
        if self.segment_embed is not None:
            # at the position embedding's scale (rms 1 / sqrt(2)): at MAE's 0.02 for tokens, e_j is invisible next
            # to it and the contrastive term settles at its collapsed value log(N - 1) before it can read e_j
            nn.init.normal_(self.segment_embed, std=0.5 ** 0.5)
        self.projector = (nn.Sequential(nn.Linear(e.width, e.width), nn.GELU(), nn.Linear(e.width, proj_dim))
                          if hc_weight > 0 else None)
        self.last_stats: Dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        e, g = self.encoder, self.group
        b = images.shape[0]
        if b % g:
            raise ValueError(f"the batch ({b} images) must be a multiple of group {g}")
        tokens = e.embed(images)
        source = AF.mix_partition(b, e.num_patches, g, generator=generator, device=images.device)
        mixed = AF.mix_patches(tokens, source, g)
        if self.segment == "encoder":
            mixed = mixed + self.segment_embed.to(mixed.dtype)[source]
        latent, precision = e.encode_tokens(mixed, self.top_k,
                                            readout=(source[:READOUT_GROUPS], self.top_k or self.readout_k))
        hc = latent.new_zeros((), dtype=torch.float32)
        if self.projector is not None:
            z = self.projector(latent[:, 1:])  # [G, N, proj_dim]
            hc = AF.supcon(z, source, self.temperature, backend=self.backend)
        x = self.decoder.embed(latent)  # [G, 1 + N, Dd]
        per_image = AF.unmix_patches(x[:, 1:], source, self.decoder.mask_token, g)  # [B, N, Dd]
        own = source.repeat_interleave(g, dim=0) == torch.arange(g, device=images.device).repeat(b // g).view(b, 1)
        if self.segment == "decoder":
            seg = self.segment_embed.to(x.dtype).repeat(b // g, 1).unsqueeze(1)  # [B, 1, Dd]: image j's e_j
            per_image = per_image + seg * own.unsqueeze(-1).to(x.dtype)
        cls = x[:, :1].repeat_interleave(g, dim=0)  # each image decodes with its group's class token
        pred = self.decoder(torch.cat([cls, per_image], dim=1))
        rec = AF.mae_loss(pred, AF.patchify(images, e.patch_size), (~own).float(), norm_pix=self.norm_pix)
        loss = rec + self.hc_weight * hc if self.projector is not None else rec
        self.last_stats = {"rec_loss": rec.detach(), "hc_loss": hc.detach(), "homology_precision": precision}
        return loss
