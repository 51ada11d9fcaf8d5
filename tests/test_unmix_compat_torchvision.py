"""augcl.compat.torchvision MixUp / CutMix run side by side with torchvision.transforms.v2's under the same torch
seed: the same outputs for good inputs, the same exception (type and message) for bad ones, and the differences
the module docstring lists.

Equality is exact (torch.equal) for labels and CutMix images. torchvision's MixUp computes
``x[i-1] * fp32(1 - lam) + x[i] * fp32(lam)`` and the op ``fp32(lam) * x[i] + (1 - fp32(lam)) * x[i-1]``: the
partner weight can differ by one float32 rounding, so MixUp images follow the rule of tests/_tolerance.py with
torchvision as the yardstick (torchvision on float64 copies of the images the reference, torchvision on the same
inputs the eager computation). After each call the RNG must be in the same state (the next draw is compared), so
the draw sequences are the same too.
"""
import collections
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils import _pytree as pytree

import augcl
from augcl.compat import torchvision as ctv
from _tolerance import assert_close_to_reference


pytestmark = pytest.mark.usefixtures("distribution_checks_on")  # torchvision's alpha checks (see conftest.py)

try:
    import PIL.Image
    import torchvision.transforms.v2 as tv2
    from torchvision import tv_tensors
    _TV_MISSING = None
except ImportError as exc:  # the shim needs neither; only the comparison does
    _TV_MISSING = str(exc)

needs_tv = pytest.mark.skipif(_TV_MISSING is not None,
                              reason=f"torchvision is not installed ({_TV_MISSING}): nothing to compare the shims with")

B = 4
Y = torch.tensor([0, 1, 2, 1])
Sample = collections.namedtuple("Sample", "image label")


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _x(*shape):
    return _rand(*(shape or (B, 3, 6, 6)))


def run_tv(ours, theirs, inputs, seed):
    torch.manual_seed(seed)
    want = theirs(*inputs)
    want_next = torch.rand(1)
    torch.manual_seed(seed)
    got = ours(*inputs)
    got_next = torch.rand(1)
    assert torch.equal(got_next, want_next), "torch's RNG moved differently"
    return got, want


def _is_image(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 4


def tv_on_float64(theirs, inputs, seed):
    """torchvision's output for float64 copies of the floating image / video leaves (ndim >= 4) of ``inputs``, under
    the same seed: the reference of a MixUp comparison."""
    inputs64 = pytree.tree_map(lambda t: t.to(torch.float64) if _is_image(t) else t, inputs)
    torch.manual_seed(seed)
    return theirs(*inputs64)


def assert_same_output(got, want, inputs, want64=None) -> bool:
    """Asserts ``got`` equals torchvision's ``want`` (see the module docstring): MixUp images (when ``want64``,
    torchvision's output for float64 images, is given) within the tolerance rule, everything else exactly; returns
    whether an image / video leaf (ndim >= 4) differs from the input's."""
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    assert got_spec == want_spec and type(got) is type(want)
    in_leaves = pytree.tree_flatten(inputs if len(inputs) > 1 else inputs[0])[0]
    ref_leaves = pytree.tree_flatten(want64)[0] if want64 is not None else [None] * len(want_leaves)
    image_changed = False
    for g, w, i, r in zip(got_leaves, want_leaves, in_leaves, ref_leaves):
        assert type(g) is type(w)
        if not isinstance(w, torch.Tensor):
            assert g is w
            continue
        assert g.dtype == w.dtype and g.shape == w.shape
        if want64 is not None and _is_image(w):
            assert_close_to_reference(g.as_subclass(torch.Tensor), r.as_subclass(torch.Tensor),
                                      w.as_subclass(torch.Tensor), "image")
        else:
            assert torch.equal(g, w)
        image_changed |= w.ndim >= 4 and not torch.equal(g, i)
    return image_changed


# ------------------------------------------------------------------------------------------ good inputs
@needs_tv
@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_mixup_parity(alpha):
    x = torch.randn(5, 3, 7, 9)
    y = torch.randint(0, 6, (5,))
    for seed in range(4):
        theirs = tv2.MixUp(alpha=alpha, num_classes=6)
        (gx, gy), (wx, wy) = run_tv(ctv.MixUp(alpha=alpha, num_classes=6), theirs, (x, y), seed)
        assert torch.equal(gy, wy)
        assert_close_to_reference(gx, tv_on_float64(theirs, (x, y), seed)[0], wx, "image")
        assert not torch.equal(gx, x)


@needs_tv
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int16])
def test_cutmix_parity(dtype):
    x = (torch.rand(6, 3, 10, 13) * 255).to(dtype)
    y = torch.randint(0, 4, (6,))
    changed = False
    for seed in range(5):
        (gx, gy), (wx, wy) = run_tv(ctv.CutMix(num_classes=4), tv2.CutMix(num_classes=4), (x, y), seed)
        assert gx.dtype == wx.dtype and torch.equal(gx, wx) and torch.equal(gy, wy)
        changed |= not torch.equal(gx, x)
    assert changed


