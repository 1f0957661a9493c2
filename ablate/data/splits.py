"""Train / validation / test splits of a data set, and the normalisation statistics.

The paper chooses its schedule on a 45k/5k train/validation split of the CIFAR-10 training set
(He et al. 2015, sec. 4.2); ``data.val_size`` images are held out the same way, by a permutation
seeded with ``data.split_seed`` (independent of the trial seed, so replicates share the split). The
test set is kept apart and never seen by training or model selection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ablate.config import DataConfig
from ablate.data.catalog import SYNTHETIC, DataSource, data_source
from ablate.data.formats import DatasetError
from ablate.data.sources import CIFAR10, CIFAR100, RawData, load_cifar, load_fashion_mnist, make_synthetic

__all__ = ["READERS", "Splits", "channel_stats", "load_dataset", "normalisation", "pixel_mean", "split_indices"]

# data.name -> its reader; the facts of each are declared in ablate.data.catalog
READERS: dict[str, Callable[[DataConfig], RawData]] = {
    "cifar10": partial(load_cifar, source=CIFAR10),
    "cifar100": partial(load_cifar, source=CIFAR100),
    "fashion-mnist": load_fashion_mnist,
    SYNTHETIC: make_synthetic,
}


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare by
class Splits:
    """A data set split three ways, as CPU tensors: x uint8 (N, C, H, W), y int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor  # (0, C, H, W) when data.val_size = 0
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # float32, 0..1 scale, of the training split: (C,) per channel, or (C, H, W) per pixel
    std: torch.Tensor  # (C,) float32, 0..1 scale, of the training split (ones with data.normalize=pixel)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        """Image height (= width for every named data set)."""
        return self.train_x.shape[2]


def load_dataset(cfg: DataConfig) -> Splits:
    """Read (or generate) the data set ``cfg.name`` and split it.

    Operation order: read train and test sets -> hold out ``val_size`` training images (seeded
    permutation) -> subsample ``train_size`` / ``test_size`` (seeded) -> the normalisation statistics
    of the training split (:func:`normalisation`).

    >>> splits = load_dataset(DataConfig(name="synthetic", val_size=100))
    >>> splits.train_x.shape, splits.val_x.shape, splits.test_x.shape
    (torch.Size([900, 3, 32, 32]), torch.Size([100, 3, 32, 32]), torch.Size([200, 3, 32, 32]))
    """
    reader = READERS.get(cfg.name)
    if reader is None:
        raise DatasetError(f"unknown data set {cfg.name!r}; known: {', '.join(READERS)}")
    raw = reader(cfg)
    _check_facts(raw, data_source(cfg))
    train, val, test = split_indices(len(raw.train_y), len(raw.test_y), cfg)
    mean, std = normalisation(raw.train_x[train], cfg.normalize)

    def tensors(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x[index])), torch.from_numpy(y[index].astype(np.int64))

    return Splits(
        cfg.name,
        *tensors(raw.train_x, raw.train_y, train),
        *tensors(raw.train_x, raw.train_y, val),
        *tensors(raw.test_x, raw.test_y, test),
        num_classes=raw.num_classes,
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
    )


def _check_facts(raw: RawData, facts: DataSource) -> None:
    """What was read has the declared image shape and classes (files of another data set would not)."""
    for split, x in (("training", raw.train_x), ("test", raw.test_x)):
        if tuple(x.shape[1:]) != facts.shape:
            raise DatasetError(
                f"{facts.title}: the {split} images are {'x'.join(map(str, x.shape[1:]))} (channels x height x width), "
                f"expected {'x'.join(map(str, facts.shape))}; are the files those of {facts.title}?"
            )
    if raw.num_classes != facts.num_classes:
        raise DatasetError(f"{facts.title}: read {raw.num_classes} classes, expected {facts.num_classes}")


def split_indices(n_train: int, n_test: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted indices (train, validation, test), deterministic in ``cfg.split_seed``.

    One generator, drawn in this order: a permutation of the training set (its first ``val_size``
    entries are the validation set), then the ``train_size`` subsample, then the ``test_size`` one.
    """
    if cfg.val_size >= n_train:
        raise DatasetError(
            f"data.val_size={cfg.val_size} leaves no training images: {cfg.name} has {n_train}; "
            f"set data.val_size below {n_train}"
        )
    rng = np.random.default_rng(cfg.split_seed)
    order = rng.permutation(n_train)
    val, train = np.sort(order[: cfg.val_size]), np.sort(order[cfg.val_size :])
    train = _subsample(rng, train, cfg.train_size, f"data.train_size (after holding out data.val_size={cfg.val_size})")
    test = _subsample(rng, np.arange(n_test), cfg.test_size, "data.test_size")
    return train, val, test


def _subsample(rng: np.random.Generator, index: np.ndarray, size: int | None, what: str) -> np.ndarray:
    if size is None:
        return index
    if size > len(index):
        raise DatasetError(f"{what}: asked for {size} images but only {len(index)} are available")
    return np.sort(rng.choice(index, size=size, replace=False))


def normalisation(x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``mean`` and ``std`` that :class:`~ablate.data.DeviceData` normalises with, 0..1 scale.

    ``channel``: per-channel mean and std (:func:`channel_stats`), the common modern choice.
    ``pixel``: the paper's "per-pixel mean subtracted" (He et al. 2015, sec. 4.2): the mean image
    (C, H, W) of the training split, and a std of one, so inputs are ``x / 255 - mean image``.
    """
    if how == "channel":
        return channel_stats(x)
    if how == "pixel":
        return pixel_mean(x), np.ones(x.shape[1], np.float32)
    raise ValueError(f"data.normalize must be 'channel' or 'pixel', got {how!r}")


def pixel_mean(x: np.ndarray) -> np.ndarray:
    """The mean image (C, H, W) of uint8 images (N, C, H, W) on the 0..1 scale, summed in float64 chunks."""
    total = np.zeros(x.shape[1:], np.float64)
    for start in range(0, len(x), 4096):  # bounded memory: never a float copy of the whole split
        total += x[start : start + 4096].sum(axis=0, dtype=np.float64)
    return (total / (255.0 * max(len(x), 1))).astype(np.float32)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, C, H, W), 0..1 scale.

    Exact and light on memory: from a 256-bin histogram per channel, in float64.
    """
    levels = np.arange(256) / 255.0
    mean, std = [], []
    for channel in range(x.shape[1]):
        p = np.bincount(x[:, channel].ravel(), minlength=256) / x[:, channel].size
        m = p @ levels
        mean.append(m)
        std.append(np.sqrt(max(p @ levels**2 - m * m, 0.0)))
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)
