"""What the project knows of each data set without reading it: one declaration per data set.

Everything that needs a data set's facts before, or without, loading it asks here: the config schema
for the names ``data.name`` accepts, ``plan`` for run lengths in epochs, FLOPs and ASHA's ``max_t``,
the MLflow params (parameters and MACs for the data set's image shape and classes), the CLI's help.
:func:`ablate.data.load_dataset` checks what a reader returns against the declaration.

Adding a data set is one :class:`DataSource` in :data:`DATA_SOURCES` plus its reader (a function
``DataConfig -> RawData`` in :mod:`ablate.data.sources`, registered under the same name in
``ablate.data.splits.READERS``; a test fails while one lacks the other).

This module imports nothing of the project (the ground floor): the config schema reads it, and it must
not pull in torch. :func:`data_source` reads a :class:`~ablate.config.DataConfig` through the fields
:class:`DataFields` names.

    >>> DATA_SOURCES["fashion-mnist"].shape, DATA_SOURCES["fashion-mnist"].train_images
    ((1, 28, 28), 60000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DATA_SOURCES", "SYNTHETIC", "DataFields", "DataSource", "data_source", "dataset_names"]


class DataFields(Protocol):
    """What :func:`data_source` reads of a data config (:class:`ablate.config.DataConfig` has these fields)."""

    name: str
    synthetic_classes: int
    synthetic_shape: tuple[int, int, int]
    synthetic_train: int
    synthetic_test: int


@dataclass(frozen=True)
class DataSource:
    """The facts of one data set as published."""

    name: str  # the value of data.name
    title: str  # for messages, e.g. "CIFAR-10"
    num_classes: int
    shape: tuple[int, int, int]  # one image: (channels, height, width)
    train_images: int  # the training set, before the validation split
    test_images: int

    @property
    def in_channels(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> int:
        """Image height (= width for every named data set)."""
        return self.shape[1]


DATA_SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        # https://www.cs.toronto.edu/~kriz/cifar.html
        DataSource("cifar10", "CIFAR-10", num_classes=10, shape=(3, 32, 32), train_images=50_000, test_images=10_000),
        DataSource("cifar100", "CIFAR-100", num_classes=100, shape=(3, 32, 32), train_images=50_000, test_images=10_000),
        # https://github.com/zalandoresearch/fashion-mnist
        DataSource("fashion-mnist", "Fashion-MNIST", num_classes=10, shape=(1, 28, 28), train_images=60_000,
                   test_images=10_000),
    )
}
SYNTHETIC = "synthetic"  # generated; its facts are the config's synthetic_* fields (see data_source)


def dataset_names() -> tuple[str, ...]:
    """Every value ``data.name`` accepts: the declared data sets, then synthetic."""
    return (*DATA_SOURCES, SYNTHETIC)


def data_source(data: DataFields) -> DataSource:
    """The facts of ``data.name``; for synthetic data, those its ``synthetic_*`` fields ask for."""
    if data.name == SYNTHETIC:
        return DataSource(SYNTHETIC, "synthetic", num_classes=data.synthetic_classes, shape=data.synthetic_shape,
                          train_images=data.synthetic_train, test_images=data.synthetic_test)
    return DATA_SOURCES[data.name]