@needs_tv
def test_dict_soft_labels_and_getter():
    x = torch.randn(4, 3, 6, 6)
    soft = torch.softmax(torch.randn(4, 5), 1)
    (got, want) = run_tv(ctv.CutMix(), tv2.CutMix(), ({"image": x, "labels": soft},), 2)
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["labels"], want["labels"])
    getter = lambda s: s[1]  # noqa: E731
    (g, w) = run_tv(ctv.MixUp(num_classes=5, labels_getter=getter), tv2.MixUp(num_classes=5, labels_getter=getter),
                    (x, torch.tensor([0, 1, 2, 4])), 3)
    assert torch.equal(g[1], w[1])


# name -> (constructor keywords over num_classes=3, the call's positional arguments[, (the one class it applies
# to, why)])
GOOD = {
    "pair": (dict(), lambda: (_x(), Y)),
    "float64": (dict(), lambda: (_x().double(), Y)),
    "channels_last": (dict(), lambda: (_x().contiguous(memory_format=torch.channels_last), Y)),
    "soft_labels": (dict(num_classes=None), lambda: (_x(), torch.softmax(_rand(B, 5), 1))),
    "int_2d_labels": (dict(num_classes=None), lambda: (_x(), torch.eye(3, dtype=torch.long)[Y])),
    "num_classes_inferred": (dict(num_classes=-1), lambda: (_x(), Y)),  # one_hot's -1: max + 1 classes
    "alpha_inf": (dict(alpha=float("inf")), lambda: (_x(), Y)),
    "alpha_tensor": (dict(alpha=torch.tensor(0.5)), lambda: (_x(), Y)),
    "dict": (dict(), lambda: ({"image": _x(), "target_label": Y, "name": "batch0"},)),
    "dict_in_tuple": (dict(), lambda: ((_x(), {"labels": Y, "ids": [1, 2]}),)),
    "namedtuple": (dict(), lambda: (Sample(_x(), Y),)),
    "extra_tensor_passes": (dict(), lambda: (_x(), Y, torch.arange(B), _x(B, 3, 5, 5))),
    "tv_image": (dict(), lambda: (tv_tensors.Image(_x()), Y)),
    "tv_images_pure_passes": (dict(), lambda: ({"a": tv_tensors.Image(_x()), "depth": _x(B, 1, 2, 2),
                                               "b": tv_tensors.Image(_rand(B, 1, 6, 6, seed=1)), "labels": Y},)),
    "tv_video": (dict(), lambda: (tv_tensors.Video(_x(B, 2, 3, 6, 6)), Y)),
    "mixup_images_of_two_sizes": (dict(), lambda: ({"a": tv_tensors.Image(_x()), "b": tv_tensors.Image(_x(B, 3, 5, 5)),
                                                   "labels": Y},), ("MixUp", "CutMix needs one size (BAD)")),
    "mixup_labels_only": (dict(), lambda: (Y,), ("MixUp", "CutMix measures 1-D labels as its image (BAD)")),
    "cutmix_bool_images": (dict(), lambda: (_x() > 0, Y), ("CutMix", "MixUp cannot write a float mix into bool")),
    "cutmix_uint8_image": (dict(), lambda: (tv_tensors.Image((_x() * 60).clamp(0, 255).to(torch.uint8)), Y),
                           ("CutMix", "uint8 MixUp is a documented extension")),
    "labels_only_soft": (dict(num_classes=None), lambda: (torch.softmax(_rand(B, 5), 1),)),
}
LABELS_ONLY = ("mixup_labels_only", "labels_only_soft")


def _case_params(table):
    return [pytest.param(case, name, id=f"{case}-{name}") for case, (_, _, *only) in table.items()
            for name in ("MixUp", "CutMix") if not only or only[0][0] == name]


