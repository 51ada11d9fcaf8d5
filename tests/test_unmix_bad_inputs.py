"""Bad input to the Un-Mix entry points: augcl.functional's unmix_info_nce, unmix_nt_xent, mix_images, unmix and
unmix_params, augcl.nn.UnMix, and the timm (Mixup, mixup_target, one_hot) and torchvision (MixUp, CutMix) drop-ins.
A clear error naming the argument, or a finite result where the input is documented to be accepted (what the
torchvision shims raise is torchvision's own message: tests/test_unmix_compat_torchvision.py compares them side by
side; tests/_bad_inputs.py has the machinery and the perturbation families).
"""
from __future__ import annotations

import pytest
import torch

from augcl import functional as AF
from augcl import nn as ANN
from augcl._validate import IndexArgumentError
from augcl.compat import timm as CT
from augcl.compat import torchvision as CTV
from _bad_inputs import (
    B, K, LAM_UNIT, NO_NEGATIVES, OK, PROPAGATES, TEMPERATURE, TEMPERATURE_CTOR, XFAIL_META, begin_cases, case,
    check_index_checks_stay_on_without_value_checks, check_index_error_is_both_index_and_value_error, collect_cases,
    ctor_cases, emb, extra_cases, images, index_cases, matrix_cases, run_case, unit, value_cases, with_value,
)

pytestmark = pytest.mark.usefixtures("distribution_checks_on")  # the torchvision shims' alpha checks

begin_cases()


# ======================================================================================= functional: Un-Mix
def _uinfo_base():
    return dict(q=emb(), k=emb(seed=1), q_mix=emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0),
                queue=unit(K, seed=3))


E = "unmix_info_nce"
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "q", more_rows=(ValueError, r"k must have 5 rows"),
             wider=(ValueError, r"k must have 9 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "k", more_rows=(ValueError, r"k must have 4 rows"),
             wider=(ValueError, r"k must have 8 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "q_mix", more_rows=(ValueError, r"q_mix must have 4 rows"),
             wider=(ValueError, r"q_mix must have 8 features"))
matrix_cases(E, AF.unmix_info_nce, _uinfo_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=NO_NEGATIVES)
index_cases(E, AF.unmix_info_nce, _uinfo_base, "partner", B, longer=(ValueError, r"partner must have shape"))
value_cases(E, AF.unmix_info_nce, _uinfo_base, "temperature", TEMPERATURE)
value_cases(E, AF.unmix_info_nce, _uinfo_base, "lam", LAM_UNIT)
extra_cases(E, AF.unmix_info_nce, _uinfo_base, {
    "partner:none": (dict(partner=None), OK, None),  # the reversed batch
    "form:unknown": (dict(form="x"), ValueError, r"form must be one of"),
    "form_soft:tensor_temperature_zero": (dict(form="soft", temperature=torch.tensor(0.0)), ValueError,
                                         r"temperature must be finite and > 0"),
    "form_soft:lam_nan": (dict(form="soft", lam=float("nan")), ValueError, r"lam must lie in \[0, 1\]"),
    "queue:none_key_negatives": (dict(queue=None, key_negatives=True), OK, None),
})


def _usim_base():
    return dict(z1=emb(), z2=emb(seed=1), z_mix=emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0))


E = "unmix_nt_xent"
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z1", more_rows=(ValueError, r"z2 must have 5 rows"),
             wider=(ValueError, r"z2 must have 9 features"))
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z2", more_rows=(ValueError, r"z2 must have 4 rows"),
             wider=(ValueError, r"z2 must have 8 features"))
matrix_cases(E, AF.unmix_nt_xent, _usim_base, "z_mix", more_rows=(ValueError, r"z_mix must have 4 rows"),
             wider=(ValueError, r"z_mix must have 8 features"))
index_cases(E, AF.unmix_nt_xent, _usim_base, "partner", B)
value_cases(E, AF.unmix_nt_xent, _usim_base, "temperature", TEMPERATURE)
value_cases(E, AF.unmix_nt_xent, _usim_base, "lam", LAM_UNIT)


