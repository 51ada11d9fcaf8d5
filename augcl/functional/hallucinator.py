"""The Hallucinator (Wu et al., "Hallucination improves the performance of unsupervised visual representation
learning", ICCV 2023): the fused generator op and the loss wiring of its three placements.

* :func:`hallucinate` — the generator ``h = MLP([x, x + lam (x - k)])`` as one fused op (augcl/ops/hallucinator.py).
* :func:`hallucinate_moco_loss` — MoCo v1/v2: queries ``[q; h]`` against positives ``[k; k]`` and the queue.
* :func:`hallucinate_simclr_loss` — SimCLR: NT-Xent over the 4B rows ``[q; h; k; k]``, the duplicate key
  masked by default (``mask_duplicate=False`` is the reference).
* :func:`hallucinate_simsiam_loss` — SimSiam: one generator call per side after the predictor, independent lam,
  stop-gradient targets ``[z; z]``.

The losses take the generator module (``augcl.nn.Hallucinator``, or any module with its interface: ``dim``,
``lam_range`` and ``forward(x, k, lam, check=...) -> [x; h]``) and call it, so its hooks and wrappers apply.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augcl import _validate as V
from augcl._numerics import l2_normalize
from augcl.distributed import gather_with_grad, world_info
from augcl.functional.contrastive import contrastive_loss_named, soft_info_nce_named
from augcl.ops.hallucinator import hallucinate_op

__all__ = ["hallucinate", "hallucinate_moco_loss", "hallucinate_simclr_loss", "hallucinate_simsiam_loss"]

Lam = Union[None, float, Tensor]
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla")


def _lam_vector(lam, b: int, x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """lam as the op's [B] tensor in the accumulation dtype ``acc``, detached."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a float or a floating tensor, got {lam.dtype}")
        if lam.dim() == 0:
            lam = lam.reshape(1).expand(b)
        elif lam.dim() != 1 or lam.shape[0] != b:
            raise ValueError(f"lam must be a float, a 0-dim tensor or a [B] = [{b}] tensor (one value per row of "
                             f"x), got shape {tuple(lam.shape)}")
        if lam.device != x.device:
            raise ValueError(f"lam is on {lam.device} but x is on {x.device}")
        return lam.detach().to(acc).contiguous()
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    return torch.full((b,), float(lam), dtype=acc, device=x.device)


