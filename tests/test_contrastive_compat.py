"""augcl.nn modules and augcl.compat shims against the libraries they replace.

* lightly 1.6.0 ``NTXentLoss`` (installed): values, gradients, memory-bank contents, pointer and RNG use.
* solo-learn (not installed): its two loss functions are re-implemented below as oracles, written from
  ``solo/losses/simclr.py`` (current, ``full_gather`` version) and ``solo/losses/mocov2plus.py``.
* pytorch-metric-learning ``NTXentLoss`` (installed), inside ``SelfSupervisedLoss`` and called directly.

Every comparison runs with the automatic backend and with the explicit "reference" backend, and holds values and
gradients to the tolerance rule of tests/_tolerance.py, the peer library being the yardstick: augcl's error
against the peer run on float64 copies of the inputs is at most twice the peer's own error at the inputs' precision.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import augcl
from augcl import functional as AF
from augcl.compat import pml as cpml
from augcl.compat import solo as csolo
from augcl.nn import InfoNCELoss, MoCoQueue, NTXentLoss
from _tolerance import assert_close_to_reference, float64_inputs

lightly_loss = pytest.importorskip("lightly.loss")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

BACKENDS = [None, "reference"]
DTYPES = [torch.float32, torch.float64]


def leaves(*shapes, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype).requires_grad_() for s in shapes]


def value_and_grads(fn, inputs):
    """``[fn(*inputs), d/d input for every input that requires grad]`` (only the value when it has no graph)."""
    out = fn(*inputs)
    if not out.requires_grad:
        return [out.detach()]
    return [out.detach(), *torch.autograd.grad(out, [x for x in inputs if x.requires_grad])]


def assert_matches_peer(ours, theirs, inputs, theirs64=None):
    """Value and input gradients of ``ours(*inputs)`` within the tolerance rule, with the peer ``theirs`` as the
    yardstick: eager = ``theirs(*inputs)``, reference = ``theirs64`` (default ``theirs``; a module is deep-copied
    and converted to float64 *before* the eager call, so its state, a memory bank, is the same for both and advanced
    only once) on float64 copies of the inputs."""
    if theirs64 is None:
        theirs64 = copy.deepcopy(theirs).double() if isinstance(theirs, torch.nn.Module) else theirs
    got = value_and_grads(ours, inputs)
    eager = value_and_grads(theirs, inputs)
    ref = value_and_grads(theirs64, float64_inputs(*inputs))
    assert len(got) == len(eager) == len(ref)
    assert_close_to_reference(got, ref, eager, ["value"] + [f"grad[{i}]" for i in range(len(got) - 1)])


# ----------------------------------------------------------------------------------------- solo oracles
def solo_simclr_oracle(z, indexes, temperature=0.1):
    """solo-learn's simclr_loss_func (single process: full_gather is the identity)."""
    z = F.normalize(z, dim=-1)
    sim = torch.exp(torch.einsum("if,jf->ij", z, z) / temperature)
    idx = indexes.unsqueeze(0)
    pos_mask = idx.t() == idx
    pos_mask.fill_diagonal_(0)
    neg_mask = idx.t() != idx
    pos = (sim * pos_mask).sum(1)
    neg = (sim * neg_mask).sum(1)
    return -torch.log(pos / (pos + neg)).mean()


def solo_mocov2plus_oracle(query, key, queue, temperature=0.1):
    """solo-learn's mocov2plus_loss_func: no normalisation, queue [D, K], target = column 0."""
    pos = torch.einsum("nc,nc->n", query, key).unsqueeze(-1)
    neg = torch.einsum("nc,ck->nk", query, queue)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long))


# ============================================================================ lightly NTXentLoss
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0])
def test_ntxent_matches_lightly_without_bank(backend, dtype, temperature):
    a, b = leaves((16, 32), (16, 32), dtype=dtype, scale=3.0)
    ours = NTXentLoss(temperature, backend=backend)
    theirs = lightly_loss.NTXentLoss(temperature)
    assert_matches_peer(ours, theirs, [a, b])


