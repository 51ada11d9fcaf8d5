"""``augcl.patch()``: augcl's drop-ins put under lightly, solo-learn, timm, torchvision and pytorch-metric-learning,
so existing training code runs on augcl's fused ops with one added line::

    import augcl
    augcl.patch()                   # at the top of the training script
    ...                             # the lightly / solo-learn / timm / torchvision / pml code, unchanged

    with augcl.patch(timm=False):   # the same, undone when the block ends
        ...

    augcl.unpatch()                 # every peer back to its own code

What is patched (:data:`TARGETS`; "checked": the peer versions each target was verified against):

=========== ============================================================ ================================ ============
peer        object (defining module)                                     computed by                      checked
=========== ============================================================ ================================ ============
lightly     class ``NTXentLoss`` (``lightly.loss.ntx_ent_loss``)         ``augcl.functional.nt_xent``;    1.6.0
                                                                         with a memory bank ``info_nce``
lightly     class ``SwaVLoss`` (``lightly.loss.swav_loss``)              ``augcl.functional.swav_loss``   1.6.0
solo-learn  ``simclr_loss_func`` (``solo.losses.simclr``)                ``augcl.compat.solo``            1.0.6
solo-learn  ``mocov2plus_loss_func`` (``solo.losses.mocov2plus``)        ``augcl.compat.solo``            1.0.6
solo-learn  ``swav_loss_func`` (``solo.losses.swav``)                    ``augcl.compat.solo``            1.0.2, 1.0.6
solo-learn  class ``SinkhornKnopp`` (``solo.utils.sinkhorn_knopp``)      ``augcl.compat.solo``            1.0.2, 1.0.6
timm        class ``Mixup`` (``timm.data.mixup``)                        ``augcl.compat.timm.Mixup``      1.0.31
torchvision classes ``MixUp``, ``CutMix``                                ``augcl.compat.torchvision``     0.29.1
            (``torchvision.transforms.v2._augment``)
pml         class ``NTXentLoss`` (``pytorch_metric_learning.losses.      ``augcl.compat.pml.NTXentLoss``  2.9.0
            ntxent_loss``)
pml         class ``SupConLoss`` (``pytorch_metric_learning.losses.      ``augcl.compat.pml.SupConLoss``  2.9.0
            supcon_loss``)
=========== ============================================================ ================================ ============

solo-learn 1.0.6 is its git main branch, whose code ``augcl.compat.solo`` reproduces (the tests restate it); the
1.0.2 wheel on PyPI has the same SwAV and Sinkhorn code but another ``simclr_loss_func(z1, z2, ...)`` and no
``mocov2plus_loss_func``: those two are skipped there (signature mismatch, not found).

Not patched, on purpose: lightly ``SwaVPrototypes``, solo-learn ``byol_loss_func`` / ``simsiam_loss_func`` and timm
``mixup_target`` compute exactly what augcl's versions compute (linear heads, a cosine, a one-hot lerp: nothing to
fuse), so a swap would only add augcl's input checks and their host sync. Subclasses the peer derives from a
patched class are reached when they only override ``__init__`` and the patched method (lightly's
``DirectCLRLoss`` truncates its inputs, then calls ``super().forward``); timm's ``FastCollateMixup`` has its own
``__call__`` (numpy batches in the collate function) and is not reached.

How, and which names are replaced:

* a **class** is patched in place: its hot method (``forward``, timm's ``__call__``) is replaced on the class
  object itself. The class stays the same object, so every name of it reaches augcl, in the peer's modules
  (``lightly.loss.NTXentLoss``, ``torchvision.transforms.v2.MixUp``, ``from x import y`` copies such as
  ``solo.methods.swav.SinkhornKnopp``) and in yours, including names imported before ``patch()``, objects built
  before it and subclasses that inherit the method; ``isinstance``, pickles and lightly's ``super(SwaVLoss,
  self)`` calls are unaffected (a replacement *subclass* bound to the module's name would make that call recurse
  forever). The constructor stays the peer's (same arguments, defaults, errors, attributes, random draws,
  ``state_dict``). The new method reads the instance's attributes at each call (a temperature schedule that assigns
  ``loss.temperature`` keeps working) and computes with augcl when augcl reproduces that configuration; an
  instance of a subclass that overrides another method the peer's computation uses (``subloss``,
  ``_compute_loss``, ...) runs the peer's code.
* a **function** (solo-learn's losses) is replaced by a wrapper with the same name and signature
  (``functools.wraps``), in its defining module and in every attribute of every *loaded module of the peer's
  package* that is the same object (``is``), found by walking ``sys.modules``: ``solo.losses.simclr_loss_func``
  (the package's re-export), ``solo.methods.simclr.simclr_loss_func`` (a method module's ``from`` import), ... A
  module of the peer imported after the call gets the wrapper from the patched module. Modules outside the peer
  (your own) that imported the function before the call keep the original: the report lists them as "held
  elsewhere" (call ``patch()`` before those imports).

Fallback, never an error mid-training: where augcl does not implement an option or a call (a pml loss with a
non-default distance, reducer or regularizer, a miner's ``indices_tuple``, collected pml statistics, a negative
lightly temperature, a timm ``mode`` that timm silently treats as ``'batch'``, ...) the peer's own code runs and a
:class:`PatchFallbackWarning` says why, once per target and reason. In a single process an error augcl raises as
``ValueError`` / ``TypeError`` where the peer returns something (a NaN input: the peer returns a NaN loss; a solo
row without positive: inf) also falls back to the peer. Under torch.distributed with several ranks that safety
net is off (a rank that reruns the peer after an augcl collective could deadlock the others): the options are
checked before any collective, but an error augcl raises is raised. ``unpatch()`` restores every method and name;
objects built meanwhile run the peer's code again.

Version guard: a target whose peer's installed version (major.minor.micro; unknown counts as unchecked) is not
among its checked versions is skipped unless ``force=True``. ``force`` never overrides the signature check: a
target whose original's parameters are not the ones augcl reproduces is skipped.

Distributed training: call ``patch()`` at module level of the training script, so that every process patches
(launchers that spawn or re-run the script start fresh interpreters).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from augcl import _validate as V
from augcl.compat import pml as _cpml
from augcl.compat import solo as _csolo
from augcl.compat import timm as _ctimm
from augcl.compat import torchvision as _ctv
from augcl.distributed import world_info
from augcl.functional.contrastive import info_nce_named, nt_xent_named
from augcl.functional.swav import swav_loss

__all__ = ["patch", "unpatch", "PatchReport", "PatchEntry", "PatchFallbackWarning", "TARGETS", "PEERS",
           "peer_status"]


class PatchFallbackWarning(UserWarning):
    """A patched object ran the peer's own implementation (an option or call augcl does not reproduce)."""


