"""Bad input to the contrastive entry points: augcl.functional's contrastive_loss, nt_xent, nt_xent_multiview,
info_nce and soft_info_nce; augcl.nn's NTXentLoss, MoCoQueue and InfoNCELoss; the lightly, pml and solo-learn
(simclr, mocov2plus, and the BYOL / SimSiam cosine losses of the same shim) drop-ins. A clear error naming the
argument, or a finite result where the input is documented to be accepted (tests/_bad_inputs.py has the machinery
and the perturbation families).
"""
from __future__ import annotations

import pytest
import torch

from augcl import functional as AF
from augcl import nn as ANN
from augcl._validate import IndexArgumentError
from augcl.compat import lightly as CL
from augcl.compat import pml as CP
from augcl.compat import solo as CS
from _bad_inputs import (
    B, D, K, NO_NEGATIVES, OK, TEMPERATURE, TEMPERATURE_CTOR, begin_cases, case,
    check_index_checks_stay_on_without_value_checks, check_index_error_is_both_index_and_value_error,
    check_value_checks_can_be_disabled, collect_cases, ctor_cases, emb, extra_cases, index_cases, matrix_cases,
    run_case, unit, value_cases, with_value,
)

begin_cases()


# ================================================================================ augcl.functional: contrastive
def _cl_base():
    return dict(anchors=emb(), candidates=emb(seed=1), pos_idx=torch.arange(B))


E = "contrastive_loss"
matrix_cases(E, AF.contrastive_loss, _cl_base, "anchors",
             more_rows=(ValueError, r"pos_idx must have shape \[5\]"), wider=(ValueError, r"candidates must have 9"))
matrix_cases(E, AF.contrastive_loss, _cl_base, "candidates", more_rows=(OK, None),
             wider=(ValueError, r"candidates must have 8"))
index_cases(E, AF.contrastive_loss, _cl_base, "pos_idx", B, minus_one=(OK, None))  # -1 pads: an all-zero row
value_cases(E, AF.contrastive_loss, _cl_base, "temperature", TEMPERATURE)
extra_cases(E, AF.contrastive_loss, _cl_base, {
    "pos_weight:int": (dict(pos_weight=torch.ones(B, 1, dtype=torch.long)), TypeError,
                       r"pos_weight must be a floating"),
    "pos_weight:list": (dict(pos_weight=[1.0] * B), TypeError, r"pos_weight must be a floating"),
    "pos_weight:nan": (dict(pos_weight=torch.full((B, 1), float("nan"))), ValueError,
                       r"pos_weight contains non-finite"),
    "pos_weight:inf": (dict(pos_weight=torch.full((B, 1), float("inf"))), ValueError,
                       r"pos_weight contains non-finite"),
    "pos_weight:shape": (dict(pos_weight=torch.ones(B, 2)), ValueError, r"pos_weight must have the shape of pos_idx"),
    "pos_weight:meta": (dict(pos_weight=torch.ones(B, 1, device="meta")), ValueError, r"pos_weight is on meta"),
    "pos_weight:negative": (dict(pos_weight=torch.full((B, 1), -1.0)), OK, None),  # the documented formula
    "excl_idx:too_high": (dict(excl_idx=torch.full((B,), B)), IndexArgumentError, r"excl_idx has values"),
    "excl_idx:float": (dict(excl_idx=torch.zeros(B)), TypeError, r"excl_idx must be an integer"),
    "neg_start:negative": (dict(neg_start=-1), ValueError, r"neg_start must be an int >= 0"),
    "neg_start:float": (dict(neg_start=1.5), ValueError, r"neg_start must be an int >= 0"),
    "neg_start:beyond_candidates": (dict(neg_start=B + 1), ValueError,
                                    r"neg_start must be <= the number of candidates"),
    "pos_idx:none": (dict(pos_idx=None), TypeError, r"pos_idx must be a torch\.Tensor"),
    "reduction:unknown": (dict(reduction="avg"), ValueError, r"reduction must be one of"),
    "backend:unknown": (dict(backend="gpu"), ValueError, r"unknown backend"),
})


def _ntx_base():
    return dict(z1=emb(), z2=emb(seed=1))


