"""The Hallucinator (Wu et al., "Hallucination improves the performance of unsupervised visual representation
learning", ICCV 2023; SPEC §2) as a drop-in module, and the loss wiring of its three placements.

* :class:`Hallucinator` — the generator: ``forward(x, k, lam=None) -> [x; h]`` [2B, D], with the fused
  :func:`augcl.functional.hallucinate` op inside. Submodules ``fc1``, ``fc2``, ``fc3`` (the reference's names), so
  a reference ``Generator``'s state_dict loads (its duplicate ``MLP.*`` keys are accepted too).
* :func:`hallucinate_moco_loss` — MoCo v1/v2: queries ``[q; h]`` against positives ``[k; k]`` and the queue.
* :func:`hallucinate_simclr_loss` — SimCLR: NT-Xent over the 4B rows ``[q; h; k; k]``, the duplicate key
  masked by default (``mask_duplicate=False`` is the reference).
* :func:`hallucinate_simsiam_loss` — SimSiam: one generator call per side after the predictor, independent lam,
  stop-gradient targets ``[z; z]``.

The helpers are re-exported from :mod:`augcl.functional`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augcl import _validate as V
from augcl.distributed import gather_with_grad, world_info
from augcl.functional import _contrastive_loss, _hallucinate, _soft_info_nce

__all__ = ["Hallucinator", "hallucinate_moco_loss", "hallucinate_simclr_loss", "hallucinate_simsiam_loss"]

Lam = Union[None, float, Tensor]


class Hallucinator(nn.Module):
    """Feature-space positive generator: ``x~ = x + lam (x - k)``, ``h = MLP([x, x~])``, output ``[x; h]``.

    ``MLP = fc1: Linear(2 dim, hidden) -> ReLU -> fc2: Linear(hidden, hidden) -> ReLU -> fc3: Linear(hidden,
    dim)``, nn.Linear's default initialisation (the reference's). Trained by the main loss (it has no loss of its
    own): put its parameters in the optimizer.

    Args:
        dim: embedding width D of x and k.
        hidden: width H of the hidden layers (default 2 * dim, the reference's ``inner_dim = in_dim``).
        lam_range: (lo, hi), lam ~ U(lo, hi) when ``forward`` is not given one (default (0.0, 0.1), the
            reference's ``random.uniform(0, 0.1)``).
        per_sample: draw one lam per row ([B]) instead of one per call (the reference draws one per call).
        normalize_input: L2-normalise x before the extrapolation (and in the returned ``[x; h]``). The reference's
            MoCo does not normalise q while its keys k are normalised; True makes both unit-norm.
        backend: augcl backend for the fused op (None = automatic, see augcl.dispatch).

    ``forward(x, k, lam=None, generator=None)``: x, k [B, D]; lam a float, 0-dim or [B] tensor, or None to draw
    it from ``lam_range`` with ``torch.rand`` (optionally from a ``torch.Generator``). Returns [2B, D].
    Non-finite x, k, lam or parameters raise ValueError naming them (see :func:`augcl.functional.hallucinate`;
    the loss helpers below fold that check into their own, one host sync per call).
    """

    def __init__(self, dim: int, hidden: Optional[int] = None, lam_range: Tuple[float, float] = (0.0, 0.1),
                 per_sample: bool = False, normalize_input: bool = False, backend: Optional[str] = None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        hidden = 2 * dim if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1 (or None for 2 * dim), got {hidden!r}")
        lo, hi = _check_lam_range(lam_range)
        self.dim, self.hidden = dim, hidden
        self.lam_range = (lo, hi)
        self.per_sample = bool(per_sample)
        self.normalize_input = bool(normalize_input)
        self.backend = backend
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, dim)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, lam_range={self.lam_range}, per_sample={self.per_sample}, "
                f"normalize_input={self.normalize_input}")

    def sample_lam(self, batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
        """lam ~ U(lam_range): a [batch] fp32 tensor if ``per_sample`` else a 0-dim one (on ``device``; no host
        sync)."""
        V.check_int("batch", batch, lo=1)
        _check_torch_generator(generator)
        lo, hi = self.lam_range
        shape = (batch,) if self.per_sample else ()
        u = torch.rand(shape, generator=generator, device=device if generator is None else generator.device)
        return (lo + (hi - lo) * u).to(device)

    def hallucinate(self, x: Tensor, k: Tensor, lam: Lam = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Only the hallucinated rows h [B, D] (x normalised first if ``normalize_input``)."""
        x = self._check(x, k)
        return self._h(x, k, lam, generator, check=True)

    def forward(self, x: Tensor, k: Tensor, lam: Lam = None, generator: Optional[torch.Generator] = None, *,
                check: bool = True) -> Tensor:
        """``[x; h]`` [2B, D]. ``check=False`` leaves the non-finite check of the inputs to the caller (the loss
        helpers below fold it into their own single deferred check, one host sync per loss instead of two); they
        still call the module (``generator(...)``), so forward hooks, ``module.compile()`` and wrappers apply."""
        x = self._check(x, k)
        h = self._h(x, k, lam, generator, check)
        return torch.cat((x.to(h.dtype), h), 0)

    def _check(self, x: Tensor, k: Tensor) -> Tensor:
        for name, t in (("x", x), ("k", k)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{name} must be a 2-D tensor [B, D], got shape {tuple(t.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x has width {x.shape[1]} but this Hallucinator was built for dim={self.dim}")
        if tuple(k.shape) != tuple(x.shape):
            raise ValueError(f"k must have the shape of x {list(x.shape)} (one positive per anchor), got "
                             f"{list(k.shape)}")
        return F.normalize(x, dim=1) if self.normalize_input else x

    def _h(self, x: Tensor, k: Tensor, lam: Lam, generator: Optional[torch.Generator], check: bool = True) -> Tensor:
        _check_torch_generator(generator)
        if lam is None:
            lam = self.sample_lam(x.shape[0], x.device, generator)
        return _hallucinate(x, k, lam, (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                        self.fc3.weight, self.fc3.bias),
                            backend=self.backend, check=check, weight_names=_FC_NAMES)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The reference Generator also registers its fc layers inside ``MLP = Sequential(fc1, ReLU, fc2, ReLU,
        # fc3)``, so its state_dict holds every weight twice (MLP.0/2/4.* alias fc1/2/3.*). Accept those keys:
        # use them where the fc key is missing, drop them otherwise.
        for i, fc in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
            for p in ("weight", "bias"):
                alias = f"{prefix}MLP.{i}.{p}"
                if alias in state_dict:
                    value = state_dict.pop(alias)
                    state_dict.setdefault(f"{prefix}{fc}.{p}", value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


_FC_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")


def _check_torch_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_lam_range(lam_range) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in lam_range)
    except (TypeError, ValueError):
        raise TypeError(f"lam_range must be a pair of floats (lo, hi), got {lam_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"lam_range must be finite with lo <= hi, got {lam_range!r}")
    return lo, hi


def _check_generator(generator) -> None:
    if not isinstance(generator, Hallucinator):
        raise TypeError(f"generator must be an augcl.nn.Hallucinator, got {type(generator).__name__}")


def _check_embeddings(generator: Hallucinator, named) -> None:
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


def _value_inputs(generator: Hallucinator, named, lams) -> list:
    """(name, tensor) list of a helper's deferred non-finite check: its inputs, tensor lams (float lams are
    checked eagerly, drawn ones are finite) and the generator's parameters."""
    out = list(named)
    out += [(name, t) for name, t in lams if isinstance(t, Tensor)]
    out += [(f"generator.{n}", p) for n, p in generator.named_parameters()]
    return out


def hallucinate_moco_loss(
    generator: Hallucinator,
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
    k = F.normalize(k, dim=1)
    if normalize_query:
        q = F.normalize(q, dim=1)
    queries = generator(q, k, lam, check=False)  # [q; h], normalised by the loss
    b = q.shape[0]
    pos_idx = torch.arange(2 * b, device=q.device) % b
    pos_weight = torch.ones(2 * b, 1, device=q.device)
    return _soft_info_nce(queries, k, pos_idx, pos_weight, queue, temperature, normalize=True, backend=backend,
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
    generator: Hallucinator,
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
        return _contrastive_loss(z, z, pos, temperature=temperature, excl_idx=excl, normalize=True, backend=backend,
                                 value_inputs=value_inputs)
    # rank r's [q; h; k; k'] block sits at r*4B of the gathered candidates: shift the (local) columns there
    off = rank * z.shape[0]
    return _contrastive_loss(z, gather_with_grad(z), pos + off, temperature=temperature, excl_idx=excl + off,
                             normalize=True, backend=backend, value_inputs=value_inputs)


def hallucinate_simsiam_loss(
    generator: Hallucinator,
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
