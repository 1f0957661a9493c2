"""Data sets, splits, and on-device batches with augmentation.

- :func:`load_dataset` reads CIFAR-10, CIFAR-100 or Fashion-MNIST from disk (downloading them when
  allowed) or generates a synthetic set, and splits it into :class:`Splits` (CPU tensors).
- :class:`DeviceData` keeps one split on the device and serves shuffled, augmented, normalised
  batches cut out there with tensor ops.
- Every problem a user can fix (files missing, truncated, corrupted) is a :class:`DatasetError`.

Example::

    >>> import torch
    >>> from ablate.config import DataConfig
    >>> splits = load_dataset(DataConfig(name="synthetic", val_size=100))
    >>> train = DeviceData(splits.train_x, splits.train_y, mean=splits.mean, std=splits.std, device="cpu")
    >>> x, y = next(train.train_batches(128, torch.Generator().manual_seed(0)))
    >>> x.dtype, tuple(x.shape), train.batches_per_epoch(128)
    (torch.float32, (128, 3, 32, 32), 7)
"""

from ablate.data.device import DeviceData
from ablate.data.formats import DatasetError, read_cifar_batch, read_idx
from ablate.data.sources import CIFAR10, CIFAR100, FASHION_MNIST_FILES, FASHION_MNIST_URL, cache_dir
from ablate.data.splits import Splits, load_dataset

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_URL",
    "DatasetError",
    "DeviceData",
    "Splits",
    "cache_dir",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
]
