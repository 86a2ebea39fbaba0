"""Parsers for the file formats datasets ship in: IDX, pickled numpy arrays, npz, CIFAR tarballs, .amat text,
MATLAB .mat.

Each validates what it reads and raises DataError with the file's name on anything malformed.
"""
from __future__ import annotations

import gzip
import io
import lzma
import math
import pickle
import struct
import tarfile
import typing
import warnings
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
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: a forged header cannot overflow
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its IDX header {shape} needs {expected}; "
            "the file is truncated or corrupt: replace it with the original file"
        )
    try:
        return np.frombuffer(data, dtype, offset=header).reshape(shape)
    except ValueError:  # e.g. (0, 2**31, 2**31): no bytes, but more elements than numpy can index
        raise DataError(f"{name} has an impossible IDX shape {shape}; replace it with the original file") from None


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


def load_array_pickle(data: bytes | typing.BinaryIO, name: str):
    """A pickle (Python 2 or 3) holding only numpy arrays in plain containers, from bytes or a stream."""
    try:
        return _ArrayUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data, encoding="latin1").load()
    except Exception as e:  # any malformed pickle raises something different
        if not isinstance(data, bytes) and isinstance(e, (OSError, EOFError)):
            raise  # the stream itself failed (a corrupt gzip): the caller says what to do
        raise DataError(f"{name} is not a valid array pickle ({type(e).__name__}: {one_line(e)}); replace it with the original file") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects allowed)."""
    how = "save it as numpy.savez(path, x_train=..., x_test=..., [y_train=..., y_test=...])"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(f"{path} is a single .npy array, not an .npz of named arrays; {how}")
        if magic[:2] != b"PK":  # numpy would take anything else for a pickle
            raise DataError(f"{path} is not an .npz file (not a zip archive); {how}")
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"npz file {path} does not exist; check the path after 'npz:'") from None
    except Exception as e:  # zipfile, format and pickle errors all mean the same to a user
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds pickled Python objects, which are never loaded (they can run code); "
                            f"{how} with numeric arrays") from None
        raise DataError(f"{path} is not a readable .npz of numeric arrays ({type(e).__name__}: {one_line(e)}); {how}") from None
    odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if odd:  # a zip member that is not an .npy file comes back as raw bytes
        raise DataError(f"{path} has members that are not arrays ({', '.join(map(repr, odd[:3]))}); save it with numpy.savez")
    return arrays


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, shortened: for messages that quote a file's contents."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


MAX_MEMBER_BYTES = 256 * 2**20  # a CIFAR-10 batch is 31 MB; anything far larger is not one (or is a bomb)


def safe_members(tar: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """The archive's regular files and folders, refusing any member that would land outside the
    target folder (absolute paths, '..', links, devices) or that is implausibly large."""
    members = []
    for m in tar.getmembers():
        parts = Path(m.name.replace("\\", "/")).parts
        if (m.name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts
                or not (m.isfile() or m.isdir())):
            raise DataError(f"{name} has an unsafe member {m.name!r} (absolute path, '..', link or device); "
                            "refusing to extract it: delete the archive and download the original")
        if m.size > MAX_MEMBER_BYTES:
            raise DataError(f"{name} has a member {m.name!r} of {m.size} bytes, far larger than a dataset batch; "
                            "refusing to read it: delete the archive and download the original")
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
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{path} is not a readable tarball ({one_line(e)}); delete it and download it again") from None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if n not in batches]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")

    def arrays(batch, name):
        if not isinstance(batch, dict):
            raise DataError(f"{path}:{name} is not a CIFAR-10 batch (a dict)")
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        try:
            x, y = np.asarray(batch.get("data")), np.asarray(batch.get("labels"))
        except (ValueError, TypeError):  # ragged or odd contents
            raise DataError(f"{path}:{name} does not hold a data array and a label list; it is not a CIFAR-10 batch") from None
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(f"{path}:{name} holds data of shape {x.shape} ({x.dtype}); expected (N, 3072) uint8")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or (y < 0).any():
            raise DataError(f"{path}:{name} holds labels of shape {y.shape} ({y.dtype}); expected {len(x)} non-negative integers")
        return x.reshape(-1, 3, 32, 32), y.astype(np.int64)

    train = [arrays(batches[n], n) for n in names[:5]]
    test_x, test_y = arrays(batches["test_batch"], "test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test_x, test_y


def read_binary_amat(path: Path, columns: int) -> np.ndarray:
    """A text matrix of 0/1 values (Larochelle's .amat: one row per line, values separated by
    spaces; blank lines skipped) as a bool array (N, columns). Parsed as uint8 by numpy's C reader:
    the 50,000 × 784 binarised MNIST training file in 0.7–1.7 s on a 2-core EPYC, ~10× faster than
    as float64 (np.loadtxt's default) or line by line in Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file: refused below by its shape
            x = np.loadtxt(path, dtype=np.uint8, comments=None, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; put the original file there") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check its permissions or replace it") from None
    except ValueError:  # a ragged row, or a value that is no small non-negative integer
        x = None
    if x is None or x.shape[0] == 0 or x.shape[1] != columns or x.max() > 1:
        raise DataError(f"{path} is not a matrix of 0/1 values ({first_bad_line(path, columns)}); each line must "
                        f"hold {columns} of them separated by spaces: replace it with the original file")
    return x.astype(bool)


def first_bad_line(path: Path, columns: int) -> str:
    """Where a text matrix that numpy refused (or read with the wrong shape or values) goes wrong,
    said by line number: numpy's own messages count rows from 0 or from 1 depending on the error."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            values = line.split()
            if not values:
                continue
            if len(values) != columns:
                return f"line {number} has {len(values)} values"
            odd = next((v for v in values if v not in (b"0", b"1")), None)
            if odd is not None:
                return f"line {number} has {one_line(odd.decode('latin1'), 20)!r}"
    return "it has no rows"


def read_mat_variable(source: Path | bytes, variable: str, name: str) -> np.ndarray:
    """The array ``variable`` of a MATLAB file (level 4 or 5, read by scipy.io.loadmat; not the HDF5
    files of -v7.3), from its path or its bytes."""
    from scipy.io import loadmat

    try:
        found = loadmat(io.BytesIO(source) if isinstance(source, bytes) else source, variable_names=[variable])
    except FileNotFoundError:
        raise DataError(f"{name} does not exist; put the original file there") from None
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, ... on anything malformed
        raise DataError(f"{name} is not a readable MATLAB file ({type(e).__name__}: {one_line(e)}); "
                        "replace it with the original file") from None
    if variable not in found:
        raise DataError(f"{name} holds no variable {variable!r}; replace it with the original file")
    return found[variable]
