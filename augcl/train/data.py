"""Datasets of the training driver: ``--data {digits,synthetic,cifar10:PATH,cifar100:PATH,imagefolder:PATH}``.

Every dataset yields ``(image uint8 [C, H, W], label int)``. Images stay uint8 at their stored resolution
until they reach the training device, where the augmentations (augcl/train/augment.py) crop and resample them
to ``--image-size`` in one ``grid_sample``; evaluation resizes them there with ``F.interpolate``.

* ``digits``: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 grayscale digits, 10 classes), with a
  fixed stratified 75/25 split (``random_state=0``, independent of ``--seed``): 1,347 train / 450 test.
* ``synthetic``: 10 classes of smooth random 3x16x16 colour patterns, shifted, rescaled and noisy (fixed seed,
  320 train / 160 test). For speed runs and tests, not for judging representations.
* ``cifar10:PATH`` / ``cifar100:PATH``: a local torchvision-format copy (``torchvision.datasets.CIFAR10(PATH,
  download=False)``, i.e. PATH/cifar-10-batches-py/), kept in memory as uint8.
* ``imagefolder:PATH``: ``torchvision.datasets.ImageFolder``; PATH/train + PATH/val (or PATH/test) when both
  exist, else one folder split 80/20 (stratified, fixed seed). Images are decoded lazily (use
  ``--num-workers``) and resized to ``--image-size`` on load.

AdaInf (``--inflate PATH --inflate-weight r``): generated uint8 images from an .npz join the training
set (:class:`InflatedDataset`, label -1, never concatenated with the real arrays), and :class:`EpochSampler`
draws from the index map "real data r times + generated data once", uniformly. The kNN monitor and the
linear probe only ever see the real training and test sets.

``--data-fraction F`` (:func:`stratified_fraction`): training sees a class-stratified fraction F of the training
images (drawn from ``--seed``); the kNN monitor and the linear probe still use the whole labelled training set,
so the read-out measures what the representation learned from less unlabeled data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler, Subset,
                              TensorDataset)

from augcl.train.errors import ConfigError, require_sklearn, require_torchvision

__all__ = ["DATA_KINDS", "DataBundle", "parse_data_spec", "load_data", "load_inflation", "InflatedDataset",
           "EpochSampler", "train_loader", "eval_loader", "stratified_fraction"]

DATA_KINDS = ("digits", "synthetic", "cifar10", "cifar100", "imagefolder")
_NEEDS_PATH = ("cifar10", "cifar100", "imagefolder")
SPLIT_SEED = 0  # the fixed train/test split of digits and single-folder imagefolder data

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class DataBundle:
    """A train/test pair plus what the model and the augmentations need to know about it."""

    name: str  # "digits", "cifar10", ...
    train: Dataset  # items (uint8 [C, H, W], int label)
    test: Dataset
    num_classes: int
    channels: int  # 1 or 3
    mean: Tuple[float, ...]  # per-channel normalisation on the [0, 1] scale
    std: Tuple[float, ...]
    flip: bool = True  # horizontal flips preserve the labels (False for digits)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorDataset)


def parse_data_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``"cifar10:/data/cifar"`` -> ``("cifar10", "/data/cifar")``; ``"digits"`` -> ``("digits", None)``."""
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise ConfigError(f"--data {spec!r}: unknown dataset {kind!r}; expected one of digits, synthetic, "
                          "cifar10:PATH, cifar100:PATH, imagefolder:PATH")
    if kind in _NEEDS_PATH and not path:
        raise ConfigError(f"--data {spec!r}: {kind} needs a local path, e.g. --data {kind}:/data/{kind}")
    if kind not in _NEEDS_PATH and sep:
        raise ConfigError(f"--data {spec!r}: {kind} is built in and takes no path")
    return kind, (os.path.expanduser(path) if path else None)