E = "nt_xent"
# every error, shapes and non-finite values alike, names the caller's argument (z1 / z2)
matrix_cases(E, AF.nt_xent, _ntx_base, "z1", more_rows=(ValueError, r"z2 must have 5 rows"),
             wider=(ValueError, r"z2 must have 9 features"), nan=(ValueError, r"z1 contains non-finite"),
             inf=(ValueError, r"z1 contains non-finite"))
matrix_cases(E, AF.nt_xent, _ntx_base, "z2", more_rows=(ValueError, r"z2 must have 4 rows"),
             wider=(ValueError, r"z2 must have 8 features"), nan=(ValueError, r"z2 contains non-finite"),
             inf=(ValueError, r"z2 contains non-finite"))
value_cases(E, AF.nt_xent, _ntx_base, "temperature", TEMPERATURE)
extra_cases(E, AF.nt_xent, _ntx_base, {
    "batch_of_one": (dict(z1=emb(1), z2=emb(1, seed=1)), OK, None),  # 0 negatives: loss 0, as lightly
    "reduction:unknown": (dict(reduction="x"), ValueError, r"reduction must be one of"),
})


def _mv_base():
    return dict(views=[emb(), emb(seed=1), emb(seed=2)])


E = "nt_xent_multiview"
value_cases(E, AF.nt_xent_multiview, _mv_base, "temperature", TEMPERATURE)
extra_cases(E, AF.nt_xent_multiview, _mv_base, {
    "views:one": (dict(views=[emb()]), ValueError, r"views: NT-Xent needs at least 2 views"),
    "views:empty_list": (dict(views=[]), ValueError, r"views: NT-Xent needs at least 2 views"),
    "views:none": (dict(views=None), TypeError, r"views must be a \[V, B, D\] tensor or a sequence"),
    "views:2d_tensor": (dict(views=emb()), ValueError, r"views must be \[V, B, D\]"),
    "views:3d_tensor": (dict(views=torch.stack([emb(), emb(seed=1)])), OK, None),
    "views:generator": (dict(views=(v for v in [emb(), emb(seed=1)])), OK, None),
    "views:empty_batch": (dict(views=torch.zeros(2, 0, D)), ValueError, r"views\[0\] is empty"),
    "views[1]:nan": (dict(views=[emb(), with_value(emb(seed=1), float("nan"))]), ValueError,
                     r"views\[1\] contains non-finite"),
    "views[1]:int": (dict(views=[emb(), emb().long()]), TypeError, r"views\[1\] must be float16"),
    "views[1]:meta": (dict(views=[emb(), emb().to("meta")]), ValueError, r"views\[1\] is on meta"),
    "views[1]:more_rows": (dict(views=[emb(), emb(B + 1)]), ValueError, r"views\[1\] must have 4 rows"),
    "views[1]:fp16": (dict(views=[emb(), emb(seed=1).half()]), OK, None),
    "views[0]:zero_width": (dict(views=[emb()[:, :0], emb()[:, :0]]), ValueError, r"views\[0\] has 0 features"),
    "views[1]:list": (dict(views=[emb(), emb().tolist()]), TypeError, r"views\[1\] must be a torch\.Tensor"),
    "views[1]:none": (dict(views=[emb(), None]), TypeError, r"views\[1\] must be a torch\.Tensor"),
})


def _info_base():
    return dict(query=emb(), key=emb(seed=1), queue=unit(K, seed=2))