def hallucinate(
    x: torch.Tensor,
    k: torch.Tensor,
    lam: Union[float, torch.Tensor],
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The Hallucinator's generator (Wu et al. 2023) as one fused op: ``h = MLP([x, x + lam (x - k)])``.

    ``MLP = Linear(2D, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, D)``, weights in nn.Linear layout. The
    extrapolation is folded into the first layer (``[x, x~] W1^T = x W1a^T + x~ W1b^T``): the [B, 2D] concat is
    never built.

    Args:
        x: [B, D] anchors (float16/bfloat16/float32/float64); k: [B, D] their positives.
        lam: the extrapolation strength, a float, a 0-dim tensor or a [B] tensor (per-sample). Not
            differentiated (the reference samples it from U(0, 0.1)).
        w1: [H, 2D], b1: [H]; w2: [H, H], b2: [H]; w3: [D, H], b3: [D].
        backend: see augcl.dispatch.

    Every tensor is computed in one dtype: the autocast dtype when autocast is on for x's device (what
    ``nn.Linear`` does there), else the widest dtype among x, k and the weights. Accumulation is fp32 (fp64 for
    fp64). Gradients flow to x, k and every weight and bias (in their own dtypes).

    Returns:
        h [B, D] in the compute dtype.

    Non-finite x, k, lam or weights raise ValueError naming them (one deferred check after the op, one host
    sync; ``augcl.set_checks(False)`` skips it, as does ``torch.compile`` tracing).
    """
    return hallucinate_named(x, k, lam, (w1, b1, w2, b2, w3, b3), backend=backend, check=True)


HALLUCINATE_WEIGHT_NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")


def hallucinate_named(x, k, lam, weights, *, backend=None, check=True, weight_names=HALLUCINATE_WEIGHT_NAMES):
    """:func:`hallucinate` with the weights as a tuple; ``check=False`` skips the deferred value check (the
    Hallucinator losses fold it into their own single check); ``weight_names`` name the weights in errors."""
    w1, b1, w2, b2, w3, b3 = weights
    n_w1, n_b1, n_w2, n_b2, n_w3, n_b3 = weight_names
    V.check_matrix("x", x)
    b, d = x.shape
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k must be a torch.Tensor, got {type(k).__name__}")
    if tuple(k.shape) != (b, d):
        raise ValueError(f"k must have the shape of x {list(x.shape)} (one positive per anchor), got {list(k.shape)}")
    V.check_matrix("k", k, rows=b, dim=d)
    if not isinstance(w1, torch.Tensor):
        raise TypeError(f"{n_w1} must be a torch.Tensor, got {type(w1).__name__}")
    if w1.dim() != 2 or w1.shape[1] != 2 * d or w1.shape[0] == 0:
        raise ValueError(f"{n_w1} must have shape [H, 2D] = [H, {2 * d}] (the generator's input is [x, x~], twice "
                         f"x's width D = {d}), got {list(w1.shape)}")
    hdim = w1.shape[0]
    V.check_param(n_w1, w1, (hdim, 2 * d), "[H, 2D]")
    V.check_param(n_b1, b1, (hdim,), "[H]")
    V.check_param(n_w2, w2, (hdim, hdim), "[H, H]")
    V.check_param(n_b2, b2, (hdim,), "[H]")
    V.check_param(n_w3, w3, (d, hdim), "[D, H]")
    V.check_param(n_b3, b3, (d,), "[D]")
    named = [("x", x), ("k", k)] + list(zip(weight_names, weights))
    V.check_same_device(named)
    tensors = [t for _, t in named]
    # autocast exists for cpu / cuda / xpu / ...; on other device types (meta: shape inference) it is simply off
    autocast = x.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else V.common_dtype(tensors)
    lam_vec = _lam_vector(lam, b, x, torch.float64 if dtype == torch.float64 else torch.float32)
    args = [t.to(dtype) for t in tensors]
    xc, kc, w1c, b1c, w2c, b2c, w3c, b3c = args
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        h = hallucinate_op(xc, kc, lam_vec, w1c, b1c, w2c, b2c, w3c, b3c, backend=backend)
    if check:
        V.deferred_value_check(h, None, named[:2] + [("lam", lam_vec)] + named[2:], what="the hallucinated h",
                               hint="the generator MLP overflowed (inputs or weights of huge magnitude, or "
                                    "beyond the float16 range?)")
    return h


def _check_generator(generator) -> None:
    # Duck-typed (functional never imports nn): augcl.nn.Hallucinator, or a module with its interface.
    if not (isinstance(generator, nn.Module) and isinstance(getattr(generator, "dim", None), int)
            and hasattr(generator, "lam_range")):
        raise TypeError(f"generator must be an augcl.nn.Hallucinator (a module with dim, lam_range and "
                        f"forward(x, k, lam, check=...)), got {type(generator).__name__}")


def _check_embeddings(generator: nn.Module, named) -> None:
    """The loss helpers' [B, D] inputs, checked under the helper's own argument names (not the generator's
    x / k): floating 2-D, non-empty, all of the first one's shape, on one device, D = generator.dim."""
    (first, ref), rest = named[0], named[1:]
    V.check_matrix(first, ref)
    for name, t in rest:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{name} must have the shape of {first} {list(ref.shape)}, got {list(t.shape)}")
        V.check_matrix(name, t)
    V.check_same_device(named)
    if ref.shape[1] != generator.dim:
        raise ValueError(f"{first} has width {ref.shape[1]} but the generator was built for dim={generator.dim}")


def _value_inputs(generator: nn.Module, named, lams) -> list:
    """(name, tensor) list of a helper's deferred non-finite check: its inputs, tensor lams (float lams are
    checked eagerly, drawn ones are finite) and the generator's parameters."""
    out = list(named)
    out += [(name, t) for name, t in lams if isinstance(t, Tensor)]
    out += [(f"generator.{n}", p) for n, p in generator.named_parameters()]
    return out