def test_ntxent_defaults_and_signature_match_lightly():
    import inspect

    ours = inspect.signature(NTXentLoss.__init__).parameters
    theirs = inspect.signature(lightly_loss.NTXentLoss.__init__).parameters
    for name, p in theirs.items():
        assert name in ours and ours[name].default == p.default and ours[name].kind == p.kind
    assert NTXentLoss().temperature == 0.5 and NTXentLoss().eps == 1e-8


def test_ntxent_learnable_temperature_matches_lightly():
    a, b = leaves((8, 16), (8, 16), seed=3)
    results = []
    for module, dtype in ((NTXentLoss, torch.float32), (lightly_loss.NTXentLoss, torch.float64),
                          (lightly_loss.NTXentLoss, torch.float32)):
        t = torch.nn.Parameter(torch.tensor(0.3, dtype=dtype))
        value = module(t)(a.to(dtype), b.to(dtype))
        results.append([value.detach(), *torch.autograd.grad(value, [t])])
    assert_close_to_reference(*results, ["value", "grad_temperature"])


def _bank_pair(size, dtype, seed, backend):
    torch.manual_seed(seed)
    theirs = lightly_loss.NTXentLoss(0.2, memory_bank_size=size)
    after_theirs = torch.rand(3)
    torch.manual_seed(seed)
    ours = NTXentLoss(0.2, memory_bank_size=size, backend=backend)
    after_ours = torch.rand(3)
    # same random bank, and the global RNG advanced by the same amount
    assert torch.equal(after_theirs, after_ours)
    assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)
    if dtype == torch.float64:  # lightly's bank must match the input dtype; convert both the same way
        theirs, ours = theirs.double(), ours.double()
    return ours, theirs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ntxent_memory_bank_matches_lightly_over_steps(backend, dtype):
    k, d = 10, 12
    ours, theirs = _bank_pair((k, d), dtype, seed=7, backend=backend)
    assert ours.memory_bank.bank.shape == (k, d)
    assert torch.allclose(ours.memory_bank.bank.norm(dim=1).double(), torch.ones(k, dtype=torch.float64))
    # batch sizes that do not divide the bank: lightly truncates at the end of the bank and restarts at 0
    for step, bsz in enumerate([4, 4, 3, 5, 6, 4, 11]):
        a, b = leaves((bsz, d), (bsz, d), dtype=dtype, seed=100 + step, scale=2.0)
        assert_matches_peer(ours, theirs, [a, b])
        assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank), f"bank differs after step {step}"
        assert torch.equal(ours.memory_bank.bank_ptr, theirs.memory_bank.bank_ptr)
    # no update without grad (evaluation), neither under no_grad nor with inputs that do not require grad
    before = ours.memory_bank.bank.clone()
    with torch.no_grad():
        a, b = leaves((4, d), (4, d), dtype=dtype, seed=1)
        assert_matches_peer(ours, theirs, [a, b])
    ours(a.detach(), b.detach())
    theirs(a.detach(), b.detach())
    assert torch.equal(ours.memory_bank.bank, before)
    assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)


def test_ntxent_bank_negatives_are_the_bank_before_the_update():
    k, d, bsz = 8, 6, 4
    loss = NTXentLoss(0.5, memory_bank_size=(k, d), backend="reference")
    bank0 = loss.memory_bank.bank.clone()
    a, b = leaves((bsz, d), (bsz, d), seed=5)
    got = loss(a, b)
    want = AF.info_nce(a, b, bank0, 0.5, backend="reference")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(loss.memory_bank.bank[:bsz], F.normalize(b.detach(), dim=1))
    assert torch.equal(loss.memory_bank.bank[bsz:], bank0[bsz:])
    assert int(loss.memory_bank.bank_ptr) == bsz