def check_images(where: str, x: torch.Tensor) -> None:
    """Stored images must be uint8 [N, C, H, W] with C in {1, 3} and H, W >= 4."""
    if x.dim() != 4 or x.shape[1] not in (1, 3) or min(x.shape[2:]) < 4:
        raise ConfigError(f"{where}: images must be [N, C, H, W] with 1 or 3 channels and sides >= 4 px, "
                          f"got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ConfigError(f"{where}: images must be uint8, got {x.dtype}")


def _stats(x: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean / std of uint8 images [N, C, H, W] on the [0, 1] scale."""
    xf = x.float().div(255.0).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(xf.mean(1).tolist()), tuple(xf.std(1).clamp(min=1e-3).tolist())


def _stratified_split(labels, test_fraction: float, where: str):
    require_sklearn(f"{where} (a stratified train/test split)")
    # scikit-learn is optional (the ``train`` extra): imported only once require_sklearn found it
    from sklearn.model_selection import train_test_split

    idx = list(range(len(labels)))
    try:
        return train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=SPLIT_SEED)
    except ValueError as exc:  # e.g. a class with a single image
        raise ConfigError(f"{where}: cannot split into train/test ({exc})") from None


def digits() -> DataBundle:
    require_sklearn("--data digits (scikit-learn's load_digits)")
    # scikit-learn is optional (the ``train`` extra): imported only once require_sklearn found it
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)  # [1797,1,8,8]
    y = torch.from_numpy(d.target).long()
    tr, te = _stratified_split(d.target, 0.25, "--data digits")
    tr, te = torch.tensor(tr), torch.tensor(te)
    mean, std = _stats(x[tr])
    return DataBundle("digits", TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), 10, 1, mean, std,
                      flip=False)


def synthetic(n_train: int = 320, n_test: int = 160, num_classes: int = 10, size: int = 16) -> DataBundle:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False).clamp(0, 1)

    def sample(n):
        y = torch.arange(n) % num_classes
        x = templates[y]
        shifts = torch.randint(-3, 4, (n, 2), generator=g)
        x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shifts)])
        x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)) + 0.15 * torch.randn(x.shape, generator=g)
        return x.clamp(0, 1).mul(255).round().to(torch.uint8), y

    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    mean, std = _stats(xtr)
    return DataBundle("synthetic", TensorDataset(xtr, ytr), TensorDataset(xte, yte), num_classes, 3,
                      mean, std)


def cifar(kind: str, path: str) -> DataBundle:
    where = f"--data {kind}:{path}"
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no such directory {path!r} (expected a torchvision-format {kind} copy; "
                          "nothing is downloaded)")
    torchvision = require_torchvision(where)
    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    try:
        tr = cls(path, train=True, download=False)
        te = cls(path, train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        sub = cls.base_folder
        raise ConfigError(f"{where}: no readable torchvision-format {kind} copy in {path!r} "
                          f"(expected {os.path.join(path, sub)}/): {exc}") from None

    def tensors(ds):
        x = torch.from_numpy(ds.data)
        if x.dim() != 4:
            raise ConfigError(f"{where}: images must be [N, H, W, C], got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).contiguous()
        check_images(where, x)
        return x, torch.tensor(ds.targets, dtype=torch.long)

    (xtr, ytr), (xte, yte) = tensors(tr), tensors(te)
    mean, std = _CIFAR_STATS[kind]
    return DataBundle(kind, TensorDataset(xtr, ytr), TensorDataset(xte, yte), len(tr.classes), 3,
                      mean, std)


def imagefolder(path: str, image_size: int) -> DataBundle:
    where = f"--data imagefolder:{path}"
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no such directory {path!r}")
    torchvision = require_torchvision(where)
    transforms = torchvision.transforms
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.PILToTensor()])

    def folder(p):
        try:
            return torchvision.datasets.ImageFolder(p, transform=tf)
        except (FileNotFoundError, RuntimeError, OSError) as exc:
            msg = " ".join(str(exc).split())
            raise ConfigError(f"{where}: {msg if len(msg) <= 300 else msg[:300] + '...'}") from None

    splits = [s for s in ("val", "test") if os.path.isdir(os.path.join(path, s))]
    if os.path.isdir(os.path.join(path, "train")) and splits:
        train, test = folder(os.path.join(path, "train")), folder(os.path.join(path, splits[0]))
        if train.classes != test.classes:
            raise ConfigError(f"{where}: train/ and {splits[0]}/ have different class folders")
        classes = train.classes
    else:
        full = folder(path)
        tr, te = _stratified_split(full.targets, 0.2, where)
        train, test, classes = Subset(full, tr), Subset(full, te), full.classes
    x0, _ = train[0]
    check_images(where, x0.unsqueeze(0))
    return DataBundle("imagefolder", train, test, len(classes), x0.shape[0],
                      *_IMAGENET_STATS)


def load_data(spec: str, image_size: int) -> DataBundle:
    """The :class:`DataBundle` of a ``--data`` value (``image_size`` only matters for imagefolder)."""
    kind, path = parse_data_spec(spec)
    if kind == "digits":
        return digits()
    if kind == "synthetic":
        return synthetic()
    if kind in ("cifar10", "cifar100"):
        return cifar(kind, path)
    return imagefolder(path, image_size)


def _labels(ds: Dataset) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if isinstance(ds, Subset):
        return _labels(ds.dataset)[torch.as_tensor(ds.indices)]
    return torch.as_tensor(ds.targets)  # torchvision's ImageFolder


def stratified_fraction(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """``--data-fraction``: a class-stratified random subset of ``ds`` holding ``round(fraction * n_c)`` images
    (at least 1) of each class c, drawn from ``seed`` (the same subset for the same seed), in the original order.
    A TensorDataset stays one (in memory); any other dataset becomes a Subset."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--data-fraction {fraction}: must be in (0, 1]")
    if fraction == 1.0:
        return ds
    labels = _labels(ds)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = max(1, int(round(fraction * idx.numel())))
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    keep = torch.sort(torch.cat(keep)).values
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[keep] for t in ds.tensors))
    return Subset(ds, keep.tolist())