E = "info_nce"
matrix_cases(E, AF.info_nce, _info_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, AF.info_nce, _info_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
matrix_cases(E, AF.info_nce, _info_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=NO_NEGATIVES)
value_cases(E, AF.info_nce, _info_base, "temperature", TEMPERATURE)
extra_cases(E, AF.info_nce, _info_base, {
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
})


def _soft_base():
    return dict(query=emb(), key=emb(seed=1), pos_idx=torch.stack([torch.arange(B), torch.arange(B).flip(0)], 1),
                pos_weight=torch.full((B, 2), 0.5), queue=unit(K, seed=2))


E = "soft_info_nce"
matrix_cases(E, AF.soft_info_nce, _soft_base, "query", more_rows=(ValueError, r"pos_idx must have shape \[5\]"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, AF.soft_info_nce, _soft_base, "key", more_rows=(OK, None), wider=(ValueError, r"key must have 8"))
matrix_cases(E, AF.soft_info_nce, _soft_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=NO_NEGATIVES)
_shape = (ValueError, r"pos_weight must have the shape of pos_idx")
_float = (TypeError, r"pos_weight must be a floating tensor")
matrix_cases(E, AF.soft_info_nce, _soft_base, "pos_weight", ndim3=_shape, ndim1=_shape, empty=_shape,
             zero_width=_shape, more_rows=_shape, wider=_shape, int64=_float, bool=_float, complex64=_float,
             list=_float, none=_float)
index_cases(E, AF.soft_info_nce, _soft_base, "pos_idx", B, minus_one=(OK, None))
value_cases(E, AF.soft_info_nce, _soft_base, "temperature", TEMPERATURE)
extra_cases(E, AF.soft_info_nce, _soft_base, {
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
    "pos_weight:negative": (dict(pos_weight=torch.full((B, 2), -1.0)), OK, None),  # the documented formula
})

# ========================================================================================= augcl.nn modules
for E, cls in (("nn.NTXentLoss", ANN.NTXentLoss), ("compat.lightly.NTXentLoss", CL.NTXentLoss)):
    ctor_cases(E, cls, {
        **TEMPERATURE_CTOR,
        "temperature:zero": (dict(temperature=0.0), ValueError, r"Illegal temperature: abs\(0\.0\) < 1e-8"),
        "temperature:int_tensor": (dict(temperature=torch.tensor(1)), TypeError, r"temperature must be a floating"),
        "memory_bank_size:negative": (dict(memory_bank_size=-1), ValueError, r"Illegal memory bank size"),
        "memory_bank_size:bare_int": (dict(memory_bank_size=5), ValueError, r"does not specify the feature"),
        "memory_bank_size:one_entry": (dict(memory_bank_size=(5,)), ValueError, r"Illegal memory bank size"),
        "memory_bank_size:three_entries": (dict(memory_bank_size=(5, 8, 1)), ValueError, r"Illegal memory bank size"),
    })
    _fresh = (lambda cls=cls: cls())
    _ntx = (lambda out0, out1, cls=cls: cls()(out0, out1))
    # without a bank NTXentLoss is nt_xent(out0, out1), its errors naming the module's arguments out0 / out1
    matrix_cases(E, _ntx, lambda: dict(out0=emb(), out1=emb(seed=1)), "out0",
                 more_rows=(ValueError, r"out1 must have 5 rows"), wider=(ValueError, r"out1 must have 9 features"),
                 nan=(ValueError, r"out0 contains non-finite"),
                 inf=(ValueError, r"out0 contains non-finite"))
    matrix_cases(E, _ntx, lambda: dict(out0=emb(), out1=emb(seed=1)), "out1",
                 more_rows=(ValueError, r"out1 must have 4 rows"), wider=(ValueError, r"out1 must have 8 features"),
                 nan=(ValueError, r"out1 contains non-finite"),
                 inf=(ValueError, r"out1 contains non-finite"))
    _bank = (lambda out0, out1, cls=cls: cls(memory_bank_size=(K, D))(out0, out1))
    _bank_base = (lambda: dict(out0=emb().requires_grad_(), out1=emb(seed=1)))
    matrix_cases(E + "[bank]", _bank, _bank_base, "out0", more_rows=(ValueError, r"out1 must have 5 rows"),
                 wider=(ValueError, r"out1 must have 9 features"))
    matrix_cases(E + "[bank]", _bank, _bank_base, "out1", more_rows=(ValueError, r"out1 must have 4 rows"),
                 wider=(ValueError, r"out1 must have 8 features"))
    case(E + "[bank]", "batch_larger_than_bank", lambda cls=cls: cls(memory_bank_size=(K, D))(
        emb(K + 2).requires_grad_(), emb(K + 2, seed=1)), OK)  # lightly drops the rows that do not fit
    case(E + "[bank]", "width_not_bank_width", lambda cls=cls: cls(memory_bank_size=(K, D + 2))(emb(), emb(seed=1)),
         ValueError, r"out0 has 8 features but the memory bank stores 10")
    case(E, "tensor_temperature_nan", lambda cls=cls: cls(temperature=torch.tensor(float("nan")))(emb(), emb(seed=1)),
         ValueError, r"temperature must be finite and > 0")
    case(E, "tensor_temperature_negative", lambda cls=cls: cls(temperature=torch.tensor(-1.0))(emb(), emb(seed=1)),
         ValueError, r"temperature must be finite and > 0")

E = "nn.MoCoQueue"
ctor_cases(E, ANN.MoCoQueue, {
    "dim:zero": (dict(dim=0, size=K), ValueError, r"dim must be an int > 0"),
    "size:zero": (dict(dim=D, size=0), ValueError, r"size must be an int > 0"),
    "dim:negative": (dict(dim=-1, size=K), ValueError, r"dim must be an int > 0"),
    "dim:float": (dict(dim=2.0, size=K), ValueError, r"dim must be an int > 0"),
    "size:bool": (dict(dim=D, size=True), ValueError, r"size must be an int > 0"),
    "dim:none": (dict(dim=None, size=K), ValueError, r"dim must be an int > 0"),
})
_enqueue = (lambda keys: ANN.MoCoQueue(D, K).enqueue(keys))
matrix_cases(E + ".enqueue", lambda keys: (_enqueue(keys), torch.zeros(()))[1], lambda: dict(keys=emb()), "keys",
             more_rows=(OK, None), wider=(ValueError, r"keys must have 8 features"))
case(E + ".enqueue", "batch_larger_than_queue", lambda: ANN.MoCoQueue(D, K).enqueue(emb(K + 1)), ValueError,
     r"cannot enqueue a batch of 7 keys into a queue of size 6")
case(E + ".enqueue", "batch_equal_to_queue", lambda: (ANN.MoCoQueue(D, K).enqueue(emb(K)), torch.zeros(()))[1], OK)

E = "nn.InfoNCELoss"
ctor_cases(E, lambda **kw: ANN.InfoNCELoss(key_negatives=True, **kw), {
    **TEMPERATURE_CTOR,
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    "temperature:int_tensor": (dict(temperature=torch.tensor(1)), TypeError, r"temperature must be a floating"),
    "queue_size:negative": (dict(queue_size=-1), ValueError, r"queue_size must be an int >= 0"),
    "queue_size:no_dim": (dict(queue_size=4), ValueError, r"needs dim="),
    "queue_size:dim_zero": (dict(queue_size=4, dim=0), ValueError, r"dim must be an int > 0"),
    "queue_size:dim_float": (dict(queue_size=4, dim=2.5), ValueError, r"dim must be an int > 0"),
})
case(E, "no_negatives", lambda: ANN.InfoNCELoss(), ValueError, r"no negatives")
_inl = (lambda query, key, **kw: ANN.InfoNCELoss(queue_size=K, dim=D)(query, key, **kw))
_inl_base = (lambda: dict(query=emb(), key=emb(seed=1)))
matrix_cases(E, _inl, _inl_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"key must have 9 features"))
matrix_cases(E, _inl, _inl_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
case(E, "batch_larger_than_queue", lambda: _inl(emb(K + 1), emb(K + 1, seed=1), update=True), ValueError,
     r"batch of 7 keys into a queue of size 6")
case(E, "tensor_temperature_zero", lambda: ANN.InfoNCELoss(torch.tensor(0.0), key_negatives=True)(emb(), emb(seed=1)),
     ValueError, r"temperature must be finite and > 0")

# ============================================================================================ augcl.compat
def _solo_base():
    return dict(z=emb(2 * B), indexes=torch.arange(B).repeat(2), temperature=0.1)


E = "compat.solo.simclr_loss_func"
matrix_cases(E, CS.simclr_loss_func, _solo_base, "z", more_rows=(ValueError, r"indexes must have shape \[9\]"),
             wider=(OK, None), meta=(ValueError, r"indexes is on cpu but the embeddings are on meta"))
value_cases(E, CS.simclr_loss_func, _solo_base, "temperature", TEMPERATURE,
            meta_tensor=(ValueError, r"temperature is on meta but z is on cpu"))
_three = dict(z=emb(3 * B), indexes=torch.arange(B).repeat(3))
extra_cases(E, CS.simclr_loss_func, _solo_base, {
    "indexes:float": (dict(indexes=torch.arange(B).repeat(2).float()), OK, None),  # ids compared by equality
    "indexes:bool": (dict(indexes=torch.tensor([0, 1] * B).bool()), OK, None),
    "indexes:complex": (dict(indexes=torch.arange(B).repeat(2).to(torch.complex64)), TypeError,
                        r"indexes must be a real tensor"),
    "indexes:meta": (dict(indexes=torch.arange(B).repeat(2).to("meta")), ValueError, r"indexes is on meta"),
    "indexes:list": (dict(indexes=list(range(2 * B))), TypeError, r"indexes must be a torch\.Tensor"),
    "indexes:shorter": (dict(indexes=torch.arange(B).repeat(2)[:-1]), ValueError, r"indexes must have shape \[8\]"),
    "indexes:no_positive": (dict(indexes=torch.arange(2 * B)), ValueError, r"has no positive"),
    "indexes:nan": (dict(indexes=torch.full((2 * B,), float("nan"))), ValueError, r"index nan\) has no positive"),
    "three_views": (_three, OK, None),
    "three_views:temperature_tensor2": (_three | dict(temperature=torch.tensor([0.1, 0.2])), ValueError,
                                        r"temperature must be a number or a one-element tensor"),
    "three_views:temperature_zero": (_three | dict(temperature=0.0), ValueError, r"temperature must be a finite"),
    "three_views:temperature_tensor_zero": (_three | dict(temperature=torch.tensor(0.0)), ValueError,
                                            r"temperature must be finite and > 0"),
    "three_views:temperature_str": (_three | dict(temperature="a"), TypeError, r"temperature must be a number"),
    "three_views:z_nan": (_three | dict(z=torch.full((3 * B, D), float("nan"))), ValueError, r"z contains non-finite"),
})


def _moco_base():
    return dict(query=emb(), key=emb(seed=1), queue=unit(K, seed=2).t().contiguous(), temperature=0.1)


E = "compat.solo.mocov2plus_loss_func"
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "query", more_rows=(ValueError, r"key must have 5 rows"),
             wider=(ValueError, r"queue must be \[D, K\] with D = 9"))
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "key", more_rows=(ValueError, r"key must have 4 rows"),
             wider=(ValueError, r"key must have 8 features"))