def test_ntxent_bank_parity_after_copying_lightly_bank():
    """Banks drawn with different seeds: copying lightly's buffers into ours gives the same results."""
    d = 8
    torch.manual_seed(1)
    theirs = lightly_loss.NTXentLoss(memory_bank_size=(6, d))
    torch.manual_seed(2)
    ours = NTXentLoss(memory_bank_size=(6, d))
    assert not torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)
    ours.memory_bank.bank.copy_(theirs.memory_bank.bank)
    ours.memory_bank.bank_ptr.copy_(theirs.memory_bank.bank_ptr)
    for step in range(3):
        a, b = leaves((4, d), (4, d), seed=step)
        assert_matches_peer(ours, theirs, [a, b])
        assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(temperature=1e-9), dict(temperature=-1e-9),
    dict(memory_bank_size=5), dict(memory_bank_size=-1), dict(memory_bank_size=(3,)),
    dict(memory_bank_size=(1, 2, 3)), dict(memory_bank_size=(-1, 4)),
])
def test_ntxent_errors_match_lightly(kwargs):
    with pytest.raises(ValueError) as theirs:
        lightly_loss.NTXentLoss(**kwargs)
    with pytest.raises(ValueError) as ours:
        NTXentLoss(**kwargs)
    assert str(ours.value) == str(theirs.value)


def test_ntxent_negative_temperature_is_rejected():
    lightly_loss.NTXentLoss(temperature=-0.5)  # lightly accepts it (documented difference)
    with pytest.raises(ValueError, match="< 0"):
        NTXentLoss(temperature=-0.5)


def test_ntxent_wrong_widths():
    loss = NTXentLoss(memory_bank_size=(8, 16))
    a, b = leaves((4, 12), (4, 12))
    with pytest.raises(ValueError, match="12 features but the memory bank stores 16"):
        loss(a, b)
    with pytest.raises(ValueError, match="out1 must have 12 features"):
        NTXentLoss()(a, leaves((4, 10))[0])
    with pytest.raises(ValueError, match="out1 must have 4 rows"):
        NTXentLoss()(a, leaves((3, 12))[0])


def test_ntxent_state_dict_matches_lightly():
    """lightly's bank buffers are non-persistent: checkpoints hold no loss state, in both directions."""
    ours = NTXentLoss(memory_bank_size=(8, 4))
    theirs = lightly_loss.NTXentLoss(memory_bank_size=(8, 4))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == []
    ours.load_state_dict(theirs.state_dict(), strict=True)
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(4, 4), "loss": ours})
    model.load_state_dict(torch.nn.ModuleDict({"head": torch.nn.Linear(4, 4), "loss": theirs}).state_dict())


def test_compat_lightly_reexport():
    from augcl.compat.lightly import NTXentLoss as Shim

    assert Shim is NTXentLoss


# ============================================================================ MoCoQueue
def test_moco_queue_init():
    q = MoCoQueue(dim=8, size=20)
    assert q.queue.shape == (20, 8) and q.queue.dtype == torch.float32
    torch.testing.assert_close(q.queue.norm(dim=1), torch.ones(20))
    assert q.ptr.dim() == 0 and int(q.ptr) == 0
    snap = q()
    snap.zero_()
    assert q.queue.abs().sum() > 0  # forward() is a snapshot


def test_moco_queue_ring_buffer_wraps():
    size, d = 10, 4
    q = MoCoQueue(d, size)
    expected = q.queue.clone()
    ptr = 0
    for step, bsz in enumerate([4, 4, 4, 3, 10, 1]):
        (keys,) = leaves((bsz, d), seed=step)
        q.enqueue(keys)
        normed = F.normalize(keys.detach(), dim=1)
        for i in range(bsz):
            expected[(ptr + i) % size] = normed[i]
        ptr = (ptr + bsz) % size
        assert torch.equal(q.queue, expected), f"step {step}"
        assert int(q.ptr) == ptr
        assert not q.queue.requires_grad


def test_moco_queue_without_normalization():
    q = MoCoQueue(4, 6, normalize=False)
    keys = torch.full((2, 4), 3.0)
    q.enqueue(keys)
    assert torch.equal(q.queue[:2], keys)


