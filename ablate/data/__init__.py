"""Data sets, splits, and on-device batches with augmentation.

- :mod:`.catalog` declares each data set's facts once (:data:`DATA_SOURCES`: classes, image shape,
  sizes); everything that needs them without reading the files asks :func:`data_source`.
- :func:`load_dataset` reads CIFAR-10, CIFAR-100 or Fashion-MNIST from disk (downloading them when
  allowed) or generates a synthetic set, and splits it into :class:`Splits` (CPU tensors).
- :class:`DeviceData` keeps one split on the device and serves shuffled, augmented, normalised
  batches cut out there with tensor ops.
- Every problem a user can fix (files missing, truncated, corrupted) is a :class:`DatasetError`.

Importing the package loads only the catalog (the config schema reads it); the rest, which needs numpy
and torch, is imported on first use of its name.

Example::

    >>> import torch
    >>> from ablate.config import DataConfig
    >>> splits = load_dataset(DataConfig(name="synthetic", val_size=100))
    >>> train = DeviceData(splits.train_x, splits.train_y, mean=splits.mean, std=splits.std, device="cpu")
    >>> x, y = next(train.train_batches(128, torch.Generator().manual_seed(0)))
    >>> x.dtype, tuple(x.shape), train.batches_per_epoch(128)
    (torch.float32, (128, 3, 32, 32), 7)
"""

import importlib

from ablate.data.catalog import DATA_SOURCES, DataSource, data_source, dataset_names

_LAZY = {  # name -> the module that defines it, imported when the name is first used
    "DeviceData": "ablate.data.device",
    "DatasetError": "ablate.data.formats",
    "read_cifar_batch": "ablate.data.formats",
    "read_idx": "ablate.data.formats",
    "CIFAR10": "ablate.data.sources",
    "CIFAR100": "ablate.data.sources",
    "FASHION_MNIST_FILES": "ablate.data.sources",
    "FASHION_MNIST_URL": "ablate.data.sources",
    "cache_dir": "ablate.data.sources",
    "Splits": "ablate.data.splits",
    "load_dataset": "ablate.data.splits",
}

__all__ = ["DATA_SOURCES", "DataSource", "data_source", "dataset_names", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