@dataclass(frozen=True)
class Peer:
    """A library ``patch()`` knows: its keyword in ``patch()``, its top-level package and its distribution."""
    key: str
    package: str
    dist: str


PEERS: Tuple[Peer, ...] = (
    Peer("lightly", "lightly", "lightly"),
    Peer("solo", "solo", "solo-learn"),
    Peer("timm", "timm", "timm"),
    Peer("torchvision", "torchvision", "torchvision"),
    Peer("pml", "pytorch_metric_learning", "pytorch-metric-learning"),
)
_PEER = {p.key: p for p in PEERS}


@dataclass(frozen=True)
class Target:
    """One patched object: the function ``module.name``, or the class ``module.name`` whose hot method ``method``
    is replaced. ``params``: the parameter names of the function, or of the class's ``__init__`` (``self`` left
    out), and ``call_params`` those of ``method``: the API augcl reproduces, checked before patching.
    ``make(function, key)`` returns the replacement function; ``make(cls, key, peer_impl)`` the method installed on
    the class (``peer_impl``: the peer's own method, which it falls back to)."""
    peer: str
    module: str
    name: str
    checked: Tuple[str, ...]
    params: Tuple[str, ...]
    make: Callable[..., Any]
    computed_by: str
    method: Optional[str] = None
    call_params: Tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.module}.{self.name}"


_MISSING = object()  # a class that inherited its hot method: unpatch deletes the installed one again


@dataclass
class _Installed:
    target: Target
    original: Any  # the function, or the class
    replacement: Any  # the wrapper function, or the method installed on the class
    own_method: Any = _MISSING  # the class's own hot method before patching (_MISSING: it inherited one)


# target key -> what is installed now; guarded by _LOCK (patch / unpatch from several threads)
_INSTALLED: Dict[str, _Installed] = {}
_LOCK = threading.RLock()
_WARNED: set = set()
_FALLBACK_ERRORS = (ValueError, TypeError)


# ------------------------------------------------------------------------------------------------- routing
def _warn_once(key: str, reason: str, kind: Optional[str] = None) -> None:
    tag = (key, kind or reason)
    if tag in _WARNED:
        return
    _WARNED.add(tag)
    warnings.warn(f"augcl.patch: {key}: {reason}; running the peer's own implementation (warned once)",
                  PatchFallbackWarning, stacklevel=4)


