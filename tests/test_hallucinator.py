"""The Hallucinator: functional ``hallucinate`` on every backend against float64 autograd through the
reference's eager generator, gradcheck, opcheck, torch.compile, ``nn.Hallucinator`` (reference weights load,
lam sampling), the MoCo / SimCLR / SimSiam wiring helpers against eager implementations, and argument errors.

Numeric comparisons follow the rule of tests/_tolerance.py: the eager implementation in float64 is the reference;
at float32 (the Triton interpreter) the same eager implementation in float32 is the yardstick, in float64 it is
both."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from augcl import functional as AF
from augcl.dispatch import REGISTRY, BackendUnavailableError
from augcl.nn import Hallucinator
from augcl.reference.hallucinator import ReferenceGenerator
from _tolerance import assert_close_to_reference

BACKENDS = ["reference", "cpu", "triton"]


def _require(backend, x):
    reason = REGISTRY["hallucinate"].reasons(x)[backend]
    if reason is not None:
        pytest.skip(f"hallucinate backend {backend!r} cannot run here: {reason}")


def _pair(b, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return x, k


def _ref_module(d, h=None, seed=0):
    torch.manual_seed(seed)
    return ReferenceGenerator(2 * d, h or 2 * d, d).double()


def _weights(m):
    return [m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.fc3.weight, m.fc3.bias]


def _eager_h(ref, x, k, lam):
    """The reference generator's h with a per-sample lam (the reference takes a float; [B, 1] broadcasts)."""
    lam_c = lam.reshape(-1, 1) if isinstance(lam, torch.Tensor) else lam
    return ref(x, k, lam_c)[x.shape[0]:]


# ------------------------------------------------------------------------------ functional vs eager fp64
# Every backend against fp64 autograd through the reference's structure; the Triton interpreter only on tiny
# shapes in fp32 (it has no fp64), B up to thousands on the CPU backends. (No fp32 gradcheck of the Triton
# backend: finite differences in fp32 cross the ReLU kinks; its gradients are compared with fp64 autograd here
# and with the fp64 oracle in test_hallucinator_kernels.py.)
CASES = [(1, 4), (6, 33), (2000, 4), (150, 128), (40, 256), (9, 512)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,d", CASES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_functional_matches_eager_reference(backend, b, d, per_sample):
    dtype = torch.float32 if backend == "triton" else torch.float64
    if backend == "triton" and b * d > 2000:
        pytest.skip("the triton interpreter runs only the tiny shapes (kernel tests cover more)")
    ref = _ref_module(d, seed=d)
    x, k = _pair(b, d, dtype, seed=b)
    _require(backend, x.detach())
    lam = torch.rand(b, dtype=torch.float64) * 0.1 if per_sample else 0.05
    lam_op = lam.to(dtype) if per_sample else lam
    ws = [w.detach().to(dtype).requires_grad_() for w in _weights(ref)]
    h = AF.hallucinate(x, k, lam_op, *ws, backend=backend)
    assert h.shape == (b, d) and h.dtype == dtype
    gh = torch.randn(b, d, dtype=torch.float64)
    grads = torch.autograd.grad(h, [x, k] + ws, gh.to(dtype))

    def eager(m):
        """h and its gradients through the eager generator ``m``, in m's dtype."""
        dt = m.fc1.weight.dtype
        xm, km = x.detach().to(dt).requires_grad_(), k.detach().to(dt).requires_grad_()
        want = _eager_h(m, xm, km, lam.to(dt) if per_sample else lam)
        return [want.detach(), *torch.autograd.grad(want, [xm, km] + _weights(m), gh.to(dt))]

    # float64: the eager generator is the reference; float32: its float32 copy is the yardstick
    yardstick = None if dtype == torch.float64 else eager(copy.deepcopy(ref).to(dtype))
    names = ["h"] + [f"grad_{n}" for n in ("x", "k", "w1", "b1", "w2", "b2", "w3", "b3")]
    assert_close_to_reference([h.detach(), *grads], eager(ref), yardstick, names)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    ref = _ref_module(4, 6)
    x, k = _pair(3, 4)
    _require(backend, x.detach())
    ws = [w.detach().clone().requires_grad_() for w in _weights(ref)]
    lam = torch.tensor([0.02, 0.05, 0.09], dtype=torch.float64)

    def fn(x, k, *ws):
        return AF.hallucinate(x, k, lam, *ws, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, k, *ws))


