"""Data: real loaders on real formats (files generated here in the published formats)."""
import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from aevb.config import DataConfig
from aevb.data import DATASETS, load_dataset
from aevb.data.formats import parse_idx
from aevb.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x00000800 | ndim, big-endian sizes, data."""
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dataset(folder, n_train=20, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for name, a in arrays.items():
        data = idx_bytes(a)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def test_mnist_is_the_standard_split_in_unit_range():
    ds = load_dataset(DataConfig(dataset="mnist"))
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.min() == 0 and ds.train_x.max() == 1
    assert torch.equal(torch.bincount(ds.test_y), torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_in_the_data_dir_are_read_first(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "fashion-mnist", gz=gz)
    ds = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))
    assert ds.source == f"data directory {tmp_path / 'fashion-mnist'}"
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255)
    assert torch.equal(ds.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-7], "truncated or corrupt"),
    (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
    (lambda b: b[:10], "truncated inside its IDX header"),
])
def test_corrupt_idx_is_a_clear_error(corrupt, message):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    assert parse_idx(data).shape == (3, 28, 28)
    with pytest.raises(DataError, match=message):
        parse_idx(corrupt(data), "f")


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False))


def cifar_tarball(path, n_per_batch=4, seed=0, extra_member=None):
    """A tarball in the CIFAR-10 python format: pickled dicts with b'data' (N, 3072) uint8 and b'labels'."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n_per_batch).tolist()}
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra_member is not None:
            tar.addfile(extra_member)


def test_cifar10_tarball(tmp_path):
    (tmp_path / "cifar10").mkdir()
    cifar_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    ds = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64


def test_cifar10_tarball_with_an_escaping_member_is_refused(tmp_path):
    (tmp_path / "cifar10").mkdir()
    evil = tarfile.TarInfo("../../outside")
    cifar_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz", extra_member=evil)
    with pytest.raises(DataError, match="unsafe member"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False))


def test_npz_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x_train=rng.random((30, 5)), x_test=rng.random((10, 5)), y_train=np.arange(30) % 3)
    ds = load_dataset(DataConfig(dataset=f"npz:{tmp_path / 'mine.npz'}"))
    assert ds.x_shape == (5,) and ds.test_y is None and ds.n_classes == 3


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((3, 4))}, "lacks x_test"),
    ({"x_train": np.zeros((3, 4)), "x_test": np.zeros((3, 5))}, "differ in shape"),
    ({"x_train": np.zeros(3), "x_test": np.zeros(3)}, "must be a numeric array"),
    ({"x_train": np.array([[0.0, np.nan]]), "x_test": np.zeros((1, 2))}, "NaN or Inf"),
    ({"x_train": np.zeros((3, 4)), "x_test": np.zeros((2, 4)), "y_train": np.zeros(2, int)}, "one non-negative integer label"),
])
def test_bad_npz_is_a_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(dataset=f"npz:{tmp_path / 'bad.npz'}"))


def test_binarization():
    static = load_dataset(DataConfig(dataset="digits", binarize="static"))
    again = load_dataset(DataConfig(dataset="digits", binarize="static"))
    dynamic = load_dataset(DataConfig(dataset="digits", binarize="dynamic"))
    assert set(static.train_x.unique().tolist()) == {0.0, 1.0} and torch.equal(static.train_x, again.train_x)
    assert dynamic.train_x.unique().numel() > 2  # binarised afresh per batch by the trainer
    assert torch.equal(dynamic.test_x, static.test_x)  # the one fixed draw of the test set


def test_every_registered_dataset_says_where_it_is_or_how_to_get_it(tmp_path):
    for name in DATASETS.names():
        spec = DATASETS[name]
        assert spec.how_to_get
        found = spec.locate(tmp_path)
        assert found is None or isinstance(found[0], str)
