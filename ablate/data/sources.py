"""Where each data set's files live, how they are fetched, and the arrays they hold.

Search order:

- **CIFAR-10 / CIFAR-100**: ``data.root`` if set, else the cache (``$ABLATE_DATA_DIR``, else
  ``~/.cache/ablate``). In that directory: the extracted folder under it
  (``cifar-10-batches-py/`` or ``cifar-100-python/``), the directory itself when it is that folder,
  or the ``.tar.gz`` archive (extracted next to it once). Missing and ``data.download``: the canonical
  archive is downloaded there with its MD5 checked (torchvision's downloader, imported lazily).
- **Fashion-MNIST**: the four IDX files (``.gz`` or not) in ``data.root`` (or its ``fashion-mnist/`` or
  torchvision's ``FashionMNIST/raw/``) if set; else the Debian package's directory
  (``apt-get install dataset-fashion-mnist``), else the cache's ``fashion-mnist/``; missing and
  ``data.download``: downloaded into the cache (or ``data.root``) with MD5 checks. Files found in
  place are not checksummed (the Debian package recompresses them), but parsed strictly.
- **synthetic**: generated from ``data.split_seed``; nothing on disk.

Extraction and download write into a temporary folder beside the target and move the result into
place with one rename, so parallel trials sharing a cache never see half-written files.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.config import DataConfig
from ablate.data.catalog import DATA_SOURCES, DataSource
from ablate.data.formats import DatasetError, read_cifar_batch, read_idx

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "FASHION_MNIST_APT_PACKAGE",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SYSTEM_DIR",
    "FASHION_MNIST_URL",
    "CifarSource",
    "RawData",
    "cache_dir",
    "load_cifar",
    "load_fashion_mnist",
    "make_synthetic",
]


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR archive comes from and what its extracted folder holds."""

    url: str  # canonical archive
    md5: str  # of the archive
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]  # pickled training batches, in order
    test_file: str  # pickled test batch
    label_key: bytes  # key of the labels in each batch
    facts: DataSource  # classes, image shape, sizes (ablate.data.catalog)

    @property
    def title(self) -> str:
        return self.facts.title

    @property
    def num_classes(self) -> int:
        return self.facts.num_classes

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


# Canonical archives (https://www.cs.toronto.edu/~kriz/cifar.html) and their MD5 sums.
CIFAR10 = CifarSource(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key=b"labels",
    facts=DATA_SOURCES["cifar10"],
)
CIFAR100 = CifarSource(
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    label_key=b"fine_labels",
    facts=DATA_SOURCES["cifar100"],
)

# Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist): file -> MD5 of the original .gz.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES = DATA_SOURCES["fashion-mnist"].num_classes

# synthetic: templates are drawn on a coarse grid so that a 4-pixel crop shift keeps most of them
SYNTHETIC_GRID = 4  # template cells per side
SYNTHETIC_RANGE = (32.0, 224.0)  # template values, uint8 scale
SYNTHETIC_NOISE = 32.0  # standard deviation of the per-pixel Gaussian noise, uint8 scale


