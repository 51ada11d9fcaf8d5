"""Un-Mix loss (augcl.nn.unmix / augcl.functional.unmix_info_nce, unmix_nt_xent) and the augcl.nn.UnMix module.

Oracles are literal eager implementations with the redundant third GEMM:

* ``moco_reference_literal`` transcribes szq0214/Un-Mix ``UnMix_MoCo/for_ImageNet/moco/builder.py`` +
  ``unmix_c10.py``: normalise q, q_mix, flip(q_mix), k; three [N, 1 + K] logit matrices; three cross-entropies;
  ``loss = CE + lam CE_m + (1 - lam) CE_m_flip`` (scalar lam, reversed partner);
* ``moco_per_row_literal``: the per-sample generalisation, the second mixture term built as its own GEMM of q_mix
  against [k[partner]; queue];
* ``moco_soft_literal`` / ``simclr_literal``: dense [rows, candidates] soft-target cross-entropies.

Values and gradients follow the rule of tests/_tolerance.py: the literal oracle on float64 copies of the inputs is
the reference, the same oracle at the inputs' precision the yardstick (in float64 the oracle is both).
"""
import pytest
import torch
import torch.nn.functional as F

import augcl
from augcl import functional as AF
from augcl.nn import UnMix
from conftest import require_backend
from _tolerance import assert_close_to_reference, float64_inputs

BACKENDS = [None, "reference", "cpu"]


def leaves(*shapes, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype).requires_grad_() for s in shapes]


def value_and_grads(fn, inputs):
    out = fn(*inputs)
    return [out.detach(), *torch.autograd.grad(out, inputs)]


def assert_matches_literal(ours, literal, inputs, scale=None):
    """Value and input gradients of ``ours(*inputs)`` within the tolerance rule: the reference is ``literal`` on
    float64 copies of the inputs, the yardstick ``literal`` on the inputs themselves (``scale``: the rule's)."""
    got = value_and_grads(ours, inputs)
    assert_close_to_reference(got, value_and_grads(literal, float64_inputs(*inputs)), value_and_grads(literal, inputs),
                              ["loss"] + [f"grad[{i}]" for i in range(len(inputs))], scale=scale)


# ------------------------------------------------------------------------------------------------ oracles
def _ce_first(logits):
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))


def moco_reference_literal(q, k, q_mix, queue, lam, t):
    q = F.normalize(q, dim=1)
    q_mixed = F.normalize(q_mix, dim=1)
    q_mixed_flip = F.normalize(torch.flip(q_mix, (0,)), dim=1)
    k = F.normalize(k, dim=1)
    qt = queue.T  # the reference stores the queue as [D, K]
    logits = torch.cat([torch.einsum("nc,nc->n", q, k)[:, None], q @ qt], 1) / t
    logits_m = torch.cat([torch.einsum("nc,nc->n", q_mixed, k)[:, None], q_mixed @ qt], 1) / t
    logits_m_flip = torch.cat([torch.einsum("nc,nc->n", q_mixed_flip, k)[:, None], q_mixed_flip @ qt], 1) / t
    return _ce_first(logits) + lam * _ce_first(logits_m) + (1 - lam) * _ce_first(logits_m_flip)


def _ce_rows(logits):
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long), reduction="none")


def moco_per_row_literal(q, k, q_mix, queue, lam, partner, t, reduction="mean"):
    q, k, m = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(q_mix, dim=1)
    clean = _ce_rows(torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / t)
    own = _ce_rows(torch.cat([(m * k).sum(1, keepdim=True), m @ queue.T], 1) / t)
    kp = k[partner]
    other = _ce_rows(torch.cat([(m * kp).sum(1, keepdim=True), m @ queue.T], 1) / t)  # the third GEMM
    rows = clean + lam * own + (1 - lam) * other
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


def soft_ce(logits, target):
    return (torch.logsumexp(logits, 1) * target.sum(1) - (target * logits).sum(1))