def test_moco_queue_errors():
    q = MoCoQueue(8, 6)
    with pytest.raises(ValueError, match="batch of 7 keys into a queue of size 6"):
        q.enqueue(torch.randn(7, 8))
    with pytest.raises(ValueError, match="keys must have 8 features"):
        q.enqueue(torch.randn(2, 5))
    for bad in [dict(dim=0, size=4), dict(dim=4, size=0), dict(dim=4, size=2.5)]:
        with pytest.raises(ValueError):
            MoCoQueue(**bad)


def test_moco_queue_state_dict_round_trip():
    torch.manual_seed(0)
    q1 = MoCoQueue(6, 9)
    q1.enqueue(torch.randn(4, 6))
    q1.enqueue(torch.randn(4, 6))
    assert set(q1.state_dict()) == {"queue", "ptr"}
    buf = io.BytesIO()
    torch.save(q1.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    q2 = MoCoQueue(6, 9)
    assert not torch.equal(q1.queue, q2.queue)
    q2.load_state_dict(torch.load(buf))
    assert torch.equal(q1.queue, q2.queue) and int(q2.ptr) == int(q1.ptr) == 8
    keys = torch.randn(4, 6)
    q1.enqueue(keys)
    q2.enqueue(keys)  # wraps identically
    assert torch.equal(q1.queue, q2.queue) and int(q2.ptr) == 3


# ============================================================================ InfoNCELoss
@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_queue_matches_moco_loop(backend):
    """A MoCo v2+ loop: our module vs solo's loss function on a hand-kept [D, K] queue."""
    d, k = 16, 12
    torch.manual_seed(4)
    loss_fn = InfoNCELoss(0.2, queue_size=k, dim=d, backend=backend)
    oracle_queue = loss_fn.queue.queue.t().clone()  # [D, K], solo's layout
    ptr = 0
    for step, bsz in enumerate([4, 4, 4, 4, 5]):
        q, kk = leaves((bsz, d), (bsz, d), seed=10 + step)
        assert_matches_peer(
            loss_fn,
            lambda q, kk: solo_mocov2plus_oracle(F.normalize(q, dim=1), F.normalize(kk, dim=1),
                                                 oracle_queue.to(q.dtype), 0.2),
            [q, kk])
        for i in range(bsz):  # enqueue after the loss, wrapping around
            oracle_queue[:, (ptr + i) % k] = F.normalize(kk.detach(), dim=1)[i]
        ptr = (ptr + bsz) % k
        torch.testing.assert_close(loss_fn.queue.queue, oracle_queue.t())


def test_infonce_update_rules():
    loss_fn = InfoNCELoss(queue_size=8, dim=4)
    q, k = leaves((2, 4), (2, 4))
    before = loss_fn.queue.queue.clone()
    with torch.no_grad():
        loss_fn(q, k)
    loss_fn.eval()
    loss_fn(q, k)
    loss_fn(q, k, update=False)
    assert torch.equal(loss_fn.queue.queue, before)
    loss_fn(q, k, update=True)
    assert not torch.equal(loss_fn.queue.queue, before) and int(loss_fn.queue.ptr) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_key_negatives_without_queue(backend):
    q, k = leaves((6, 8), (6, 8))
    ours = InfoNCELoss(0.2, key_negatives=True, backend=backend)
    assert_matches_peer(ours, lambda q, k: AF.info_nce(q, k, None, 0.2, key_negatives=True, backend="reference"),
                        [q, k])
    # MoCo v3 / CLIP form: cross-entropy of q @ k.T / t with targets on the diagonal
    assert_matches_peer(ours, lambda q, k: F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2,
                                                           torch.arange(6)), [q, k])