def _run(key: str, scope: Callable[[], Optional[str]], fused: Callable[[], Any], original: Callable[[], Any]):
    """The body of every patched method / function: augcl's ``fused()`` while ``key`` is patched and ``scope()``
    finds nothing augcl does not reproduce, else the peer's ``original()`` (with a one-time warning)."""
    if key not in _INSTALLED:
        return original()
    kind = None
    try:
        reason = scope()  # arguments the peer would reject fail here: the peer's own error follows
        if reason is None:
            return fused()
    except _FALLBACK_ERRORS as exc:
        if world_info()[1] > 1:
            raise  # another rank may be inside a collective of augcl's: rerunning the peer could deadlock
        reason = f"augcl raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        kind = f"augcl raised {type(exc).__name__}"
    _warn_once(key, reason, kind)
    return original()


def _temperature_reason(t, name: str = "temperature") -> Optional[str]:
    try:
        V.check_temperature(t, name)
    except (TypeError, ValueError) as exc:
        return f"{exc} (augcl needs a finite temperature > 0)"
    return None


@functools.lru_cache(maxsize=None)
def _override_reason(kind: type, cls: type, method: str) -> Optional[str]:
    """None when instances of ``kind`` (``cls`` or a subclass of it) can be computed by augcl: a subclass may
    override ``__init__`` and the hot method (lightly's DirectCLRLoss truncates, then calls super().forward), but
    not another method the peer's computation calls (pml's ``_compute_loss``, lightly's ``subloss``, ...)."""
    if kind is cls:
        return None
    for klass in kind.__mro__:
        if klass is cls:
            break
        for name in vars(klass):
            if name in ("__init__", method) or (name.startswith("__") and name.endswith("__")):
                continue
            if hasattr(cls, name):
                return f"{kind.__qualname__} (a subclass) overrides {name}"
    return None


def _method(cls: type, name: str, key: str, peer_impl: Callable, scope: Callable[..., Optional[str]],
            fused: Callable[..., Any]) -> Callable:
    """The hot method installed on ``cls``: ``fused(self, ...)`` (augcl) while ``key`` is patched and neither
    ``scope(self, ...)`` nor the instance's class object to it, else the peer's ``peer_impl(self, ...)``. Same
    name, docstring and (through ``__wrapped__``) signature as the peer's."""

    def method(self, *args, **kwargs):
        return _run(key, lambda: _override_reason(type(self), cls, name) or scope(self, *args, **kwargs),
                    lambda: fused(self, *args, **kwargs), lambda: peer_impl(self, *args, **kwargs))

    functools.update_wrapper(method, peer_impl)
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__augcl_patched__ = True
    return method


def _no_scope(self, *args, **kwargs) -> Optional[str]:
    return None


def _function(original: Callable, key: str, fused: Callable[..., Any],
              scope: Callable[[dict], Optional[str]] = lambda a: None) -> Callable:
    """A wrapper of ``original`` (same name and signature) that calls ``fused(**arguments)``; the arguments are
    bound to the original's signature, so its defaults apply."""
    sig = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if key not in _INSTALLED:
            return original(*args, **kwargs)
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        return _run(key, lambda: scope(a), lambda: fused(**a), lambda: original(*args, **kwargs))

    wrapper.__augcl_original__ = original
    return wrapper


def _cached(obj, config: tuple, build: Callable[[], Any]):
    """The augcl object built by ``build()`` for ``config``, kept on ``obj`` until its configuration changes. Kept
    in ``__dict__`` directly: as an nn.Module attribute it would become a submodule (``state_dict``, ``.to``)."""
    slot = obj.__dict__.get("_augcl_drop_in")
    if slot is not None and slot[0] == config:
        return slot[1]
    drop_in = build()
    obj.__dict__["_augcl_drop_in"] = (config, drop_in)
    return drop_in


def _config_key(*values) -> tuple:
    """Hashable identity of a configuration (tensors and callables by identity)."""
    return tuple(v if isinstance(v, (int, float, str, bool, type(None), tuple)) else ("id", id(v)) for v in values)


