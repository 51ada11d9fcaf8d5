"""The Un-Mix variant of the SwAV loss (augcl.functional.swav_loss / augcl.nn.SwaVLoss with mixed_outputs):
against a literal eager float64 implementation written here (values and gradients), its reductions (lam = 1 or
partner = identity is an ordinary extra crop; lam = 0 is the partner's codes), odd batches, the queue, the
module's keyword call, gradcheck, torch.compile, and argument errors naming the argument.

Numeric comparisons follow the rule of tests/_tolerance.py: the literal implementation in float64 is the reference,
and for fp32 / fp16 scores the same literal implementation accumulated in fp32 (its gradients rounded back to the
scores' dtype) is the same-precision yardstick; in float64 the literal implementation is both."""
import pytest
import torch
import torch.nn.functional as F

from augcl import functional as AF
from augcl.nn import SwaVLoss
from augcl.reference.sinkhorn import sinkhorn_naive_reference
from _tolerance import assert_close_to_reference


def literal_unmix_swav(high, low, mixed, lam, partner, queue=None, temperature=0.1, iterations=3, epsilon=0.05,
                       dtype=torch.float64):
    """Un-Mix SwAV loss, written out literally: loops over code crops, predicting crops and rows; codes from
    SwAV's literal Sinkhorn in ``dtype`` (float64: the oracle). lam [B] float, partner [B] long."""
    n_crops = len(high) + len(low) + len(mixed)
    b = high[0].shape[0]

    def ce(q, z):  # -mean_b sum_k q_bk log_softmax(z_b / T)_k, as lightly's subloss
        return -torch.mean(torch.sum(q * F.log_softmax(z / temperature, dim=1), dim=1))

    loss = 0.0
    for i in range(len(high)):
        with torch.no_grad():
            out = high[i].detach().to(dtype)
            if queue is not None:
                out = torch.cat([out, queue[i].to(dtype)])
            q = sinkhorn_naive_reference(out, epsilon, iterations, dtype=dtype)[:b]
            q_mix = torch.empty_like(q)
            for r in range(b):
                q_mix[r] = lam[r] * q[r] + (1 - lam[r]) * q[int(partner[r])]
        sub = 0.0
        for v, z in enumerate(high):
            if v != i:
                sub = sub + ce(q, z)
        for z in low:
            sub = sub + ce(q, z)
        for z in mixed:
            sub = sub + ce(q_mix, z)
        loss = loss + sub / (n_crops - 1)
    return loss / len(high)


def _crops(n, b, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, k, generator=g, dtype=torch.float64).tanh().to(dtype).requires_grad_() for _ in range(n)]


def _grads(loss, inputs):
    # A lone large crop is only a code source (no gradient): its gradient is None, compared as zeros.
    gs = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs)]


def _lam_partner(b, seed):
    g = torch.Generator().manual_seed(seed)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    partner = torch.randperm(b, generator=g)
    return lam, partner