_qdk = (ValueError, r"queue must be (a 2-D tensor \[D, K\]|\[D, K\] with D = 8)")
matrix_cases(E, CS.mocov2plus_loss_func, _moco_base, "queue", ndim3=_qdk, ndim1=_qdk,
             zero_width=(ValueError, r"queue is empty"), empty=_qdk, more_rows=_qdk, wider=(OK, None))
value_cases(E, CS.mocov2plus_loss_func, _moco_base, "temperature", TEMPERATURE)
extra_cases(E, CS.mocov2plus_loss_func, _moco_base, {
    "queue:rows_first_layout": (dict(queue=unit(K)), ValueError, r"queue must be \[D, K\] with D = 8"),
})
def _cos_base():
    return dict(p=emb(), z=emb(seed=1))


for E, _fn in (("compat.solo.byol_loss_func", CS.byol_loss_func),
               ("compat.solo.simsiam_loss_func", CS.simsiam_loss_func)):
    matrix_cases(E, _fn, _cos_base, "p", more_rows=(ValueError, r"z must have 5 rows"),
                 wider=(ValueError, r"z must have 9 features"), meta=(ValueError, r"z is on cpu but p is on meta"))
    matrix_cases(E, _fn, _cos_base, "z", more_rows=(ValueError, r"z must have 4 rows"),
                 wider=(ValueError, r"z must have 8 features"))
    extra_cases(E, _fn, _cos_base, {
        "simplified:false": (dict(simplified=False), OK, None),
        "simplified:str": (dict(simplified="yes"), TypeError, r"simplified must be a bool"),
        "p:zero_row": (dict(p=torch.zeros(B, D)), OK, None),  # cosine of a zero vector: 0, as solo
        "batch_of_one": (dict(p=emb(1), z=emb(1, seed=1)), OK, None),
    })