def test_infonce_errors_and_state_dict():
    with pytest.raises(ValueError, match="no negatives"):
        InfoNCELoss(queue_size=0)
    with pytest.raises(ValueError, match="needs dim="):
        InfoNCELoss(queue_size=16)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0, key_negatives=True)
    loss_fn = InfoNCELoss(queue_size=4, dim=8)
    with pytest.raises(ValueError, match="batch of 5 keys into a queue of size 4"):
        loss_fn(*leaves((5, 8), (5, 8)))
    with pytest.raises(ValueError, match="key must have 8 features"):
        loss_fn(leaves((2, 8))[0], leaves((2, 6))[0])
    loss_fn(*leaves((3, 8), (3, 8)))
    sd = loss_fn.state_dict()
    assert set(sd) == {"queue.queue", "queue.ptr"}
    other = InfoNCELoss(queue_size=4, dim=8)
    other.load_state_dict(sd)
    assert torch.equal(other.queue.queue, loss_fn.queue.queue) and int(other.queue.ptr) == 3


# ============================================================================ solo-learn
def _views(n, v, d, dtype, seed=0, interleave=False):
    (z,) = leaves((n * v, d), dtype=dtype, seed=seed, scale=2.0)
    idx = torch.arange(n).repeat(v)
    if interleave:  # solo's indexes need not be view-major
        perm = torch.randperm(n * v, generator=torch.Generator().manual_seed(seed))
        idx = idx[perm]
    return z, idx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_solo_simclr_two_views(backend, dtype, temperature):
    z, idx = _views(12, 2, 16, dtype)
    ours = lambda z: csolo.simclr_loss_func(z, idx, temperature, backend=backend)  # noqa: E731
    assert_matches_peer(ours, lambda z: solo_simclr_oracle(z, idx, temperature), [z])
    # 2 views: solo's loss is NT-Xent
    assert_matches_peer(ours, lambda z: AF.nt_xent(z[:12], z[12:], temperature, backend="reference"), [z])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("views", [3, 4])
def test_solo_simclr_multi_view_exact(backend, dtype, views):
    """>2 views: solo's -log(sum over positives) is reproduced exactly (values and gradients)."""
    z, idx = _views(8, views, 16, dtype, seed=views, interleave=True)
    assert_matches_peer(lambda z: csolo.simclr_loss_func(z, idx, 0.2, backend=backend),
                        lambda z: solo_simclr_oracle(z, idx, 0.2), [z])
    # ... and it is NOT the soft-target average of nt_xent_multiview when there are several positives
    zz, ii = _views(8, views, 16, dtype, seed=views)
    mv = AF.nt_xent_multiview(list(zz.detach().split(8)), 0.2)
    assert not torch.allclose(mv.double(), solo_simclr_oracle(zz.detach(), ii, 0.2).double(), rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solo_simclr_supervised_labels_and_learnable_temperature(backend):
    """indexes = class labels (groups of different sizes), temperature a Parameter."""
    (z,) = leaves((20, 8), dtype=torch.float64, seed=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 3, 3, 2, 0, 1, 4, 4, 4, 4, 4, 2, 0, 1, 3])
    t = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    assert_matches_peer(lambda z, t: csolo.simclr_loss_func(z, labels, t, backend=backend),
                        lambda z, t: solo_simclr_oracle(z, labels, t), [z, t])


def test_solo_simclr_errors():
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="no positive"):
        csolo.simclr_loss_func(z, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"indexes must have shape \[6\]"):
        csolo.simclr_loss_func(z, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="temperature"):
        csolo.simclr_loss_func(z, torch.tensor([0, 0, 1, 1, 2, 2]), 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_solo_mocov2plus(backend, dtype):
    """Not normalised inside (inputs deliberately off the unit sphere), queue [D, K]; grads incl. the queue."""
    q, k, queue = leaves((8, 16), (8, 16), (16, 32), dtype=dtype, seed=9, scale=0.4)
    assert_matches_peer(lambda q, k, c: csolo.mocov2plus_loss_func(q, k, c, 0.1, backend=backend),
                        lambda q, k, c: solo_mocov2plus_oracle(q, k, c, 0.1), [q, k, queue])
    normalized = csolo.mocov2plus_loss_func(F.normalize(q, dim=1), F.normalize(k, dim=1), queue)
    got = csolo.mocov2plus_loss_func(q, k, queue, 0.1, backend=backend)
    assert not torch.allclose(normalized.detach().double(), got.detach().double())


def test_solo_mocov2plus_wrong_layout():
    q, k = torch.randn(4, 16), torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"queue must be \[D, K\] with D = 16"):
        csolo.mocov2plus_loss_func(q, k, torch.randn(32, 16))