def load_inflation(path: str, real: Dataset, channels: int) -> torch.Tensor:
    """Generated images for AdaInf from ``path`` (.npz), as a uint8 [G, C, H, W] view (no copy of the array).

    The .npz holds one array (or one named ``images`` / ``x``) of uint8 images [G, H, W] (grayscale),
    [G, H, W, C] or [G, C, H, W] (C in {1, 3}; channels-last is read as such when the last axis is 1 or 3 and
    the second is not). Channels and side must be those of the real images as stored (``real[0]``), since a
    batch mixes both. Raises ConfigError, naming ``--inflate``, for anything else.
    """
    where = f"--inflate {path}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ConfigError(f"{where}: not an .npz archive (np.savez / np.savez_compressed)")
            names = [n for n in ("images", "x") if n in npz.files] or npz.files
            if len(names) != 1:
                raise ConfigError(f"{where}: holds arrays {npz.files}; expected one array, or one named 'images'")
            arr = npz[names[0]]
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001  (a corrupt archive, a pickled array, ...)
        raise ConfigError(f"{where}: cannot read it as .npz: {' '.join(str(exc).split())}") from None
    if arr.dtype != np.uint8:
        raise ConfigError(f"{where}: images must be uint8 (0..255), got {arr.dtype}")
    x = torch.from_numpy(arr)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels-last: a strided view, gathered per batch
    elif x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"{where}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W] with C in {{1, 3}}, "
                          f"got shape {tuple(arr.shape)}")
    if x.shape[0] == 0:
        raise ConfigError(f"{where}: holds no images")
    ref = tuple(real[0][0].shape)
    if (x.shape[1],) + tuple(x.shape[2:]) != ref:
        raise ConfigError(f"{where}: generated images are {tuple(x.shape[1:])} (C, H, W) but the real ones are "
                          f"{ref}; generate them at the real data's size and channels")
    return x


class InflatedDataset(Dataset):
    """The real training set followed by generated images, without copying either.

    Index i < len(real) is real sample i; index len(real) + j is generated image j with label -1 (AdaInf's
    convention: no class). Indexing with a list / tensor of indices returns a whole batch (one gather per
    source) when ``real`` is in memory.
    """

    def __init__(self, real: Dataset, generated: torch.Tensor):
        self.real, self.generated = real, generated
        self.num_real = len(real)
        self.batched = isinstance(real, TensorDataset)

    def __len__(self) -> int:
        return self.num_real + self.generated.shape[0]

    def __getitem__(self, index):
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            i = int(index)
            if i < self.num_real:
                return self.real[i]
            return self.generated[i - self.num_real], -1
        idx = torch.as_tensor(index, dtype=torch.long)
        gen = idx >= self.num_real
        x = torch.empty((idx.shape[0],) + tuple(self.generated.shape[1:]), dtype=torch.uint8)
        y = torch.full((idx.shape[0],), -1, dtype=torch.long)
        if (~gen).any():
            xr, yr = self.real[idx[~gen]]
            x[~gen], y[~gen] = xr, yr
        if gen.any():
            x[gen] = self.generated[idx[gen] - self.num_real]
        return x, y


class EpochSampler(Sampler):
    """Batches of dataset indices for one epoch, the same on every rank, each rank taking its share.

    The index map is ``[real 0..N-1] x real_weight`` followed by ``[generated 0..G-1]`` (never built: a
    position p maps to ``p mod N`` below ``N * real_weight``, else to generated ``p - N * real_weight``, i.e.
    dataset index ``N + p - N * real_weight``). Per epoch one random permutation of the map (from
    ``generator``, seeded per epoch identically on every rank) is cut into global batches of ``batch_size``
    (the last partial one dropped); rank r of ``world`` gets rows ``[r b, (r + 1) b)`` of each, b =
    batch_size / world. So every real sample is drawn ``real_weight`` times and every generated one once per
    epoch (AdaInf's r:1 weighting), and the ranks' batches together are the one-process batch of the same seed.
    Yields lists of indices.
    """

    def __init__(self, num_real: int, batch_size: int, generator: torch.Generator, *, num_generated: int = 0,
                 real_weight: int = 1, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the world size {world}")
        self.num_real, self.num_generated, self.real_weight = num_real, num_generated, real_weight
        self.batch_size, self.rank, self.world, self.generator = batch_size, rank, world, generator

    @property
    def map_size(self) -> int:
        return self.num_real * self.real_weight + self.num_generated

    def __len__(self) -> int:
        return self.map_size // self.batch_size

    def __iter__(self):
        perm = torch.randperm(self.map_size, generator=self.generator)
        b, real_span = self.batch_size // self.world, self.num_real * self.real_weight
        for k in range(len(self)):
            pos = perm[k * self.batch_size + self.rank * b: k * self.batch_size + (self.rank + 1) * b]
            yield torch.where(pos < real_span, pos % self.num_real, pos - real_span + self.num_real).tolist()


def train_loader(ds: Dataset, sampler: EpochSampler, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The batches of ``sampler``. In-memory data (a TensorDataset, or an InflatedDataset over one) is fetched
    a whole batch at a time (one tensor index per batch instead of per-sample indexing + collation)."""
    if isinstance(ds, TensorDataset) or getattr(ds, "batched", False):
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)


def eval_loader(ds: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Every sample once, in order."""
    if isinstance(ds, TensorDataset):
        sampler = BatchSampler(SequentialSampler(ds), batch_size, drop_last=False)
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