@needs_tv
@pytest.mark.parametrize("case,name", _case_params(GOOD))
def test_good_input_gives_torchvision_output(case, name):
    kw, make, *_ = GOOD[case]
    kw = dict(dict(num_classes=3), **kw)
    image_changed = False
    for seed in range(3):
        inputs = make()
        theirs = getattr(tv2, name)(**kw)
        got, want = run_tv(getattr(ctv, name)(**kw), theirs, inputs, seed)
        want64 = tv_on_float64(theirs, inputs, seed) if name == "MixUp" else None
        image_changed |= assert_same_output(got, want, inputs, want64)
    assert image_changed or case in LABELS_ONLY, "no image was mixed: the comparison tests nothing"


@needs_tv
def test_complex_soft_labels_warn_and_mix_like_torchvision():
    labels = torch.ones(B, 3, dtype=torch.complex64) * (0.5 + 1j)
    for name in ("MixUp", "CutMix"):
        inputs = (_x(), labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "Casting complex values to real" (warned once)
            got, want = run_tv(getattr(ctv, name)(), getattr(tv2, name)(), inputs, 0)
        assert torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------------------ bad inputs
def _pil():
    return PIL.Image.new("RGB", (6, 6))


def _mask():
    return tv_tensors.Mask(torch.zeros(B, 6, 6, dtype=torch.uint8))


def _boxes():
    return tv_tensors.BoundingBoxes(torch.zeros(B, 4), format="XYXY", canvas_size=(6, 6))


def _keypoints():
    return tv_tensors.KeyPoints(torch.zeros(B, 2), canvas_size=(6, 6))


# name -> (constructor keywords over num_classes=3, the call's positional arguments[, (the one class it applies
# to, why)])
BAD = {
    "pil_image": (dict(), lambda: (_pil(), Y)),
    "pil_in_dict": (dict(), lambda: ({"image": _x(), "pil": _pil(), "labels": Y},)),
    "mask": (dict(), lambda: (_x(), Y, _mask())),
    "mask_in_dict": (dict(), lambda: ({"image": _x(), "masks": _mask(), "labels": Y},)),
    "mask_image_shaped": (dict(), lambda: (_x(), Y, tv_tensors.Mask(torch.zeros(B, 1, 6, 6)))),
    "boxes_nested": (dict(), lambda: ((_x(), {"labels": Y, "boxes": _boxes()}),)),
    "keypoints": (dict(), lambda: (_x(), Y, _keypoints())),
    "labels_int": (dict(), lambda: (_x(), 3)),
    "labels_list": (dict(), lambda: (_x(), Y.tolist())),
    "labels_tv_image": (dict(), lambda: (_x(), tv_tensors.Image(_x(B, 1, 1, 2)))),
    "getter_returns_int": (dict(labels_getter=lambda s: 3), lambda: (_x(), Y)),
    "getter_returns_list": (dict(labels_getter=lambda s: [0, 1, 2, 1]), lambda: (_x(), Y)),
    "getter_none": (dict(labels_getter=None), lambda: (_x(), Y)),
    "getter_invalid": (dict(labels_getter=3), lambda: (_x(), Y)),
    "sample_one_item": (dict(), lambda: ((_x(),),)),
    "dict_without_labels": (dict(), lambda: ({"image": _x(), "target": Y},)),
    "dict_int_key": (dict(), lambda: ({1: _x(), "labels": Y},)),
    "labels_0d": (dict(), lambda: (_x(), torch.tensor(1))),
    "labels_3d": (dict(), lambda: (_x(), torch.ones(B, 3, 1))),
    "labels_2d_wrong_classes": (dict(), lambda: (_x(), torch.ones(B, 5))),
    "labels_float": (dict(), lambda: (_x(), Y.float())),
    "labels_int32": (dict(), lambda: (_x(), Y.int())),
    "labels_bool": (dict(), lambda: (_x(), Y.bool())),
    "labels_complex": (dict(), lambda: (_x(), Y.to(torch.complex64))),
    "labels_too_high": (dict(), lambda: (_x(), torch.tensor([0, 1, 2, 3]))),
    "labels_negative": (dict(), lambda: (_x(), torch.tensor([0, 1, 2, -1]))),
    "labels_float_and_image_3d": (dict(), lambda: (_x(B, 6, 6), Y.float())),  # the image is checked first
    "mixup_labels_first_float_and_image_3d": (dict(labels_getter=lambda s: s[0]), lambda: (Y.float(), _x(B, 6, 6)),
                                              ("MixUp", "CutMix measuring the labels is a documented difference")),
    "num_classes_missing": (dict(num_classes=None), lambda: (_x(), Y)),
    "num_classes_zero": (dict(num_classes=0), lambda: (_x(), Y)),
    "num_classes_float": (dict(num_classes=3.0), lambda: (_x(), Y)),
    "num_classes_str": (dict(num_classes="3"), lambda: (_x(), Y)),
    "num_classes_zero_soft_labels": (dict(num_classes=0), lambda: (_x(), torch.ones(B, 3))),
    "image_3d": (dict(), lambda: (_x(3, 6, 6), Y)),
    "image_2d": (dict(), lambda: (_x(6, 6), Y)),
    "image_1d": (dict(), lambda: (_x(6), Y)),
    "image_5d": (dict(), lambda: (_x(B, 1, 3, 6, 6), Y)),
    "video_4d": (dict(), lambda: (tv_tensors.Video(_x()), Y)),
    "image_batch_smaller": (dict(), lambda: (_x(), Y[:3])),
    "labels_longer": (dict(), lambda: (_x(), torch.tensor([0, 1, 2, 1, 0]))),
    "soft_labels_batch": (dict(num_classes=None), lambda: (_x(), torch.ones(B + 1, 3))),
    "second_tv_image_batch": (dict(), lambda: ({"a": tv_tensors.Image(_x()), "b": tv_tensors.Image(_x(2, 3, 6, 6)),
                                               "labels": Y},)),
    "cutmix_images_of_two_sizes": (dict(), lambda: ({"a": tv_tensors.Image(_x()),
                                                    "b": tv_tensors.Image(_x(B, 3, 5, 5)), "labels": Y},),
                                   ("CutMix", "MixUp accepts it (GOOD)")),
    "tv_image_3d": (dict(), lambda: (tv_tensors.Image(_x(3, 6, 6)), Y)),
    "cutmix_labels_only": (dict(), lambda: ({"labels": Y, "name": "no image"},),
                           ("CutMix", "MixUp accepts it (GOOD)")),
    "alpha_zero": (dict(alpha=0.0), lambda: (_x(), Y)),
    "alpha_negative": (dict(alpha=-1.0), lambda: (_x(), Y)),
    "alpha_nan": (dict(alpha=float("nan")), lambda: (_x(), Y)),
    "alpha_none": (dict(alpha=None), lambda: (_x(), Y)),
    "alpha_str": (dict(alpha="abc"), lambda: (_x(), Y)),
    "alpha_numeric_str": (dict(alpha="0.5"), lambda: (_x(), Y)),
    "alpha_bool": (dict(alpha=True), lambda: (_x(), Y)),
}


def _outcome(cls, kw, inputs):
    try:
        cls(**kw)(*inputs)
    except Exception as exc:  # noqa: BLE001 (any exception: its type is what is compared)
        return type(exc), str(exc)
    return None


@needs_tv
@pytest.mark.parametrize("case,name", _case_params(BAD))
def test_bad_input_raises_what_torchvision_raises(case, name):
    kw, make, *_ = BAD[case]
    kw = dict(dict(num_classes=3), **kw)
    inputs = make()
    want = _outcome(getattr(tv2, name), kw, inputs)
    assert want is not None, "torchvision accepts this input: the case tests nothing"
    torch.manual_seed(0)
    first = torch.rand(1)
    torch.manual_seed(0)
    got = _outcome(getattr(ctv, name), kw, inputs)
    assert got == want
    # every check runs before the draw: a failing call leaves the RNG where it was
    assert torch.equal(torch.rand(1), first)


# ------------------------------------------------------------------------------------------ differences
@needs_tv
@pytest.mark.parametrize("name", ["MixUp", "CutMix"])
def test_labels_before_the_image_still_mix_the_image(name):
    # torchvision takes the first pure tensor (here the labels) for the image and mixes no image (CutMix raises);
    # the shim mixes the image, exactly as torchvision does when the image comes first
    x = _x()
    if name == "MixUp":
        got, want = run_tv(ctv.MixUp(num_classes=3), tv2.MixUp(num_classes=3), ({"labels": Y, "image": x},), 1)
    else:
        with pytest.raises(TypeError, match="Input tensor should have at least two dimensions, but got 1"):
            tv2.CutMix(num_classes=3)({"labels": Y, "image": x})
        torch.manual_seed(1)
        got = ctv.CutMix(num_classes=3)({"labels": Y, "image": x})
    if name == "MixUp":
        assert torch.equal(want["image"], x)  # torchvision's own result: the image is left as it was
    theirs = getattr(tv2, name)(num_classes=3)
    _, image_first = run_tv(getattr(ctv, name)(num_classes=3), theirs, ({"image": x, "labels": Y},), 1)
    want64 = tv_on_float64(theirs, ({"image": x, "labels": Y},), 1) if name == "MixUp" else None
    assert assert_same_output({"image": got["image"], "labels": got["labels"]}, image_first,
                              ({"image": x, "labels": Y},), want64)


@needs_tv
def test_uint8_mixup_returns_scaled_float():
    x = (torch.rand(B, 3, 6, 6) * 255).to(torch.uint8)
    with pytest.raises(RuntimeError, match="can't be cast to the desired output type Byte"):
        tv2.MixUp(num_classes=3)(x, Y)
    # the shim's result is torchvision's MixUp of ToDtype(scale=True)(x)
    torch.manual_seed(4)
    got = ctv.MixUp(num_classes=3)(x, Y)
    torch.manual_seed(4)
    want = tv2.MixUp(num_classes=3)(x.float() / 255, Y)
    assert got[0].dtype == torch.float32 and torch.equal(got[1], want[1])
    torch.manual_seed(4)
    want64 = tv2.MixUp(num_classes=3)(x.double() / 255, Y)
    assert_close_to_reference(got[0], want64[0], want[0], "image")


@needs_tv
@pytest.mark.parametrize("name", ["MixUp", "CutMix"])
def test_non_finite_soft_labels_raise_while_checks_are_on(name):
    labels = torch.full((B, 3), float("nan"))
    with pytest.raises(ValueError, match=r"labels contains non-finite values \(NaN or Inf\)"):
        getattr(ctv, name)()(_x(), labels)
    augcl.set_checks(False)
    try:
        got, want = run_tv(getattr(ctv, name)(), getattr(tv2, name)(), (_x(), labels), 0)
    finally:
        augcl.set_checks(True)
    assert bool(torch.isnan(want[1]).all())
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True)


