"""MixedAE's patch mixing (augcl.functional.mixedae) and the MAE / MixedAE models (augcl.nn.mae).

* mix_partition: every group's positions split into g sets of N / g, reproducible from a generator;
* mix_patches / unmix_patches: against a loop transcription, exact round trip (bitwise, every dtype), gradients
  (float64 gradcheck), clear errors;
* homology_precision against a hand count (ties toward the lower key index, the class token);
* patchify / mae_loss against direct formulas;
* the models: forward / backward shapes, every parameter trained (DDP needs it), top-k attention with
  top_k = L equal to plain attention within tolerance, evaluation through plain attention only, the segment
  choices, the naive baseline's switches, determinism under a seeded generator.
"""
import pytest
import torch

import augcl.functional as AF
from augcl.nn import MAE, MixedAE, ViTEncoder
from augcl.nn.mae import sincos_pos_embed_2d

TINY = dict(image_size=8, patch_size=2, in_channels=1, width=32, depth=2, heads=2)  # N = 16 patches


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- partition
@pytest.mark.parametrize("batch, n, g", [(8, 16, 4), (6, 12, 3), (4, 4, 2), (16, 64, 4)])
def test_partition_splits_each_group_into_equal_disjoint_sets(batch, n, g):
    source = AF.mix_partition(batch, n, g, generator=_gen(3))
    assert source.shape == (batch // g, n) and source.dtype == torch.int64
    counts = torch.stack([(source == j).sum(1) for j in range(g)], dim=1)
    assert (counts == n // g).all()  # every position has one source and each image owns N / g of them


def test_partition_is_reproducible_and_random():
    a = AF.mix_partition(32, 64, 4, generator=_gen(1))
    assert torch.equal(a, AF.mix_partition(32, 64, 4, generator=_gen(1)))
    assert not torch.equal(a, AF.mix_partition(32, 64, 4, generator=_gen(2)))
    assert not torch.equal(a[0], a[1])  # one partition per group, not one per batch
    # each position goes to each image about equally often over many groups (uniform permutations)
    big = AF.mix_partition(4 * 2000, 16, 4, generator=_gen(4))
    share = torch.stack([(big == j).float().mean(0) for j in range(4)])
    assert (share - 0.25).abs().max() < 0.04


@pytest.mark.parametrize("args, kw, err, match", [
    ((8, 16, 1), {}, ValueError, "group must be >= 2"),
    ((10, 16, 4), {}, ValueError, "batch 10 must be a positive multiple of group 4"),
    ((8, 18, 4), {}, ValueError, "num_patches 18 must be a positive multiple of group 4"),
    ((8, 16, 4.0), {}, TypeError, "group must be an int"),
    ((8, 16, True), {}, TypeError, "group must be an int"),
    ((8, 16, 4), {"generator": 3}, TypeError, "generator"),
])
def test_partition_errors(args, kw, err, match):
    with pytest.raises(err, match=match):
        AF.mix_partition(*args, **kw)


# --------------------------------------------------------------------------------------- mix and unmix
def _mix_loop(tokens, source):
    groups, n = source.shape
    g = tokens.shape[0] // groups
    out = torch.empty(groups, n, tokens.shape[2], dtype=tokens.dtype)
    for i in range(groups):
        for p in range(n):
            out[i, p] = tokens[i * g + int(source[i, p]), p]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_mix_matches_loop_and_round_trip_is_exact(dtype):
    b, n, d, g = 12, 16, 5, 4
    tokens = torch.randn(b, n, d).to(dtype)
    source = AF.mix_partition(b, n, g, generator=_gen(5))
    mixed = AF.mix_patches(tokens, source, g)
    assert torch.equal(mixed, _mix_loop(tokens, source))
    mask = torch.randn(d).to(dtype)
    back = AF.unmix_patches(mixed, source, mask, g)
    assert back.shape == tokens.shape and back.dtype == dtype
    own = source.repeat_interleave(g, 0) == torch.arange(g).repeat(b // g).view(b, 1)
    assert torch.equal(back[own], tokens[own])  # bitwise
    assert torch.equal(back[~own], mask.expand(int((~own).sum()), d))
    assert int(own.sum()) == b * n // g


def test_mix_accepts_non_contiguous_tokens():
    base = torch.randn(16, 8, 6)
    tokens = base.transpose(0, 1)  # [8, 16, 6], non-contiguous
    source = AF.mix_partition(8, 16, 4, generator=_gen(0))
    assert torch.equal(AF.mix_patches(tokens, source, 4), AF.mix_patches(tokens.contiguous(), source, 4))


def test_mix_unmix_gradients_float64():
    b, n, d, g = 4, 4, 3, 2
    source = AF.mix_partition(b, n, g, generator=_gen(2))
    tokens = torch.randn(b, n, d, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, m: AF.unmix_patches(AF.mix_patches(t, source, g), source, m, g),
                                    (tokens, mask))
    # the gradient of the round trip is the identity at own positions and 0 elsewhere
    out = AF.unmix_patches(AF.mix_patches(tokens, source, g), source, mask, g)
    out.sum().backward()
    own = source.repeat_interleave(g, 0) == torch.arange(g).repeat(b // g).view(b, 1)
    assert torch.equal(tokens.grad, own.unsqueeze(-1).double().expand(b, n, d))
    assert torch.equal(mask.grad, torch.full((d,), float((~own).sum()), dtype=torch.float64))


def test_mix_unmix_errors():
    tokens = torch.randn(8, 16, 4)
    source = AF.mix_partition(8, 16, 4)
    with pytest.raises(TypeError, match="tokens must be float16"):
        AF.mix_patches(tokens.long(), source, 4)
    with pytest.raises(TypeError, match="source must be an int64"):
        AF.mix_patches(tokens, source.int(), 4)
    with pytest.raises(ValueError, match=r"source must have shape \[2, 16\]"):
        AF.mix_patches(tokens, source[:, :8], 4)
    with pytest.raises(ValueError, match="tokens' batch 6 must be a multiple of group 4"):
        AF.mix_patches(tokens[:6], source, 4)
    with pytest.raises(ValueError, match=r"source must have shape \[4, 16\]"):
        AF.mix_patches(tokens, source, 2)
    with pytest.raises(ValueError, match="group must be >= 2"):
        AF.mix_patches(tokens, source, 1)
    with pytest.raises(ValueError, match="tokens must be a 3-D tensor"):
        AF.mix_patches(tokens[0], source, 4)
    with pytest.raises(ValueError, match="source is on cpu but"):
        AF.mix_patches(tokens.to("meta"), source, 4)
    mixed = AF.mix_patches(tokens, source, 4)
    with pytest.raises(ValueError, match="mask_token must be a tensor of 4 elements"):
        AF.unmix_patches(mixed, source, torch.zeros(5), 4)
    with pytest.raises(ValueError, match=r"source must have shape \[2, 16\]"):
        AF.unmix_patches(mixed, source[:1], torch.zeros(4), 4)
    with pytest.raises(ValueError, match="group must be >= 2"):
        AF.unmix_patches(mixed, source, torch.zeros(4), 1)


# ---------------------------------------------------------------------------------- homology precision
def _precision_by_hand(scores, source, top_k, first_is_cls):
    """Loops: keys ordered by (score descending, index ascending); share of kept patch keys with the query's
    source, averaged over the queries that kept at least one patch key."""
    off = int(first_is_cls)
    shares = []
    for gi in range(scores.shape[0]):
        for h in range(scores.shape[1]):
            for q in range(off, scores.shape[2]):
                row = scores[gi, h, q].tolist()
                kept = sorted(range(len(row)), key=lambda j: (-row[j], j))[:top_k]
                patches = [j - off for j in kept if j >= off]
                if patches:
                    same = sum(int(source[gi, p]) == int(source[gi, q - off]) for p in patches)
                    shares.append(same / len(patches))
    return sum(shares) / len(shares)


@pytest.mark.parametrize("first_is_cls", [False, True])
@pytest.mark.parametrize("top_k", [1, 3, 4, 8])
def test_homology_precision_matches_hand_count(first_is_cls, top_k):
    g_, h, n, g = 3, 2, 8, 2
    source = AF.mix_partition(g_ * g, n, g, generator=_gen(7))
    length = n + int(first_is_cls)
    # integer-valued scores: many ties, broken toward the lower key index as the op does
    scores = torch.randint(0, 4, (g_, h, length, length), generator=_gen(8)).float()
    got = AF.homology_precision(scores, source, top_k, first_is_cls=first_is_cls)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert abs(float(got) - _precision_by_hand(scores, source, top_k, first_is_cls)) < 1e-6


def test_homology_precision_extremes():
    source = AF.mix_partition(8, 16, 4, generator=_gen(9))
    same = (source.unsqueeze(2) == source.unsqueeze(1)).float()  # [G, N, N]: 1 on homologous pairs
    assert float(AF.homology_precision(same, source, 4)) == 1.0  # exactly the 4 own keys are the best
    assert float(AF.homology_precision(-same, source, 12)) == 0.0
    # 3-D scores are one head; with a class token that every query prefers, it is left out of the share
    cls = torch.cat([torch.full((2, 16, 1), 9.0), same], dim=2)
    cls = torch.cat([torch.zeros(2, 1, 17), cls], dim=1)
    assert float(AF.homology_precision(cls, source, 5, first_is_cls=True)) == 1.0
    with pytest.raises(ValueError, match="top_k must be an int in"):
        AF.homology_precision(same, source, 17)


# --------------------------------------------------------------------------------- patchify, mae_loss
def test_patchify_and_mae_loss():
    x = torch.randn(2, 3, 4, 6)
    p = AF.patchify(x, 2)
    assert p.shape == (2, 6, 12)
    assert torch.equal(p[1, 4], x[1, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1))  # row 1, column 1 of 2 x 3
    pred, mask = torch.randn(2, 6, 12), torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])
    t = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6).sqrt()
    want = ((pred - t) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(AF.mae_loss(pred, p, mask), want)
    raw = ((pred - p) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(AF.mae_loss(pred, p, mask, norm_pix=False), raw)
    with pytest.raises(ValueError, match="patch_size 4 must be an int >= 1 dividing"):
        AF.patchify(x, 4)
    with pytest.raises(ValueError, match="mask must have shape"):
        AF.mae_loss(pred, p, mask[0])


def test_sincos_pos_embed():
    pe = sincos_pos_embed_2d(8, 3)
    assert pe.shape == (9, 8)
    assert torch.equal(pe[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))  # position (0, 0)
    assert torch.equal(pe[1, 4:], pe[0, 4:]) and torch.equal(pe[3, :4], pe[0, :4])  # same row / same column
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, 3)


# ------------------------------------------------------------------------------------------- models
def _images(b=8, seed=0):
    return torch.randn(b, 1, 8, 8, generator=_gen(seed))


def _all_trained(model):
    return [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


def test_mae_forward_backward():
    model = MAE(**TINY)
    assert model.keep == 4  # 25% of 16 patches visible
    loss = model(_images(), generator=_gen(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert _all_trained(model) == []
    assert set(model.last_stats) == {"rec_loss"}
    assert model.encoder(_images()).shape == (8, 32)


@pytest.mark.parametrize("kw", [dict(), dict(segment="decoder"), dict(segment="none"), dict(hc_weight=0.0),
                                dict(naive=True), dict(top_k=2)])
def test_mixedae_forward_backward_trains_every_parameter(kw):
    model = MixedAE(**TINY, **kw)
    loss = model(_images(), generator=_gen(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert _all_trained(model) == []  # no parameter without a gradient: DDP's default requires it
    s = model.last_stats
    assert set(s) == {"rec_loss", "hc_loss", "homology_precision"}
    assert 0.0 <= float(s["homology_precision"]) <= 1.0
    with_hc = not kw.get("naive") and kw.get("hc_weight", 1.0) > 0
    assert (float(s["hc_loss"]) > 0) == with_hc
    torch.testing.assert_close(loss.detach(), s["rec_loss"] + (s["hc_loss"] if with_hc else 0.0))


def test_mixedae_options():
    m = MixedAE(**TINY)
    assert (m.group, m.top_k, m.segment, m.hc_weight) == (4, 4, "encoder", 1.0)  # k = N / g
    assert m.segment_embed.shape == (4, 32) and m.projector is not None
    assert MixedAE(**TINY, segment="decoder").segment_embed.shape == (4, 64)  # the decoder's width
    n = MixedAE(**TINY, naive=True)
    assert (n.top_k, n.segment, n.hc_weight, n.segment_embed, n.projector) == (None, "none", 0.0, None, None)
    assert MixedAE(**TINY, hc_weight=0).projector is None
    for bad, match in [(dict(segment="input"), "segment must be one of"), (dict(group=3), "dividing the 16"),
                       (dict(naive=True, segment="encoder"), "do not give segment"),
                       (dict(naive=True, hc_weight=1.0), "do not give hc_weight"),
                       (dict(top_k=18), r"top_k must be in \[1, 17\]"), (dict(hc_weight=-1.0), "hc_weight")]:
        with pytest.raises(ValueError, match=match):
            MixedAE(**TINY, **bad)
    with pytest.raises(ValueError, match="multiple of group 4"):
        m(_images(6))


def test_encoder_segment_embedding_enters_the_encoder_input():
    """segment="encoder" adds e_j of the source image to the mixed tokens the encoder reads."""
    m = MixedAE(**TINY)
    seen = []
    encode = m.encoder.encode_tokens

    def spy(tokens, *args, **kw):
        seen.append(tokens.detach())
        return encode(tokens, *args, **kw)

    m.encoder.encode_tokens = spy
    m(_images(), generator=_gen(4))
    source = AF.mix_partition(8, 16, 4, generator=_gen(4))  # the model's draw from the same generator
    plain = AF.mix_patches(m.encoder.embed(_images()), source, 4).detach()
    torch.testing.assert_close(seen[0] - plain, m.segment_embed[source].detach())
    seen.clear()
    m.segment = "none"
    m(_images(), generator=_gen(4))
    torch.testing.assert_close(seen[0], plain)


def test_topk_attention_with_all_keys_equals_plain_attention():
    enc = ViTEncoder(**TINY)
    tokens = torch.randn(3, 16, 32)
    plain, _ = enc.encode_tokens(tokens)
    all_keys, _ = enc.encode_tokens(tokens, top_k=17)  # L = 16 patches + the class token
    torch.testing.assert_close(all_keys, plain, rtol=1e-5, atol=1e-5)
    fewer, _ = enc.encode_tokens(tokens, top_k=4)
    assert (fewer - plain).abs().max() > 1e-3  # the selection does change the output


def test_evaluation_uses_plain_attention_only(monkeypatch):
    calls = []
    real = AF.topk_attention

    def counting(*args, **kw):
        calls.append(args[3])
        return real(*args, **kw)

    monkeypatch.setattr(AF, "topk_attention", counting)
    m = MixedAE(**TINY)
    m(_images(), generator=_gen(0))
    assert calls == [4, 4]  # pre-training: top-k (k = N / g) in both encoder blocks
    calls.clear()
    with torch.no_grad():
        f = m.encoder(_images())
        tokens, _ = m.encoder.encode_tokens(m.encoder.embed(_images()))
    assert calls == []  # features (kNN / linear probe): plain attention
    torch.testing.assert_close(f, tokens[:, 1:].mean(1))
    calls.clear()
    MixedAE(**TINY, naive=True)(_images(), generator=_gen(0))
    assert calls == []


def test_homology_precision_readout_of_a_block_matches_functional():
    m = MixedAE(**TINY, segment="none", hc_weight=0.0)
    source = AF.mix_partition(8, 16, 4, generator=_gen(2))
    x = torch.cat([m.encoder.cls_token.expand(2, -1, -1), AF.mix_patches(m.encoder.embed(_images()), source, 4)], 1)
    blk = m.encoder.blocks[0]
    out, prec = blk(x, 4, True, (source, 4))
    q, k, _ = blk.attn.qkv(blk.norm1(x)).view(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
    want = AF.homology_precision(q @ k.transpose(-2, -1) / 4.0, source, 4, first_is_cls=True)  # Dh = 16
    torch.testing.assert_close(prec, want)
    _, mean = m.encoder.encode_tokens(x[:, 1:], 4, readout=(source, 4))
    assert 0.0 <= float(mean) <= 1.0


@pytest.mark.parametrize("kw", [dict(), dict(naive=True)])
def test_models_are_deterministic_with_a_seed(kw):
    def run(seed):
        torch.manual_seed(0)
        model = MixedAE(**TINY, **kw)
        loss = model(_images(), generator=_gen(seed))
        loss.backward()
        return loss.detach(), model.encoder.patch_embed.weight.grad.clone()

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(0)
    mae = MAE(**TINY)
    assert torch.equal(mae(_images(), generator=_gen(3)), mae(_images(), generator=_gen(3)))
