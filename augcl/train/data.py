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
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from augcl.train.errors import ConfigError

__all__ = ["DATA_KINDS", "DataBundle", "parse_data_spec", "load_data", "train_loader", "eval_loader"]

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
    from sklearn.model_selection import train_test_split

    idx = list(range(len(labels)))
    try:
        return train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=SPLIT_SEED)
    except ValueError as exc:  # e.g. a class with a single image
        raise ConfigError(f"{where}: cannot split into train/test ({exc})") from None


def digits() -> DataBundle:
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
    import torch.nn.functional as F

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
    import torchvision

    where = f"--data {kind}:{path}"
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no such directory {path!r} (expected a torchvision-format {kind} copy; "
                          "nothing is downloaded)")
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
    import torchvision
    from torch.utils.data import Subset
    from torchvision import transforms

    where = f"--data imagefolder:{path}"
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no such directory {path!r}")
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


def train_loader(ds: Dataset, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Shuffled batches (drop_last) in ``generator``'s order. In-memory data is fetched a whole batch at a
    time (one tensor index per batch instead of per-sample indexing + collation)."""
    if isinstance(ds, TensorDataset):
        sampler = BatchSampler(RandomSampler(ds, generator=generator), batch_size, drop_last=True)
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory)


def eval_loader(ds: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Every sample once, in order."""
    if isinstance(ds, TensorDataset):
        sampler = BatchSampler(SequentialSampler(ds), batch_size, drop_last=False)
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