def test_getter_returning_a_new_tensor_raises():
    m = ctv.MixUp(num_classes=3, labels_getter=lambda s: s[1].clone())
    with pytest.raises(ValueError, match="labels_getter must return one of the tensors of the sample"):
        m(_x(), Y)


@needs_tv
@pytest.mark.parametrize("name", ["MixUp", "CutMix"])
def test_video_mean_std_apply_per_channel(name):
    video = tv_tensors.Video(_x(B, 2, 3, 6, 6))
    mean, std = [0.1, 0.2, 0.3], torch.tensor([0.5, 1.0, 2.0])
    got, _ = run_tv(getattr(ctv, name)(num_classes=3, mean=mean, std=std), getattr(tv2, name)(num_classes=3),
                    (video, Y), 2)
    theirs = getattr(tv2, name)(num_classes=3)
    _, want = run_tv(getattr(ctv, name)(num_classes=3), theirs, (video, Y), 2)
    assert type(got[0]) is tv_tensors.Video

    def normalised(v):
        v = v.as_subclass(torch.Tensor)
        return (v - torch.tensor(mean, dtype=v.dtype)[:, None, None]) / std.to(v.dtype)[:, None, None]

    assert_close_to_reference(got[0].as_subclass(torch.Tensor), normalised(tv_on_float64(theirs, (video, Y), 2)[0]),
                              normalised(want[0]), "video")


def test_shim_imports_neither_torchvision_nor_pil():
    # The shim finds tv_tensors / PIL classes in sys.modules; importing and calling it must not import them.
    code = ("import sys, torch; from augcl.compat.torchvision import MixUp, CutMix\n"
            "x = torch.randn(4, 3, 6, 6); y = torch.tensor([0, 1, 2, 1])\n"
            "assert MixUp(num_classes=3)(x, y)[1].shape == (4, 3)\n"
            "assert CutMix(num_classes=3)({'image': x, 'labels': y})['labels'].shape == (4, 3)\n"
            "loaded = [m for m in ('torchvision', 'PIL') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
