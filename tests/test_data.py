"""ablate.data: loaders on tiny files in the real formats, splits, errors, on-device augmentation."""

from __future__ import annotations

import gzip
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import (
    FASHION_MNIST_NAMES,
    random_images,
    write_cifar10,
    write_cifar100,
    write_cifar_batch,
    write_idx,
    write_idx_dataset,
)

from ablate.config import ConfigError, DataConfig, ModelSpec, TrainConfig, TrainerConfig, with_overrides
from ablate.data import CIFAR10, DATA_SOURCES, DatasetError, DataSource, DeviceData, dataset_names, load_dataset
from ablate.data.sources import RawData
from ablate.data.splits import READERS

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def config(root, name="cifar10", **fields) -> DataConfig:
    return DataConfig(name=name, root=str(root), download=False, **fields)


def rows(x: torch.Tensor) -> set[bytes]:
    """Each image's bytes: images compared as a set."""
    return {image.numpy().tobytes() for image in x}


# -- loaders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["parent", "folder", "archive"])
def test_cifar10_round_trips_exactly(tmp_path, layout):
    written = write_cifar10(tmp_path, n_train_per_batch=8, n_test=12, seed=1, archive=layout == "archive")
    root = tmp_path / "cifar-10-batches-py" if layout == "folder" else tmp_path
    splits = load_dataset(config(root, val_size=0))
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64
    assert splits.train_x.shape == (40, 3, 32, 32) and splits.test_x.shape == (12, 3, 32, 32)
    assert torch.equal(splits.train_x, torch.from_numpy(written.train_x))
    assert torch.equal(splits.train_y, torch.from_numpy(written.train_y))
    assert torch.equal(splits.test_x, torch.from_numpy(written.test_x))
    assert torch.equal(splits.test_y, torch.from_numpy(written.test_y))
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    assert splits.val_x.shape == (0, 3, 32, 32)


def test_cifar10_channel_major_layout(tmp_path):
    """Row 0 of b"data" is 1024 red values, then green, then blue, each 32 x 32 row-major."""
    flat = np.zeros((1, 3072), np.uint8)
    flat[0, 1024 + 32 * 5 + 7] = 200  # green, row 5, column 7
    folder = tmp_path / "cifar-10-batches-py"
    for name in CIFAR10.files:
        write_cifar_batch(folder / name, flat, [3])
    splits = load_dataset(config(tmp_path, val_size=0))
    assert splits.train_x[0, 1, 5, 7] == 200 and splits.train_x.sum() == 200 * 5


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_train=30, n_test=10, seed=2, archive=True)
    splits = load_dataset(config(tmp_path, "cifar100", val_size=0))
    assert splits.num_classes == 100
    assert torch.equal(splits.train_x, torch.from_numpy(written.train_x))
    assert torch.equal(splits.train_y, torch.from_numpy(written.train_y))
    assert torch.equal(splits.test_y, torch.from_numpy(written.test_y))


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trips_exactly(tmp_path, compress):
    written = write_idx_dataset(tmp_path, n_train=25, n_test=7, seed=3, compress=compress)
    splits = load_dataset(config(tmp_path, "fashion-mnist", val_size=5))
    assert splits.train_x.shape == (20, 1, 28, 28) and splits.test_x.shape == (7, 1, 28, 28)
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (1, 28, 10)
    assert torch.equal(splits.test_x, torch.from_numpy(written.test_x))
    assert torch.equal(splits.test_y, torch.from_numpy(written.test_y))
    merged = torch.cat([splits.train_x, splits.val_x])
    assert rows(merged) == rows(torch.from_numpy(written.train_x))


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    splits = load_dataset(DataConfig(name="fashion-mnist", download=False))
    assert splits.train_x.shape == (55000, 1, 28, 28) and splits.val_x.shape == (5000, 1, 28, 28)
    assert splits.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(splits.test_y), torch.full((10,), 1000))  # balanced test set
    assert 0.2 < splits.mean.item() < 0.4 and 0.25 < splits.std.item() < 0.45
    facts = DATA_SOURCES["fashion-mnist"]  # the declaration plan and MLflow params use matches the files
    assert (len(splits.train_y) + len(splits.val_y), len(splits.test_y)) == (facts.train_images, facts.test_images)
    assert (tuple(splits.train_x.shape[1:]), splits.num_classes) == (facts.shape, facts.num_classes)