E = "compat.pml.NTXentLoss"
ctor_cases(E, CP.NTXentLoss, {
    **TEMPERATURE_CTOR,
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    "distance:unsupported": (dict(distance=None), TypeError, r"supports only temperature= and backend="),
})
_pml = (lambda **kw: CP.NTXentLoss()(**kw))
_lab = torch.arange(B).repeat(2)
_pml_base = (lambda: dict(embeddings=emb(2 * B), labels=_lab))
matrix_cases(E, _pml, _pml_base, "embeddings", more_rows=(ValueError, r"labels must have shape \[9\]"),
             wider=(OK, None), meta=(ValueError, r"labels is on cpu but the embeddings are on meta"))
extra_cases(E, _pml, _pml_base, {
    "labels:none": (dict(labels=None), ValueError, r"labels are required"),
    "labels:float": (dict(labels=_lab.float()), OK, None),  # compared by equality, as pml
    "labels:nan": (dict(labels=torch.full((2 * B,), float("nan"))), ValueError, r"labels contains non-finite"),
    "labels:complex": (dict(labels=_lab.to(torch.complex64)), TypeError, r"labels must be a real tensor"),
    "labels:meta": (dict(labels=_lab.to("meta")), ValueError, r"labels is on meta"),
    "labels:shorter": (dict(labels=_lab[:-1]), ValueError, r"labels must have shape \[8\]"),
    "labels:list": (dict(labels=_lab.tolist()), TypeError, r"labels must be a torch\.Tensor"),
    "labels:2d": (dict(labels=_lab.unsqueeze(1)), ValueError, r"labels must have shape \[8\]"),
    "ref_emb:wider": (dict(ref_emb=emb(2 * B, D + 1)), ValueError, r"ref_emb must have 8 features"),
    "ref_emb:nan": (dict(ref_emb=torch.full((2 * B, D), float("nan"))), ValueError, r"ref_emb contains non-finite"),
    "ref_emb:meta": (dict(ref_emb=emb(2 * B).to("meta")), ValueError, r"ref_emb is on meta"),
    "ref_emb:int": (dict(ref_emb=emb(2 * B).long()), TypeError, r"ref_emb must be float16"),
    "ref_emb:more_rows_without_ref_labels": (dict(ref_emb=emb(2 * B + 1)), ValueError, r"pass ref_labels"),
    "ref_labels:shorter": (dict(ref_emb=emb(2 * B + 1), ref_labels=_lab.clone()), ValueError,
                           r"ref_labels must have shape \[9\]"),
    "ref_labels:same_object_as_labels": (dict(ref_emb=emb(2 * B + 1), ref_labels=_lab), ValueError,
                                         r"pass ref_labels"),
    "indices_tuple": (dict(indices_tuple=(1, 2)), ValueError, r"indices_tuple"),
    "no_positive_pair_nan": (dict(embeddings=with_value(emb(2 * B), float("nan")), labels=torch.arange(2 * B)),
                             ValueError, r"embeddings contains non-finite"),
})
case(E, "tensor_temperature_nan", lambda: CP.NTXentLoss(torch.tensor(float("nan")))(emb(2 * B), _lab), ValueError,
     r"temperature must be finite and > 0")


CASES = collect_cases()


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    run_case(fn, exc, match)


@pytest.mark.parametrize("call", [lambda: AF.contrastive_loss(emb(), emb(), torch.full((B,), B))],
                         ids=["contrastive_loss"])
def test_index_argument_error_is_both_index_and_value_error(call):
    check_index_error_is_both_index_and_value_error(call)


@pytest.mark.parametrize("call", [lambda: AF.contrastive_loss(emb(), emb(), torch.full((B,), B))], ids=["pos_idx"])
def test_index_checks_stay_on_without_value_checks(call):
    check_index_checks_stay_on_without_value_checks(call)


@pytest.mark.parametrize("call", [lambda: ANN.MoCoQueue(D, K).enqueue(with_value(emb(), float("nan")))],
                         ids=["enqueue"])
def test_value_checks_can_be_disabled(call):
    check_value_checks_can_be_disabled(call)
