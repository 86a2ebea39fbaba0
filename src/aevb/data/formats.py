"""Parsers for the file formats datasets ship in: IDX, pickled numpy arrays, npz, CIFAR tarballs.

Each validates what it reads and raises DataError with the file's name on anything malformed.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    try:
        raw = Path(path).read_bytes()
        return gzip.decompress(raw) if str(path).endswith(".gz") else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}; delete it so that it is fetched again") from None


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """An array from IDX bytes (LeCun's MNIST format): magic 0x0000TTNN, N big-endian uint32 sizes, data."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DataError(f"{name} is not an IDX file (bad magic number); replace it with the original file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated inside its IDX header; replace it with the original file")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its IDX header {shape} needs {expected}; "
            "the file is truncated or corrupt: replace it with the original file"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, tuples and dicts only: no other global can be loaded,
    so a malicious pickle cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_array_pickle(data: bytes, name: str):
    """A pickle (Python 2 or 3) holding only numpy arrays in plain containers."""
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # any malformed pickle raises something different
        raise DataError(f"{name} is not a valid array pickle ({type(e).__name__}: {e}); replace it with the original file") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects allowed)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"npz file {path} does not exist; check the path after 'npz:'") from None
    except Exception as e:  # zipfile, format and pickle errors all mean the same to a user
        raise DataError(f"{path} is not a readable .npz of numeric arrays ({type(e).__name__}: {e}); "
                        "save it with numpy.savez") from None


def safe_members(tar: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """The archive's regular files and folders, refusing any member that would land outside the
    target folder (absolute paths, '..', links, devices)."""
    members = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DataError(f"{name} has an unsafe member {m.name!r} (absolute path, '..' or link); "
                            "refusing to extract it: delete the archive and download the original")
        members.append(m)
    return members


def read_cifar10_tar(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 'python version' tarball -> (train_x, train_y, test_x, test_y), x uint8 (N, 3, 32, 32)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            batches = {}
            for m in safe_members(tar, str(path)):
                base = Path(m.name).name
                if m.isfile() and (base.startswith("data_batch_") or base == "test_batch"):
                    batches[base] = load_array_pickle(tar.extractfile(m).read(), f"{path}:{m.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable tarball ({e}); delete it and download it again") from None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if n not in batches]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")

    def arrays(batch, name):
        if not isinstance(batch, dict):
            raise DataError(f"{path}:{name} is not a CIFAR-10 batch (a dict)")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        x, y = np.asarray(batch.get("data")), np.asarray(batch.get("labels"))
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise DataError(f"{path}:{name} holds data of shape {x.shape} ({x.dtype}); expected (N, 3072) uint8")
        return x.reshape(-1, 3, 32, 32), y.astype(np.int64)

    train = [arrays(batches[n], n) for n in names[:5]]
    test_x, test_y = arrays(batches["test_batch"], "test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test_x, test_y
