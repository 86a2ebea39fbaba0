"""Data read on demand, a minibatch at a time: ``Rows``, and the readers behind it.

Training touches its data in four ways only: ``len(x)``, ``x.shape``, ``x.to(device)`` and ``x[idx]``
(a minibatch by an index tensor, a chunk of an evaluation by a slice). ``Rows`` answers the same four for
data that stays where it is: a memory-mapped .npy file or .npz member, the shards of an .npz folder, an
AnnData matrix on disk, or a sparse matrix in memory. So the algorithms, the Trainer and the evaluation
take their batches from a tensor and from ``Rows`` by the same code: ``rows[idx]`` reads those rows (in
increasing order, as files and HDF5 read fastest, then put back in the order asked), makes a sparse
block dense, converts it as in-memory data are converted (``as_float``: uint8 as bytes/255, NaN or Inf
refused) and moves it to the device. The same seed thus draws the same batches, bit for bit, in memory
or streamed. ``select`` cuts a lazy view (a split, a validation set) without reading anything.

The pages of a memory-mapped file count in the process's resident memory once read, until the kernel
needs them back, and reading one row maps the pages around it too (the kernel's fault-around, up to 64
KiB). ``MappedArray`` therefore reads in pieces of at most PIECE_BYTES of mapped file and gives the pages
back after each (madvise MADV_DONTNEED: they stay in the page cache, outside the process), so a pass over
a file larger than memory holds one piece of it at a time, whatever the rows asked for.
"""
from __future__ import annotations

import math
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError

CHUNK_BYTES = 16 * 2**20  # one read of a scan over the data (checks of the whole training set)
PIECE_BYTES = 16 * 2**20  # the most of a memory-mapped file in the process at once
FAULT_AROUND = 64 * 2**10  # what the kernel may map around each page that a read faults in
DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def real_dtype(dtype: np.dtype) -> bool:
    """bool, integers and the float widths torch reads (not complex, float128, dates or strings)."""
    return dtype.kind in "biu" or dtype.kind == "f" and dtype.itemsize <= 8


def as_float(x: np.ndarray, part: str) -> torch.Tensor:
    """float32 tensor; uint8 images become bytes/255. NaN or Inf is refused."""
    x = np.asarray(x)
    if not real_dtype(x.dtype):
        raise DataError(f"the {part} data has dtype {x.dtype}; it must be bool, integers or float16/32/64")
    t = torch.from_numpy(np.array(x, dtype=x.dtype.newbyteorder("=")))  # IDX and user arrays may be big-endian
    t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
    if not torch.isfinite(t).all():
        raise DataError(f"the {part} data contains NaN or Inf; clean or impute it before training")
    return t