def hallucinate_moco_loss(
    generator: nn.Module,
    q: Tensor,
    k: Tensor,
    queue: Optional[Tensor] = None,
    temperature: float = 0.2,
    *,
    normalize_query: bool = False,
    lam: Lam = None,
    backend: Optional[str] = None,
) -> Tensor:
    """MoCo v1/v2 with the Hallucinator (the reference's ``models/moco.py`` with ``generator=True``).

    ``[q; h] = generator(q, k)``; each of the 2B rows is an InfoNCE anchor whose positive is k_i (row i and row
    B + i both against key i) and whose negatives are the queue rows; mean over the 2B rows, i.e.
    ``(InfoNCE(q, k) + InfoNCE(h, k)) / 2``. Computed without building ``[k; k]``.

    Args:
        generator: the :class:`Hallucinator` (dim = D).
        q: [B, D] query projections (with gradient); k: [B, D] keys from the momentum encoder (normalised here,
            as MoCo does; pass them detached).
        queue: [K, D] negatives (rows already normalised, e.g. ``augcl.nn.MoCoQueue``) or None. The reference
            keeps its queue as [D, K]: pass ``queue.T``.
        temperature: 0.2 (MoCo v2; the reference's MoCo default is 0.07).
        normalize_query: L2-normalise q before the generator. The reference does not (quirk, default False):
            q enters the extrapolation unnormalised while k is unit-norm.
        lam: fixed lam (float, 0-dim or [B]) instead of drawing it from ``generator.lam_range``.

    Returns the 0-dim loss (fp32; fp64 for fp64 inputs). The caller enqueues k ONCE (B rows): the reference
    enqueues ``[k; k]``, which fills the queue with duplicate keys and halves its diversity.

    ``queue=None`` raises ValueError: without a queue no row has a negative (the loss would be 0). Non-finite
    q, k, queue, lam or generator parameters raise ValueError naming them (one deferred check, one host sync).
    """
    _check_generator(generator)
    named = [("q", q), ("k", k)]
    _check_embeddings(generator, named)
    if queue is None:
        raise ValueError("hallucinate_moco_loss: queue is None, so no row has a negative (MoCo's negatives are the "
                         "queue); pass a queue [K, D]")
    V.check_matrix("queue", queue, dim=q.shape[1])
    named.append(("queue", queue))
    V.check_same_device(named)
    value_inputs = _value_inputs(generator, named, [("lam", lam)])
    k = l2_normalize(k)
    if normalize_query:
        q = l2_normalize(q)
    queries = generator(q, k, lam, check=False)  # [q; h], normalised by the loss
    b = q.shape[0]
    pos_idx = torch.arange(2 * b, device=q.device) % b
    pos_weight = torch.ones(2 * b, 1, device=q.device)
    return soft_info_nce_named(queries, k, pos_idx, pos_weight, queue, temperature, normalize=True, backend=backend,
                          value_inputs=value_inputs, weight_checked=True)


def _simclr_indices(b: int, mask_duplicate: bool, device) -> Tuple[Tensor, Tensor]:
    """Positive and excluded columns of the 4B rows ``[q; h; k; k']`` (k' the second copy of k)."""
    n = 2 * b
    rows = torch.arange(2 * n, device=device)
    pos = (rows + n) % (2 * n)
    if not mask_duplicate:
        return pos, rows
    # The other copy of key i: for a k row it is the row's own duplicate; for a q/h row it is the duplicate of its
    # positive (an exact copy of the positive scored as a negative).
    key_row = torch.where(rows >= n, rows, pos)
    dup = torch.where(key_row < n + b, key_row + b, key_row - b)
    return pos, torch.stack((rows, dup), 1)