@pytest.mark.parametrize("b", [1, 7, 12])
@pytest.mark.parametrize("n_high,n_low,n_mixed", [(2, 0, 1), (2, 3, 2), (1, 0, 1), (3, 1, 1)])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_matches_literal_float64(b, n_high, n_low, n_mixed, backend):
    k = 11
    high, low, mixed = _crops(n_high, b, k, 1), _crops(n_low, b, k, 2), _crops(n_mixed, b, k, 3)
    lam, partner = _lam_partner(b, b)
    inputs = high + low + mixed
    want = literal_unmix_swav(high, low, mixed, lam, partner)
    want_g = _grads(want, inputs)
    try:
        got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam, mix_partner=partner, backend=backend)
    except Exception as exc:  # the cpu backend needs augcl._C
        if backend == "cpu" and "cannot run" in str(exc):
            pytest.skip(f"cpu backend unavailable: {exc}")
        raise
    got_g = _grads(got, inputs)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert_close_to_reference([got.detach(), *got_g], [want.detach(), *want_g], None,
                              ["loss"] + [f"grad_crop{i}" for i in range(len(inputs))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_inputs_against_float64(dtype):
    # fp16/fp32 scores are rounded once; the loss is computed in fp32 from those rounded values, so it is
    # compared with the float64 literal loss of the same rounded inputs.
    b, k = 9, 40
    high, low, mixed = _crops(2, b, k, 4, dtype), _crops(2, b, k, 5, dtype), _crops(1, b, k, 6, dtype)
    lam, partner = _lam_partner(b, 0)
    got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam.float(), mix_partner=partner)
    got_g = torch.autograd.grad(got, high + low + mixed)
    assert got.dtype == torch.float32
    results = []
    for acc in (torch.float64, torch.float32):  # the reference; the yardstick (its gradients rounded to dtype)
        inputs = [t.detach().to(acc).requires_grad_() for t in high + low + mixed]
        want = literal_unmix_swav(inputs[:2], inputs[2:4], inputs[4:], lam.to(acc), partner, dtype=acc)
        grads = torch.autograd.grad(want, inputs)
        results.append([want.detach(), *(g if acc == torch.float64 else g.to(dtype) for g in grads)])
    assert_close_to_reference([got.detach(), *got_g], *results, ["loss"] + [f"grad_crop{i}" for i in range(len(got_g))])


@pytest.mark.parametrize("b", [5, 8])
def test_lam_one_or_identity_partner_is_an_ordinary_crop(b):
    k = 13
    high, low, mixed = _crops(2, b, k, 7), _crops(2, b, k, 8), _crops(1, b, k, 9)
    plain = AF.swav_loss(high, low + mixed)
    plain_g = torch.autograd.grad(plain, high + low + mixed)
    _, partner = _lam_partner(b, 1)
    for lam, part in ((1.0, partner), (torch.rand(b, dtype=torch.float64), torch.arange(b))):
        got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam, mix_partner=part)
        assert_close_to_reference([got.detach(), *torch.autograd.grad(got, high + low + mixed)],
                                  [plain.detach(), *plain_g], None, "loss and gradients")  # float64 both


def test_lam_zero_targets_the_partner_codes_and_default_partner_is_reversed():
    b, k = 7, 10
    high, low, mixed = _crops(2, b, k, 10), _crops(1, b, k, 11), _crops(1, b, k, 12)
    rev = torch.arange(b - 1, -1, -1)
    lam0 = torch.zeros(b, dtype=torch.float64)
    got = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam0)  # default partner: reversed batch
    want = literal_unmix_swav(high, low, mixed, lam0, rev)
    assert_close_to_reference(got, want, None, "loss")  # float64: the literal loss is the reference
    # lam = 0 with the reversed partner = an ordinary crop whose rows are in reversed order (codes of b-1-i)
    flipped = [m.flip(0) for m in mixed]
    lam_rev_crop = AF.swav_loss(high, low + flipped)
    assert_close_to_reference(got, lam_rev_crop, None, "loss (lam 0)")
    # a float lam equals the same value as a [B] tensor and as a 0-dim tensor
    a = AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=0.3)
    for lam in (torch.full((b,), 0.3, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)):
        torch.testing.assert_close(AF.swav_loss(high, low, mixed_outputs=mixed, mix_lam=lam), a)


def test_with_queue_and_module_keyword_call():
    b, k = 6, 9
    high, low, mixed = _crops(2, b, k, 13), _crops(2, b, k, 14), _crops(1, b, k, 15)
    queue = [t.detach() for t in _crops(2, 10, k, 16)]
    lam, partner = _lam_partner(b, 2)
    want = literal_unmix_swav(high, low, mixed, lam, partner, queue=queue, temperature=0.2, iterations=2,
                              epsilon=0.1)
    module = SwaVLoss(temperature=0.2, sinkhorn_iterations=2, sinkhorn_epsilon=0.1)
    got = module(high, low, queue, mixed_outputs=mixed, mix_lam=lam, mix_partner=partner)
    assert got.shape == (1,)
    assert_close_to_reference(got[0], want, None, "loss")  # float64
    # lightly's positional call is unchanged
    torch.testing.assert_close(module(high, low, queue)[0], AF.swav_loss(high, low, queue, temperature=0.2,
                                                                        sinkhorn_iterations=2, sinkhorn_epsilon=0.1))


