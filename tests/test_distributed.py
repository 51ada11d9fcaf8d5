"""Cross-rank gathering with gradients: two gloo processes on the CPU against one process on the whole batch.

One spawn of W = 2 workers (module-scoped fixture) runs every distributed computation; each worker saves its
results and the tests compare them here with single-process computations on the concatenated batch.

What is compared, for a global batch split in rank order (rank r holds rows [r*B, (r+1)*B) of every input):

* values: every rank's loss averages its own rows (against the candidates of all ranks), so
  ``mean_r L_r == L`` (the single-process loss of the global batch, a mean over all rows).
* gradients: after ``L_r.backward()`` on each rank, the gather's backward all-reduces, so rank r's gradient of
  its local rows is ``d(sum_r' L_r') / d(local rows) = W * dL / d(local rows)``, i.e. the matching rows of the
  single-process gradient of ``W * L`` (the sum over ranks of the rank losses). DDP then *averages* parameter
  gradients over ranks, which divides this by W again: the model receives exactly dL/dtheta.

Numbers follow the rule of tests/_tolerance.py: float64 results against the float64 single-process (or
oracle) ones, within the rule's floor; float32 results of augcl against lightly's, with lightly's float64 run the
reference and its float32 run the yardstick.

The workers are joined with a deadline and killed if it passes, so a deadlock fails the test instead of
hanging CI; gloo's own timeout is short too.
"""
import traceback
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from augcl import functional as AF
from _tolerance import assert_close_to_reference
from conftest import finish_rank, run_ranks

pytestmark = pytest.mark.distributed

WORLD = 2
B, D = 4, 8  # rows per rank, width
JOIN_DEADLINE_S = 150.0  # hard cap (a hang); a normal run takes a fraction of it


# ------------------------------------------------------------------------------------------------ oracles
class _SoloFullGather(torch.autograd.Function):
    """solo-learn's FullGatherLayer: all_gather forward; all_reduce(sum) of the gradients, own slice back."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        import torch.distributed as dist

        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def solo_simclr_oracle(z, indexes, temperature=0.1, gather=lambda x: x):
    """solo-learn's simclr_loss_func (full_gather version): every rank computes the global loss."""
    z = gather(F.normalize(z, dim=-1))
    sim = torch.exp(torch.einsum("if,jf->ij", z, z) / temperature)
    idx = gather(indexes).unsqueeze(0)
    pos_mask = idx.t() == idx
    pos_mask.fill_diagonal_(0)
    neg_mask = idx.t() != idx
    pos = (sim * pos_mask).sum(1)
    neg = (sim * neg_mask).sum(1)
    return -torch.log(pos / (pos + neg)).mean()


def _global_data():
    g = torch.Generator().manual_seed(1234)
    n = WORLD * B
    data = {
        "z1": torch.randn(n, D, generator=g, dtype=torch.float64),
        "z2": torch.randn(n, D, generator=g, dtype=torch.float64),
        "q": torch.randn(n, D, generator=g, dtype=torch.float64),
        "k": torch.randn(n, D, generator=g, dtype=torch.float64),
        # solo: 3 views per sample, view-major on each rank; indexes are global sample ids
        "sz": torch.randn(WORLD * 3 * B, D, generator=g, dtype=torch.float64),
        "bank_steps": [(torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)) for _ in range(3)],
    }
    data["zm"] = torch.randn(n, D, generator=g, dtype=torch.float64)  # mixture embeddings (Un-Mix)
    data["lam"] = torch.rand(n, generator=g, dtype=torch.float64)
    data["partner"] = torch.randint(0, B, (n,), generator=g)  # local to each rank's block of B (own mixtures)
    data["sidx"] = torch.cat([torch.arange(r * B, (r + 1) * B).repeat(3) for r in range(WORLD)])
    return data


def _local(x, rank, rows=B):
    return x[rank * rows:(rank + 1) * rows].clone()


def _leaf(x, dtype=torch.float64):
    return x.to(dtype).clone().requires_grad_()