# -- the catalog: one declaration per data set ------------------------------------------------------


def test_every_declared_data_set_has_a_reader_and_every_reader_a_declaration():
    assert tuple(READERS) == dataset_names()
    with pytest.raises(ConfigError, match="unknown data set 'mnist'; allowed: 'cifar10', 'cifar100', 'fashion-mnist'"):
        with_overrides(TrainConfig(), {"data.name": "mnist"})


def test_files_unlike_the_declaration_are_refused(tmp_path):
    write_idx_dataset(tmp_path, image_size=32)  # MNIST-like files, but 32x32
    with pytest.raises(DatasetError, match=r"Fashion-MNIST: the training images are 1x32x32 .* expected 1x28x28"):
        load_dataset(config(tmp_path, "fashion-mnist", val_size=0))


def test_adding_a_data_set_is_one_declaration_and_its_reader(monkeypatch):
    """With a DataSource and a reader, the config takes the name, plan counts its epochs, the trainer trains on it."""
    from ablate.study import train_iterations
    from ablate.trainer import train

    def read_tiny(cfg: DataConfig) -> RawData:
        x, y = random_images(np.random.default_rng(cfg.split_seed), 112, (2, 8, 8), 3)
        return RawData(x[:96], y[:96], x[96:], y[96:], num_classes=3)

    monkeypatch.setitem(DATA_SOURCES, "tiny", DataSource("tiny", "Tiny", num_classes=3, shape=(2, 8, 8),
                                                         train_images=96, test_images=16))
    monkeypatch.setitem(READERS, "tiny", read_tiny)
    cfg = TrainConfig(model=ModelSpec(n=1, base_width=4), data=DataConfig(name="tiny", val_size=16),
                      trainer=TrainerConfig(epochs=1, batch_size=16, device="cpu"))
    assert train_iterations(cfg) == 80 // 16
    seen = []
    train(cfg, seen.append)
    assert [m["iteration"] for m in seen] == [5]


def test_synthetic_is_deterministic_and_learnable():
    cfg = DataConfig(name="synthetic", synthetic_shape=(2, 12, 10), synthetic_classes=4, synthetic_train=300,
                     synthetic_test=100, val_size=50, split_seed=5)  # fmt: skip
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train_x.shape == (250, 2, 12, 10) and a.test_x.shape == (100, 2, 12, 10)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    other = load_dataset(cfg.model_copy(update={"split_seed": 6}))
    assert not torch.equal(a.test_x, other.test_x)
    # nearest class centroid of the training split classifies the test split: class-conditional
    centroids = torch.stack([a.train_x[a.train_y == k].float().mean(0) for k in range(4)])
    distances = torch.cdist(a.test_x.float().flatten(1), centroids.flatten(1))
    assert (distances.argmin(1) == a.test_y).float().mean() > 0.9


# -- splits ---------------------------------------------------------------------------------------


def test_split_sizes_disjoint_and_seeded(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=20, n_test=30)
    cfg = config(tmp_path, val_size=25, train_size=50, test_size=10, split_seed=7)
    splits = load_dataset(cfg)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (50, 25, 10)
    assert len(splits.train_y) == 50 and len(splits.val_y) == 25 and len(splits.test_y) == 10
    train, val, source = rows(splits.train_x), rows(splits.val_x), rows(torch.from_numpy(written.train_x))
    assert len(train) == 50 and len(val) == 25 and not train & val
    assert train | val <= source and not rows(splits.test_x) & source  # the test set is kept apart
    again = load_dataset(cfg)
    assert torch.equal(again.train_x, splits.train_x) and torch.equal(again.val_y, splits.val_y)
    reseeded = load_dataset(cfg.model_copy(update={"split_seed": 8}))
    assert rows(reseeded.val_x) != val