def test_gradcheck_float64():
    # Codes carry no gradient (SwAV's stop-gradient), so the high-resolution crops are held fixed here (a
    # numerical derivative through them would see the codes move); low crops, mixtures and lam are checked.
    b, k = 5, 6
    high = [t.detach() for t in _crops(2, b, k, 17)]
    low, mixed = _crops(1, b, k, 18), _crops(2, b, k, 19)
    lam = torch.rand(b, dtype=torch.float64).requires_grad_()
    partner = torch.tensor([4, 0, 2, 1, 3])

    def f(l0, m0, m1, lm):
        return AF.swav_loss(high, [l0], mixed_outputs=[m0, m1], mix_lam=lm, mix_partner=partner)

    assert torch.autograd.gradcheck(f, (low[0], mixed[0], mixed[1], lam))


def test_torch_compile_fullgraph():
    b, k = 6, 8
    high, low, mixed = _crops(2, b, k, 20, torch.float32), _crops(1, b, k, 21, torch.float32), \
        _crops(1, b, k, 22, torch.float32)
    lam, partner = torch.rand(b), torch.randperm(b)

    def f(h0, h1, l0, m0):
        return AF.swav_loss([h0, h1], [l0], mixed_outputs=[m0], mix_lam=lam, mix_partner=partner,
                            backend="reference")

    want = f(*high, *low, *mixed)
    got = torch.compile(f, fullgraph=True, backend="eager")(*high, *low, *mixed)
    torch.testing.assert_close(got, want)


def test_errors_name_the_argument():
    h = [torch.randn(4, 6), torch.randn(4, 6)]
    m = [torch.randn(4, 6)]
    with pytest.raises(ValueError, match="mix_lam is given but mixed_outputs"):
        AF.swav_loss(h, [], mix_lam=0.5)
    with pytest.raises(ValueError, match="mix_partner is given but mixed_outputs"):
        AF.swav_loss(h, [], mixed_outputs=[], mix_partner=torch.arange(4))
    with pytest.raises(ValueError, match="mix_lam is required"):
        AF.swav_loss(h, [], mixed_outputs=m)
    with pytest.raises(ValueError, match=r"mixed_outputs\[0\] has shape"):
        AF.swav_loss(h, [], mixed_outputs=[torch.randn(5, 6)], mix_lam=0.5)
    with pytest.raises(ValueError, match=r"mixed_outputs\[0\] is on"):
        AF.swav_loss(h, [], mixed_outputs=[torch.randn(4, 6, device="meta")], mix_lam=0.5)
    with pytest.raises(TypeError, match=r"mixed_outputs\[0\] must be float16"):
        AF.swav_loss(h, [], mixed_outputs=[torch.zeros(4, 6, dtype=torch.long)], mix_lam=0.5)
    with pytest.raises(ValueError, match=r"mix_lam must be a float or a tensor of shape \[B\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=torch.rand(3))
    with pytest.raises(TypeError, match="mix_lam must be a float or a floating tensor"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=torch.ones(4, dtype=torch.long))
    with pytest.raises(TypeError, match="mix_lam must be a float or a floating tensor"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=True)
    with pytest.raises(ValueError, match=r"mix_lam must lie in \[0, 1\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=1.5)
    with pytest.raises(ValueError, match=r"mix_lam must lie in \[0, 1\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with pytest.raises(ValueError, match="mix_lam is on"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=torch.rand(4, device="meta"))
    with pytest.raises(TypeError, match="mix_partner must be an integer tensor"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.zeros(4))
    with pytest.raises(TypeError, match="mix_partner must be an integer tensor"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=[3, 2, 1, 0])
    with pytest.raises(ValueError, match=r"mix_partner must have shape \[B\]"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.arange(5))
    with pytest.raises(ValueError, match=r"mix_partner holds indices outside \[0, 4\)"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"mix_partner holds indices outside"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="mix_partner is on"):
        AF.swav_loss(h, [], mixed_outputs=m, mix_lam=0.5, mix_partner=torch.arange(4, device="meta"))
    # one large crop and one mixture are enough crops; one large crop alone is not
    assert torch.isfinite(AF.swav_loss(h[:1], [], mixed_outputs=m, mix_lam=0.5))
    with pytest.raises(ValueError, match="at least two crops"):
        AF.swav_loss(h[:1], [])
