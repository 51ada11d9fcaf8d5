"""Bad input to the SupCon entry points (augcl.functional.supcon, augcl.nn.SupConLoss, augcl.compat.pml.SupConLoss):
a clear error naming the argument, or a finite result where the input is documented to be accepted.

Each case is one call with one bad argument (the others valid) and its expected outcome: an exception type and a
regex that must match the message, or ``OK`` (a finite result). Each family of cases also holds the valid call it
perturbs, so a case that raises for another reason than the one tested shows up as a mismatch of the message.
A meta tensor next to CPU tensors stands in for "another device".
"""
from __future__ import annotations

import pytest
import torch

import augcl
from augcl import functional as AF
from augcl.compat import pml as CP
from augcl.dispatch import BackendUnavailableError
from augcl.nn import SupConLoss

N, D, G = 8, 5, 3
OK = None
CASES = []


def _x(*shape, seed=0):
    return torch.randn(*(shape or (N, D)), generator=torch.Generator().manual_seed(seed))


def _y(n=N, lead=()):
    return torch.arange(n).remainder(3).expand(*lead, n).clone()  # every anchor has a positive for n >= 4


def _with(t, value):
    t = t.clone()
    t.view(-1)[0] = value
    return t


def case(entry, what, fn, exc=OK, match=None):
    CASES.append(pytest.param(fn, exc, match, id=f"{entry}|{what}"))


# ------------------------------------------------------------------------------------- functional.supcon
def _supcon(**kw):
    args = dict(features=_x(), labels=_y())
    args.update(kw)
    return lambda: AF.supcon(**args)


