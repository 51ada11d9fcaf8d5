"""Kernel-level tests of SwAV's Sinkhorn-Knopp: the C++ CPU kernel (torch.ops.augcl.sinkhorn, CPU key) and the
Triton kernels (kernels/sinkhorn.py) against float64 oracles defined here. The Triton kernels run on CUDA tensors
when a GPU is visible (compiled), else on CPU tensors through the interpreter; their codes are moved to the CPU and
compared there. Tests whose names contain ``gpu`` run only compiled on a GPU (bf16 scores, SwAV-size shapes):
``pytest -k gpu`` selects them.

Oracles, fed the *same rounded inputs* converted exactly to float64:
* ``naive64``: SwAV's algorithm literally (exp, sums, divisions) in float64; used with eps = 0.05, where
  exp(S / eps) <= exp(20) cannot overflow.
* ``logdomain64``: the same math in the log domain in float64 (L -= logsumexp); used for eps = 0.01 with fp16
  inputs, where the naive fp32 algorithm overflows (shown in the test).

Scores are cosine similarities (rows and prototypes L2-normalised), as in SwAV, so |S| <= 1.
Tolerances: the rule of tests/_tolerance.py in the elementwise relative error (a code's relative error is the
absolute error of its log, which the log-domain kernels control), with the package's log-domain reference
(augcl/reference/sinkhorn.py) at the scores' precision as the same-precision yardstick: fp32 work for fp32 / fp16 /
bf16 scores, float64 for float64. fp32 codes near the underflow threshold: see ``EXP_U20_TINY``.
"""
import math
import os
import sys

# _devices sets TRITON_INTERPRET (only without a GPU) before any Triton kernel module is imported.
from _devices import gpu_only_marker, import_kernels, kernel_device, to_device

import pytest
import torch

import augcl  # noqa: F401  (loads augcl._C, which registers torch.ops.augcl.sinkhorn)
from _tolerance import assert_close_exp, assert_close_to_reference
from augcl.reference.sinkhorn import sinkhorn_reference

TK = import_kernels("sinkhorn")  # None without triton

# Where the Triton kernels run: compiled on the GPU, or on CPU tensors through the interpreter (the build mode is
# fixed when kernels/sinkhorn.py is imported).
DEVICE = kernel_device(TK, "_row_lse_kernel")
ON_GPU = DEVICE == "cuda"
gpu_only = gpu_only_marker(ON_GPU)

# The interpreter evaluates exp / log in numpy on masked cells too (zeroed afterwards with tl.where).
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


# ------------------------------------------------------------------------------------------------------------
# Oracles
# ------------------------------------------------------------------------------------------------------------