def hallucinate_simclr_loss(
    generator: nn.Module,
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    mask_duplicate: bool = True,
    lam: Lam = None,
    gather_distributed: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """SimCLR with the Hallucinator (the reference's ``models/simclr_generator.py``): NT-Xent over 4B rows.

    ``F1 = generator(z1, z2) = [z1; h]``, ``F2 = [z2; z2]``, ``Z = [F1; F2]`` [4B, D], rows L2-normalised. Row r
    has positive ``(r + 2B) mod 4B`` and every other row as a negative except itself; mean over the 4B rows.

    Args:
        z1, z2: [B, D] projections of the two views (both with gradient).
        temperature: NT-Xent temperature (default 0.5).
        mask_duplicate: the two copies of z2_i are identical; by default each is excluded from the other's row
            and from the rows whose positive is the other copy (z1_i's and h_i's), so no row scores an exact
            copy of its positive as a negative. False reproduces the reference, where they are negatives.
        lam: fixed lam instead of drawing it from ``generator.lam_range``.
        gather_distributed: under torch.distributed, the candidates are the 4B rows of every rank (global
            negatives, gradients summed over ranks, as ``nt_xent``); anchors and the mean stay local, so the mean
            of the ranks' losses is the single-process loss of the concatenated batch (with the same lam).

    Returns the 0-dim loss (fp32; fp64 for fp64 inputs).
    """
    _check_generator(generator)
    named = [("z1", z1), ("z2", z2)]
    _check_embeddings(generator, named)
    value_inputs = _value_inputs(generator, named, [("lam", lam)])
    f1 = generator(z1, z2, lam, check=False)
    z = torch.cat((f1, z2.to(f1.dtype), z2.to(f1.dtype)), 0)
    pos, excl = _simclr_indices(z1.shape[0], mask_duplicate, z1.device)
    rank, world = world_info() if gather_distributed else (0, 1)
    if world == 1:
        return contrastive_loss_named(z, z, pos, temperature=temperature, excl_idx=excl, normalize=True, backend=backend,
                                 value_inputs=value_inputs)
    # rank r's [q; h; k; k'] block sits at r*4B of the gathered candidates: shift the (local) columns there
    off = rank * z.shape[0]
    return contrastive_loss_named(z, gather_with_grad(z), pos + off, temperature=temperature, excl_idx=excl + off,
                             normalize=True, backend=backend, value_inputs=value_inputs)


def hallucinate_simsiam_loss(
    generator: nn.Module,
    p1: Tensor,
    p2: Tensor,
    z1: Tensor,
    z2: Tensor,
    *,
    lam: Sequence[Lam] = (None, None),
) -> Tensor:
    """SimSiam with the Hallucinator after the predictor (the reference's ``models/simsiam.py``).

    ``o1 = generator(p1, p2)``, ``o2 = generator(p2, p1)`` (each [2B, D], two calls with independent lam, both
    extrapolating from the original predictions); loss = ``-(cos(o1, [z2; z2]) + cos(o2, [z1; z1])) / 2``
    averaged over rows, targets detached (stop-gradient), computed without building ``[z; z]``.

    Args:
        p1, p2: [B, D] predictor outputs; z1, z2: [B, D] projector outputs (detached here).
        lam: (lam for side 1, lam for side 2); None entries are drawn from ``generator.lam_range``.

    Returns the 0-dim loss (in the dtype of the generator's output).
    """
    _check_generator(generator)
    named = [("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2)]
    _check_embeddings(generator, named)
    if isinstance(lam, (str, bytes, Tensor)) or not hasattr(lam, "__len__"):
        raise TypeError(f"lam must be a pair (lam of side 1, lam of side 2), each None, a float or a tensor, got "
                        f"{type(lam).__name__}")
    if len(lam) != 2:
        raise ValueError(f"lam must be a pair (side 1, side 2), got {len(lam)} entries")
    value_inputs = _value_inputs(generator, named, [("lam[0]", lam[0]), ("lam[1]", lam[1])])
    b, d = p1.shape
    o1 = generator(p1, p2, lam[0], check=False).view(2, b, d)
    o2 = generator(p2, p1, lam[1], check=False).view(2, b, d)
    t2 = z2.detach().to(o1.dtype).unsqueeze(0)
    t1 = z1.detach().to(o2.dtype).unsqueeze(0)
    loss = -(F.cosine_similarity(o1, t2, dim=-1).mean() + F.cosine_similarity(o2, t1, dim=-1).mean()) / 2
    V.deferred_value_check(loss, None, value_inputs, what="the SimSiam loss",
                           hint="the generator MLP overflowed (inputs or weights of huge magnitude, or beyond the "
                                "float16 range?)")
    return loss