def test_validation_split_independent_of_train_size(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=20, n_test=5)
    full = load_dataset(config(tmp_path, val_size=30))
    subsampled = load_dataset(config(tmp_path, val_size=30, train_size=20))
    assert torch.equal(full.val_x, subsampled.val_x)
    assert rows(subsampled.train_x) <= rows(full.train_x)
    assert rows(subsampled.train_x) != rows(full.train_x[:20])  # a seeded random subsample, not a prefix


def test_mean_and_std_come_from_the_training_split(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=20, n_test=5)
    splits = load_dataset(config(tmp_path, val_size=40))
    pixels = splits.train_x.double().div(255).transpose(0, 1).flatten(1)
    torch.testing.assert_close(splits.mean, pixels.mean(1).float())
    torch.testing.assert_close(splits.std, pixels.std(1, correction=0).float())
    assert splits.mean.dtype == torch.float32 and splits.mean.shape == (3,)


@pytest.mark.parametrize("fields, needle", [({"val_size": 100}, "val_size"), ({"train_size": 99}, "train_size"),
                                            ({"test_size": 99}, "test_size")])  # fmt: skip
def test_split_larger_than_data_is_an_error(tmp_path, fields, needle):
    write_cifar10(tmp_path, n_train_per_batch=20, n_test=5)
    with pytest.raises(DatasetError, match=needle):
        load_dataset(config(tmp_path, **{"val_size": 10, **fields}))


# -- errors ---------------------------------------------------------------------------------------


def test_missing_cifar_names_where_it_looked_and_the_url(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(config(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert str(tmp_path / "nowhere" / "cifar-10-python.tar.gz") in message
    assert CIFAR10.url in message and "data.download" in message


def test_incomplete_cifar_folder_names_the_missing_file(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_dataset(config(tmp_path))


def test_missing_fashion_mnist_names_the_apt_package(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(config(tmp_path, "fashion-mnist"))
    message = str(err.value)
    assert str(tmp_path) in message and str(tmp_path / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_download_without_torchvision_says_how_to_place_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="cifar10", download=True))
    message = str(err.value)
    assert "torchvision" in message and CIFAR10.url in message and str(tmp_path / "cache") in message


def test_download_goes_to_the_cache_with_the_canonical_checksum(tmp_path, monkeypatch):
    calls = []

    def download_and_extract_archive(url, download_root, md5=None, **_):
        calls.append((url, md5))
        write_cifar10(download_root, n_train_per_batch=3, n_test=4)

    utils = types.SimpleNamespace(download_and_extract_archive=download_and_extract_archive)
    fake = types.ModuleType("torchvision.datasets")
    fake.utils = utils
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    splits = load_dataset(DataConfig(name="cifar10", val_size=0))
    assert calls == [(CIFAR10.url, CIFAR10.md5)] and len(splits.train_x) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # staging folder removed
    load_dataset(DataConfig(name="cifar10", val_size=0))
    assert len(calls) == 1  # found in the cache the second time


def test_truncated_gzip(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_dataset(config(tmp_path, "fashion-mnist", val_size=0))


def test_truncated_archive(tmp_path):
    write_cifar100(tmp_path, n_train=5, n_test=5, archive=True)
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DatasetError, match=r"cifar-100-python\.tar\.gz: not a readable"):
        load_dataset(config(tmp_path, "cifar100", val_size=0))


def test_labels_out_of_range(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=2, n_test=2)
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 3, 32, 32), np.uint8), [0, 10])
    with pytest.raises(DatasetError, match=r"test_batch: labels range from 0 to 10, expected 0\.\.9"):
        load_dataset(config(tmp_path))


def test_corrupted_idx_magic(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x12\x34" + gzip.decompress(path.read_bytes())[2:]))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: not an IDX file: magic number 1234"):
        load_dataset(config(tmp_path, "fashion-mnist", val_size=0))


def test_idx_size_mismatch_between_header_and_payload(tmp_path):
    write_idx_dataset(tmp_path, n_train=10)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-28]))  # one image row short
    with pytest.raises(DatasetError, match=r"header promises 10 x 28 x 28 .* but 7812 bytes follow"):
        load_dataset(config(tmp_path, "fashion-mnist", val_size=0))