# ------------------------------------------------------------------------------------------------ worker
def _worker(rank, init_file, data_path, out_dir):
    import torch.distributed as dist

    result = {}
    torch.set_num_threads(1)  # two workers on a small CI machine: no oversubscription
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=30))
        from augcl.compat import solo as csolo
        from augcl.nn import InfoNCELoss, NTXentLoss

        data = torch.load(data_path)

        # 1. nt_xent, global negatives (SimCLR), both backends
        for backend in (None, "reference"):
            z1, z2 = _leaf(_local(data["z1"], rank)), _leaf(_local(data["z2"], rank))
            loss = AF.nt_xent(z1, z2, 0.3, gather_distributed=True, backend=backend)
            loss.backward()
            result[f"nt_xent/{backend}"] = (loss.detach(), z1.grad, z2.grad)

        # 2. info_nce with every key of the global batch as negative (MoCo v3), both backends
        for backend in (None, "reference"):
            q, k = _leaf(_local(data["q"], rank)), _leaf(_local(data["k"], rank))
            loss = AF.info_nce(q, k, None, 0.2, key_negatives=True, gather_distributed=True, backend=backend)
            loss.backward()
            result[f"info_nce/{backend}"] = (loss.detach(), q.grad, k.grad)

        # 3. NTXentLoss(gather_distributed=True) vs lightly's, without and with a memory bank
        try:
            from lightly.loss import NTXentLoss as LightlyNTXent
        except ImportError:  # pragma: no cover - lightly is a test dependency
            LightlyNTXent = None
        if LightlyNTXent is not None:
            # lightly in float64 too: the reference of the float32 comparison (its float32 run the yardstick)
            for name, cls, dtype in (("ours", NTXentLoss, torch.float32), ("lightly", LightlyNTXent, torch.float32),
                                     ("lightly64", LightlyNTXent, torch.float64)):
                z1, z2 = _leaf(_local(data["z1"], rank), dtype), _leaf(_local(data["z2"], rank), dtype)
                loss = cls(0.3, gather_distributed=True)(z1, z2)
                loss.backward()
                result[f"ntx_module/{name}"] = (loss.detach(), z1.grad, z2.grad)
                torch.manual_seed(5)  # the same bank on both ranks and for both classes
                module = cls(0.3, memory_bank_size=(3 * WORLD * B - 2, D), gather_distributed=True).to(dtype)
                steps = []
                for a, b in data["bank_steps"]:
                    a, b = _leaf(_local(a, rank), dtype), _leaf(_local(b, rank), dtype)
                    loss = module(a, b)
                    loss.backward()
                    steps.append((loss.detach(), a.grad, b.grad, module.memory_bank.bank.clone(),
                                  module.memory_bank.bank_ptr.clone()))
                result[f"ntx_bank/{name}"] = steps

        # 4. solo-learn simclr, 3 views, against solo's own full_gather formulation
        z = _leaf(_local(data["sz"], rank, 3 * B))
        idx = _local(data["sidx"], rank, 3 * B)
        loss = csolo.simclr_loss_func(z, idx, 0.2)
        loss.backward()
        z_oracle = _leaf(_local(data["sz"], rank, 3 * B))
        oracle = solo_simclr_oracle(z_oracle, idx, 0.2, gather=lambda x: torch.cat(_SoloFullGather.apply(x)))
        oracle.backward()
        result["solo"] = (loss.detach(), z.grad, oracle.detach(), z_oracle.grad)

        # 5. InfoNCELoss with a queue: the loss is local, the queue receives the keys of every rank
        torch.manual_seed(9)
        module = InfoNCELoss(0.2, queue_size=3 * WORLD * B, dim=D, gather_distributed=True)
        queue0 = module.queue.queue.clone()
        q, k = _leaf(_local(data["q"], rank)), _leaf(_local(data["k"], rank))
        loss = module(q, k)
        loss.backward()
        result["queue"] = (loss.detach(), q.grad, k.grad, queue0, module.queue.queue.clone(),
                           module.queue.ptr.clone())
        small = InfoNCELoss(0.2, queue_size=WORLD * B - 1, dim=D, gather_distributed=True)
        try:
            small(q.detach(), k.detach())
            result["queue_error"] = None
        except ValueError as e:  # raised on every rank after the same collectives: no rank is left waiting
            result["queue_error"] = str(e)

        # 6. Un-Mix, SimCLR form, global negatives (each rank mixes its own batch: partners are local)
        for backend in (None, "reference"):
            z1, z2, zm = (_leaf(_local(data[n], rank)) for n in ("z1", "z2", "zm"))
            lam, partner = _local(data["lam"], rank), _local(data["partner"], rank)
            loss = AF.unmix_nt_xent(z1, z2, zm, lam, partner, 0.3, gather_distributed=True, backend=backend)
            loss.backward()
            result[f"unmix_nt_xent/{backend}"] = (loss.detach(), z1.grad, z2.grad, zm.grad)

        # 7. Un-Mix, MoCo form with every key of the global batch as negative (both forms agree there)
        q, k, qm = (_leaf(_local(data[n], rank)) for n in ("q", "k", "zm"))
        loss = AF.unmix_info_nce(q, k, qm, _local(data["lam"], rank), _local(data["partner"], rank), None, 0.2,
                                 key_negatives=True, gather_distributed=True)
        loss.backward()
        result["unmix_info_nce"] = (loss.detach(), q.grad, k.grad, qm.grad)

        # 8. Hallucinator, SimCLR form: NT-Xent over [z1; h; z2; z2] with every rank's 4B rows as candidates
        from augcl.nn import Hallucinator

        torch.manual_seed(11)  # the same generator weights on both ranks (DDP broadcasts them)
        gen = Hallucinator(D).double()
        z1, z2 = _leaf(_local(data["z1"], rank)), _leaf(_local(data["z2"], rank))
        loss = AF.hallucinate_simclr_loss(gen, z1, z2, 0.3, lam=0.07, gather_distributed=True)
        loss.backward()
        result["hall_simclr"] = (loss.detach(), z1.grad, z2.grad, {n: p.grad for n, p in gen.named_parameters()})
    except BaseException:  # report instead of dying silently
        result["error"] = traceback.format_exc()
    finally:
        finish_rank(result, out_dir, rank)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = _global_data()
    data_path = str(tmp / "data.pt")
    torch.save(data, data_path)
    results = run_ranks(_worker, WORLD, tmp, (str(tmp / "init"), data_path, str(tmp)), JOIN_DEADLINE_S)
    return data, results