def _op_args(dtype=torch.float32):
    x, k = _pair(5, 4, dtype)
    ws = [w.detach().to(dtype).requires_grad_() for w in _weights(_ref_module(4, 8))]
    lam = torch.rand(5, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return (x, k, lam, *ws)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_cpp_ops(dtype):
    _require("cpu", torch.zeros(1, 1, dtype=dtype))
    args = _op_args(dtype)
    torch.library.opcheck(torch.ops.augcl.hallucinate.default, args)
    h, a1, a2 = torch.ops.augcl.hallucinate(*args)
    x, k, lam, w1, b1, w2, b2, w3, b3 = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.augcl.hallucinate_backward.default,
                          (torch.randn_like(h), x, k, lam, w1, w2, w3, a1.detach(), a2.detach()))


def test_opcheck_triton_op():
    _require("triton", torch.zeros(1, 1))
    from augcl.ops.hallucinator import hallucinate_triton

    # Under TRITON_INTERPRET the kernels cannot run on fake tensors (see test_contrastive): schema + autograd.
    torch.library.opcheck(hallucinate_triton, _op_args(), test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_fullgraph(backend):
    _require(backend, torch.zeros(1, 1))
    torch._dynamo.reset()
    gen = Hallucinator(8, backend=backend)
    x, k = _pair(6, 8, torch.float32)
    lam = torch.rand(6) * 0.1

    def step(x, k):
        return AF.hallucinate(x, k, lam, gen.fc1.weight, gen.fc1.bias, gen.fc2.weight, gen.fc2.bias,
                              gen.fc3.weight, gen.fc3.bias, backend=backend)

    got = torch.compile(step, fullgraph=True)(x, k)
    want = step(x, k)
    torch.testing.assert_close(got, want)
    gw = torch.autograd.grad(got.square().sum(), [x, gen.fc1.weight])
    ww = torch.autograd.grad(want.square().sum(), [x, gen.fc1.weight])
    for a, b in zip(gw, ww):
        torch.testing.assert_close(a, b)


def test_half_dtypes_and_autocast():
    """fp16 / bf16 inputs and weights on the C++ kernel (the reference on the same inputs, fp32 accumulation, the
    yardstick), and nn.Hallucinator under CPU autocast (nn.Linear's: every layer in bf16, so the eager generator
    in bf16 is the yardstick); the float64 eager generator on the same rounded values is the reference."""
    ref = _ref_module(16)
    x, k = _pair(10, 16, torch.float32)
    gen = Hallucinator(16, backend="cpu")
    gen.load_state_dict(ref.float().state_dict())
    _require("cpu", x.detach())

    def eager(dtype, lo=None):
        """h of the eager generator in ``dtype`` from inputs and weights rounded to ``lo`` (default dtype)."""
        m = copy.deepcopy(ref).to(lo or dtype).to(dtype)
        return _eager_h(m, x.detach().to(lo or dtype).to(dtype), k.detach().to(lo or dtype).to(dtype), 0.05)

    for dtype in (torch.bfloat16, torch.float16):
        args = [x.to(dtype), k.to(dtype), 0.05, *[w.to(dtype) for w in _weights(gen)]]
        got = AF.hallucinate(*args, backend="cpu")
        assert got.dtype == dtype
        assert_close_to_reference(got, eager(torch.float64, dtype), AF.hallucinate(*args, backend="reference"),
                                  f"h ({dtype})")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gen.hallucinate(x, k, 0.05)
    assert got.dtype == torch.bfloat16  # nn.Linear's autocast behaviour: compute in the autocast dtype
    assert_close_to_reference(got, eager(torch.float64, torch.bfloat16), eager(torch.bfloat16), "h (autocast)")
    g = torch.autograd.grad(got.float().sum(), gen.fc1.weight)[0]
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


# ------------------------------------------------------------------------------------------ nn module
def test_module_loads_reference_weights_and_matches():
    d = 8
    ref = _ref_module(d, seed=3)
    gen = Hallucinator(d).double()
    gen.load_state_dict(ref.state_dict())  # strict: the reference's MLP.* aliases are accepted
    assert set(gen.state_dict()) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    for a, b in zip(_weights(gen), _weights(ref)):
        assert torch.equal(a, b)
    x, k = _pair(7, d)
    out = gen(x, k, 0.06)
    want = ref(x, k, 0.06)
    assert out.shape == (14, d)
    ga = torch.autograd.grad(out.sum(), [x, k] + _weights(gen))
    gb = torch.autograd.grad(want.sum(), [x, k] + _weights(ref))
    # float64: the reference structure is both the reference and the eager computation
    assert_close_to_reference([out.detach(), *ga], [want.detach(), *gb], None, "output and gradients")
    # and the other way: our state_dict loads into the reference structure's fc layers
    ref2 = ReferenceGenerator(2 * d, 2 * d, d).double()
    missing, unexpected = ref2.load_state_dict(gen.state_dict(), strict=False)
    assert not unexpected and all(m.startswith("MLP.") for m in missing)
    torch.testing.assert_close(ref2(x, k, 0.06), want)


def test_module_lam_sampling():
    gen = Hallucinator(4, hidden=6, lam_range=(0.2, 0.3))
    assert gen.fc1.weight.shape == (6, 8) and gen.fc3.weight.shape == (4, 6)
    assert Hallucinator(5).hidden == 10
    g = torch.Generator().manual_seed(1)
    lam = gen.sample_lam(1000, torch.device("cpu"), g)
    assert lam.shape == () and 0.2 <= float(lam) <= 0.3
    gen_ps = Hallucinator(4, lam_range=(0.2, 0.3), per_sample=True)
    lams = gen_ps.sample_lam(1000, torch.device("cpu"), g)
    assert lams.shape == (1000,) and float(lams.min()) >= 0.2 and float(lams.max()) <= 0.3
    assert float(lams.std()) > 0.01  # really per sample
    # forward with a generator is reproducible and equals passing the drawn lam explicitly
    x, k = _pair(5, 4, torch.float32)
    a = gen_ps(x, k, generator=torch.Generator().manual_seed(7))
    lam7 = gen_ps.sample_lam(5, torch.device("cpu"), torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, gen_ps(x, k, lam7))
    assert not torch.allclose(a, gen_ps(x, k, 0.0))


def test_module_normalize_input():
    gen = Hallucinator(4, normalize_input=True)
    x, k = _pair(3, 4, torch.float32)
    out = gen(x * 10, k, 0.05)
    torch.testing.assert_close(out[:3], F.normalize(x * 10, dim=1))
    torch.testing.assert_close(out[3:], gen.hallucinate(F.normalize(x, dim=1), k, 0.05))


# ------------------------------------------------------------------------------------------ wiring helpers
def _gen_pair(d, seed=0):
    ref = _ref_module(d, seed=seed)
    gen = Hallucinator(d).double()
    gen.load_state_dict(ref.state_dict())
    return gen, ref


@pytest.mark.parametrize("normalize_query", [False, True])
def test_moco_helper_matches_eager(normalize_query):
    b, d, kq, t, lam = 6, 8, 20, 0.2, 0.04
    gen, ref = _gen_pair(d, 1)
    q, _ = _pair(b, d, seed=2)
    k = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(kq, d, dtype=torch.float64), dim=1)
    loss = AF.hallucinate_moco_loss(gen, q, k, queue, t, normalize_query=normalize_query, lam=lam)
    # eager, as the reference's moco.py: queries [q; h] normalised, positives [k; k], CE with label 0
    q_in = F.normalize(q, dim=1) if normalize_query else q
    qq = F.normalize(ref(q_in, k, lam), dim=1)
    kk = torch.cat((k, k), 0)
    logits = torch.cat(((qq * kk).sum(1, keepdim=True), qq @ queue.t()), 1) / t
    want = F.cross_entropy(logits, torch.zeros(2 * b, dtype=torch.long))
    ga = torch.autograd.grad(loss, [q] + _weights(gen))
    gb = torch.autograd.grad(want, [q] + _weights(ref))
    assert_close_to_reference([loss.detach(), *ga], [want.detach(), *gb], None, "loss and gradients")  # float64