# ====================================================================================== functional: mixing
IMAGES = {
    "ndim5": (lambda t: t.unsqueeze(0), ValueError, r"x must be a 4-D tensor"),
    "ndim3": (lambda t: t[0], ValueError, r"x must be a 4-D tensor"),
    "int64": (lambda t: t.long(), TypeError, r"x must be float16, bfloat16, float32, float64 or uint8"),
    "bool": (lambda t: t > 0.5, TypeError, r"x must be float16"),
    "complex64": (lambda t: t.to(torch.complex64), TypeError, r"x must be float16"),
    "fp16": (lambda t: t.half(), OK, None),
    "fp64": (lambda t: t.double(), OK, None),
    "uint8": (lambda t: (t * 255).to(torch.uint8), OK, None),
    "empty": (lambda t: t[:0], ValueError, r"x is empty"),
    "no_channels": (lambda t: t[:, :0], ValueError, r"x is empty"),
    # not scanned: a scan would read the batch a second time in a memory-bound pass (mix_images' docstring)
    "nan": (lambda t: with_value(t, float("nan")), PROPAGATES, None),
    "inf": (lambda t: with_value(t, float("inf")), PROPAGATES, None),
    "list": (lambda t: t.tolist(), TypeError, r"x must be a torch\.Tensor"),
    "none": (lambda t: None, TypeError, r"x must be a torch\.Tensor"),
    "wider": (lambda t: torch.cat([t, t[..., :1]], -1), OK, None),
}


def image_cases(entry, call, base, **overrides):
    for pert, (make, exc, match) in IMAGES.items():
        if pert in overrides:
            exc, match = overrides[pert]
        case(entry, f"x:{pert}", lambda make=make: call(**{**base(), "x": make(base()["x"])}), exc, match)


def _mix_base():
    return dict(x=images(), lam=torch.full((B,), 0.5), cutmix=torch.tensor([True, False, True, False]),
                boxes=torch.tensor([[0, 4, 0, 4]] * B), partner=torch.arange(B).flip(0))


E = "mix_images"
image_cases(E, AF.mix_images, _mix_base)
case(E, "x:more_rows", lambda: AF.mix_images(**{**_mix_base(), "x": torch.rand(B + 1, 3, 8, 8)}), ValueError,
     r"lam must have shape \[5\]")