# ------------------------------------------------------------------------------------------------- lightly
def _make_lightly_ntxent(cls: type, key: str, peer_impl: Callable) -> Callable:
    bank_class = importlib.import_module("lightly.models.modules.memory_bank").MemoryBankModule

    def scope(self, out0, out1) -> Optional[str]:
        reason = _temperature_reason(self.temperature)
        if reason is not None:
            return reason
        bank = self.memory_bank
        if type(bank) is not bank_class:
            return f"memory_bank is a {type(bank).__name__}, not lightly's MemoryBankModule"
        if bank.size[0] > 0 and (len(bank.size) != 2 or not bank.feature_dim_first):
            return f"memory bank of size {bank.size} with feature_dim_first={bank.feature_dim_first}"
        return None

    def fused(self, out0: Tensor, out1: Tensor) -> Tensor:
        bank = self.memory_bank
        if bank.size[0] == 0:
            return nt_xent_named([out0, out1], ["out0", "out1"], self.temperature,
                                 gather_distributed=self.gather_distributed)
        # lightly's order: normalise both views, negatives = the bank before this call's update, update with the
        # normalised out1 when out0 requires grad. The update runs after the loss, so an error of augcl's leaves
        # the bank untouched for the fallback.
        out0 = F.normalize(out0, dim=1)
        out1 = F.normalize(out1, dim=1)
        negatives = bank.bank.detach().clone().to(out0.device)  # [K, D] as stored
        loss = info_nce_named(out0, out1, negatives, self.temperature, normalize=False,
                              value_inputs=[("out0", out0), ("out1", out1), ("memory_bank.bank", negatives)])
        if out0.requires_grad:
            bank.forward(out1, update=True)
        return loss

    return _method(cls, "forward", key, peer_impl, scope, fused)


def _make_lightly_swav(cls: type, key: str, peer_impl: Callable) -> Callable:
    def scope(self, *args, **kwargs) -> Optional[str]:
        return _temperature_reason(self.temperature)

    def fused(self, high_resolution_outputs, low_resolution_outputs, queue_outputs=None):
        return swav_loss(high_resolution_outputs, low_resolution_outputs, queue_outputs, temperature=self.temperature,
                         sinkhorn_iterations=self.sinkhorn_iterations, sinkhorn_epsilon=self.sinkhorn_epsilon,
                         distributed=self.sinkhorn_gather_distributed).reshape(1)

    return _method(cls, "forward", key, peer_impl, scope, fused)


# ---------------------------------------------------------------------------------------------- solo-learn
def _make_solo_function(name: str) -> Callable[[Any, str], Any]:
    """The wrapper of solo's ``name``, computed by ``augcl.compat.solo.<name>`` (looked up at each call)."""
    def make(original, key):
        return _function(original, key, lambda **a: getattr(_csolo, name)(**a),
                         scope=lambda a: _temperature_reason(a["temperature"]))
    return make


def _make_solo_sinkhorn(cls: type, key: str, peer_impl: Callable) -> Callable:
    def fused(self, Q):
        sk = _cached(self, _config_key(self.num_iters, self.epsilon, self.world_size),
                     lambda: _csolo.SinkhornKnopp(self.num_iters, self.epsilon, self.world_size))
        return sk(Q)

    return _method(cls, "forward", key, peer_impl, _no_scope, fused)


# ---------------------------------------------------------------------------------------------------- timm
def _make_timm_mixup(cls: type, key: str, peer_impl: Callable) -> Callable:
    def scope(self, x, target) -> Optional[str]:
        if self.mode not in _ctimm.MODES:
            return f"mode={self.mode!r} (timm runs 'batch' for a mode it does not know; augcl rejects it)"
        return None

    def fused(self, x, target):
        minmax = tuple(self.cutmix_minmax) if self.cutmix_minmax is not None else None
        config = (self.mixup_alpha, self.cutmix_alpha, minmax, self.mix_prob, self.switch_prob, self.mode,
                  self.correct_lam, self.label_smoothing, self.num_classes, self.multi_label)
        mix = _cached(self, _config_key(*config), lambda: _ctimm.Mixup(*config))
        mix.mixup_enabled = self.mixup_enabled
        mixed, soft = mix(x, target)
        # timm mixes x in place and returns it: so does the patched call where the result fits in x
        if mixed is not x and mixed.dtype == x.dtype and mixed.shape == x.shape:
            x.copy_(mixed)
            mixed = x
        return mixed, soft

    return _method(cls, "__call__", key, peer_impl, scope, fused)


# --------------------------------------------------------------------------------------------- torchvision
def _make_tv(drop_in_class: type) -> Callable[[Any, str, Callable], Callable]:
    def make(cls: type, key: str, peer_impl: Callable) -> Callable:
        def fused(self, *inputs):
            def build():
                # torchvision's own labels getter and Beta (fixed at its construction): the same labels and draws
                op = drop_in_class(alpha=self.alpha, num_classes=self.num_classes, labels_getter=self._labels_getter)
                op._dist = self._dist
                return op

            op = _cached(self, _config_key(self.alpha, self.num_classes, self._labels_getter, self._dist), build)
            return op(*inputs)

        return _method(cls, "forward", key, peer_impl, _no_scope, fused)
    return make