def _eager_simclr_4b(ref, z1, z2, lam, t, mask_duplicate):
    """NT-Xent over the 4B rows [z1; h; z2; z2] with an explicit [4B, 4B] logit matrix."""
    b = z1.shape[0]
    z = F.normalize(torch.cat((ref(z1, z2, lam), z2, z2), 0), dim=1)
    n = 4 * b
    s = z @ z.t() / t
    rows = torch.arange(n)
    pos = (rows + 2 * b) % n
    mask = torch.eye(n, dtype=torch.bool)
    if mask_duplicate:
        for r in range(n):
            key = r if r >= 2 * b else int(pos[r])
            dup = key + b if key < 3 * b else key - b
            mask[r, dup] = True
    s = s.masked_fill(mask, float("-inf"))
    return F.cross_entropy(s, pos)


@pytest.mark.parametrize("mask_duplicate", [True, False])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_simclr_helper_matches_eager_4b(mask_duplicate, backend):
    b, d, t, lam = 5, 8, 0.5, 0.07
    gen, ref = _gen_pair(d, 4)
    gen.backend = backend
    z1, z2 = _pair(b, d, seed=5)
    _require(backend, z1.detach())
    loss = AF.hallucinate_simclr_loss(gen, z1, z2, t, mask_duplicate=mask_duplicate, lam=lam, backend=backend)
    want = _eager_simclr_4b(ref, z1, z2, lam, t, mask_duplicate)
    ga = torch.autograd.grad(loss, [z1, z2] + _weights(gen))
    gb = torch.autograd.grad(want, [z1, z2] + _weights(ref))
    assert_close_to_reference([loss.detach(), *ga], [want.detach(), *gb], None, "loss and gradients")  # float64
    if not mask_duplicate:
        # the reference's behaviour is plain NT-Xent of F1 = [z1; h] against F2 = [z2; z2]
        f1 = gen(z1, z2, lam)
        assert_close_to_reference(loss, AF.nt_xent(f1, torch.cat((z2, z2)), t), None, "loss (NT-Xent form)")