def test_idx_label_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path, n_train=10)
    write_idx(tmp_path / (FASHION_MNIST_NAMES["train_y"] + ".gz"), np.zeros(9, np.uint8))
    with pytest.raises(DatasetError, match="10 images but .* 9 labels"):
        load_dataset(config(tmp_path, "fashion-mnist", val_size=0))


def test_bad_pickle(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=2, n_test=2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"data_batch_2: not a readable CIFAR batch"):
        load_dataset(config(tmp_path))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(DatasetError, match=r"test_batch: .*os\.system"):
        load_dataset(config(tmp_path))


def test_cifar_label_count_and_shape_mismatch(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=4, n_test=4)
    folder = tmp_path / "cifar-10-batches-py"
    x, y = random_images(np.random.default_rng(0), 4, (3, 32, 32), 10)
    write_cifar_batch(folder / "data_batch_4", x, y[:3])
    with pytest.raises(DatasetError, match=r"data_batch_4: 4 images but 3 labels"):
        load_dataset(config(tmp_path))
    write_cifar_batch(folder / "data_batch_4", x, y, data=np.zeros((4, 1000), np.uint8))
    with pytest.raises(DatasetError, match=r"data_batch_4: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset(config(tmp_path))


def test_unknown_data_set_name():
    with pytest.raises(DatasetError, match="unknown data set 'mnist'; known: cifar10, cifar100, fashion-mnist, synthetic"):
        load_dataset(DataConfig.model_construct(name="mnist"))


# -- on-device batches ----------------------------------------------------------------------------


def device_data(n=64, shape=(3, 8, 8), **kwargs) -> DeviceData:
    """Random distinct images whose label is their index, so a batch says which image it cut from."""
    x, _ = random_images(np.random.default_rng(0), n, shape, 1)
    kwargs = {"mean": [0.0] * shape[0], "std": [1.0] * shape[0], "device": "cpu", **kwargs}
    return DeviceData(torch.from_numpy(x), torch.arange(n), **kwargs)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation of a batch made with mean 0 and std 1."""
    return (x * 255).round().to(torch.uint8)


def test_crops_are_shifted_windows_of_the_padded_image():
    data = device_data(n=64, pad=4)
    original, _ = random_images(np.random.default_rng(0), 64, (3, 8, 8), 1)
    source = torch.nn.functional.pad(torch.from_numpy(original), (4, 4, 4, 4))  # zero-padded (N, 3, 16, 16)
    seen_offsets, seen_flips = set(), set()
    for x, y in data.train_batches(16, torch.Generator().manual_seed(1)):
        images = to_uint8(x)
        for image, label in zip(images, y.tolist()):
            matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                       if torch.equal(image, window(source[label], dy, dx, flip))]  # fmt: skip
            assert len(matches) == 1, f"image {label} is not one window of its padded source"
            seen_offsets.add(matches[0][:2])
            seen_flips.add(matches[0][2])
    assert seen_flips == {False, True} and len(seen_offsets) > 30  # rows and columns shift independently
    assert {dy for dy, _ in seen_offsets} == set(range(9)) and {dx for _, dx in seen_offsets} == set(range(9))


def window(padded: torch.Tensor, dy: int, dx: int, flip: bool, size: int = 8) -> torch.Tensor:
    crop = padded[:, dy : dy + size, dx : dx + size]
    return crop.flip(-1) if flip else crop


def test_padding_is_zero_and_eval_is_the_original_image():
    data = device_data(n=10, pad=4)
    assert data.x.shape == (10, 16, 16, 3)
    assert data.x[:, :4].eq(0).all() and data.x[:, :, -4:].eq(0).all()
    x, y = next(data.eval_batches(10))
    original, _ = random_images(np.random.default_rng(0), 10, (3, 8, 8), 1)
    assert torch.equal(to_uint8(x), torch.from_numpy(original)) and torch.equal(y, torch.arange(10))


def test_same_generator_state_same_batches():
    data = device_data()
    first = list(data.train_batches(16, torch.Generator().manual_seed(3)))
    second = list(data.train_batches(16, torch.Generator().manual_seed(3)))
    other = list(data.train_batches(16, torch.Generator().manual_seed(4)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert not torch.equal(first[0][0], other[0][0])


def test_the_epoch_draws_all_its_random_numbers_at_call_time():
    data = device_data()
    generator = torch.Generator().manual_seed(0)
    batches = data.train_batches(16, generator)
    state = generator.get_state()
    list(batches)
    assert torch.equal(generator.get_state(), state)


def test_channels_last_gives_the_same_values():
    plain, nhwc = device_data(), device_data(channels_last=True)
    for (a, _), (b, _) in zip(plain.train_batches(16, torch.Generator().manual_seed(2)),
                              nhwc.train_batches(16, torch.Generator().manual_seed(2))):  # fmt: skip
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b)
    x, _ = next(nhwc.eval_batches(8))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_without_augmentation_batches_are_the_shuffled_originals():
    data = device_data(n=40)
    originals = {i: x for x, y in data.eval_batches(40) for i, x in zip(y.tolist(), x)}
    labels = []
    for x, y in data.train_batches(10, torch.Generator().manual_seed(0), augment=False):
        labels += y.tolist()
        assert all(torch.equal(image, originals[i]) for image, i in zip(x, y.tolist()))
    assert sorted(labels) == list(range(40)) and labels != list(range(40))


def test_drop_last_and_eval_covers_everything_once():
    data = device_data(n=103)
    assert len(data) == 103 and data.batches_per_epoch(10) == 10
    batches = list(data.train_batches(10, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [10] * 10
    labels = torch.cat([y for _, y in batches])
    assert labels.unique().numel() == 100  # no image twice in an epoch
    evaluated = list(data.eval_batches(10))
    assert [len(y) for _, y in evaluated] == [10] * 10 + [3]
    assert torch.equal(torch.cat([y for _, y in evaluated]), torch.arange(103))
    with pytest.raises(ValueError, match="batch_size"):
        data.batches_per_epoch(104)


def test_normalised_batches_have_zero_mean_and_unit_std(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=40, n_test=5)
    splits = load_dataset(config(tmp_path, val_size=0))
    data = DeviceData(splits.train_x, splits.train_y, mean=splits.mean, std=splits.std, device="cpu")
    x = torch.cat([x for x, _ in data.eval_batches(64)])
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)


def test_per_pixel_mean_subtraction_gives_a_zero_mean_image(tmp_path):
    """data.normalize=pixel (paper sec. 4.2): every pixel of the training split averages to zero, unscaled."""
    write_cifar10(tmp_path, n_train_per_batch=40, n_test=5)
    splits = load_dataset(config(tmp_path, val_size=0, normalize="pixel"))
    assert splits.mean.shape == (3, 32, 32) and torch.equal(splits.std, torch.ones(3))
    expected = splits.train_x.double().mean(0) / 255
    torch.testing.assert_close(splits.mean.double(), expected, atol=1e-6, rtol=0)
    data = DeviceData(splits.train_x, splits.train_y, mean=splits.mean, std=splits.std, device="cpu")
    x = torch.cat([x for x, _ in data.eval_batches(64)])
    torch.testing.assert_close(x.mean(0), torch.zeros(3, 32, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(x + splits.mean, splits.train_x.float() / 255, atol=1e-5, rtol=0)  # no std division
    channel = load_dataset(config(tmp_path, val_size=0))
    assert channel.mean.shape == (3,) and not torch.equal(channel.std, torch.ones(3))


def test_invalid_inputs_are_rejected():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        DeviceData(x.float(), torch.arange(4), mean=[0] * 3, std=[1] * 3, device="cpu")
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceData(x, torch.arange(4), mean=[0], std=[1], device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_the_same_batches():
    cpu = device_data(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    cuda = device_data(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], device="cuda", channels_last=True)
    for (a, ya), (b, yb) in zip(cpu.train_batches(16, torch.Generator().manual_seed(5)),
                                cuda.train_batches(16, torch.Generator().manual_seed(5))):  # fmt: skip
        assert b.device.type == "cuda" and torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu())