def _rows(x, rank, rows=B):
    return x[rank * rows:(rank + 1) * rows]


def _single(fn, *inputs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    loss = fn(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


def _close(got, want, name="value"):
    """float64 ``got`` against the float64 ``want`` (single-process or oracle): the rule's floor."""
    assert got.dtype == want.dtype == torch.float64
    assert_close_to_reference(got, want, None, name)


@pytest.mark.parametrize("backend", [None, "reference"])
def test_nt_xent_gather_matches_single_process(ranks, backend):
    data, results = ranks
    loss, (g1, g2) = _single(lambda a, b: AF.nt_xent(a, b, 0.3, backend="reference"), data["z1"], data["z2"])
    rank_losses = [res[f"nt_xent/{backend}"][0] for res in results]
    _close(torch.stack(rank_losses).mean(), loss)
    for r, res in enumerate(results):
        _, gz1, gz2 = res[f"nt_xent/{backend}"]
        _close(gz1, WORLD * _rows(g1, r))
        _close(gz2, WORLD * _rows(g2, r))


@pytest.mark.parametrize("backend", [None, "reference"])
def test_info_nce_key_negatives_gather_matches_single_process(ranks, backend):
    data, results = ranks
    loss, (gq, gk) = _single(lambda q, k: AF.info_nce(q, k, None, 0.2, key_negatives=True, backend="reference"),
                             data["q"], data["k"])
    _close(torch.stack([res[f"info_nce/{backend}"][0] for res in results]).mean(), loss)
    for r, res in enumerate(results):
        _, rq, rk = res[f"info_nce/{backend}"]
        _close(rq, WORLD * _rows(gq, r))
        _close(rk, WORLD * _rows(gk, r))


def test_ntxent_module_gather_matches_lightly(ranks):
    _, results = ranks
    if "ntx_module/lightly" not in results[0]:
        pytest.skip("lightly not installed")
    names = ["loss", "grad_z1", "grad_z2"]
    for res in results:
        assert_close_to_reference(res["ntx_module/ours"], res["ntx_module/lightly64"], res["ntx_module/lightly"], names)
    for res in results:  # memory bank: local loss, the bank receives both ranks' out1
        for step, (ours, theirs, theirs64) in enumerate(zip(res["ntx_bank/ours"], res["ntx_bank/lightly"],
                                                            res["ntx_bank/lightly64"])):
            assert_close_to_reference(list(ours[:3]), list(theirs64[:3]), list(theirs[:3]),
                                      [f"{n} (step {step})" for n in names])
            assert torch.equal(ours[3], theirs[3]), f"bank differs after step {step}"
            assert torch.equal(ours[4], theirs[4])
    assert torch.equal(results[0]["ntx_bank/ours"][-1][3], results[1]["ntx_bank/ours"][-1][3])


def test_solo_simclr_distributed_matches_solo(ranks):
    data, results = ranks
    loss, (g,) = _single(lambda z: solo_simclr_oracle(z, data["sidx"], 0.2), data["sz"])
    for r, res in enumerate(results):
        ours, ours_grad, oracle, oracle_grad = res["solo"]
        _close(ours, oracle)            # every rank reports the global loss, like solo
        _close(ours, loss)
        _close(ours_grad, oracle_grad)  # and gets solo's gradient: W * dL/d(local rows)
        _close(ours_grad, WORLD * _rows(g, r, 3 * B))


def test_infonce_queue_gathers_keys_of_every_rank(ranks):
    data, results = ranks
    queue0 = results[0]["queue"][3]
    assert torch.equal(queue0, results[1]["queue"][3])  # same seed -> same initial queue
    keys = F.normalize(data["k"], dim=1).float()
    for r, res in enumerate(results):
        loss, gq, gk, _, queue, ptr = res["queue"]
        q, k = _rows(data["q"], r), _rows(data["k"], r)
        want, (wq, wk) = _single(lambda q, k: AF.info_nce(q, k, queue0.double(), 0.2, backend="reference"), q, k)
        _close(loss, want)  # the loss is local and uses the queue before the update
        _close(gq, wq)
        _close(gk, wk)
        torch.testing.assert_close(queue[:WORLD * B], keys)  # rank 0's keys, then rank 1's
        assert torch.equal(queue[WORLD * B:], queue0[WORLD * B:])
        assert int(ptr) == WORLD * B
        assert "batch of 8 keys (2 ranks x 4) into a queue of size 7" in res["queue_error"]


def _global_partner(data):
    """The per-rank partners as rows of the concatenated batch."""
    return data["partner"] + torch.arange(WORLD).repeat_interleave(B) * B


@pytest.mark.parametrize("backend", [None, "reference"])
def test_unmix_nt_xent_gather_matches_single_process(ranks, backend):
    data, results = ranks
    partner = _global_partner(data)
    loss, grads = _single(lambda a, b, m: AF.unmix_nt_xent(a, b, m, data["lam"], partner, 0.3, backend="reference"),
                          data["z1"], data["z2"], data["zm"])
    _close(torch.stack([res[f"unmix_nt_xent/{backend}"][0] for res in results]).mean(), loss)
    for r, res in enumerate(results):
        for got, want in zip(res[f"unmix_nt_xent/{backend}"][1:], grads):
            _close(got, WORLD * _rows(want, r))


def test_unmix_info_nce_key_negatives_gather_matches_single_process(ranks):
    data, results = ranks
    partner = _global_partner(data)
    loss, grads = _single(lambda q, k, m: AF.unmix_info_nce(q, k, m, data["lam"], partner, None, 0.2,
                                                            key_negatives=True, backend="reference"),
                          data["q"], data["k"], data["zm"])
    _close(torch.stack([res["unmix_info_nce"][0] for res in results]).mean(), loss)
    for r, res in enumerate(results):
        for got, want in zip(res["unmix_info_nce"][1:], grads):
            _close(got, WORLD * _rows(want, r))


def test_hallucinate_simclr_gather_matches_single_process(ranks):
    """Embedding gradients are W x the single-process ones (see the module docstring); the generator's weights
    are replicated, so their single-process gradient is the *mean* of the ranks' (what DDP's averaging gives)."""
    from augcl.nn import Hallucinator

    data, results = ranks
    torch.manual_seed(11)
    gen = Hallucinator(D).double()
    z1, z2 = data["z1"].clone().requires_grad_(), data["z2"].clone().requires_grad_()
    loss = AF.hallucinate_simclr_loss(gen, z1, z2, 0.3, lam=0.07)
    loss.backward()
    _close(torch.stack([res["hall_simclr"][0] for res in results]).mean(), loss.detach())
    for r, res in enumerate(results):
        _close(res["hall_simclr"][1], WORLD * _rows(z1.grad, r))
        _close(res["hall_simclr"][2], WORLD * _rows(z2.grad, r))
    for name, p in gen.named_parameters():
        _close(torch.stack([res["hall_simclr"][3][name] for res in results]).mean(0), p.grad)
    # and the local-negatives loss differs (the gather changes the value)
    local = [AF.hallucinate_simclr_loss(gen, _rows(data["z1"], r), _rows(data["z2"], r), 0.3, lam=0.07)
             for r in range(WORLD)]
    assert not torch.allclose(torch.stack(local).mean(), loss.detach())