def test_simclr_duplicate_mask_changes_the_loss():
    gen, _ = _gen_pair(8)
    z1, z2 = _pair(4, 8)
    a = AF.hallucinate_simclr_loss(gen, z1, z2, lam=0.05)
    b = AF.hallucinate_simclr_loss(gen, z1, z2, lam=0.05, mask_duplicate=False)
    # an exact copy of the positive scored as a negative adds exp(1/t) terms: the unmasked loss is larger
    assert float(b.detach()) > float(a.detach()) + 0.1


def test_simsiam_helper_matches_eager():
    b, d = 6, 8
    gen, ref = _gen_pair(d, 6)
    p1, p2 = _pair(b, d, seed=7)
    z1, z2 = _pair(b, d, seed=8)
    lam1, lam2 = 0.03, 0.08
    loss = AF.hallucinate_simsiam_loss(gen, p1, p2, z1, z2, lam=(lam1, lam2))
    # eager, as the reference's simsiam.py + SimSiam's symmetric negative cosine
    o1 = ref(p1, p2, lam1)
    o2 = ref(p2, p1, lam2)
    t1, t2 = torch.cat((z1, z1)).detach(), torch.cat((z2, z2)).detach()
    want = -(F.cosine_similarity(o1, t2).mean() + F.cosine_similarity(o2, t1).mean()) / 2
    ga = torch.autograd.grad(loss, [p1, p2] + _weights(gen))
    gb = torch.autograd.grad(want, [p1, p2] + _weights(ref))
    assert_close_to_reference([loss.detach(), *ga], [want.detach(), *gb], None, "loss and gradients")  # float64
    # stop-gradient targets: no gradient reaches z1, z2
    loss = AF.hallucinate_simsiam_loss(gen, p1, p2, z1, z2)
    assert torch.autograd.grad(loss, [z1, z2], allow_unused=True) == (None, None)