class MappedArray:
    """A read-only array in a file at byte ``offset`` (a .npy file, or an .npz member stored
    uncompressed), memory-mapped: ``a[key]`` copies those rows into memory and gives the mapped
    pages back to the kernel (see the module's note)."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, dtype, shape
        with open(path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._array = np.frombuffer(self._mmap, dtype, count=math.prod(shape), offset=offset).reshape(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        """A copy of the rows ``key`` (a slice, or an index array: rows in increasing order read fastest),
        read a piece at a time (see the module's note); anything else (``...``) at once."""
        if not isinstance(key, (slice, np.ndarray)):
            out = np.array(self._array[key])
            self._release()
            return out
        row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            step = max(1, PIECE_BYTES // row_bytes)
            pieces = [slice(i, min(i + step, stop)) for i in range(start, stop, step)]
            n = max(0, stop - start)
        else:
            rows = np.arange(len(self))[key] if isinstance(key, slice) else key
            step = max(1, PIECE_BYTES // (row_bytes + FAULT_AROUND))
            pieces = [rows[i:i + step] for i in range(0, len(rows), step)]
            n = len(rows)
        out = np.empty((n, *self.shape[1:]), self.dtype)
        done = 0
        for piece in pieces:
            part = self._array[piece]
            out[done:done + len(part)] = part
            done += len(part)
            self._release()
        return out

    def _release(self) -> None:
        """Give the mapped pages back to the kernel (once what was read from them is copied)."""
        if DONTNEED is not None:
            self._mmap.madvise(DONTNEED)


def map_npy(path: Path, offset: int = 0, name: str | None = None) -> MappedArray:
    """The .npy array at byte ``offset`` of ``path``, memory-mapped; DataError for anything that is not a
    C-ordered numeric .npy array, or that the file is too short to hold."""
    name = name or str(path)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}[version]
                shape, fortran, dtype = read_header(f)
            except (ValueError, KeyError, EOFError, SyntaxError):
                raise DataError(f"{name} is not a .npy array (or a version numpy.save does not write); "
                                "save it with numpy.save") from None
            start = f.tell()
    except FileNotFoundError:
        raise DataError(f"{name} does not exist; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{name} is a folder, not a .npy file; check the path") from None
    except OSError as e:
        raise DataError(f"cannot read {name} ({e.strerror or e}); check the path and its permissions") from None
    if dtype.hasobject:
        raise DataError(f"{name} holds pickled Python objects, which are never loaded (they can run code); "
                        "save numeric arrays")
    if fortran and len(shape) > 1:
        raise DataError(f"{name} is stored in Fortran order, whose rows are not contiguous; save "
                        "numpy.ascontiguousarray(x) instead")
    need = start + math.prod(shape) * dtype.itemsize
    if Path(path).stat().st_size < need:
        raise DataError(f"{name} is truncated ({Path(path).stat().st_size} bytes, its header needs {need}); "
                        "write it again with numpy.save")
    return MappedArray(Path(path), start, dtype, tuple(shape))


LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local header: its name and extra field follow


def map_npz(path: Path) -> dict[str, MappedArray]:
    """Every array of an .npz file, memory-mapped where it lies in the archive: numpy.savez stores
    members uncompressed, numpy.savez_compressed does not (refused: a compressed member cannot be read
    a row at a time)."""
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as f:
            members = {}
            for info in z.infolist():
                key = info.filename.removesuffix(".npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(f"{path} is compressed (numpy.savez_compressed), which --stream cannot read a "
                                    "row at a time; save it with numpy.savez, or drop --stream")
                f.seek(info.header_offset)
                fields = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
                members[key] = info.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
    except (zipfile.BadZipFile, struct.error, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); save it with numpy.savez") from None
    except FileNotFoundError:
        raise DataError(f"npz file {path} does not exist; check the path after 'npz:'") from None
    except (IsADirectoryError, PermissionError) as e:
        raise DataError(f"cannot read {path} ({e.strerror}); check the path after 'npz:'") from None
    out = {}
    for key, offset in members.items():
        try:
            out[key] = map_npy(path, offset, f"{path}:{key}")
        except DataError as e:
            if "not a .npy array" in str(e):
                raise DataError(f"{path} has members that are not arrays ({key!r}); save it with numpy.savez") from None
            raise
    return out


class Concatenated:
    """Arrays of the same dtype and row shape (the shards of an .npz folder) read as one, in order."""

    def __init__(self, parts: list, name: str):
        self.parts = parts
        if len({(p.dtype, tuple(p.shape[1:])) for p in parts}) > 1:
            raise DataError(f"the shards of {name} differ in dtype or row shape "
                            f"({', '.join(f'{p.dtype} {tuple(p.shape[1:])}' for p in parts)}); save them alike")
        self.dtype = parts[0].dtype
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """Rows by increasing global index."""
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else rows
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return np.concatenate([self.parts[i][rows[shard == i] - self.starts[i]] for i in np.unique(shard)]
                              or [np.empty((0, *self.shape[1:]), self.dtype)])


class Rows:
    """N examples behind ``reader`` (anything with ``shape``, ``dtype`` and rows by an increasing index
    array: a MappedArray, an h5py Dataset, an AnnData sparse dataset, a scipy.sparse matrix), optionally
    only the rows ``index`` of it, read on demand onto ``device``; ``source`` names them in errors."""

    def __init__(self, reader, source: str, index: np.ndarray | None = None, device=torch.device("cpu")):
        self.reader, self.source, self.index, self.device = reader, source, index, torch.device(device)
        if not real_dtype(np.dtype(reader.dtype)):
            raise DataError(f"{source} has dtype {reader.dtype}; it must be bool, integers or float16/32/64")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.reader.shape[1:])

    def __len__(self) -> int:
        return self.reader.shape[0] if self.index is None else len(self.index)

    def to(self, device) -> "Rows":
        """The same rows, read onto ``device``."""
        return Rows(self.reader, self.source, self.index, device)

    def select(self, key) -> "Rows":
        """A view of some rows (a slice or an index array, of this view's rows), nothing read."""
        rows = self._rows(key)
        return Rows(self.reader, self.source, rows, self.device)

    def _rows(self, key) -> np.ndarray:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        positions = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        return positions if self.index is None else self.index[positions]

    def __getitem__(self, key) -> torch.Tensor:
        """The rows ``key`` (an index tensor or array, or a slice) as one float32 tensor on the device."""
        rows = self._rows(key)
        increasing = bool((rows[1:] > rows[:-1]).all())
        unique, order = (rows, None) if increasing else np.unique(rows, return_inverse=True)
        contiguous = len(unique) and unique[-1] - unique[0] + 1 == len(unique)
        block = self.reader[slice(unique[0], unique[-1] + 1) if contiguous else unique]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return as_float(block if order is None else block[order], self.source).to(self.device)


def select(x, key):
    """Rows ``key`` of an array, tensor or ``Rows`` (a lazy view of Rows); None stays None."""
    if x is None:
        return None
    return x.select(key) if isinstance(x, Rows) else x[key]


def chunks(x, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """A tensor as it is, or ``Rows`` read in chunks of about ``chunk_bytes``: a scan of all the data in bounded memory."""
    if not isinstance(x, Rows):
        yield x
        return
    step = max(1, chunk_bytes // max(1, 4 * math.prod(x.shape[1:])))
    for i in range(0, len(x), step):
        yield x[i:i + step]


def in_memory(x):
    """A tensor of all of ``x`` (read where it is ``Rows``)."""
    return x[:] if isinstance(x, Rows) else x
