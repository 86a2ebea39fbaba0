"""Datasets as tensors: registered by name, or a user's data (``npz:PATH``, ``npy:PATH``,
``folder:PATH``, ``h5ad:PATH``, ``ldac:PATH``), split 60k/10k-style into train and test (data without a
test split, a user's or a registered set's such as frey-face: a seeded ``test_fraction`` held out), scaled
to [0, 1] (images), optionally binarised, and checked for shape and finiteness; a validation set is held
out of the training set on request (``hold_out``). With ``stream`` (npy, npz and h5ad data), and for sparse
AnnData matrices, the examples are ``Rows`` read a minibatch at a time instead of tensors (see ``streaming``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import BINARIZE, DataConfig
from ..errors import ConfigError, DataError
from ..registry import did_you_mean
from .bow import read_ldac_data, read_vocabulary, vocabulary_file
from .datasets import DATASETS, Arrays
from .folders import read_folder
from .formats import load_npz
from .h5ad import read_h5ad
from .sources import data_dir
from .streaming import Concatenated, Rows, as_float, chunks, in_memory, map_npy, map_npz, real_dtype, select

BINARIZE_SEED = 0  # the one fixed draw for static binarisation and for the dynamic test set
SPLIT_SEED = 0  # the one fixed permutation behind the 80/20 split and the test_fraction held out
VALIDATION_BINARIZE_SEED = BINARIZE_SEED + 2  # the one draw of a dynamic validation set (+1 is static train's)
UNLABELLED = -1  # the label of a training example whose class is unknown (scikit-learn's convention)


@dataclass
class Dataset:
    """Train and test tensors of shape (N, *x_shape), float32; labels int64 or None, and the names
    of the classes where the data has them (folder names, categories of an obs column). ``val_x``/``val_y``:
    the validation set ``hold_out`` took out of the training set (None without one), and ``validation``
    how to draw it again (fraction, seed, count, and the size of the training set it was drawn from).
    x may be ``Rows`` instead of a tensor (streamed or sparse data: see ``streaming``). ``train_s``/
    ``test_s``/``val_s``: the batch s of each example (an AnnData obs column named by ``batch_key``,
    as scVI's batch annotation), int64 codes into ``batches``, its names; None without."""

    name: str
    source: str
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    binarize: str = "none"
    classes: tuple[str, ...] | None = None
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    validation: dict | None = None
    train_s: torch.Tensor | None = None
    test_s: torch.Tensor | None = None
    val_s: torch.Tensor | None = None
    batches: tuple[str, ...] | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def n_classes(self) -> int | None:
        if self.train_y is None:
            return None
        return len(self.classes) if self.classes else int(self.train_y.max()) + 1

    @property
    def n_batches(self) -> int:
        """How many batches s the examples come from (0: no batch annotation)."""
        return len(self.batches) if self.batches else 0


# a user's data, PREFIX:PATH -> ((train_x, train_y, test_x or None, test_y), class names or None,
# (batch of each example, batch names) or None); x an array, or Rows where the data stay where they are
USER_DATA = {
    "npz": lambda path, cfg: (read_user_npz(path, cfg.stream), None, None),
    "npy": lambda path, cfg: (read_user_npy(path, cfg.stream), None, None),
    "folder": lambda path, cfg: (*read_folder(path, data_dir(cfg.data_dir), cfg.image_size, cfg.channels), None),
    "h5ad": lambda path, cfg: read_h5ad(path, cfg.layer, cfg.label_key, cfg.batch_key, cfg.stream),
    "ldac": lambda path, cfg: (read_ldac_data(path), None, None),
}
ONLY_FOR = {"image_size": "folder", "channels": "folder", "layer": "h5ad", "label_key": "h5ad", "batch_key": "h5ad"}
STREAMED = ("npy", "npz", "h5ad")  # the user data that --stream reads lazily
HELD_OUT = ("folder", "h5ad", "npy", "ldac")  # the user data without a test split of their own: test_fraction holds one out


def user_data(dataset: str) -> tuple[str, Path] | None:
    """(prefix, path) of a user's data (``npz:PATH``, ``npy:PATH``, ``folder:PATH``, ``h5ad:PATH``, ``ldac:PATH``),
    None for a
    registered name."""
    prefix, _, path = dataset.partition(":")
    return (prefix, Path(path).expanduser()) if prefix in USER_DATA and path else None


def check_dataset(cfg) -> None:
    """A registered dataset or a user's data, and options only where they apply: a typo fails at once."""
    user = user_data(cfg.dataset)
    if user is None:
        DATASETS[cfg.dataset]
    for key, prefix in ONLY_FOR.items():
        if getattr(cfg, key) is not None and (user is None or user[0] != prefix):
            raise ConfigError(f"{key} applies to {prefix}:PATH data only, not to {cfg.dataset}; drop it")
    has_test_split = DATASETS[cfg.dataset].has_test_split if user is None else user[0] not in HELD_OUT
    if cfg.test_fraction != DataConfig.test_fraction and has_test_split:
        without = [name for name in DATASETS if not DATASETS[name].has_test_split]
        raise ConfigError(f"test_fraction applies to data without a test split ({', '.join(p + ':' for p in HELD_OUT)}, "
                          f"{', '.join(without)}); {cfg.dataset} has its own test split: drop it")
    if cfg.stream and (user is None or user[0] not in STREAMED):
        raise ConfigError(f"--stream reads npy:PATH, npz:PATH and h5ad:PATH data from disk; {cfg.dataset} is read "
                          "into memory: drop --stream")


def load_dataset(cfg) -> Dataset:
    """The dataset named by a DataConfig, with its subsets and binarisation applied."""
    if cfg.binarize not in BINARIZE:
        raise DataError(f"unknown binarize {cfg.binarize!r}{did_you_mean(str(cfg.binarize), list(BINARIZE))}; "
                        f"choose one of: {', '.join(BINARIZE)}")
    check_dataset(cfg)
    classes, batches, ts, ss, user = None, None, None, None, user_data(cfg.dataset)
    if user is not None:
        (tx, ty, sx, sy), classes, batch = USER_DATA[user[0]](user[1], cfg)
        source = str(user[1])
        if batch is not None:
            ts, batches = batch
        if sx is not None and cfg.test_fraction != DataConfig.test_fraction:
            raise ConfigError(f"test_fraction has nothing to do: {source} has its own test split; drop it")
    else:
        spec = DATASETS[cfg.dataset]
        if spec.binary and cfg.binarize != "none":  # Bernoulli(0 or 1) is the pixel itself: a silent no-op misleads
            raise ConfigError(f"--binarize {cfg.binarize} has nothing to do on {cfg.dataset}, whose pixels are already "
                              "0/1 (one fixed draw by its publisher); drop it, or use --dataset mnist --binarize "
                              "dynamic for MNIST binarised afresh in every batch")
        (tx, ty, sx, sy), source = spec.load(data_dir(cfg.data_dir), cfg.download)
    if sx is None:
        train, test = test_rows(len(tx), cfg.test_fraction, source)
        tx, ty, ts, sx, sy, ss = (select(a, rows) for rows in (train, test) for a in (tx, ty, ts))
    if isinstance(tx, Rows) and (cfg.split != "standard" or cfg.binarize != "none"):
        option = f"--split {cfg.split}" if cfg.split != "standard" else f"--binarize {cfg.binarize}"
        raise ConfigError(f"{option} needs the whole data set in memory as one dense array, and {source} is read "
                          f"a minibatch at a time ({'--stream' if cfg.stream else 'a sparse matrix'}); drop {option}")
    if cfg.split == "standard":  # cut before converting: a report on 200 test images converts no training set
        tx, ty, ts = (cut(a, cfg.train_size) for a in (tx, ty, ts))
        sx, sy, ss = (cut(a, cfg.test_size) for a in (sx, sy, ss))
    ds = Dataset(cfg.dataset, source, to_float(tx, "train"), as_labels(ty), to_float(sx, "test"), as_labels(sy),
                 classes=None if classes is None else tuple(classes), train_s=as_labels(ts), test_s=as_labels(ss),
                 batches=None if batches is None else tuple(batches))
    if cfg.split == "80/20":
        ds = subset(resplit(ds), cfg.train_size, cfg.test_size)
    return binarize(ds, cfg.binarize)


def vocabulary(cfg) -> list[str] | None:
    """The words that the features of a bag-of-words dataset count (``ldac:PATH``, ``reuters``), None for other data."""
    user = user_data(cfg.dataset)
    if user is not None:
        return read_vocabulary(vocabulary_file(user[1])) if user[0] == "ldac" else None
    return DATASETS[cfg.dataset].vocabulary(data_dir(cfg.data_dir))


def to_float(x, part: str):
    """In-memory arrays as float32 tensors (``as_float``); ``Rows`` convert each batch they read."""
    return x if isinstance(x, Rows) else as_float(x, part)


def read_user_npz(path: Path, stream: bool = False) -> Arrays:
    """A user's arrays: x_train and x_test (N, ...) numeric, uint8 taken as bytes/255; y_train and
    y_test optional integer labels. ``path`` is an .npz file, or a folder of .npz shards holding the same
    arrays, concatenated in the order of their names. With ``stream`` the x arrays are memory-mapped
    ``Rows`` (members stored uncompressed, as numpy.savez writes them), the labels read into memory."""
    shards = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not shards:
        raise DataError(f"{path} is a folder without .npz shards; put the shards (numpy.savez files) there")
    parts = [map_npz(shard) if stream else load_npz(shard) for shard in shards]
    arrays = {}
    for shard, part in zip(shards, parts):
        missing = [k for k in ("x_train", "x_test") if k not in part]
        if missing:
            raise DataError(f"{shard} lacks {' and '.join(missing)} (it has {', '.join(part) or 'no arrays'}); "
                            "save it as numpy.savez(path, x_train=..., x_test=..., [y_train=..., y_test=...])")
        if set(part) != set(parts[0]):
            raise DataError(f"the shards of {path} hold different arrays ({shards[0].name}: {', '.join(parts[0])}; "
                            f"{shard.name}: {', '.join(part)}); give every shard the same ones")
    for key in parts[0]:
        members = [part[key] for part in parts]
        if key.startswith("y_") or not stream:
            members = [np.asarray(m[...]) for m in members]  # labels in memory (m[...]: any rank, read once)
            if len({m.dtype for m in members}) > 1:
                raise DataError(f"the shards of {path} differ in the dtype of {key} "
                                f"({', '.join(str(m.dtype) for m in members)}); save them alike")
        arrays[key] = members[0] if len(members) == 1 else (
            Concatenated(members, str(path)) if stream and key.startswith("x_") else np.concatenate(members))
    tx, sx = arrays["x_train"], arrays["x_test"]
    for x, k in ((tx, "x_train"), (sx, "x_test")):
        if x.ndim < 2 or 0 in x.shape or not real_dtype(x.dtype):
            raise DataError(f"{path}: {k} has shape {x.shape} and dtype {x.dtype}; it must be a numeric array "
                            "(N, ...) with N > 0 and no empty dimension, of bool, integers or float16/32/64")
    if tx.shape[1:] != sx.shape[1:]:
        raise DataError(f"{path}: x_train {tx.shape} and x_test {sx.shape} differ in shape after the first axis")
    labels = []
    for y, x, k in ((arrays.get("y_train"), tx, "y_train"), (arrays.get("y_test"), sx, "y_test")):
        if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu" or (y < 0).any()):
            raise DataError(f"{path}: {k} must hold one non-negative integer label per row of x, got shape {y.shape} ({y.dtype})")
        labels.append(y)
    if stream:
        tx, sx = Rows(tx, f"x_train of {path}"), Rows(sx, f"x_test of {path}")
    return tx, labels[0], sx, labels[1]


def read_user_npy(path: Path, stream: bool = False) -> Arrays:
    """A user's examples (N, ...) in one .npy file, numeric (uint8 taken as bytes/255), without labels or
    a test split (the caller holds one out); memory-mapped ``Rows`` with ``stream``."""
    x = map_npy(path, name=f"npy file {path}")
    if x.ndim < 2 or 0 in x.shape or not real_dtype(x.dtype):
        raise DataError(f"{path} holds an array of shape {x.shape} and dtype {x.dtype}; it must be a numeric array "
                        "(N, ...) with N > 0 and no empty dimension, of bool, integers or float16/32/64")
    return (Rows(x, str(path)) if stream else np.load(path, allow_pickle=False)), None, None, None


def test_rows(n: int, fraction: float, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The training and the test rows of n examples: a seeded (SPLIT_SEED) random ``fraction`` of them for
    testing, at least one in each part, both in their original order."""
    if n < 2:
        raise DataError(f"{source} has {n} example; a training and a test set need at least 2")
    n_test = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def as_labels(y) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(np.asarray(y, np.int64))


def cut(a, n: int | None):
    """The first n rows of an array, tensor or ``Rows`` (all where n is None; None stays None)."""
    return a if n is None else select(a, slice(None, n))


def subset(ds: Dataset, train_size: int | None, test_size: int | None) -> Dataset:
    """The first train_size / test_size examples (for quick runs)."""
    return replace(ds, train_x=cut(ds.train_x, train_size), train_y=cut(ds.train_y, train_size),
                   train_s=cut(ds.train_s, train_size), test_x=cut(ds.test_x, test_size),
                   test_y=cut(ds.test_y, test_size), test_s=cut(ds.test_s, test_size))


def resplit(ds: Dataset) -> Dataset:
    """Train and test pooled, permuted once (SPLIT_SEED) and cut 80/20."""
    if (ds.train_y is None) != (ds.test_y is None):
        raise DataError(f"the 80/20 split pools train and test, but only one of them of {ds.name} has labels")
    perm = torch.randperm(len(ds.train_x) + len(ds.test_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(0.8 * len(perm))
    pool = lambda a, b: None if a is None else torch.cat([a, b])[perm]
    x, y, s = pool(ds.train_x, ds.test_x), pool(ds.train_y, ds.test_y), pool(ds.train_s, ds.test_s)
    return replace(ds, train_x=x[:cut], train_y=select(y, slice(None, cut)), train_s=select(s, slice(None, cut)),
                   test_x=x[cut:], test_y=select(y, slice(cut, None)), test_s=select(s, slice(cut, None)))


def hold_out(ds: Dataset, fraction: float | None, seed: int) -> Dataset:
    """A validation set of count = round(fraction·N) of the N training examples, removed from the
    training set: the first count of ``torch.randperm(N)`` drawn by a generator seeded with ``seed``
    (the run's seed), both parts in their original order. Their labels follow them, so a semi-supervised
    run draws its labelled examples from what remains. Dynamically binarised data gets a validation set
    binarised once, as the test set is. ``fraction`` None: ``ds`` as it is."""
    if fraction is None:
        return ds
    n = len(ds.train_x)
    count = round(fraction * n)
    if not 0 < count < n:
        raise ConfigError(f"--val-fraction {fraction} of {n} training examples holds out {count}; choose a fraction "
                          "that leaves at least one example in each of the two sets")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:count].sort().values, perm[count:].sort().values
    val_x = select(ds.train_x, val)
    if ds.binarize == "dynamic":
        val_x = torch.bernoulli(val_x, generator=torch.Generator().manual_seed(VALIDATION_BINARIZE_SEED))
    return replace(ds, train_x=select(ds.train_x, train), train_y=select(ds.train_y, train),
                   train_s=select(ds.train_s, train), val_x=val_x, val_y=select(ds.train_y, val),
                   val_s=select(ds.train_s, val), validation={"fraction": fraction, "seed": seed, "count": count, "of": n})


def balanced_labels(y: torch.Tensor | None, n: int | None, seed: int) -> torch.Tensor:
    """Indices of n labelled examples, n/K of each of the K classes, drawn by ``seed`` (every example
    with a known label where n is None; UNLABELLED marks an unknown one)."""
    if y is None:
        raise DataError("a semi-supervised model needs labels, and this training set has none; "
                        "use a labelled dataset (or y_train in your npz)")
    if n is None:
        return torch.nonzero(y != UNLABELLED).flatten()
    if n == len(y):
        return torch.arange(len(y))
    k = int(y.max()) + 1
    counts = torch.bincount(y[y != UNLABELLED], minlength=k)
    if n % k:
        raise ConfigError(f"--labelled {n} cannot be split equally over {k} classes; use a multiple of {k}")
    if n > len(y) or counts.min() < n // k:
        raise ConfigError(f"--labelled {n} needs {n // k} examples of each class, but the training set has only "
                          f"{int(counts.min())} of class {int(counts.argmin())}; ask for fewer")
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y == c).flatten() for c in range(k)]
    return torch.cat([i[torch.randperm(len(i), generator=g)[:n // k]] for i in picks]).sort().values


def binarize(ds: Dataset, mode: str) -> Dataset:
    """static: both splits sampled once; dynamic: the test split once, the training split afresh in
    every batch (by the trainer), as in Burda et al. 2015. Pixels are Bernoulli(x)."""
    if mode == "none":
        return ds
    for t, part in ((ds.train_x, "train"), (ds.test_x, "test")):
        if t.min() < 0 or t.max() > 1:
            raise DataError(f"--binarize {mode} needs {part} values in [0, 1]; rescale the data or use --binarize none")
    draw = lambda x, seed: torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    train_x = draw(ds.train_x, BINARIZE_SEED + 1) if mode == "static" else ds.train_x
    test_x = draw(ds.test_x, BINARIZE_SEED)
    return replace(ds, train_x=train_x, test_x=test_x, binarize=mode)


def available(data_dir_: str | None = None) -> list[tuple[str, str | None]]:
    """(dataset, where it is found on this machine or None) for every registered dataset."""
    root = data_dir(data_dir_)
    return [(name, (found[0] if (found := DATASETS[name].locate(root)) else None)) for name in DATASETS]


__all__ = ["BINARIZE", "DATASETS", "Dataset", "Rows", "available", "balanced_labels", "check_dataset", "chunks",
           "hold_out", "in_memory", "load_dataset", "select", "vocabulary"]