case(E, "x:meta", lambda: AF.mix_images(**{**_mix_base(), "x": images().to("meta")}), ValueError, r"but x is on meta")
index_cases(E, AF.mix_images, _mix_base, "partner", B)
extra_cases(E, AF.mix_images, _mix_base, {
    "lam:nan": (dict(lam=torch.tensor([0.5, float("nan"), 0.5, 0.5])), ValueError, r"lam contains non-finite"),
    "lam:above_one": (dict(lam=torch.full((B,), 1.5)), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:negative": (dict(lam=torch.full((B,), -0.5)), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:int": (dict(lam=torch.ones(B, dtype=torch.long)), TypeError, r"lam must be a floating tensor"),
    "lam:float": (dict(lam=0.5), TypeError, r"lam must be a torch\.Tensor"),
    "lam:meta": (dict(lam=torch.full((B,), 0.5, device="meta")), ValueError, r"lam is on meta"),
    "cutmix:int": (dict(cutmix=torch.ones(B, dtype=torch.long)), TypeError, r"cutmix must be a bool tensor"),
    "boxes:outside": (dict(boxes=torch.tensor([[0, 9, 0, 4]] * B)), ValueError, r"boxes\[0\] = .* is not a box"),
    "boxes:reversed": (dict(boxes=torch.tensor([[4, 2, 0, 4]] * B)), ValueError, r"boxes\[0\] = .* is not a box"),
    "boxes:float": (dict(boxes=torch.tensor([[0, 4, 0, 4]] * B).float()), TypeError, r"boxes must be an integer"),
    "boxes:three_columns": (dict(boxes=torch.tensor([[0, 4, 0]] * B)), ValueError, r"boxes must have shape \[4, 4\]"),
    "mean:nan": (dict(mean=[0.5, float("nan"), 0.5]), ValueError, r"mean must be finite"),
    "std:zero": (dict(std=[1.0, 0.0, 1.0]), ValueError, r"std must not contain 0"),
    "std:negative": (dict(std=[1.0, -1.0, 1.0]), OK, None),  # torchvision's Normalize allows it too
    "mean:two_values": (dict(mean=[0.5, 0.5]), ValueError, r"mean must hold 3 values"),
    "mean:str": (dict(mean="abc"), TypeError, r"mean must be None, a sequence"),
    "out_dtype:int": (dict(out_dtype=torch.int32), TypeError, r"out_dtype must be None, float16"),
})


def _unmix_base():
    return dict(x=images())


E = "unmix"
image_cases(E, AF.unmix, _unmix_base)
case(E, "x:more_rows", lambda: AF.unmix(torch.rand(B + 1, 3, 8, 8)), OK)
case(E, "x:meta", lambda: AF.unmix(images().to("meta")), ValueError, r"x", marks=XFAIL_META)
extra_cases(E, AF.unmix, _unmix_base, {
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:negative": (dict(alpha=-1.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:nan": (dict(alpha=float("nan")), ValueError, r"alpha must be finite and > 0"),
    "alpha:inf": (dict(alpha=float("inf")), ValueError, r"alpha must be finite and > 0"),
    "alpha:tensor": (dict(alpha=torch.tensor(1.0)), TypeError, r"alpha must be a number"),
    "prob_mixup:negative": (dict(prob_mixup=-0.1), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "prob_mixup:above_one": (dict(prob_mixup=1.5), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "prob_mixup:nan": (dict(prob_mixup=float("nan")), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "per_sample:int": (dict(per_sample=1), TypeError, r"per_sample must be a bool"),
    "pairing:unknown": (dict(pairing="x"), ValueError, r"pairing must be one of"),
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "generator:other_device": (dict(x=images().to("meta"), generator=torch.Generator()), ValueError,
                               r"generator is on cpu but x is on meta"),
})

E = "unmix_params"
extra_cases(E, AF.unmix_params, lambda: dict(batch_size=B, height=8, width=8), {
    "valid": (dict(), OK, None),
    "batch_size:zero": (dict(batch_size=0), ValueError, r"batch_size must be >= 1"),
    "batch_size:negative": (dict(batch_size=-1), ValueError, r"batch_size must be >= 1"),
    "batch_size:float": (dict(batch_size=2.0), TypeError, r"batch_size must be an int"),
    "height:zero": (dict(height=0), ValueError, r"height must be >= 1"),
    "width:bool": (dict(width=True), TypeError, r"width must be an int"),
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "prob_mixup:two": (dict(prob_mixup=2.0), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "device:unknown": (dict(device="nodevice"), ValueError, r"device must be a torch\.device"),
    "generator:other_device": (dict(generator=torch.Generator(), device="meta"), ValueError, r"generator is on cpu"),
})


E = "nn.UnMix"
ctor_cases(E, ANN.UnMix, {
    "alpha:zero": (dict(alpha=0.0), ValueError, r"alpha must be finite and > 0"),
    "alpha:nan": (dict(alpha=float("nan")), ValueError, r"alpha must be finite and > 0"),
    "prob_mixup:two": (dict(prob_mixup=2.0), ValueError, r"prob_mixup must lie in \[0, 1\]"),
    "pairing:unknown": (dict(pairing="x"), ValueError, r"pairing must be one of"),
    "objective:unknown": (dict(objective="x"), ValueError, r"objective must be"),
    "form:unknown": (dict(form="x"), ValueError, r"form must be one of"),
    "temperature:zero": (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    **TEMPERATURE_CTOR,
    "mean:str": (dict(mean="abc"), TypeError, r"mean must be None, a sequence"),
    "mean:nan": (dict(mean=[0.5, float("nan"), 0.5]), ValueError, r"mean must be finite"),
    "mean:empty": (dict(mean=[]), ValueError, r"mean must hold one value per channel"),
    "std:zero": (dict(std=[1.0, 0.0, 1.0]), ValueError, r"std must not contain 0"),
    "std:zero_tensor": (dict(std=torch.tensor([1.0, 0.0, 1.0])), ValueError, r"std must not contain 0"),
    "out_dtype:int": (dict(out_dtype=torch.int32), TypeError, r"out_dtype must be None, float16"),
    "generator:str": (dict(generator="g"), TypeError, r"generator must be a torch\.Generator"),
    "per_sample:int": (dict(per_sample=1), TypeError, r"per_sample must be a bool"),
})
case(E, "mean_std_mismatch_channels", lambda: ANN.UnMix(mean=[0.5, 0.5])(images()), ValueError, r"mean must hold 3")
image_cases(E + ".mix", lambda x: ANN.UnMix().mix(x), _unmix_base)
_um = (lambda a, b, mixed, lam, partner, queue: ANN.UnMix().loss(a, b, mixed, lam, partner, queue))
_um_base = (lambda: dict(a=emb(), b=emb(seed=1), mixed=emb(seed=2), lam=0.5, partner=torch.arange(B).flip(0),
                         queue=unit(K, seed=3)))
# UnMix.loss(a, b, mixed, ...) is unmix_info_nce(q, k, q_mix, ...) (documented): errors use those names
matrix_cases(E + ".loss", _um, _um_base, "a", label="q", more_rows=(ValueError, r"k must have 5 rows"),
             wider=(ValueError, r"k must have 9 features"))
matrix_cases(E + ".loss", _um, _um_base, "b", label="k", more_rows=(ValueError, r"k must have 4 rows"),
             wider=(ValueError, r"k must have 8 features"))
matrix_cases(E + ".loss", _um, _um_base, "mixed", label="q_mix", more_rows=(ValueError, r"q_mix must have 4 rows"),
             wider=(ValueError, r"q_mix must have 8 features"))
matrix_cases(E + ".loss", _um, _um_base, "queue", more_rows=(OK, None), wider=(ValueError, r"queue must have 8"),
             none=(ValueError, r"queue=None and key_negatives=False"))
index_cases(E + ".loss", _um, _um_base, "partner", B)
value_cases(E + ".loss", _um, _um_base, "lam", LAM_UNIT)
case(E + "[simclr].loss", "queue_given", lambda: ANN.UnMix(objective="simclr").loss(emb(), emb(), emb(), 0.5, None,
                                                                                   unit(K)),
     ValueError, r"queue is only used by objective='moco'")

E = "compat.timm.Mixup"
ctor_cases(E, CT.Mixup, {
    "mixup_alpha:negative": (dict(mixup_alpha=-1.0), ValueError, r"mixup_alpha and cutmix_alpha must be >= 0"),
    "mixup_alpha:nan": (dict(mixup_alpha=float("nan")), ValueError, r"mixup_alpha must be a finite number"),
    "mixup_alpha:str": (dict(mixup_alpha="1"), TypeError, r"mixup_alpha must be a finite number"),
    "prob:negative": (dict(prob=-0.1), ValueError, r"prob must lie in \[0, 1\]"),
    "prob:above_one": (dict(prob=1.5), ValueError, r"prob must lie in \[0, 1\]"),
    "switch_prob:two": (dict(switch_prob=2.0), ValueError, r"switch_prob must lie in \[0, 1\]"),
    "label_smoothing:negative": (dict(label_smoothing=-0.1), ValueError, r"label_smoothing must lie in \[0, 1\]"),
    "label_smoothing:above_one": (dict(label_smoothing=1.5), ValueError, r"label_smoothing must lie in \[0, 1\]"),
    "num_classes:zero": (dict(num_classes=0), ValueError, r"num_classes must be an int >= 1"),
    "mode:unknown": (dict(mode="x"), ValueError, r"mode must be one of"),
    "cutmix_minmax:reversed": (dict(cutmix_minmax=(0.9, 0.1)), ValueError, r"cutmix_minmax must be \(min, max\) box"),
    "cutmix_minmax:above_one": (dict(cutmix_minmax=(0.0, 2.0)), ValueError, r"cutmix_minmax must be \(min, max\) box"),
    "cutmix_minmax:three": (dict(cutmix_minmax=(0.1, 0.2, 0.3)), ValueError, r"cutmix_minmax must be \(min, max\)"),
    "cutmix_minmax:str": (dict(cutmix_minmax="ab"), TypeError, r"cutmix_minmax must be None or \(min, max\)"),
})
case(E, "both_alphas_zero", lambda: CT.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)(images(), torch.arange(B)),
     ValueError, r"one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")  # as timm: at the draw
_tgt = torch.tensor([1, 2, 3, 4])
for _mode in ("batch", "elem"):
    _mx = (lambda x, target, _mode=_mode: CT.Mixup(num_classes=10, mode=_mode, cutmix_alpha=1.0)(x, target))
    _mx_base = (lambda: dict(x=images(), target=_tgt))
    image_cases(f"{E}[{_mode}]", _mx, _mx_base, ndim5=(ValueError, r"x must be a 4-D batch"),
                ndim3=(ValueError, r"x must be a 4-D batch"), list=(TypeError, r"x must be a torch\.Tensor"),
                none=(TypeError, r"x must be a torch\.Tensor"),
                empty=(ValueError, r"target must hold one entry per image: x has 0 images"))
    extra_cases(f"{E}[{_mode}]", _mx, _mx_base, {
        "target:too_high": (dict(target=torch.tensor([1, 2, 3, 10])), IndexArgumentError, r"target has class indices"),
        "target:negative": (dict(target=torch.tensor([1, 2, 3, -1])), IndexArgumentError, r"target has class indices"),
        "target:float": (dict(target=_tgt.float()), TypeError, r"target must hold integer class indices"),
        "target:longer": (dict(target=torch.tensor([1, 2, 3, 4, 5])), ValueError, r"target must hold one entry per"),
        "target:meta": (dict(target=_tgt.to("meta")), ValueError, r"target is on meta"),
        "target:list": (dict(target=_tgt.tolist()), TypeError, r"target must be a torch\.Tensor"),
        "target:none": (dict(target=None), TypeError, r"target must be a torch\.Tensor"),
        "x:meta": (dict(x=images().to("meta")), ValueError, r"target is on cpu but x is on meta"),
    })
case(f"{E}[multi_label]", "target:nan",
     lambda: CT.Mixup(num_classes=10, multi_label=True)(images(), torch.full((B, 10), float("nan"))),
     ValueError, r"target contains non-finite")

E = "compat.timm.mixup_target"
extra_cases(E, CT.mixup_target, lambda: dict(target=torch.tensor([1, 2]), num_classes=10), {
    "valid": (dict(), OK, None),
    "target:too_high": (dict(target=torch.tensor([1, 10])), IndexArgumentError,
                        r"target has class indices in \[1, 10\]"),
    "target:negative": (dict(target=torch.tensor([1, -1])), IndexArgumentError, r"target has class indices"),
    "target:float": (dict(target=torch.tensor([1.5, 2.0])), TypeError, r"target must hold integer class indices"),
    "target:list": (dict(target=[1, 2]), TypeError, r"target must be a torch\.Tensor"),
    "num_classes:zero": (dict(target=torch.tensor([0, 0]), num_classes=0), ValueError,
                         r"num_classes must be an int >= 1"),
    "lam:nan": (dict(lam=float("nan")), ValueError, r"lam must be finite and in \[0, 1\]"),
    "lam:above_one": (dict(lam=1.5), ValueError, r"lam must be finite and in \[0, 1\]"),
    "lam:tensor_nan": (dict(lam=torch.tensor([[0.5], [float("nan")]])), ValueError, r"lam must lie in \[0, 1\]"),
    "lam:int_tensor": (dict(lam=torch.ones(2, 1, dtype=torch.long)), TypeError, r"lam must be a float or a floating"),
    "smoothing:nan": (dict(smoothing=float("nan")), ValueError, r"smoothing must be finite and in \[0, 1\]"),
    "smoothing:above_one": (dict(smoothing=1.5), ValueError, r"smoothing must be finite and in \[0, 1\]"),
    "multi_label:nan": (dict(target=torch.full((2, 10), float("nan")), multi_label=True), ValueError,
                        r"target contains non-finite"),
    "multi_label:shape": (dict(target=torch.ones(2, 3), multi_label=True), ValueError, r"target: multi-label mixup"),
})
E = "compat.timm.one_hot"
extra_cases(E, CT.one_hot, lambda: dict(x=torch.tensor([1, 2]), num_classes=10), {
    "valid": (dict(), OK, None),
    "x:too_high": (dict(x=torch.tensor([1, 10])), IndexArgumentError, r"x has class indices"),
    "x:negative": (dict(x=torch.tensor([-1])), IndexArgumentError, r"x has class indices"),
    "num_classes:zero": (dict(x=torch.tensor([0]), num_classes=0), ValueError, r"num_classes must be an int >= 1"),
})

# The torchvision shims raise what torchvision 0.29 raises, message for message (tests/test_unmix_compat_torchvision.py
# runs both side by side): torch.distributions' argument check for alpha (on in this module, see
# conftest.distribution_checks_on), torch's one_hot for labels, torchvision's own checks for the batch. MixUp finds
# no image in a list or None and mixes the labels only; CutMix takes the labels for the image there, and copies
# boxes of any dtype.
_CLASS_TOO_HIGH = (RuntimeError, r"Class values must be smaller than num_classes")
_ONE_HOT_INDEX = (RuntimeError, r"one_hot is only applicable to index tensor of type LongTensor")
_TV_IMAGES = {
    "MixUp": dict(list=(OK, None), none=(OK, None)),
    "CutMix": dict(list=(TypeError, r"Input tensor should have at least two dimensions, but got 1"),
                   none=(TypeError, r"Input tensor should have at least two dimensions, but got 1"),
                   int64=(OK, None), bool=(OK, None), complex64=(OK, None)),
}
for _name, _cls in (("MixUp", CTV.MixUp), ("CutMix", CTV.CutMix)):
    E = f"compat.torchvision.{_name}"
    _dirichlet = (ValueError, r"Expected parameter concentration .* of distribution Dirichlet")
    ctor_cases(E, _cls, {
        "alpha:zero": (dict(alpha=0.0), *_dirichlet),
        "alpha:negative": (dict(alpha=-1.0), *_dirichlet),
        "alpha:nan": (dict(alpha=float("nan")), *_dirichlet),
        "labels_getter:int": (dict(labels_getter=3), ValueError, r"labels_getter should either be"),
    })
    case(E, "num_classes:zero", lambda _cls=_cls: _cls(num_classes=0)(images(), _tgt), *_CLASS_TOO_HIGH)
    _tv = (lambda x, labels, _cls=_cls: _cls(num_classes=10)(x, labels))
    _tv_base = (lambda: dict(x=images(), labels=_tgt))
    image_cases(E, _tv, _tv_base, ndim5=(ValueError, r"Expected a batched input with 4 dims"),
                ndim3=(ValueError, r"Expected a batched input with 4 dims"),
                empty=(ValueError, r"batch size of the image or video does not match .* 0 != 4"), **_TV_IMAGES[_name])
    extra_cases(E, _tv, _tv_base, {
        "labels:too_high": (dict(labels=torch.tensor([1, 2, 3, 10])), *_CLASS_TOO_HIGH),
        "labels:negative": (dict(labels=torch.tensor([1, 2, 3, -1])), RuntimeError,
                            r"Class values must be non-negative"),
        "labels:float": (dict(labels=_tgt.float()), *_ONE_HOT_INDEX),
        "labels:longer": (dict(labels=torch.tensor([1, 2, 3, 4, 5])), ValueError, r"batch size of the image"),
        "labels:list": (dict(labels=_tgt.tolist()), ValueError,
                        r"When using the default labels_getter, the input passed to forward must be a dictionary or "
                        r"a two-tuple whose second item is a dictionary or a tensor, but got \[1, 2, 3, 4\] instead"),
        "labels:2d_nan": (dict(labels=torch.full((B, 10), float("nan"))), ValueError, r"labels contains non-finite"),
        "labels:2d_wrong_classes": (dict(labels=torch.ones(B, 3)), ValueError, r"must match num_classes"),
        "labels:complex": (dict(labels=_tgt.to(torch.complex64)), *_ONE_HOT_INDEX),
        "labels:3d": (dict(labels=torch.ones(B, 10, 1)), ValueError, r"labels should be index based"),
        "empty_batch": (dict(x=images()[:0], labels=_tgt[:0]), ValueError, r"x is empty"),
    })
    case(E, "labels:meta", lambda _tv=_tv: _tv(images(), _tgt.to("meta")), ValueError, r"labels",
         marks=XFAIL_META)


CASES = collect_cases()


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    run_case(fn, exc, match)


@pytest.mark.parametrize("call", [
    lambda: AF.unmix_info_nce(emb(), emb(), emb(), 0.5, torch.full((B,), B), unit(K)),
    lambda: AF.mix_images(**{**_mix_base(), "partner": torch.full((B,), B)}),
], ids=["unmix_info_nce", "mix_images"])
def test_index_argument_error_is_both_index_and_value_error(call):
    check_index_error_is_both_index_and_value_error(call)


@pytest.mark.parametrize("call", [
    lambda: AF.unmix_info_nce(emb(), emb(), emb(), 0.5, torch.full((B,), B), unit(K)),
    lambda: AF.unmix_nt_xent(emb(), emb(), emb(), 0.5, torch.full((B,), -1)),
    lambda: AF.mix_images(**{**_mix_base(), "partner": torch.full((B,), B)}),
], ids=["unmix_info_nce", "unmix_nt_xent", "mix_images"])
def test_index_checks_stay_on_without_value_checks(call):
    check_index_checks_stay_on_without_value_checks(call)