# ============================================================================ pytorch-metric-learning
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_pml_inside_self_supervised_loss(backend, dtype, symmetric):
    emb, ref = leaves((12, 16), (12, 16), dtype=dtype, seed=1, scale=2.0)
    ours = pml_losses.SelfSupervisedLoss(cpml.NTXentLoss(backend=backend), symmetric=symmetric)
    theirs = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.07), symmetric=symmetric)
    assert_matches_peer(ours, theirs, [emb, ref])
    if symmetric:  # = NT-Xent of the two views at 0.07
        assert_matches_peer(ours, lambda e, r: AF.nt_xent(e, r, 0.07, backend="reference"), [emb, ref])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pml_plain_call_with_class_labels(backend):
    (emb,) = leaves((24, 8), dtype=torch.float64, seed=4)
    labels = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(0))
    assert_matches_peer(lambda e: cpml.NTXentLoss(0.2, backend=backend)(e, labels),
                        lambda e: pml_losses.NTXentLoss(0.2)(e, labels), [emb])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pml_with_reference_set(backend):
    emb, ref = leaves((10, 8), (14, 8), dtype=torch.float64, seed=6)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 4])
    ref_labels = torch.tensor([0, 0, 1, 2, 5, 3, 3, 3, 6, 1, 2, 0, 4, 7])
    assert_matches_peer(lambda e, r: cpml.NTXentLoss(backend=backend)(e, labels, ref_emb=r, ref_labels=ref_labels),
                        lambda e, r: pml_losses.NTXentLoss()(e, labels, ref_emb=r, ref_labels=ref_labels), [emb, ref])
    # the same labels object as ref_labels: pml removes the diagonal (identity test), so do we
    (emb2,) = leaves((10, 8), dtype=torch.float64, seed=8)
    assert_matches_peer(lambda e, r: cpml.NTXentLoss()(e, labels, ref_emb=r, ref_labels=labels),
                        lambda e, r: pml_losses.NTXentLoss()(e, labels, ref_emb=r, ref_labels=labels), [emb, emb2])


def test_pml_zero_loss_cases():
    (emb,) = leaves((6, 4), seed=2)
    for labels in [torch.zeros(6, dtype=torch.long), torch.arange(6)]:  # no negatives / no positives
        got = cpml.NTXentLoss()(emb, labels)
        want = pml_losses.NTXentLoss()(emb, labels)
        assert float(got.detach()) == float(want.detach()) == 0.0
        (g,) = torch.autograd.grad(got, [emb])
        assert torch.equal(g, torch.zeros_like(emb))


def test_pml_unsupported_options():
    with pytest.raises(TypeError, match="reducer"):
        cpml.NTXentLoss(reducer=None)
    with pytest.raises(ValueError, match="indices_tuple"):
        cpml.NTXentLoss()(torch.randn(4, 3), torch.arange(4), indices_tuple=(torch.arange(2),) * 3)
    with pytest.raises(ValueError, match="labels are required"):
        cpml.NTXentLoss()(torch.randn(4, 3))
    assert type(cpml.NTXentLoss()).__name__ in pml_losses.SelfSupervisedLoss.supported_losses()


def test_compat_package_exports():
    import augcl.compat as compat

    assert compat.solo.simclr_loss_func is csolo.simclr_loss_func
    assert compat.pml.NTXentLoss is cpml.NTXentLoss
    assert augcl.nn.NTXentLoss is NTXentLoss
