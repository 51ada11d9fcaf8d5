"""The authors' Un-Mix + SwAV loss (augcl.functional.swav_loss(..., mix_form="authors"), issue 6).

The oracle below restates szq0214/Un-Mix's ``UnMix_SwAV/.../main_swav_unmix.py`` in plain float64 PyTorch, as
that script computes it: three calls of its SwAV loss (the clean crops; the crops with crop 2j replaced by
mixture j; the same with crop 0's scores reversed before the Sinkhorn), each with codes from every code crop
(``crops_for_assign``, here every large crop) and predictions of every other crop, combined as
``L_ori + lam L_unmix + (1 - lam) L_unmix_flip`` with one float lam. It is checked for values and gradients
on every sinkhorn backend this machine has, with and without small crops and a queue, odd batches and B = 1;
then the per-sample lam, the lam = 1 reduction, the unchanged soft form, torch.compile, the module option,
errors, and the training driver's ``--unmix-swav-form``.

Numeric comparisons follow the rule of tests/_tolerance.py: the oracle in float64 is the reference; for fp32 scores
the oracle computed in fp32 is the same-precision yardstick, in float64 the oracle is both.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from augcl import functional as AF
from augcl.dispatch import REGISTRY
from augcl.nn import SwaVLoss
from augcl.train import main
from augcl.train.methods import build_method
from augcl.train.models import build_backbone
from _tolerance import assert_close_to_reference


# ------------------------------------------------------------------------------------------------ the oracle
def script_sinkhorn(scores, epsilon, iterations, dtype=torch.float64):
    """The script's ``distributed_sinkhorn`` on one process (ImageNet version; the CIFAR one computes the same
    normalisations in another order of operations), in ``dtype`` (float64: the oracle), scores [N, K] -> codes."""
    q = torch.exp(scores.to(dtype) / epsilon).t()  # K x N
    n, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype's total weight 1/K
        q = q / q.sum(dim=0, keepdim=True) / n  # each sample's total weight 1/N
    return (q * n).t()


def script_swav_rows(crops, n_assign, queue=None, order=None, temperature=0.1, iterations=3, epsilon=0.05,
                     dtype=torch.float64):
    """The script's ``swav_loss`` before its batch mean: per-row losses [B], computed in ``dtype``. ``crops``: the
    scores of every crop in order; codes of crops[0:n_assign]; ``order``: None, or the row order of crop 0's
    scores before its Sinkhorn (``torch.flip(out, (0,))`` in the script, i.e. the reversed batch); ``queue``:
    queue scores per code crop, prepended as the script does (its codes are the last B rows)."""
    b = crops[0].shape[0]
    rows = 0.0
    for i in range(n_assign):
        with torch.no_grad():
            out = crops[i].detach().to(dtype)
            if order is not None and i == 0:
                out = out[order]
            if queue is not None:
                out = torch.cat((queue[i].to(dtype), out))
            q = script_sinkhorn(out, epsilon, iterations, dtype)[-b:]
        sub = 0.0
        for v in range(len(crops)):
            if v != i:
                sub = sub - torch.sum(q * torch.log(torch.softmax(crops[v].to(dtype) / temperature, dim=1)), dim=1)
        rows = rows + sub / (len(crops) - 1)
    return rows / n_assign


def script_unmix_swav(high, low, mixed, lam, partner=None, queue=None, **kw):
    """``loss_ori + lam * loss_unmix + (1 - lam) * loss_unmix_flip`` of the script; mixture j replaces crop 2j.
    ``lam``: a float (the script's), or a [B] tensor: then each row b of the two Un-Mix losses is weighted
    lam_b / 1 - lam_b (the per-row reading). ``partner``: the flip order, default the reversed batch."""
    b = high[0].shape[0]
    crops = list(high) + list(low)
    swapped = list(crops)
    for j, m in enumerate(mixed):
        swapped[2 * j] = m
    order = torch.arange(b - 1, -1, -1) if partner is None else partner
    ori = script_swav_rows(crops, len(high), queue, **kw)
    unmix = script_swav_rows(swapped, len(high), queue, **kw)
    flip = script_swav_rows(swapped, len(high), queue, order=order, **kw)
    if isinstance(lam, float):
        return ori.mean() + lam * unmix.mean() + (1 - lam) * flip.mean()
    return (ori + lam * unmix + (1 - lam) * flip).mean()


# ------------------------------------------------------------------------------------------------- helpers
def _crops(n, b, k, seed, dtype=torch.float64):
    # cosine similarities of unit embeddings and unit prototypes, as SwAV's scores
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        z = F.normalize(torch.randn(b, 16, generator=g, dtype=torch.float64), dim=1)
        p = F.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
        out.append((z @ p.t()).to(dtype).requires_grad_())
    return out


def _grads(loss, inputs):
    # Scores that are only a code source (a lone large crop) get no gradient: compared as zeros.
    gs = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs)]


def _require(backend, scores):
    reason = REGISTRY["sinkhorn"].reasons(scores.detach(), False)[backend]
    if reason is not None:
        pytest.skip(f"sinkhorn backend {backend!r} cannot run here: {reason}")


# (H, L, M): the CIFAR script's 2 crops + 1 mixture; multi-crop with the mixture of crop 0 only; the ImageNet
# script's pairing (mixtures of crops 0, 2, 4: two of them small); three large crops (mixture 1 replaces the
# large crop 2, whose codes are then the mixture's own).
LAYOUTS = [(2, 0, 1), (2, 3, 1), (2, 4, 3), (3, 1, 2)]


# ----------------------------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("k", [5, 100])
@pytest.mark.parametrize("b", [1, 6, 7])
@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"H{h}L{l}M{m}" for h, l, m in LAYOUTS])
@pytest.mark.parametrize("with_queue", [False, True], ids=["noqueue", "queue"])
def test_matches_script_float64(layout, b, k, backend, with_queue):
    n_high, n_low, n_mixed = layout
    high, low, mixed = _crops(n_high, b, k, 1), _crops(n_low, b, k, 2), _crops(n_mixed, b, k, 3)
    _require(backend, high[0])
    queue = [t.detach() for t in _crops(n_high, 9, k, 4)] if with_queue else None
    lam = float(torch.rand((), generator=torch.Generator().manual_seed(b * k)).item())
    inputs = high + low + mixed
    want = script_unmix_swav(high, low, mixed, lam, queue=queue)
    want_g = _grads(want, inputs)
    got = AF.swav_loss(high, low, queue, mixed_outputs=mixed, mix_lam=lam, mix_form="authors", backend=backend)
    got_g = _grads(got, inputs)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert_close_to_reference([got.detach(), *got_g], [want.detach(), *want_g], None,
                              ["loss"] + [f"grad_crop{i}" for i in range(len(inputs))])  # float64: the oracle


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("layout", [(2, 0, 1), (2, 4, 3)], ids=["H2L0M1", "H2L4M3"])
def test_fp32_against_float64(layout, backend):
    # fp32 scores are compared with the float64 oracle on the same (rounded) values, the oracle's arithmetic in
    # fp32 (its codes computed in fp32 from scores / epsilon of magnitude up to 20: no overflow) the yardstick.
    n_high, n_low, n_mixed = layout
    b, k = 9, 100
    high, low, mixed = (_crops(n, b, k, s, torch.float32) for n, s in ((n_high, 5), (n_low, 6), (n_mixed, 7)))
    _require(backend, high[0])
    lam = 0.37
    inputs = high + low + mixed
    got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam, mix_form="authors", backend=backend)
    got_g = torch.autograd.grad(got, inputs)
    assert got.dtype == torch.float32
    results = []
    for dtype in (torch.float64, torch.float32):  # the reference; the same-precision yardstick
        xs = [t.detach().to(dtype).requires_grad_() for t in inputs]
        want = script_unmix_swav(xs[:n_high], xs[n_high:n_high + n_low], xs[n_high + n_low:], lam, dtype=dtype)
        results.append([want.detach(), *torch.autograd.grad(want, xs)])
    assert_close_to_reference([got.detach(), *got_g], *results,
                              ["loss"] + [f"grad_crop{i}" for i in range(len(inputs))])


@pytest.mark.parametrize("b", [5, 8])
def test_per_sample_lam_and_partner(b):
    """A [B] lam weights row b of L_unmix by lam_b and of L_unmix_flip by 1 - lam_b; a constant [B] lam and a
    0-dim lam equal the float; an explicit reversed partner equals the default; a permutation partner is the
    flip order."""
    k = 12
    high, low, mixed = _crops(2, b, k, 8), _crops(2, b, k, 9), _crops(2, b, k, 10)
    inputs = high + low + mixed
    g = torch.Generator().manual_seed(b)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    perm = torch.randperm(b, generator=g)
    for partner in (None, perm):
        want = script_unmix_swav(high, low, mixed, lam, partner=partner)
        got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam, mix_partner=partner, mix_form="authors")
        assert_close_to_reference([got.detach(), *_grads(got, inputs)], [want.detach(), *_grads(want, inputs)],
                                  None, "loss and gradients")  # float64: the oracle
    scalar = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=0.3, mix_form="authors")
    rev = torch.arange(b - 1, -1, -1)
    for lam_t, partner in ((torch.full((b,), 0.3, dtype=torch.float64), None),
                           (torch.tensor(0.3, dtype=torch.float64), rev)):
        torch.testing.assert_close(AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam_t, mix_partner=partner,
                                                mix_form="authors"), scalar)


@pytest.mark.parametrize("b", [1, 6])
def test_lam_one_is_two_plain_swav_losses(b):
    """lam = 1 (or partner = identity, or B = 1 with the reversed batch): L = S(crops) + S(crops with crop 2j
    replaced by mixture j), two plain SwAV losses; with mixture = crop 0 that is twice the plain loss."""
    k = 10
    high, low, mixed = _crops(2, b, k, 11), _crops(2, b, k, 12), _crops(1, b, k, 13)
    inputs = high + low + mixed
    plain = AF.swav_loss(high, low) + AF.swav_loss([mixed[0], high[1]], low)
    plain_g = _grads(plain, inputs)
    lam = torch.rand(b, dtype=torch.float64)
    for lam_, partner in ((1.0, None), (lam, torch.arange(b))) + (((lam, None),) if b == 1 else ()):
        got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam_, mix_partner=partner, mix_form="authors")
        assert_close_to_reference([got.detach(), *_grads(got, inputs)], [plain.detach(), *plain_g], None,
                                  "loss and gradients")  # float64 both
    twice = AF.swav_loss(high, low, mixed_outputs=[high[0]], mix_lam=1.0, mix_form="authors")
    assert_close_to_reference(twice, 2 * AF.swav_loss(high, low), None, "loss (mixture = crop 0)")


def test_soft_form_is_the_default_and_no_mixture_is_plain_swav():
    b, k = 6, 9
    high, low, mixed = _crops(2, b, k, 14), _crops(1, b, k, 15), _crops(1, b, k, 16)
    default = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=0.4)
    assert torch.equal(AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=0.4, mix_form="soft"), default)
    authors = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=0.4, mix_form="authors")
    assert not torch.allclose(authors, default)
    plain = AF.swav_loss(high, low)
    assert torch.equal(AF.swav_loss(high, low, mix_form="authors"), plain)
    assert torch.equal(AF.swav_loss(high, low, mixed_outputs=[], mix_form="authors"), plain)


def test_gradcheck_float64():
    # Codes carry no gradient (SwAV's stop-gradient), so the code crops (the large crops and mixture 0, which
    # replaces crop 0) are held fixed; the small crops, mixture 1 (replacing small crop 0) and lam are checked.
    b, k = 5, 6
    high = [t.detach() for t in _crops(2, b, k, 17)]
    low, mixed = _crops(2, b, k, 18), _crops(2, b, k, 19)
    m0 = mixed[0].detach()
    lam = torch.rand(b, dtype=torch.float64).requires_grad_()
    partner = torch.tensor([4, 0, 2, 1, 3])

    def f(l0, l1, m1, lm):
        return AF.swav_loss(high, [l0, l1], mixed_outputs=[m0, m1], mix_lam=lm, mix_partner=partner,
                            mix_form="authors")

    assert torch.autograd.gradcheck(f, (low[0], low[1], mixed[1], lam))


def test_torch_compile_fullgraph():
    b, k = 6, 8
    high, low, mixed = (_crops(n, b, k, s, torch.float32) for n, s in ((2, 20), (2, 21), (2, 22)))
    lam = torch.rand(b)

    def f(h0, h1, l0, l1, m0, m1):
        return AF.swav_loss([h0, h1], [l0, l1], mixed_outputs=[m0, m1], mix_lam=lam, mix_form="authors",
                            backend="reference")

    want = f(*high, *low, *mixed)
    got = torch.compile(f, fullgraph=True, backend="eager")(*high, *low, *mixed)
    torch.testing.assert_close(got, want)


def test_module_option():
    b, k = 6, 9
    high, low, mixed = _crops(2, b, k, 23), _crops(2, b, k, 24), _crops(1, b, k, 25)
    queue = [t.detach() for t in _crops(2, 10, k, 26)]
    module = SwaVLoss(temperature=0.2, sinkhorn_iterations=2, sinkhorn_epsilon=0.1, mix_form="authors")
    assert "mix_form='authors'" in repr(module) and "mix_form" not in repr(SwaVLoss())
    got = module(high, low, queue, mixed_outputs=mixed, mix_lam=0.6)
    want = script_unmix_swav(high, low, mixed, 0.6, queue=queue, temperature=0.2, iterations=2, epsilon=0.1)
    assert got.shape == (1,)
    assert_close_to_reference(got[0], want, None, "loss")  # float64: the oracle
    soft = SwaVLoss(temperature=0.2, sinkhorn_iterations=2, sinkhorn_epsilon=0.1)
    torch.testing.assert_close(soft(high, low, queue, mixed_outputs=mixed, mix_lam=0.6)[0],
                               AF.swav_loss(high, low, queue, temperature=0.2, sinkhorn_iterations=2,
                                            sinkhorn_epsilon=0.1, mixed_outputs=mixed, mix_lam=0.6))
    with pytest.raises(ValueError, match="mix_form must be 'soft' or 'authors'"):
        SwaVLoss(mix_form="author")


def test_errors_name_mix_form():
    h = _crops(2, 4, 6, 27)
    m = _crops(1, 4, 6, 28)
    for bad in ("Authors", "authors ", "", None, 1, ["soft"]):
        with pytest.raises(ValueError, match="mix_form must be 'soft'"):
            AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_form=bad)
    with pytest.raises(ValueError, match=r"mix_form='authors': .* at least two crops"):
        AF.swav_loss(h[:1], [], mixed_outputs=m, mix_lam=0.5, mix_form="authors")
    with pytest.raises(ValueError, match=r"mix_form='authors': mixed_outputs\[j\] replaces crop 2j, so 2 crops take "
                                         r"at most 1 mixtures, got 2"):
        AF.swav_loss(h, [], mixed_outputs=m + m, mix_lam=0.5, mix_form="authors")
    # the Un-Mix argument checks are those of the soft form
    with pytest.raises(ValueError, match="mix_lam is required"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_form="authors")
    with pytest.raises(ValueError, match=r"mix_lam must be a float or a tensor of shape \[B\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=torch.rand(4, 1), mix_form="authors")
    with pytest.raises(ValueError, match=r"mix_lam must lie in \[0, 1\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=-0.1, mix_form="authors")
    with pytest.raises(ValueError, match=r"mix_partner holds indices outside"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.tensor([0, 1, 2, 9]), mix_form="authors")


# ------------------------------------------------------------------------------------------ training driver
def test_driver_method_computes_the_authors_loss():
    """The SwAV method with swav_form="authors": x1's mixture goes through the encoder with x1 and x2 (one
    batch, as main_swav_unmix.py) and the loss is swav_loss(..., mix_form="authors") of those scores."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 3, True)
    cfg = dict(alpha=1.0, prob_mixup=0.5, per_sample=False)
    method = build_method("swav", backbone, dim, n_prototypes=16, queue_size=0, unmix=dict(cfg, swav_form="authors"))
    assert method.unmix_form == "authors"
    g = torch.Generator().manual_seed(0)
    x1, x2, s1 = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g), \
        torch.randn(6, 3, 6, 6, generator=g)
    method.set_rng(torch.Generator().manual_seed(5))
    loss = method(x1, x2, s1)
    method.set_rng(torch.Generator().manual_seed(5))
    x_mix, lam, partner = method.mix(x1)
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(torch.cat([x1, x2, x_mix]))), dim=1)
        zs = F.normalize(method.projector(method.backbone(s1)), dim=1)
        scores = method.prototypes(torch.cat([z, zs])).split(6)

        def authors_loss(s):  # with the method's own settings (its Sinkhorn epsilon is 0.02, not the default)
            return AF.swav_loss(s[:2], s[3:], mixed_outputs=[s[2]], mix_lam=lam, mix_partner=partner,
                                mix_form="authors", temperature=method.temperature,
                                sinkhorn_iterations=method.iterations, sinkhorn_epsilon=method.epsilon)

        want = authors_loss([s.double() for s in scores])
        assert_close_to_reference(loss.detach(), want, authors_loss(scores), "loss")
    assert build_method("swav", backbone, dim, n_prototypes=16, unmix=cfg).unmix_form == "soft"
    with pytest.raises(ValueError, match="swav_form"):
        build_method("swav", backbone, dim, n_prototypes=16, unmix=dict(cfg, swav_form="hard"))


def test_driver_runs_one_epoch_with_the_authors_form(tmp_path):
    out = str(tmp_path / "run")
    assert main(["--method", "swav", "--unmix", "--unmix-swav-form", "authors", "--data", "synthetic",
                 "--image-size", "8", "--batch-size", "16", "--epochs", "1", "--no-progress", "--no-baseline",
                 "--out", out]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    assert m["method"] == "swav" and m["unmix"] is True and m["epochs"] == 1
    assert m["config"]["unmix_swav_form"] == "authors"
    assert torch.isfinite(torch.tensor(m["final_loss"]))