def moco_soft_literal(q, k, q_mix, queue, lam, partner, t, key_negatives=False):
    """Dense soft-target CE: candidates [k; queue]; MoCo masks the keys that are not a row's positive."""
    q, k, m = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(q_mix, dim=1)
    b = q.shape[0]
    cands = k if queue is None else torch.cat([k, queue], 0)
    eye = torch.eye(b, cands.shape[0], dtype=q.dtype)
    t_clean = eye
    t_mix = lam[:, None] * eye + (1 - lam)[:, None] * eye[partner]
    rows = []
    for a, tgt in ((q, t_clean), (m, t_mix)):
        logits = a @ cands.T / t
        if not key_negatives:
            keep = torch.ones_like(logits, dtype=torch.bool)
            keep[:, :b] = tgt[:, :b] > 0
            logits = logits.masked_fill(~keep, float("-inf"))
        rows.append(soft_ce(logits.masked_fill(torch.isinf(logits), -1e30), tgt))
    return (rows[0] + rows[1]).mean()


def simclr_literal(z1, z2, zm, lam, partner, t):
    """NT-Xent of [z1; z2] + per-mixture lam CE(->z2_i) + (1 - lam) CE(->z2_p), each CE over its own GEMM."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = F.normalize(zm, dim=1)
    sim = z @ z.T / t
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    clean = F.cross_entropy(sim, target)
    rows = torch.arange(b)
    mask = torch.zeros(b, 2 * b, dtype=torch.bool)
    mask[rows, rows] = True
    mask[rows, partner] = True
    own = F.cross_entropy((m @ z.T / t).masked_fill(mask, float("-inf")), b + rows, reduction="none")
    other = F.cross_entropy((m @ z.T / t).masked_fill(mask, float("-inf")), b + partner, reduction="none")
    return clean + (lam * own + (1 - lam) * other).mean()


# ------------------------------------------------------------------------------------------- MoCo form
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,d,k,lam,t", [(8, 16, 32, 0.3, 0.2), (5, 7, 13, 0.91, 0.1), (2, 3, 1, 0.0, 0.5)])
def test_moco_matches_reference_code(backend, dtype, b, d, k, lam, t):
    require_backend(backend or "reference")
    q, key, qm = leaves((b, d), (b, d), (b, d), dtype=dtype, scale=2.0)
    queue = F.normalize(torch.randn(k, d, dtype=torch.float64), dim=1).to(dtype).requires_grad_()
    inputs = [q, key, qm, queue]
    assert_matches_literal(lambda *a: AF.unmix_info_nce(a[0], a[1], a[2], lam, None, a[3], t, backend=backend),
                           lambda *a: moco_reference_literal(*a, lam, t), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_moco_per_sample_lam_and_any_partner(backend, reduction):
    b, d, k = 9, 12, 17
    q, key, qm, queue = leaves((b, d), (b, d), (b, d), (k, d), seed=1)
    lam = torch.rand(b, dtype=torch.float64)
    lam[0], lam[1] = 0.0, 1.0
    partner = torch.randint(0, b, (b,))
    assert_matches_literal(lambda *a: AF.unmix_info_nce(*a[:3], lam, partner, a[3], 0.15, reduction=reduction,
                                                        backend=backend).sum(),
                           lambda *a: moco_per_row_literal(*a, lam, partner, 0.15, reduction).sum(), [q, key, qm, queue])


@pytest.mark.parametrize("backend", [None, "reference"])
def test_moco_soft_form(backend):
    b, d, k = 7, 10, 11
    q, key, qm, queue = leaves((b, d), (b, d), (b, d), (k, d), seed=2)
    lam = torch.rand(b, dtype=torch.float64)
    partner = torch.arange(b - 1, -1, -1)
    soft = lambda *a: AF.unmix_info_nce(*a[:3], lam, partner, a[3], 0.2, form="soft", backend=backend)  # noqa: E731
    assert_matches_literal(soft, lambda *a: moco_soft_literal(*a, lam, partner, 0.2), [q, key, qm, queue])
    # The two forms are different numbers with a queue (each positive sits in the other's denominator) ...
    ref = AF.unmix_info_nce(q, key, qm, lam, partner, queue, 0.2)
    assert not torch.allclose(ref, soft(q, key, qm, queue).detach(), rtol=1e-6)


@pytest.mark.parametrize("with_queue", [True, False])
def test_moco_key_negatives_forms_coincide(with_queue):
    # ... but the same number when every key is a negative of every row.
    b, d, k = 6, 8, 9
    q, key, qm, queue = leaves((b, d), (b, d), (b, d), (k, d), seed=3)
    queue = queue if with_queue else None
    lam = torch.rand(b, dtype=torch.float64)
    partner = torch.randperm(b)
    ins = [q, key, qm] + ([queue] if with_queue else [])
    literal = lambda *a: moco_soft_literal(*a[:3], a[3] if with_queue else None, lam, partner, 0.3,  # noqa: E731
                                           key_negatives=True)
    for form in ("reference", "soft"):
        assert_matches_literal(lambda *a: AF.unmix_info_nce(*a[:3], lam, partner, a[3] if with_queue else None, 0.3,
                                                            key_negatives=True, form=form), literal, ins)


def test_moco_bf16_inputs_fp32_loss():
    b, d, k = 8, 16, 24
    q, key, qm, queue = (t.detach() for t in leaves((b, d), (b, d), (b, d), (k, d), seed=4))
    lo = [t.to(torch.bfloat16) for t in (q, key, qm, queue)]
    got = AF.unmix_info_nce(*lo[:3], 0.4, None, lo[3], 0.2)
    assert got.dtype == torch.float32
    # the yardstick: the whole literal formula run in bf16
    exact = moco_reference_literal(*[t.double() for t in lo[:3]], lo[3].double(), 0.4, 0.2)
    assert_close_to_reference(got, exact, moco_reference_literal(*lo[:3], lo[3], 0.4, 0.2), "loss")


def test_moco_gradcheck():
    b, d, k = 4, 5, 6
    q, key, qm, queue = leaves((b, d), (b, d), (b, d), (k, d), seed=5)
    lam = torch.rand(b, dtype=torch.float64)
    partner = torch.tensor([3, 0, 0, 2])
    for form in ("reference", "soft"):
        assert torch.autograd.gradcheck(
            lambda *a: AF.unmix_info_nce(*a[:3], lam, partner, a[3], 0.3, form=form), (q, key, qm, queue))


# ----------------------------------------------------------------------------------------- SimCLR form
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,d", [(8, 16), (5, 3), (1, 4)])
def test_simclr_form_matches_literal(backend, dtype, b, d):
    require_backend(backend or "reference")
    z1, z2, zm = leaves((b, d), (b, d), (b, d), dtype=dtype, seed=6, scale=2.0)
    lam = torch.rand(b, dtype=torch.float64)
    partner = torch.arange(b - 1, -1, -1)
    # B = 1: each row's only candidate is its positive, so the gradients are p - 1 = 0 exactly in the oracle, a
    # difference of terms of size 1 / T (the rule's scale for them) that a fused logsumexp rounds to ~1 ulp of that
    assert_matches_literal(lambda *a: AF.unmix_nt_xent(*a, lam, partner, 0.5, backend=backend),
                           lambda *a: simclr_literal(*a, lam.to(a[0].dtype), partner, 0.5), [z1, z2, zm],
                           scale=[None] + [1 / 0.5] * 3 if b == 1 else None)


def test_simclr_gradcheck_and_noncontiguous():
    b, d = 4, 6
    z1, z2, zm = leaves((b, d), (b, d), (b, d), seed=7)
    lam, partner = torch.rand(b, dtype=torch.float64), torch.tensor([1, 0, 3, 3])
    assert torch.autograd.gradcheck(lambda *a: AF.unmix_nt_xent(*a, lam, partner, 0.4), (z1, z2, zm))
    wide = torch.randn(d, b, dtype=torch.float64)  # transposed: non-contiguous rows
    got = AF.unmix_nt_xent(wide.T, z2, zm, lam, partner, 0.4)
    want = simclr_literal(wide.T.contiguous(), z2, zm, lam, partner, 0.4)
    assert_close_to_reference(got, want, None, "loss")  # float64: the literal oracle


def test_simclr_reductions():
    b, d = 6, 5
    z1, z2, zm = (t.detach() for t in leaves((b, d), (b, d), (b, d), seed=8))
    rows = AF.unmix_nt_xent(z1, z2, zm, 0.25, reduction="none")
    assert rows.shape == (3 * b,)
    # float64 throughout: each right-hand side is the reference and the eager computation
    assert_close_to_reference(AF.unmix_nt_xent(z1, z2, zm, 0.25, reduction="sum"), rows.sum(), None, "sum")
    assert_close_to_reference(AF.unmix_nt_xent(z1, z2, zm, 0.25), rows[:2 * b].mean() + rows[2 * b:].mean(), None,
                              "mean")
    # with lam = 1 the mixture row is a plain InfoNCE of z_mix against z2_i (z1_i excluded)
    assert_close_to_reference(AF.unmix_nt_xent(z1, z2, zm, 1.0), simclr_literal(
        z1, z2, zm, torch.ones(b, dtype=torch.float64), torch.arange(b - 1, -1, -1), 0.5), None, "lam = 1")


# ----------------------------------------------------------------------------------------------- errors
def test_bad_input_errors_name_the_argument():
    q, k, m, queue = (t.detach() for t in leaves((4, 3), (4, 3), (4, 3), (5, 3)))
    with pytest.raises(ValueError, match="k must have 4 rows"):
        AF.unmix_info_nce(q, k[:3], m, 0.5, None, queue)
    with pytest.raises(ValueError, match="q_mix must have 3 features"):
        AF.unmix_info_nce(q, k, torch.randn(4, 2, dtype=torch.float64), 0.5, None, queue)
    with pytest.raises(ValueError, match="lam must lie in"):
        AF.unmix_info_nce(q, k, m, 1.5, None, queue)
    with pytest.raises(ValueError, match="lam must be a number"):
        AF.unmix_info_nce(q, k, m, torch.rand(3), None, queue)
    with pytest.raises(TypeError, match="lam must be"):
        AF.unmix_info_nce(q, k, m, "0.5", None, queue)
    with pytest.raises(IndexError, match="partner has values"):
        AF.unmix_info_nce(q, k, m, 0.5, torch.tensor([0, 1, 2, 4]), queue)
    with pytest.raises(ValueError, match="partner must have shape"):
        AF.unmix_info_nce(q, k, m, 0.5, torch.tensor([0, 1]), queue)
    with pytest.raises(TypeError, match="partner must be an integer"):
        AF.unmix_info_nce(q, k, m, 0.5, torch.zeros(4), queue)
    with pytest.raises(ValueError, match="queue=None"):
        AF.unmix_info_nce(q, k, m, 0.5)
    with pytest.raises(ValueError, match="form must be"):
        AF.unmix_info_nce(q, k, m, 0.5, None, queue, form="hard")
    with pytest.raises(ValueError, match="temperature"):
        AF.unmix_info_nce(q, k, m, 0.5, None, queue, 0.0)
    bad = m.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="q_mix contains non-finite"):
        AF.unmix_info_nce(q, k, bad, 0.5, None, queue)
    with pytest.raises(ValueError, match="z_mix must have 4 rows"):
        AF.unmix_nt_xent(q, k, m[:2], 0.5)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    q, k, m = (torch.randn(8, 6, requires_grad=True) for _ in range(3))
    queue = F.normalize(torch.randn(10, 6), dim=1)
    lam = torch.rand(8)
    partner = torch.arange(7, -1, -1)

    def step(q, k, m):
        return AF.unmix_info_nce(q, k, m, lam, partner, queue, 0.2, backend="reference")

    got = torch.compile(step, fullgraph=True)(q, k, m)
    ref = step(q, k, m)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, m)[0], torch.autograd.grad(ref, m)[0])


# ------------------------------------------------------------------------------------------------ module
def test_unmix_module_mix_and_losses():
    x = torch.rand(6, 3, 8, 8)
    mod = UnMix(alpha=1.0, prob_mixup=0.5, per_sample=True, generator=torch.Generator().manual_seed(3))
    x_mix, lam, partner = mod.mix(x)
    want = AF.unmix(x, alpha=1.0, prob_mixup=0.5, per_sample=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x_mix, want[0], rtol=0, atol=0)
    torch.testing.assert_close(lam, want[1], rtol=0, atol=0)
    assert torch.equal(partner, want[2])
    q, k, qm = (torch.randn(6, 5, dtype=torch.float64) for _ in range(3))
    queue = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    torch.testing.assert_close(mod.loss(q, k, qm, lam, partner, queue=queue),
                               AF.unmix_info_nce(q, k, qm, lam, partner, queue, 0.2))
    sim = UnMix(objective="simclr", temperature=0.5)
    torch.testing.assert_close(sim.loss(q, k, qm, lam, partner), AF.unmix_nt_xent(q, k, qm, lam, partner, 0.5))
    with pytest.raises(ValueError, match="queue is only used"):
        sim.loss(q, k, qm, lam, partner, queue=queue)
    with pytest.raises(ValueError, match="objective"):
        UnMix(objective="byol")
    # uint8 in, normalised float out, in one call
    norm = UnMix(mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2], generator=torch.Generator().manual_seed(0))
    out, _, _ = norm((x * 255).to(torch.uint8))
    assert out.dtype == torch.float32 and out.shape == x.shape