E = "supcon"
case(E, "valid", _supcon())
case(E, "valid:batched", _supcon(features=_x(G, N, D), labels=_y(lead=(G,))))
for name, kw, exc, match in [
    # features
    ("features:none", dict(features=None), TypeError, r"features must be a torch\.Tensor"),
    ("features:list", dict(features=_x().tolist()), TypeError, r"features must be a torch\.Tensor"),
    ("features:1d", dict(features=_x().reshape(-1)), ValueError, r"features must be a 2-D tensor \[N, D\] or a 3-D"),
    ("features:4d", dict(features=_x(1, G, N, D)), ValueError, r"features must be a 2-D tensor \[N, D\] or a 3-D"),
    ("features:int", dict(features=_x().long()), TypeError, r"features must be float16"),
    ("features:bool", dict(features=_x() > 0), TypeError, r"features must be float16"),
    ("features:batched_int", dict(features=_x(G, N, D).long(), labels=_y(lead=(G,))), TypeError,
     r"features must be float16"),
    ("features:empty", dict(features=_x()[:0], labels=_y()[:0]), ValueError, r"features is empty"),
    ("features:zero_width", dict(features=_x()[:, :0]), ValueError, r"features has 0 features"),
    ("features:batched_no_groups", dict(features=_x(0, N, D), labels=_y(lead=(0,))), ValueError,
     r"features is empty: 0 groups"),
    ("features:batched_no_rows", dict(features=_x(G, 0, D), labels=_y(0, lead=(G,))), ValueError,
     r"features is empty: 3 groups of 0 rows"),
    ("features:batched_zero_width", dict(features=_x(G, N, 0), labels=_y(lead=(G,))), ValueError,
     r"features has 0 features"),
    ("features:nan", dict(features=_with(_x(), float("nan"))), ValueError, r"features contains non-finite"),
    ("features:inf", dict(features=_with(_x(), float("inf"))), ValueError, r"features contains non-finite"),
    ("features:batched_nan", dict(features=_with(_x(G, N, D), float("nan")), labels=_y(lead=(G,))), ValueError,
     r"features contains non-finite"),
    ("features:fp16", dict(features=_x().half()), OK, None),
    ("features:bf16", dict(features=_x().bfloat16()), OK, None),
    ("features:fp64", dict(features=_x().double()), OK, None),
    ("features:one_row", dict(features=_x(1, D), labels=_y(1)), ValueError, r"no anchor has a positive"),
    ("features:zero_row", dict(features=torch.zeros(N, D)), OK, None),  # normalised to 0: every logit 0
    # labels
    ("labels:none", dict(labels=None), TypeError, r"labels must be a torch\.Tensor"),
    ("labels:list", dict(labels=_y().tolist()), TypeError, r"labels must be a torch\.Tensor"),
    ("labels:float", dict(labels=_y().float()), TypeError, r"labels must be an integer tensor .* got torch\.float32"),
    ("labels:bool", dict(labels=_y() > 0), TypeError, r"labels must be an integer tensor"),
    ("labels:complex", dict(labels=_y().to(torch.complex64)), TypeError, r"labels must be an integer tensor"),
    ("labels:shorter", dict(labels=_y()[:-1]), ValueError, r"labels must have shape \[8\] \(one label per row of "
                                                          r"features\), got \[7\]"),
    ("labels:longer", dict(labels=_y(N + 1)), ValueError, r"labels must have shape \[8\]"),
    ("labels:2d", dict(labels=_y().unsqueeze(0)), ValueError, r"labels must have shape \[8\]"),
    ("labels:batched_flat", dict(features=_x(G, N, D)), ValueError, r"labels must have shape \[3, 8\]"),
    ("labels:batched_wrong_groups", dict(features=_x(G, N, D), labels=_y(lead=(G + 1,))), ValueError,
     r"labels must have shape \[3, 8\]"),
    ("labels:meta", dict(labels=_y().to("meta")), ValueError, r"labels is on meta but features is on cpu"),
    ("labels:int8", dict(labels=_y().to(torch.int8)), OK, None),
    ("labels:uint8", dict(labels=_y().to(torch.uint8)), OK, None),
    ("labels:negative", dict(labels=_y() - 100), OK, None),
    ("labels:no_positive_pair", dict(labels=torch.arange(N)), ValueError,
     r"labels: no anchor has a positive .* reduction='sum' or 'none'"),
    ("labels:batched_no_positive_pair", dict(features=_x(G, N, D), labels=torch.arange(G * N).view(G, N)),
     ValueError, r"labels: no anchor has a positive"),
    ("labels:no_positive_pair_sum", dict(labels=torch.arange(N), reduction="sum"), OK, None),
    ("labels:no_positive_pair_none", dict(labels=torch.arange(N), reduction="none"), OK, None),
    ("labels:no_positive_pair_and_nan", dict(features=_with(_x(), float("nan")), labels=torch.arange(N)),
     ValueError, r"features contains non-finite"),
    # temperature
    ("temperature:zero", dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    ("temperature:negative", dict(temperature=-0.1), ValueError, r"temperature must be a finite number > 0"),
    ("temperature:nan", dict(temperature=float("nan")), ValueError, r"temperature must be a finite number > 0"),
    ("temperature:inf", dict(temperature=float("inf")), ValueError, r"temperature must be a finite number > 0"),
    ("temperature:tiny", dict(temperature=1e-39), ValueError, r"temperature 1e-39 is too small"),
    ("temperature:str", dict(temperature="0.1"), TypeError, r"temperature must be a number or a tensor"),
    ("temperature:bool", dict(temperature=True), TypeError, r"temperature must be a number or a tensor"),
    ("temperature:tensor_two", dict(temperature=torch.tensor([0.1, 0.2])), ValueError,
     r"temperature must be a number or a one-element tensor"),
    ("temperature:tensor_int", dict(temperature=torch.tensor(1)), TypeError, r"temperature must be a floating"),
    ("temperature:tensor_zero", dict(temperature=torch.tensor(0.0)), ValueError, r"temperature must be finite and > 0"),
    ("temperature:tensor_negative", dict(temperature=torch.tensor(-0.5)), ValueError,
     r"temperature must be finite and > 0, got -0.5"),
    ("temperature:tensor_meta", dict(temperature=torch.tensor(0.1, device="meta")), ValueError,
     r"temperature is on meta"),
    ("temperature:tensor", dict(temperature=torch.tensor(0.1)), OK, None),
    # flags
    ("reduction:avg", dict(reduction="avg"), ValueError, r"reduction must be one of"),
    ("normalize:str", dict(normalize="yes"), TypeError, r"normalize must be a bool"),
    ("normalize:false", dict(normalize=False), OK, None),
    ("gather_distributed:int", dict(gather_distributed=1), TypeError, r"gather_distributed must be a bool"),
    ("gather_distributed:batched", dict(features=_x(G, N, D), labels=_y(lead=(G,)), gather_distributed=True),
     ValueError, r"gather_distributed=True needs features \[N, D\]"),
    ("gather_distributed:single_process", dict(gather_distributed=True), OK, None),  # no process group: local
    ("backend:unknown", dict(backend="fast"), ValueError, r"unknown backend 'fast'"),
    ("backend:triton_fp64", dict(features=_x().double(), backend="triton"), BackendUnavailableError,
     r"backend 'triton' cannot run: dtype float64 is not supported"),
]:
    case(E, name, _supcon(**kw), exc, match)

# --------------------------------------------------------------------------------------- nn.SupConLoss
E = "nn.SupConLoss"
case(E, "valid", lambda: SupConLoss()(_x(), _y()))
for name, kw, exc, match in [
    ("temperature:zero", dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    ("temperature:str", dict(temperature="a"), TypeError, r"temperature must be a number or a tensor"),
    ("temperature:tensor_two", dict(temperature=torch.ones(2)), ValueError, r"one-element tensor"),
    ("reduction:avg", dict(reduction="avg"), ValueError, r"reduction must be one of"),
    ("normalize:none", dict(normalize=None), TypeError, r"normalize must be a bool"),
    ("gather_distributed:str", dict(gather_distributed="no"), TypeError, r"gather_distributed must be a bool"),
]:
    case(E, f"ctor:{name}", (lambda kw=kw: SupConLoss(**kw)), exc, match)
case(E, "forward:labels_shorter", lambda: SupConLoss()(_x(), _y()[:-1]), ValueError, r"labels must have shape \[8\]")
case(E, "forward:features_nan", lambda: SupConLoss()(_with(_x(), float("nan")), _y()), ValueError,
     r"features contains non-finite")
case(E, "forward:tensor_temperature_negative", lambda: SupConLoss(torch.tensor(-1.0))(_x(), _y()), ValueError,
     r"temperature must be finite and > 0")

# ---------------------------------------------------------------------------------- compat.pml.SupConLoss
E = "compat.pml.SupConLoss"


def _pml(**kw):
    args = dict(embeddings=_x(), labels=_y())
    args.update(kw)
    return lambda: CP.SupConLoss()(**args)


case(E, "valid", _pml())
for name, kw, exc, match in [
    ("ctor:temperature_zero", dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    ("ctor:distance", dict(distance=None), TypeError, r"supports only temperature= and backend="),
    ("ctor:reducer", dict(reducer=None), TypeError, r"supports only temperature= and backend="),
]:
    case(E, name, (lambda kw=kw: CP.SupConLoss(**kw)), exc, match)
for name, kw, exc, match in [
    ("labels:none", dict(labels=None), ValueError, r"SupConLoss: labels are required"),
    ("labels:float", dict(labels=_y().float()), OK, None),  # compared by equality, as pml
    ("labels:bool", dict(labels=_y() > 0), OK, None),
    ("labels:nan", dict(labels=_with(_y().float(), float("nan"))), ValueError, r"labels contains non-finite"),
    ("labels:complex", dict(labels=_y().to(torch.complex64)), TypeError, r"labels must be a real tensor"),
    ("labels:shorter", dict(labels=_y()[:-1]), ValueError, r"labels must have shape \[8\]"),
    ("labels:meta", dict(labels=_y().to("meta")), ValueError, r"labels is on meta"),
    ("labels:all_distinct", dict(labels=torch.arange(N)), OK, None),  # pml's zero loss
    ("embeddings:1d", dict(embeddings=_x().reshape(-1)), ValueError, r"embeddings must be a 2-D tensor"),
    ("embeddings:int", dict(embeddings=_x().long()), TypeError, r"embeddings must be float16"),
    ("embeddings:empty", dict(embeddings=_x()[:0], labels=_y()[:0]), ValueError, r"embeddings is empty"),
    ("embeddings:nan", dict(embeddings=_with(_x(), float("nan"))), ValueError, r"embeddings contains non-finite"),
    ("embeddings:nan_zero_loss", dict(embeddings=_with(_x(), float("nan")), labels=torch.arange(N)), ValueError,
     r"embeddings contains non-finite"),
    ("embeddings:fp16", dict(embeddings=_x().half()), OK, None),
    ("ref_emb:wider", dict(ref_emb=_x(N, D + 1)), ValueError, r"ref_emb must have 5 features"),
    ("ref_emb:nan", dict(ref_emb=_with(_x(), float("nan"))), ValueError, r"ref_emb contains non-finite"),
    ("ref_emb:more_rows_without_ref_labels", dict(ref_emb=_x(N + 1, D)), ValueError, r"pass ref_labels"),
    ("ref_emb:with_ref_labels", dict(ref_emb=_x(N + 2, D, seed=1), ref_labels=_y(N + 2)), OK, None),
    ("ref_labels:shorter", dict(ref_emb=_x(N + 2, D), ref_labels=_y(N + 1)), ValueError,
     r"ref_labels must have shape \[10\]"),
    ("indices_tuple", dict(indices_tuple=(torch.arange(2),) * 3), ValueError, r"SupConLoss: indices_tuple"),
]:
    case(E, name, _pml(**kw), exc, match)
case(E, "tensor_temperature_nan", lambda: CP.SupConLoss(torch.tensor(float("nan")))(_x(), _y()), ValueError,
     r"temperature must be finite and > 0")


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    if exc is OK:
        out = fn()
        if isinstance(out, torch.Tensor):
            assert bool(torch.isfinite(out).all()), out
        return
    with pytest.raises(exc, match=match):
        fn()


def test_without_checks_a_mean_over_no_anchor_is_nan():
    """Documented: augcl.set_checks(False) skips the deferred check, and the mean over no anchor is then 0 / 0."""
    augcl.set_checks(False)
    try:
        out = AF.supcon(_x(), torch.arange(N))
    finally:
        augcl.set_checks(True)
    assert torch.isnan(out)
