"""Tiny data files in the real on-disk formats, written by tests (no download, no real data).

Each ``write_*`` function fills a directory with a few dozen random images in the exact layout of
the real data set and returns a :class:`WrittenData` holding what it wrote, in the layout that
``ablate.data.load_dataset`` returns (x uint8 (N, C, H, W), y int64), so a test can compare exactly.
Pass ``written.root`` as ``DataConfig.root``.

The file names and formats are written out here from the data sets' documentation, not imported
from ``ablate.data``, so that these files check the loader rather than echo it::

    written = write_cifar10(tmp_path, n_train_per_batch=10, n_test=10)
    splits = load_dataset(DataConfig(name="cifar10", root=str(written.root), val_size=0, download=False))
    assert torch.equal(splits.train_x, torch.from_numpy(written.train_x))
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
FASHION_MNIST_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


@dataclass(frozen=True)
class WrittenData:
    """What a writer put on disk: images (N, C, H, W) uint8 and labels (N,) int64, train and test."""

    root: Path  # the directory to pass as DataConfig.root
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def random_images(rng: np.random.Generator, n: int, shape: tuple[int, ...], num_classes: int):
    """``n`` images of ``shape``, uniform uint8 (all distinct in practice), and labels in 0..num_classes-1."""
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, num_classes, size=n)


def write_cifar_batch(path: Path, images: np.ndarray, labels, label_key: bytes = b"labels", **extra) -> None:
    """One CIFAR python batch: a pickled dict with b"data" = images as (N, 3072) uint8 (channel-major),
    ``label_key`` = labels as a list of ints, and b"batch_label" / b"filenames" like the real files.
    ``extra`` entries (bytes keys given as str) replace or add entries, e.g. ``data=...`` for a bad file."""
    batch = {
        b"batch_label": path.name.encode(),
        label_key: [int(label) for label in labels],
        b"data": np.ascontiguousarray(images).reshape(len(images), -1),
        b"filenames": [f"{i:05d}.png".encode() for i in range(len(images))],
    }
    batch.update({key.encode(): value for key, value in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(directory, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0, *, archive: bool = False):
    """A miniature CIFAR-10: ``DIR/cifar-10-batches-py/data_batch_1..5`` (``n_train_per_batch`` images
    each, 5x in all) and ``test_batch``; with ``archive``, only ``DIR/cifar-10-python.tar.gz`` holding
    that folder. Random images (3, 32, 32), labels 0..9. Returns the :class:`WrittenData`."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    batches = [random_images(rng, n_train_per_batch, (3, 32, 32), 10) for _ in range(5)]
    test_x, test_y = random_images(rng, n_test, (3, 32, 32), 10)
    folder = directory / CIFAR10_FOLDER
    for i, (x, y) in enumerate(batches, start=1):
        write_cifar_batch(folder / f"data_batch_{i}", x, y)
    write_cifar_batch(folder / "test_batch", test_x, test_y)
    if archive:
        _archive(folder, directory / "cifar-10-python.tar.gz")
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    return WrittenData(directory, train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64))


def write_cifar100(directory, n_train: int = 100, n_test: int = 20, seed: int = 0, *, archive: bool = False):
    """A miniature CIFAR-100: ``DIR/cifar-100-python/train`` and ``test`` with b"fine_labels" (0..99)
    and b"coarse_labels" (0..19); with ``archive``, only ``DIR/cifar-100-python.tar.gz``.
    Returns the :class:`WrittenData` (fine labels)."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = random_images(rng, n, (3, 32, 32), 100)
        coarse = [int(label) // 5 for label in y]
        write_cifar_batch(directory / CIFAR100_FOLDER / split, x, y, b"fine_labels", coarse_labels=coarse)
        written[split] = (x, y.astype(np.int64))
    if archive:
        _archive(directory / CIFAR100_FOLDER, directory / "cifar-100-python.tar.gz")
    return WrittenData(directory, *written["train"], *written["test"])


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """One IDX file: magic (0, 0, type code, rank), big-endian uint32 dims, big-endian values;
    gzipped when ``compress``."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def write_idx_dataset(
    directory, n_train: int = 60, n_test: int = 20, seed: int = 0, *, compress: bool = True, image_size: int = 28
):
    """A miniature Fashion-MNIST: the four IDX files (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
    without ``.gz`` unless ``compress``) directly in ``DIR``. Images (N, 28, 28) uint8 on disk,
    returned as (N, 1, 28, 28); labels 0..9. Returns the :class:`WrittenData`."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    train_x, train_y = random_images(rng, n_train, (image_size, image_size), 10)
    test_x, test_y = random_images(rng, n_test, (image_size, image_size), 10)
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    for key, name in FASHION_MNIST_NAMES.items():
        array = arrays[key] if key.endswith("x") else arrays[key].astype(np.uint8)
        write_idx(directory / (name + ".gz" if compress else name), array, compress=compress)
    return WrittenData(directory, train_x[:, None], train_y.astype(np.int64), test_x[:, None], test_y.astype(np.int64))


def _archive(folder: Path, archive: Path) -> None:
    """Pack ``folder`` into a .tar.gz (the folder at the archive's top level) and remove the folder."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
