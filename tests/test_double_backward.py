"""Second-order gradients (gradient penalties, meta-learning): every op either differentiates its gradient
correctly or says that it cannot.

The fused ops' backwards are kernels without derivatives of their own, on every backend (the references use the
same explicit backward formula). Under ``create_graph=True`` the first-order gradients must still be right, and
differentiating them again must raise an error that says double backward is not supported — never return zeros,
None, or torch's raw "functions with out=... arguments" text.
"""
import _devices  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)
import pytest
import torch

import augcl.functional as AF
from conftest import backend_reason

BACKENDS = ["cpu", "reference", "triton"]
MESSAGE = r"double backward through the \w+ op is not supported"


def _skip_unless(backend):
    reason = backend_reason(backend)
    if reason is not None:
        pytest.skip(f"backend {backend} cannot run here: {reason}")


def _nt_xent(backend):
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    return (z1, z2), lambda a, b: AF.nt_xent(a, b, temperature=0.3, backend=backend)


def _swav(backend):
    s1 = torch.randn(6, 5, requires_grad=True)
    s2 = torch.randn(6, 5, requires_grad=True)
    return (s1, s2), lambda a, b: AF.swav_loss([a, b], backend=backend)


def _hallucinate(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, requires_grad=True)
    k = torch.randn(5, 4, generator=g)
    w = [torch.randn(s, generator=g) * 0.3 for s in ((6, 8), (6,), (6, 6), (6,), (4, 6), (4,))]
    return (x,), lambda a: AF.hallucinate(a, k, 0.05, *w, backend=backend).pow(2).sum()


def _mix_images(backend):
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    weight = torch.randn(3, 2, 4, 4, requires_grad=True)
    lam = torch.tensor([0.3, 0.5, 0.9])
    cutmix = torch.tensor([False, True, False])
    boxes = torch.tensor([[0, 2, 0, 2]] * 3)
    partner = torch.tensor([2, 1, 0])
    # the loss is linear in x; its gradient depends on `weight`, so differentiating the gradient needs the op's
    # backward to be differentiable w.r.t. its incoming gradient
    return (x,), lambda a: (AF.mix_images(a, lam, cutmix, boxes, partner, backend=backend) * weight).sum()


CASES = {"nt_xent": _nt_xent, "swav_loss": _swav, "hallucinate": _hallucinate, "mix_images": _mix_images}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_double_backward_raises_a_clear_error(name, backend):
    _skip_unless(backend)
    torch.manual_seed(0)
    inputs, fn = CASES[name](backend)
    first = torch.autograd.grad(fn(*inputs), inputs)
    grads = torch.autograd.grad(fn(*inputs), inputs, create_graph=True)
    for g, ref in zip(grads, first):
        # create_graph=True does not change the first-order gradient
        torch.testing.assert_close(g, ref, rtol=0, atol=0)
    penalty = sum(g.pow(2).sum() for g in grads)
    with pytest.raises(RuntimeError, match=MESSAGE):
        penalty.backward()


def test_first_order_through_create_graph_leaves_other_paths_alone():
    """create_graph=True with a penalty on a part of the graph augcl is not in still works."""
    z = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    h = z @ w
    loss = AF.nt_xent(h[:3], h[3:], backend="reference")
    (gz,) = torch.autograd.grad(loss, z, create_graph=True)
    gz.detach().sum()  # usable as a value
    (gw,) = torch.autograd.grad(w.pow(2).sum(), w, create_graph=True)
    gw.sum().backward()  # second order where augcl is not involved
    assert torch.equal(w.grad, torch.full_like(w, 2.0))