# ----------------------------------------------------------------------------------------------------- pml
def _make_pml(drop_in: str, reducer: str) -> Callable[[Any, str, Callable], Callable]:
    """The forward of pml's loss class, computed by ``augcl.compat.pml.<drop_in>`` when the loss has pml's default
    distance (``CosineSimilarity()``) and the class's default reducer (``reducer``, with its default options)."""
    def make(cls: type, key: str, peer_impl: Callable) -> Callable:
        c_f = importlib.import_module("pytorch_metric_learning.utils.common_functions")
        cosine = importlib.import_module("pytorch_metric_learning.distances").CosineSimilarity
        reducer_class = getattr(importlib.import_module("pytorch_metric_learning.reducers"), reducer)

        def default_reducer(r) -> bool:
            if type(r) is not reducer_class:
                return False
            # AvgNonZeroReducer is ThresholdReducer(low=0): any other threshold is another reducer
            return reducer != "AvgNonZeroReducer" or (r.low == 0 and r.high is None)

        def scope(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
            if indices_tuple is not None:
                return "indices_tuple (a miner's output) is not supported by augcl"
            if labels is None:
                return "labels=None (augcl needs labels)"
            d = self.distance
            if type(d) is not cosine or not (d.normalize_embeddings and d.p == 2 and d.power == 1
                                             and d.is_inverted):
                return f"distance={type(d).__name__} with non-default options (augcl: CosineSimilarity())"
            if getattr(self, "embedding_regularizer", None) is not None:
                return "an embedding_regularizer (augcl has none)"
            if not default_reducer(self.reducer):
                return f"reducer={type(self.reducer).__name__} (augcl: {reducer}())"
            if any(getattr(m, "collect_stats", False) for m in (self, d, self.reducer)):
                return "collect_stats=True (augcl records no pml statistics)"
            return _temperature_reason(self.temperature)

        def fused(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
            # pml's own preamble (shape checks, labels to the embeddings' device, the reference set), so the
            # identity test "ref_labels is labels" sees what pml's sees
            self.reset_stats()
            c_f.check_shapes(embeddings, labels)
            labels = c_f.to_device(labels, embeddings)
            ref_emb, ref_labels = c_f.set_ref_emb(embeddings, labels, ref_emb, ref_labels)
            loss = _cached(self, _config_key(self.temperature), lambda: getattr(_cpml, drop_in)(self.temperature))
            return loss(embeddings, labels, None, ref_emb, ref_labels)

        return _method(cls, "forward", key, peer_impl, scope, fused)
    return make


# ------------------------------------------------------------------------------------------------- targets
_SOLO_ALL = ("1.0.2", "1.0.6")
TARGETS: Tuple[Target, ...] = (
    Target("lightly", "lightly.loss.ntx_ent_loss", "NTXentLoss", ("1.6.0",),
           ("temperature", "memory_bank_size", "gather_distributed"), _make_lightly_ntxent,
           "augcl.functional.nt_xent / info_nce", "forward", ("out0", "out1")),
    Target("lightly", "lightly.loss.swav_loss", "SwaVLoss", ("1.6.0",),
           ("temperature", "sinkhorn_iterations", "sinkhorn_epsilon", "sinkhorn_gather_distributed"),
           _make_lightly_swav, "augcl.functional.swav_loss", "forward",
           ("high_resolution_outputs", "low_resolution_outputs", "queue_outputs")),
    Target("solo", "solo.losses.simclr", "simclr_loss_func", ("1.0.6",), ("z", "indexes", "temperature"),
           _make_solo_function("simclr_loss_func"), "augcl.compat.solo.simclr_loss_func"),
    Target("solo", "solo.losses.mocov2plus", "mocov2plus_loss_func", ("1.0.6",),
           ("query", "key", "queue", "temperature"), _make_solo_function("mocov2plus_loss_func"),
           "augcl.compat.solo.mocov2plus_loss_func"),
    Target("solo", "solo.losses.swav", "swav_loss_func", _SOLO_ALL, ("preds", "assignments", "temperature"),
           _make_solo_function("swav_loss_func"), "augcl.compat.solo.swav_loss_func"),
    Target("solo", "solo.utils.sinkhorn_knopp", "SinkhornKnopp", _SOLO_ALL, ("num_iters", "epsilon", "world_size"),
           _make_solo_sinkhorn, "augcl.compat.solo.SinkhornKnopp", "forward", ("Q",)),
    Target("timm", "timm.data.mixup", "Mixup", ("1.0.31",),
           ("mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam",
            "label_smoothing", "num_classes", "multi_label"), _make_timm_mixup, "augcl.compat.timm.Mixup",
           "__call__", ("x", "target")),
    Target("torchvision", "torchvision.transforms.v2._augment", "MixUp", ("0.29.1",),
           ("alpha", "num_classes", "labels_getter"), _make_tv(_ctv.MixUp), "augcl.compat.torchvision.MixUp",
           "forward", ("inputs",)),
    Target("torchvision", "torchvision.transforms.v2._augment", "CutMix", ("0.29.1",),
           ("alpha", "num_classes", "labels_getter"), _make_tv(_ctv.CutMix), "augcl.compat.torchvision.CutMix",
           "forward", ("inputs",)),
    Target("pml", "pytorch_metric_learning.losses.ntxent_loss", "NTXentLoss", ("2.9.0",), ("temperature", "kwargs"),
           _make_pml("NTXentLoss", "MeanReducer"), "augcl.compat.pml.NTXentLoss", "forward",
           ("embeddings", "labels", "indices_tuple", "ref_emb", "ref_labels")),
    Target("pml", "pytorch_metric_learning.losses.supcon_loss", "SupConLoss", ("2.9.0",), ("temperature", "kwargs"),
           _make_pml("SupConLoss", "AvgNonZeroReducer"), "augcl.compat.pml.SupConLoss", "forward",
           ("embeddings", "labels", "indices_tuple", "ref_emb", "ref_labels")),
)


# -------------------------------------------------------------------------------------------------- report
@dataclass
class PatchEntry:
    """One target's outcome. ``status``: "patched", "skipped", "already patched" (patch) or "restored",
    "not patched" (unpatch); ``reason``: why skipped (or that a patch was forced). ``method``: the method patched on
    the class (None: a function). ``modules``: for a function, the modules where its name was replaced or restored;
    ``elsewhere``: modules outside the peer that still hold the original function (imported before the call)."""
    peer: str
    target: str
    status: str
    reason: str = ""
    version: Optional[str] = None
    checked: Tuple[str, ...] = ()
    method: Optional[str] = None
    modules: Tuple[str, ...] = ()
    elsewhere: Tuple[str, ...] = ()

    @property
    def what(self) -> str:
        return f"{self.target}.{self.method}" if self.method else self.target

    def lines(self, width: int = 0) -> List[str]:
        peer = f"{self.peer} {self.version}" if self.version else self.peer
        out = [f"  {self.status:<15s} {self.what:<{width}s}  {peer}"]
        pad = " " * 18
        if self.reason:
            out.append(pad + self.reason)
        if self.modules:
            out.append(pad + "in " + ", ".join(self.modules))
        if self.elsewhere:
            out.append(pad + "held elsewhere (not replaced; call patch() before these imports): "
                       + ", ".join(self.elsewhere))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass
class PatchReport:
    """What a ``patch()`` / ``unpatch()`` call did, one :class:`PatchEntry` per target; prints as a table. The
    report of ``patch()`` is also a context manager: leaving the ``with`` block unpatches what this call
    patched (targets that were already patched before it stay)."""
    action: str
    entries: List[PatchEntry] = field(default_factory=list)

    @property
    def patched(self) -> List[str]:
        return [e.target for e in self.entries if e.status == "patched"]

    @property
    def skipped(self) -> List[str]:
        return [e.target for e in self.entries if e.status == "skipped"]

    def __getitem__(self, target: str) -> PatchEntry:
        for e in self.entries:
            if e.target == target:
                return e
        raise KeyError(target)

    def __str__(self) -> str:
        counts: Dict[str, int] = {}
        for e in self.entries:
            counts[e.status] = counts.get(e.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "nothing to do"
        width = max((len(e.what) for e in self.entries), default=0)
        lines = [f"augcl.{self.action}(): {summary}"]
        for e in self.entries:
            lines.extend(e.lines(width))
        return "\n".join(lines)

    __repr__ = __str__

    def __enter__(self) -> "PatchReport":
        return self

    def __exit__(self, *exc) -> None:
        if self.action == "patch":
            _unpatch_keys(self.patched)


# --------------------------------------------------------------------------------------------- the walking
def _release(version: Optional[str]) -> Optional[str]:
    """major.minor.micro of a version string: '0.29.1+cu130' -> '0.29.1', '1.0.6.dev0' -> '1.0.6', '1.6' ->
    '1.6.0'; None when it does not start with a number."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version or "")
    if m is None:
        return None
    return ".".join(str(int(g or 0)) for g in m.groups())


def _installed_version(peer: Peer, module=None) -> Optional[str]:
    """The version of the imported package (``__version__``), else its distribution's metadata."""
    v = getattr(module, "__version__", None) if module is not None else None
    if isinstance(v, str):
        return v
    try:
        from importlib import metadata

        return metadata.version(peer.dist)
    except Exception:  # noqa: BLE001 - no metadata (a source checkout on sys.path): unknown version
        return None


def _param_names(obj, method: Optional[str] = None) -> Tuple[str, ...]:
    fn = getattr(obj, method) if method else (obj.__init__ if isinstance(obj, type) else obj)
    names = tuple(inspect.signature(fn).parameters)
    return names[1:] if (isinstance(obj, type) and names[:1] == ("self",)) else names


def _holders(obj, prefix: Optional[str]) -> Tuple[List[Tuple[Any, str]], List[str]]:
    """``(peer_slots, outside)``: (module, attribute) pairs of the loaded modules under ``prefix`` whose attribute
    *is* ``obj``, and the names of the other modules (augcl's own left out) that hold it."""
    inside, outside = [], []
    for mod_name, mod in list(sys.modules.items()):
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict):
            continue
        names = [n for n, v in list(d.items()) if v is obj]
        if not names:
            continue
        if prefix is None or mod_name == prefix or mod_name.startswith(prefix + "."):
            inside.extend((mod, n) for n in names)
        elif mod_name != "augcl" and not mod_name.startswith("augcl."):
            outside.extend(f"{mod_name}.{n}" for n in names)
    return inside, sorted(outside)


def _patch_target(t: Target, peer: Peer, force: bool) -> PatchEntry:
    entry = PatchEntry(peer.dist, t.key, "skipped", checked=t.checked, method=t.method)
    if t.key in _INSTALLED:
        entry.status, entry.reason = "already patched", ""
        entry.version = _installed_version(peer, sys.modules.get(peer.package))
        return entry
    try:
        root = importlib.import_module(peer.package)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == peer.package:
            entry.reason = f"{peer.dist} is not installed"
        else:
            entry.reason = f"{peer.dist} cannot be imported: {type(exc).__name__}: {exc}"
        return entry
    except Exception as exc:  # noqa: BLE001 - a broken peer is reported, never fatal
        entry.reason = f"{peer.dist} cannot be imported: {type(exc).__name__}: {exc}"
        return entry
    entry.version = _installed_version(peer, root)
    try:
        module = importlib.import_module(t.module)
        original = getattr(module, t.name)
    except Exception as exc:  # noqa: BLE001
        entry.reason = f"{t.module}.{t.name} not found in {peer.dist} {entry.version}: {type(exc).__name__}: {exc}"
        return entry
    try:
        params = _param_names(original)
        call = _param_names(original, t.method) if t.method else ()
    except (TypeError, ValueError) as exc:
        entry.reason = f"signature of the original cannot be read ({exc})"
        return entry
    if params != t.params or call != t.call_params:
        got = f"{t.name}({', '.join(params)})" + (f", {t.method}({', '.join(call)})" if t.method else "")
        want = f"{t.name}({', '.join(t.params)})" + (f", {t.method}({', '.join(t.call_params)})" if t.method else "")
        entry.reason = f"signature differs in {peer.dist} {entry.version}: {got}; augcl reproduces {want}"
        return entry
    release = _release(entry.version)
    if release not in t.checked:
        if not force:
            entry.reason = (f"{peer.dist} {entry.version or '(unknown version)'} not checked (checked: "
                            f"{', '.join(t.checked)}); patch(force=True) to patch anyway")
            return entry
        entry.reason = f"forced: {peer.dist} {entry.version or '(unknown version)'} not among the checked versions"
    if t.method is None:
        return _install_function(t, peer, original, entry)
    return _install_method(t, original, entry)


def _install_function(t: Target, peer: Peer, original: Callable, entry: PatchEntry) -> PatchEntry:
    """Replace the function in its module and wherever the peer's modules hold it."""
    try:
        replacement = t.make(original, t.key)
    except Exception as exc:  # noqa: BLE001 - a peer whose internals moved: skip it with the reason
        entry.reason = f"cannot build the replacement: {type(exc).__name__}: {exc}"
        return entry
    inside, outside = _holders(original, peer.package)
    for mod, attr in inside:
        setattr(mod, attr, replacement)
    _INSTALLED[t.key] = _Installed(t, original, replacement)
    entry.status = "patched"
    entry.modules = tuple(sorted({f"{m.__name__}.{a}" if a != t.name else m.__name__ for m, a in inside}))
    entry.elsewhere = tuple(outside)
    return entry


def _install_method(t: Target, cls: type, entry: PatchEntry) -> PatchEntry:
    """Replace the class's hot method in place: the class object stays (every name of it, in any module, and
    every subclass that inherits the method reach augcl; ``isinstance``, pickles and ``super(Cls, self)`` calls
    are untouched)."""
    own = cls.__dict__.get(t.method, _MISSING)
    peer_impl = getattr(cls, t.method)
    try:
        method = t.make(cls, t.key, peer_impl)
    except Exception as exc:  # noqa: BLE001
        entry.reason = f"cannot build the replacement: {type(exc).__name__}: {exc}"
        return entry
    setattr(cls, t.method, method)
    _INSTALLED[t.key] = _Installed(t, cls, method, own)
    entry.status = "patched"
    return entry


def _unpatch_keys(keys: List[str]) -> List[PatchEntry]:
    out = []
    with _LOCK:
        for t in TARGETS:
            if t.key not in keys:
                continue
            peer = _PEER[t.peer]
            inst = _INSTALLED.pop(t.key, None)
            if inst is None:
                out.append(PatchEntry(peer.dist, t.key, "not patched", method=t.method))
                continue
            if t.method is not None:
                if inst.own_method is _MISSING:
                    delattr(inst.original, t.method)
                else:
                    setattr(inst.original, t.method, inst.own_method)
                out.append(PatchEntry(peer.dist, t.key, "restored", method=t.method))
                continue
            # every module holding the replacement got it from the patched peer: all get the original back
            slots, _ = _holders(inst.replacement, None)
            for mod, attr in slots:
                setattr(mod, attr, inst.original)
            out.append(PatchEntry(peer.dist, t.key, "restored",
                                  modules=tuple(sorted({m.__name__ for m, _ in slots}))))
    return out


def _selected(flags: Dict[str, bool]) -> List[Target]:
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{k} must be True or False, got {v!r}")
    return [t for t in TARGETS if flags[t.peer]]


# ---------------------------------------------------------------------------------------------- public API
def patch(lightly: bool = True, solo: bool = True, timm: bool = True, torchvision: bool = True, pml: bool = True,
          *, force: bool = False, verbose: bool = False) -> PatchReport:
    """Replace, in the installed peer libraries, the objects augcl has drop-ins for (see the module docstring for
    the list, the names reached and the fallback rules).

    Args:
        lightly, solo, timm, torchvision, pml: patch that peer (default all). A peer that is not installed or
            cannot be imported is reported as skipped, never an error. Importing a peer to patch it is part of
            the call (pass False for a peer you do not use, to save its import time).
        force: patch peer versions no target was checked against (never a mismatching signature).
        verbose: print the report.

    Returns a :class:`PatchReport` (prints as a table; ``.patched``, ``.skipped``); usable as
    ``with augcl.patch(): ...``. Calling it again is harmless ("already patched")."""
    if not isinstance(force, bool):
        raise TypeError(f"force must be True or False, got {force!r}")
    targets = _selected(dict(lightly=lightly, solo=solo, timm=timm, torchvision=torchvision, pml=pml))
    report = PatchReport("patch")
    with _LOCK:
        for t in targets:
            report.entries.append(_patch_target(t, _PEER[t.peer], force))
    if verbose:
        print(report)
    return report


def unpatch(lightly: bool = True, solo: bool = True, timm: bool = True, torchvision: bool = True,
            pml: bool = True, *, verbose: bool = False) -> PatchReport:
    """Put the peers' own objects back (by default every peer's), wherever the replacement was: the peer's
    modules and any module that imported the replacement while patched. Objects built while patched run the
    peer's code again. Returns a :class:`PatchReport` ("restored" / "not patched")."""
    targets = _selected(dict(lightly=lightly, solo=solo, timm=timm, torchvision=torchvision, pml=pml))
    report = PatchReport("unpatch", _unpatch_keys([t.key for t in targets]))
    if verbose:
        print(report)
    return report


def peer_status() -> List[str]:
    """One line per peer for ``python -m augcl.info``: installed or not, its version (from the distribution's
    metadata: nothing is imported), and per target whether ``patch()`` would patch it and whether it is patched."""
    lines = []
    for peer in PEERS:
        targets = [t for t in TARGETS if t.peer == peer.key]
        loaded = sys.modules.get(peer.package)
        version = _installed_version(peer, loaded)
        try:
            found = importlib.util.find_spec(peer.package) is not None
        except (ImportError, ValueError):
            found = loaded is not None
        if not found:
            lines.append(f"{peer.dist}: not installed (patch() skips it)")
            continue
        lines.append(f"{peer.dist} {version or '(version unknown)'}:")
        release = _release(version)
        for t in targets:
            state = "patched now" if t.key in _INSTALLED else (
                "patchable" if release in t.checked else f"not checked (checked: {', '.join(t.checked)}): "
                                                          "patch(force=True)")
            lines.append(f"  {t.name:22s} {state}  [{t.module}; computed by {t.computed_by}]")
    return lines