def naive64(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn, single process, literally, in float64."""
    Q = torch.exp(scores.double() / eps).t()
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iterations):
        Q = Q / Q.sum(dim=1, keepdim=True)
        Q = Q / K
        Q = Q / Q.sum(dim=0, keepdim=True)
        Q = Q / B
    Q = Q * B
    return Q.t()


def naive_fp32(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """The same literal algorithm in float32 (to show that it overflows)."""
    Q = torch.exp(scores.float() / eps).t()
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iterations):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


def logdomain64(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """The log-domain form of the same math, in float64. L is [B, K] (= log Q^T)."""
    L = scores.double() / eps
    B, K = L.shape
    L = L - torch.logsumexp(L.reshape(-1), dim=0)
    for _ in range(iterations):
        L = L - (torch.logsumexp(L, dim=0, keepdim=True) + math.log(K))
        L = L - (torch.logsumexp(L, dim=1, keepdim=True) + math.log(B))
    return torch.exp(L) * B


def cosine_scores(B: int, K: int, D: int = 16, dtype=torch.float32) -> torch.Tensor:
    z = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(K, D, dtype=torch.float64), dim=1)
    return (z @ c.t()).to(dtype)


# ------------------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------------------


def run_cpu(scores, eps, iterations):
    return torch.ops.augcl.sinkhorn(scores, eps, iterations)


def run_triton(scores, eps, iterations, path=None):
    if TK is None:
        pytest.skip("triton is not installed")
    scores = to_device(scores, DEVICE)
    reason = TK.supports(scores)
    if reason is not None:
        pytest.skip(f"triton sinkhorn cannot run here: {reason}")
    out = TK.sinkhorn_fwd(scores, eps, iterations, path=path)
    assert out.device == scores.device
    return out.cpu()


# "triton-single": the one-program, one-launch kernel; "triton-multi": the 2 + 2T launch grid path. Both are
# forced here whatever the size, so each is checked on every shape.
BACKENDS = {
    "cpu": run_cpu,
    "triton-single": lambda s, e, i: run_triton(s, e, i, "single"),
    "triton-multi": lambda s, e, i: run_triton(s, e, i, "multi"),
}
ALL = list(BACKENDS)
TRITON_PATHS = ["single", "multi"]


def assert_codes(out, scores, eps, iterations, oracle=naive64, name="codes"):
    """``out`` (the codes of ``scores``) within the tolerance rule of ``oracle`` (float64) and the log-domain
    reference at the scores' precision; returns the reference's codes."""
    out = out.cpu()
    assert torch.isfinite(out).all()
    scores = scores.cpu()
    eager = sinkhorn_reference(scores, eps, iterations)
    assert_close_exp(out, oracle(scores, eps, iterations), eager, name, log_magnitude=log_magnitude(scores, eps))
    return eager


def log_magnitude(scores, eps):
    """max |log code| bound: |S| / eps + log(B K) (the codes are exp(S / eps - u - v) with potentials of that size)."""
    finite = scores[torch.isfinite(scores)].double()
    return finite.abs().max().item() / eps + math.log(max(scores.numel(), 1)) if finite.numel() else 1.0


def assert_rows_sum_to_one(out, eager, scores, eps):
    """After the last (per-sample) normalisation every code row sums to 1. The floor is taken at the log-codes'
    magnitude: every code carries the roundoff of its log (relative to that magnitude) and the kernels' last row
    scaling is a common factor of the row, so its sum is off by that much, while the reference normalises the rows
    last in the log domain and gets sums exact to a few ulps (its error is no yardstick here)."""
    out = out.cpu()
    assert_close_to_reference(out.sum(dim=1), torch.ones(out.shape[0], dtype=torch.float64), eager.sum(dim=1),
                              "row sums", scale=log_magnitude(scores, eps))


# ------------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [1, 7, 32])
@pytest.mark.parametrize("K", [5, 33, 100])
@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
def test_matches_naive_oracle(backend, dtype, B, K, iterations):
    if backend.startswith("triton") and dtype == torch.float64:
        assert TK is None or TK.supports(torch.zeros(2, 2, dtype=torch.float64)) is not None
        pytest.skip("float64 is the CPU kernel's job (triton supports() refuses it)")
    scores = cosine_scores(B, K, dtype=dtype)
    out = BACKENDS[backend](scores, 0.05, iterations)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.is_contiguous()
    eager = assert_codes(out, scores, 0.05, iterations)
    # The log-domain oracle agrees with the literal one where the latter is safe (float64 both: the floor).
    assert_close_exp(logdomain64(scores, 0.05, iterations), naive64(scores, 0.05, iterations), None,
                     "log-domain oracle", log_magnitude=log_magnitude(scores, 0.05))
    if iterations > 0:
        assert_rows_sum_to_one(out, eager, scores, 0.05)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous(backend, layout):
    B, K = 7, 33
    if layout == "transposed":
        scores = cosine_scores(K, B).t()  # [B, K] with strides (1, B)
    else:
        scores = cosine_scores(2 * B, 3 * K)[::2, ::3]
    assert not scores.is_contiguous()
    out = BACKENDS[backend](scores, 0.05, 3)
    assert_codes(out, scores, 0.05, 3)
    # strided scores are read where they are: bitwise the codes of a contiguous copy
    assert torch.equal(out, BACKENDS[backend](scores.contiguous(), 0.05, 3))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("iterations", [0, 3])
def test_fp16_small_epsilon_no_overflow(backend, iterations):
    eps = 0.01
    scores = cosine_scores(32, 100, dtype=torch.float16)
    scores[0, 0] = 1.0  # |S| / eps = 100: exp(100) > float32 max
    naive = naive_fp32(scores, eps, iterations)
    assert not torch.isfinite(naive).all(), "the naive fp32 algorithm was expected to overflow here"
    out = BACKENDS[backend](scores, eps, iterations)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert_codes(out, scores, eps, iterations, logdomain64)


@pytest.mark.parametrize("backend", ALL)
def test_deterministic(backend):
    scores = cosine_scores(32, 100)
    a = BACKENDS[backend](scores, 0.05, 3)
    b = BACKENDS[backend](scores, 0.05, 3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("shape", [(0, 5), (4, 0)])
def test_empty(backend, shape):
    out = BACKENDS[backend](torch.zeros(shape), 0.05, 3)
    assert out.shape == shape and out.dtype == torch.float32


def test_cpu_bf16_input():
    scores = cosine_scores(7, 33, dtype=torch.bfloat16)
    out = run_cpu(scores, 0.05, 3)
    assert out.dtype == torch.float32
    assert_codes(out, scores, 0.05, 3)


@pytest.mark.parametrize(
    "scores, eps, iters, match",
    [
        (torch.zeros(5), 0.05, 3, "scores must be 2-D"),
        (torch.zeros(2, 3, 4), 0.05, 3, "scores must be 2-D"),
        (torch.zeros(2, 3, dtype=torch.int64), 0.05, 3, "scores must be float"),
        (torch.zeros(2, 3), 0.0, 3, "epsilon must be"),
        (torch.zeros(2, 3), -0.1, 3, "epsilon must be"),
        (torch.zeros(2, 3), float("nan"), 3, "epsilon must be"),
        (torch.zeros(2, 3), float("inf"), 3, "epsilon must be"),
        (torch.zeros(2, 3), 0.05, -1, "iterations must be >= 0"),
    ],
)
def test_cpu_errors(scores, eps, iters, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.augcl.sinkhorn(scores, eps, iters)


def test_triton_supports_reasons():
    if TK is None:
        pytest.skip("triton is not installed")
    assert "float64" in TK.supports(torch.zeros(2, 3, dtype=torch.float64))
    assert "2-D" in TK.supports(torch.zeros(5))
    assert "int64" in TK.supports(torch.zeros(2, 3, dtype=torch.int64))
    if TK._interpreted():
        assert TK.supports(torch.zeros(2, 3)) is None
        assert TK.supports(torch.zeros(2, 3, dtype=torch.float16)) is None
        assert "bfloat16" in TK.supports(torch.zeros(2, 3, dtype=torch.bfloat16))
    elif ON_GPU:
        assert TK.supports(torch.zeros(2, 3, device=DEVICE)) is None
        assert TK.supports(torch.zeros(2, 3, dtype=torch.float16, device=DEVICE)) is None
        assert "TRITON_INTERPRET" in TK.supports(torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------------------------
# The C++ CPU kernel's code paths. Two kernels: the AVX2 vectorised one (chosen when the CPU has AVX2 + FMA) and
# the portable scalar one (forced here with AUGCL_CPU_VEC=0, read by the op on every call); on a CPU without
# AVX2 both parametrisations run the scalar kernel. Two domains, each in both kernels: the exp-domain fast path,
# taken when the range R = (max S - min S) / eps is at most EXP_LIMIT (80 for fp32 / fp16 / bf16 scores, 300 for
# fp64; see csrc/cpu/sinkhorn.cpp), and the log-domain kernels otherwise. AUGCL_SINKHORN_DOMAIN (read on every
# call) selects: "log" forces the log domain, "exp" demands the exp domain (the op raises if R exceeds the limit),
# unset chooses by R. The two domains round differently, so a result bitwise equal to the forced one of a domain
# shows which path an unforced call took.
# ------------------------------------------------------------------------------------------------------------

CPU_PATHS = ["vec", "scalar"]
DOMAINS = ["exp", "log"]
EXP_LIMIT = {torch.float32: 80.0, torch.float16: 80.0, torch.bfloat16: 80.0, torch.float64: 300.0}


def _use_cpu_path(monkeypatch, path, domain="auto"):
    if path == "scalar":
        monkeypatch.setenv("AUGCL_CPU_VEC", "0")
    else:
        monkeypatch.delenv("AUGCL_CPU_VEC", raising=False)
    if domain == "auto":
        monkeypatch.delenv("AUGCL_SINKHORN_DOMAIN", raising=False)
    else:
        monkeypatch.setenv("AUGCL_SINKHORN_DOMAIN", domain)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# Vector widths are 8 (fp32) / 4 (fp64) lanes and column ranges multiples of 16: K < width, K = width, K not a
# multiple of either, B = 1, and a size split into several row and column tasks (> 2^14 cells). The exp domain's
# row primitives work in 8-, 16- and 4-wide steps with scalar or partial-vector tails, covered by the same Ks.
@pytest.mark.parametrize("B,K", [(1, 3), (1, 8), (3, 7), (5, 17), (19, 40), (130, 1003)])
@pytest.mark.parametrize("iterations", [0, 3])
def test_cpu_paths_vector_tails(monkeypatch, domain, path, dtype, B, K, iterations):
    _use_cpu_path(monkeypatch, path, domain)
    scores = cosine_scores(B, K, dtype=dtype)
    out = run_cpu(scores, 0.05, iterations)
    assert out.dtype == dtype and out.shape == (B, K)
    assert_codes(out, scores, 0.05, iterations)


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_cpu_paths_fp16_eps_001(monkeypatch, path, iterations):
    _use_cpu_path(monkeypatch, path)
    scores = cosine_scores(67, 203, dtype=torch.float16)
    scores[3, 7] = 1.0  # |S| / eps = 100: the naive fp32 algorithm overflows
    scores[5, :] = -1.0  # a row far below the others: its terms only survive the log domain
    out = run_cpu(scores, 0.01, iterations)
    assert torch.isfinite(out).all()
    assert_codes(out, scores, 0.01, iterations, logdomain64)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("path", CPU_PATHS)
def test_cpu_paths_bf16_input(monkeypatch, domain, path):
    _use_cpu_path(monkeypatch, path, domain)
    scores = cosine_scores(9, 45, dtype=torch.bfloat16)
    assert_codes(run_cpu(scores, 0.05, 3), scores, 0.05, 3)


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("iterations", [0, 2])
def test_cpu_paths_minus_inf_cells(monkeypatch, path, iterations):
    """-inf scores (cells that must get code 0) in the middle and in the vector tail; every row and column keeps
    a finite cell, so every logsumexp is finite (the op itself does not reject -inf; functional.sinkhorn does)."""
    _use_cpu_path(monkeypatch, path)
    scores = cosine_scores(21, 45)
    scores[2, 3] = scores[7, 44] = scores[20, 40:] = float("-inf")
    out = run_cpu(scores, 0.05, iterations)
    assert (out[scores == float("-inf")] == 0).all()
    assert_codes(out, scores, 0.05, iterations, logdomain64)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_deterministic_across_thread_counts(monkeypatch, domain, path, dtype):
    """Bitwise identical codes for 1, 2 and 3 threads: 300 x 1000 cells split into 1-3 row tasks (column-max
    buffers combined by max) and 1-3 column ranges (each column summed over its rows in index order); in the exp
    domain, 19 row blocks of 16 rows (fixed by B) split between the threads, their column partials added in block
    order."""
    _use_cpu_path(monkeypatch, path, domain)
    scores = cosine_scores(300, 1000, dtype=dtype)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(run_cpu(scores, 0.05, 3))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert_codes(outs[0], scores, 0.05, 3)


@pytest.mark.parametrize("domain", DOMAINS)
def test_cpu_paths_agree(monkeypatch, domain):
    """The two paths differ only in rounding (exp implementations, order of the subtractions): both within the
    rule of the oracle."""
    scores = cosine_scores(64, 3000)
    for path in CPU_PATHS:
        _use_cpu_path(monkeypatch, path, domain)
        assert_codes(run_cpu(scores, 0.05, 3), scores, 0.05, 3, name=f"codes ({path} kernel)")


# ---- The exp-domain fast path and the log-domain kernels side by side


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B", [1, 2, 33, 256])
@pytest.mark.parametrize("K", [1, 5, 100, 3000])
def test_cpu_domains_match_oracle(monkeypatch, dtype, B, K):
    """Both domains in both kernels against the literal float64 oracle, iterations 0..3 (SwAV's eps 0.05 on cosine
    scores: R <= 40, within the exp-domain limit). The unforced op takes the exp domain here (bitwise equal)."""
    scores = cosine_scores(B, K, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for path in CPU_PATHS:
        for domain in DOMAINS:
            _use_cpu_path(monkeypatch, path, domain)
            for it in range(4):
                out = run_cpu(scores, 0.05, it)
                assert out.dtype == acc and out.shape == (B, K) and out.is_contiguous()
                try:
                    eager = assert_codes(out, scores, 0.05, it)
                    if it > 0:
                        assert_rows_sum_to_one(out, eager, scores, 0.05)
                except AssertionError as e:
                    raise AssertionError(f"{path} kernel, {domain} domain, iterations {it}: {e}") from None
                if domain == "exp":
                    _use_cpu_path(monkeypatch, path, "auto")
                    assert torch.equal(run_cpu(scores, 0.05, it), out), f"{path}, iterations {it}: not exp domain"
                    _use_cpu_path(monkeypatch, path, domain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_cpu_domains_non_contiguous(monkeypatch, dtype, layout):
    """Non-contiguous scores give bitwise the codes of their contiguous copy, in both domains and kernels."""
    B, K = 37, 203
    if layout == "transposed":
        scores = cosine_scores(K, B, dtype=dtype).t()
    else:
        scores = cosine_scores(2 * B, 3 * K, dtype=dtype)[::2, ::3]
    assert not scores.is_contiguous()
    for path in CPU_PATHS:
        for domain in DOMAINS:
            _use_cpu_path(monkeypatch, path, domain)
            out = run_cpu(scores, 0.05, 3)
            assert torch.equal(out, run_cpu(scores.contiguous(), 0.05, 3)), (path, domain)
            assert_codes(out, scores, 0.05, 3, name=f"codes ({path} kernel, {domain} domain)")


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("side", ["below", "above"])
def test_cpu_domain_threshold(monkeypatch, path, dtype, side):
    """Scores scaled so that R = (max S - min S) / eps is 0.5 below or above the exp-domain limit: below, the
    unforced op takes the exp domain; above, the log domain (and demanding the exp domain raises). Both within
    the rule of the float64 log-domain oracle. Log values here reach ~R in magnitude (fp32 spacing 7.6e-6 beyond
    64), which the log-domain kernels and the fp32 reference round alike; the exp domain rounds each exponent once,
    after computing it in double."""
    limit = EXP_LIMIT[dtype]
    R = limit - 0.5 if side == "below" else limit + 0.5
    scores = cosine_scores(33, 100, dtype=dtype)
    lo, hi = scores.double().min().item(), scores.double().max().item()
    eps = (hi - lo) / R
    _use_cpu_path(monkeypatch, path, "log")
    log = run_cpu(scores, eps, 3)
    _use_cpu_path(monkeypatch, path, "auto")
    auto = run_cpu(scores, eps, 3)
    assert_codes(log, scores, eps, 3, logdomain64, "codes (log domain)")
    _use_cpu_path(monkeypatch, path, "exp")
    if side == "below":
        exp = run_cpu(scores, eps, 3)
        assert_codes(exp, scores, eps, 3, logdomain64, "codes (exp domain)")
        assert not torch.equal(exp, log)  # the domains are distinguishable on this input
        assert torch.equal(auto, exp)
    else:
        with pytest.raises(RuntimeError, match="exceeds the exp-domain limit"):
            run_cpu(scores, eps, 3)
        assert torch.equal(auto, log)
        assert torch.isfinite(auto).all()


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("iterations", [0, 3])
def test_cpu_fp16_eps_001_takes_log_domain(monkeypatch, path, iterations):
    """fp16 scores with eps 0.01 (R ~ 190, and exp(S / eps) overflows fp32 in the literal algorithm): the log
    domain runs, finite and correct."""
    eps = 0.01
    scores = cosine_scores(67, 203, dtype=torch.float16)
    scores[3, 7] = 1.0
    assert not torch.isfinite(naive_fp32(scores, eps, iterations)).all()
    assert (scores.double().max() - scores.double().min()).item() / eps > EXP_LIMIT[torch.float16]
    _use_cpu_path(monkeypatch, path, "exp")
    with pytest.raises(RuntimeError, match="exceeds the exp-domain limit"):
        run_cpu(scores, eps, iterations)
    _use_cpu_path(monkeypatch, path, "log")
    log = run_cpu(scores, eps, iterations)
    _use_cpu_path(monkeypatch, path, "auto")
    out = run_cpu(scores, eps, iterations)
    assert torch.equal(out, log)
    assert torch.isfinite(out).all()
    assert_codes(out, scores, eps, iterations, logdomain64)


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("bad", ["-inf", "inf", "nan"])
def test_cpu_non_finite_scores_take_log_domain(monkeypatch, path, bad):
    """Non-finite scores (range inf or NaN) never take the exp domain: the op's results are those of the
    log-domain kernels, as before the exp domain existed (functional.sinkhorn rejects them earlier)."""
    scores = cosine_scores(21, 45)
    scores[2, 3] = scores[20, 40] = float(bad)
    _use_cpu_path(monkeypatch, path, "exp")
    with pytest.raises(RuntimeError, match="exceeds the exp-domain limit"):
        run_cpu(scores, 0.05, 2)
    _use_cpu_path(monkeypatch, path, "log")
    log = run_cpu(scores, 0.05, 2)
    _use_cpu_path(monkeypatch, path, "auto")
    torch.testing.assert_close(run_cpu(scores, 0.05, 2), log, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------------------
# The two Triton paths: size dispatch, launch counts, shapes spanning several tiles of the one-program kernel
# ------------------------------------------------------------------------------------------------------------


def _require_triton():
    if TK is None:
        pytest.skip("triton is not installed")
    reason = TK.supports(torch.zeros(2, 2, device=DEVICE))
    if reason is not None:
        pytest.skip(f"triton sinkhorn cannot run here: {reason}")


@pytest.mark.parametrize("path", TRITON_PATHS)
@pytest.mark.parametrize("B,K", [(65, 129), (130, 257)])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_triton_paths_several_tiles(path, B, K, iterations):
    # 65 x 129 and 130 x 257 cross the 64 x 128 tiles of the one-program kernel (and the 64 x 64 tiles of the
    # multi-launch kernels) with partial last tiles in both dimensions.
    _require_triton()
    scores = cosine_scores(B, K)
    out = TK.sinkhorn_fwd(to_device(scores, DEVICE), 0.05, iterations, path=path)
    assert_codes(out, scores, 0.05, iterations)


@pytest.mark.parametrize("path", TRITON_PATHS)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_triton_paths_fp16_eps_001(path, iterations):
    _require_triton()
    scores = cosine_scores(33, 150, dtype=torch.float16)
    scores[3, 7] = 1.0  # |S| / eps = 100: the naive fp32 algorithm overflows
    out = TK.sinkhorn_fwd(to_device(scores, DEVICE), 0.01, iterations, path=path)
    assert torch.isfinite(out).all()
    assert_codes(out, scores, 0.01, iterations, logdomain64)


def test_triton_paths_agree():
    """The one-program and the multi-launch paths differ only in rounding: both within the rule of the oracle."""
    _require_triton()
    scores = cosine_scores(45, 77)
    for path in TRITON_PATHS:
        assert_codes(TK.sinkhorn_fwd(to_device(scores, DEVICE), 0.05, 3, path=path), scores, 0.05, 3,
                     name=f"codes ({path} path)")


@pytest.mark.parametrize("iterations", [0, 3])
def test_triton_launch_counts(monkeypatch, iterations):
    """The one-program path is exactly one kernel launch; the multi-launch path 2 + 2T."""
    _require_triton()
    launched = []
    real = TK._launch

    def counting(kernel, grid):
        launched.append((kernel, grid))
        return real(kernel, grid)

    monkeypatch.setattr(TK, "_launch", counting)
    scores = to_device(cosine_scores(9, 20), DEVICE)
    TK.sinkhorn_fwd(scores, 0.05, iterations, path="single")
    assert len(launched) == 1 and launched[0][1] == (1,)
    launched.clear()
    TK.sinkhorn_fwd(scores, 0.05, iterations, path="multi")
    assert len(launched) == 2 + 2 * iterations


def test_triton_select_path(monkeypatch):
    _require_triton()
    limit = TK.SINGLE_PROGRAM_MAX_CELLS
    assert TK.select_path(1, limit) == "single"
    assert TK.select_path(1, limit + 1) == "multi"
    assert TK.select_path(256, 3000) == "multi"  # SwAV's benchmark sizes use the grid path
    assert TK.select_path(10 ** 6, 10 ** 6, "single") == "single"
    assert TK.select_path(1, 1, "multi") == "multi"
    with pytest.raises(ValueError, match="path must be"):
        TK.select_path(1, 1, "one")


@pytest.mark.parametrize("limit", [0, 1 << 30])
def test_dispatched_triton_uses_both_paths(monkeypatch, limit):
    """Through augcl.functional.sinkhorn(backend="triton"): the size threshold decides the path (lowered to 0 to
    force the multi-launch path, raised to force the one-program path); both match the oracle."""
    _require_triton()
    from augcl import functional as AF

    monkeypatch.setattr(TK, "SINGLE_PROGRAM_MAX_CELLS", limit)
    seen = []
    real = TK._launch
    monkeypatch.setattr(TK, "_launch", lambda k, g: seen.append(k) or real(k, g))
    scores = cosine_scores(21, 40)
    out = AF.sinkhorn(to_device(scores, DEVICE), 0.05, 3, backend="triton")
    assert_codes(out, scores, 0.05, 3)
    assert len(seen) == (8 if limit == 0 else 1)


# ------------------------------------------------------------------------------------------------------------
# Compiled on a GPU only: bf16 scores (no bf16 in the interpreter) and SwAV-size shapes
# ------------------------------------------------------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize("path", TRITON_PATHS)
@pytest.mark.parametrize("B,K", [(7, 33), (130, 257)])
@pytest.mark.parametrize("iterations", [0, 3])
def test_gpu_triton_bf16_scores(path, B, K, iterations):
    # bf16 scores are read in their own dtype and converted to fp32 in registers: the oracle gets the same rounded
    # values, and the fp32 reference is the yardstick (as test_cpu_bf16_input).
    _require_triton()
    scores = cosine_scores(B, K, dtype=torch.bfloat16)
    out = run_triton(scores, 0.05, iterations, path)
    assert out.dtype == torch.float32
    assert_codes(out, scores, 0.05, iterations)


@gpu_only
@pytest.mark.parametrize("path", TRITON_PATHS)
@pytest.mark.parametrize("B,K", [(43, 3000), (256, 3000), (4096, 3000), (1, 5000), (5000, 1), (129, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_triton_large_swav_sizes(path, B, K, dtype):
    """SwAV's K = 3000 at the benchmark's batch sizes, on both paths whatever the size (the one-program kernel on
    12M cells too: one SM, but a few ms), plus degenerate widths. The values entering each exp, S/eps - u - v,
    reach ~40 in magnitude (fp32 spacing 3.8e-6) and a code's relative error is its log's absolute error, a few
    such roundings plus fp32 sums over up to 4096 rows in 64-row tiles (the GPU's exp is ex2.approx of
    x * log2(e), another ~1e-6 relative): what the fp32 reference's own roundings amount to."""
    _require_triton()
    scores = cosine_scores(B, K, dtype=dtype)
    out = run_triton(scores, 0.05, 3, path)
    assert_rows_sum_to_one(out, assert_codes(out, scores, 0.05, 3), scores, 0.05)


@gpu_only
def test_gpu_triton_non_contiguous_large():
    # a transposed [K, B] buffer (column-major scores, as from prototypes(z).t()) and a strided slice, SwAV size
    _require_triton()
    for scores in (cosine_scores(3000, 512).t(), cosine_scores(1024, 6000)[::2, ::2]):
        assert not scores.is_contiguous()
        dev = to_device(scores, DEVICE)
        assert dev.stride() == scores.stride()
        for path in TRITON_PATHS:
            out = TK.sinkhorn_fwd(dev, 0.05, 3, path=path)
            assert_codes(out, scores, 0.05, 3, name=f"codes ({path} path)")


# ------------------------------------------------------------------------------------------------------------
# opcheck of the registered ops
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cpp_op(dtype):
    if not hasattr(torch.ops.augcl, "sinkhorn"):
        pytest.skip("augcl._C was built without the sinkhorn kernel")
    torch.library.opcheck(torch.ops.augcl.sinkhorn.default, (cosine_scores(7, 33, dtype=dtype), 0.05, 3))


def test_opcheck_triton_op():
    _require_triton()
    from augcl.ops.sinkhorn import sinkhorn_triton

    scores = cosine_scores(7, 33)
    if torch.cuda.is_available():
        torch.library.opcheck(sinkhorn_triton, (scores.cuda(), 0.05, 3))
    else:
        # As in test_contrastive: under TRITON_INTERPRET the kernels cannot run on fake tensors and Inductor
        # cannot lower a Triton kernel on CPU tensors, so only the schema is checked here (both paths share it).
        torch.library.opcheck(sinkhorn_triton, (scores, 0.05, 3), test_utils=("test_schema",))


# ------------------------------------------------------------------------------------------------------------
# GPU code generation without a GPU
# ------------------------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import augcl.kernels.sinkhorn as TK

assert type(TK._sinkhorn_single_program_kernel).__name__ == "JITFunction"
sig = {"S": "*fp16", "U": "*fp32", "V": "*fp32", "OUT": "*fp32", "B": "i32", "K": "i32", "iterations": "i32",
       "inv_eps": "fp32", "log_b": "fp32", "log_k": "fp32", "stride_sb": "i32", "stride_sk": "i32",
       "stride_ob": "i32", "stride_ok": "i32", "BLOCK_B": "constexpr", "BLOCK_K": "constexpr"}
import inspect
if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
    print("SKIP ASTSource of triton", triton.__version__, "has no constexprs argument")
    raise SystemExit(0)
src = ASTSource(fn=TK._sinkhorn_single_program_kernel, signature=sig,
                constexprs={"BLOCK_B": TK._SINGLE_BLOCK_B, "BLOCK_K": TK._SINGLE_BLOCK_K})
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": TK._SINGLE_NUM_WARPS})
assert "cubin" in k.asm and len(k.asm["cubin"]) > 0
ttir = k.asm["ttir"]  # before lowering: only the kernel's own tl.debug_barrier calls are barriers here
print("BARRIERS", ttir.count("ttg.barrier") + ttir.count("gpu.barrier"))
"""


def test_single_program_kernel_compiles_for_sm90(tmp_path):
    """The interpreter cannot show that the one-program kernel lowers for a real GPU (it ignores
    tl.debug_barrier, for one): compile it ahead of time for sm_90 (PTX and cubin through ptxas), in a
    subprocess without TRITON_INTERPRET, and check that the 5 barriers between the passes survive to the TTIR."""
    import subprocess

    _require_triton()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("ptxas" in proc.stderr.lower() and "not found" in proc.stderr.lower()):
        pytest.skip(f"no ptxas for ahead-of-time compilation: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    barriers = int(proc.stdout.split("BARRIERS")[1].split()[0])
    # after the init, after reading the row results, after writing c, after each column and row pass (the last
    # two inside the iterations loop: static occurrences)
    assert barriers == 5
