"""Readers for the two on-disk formats: CIFAR python batches and IDX files (gzipped or not).

Pure numpy. Every problem with a file becomes a :class:`DatasetError` that names the file and
says what is wrong with it, so a truncated download or a stray file is found at once.

- **CIFAR python batches** (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with
  ``b"data"``, an (N, 3072) uint8 array, channel-major (1024 red, 1024 green, 1024 blue values of a
  32 x 32 image, row-major), and a list of N labels under ``b"labels"`` (CIFAR-10) or
  ``b"fine_labels"`` (CIFAR-100).
- **IDX** (the MNIST format): two zero bytes, a type code (0x08 = uint8), the rank; then one
  big-endian uint32 per dimension; then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ablate.errors import UserError

__all__ = ["DatasetError", "read_cifar_batch", "read_idx"]

CIFAR_IMAGE_SHAPE = (3, 32, 32)  # channels, height, width of one CIFAR image
_GZIP_MAGIC = b"\x1f\x8b"
# IDX type code (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# The only globals a CIFAR batch needs: numpy array reconstruction (numpy 1 and 2 module names,
# pickle protocols 2 to 5) and the bytes codec of protocol 2.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class DatasetError(UserError):
    """Data could not be found or read: the message says where, what is wrong and how to get it."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a data file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed when it starts with the gzip magic number."""
    raw = Path(path).read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; truncation an EOFError
        raise DatasetError(
            f"{path}: the gzip data is truncated or corrupted ({err}); delete the file and get a fresh copy"
        ) from None


def read_idx(path: Path, *, rank: int) -> np.ndarray:
    """The array an IDX file holds, checked against its header: magic number, rank, payload size.

    ``rank`` is what the caller expects: 3 for images (N, H, W), 1 for labels (N,).
    """
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path}: not an IDX file: magic number {data[:4].hex() or '(empty file)'}, expected "
            f"two zero bytes, a type code ({', '.join(f'{c:#04x}' for c in _IDX_DTYPES)}) and the rank"
        )
    if data[3] != rank:
        raise DatasetError(f"{path}: IDX rank {data[3]}, expected {rank} ({'images' if rank == 3 else 'labels'})")
    header = 4 + 4 * rank
    if len(data) < header:
        raise DatasetError(f"{path}: the IDX header is cut short ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{rank}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: the header promises {' x '.join(map(str, dims))} values of {dtype.name} ({expected} bytes) "
            f"but {len(data) - header} bytes follow it; the file is truncated or corrupted"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR python batch."""
    with Path(path).open("rb") as file:
        try:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
        except Exception as err:  # unpickling arbitrary bytes can fail with almost any exception type
            raise DatasetError(
                f"{path}: not a readable CIFAR batch (a python pickle): {type(err).__name__}: {err}; "
                "the file is truncated or corrupted, delete it and get a fresh copy"
            ) from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path}: expected a dict with keys b'data' and {label_key!r}, found {found}")
    images = batch[b"data"]
    size = math.prod(CIFAR_IMAGE_SHAPE)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (size,):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetError(f"{path}: b'data' must be a uint8 array of shape (N, {size}), got {got}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: {label_key!r} is not a list of integer labels ({err})") from None
    if labels.shape != (len(images),):
        raise DatasetError(f"{path}: {len(images)} images but {labels.size} labels under {label_key!r}")
    return images.reshape(-1, *CIFAR_IMAGE_SHAPE), labels