@dataclass(frozen=True)
class RawData:
    """A data set as stored: images (N, C, H, W) uint8 and labels (N,) int64, train and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int


def cache_dir() -> Path:
    """Where downloads go when ``data.root`` is not set: ``$ABLATE_DATA_DIR``, else ``~/.cache/ablate``."""
    return Path(os.environ.get("ABLATE_DATA_DIR") or Path.home() / ".cache" / "ablate").expanduser()


# -- CIFAR ----------------------------------------------------------------------------------------


def load_cifar(cfg: DataConfig, source: CifarSource) -> RawData:
    """Read the five (CIFAR-10) or one (CIFAR-100) training batches and the test batch."""
    folder = _find_cifar(cfg, source)

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_cifar_batch(folder / name, source.label_key)
        _check_labels(folder / name, labels, source.num_classes)
        return images, labels

    train = [read(name) for name in source.train_files]
    test_x, test_y = read(source.test_file)
    train_x, train_y = (np.concatenate(arrays) for arrays in zip(*train))
    return RawData(train_x, train_y, test_x, test_y, source.num_classes)


def _find_cifar(cfg: DataConfig, source: CifarSource) -> Path:
    """The extracted folder: found, extracted from the archive, or downloaded (in that order)."""
    base = Path(cfg.root).expanduser() if cfg.root else cache_dir()
    looked = []
    for folder in (base / source.folder, base):
        missing = [name for name in source.files if not (folder / name).is_file()]
        if not missing:
            return folder
        looked.append(f"{folder}/: " + ("missing " + ", ".join(missing) if folder.is_dir() else "no such directory"))
    archive = base / source.archive
    if archive.is_file():
        return _complete(source, _extract(source, archive, base))
    looked.append(f"{archive}: no such file")
    get = f"download {source.url} (md5 {source.md5}) and put it, or the {source.folder}/ folder it holds, in {base}/"
    if not cfg.root:
        get += " (the cache: $ABLATE_DATA_DIR, else ~/.cache/ablate), or set data.root to a directory holding them"
    if not cfg.download:
        raise DatasetError(
            f"{source.title} not found; looked for {source.folder}/ ({', '.join(source.files)}) or "
            f"{source.archive}:\n  " + "\n  ".join(looked) + f"\nTo fix: {get}, or set data.download=true."
        )
    return _complete(source, _download_cifar(source, base, manual=get))


def _complete(source: CifarSource, folder: Path) -> Path:
    """The folder, after checking that extraction left every batch file there."""
    missing = [name for name in source.files if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{folder}/ is incomplete (missing {', '.join(missing)}) and was not replaced by the archive's copy; "
            "remove the folder and load again"
        )
    return folder


def _extract(source: CifarSource, archive: Path, base: Path) -> Path:
    with _staging(base) as staging:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # the "data" filter refuses absolute paths, links out of the folder and devices (3.11.4+)
                tar.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DatasetError(
                f"{archive}: not a readable {source.archive} ({type(err).__name__}: {err}); delete it and "
                f"download it again from {source.url} (md5 {source.md5})"
            ) from None
        return _publish(staging / source.folder, base / source.folder, origin=archive)


def _download_cifar(source: CifarSource, base: Path, *, manual: str) -> Path:
    utils = _torchvision_download_utils(source.title, manual)
    with _staging(base) as staging:
        try:
            utils.download_and_extract_archive(source.url, download_root=str(staging), md5=source.md5)
        except Exception as err:  # network errors, checksum mismatch (RuntimeError), bad archive
            raise DatasetError(f"downloading {source.url} failed: {err}\nTo get it by hand: {manual}.") from err
        return _publish(staging / source.folder, base / source.folder, origin=source.url)


# -- Fashion-MNIST --------------------------------------------------------------------------------


def load_fashion_mnist(cfg: DataConfig) -> RawData:
    """The four IDX files: images (N, 28, 28) become (N, 1, 28, 28) uint8."""
    folder = _find_fashion_mnist(cfg)
    train_x, train_y = _read_idx_pair(folder, "train")
    test_x, test_y = _read_idx_pair(folder, "t10k")
    return RawData(train_x, train_y, test_x, test_y, FASHION_MNIST_CLASSES)


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = read_idx(images_path, rank=3), read_idx(labels_path, rank=1)
    for path, array in ((images_path, images), (labels_path, labels)):
        if array.dtype != np.uint8:
            raise DatasetError(f"{path}: expected uint8 values (IDX type 0x08), found {array.dtype}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    _check_labels(labels_path, labels, FASHION_MNIST_CLASSES)
    return images[:, None], labels.astype(np.int64)


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or the same file without ``.gz`` (as torchvision leaves it), or None."""
    for path in (folder / name, folder / name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _find_fashion_mnist(cfg: DataConfig) -> Path:
    if cfg.root:
        root = Path(cfg.root).expanduser()
        candidates, target = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"], root
    else:
        target = cache_dir() / "fashion-mnist"
        candidates = [FASHION_MNIST_SYSTEM_DIR, target]
    looked = []
    for folder in candidates:
        missing = [name for name in FASHION_MNIST_FILES if _idx_file(folder, name) is None]
        if not missing:
            return folder
        looked.append(f"{folder}/: " + ("missing " + ", ".join(missing) if folder.is_dir() else "no such directory"))
    get = (
        f"`sudo apt-get install {FASHION_MNIST_APT_PACKAGE}` (Debian/Ubuntu; puts them in "
        f"{FASHION_MNIST_SYSTEM_DIR}/), or download them from {FASHION_MNIST_URL} into {target}/"
    )
    if not cfg.download:
        raise DatasetError(
            f"Fashion-MNIST not found; looked for {', '.join(FASHION_MNIST_FILES)} (or the same without .gz):\n  "
            + "\n  ".join(looked)
            + f"\nTo fix: {get}, or set data.download=true."
        )
    return _download_fashion_mnist(target, manual=get)


def _download_fashion_mnist(target: Path, *, manual: str) -> Path:
    utils = _torchvision_download_utils("Fashion-MNIST", manual)
    with _staging(target) as staging:
        for name, md5 in FASHION_MNIST_FILES.items():
            if _idx_file(target, name) is not None:
                continue
            try:
                utils.download_url(FASHION_MNIST_URL + name, str(staging), filename=name, md5=md5)
            except Exception as err:  # network errors, checksum mismatch
                raise DatasetError(f"downloading {FASHION_MNIST_URL + name} failed: {err}\nTo fix: {manual}.") from err
            os.replace(staging / name, target / name)
    return target


# -- synthetic ------------------------------------------------------------------------------------


def make_synthetic(cfg: DataConfig) -> RawData:
    """Class-conditional random images, learnable by a small net; deterministic in ``split_seed``.

    Operation order: one template per class, drawn uniformly in ``SYNTHETIC_RANGE`` on a coarse
    ``SYNTHETIC_GRID`` x ``SYNTHETIC_GRID`` grid per channel, made left-right symmetric (so a flip
    keeps it) and upsampled to (H, W) by nearest neighbour (so a small crop shift keeps most of it);
    labels uniform over the classes; image = round(template[label] + Gaussian noise), clipped to
    0..255, uint8. The first ``synthetic_train`` images are the training set, the rest the test set.
    """
    channels, height, width = cfg.synthetic_shape
    rng = np.random.default_rng([cfg.split_seed, 1])  # a stream apart from the split's (seeded by split_seed alone)
    grid = rng.uniform(*SYNTHETIC_RANGE, size=(cfg.synthetic_classes, channels, SYNTHETIC_GRID, SYNTHETIC_GRID))
    grid = (grid + grid[..., ::-1]) / 2
    rows = np.arange(height) * SYNTHETIC_GRID // height
    cols = np.arange(width) * SYNTHETIC_GRID // width
    templates = grid[:, :, rows[:, None], cols[None, :]].astype(np.float32)  # (K, C, H, W)
    n = cfg.synthetic_train + cfg.synthetic_test
    labels = rng.integers(0, cfg.synthetic_classes, size=n)
    noise = rng.standard_normal((n, channels, height, width), dtype=np.float32) * SYNTHETIC_NOISE
    images = np.clip(np.rint(templates[labels] + noise), 0, 255).astype(np.uint8)
    split = cfg.synthetic_train
    return RawData(images[:split], labels[:split], images[split:], labels[split:], cfg.synthetic_classes)


# -- helpers --------------------------------------------------------------------------------------


def _check_labels(where: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{where}: labels range from {labels.min()} to {labels.max()}, expected 0..{num_classes - 1}"
        )


def _torchvision_download_utils(title: str, manual: str):
    """``torchvision.datasets.utils``, imported only when a download is needed."""
    try:
        from torchvision.datasets import utils
    except Exception as err:  # a torchvision built for another torch raises RuntimeError, not ImportError
        raise DatasetError(
            f"{title} is not on disk, and downloading it needs torchvision, which failed to import "
            f"({type(err).__name__}: {err}).\nPlace the files by hand: {manual}."
        ) from None
    return utils


@contextmanager
def _staging(base: Path) -> Iterator[Path]:
    """A temporary folder inside ``base`` (created if needed), removed on exit."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"cannot create {base} for the data set ({err}); set data.root or ABLATE_DATA_DIR to a writable directory"
        ) from None
    with tempfile.TemporaryDirectory(dir=base, prefix=".ablate-staging-") as staging:
        yield Path(staging)


def _publish(staged: Path, target: Path, *, origin: object) -> Path:
    """Move a staged folder into place with one rename; if another process got there first, keep theirs."""
    if not staged.is_dir():
        raise DatasetError(f"{origin}: the archive holds no {target.name}/ folder; is it the right file?")
    try:
        staged.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    return target