def test_simsiam_independent_lam_per_side():
    gen, _ = _gen_pair(8)
    p1, p2 = _pair(4, 8)
    z1, z2 = _pair(4, 8, seed=1)
    torch.manual_seed(0)
    drawn = AF.hallucinate_simsiam_loss(gen, p1, p2, z1, z2)
    torch.manual_seed(0)
    l1, l2 = float(gen.sample_lam(4, torch.device("cpu"))), float(gen.sample_lam(4, torch.device("cpu")))
    assert l1 != l2
    torch.testing.assert_close(drawn, AF.hallucinate_simsiam_loss(gen, p1, p2, z1, z2, lam=(l1, l2)))


# ------------------------------------------------------------------------------------------------ errors
def _args(b=4, d=3, h=6):
    x, k = _pair(b, d, torch.float32)
    ws = [w.detach().float() for w in _weights(_ref_module(d, h))]
    return x, k, ws


def test_errors_name_the_argument():
    x, k, ws = _args()
    with pytest.raises(ValueError, match="k must have the shape of x"):
        AF.hallucinate(x, k[:3], 0.1, *ws)
    with pytest.raises(ValueError, match="k must have the shape of x"):
        AF.hallucinate(x, torch.randn(4, 5), 0.1, *ws)
    with pytest.raises(ValueError, match=r"lam must be .*\[B\] = \[4\]"):
        AF.hallucinate(x, k, torch.rand(3), *ws)
    with pytest.raises(TypeError, match="lam must be"):
        AF.hallucinate(x, k, "0.1", *ws)
    with pytest.raises(ValueError, match="lam must be finite"):
        AF.hallucinate(x, k, math.inf, *ws)
    with pytest.raises(ValueError, match=r"w1 must have shape \[H, 2D\] = \[H, 6\]"):
        AF.hallucinate(x, k, 0.1, torch.randn(6, 5), *ws[1:])
    with pytest.raises(ValueError, match="w3 must have shape"):
        AF.hallucinate(x, k, 0.1, *ws[:4], torch.randn(3, 5), ws[5])
    with pytest.raises(ValueError, match="b2 must have shape"):
        AF.hallucinate(x, k, 0.1, *ws[:3], torch.randn(5), *ws[4:])
    with pytest.raises(TypeError, match="x must be"):
        AF.hallucinate(x.long(), k, 0.1, *ws)
    with pytest.raises(ValueError, match="x is empty"):
        AF.hallucinate(x[:0], k[:0], 0.1, *ws)
    with pytest.raises(ValueError, match="unknown backend"):
        AF.hallucinate(x, k, 0.1, *ws, backend="nope")


def test_forced_backend_that_cannot_run_says_why():
    x, k, ws = _args()
    with pytest.raises(BackendUnavailableError, match="float64"):
        AF.hallucinate(x.double(), k.double(), 0.1, *[w.double() for w in ws], backend="triton")


def test_module_errors():
    gen = Hallucinator(3, hidden=6)
    x, k, _ = _args()
    with pytest.raises(ValueError, match="built for dim=3"):
        gen(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="k must have the shape of x"):
        gen(x, k[:2])
    with pytest.raises(ValueError, match=r"\[B\] = \[4\]"):
        gen(x, k, torch.rand(5))
    with pytest.raises(ValueError, match="lam_range"):
        Hallucinator(3, lam_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="dim must be"):
        Hallucinator(0)
    with pytest.raises(TypeError, match="generator must be"):
        AF.hallucinate_simclr_loss(torch.nn.Linear(3, 3), x, k)
    with pytest.raises(ValueError, match="z2 must have the shape of z1"):
        AF.hallucinate_simclr_loss(gen, x, k[:2])
    with pytest.raises(ValueError, match="k must have the shape of q"):
        AF.hallucinate_moco_loss(gen, x, k[:2])
    with pytest.raises(ValueError, match="z1 must have the shape of p1"):
        AF.hallucinate_simsiam_loss(gen, x, k, x[:2], k)
