"""Datasets as tensors: registered by name, or a user's data (``npz:PATH``, ``folder:PATH``,
``h5ad:PATH``), split 60k/10k-style into train and test (user data without a test split: a seeded
``test_fraction`` held out), scaled to [0, 1] (images), optionally binarised, and checked for shape
and finiteness; a validation set is held out of the training set on request (``hold_out``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import BINARIZE, DataConfig
from ..errors import ConfigError, DataError
from ..registry import did_you_mean
from .datasets import DATASETS, Arrays
from .folders import read_folder
from .formats import load_npz
from .h5ad import read_h5ad
from .sources import data_dir

BINARIZE_SEED = 0  # the one fixed draw for static binarisation and for the dynamic test set
SPLIT_SEED = 0  # the one fixed permutation behind the 80/20 split and the test_fraction held out
VALIDATION_BINARIZE_SEED = BINARIZE_SEED + 2  # the one draw of a dynamic validation set (+1 is static train's)
UNLABELLED = -1  # the label of a training example whose class is unknown (scikit-learn's convention)


@dataclass
class Dataset:
    """Train and test tensors of shape (N, *x_shape), float32; labels int64 or None, and the names
    of the classes where the data has them (folder names, categories of an obs column). ``val_x``/``val_y``:
    the validation set ``hold_out`` took out of the training set (None without one), and ``validation``
    how to draw it again (fraction, seed, count, and the size of the training set it was drawn from)."""

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

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def n_classes(self) -> int | None:
        if self.train_y is None:
            return None
        return len(self.classes) if self.classes else int(self.train_y.max()) + 1


# a user's data, PREFIX:PATH -> ((train_x, train_y, test_x or None, test_y), class names or None)
USER_DATA = {
    "npz": lambda path, cfg: (read_user_npz(path), None),
    "folder": lambda path, cfg: read_folder(path, data_dir(cfg.data_dir), cfg.image_size, cfg.channels),
    "h5ad": lambda path, cfg: read_h5ad(path, cfg.layer, cfg.label_key),
}
ONLY_FOR = {"image_size": "folder", "channels": "folder", "layer": "h5ad", "label_key": "h5ad"}


def user_data(dataset: str) -> tuple[str, Path] | None:
    """(prefix, path) of a user's data (``npz:PATH``, ``folder:PATH``, ``h5ad:PATH``), None for a registered name."""
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
    if cfg.test_fraction != DataConfig.test_fraction and (user is None or user[0] == "npz"):
        raise ConfigError(f"test_fraction applies to folder: and h5ad: data only; {cfg.dataset} has its own test "
                          "split: drop it")


def load_dataset(cfg) -> Dataset:
    """The dataset named by a DataConfig, with its subsets and binarisation applied."""
    if cfg.binarize not in BINARIZE:
        raise DataError(f"unknown binarize {cfg.binarize!r}{did_you_mean(str(cfg.binarize), list(BINARIZE))}; "
                        f"choose one of: {', '.join(BINARIZE)}")
    check_dataset(cfg)
    classes, user = None, user_data(cfg.dataset)
    if user is not None:
        (tx, ty, sx, sy), classes = USER_DATA[user[0]](user[1], cfg)
        source = str(user[1])
        if sx is None:
            tx, ty, sx, sy = hold_out_test(tx, ty, cfg.test_fraction, source)
        elif cfg.test_fraction != DataConfig.test_fraction:
            raise ConfigError(f"test_fraction has nothing to do: {source} has its own test split; drop it")
    else:
        spec = DATASETS[cfg.dataset]
        if spec.binary and cfg.binarize != "none":  # Bernoulli(0 or 1) is the pixel itself: a silent no-op misleads
            raise ConfigError(f"--binarize {cfg.binarize} has nothing to do on {cfg.dataset}, whose pixels are already "
                              "0/1 (one fixed draw by its publisher); drop it, or use --dataset mnist --binarize "
                              "dynamic for MNIST binarised afresh in every batch")
        (tx, ty, sx, sy), source = spec.load(data_dir(cfg.data_dir), cfg.download)
    if cfg.split == "standard":  # cut before converting: a report on 200 test images converts no training set
        tx, ty, sx, sy = cut(tx, cfg.train_size), cut(ty, cfg.train_size), cut(sx, cfg.test_size), cut(sy, cfg.test_size)
    ds = Dataset(cfg.dataset, source, as_float(tx, "train"), as_labels(ty), as_float(sx, "test"), as_labels(sy),
                 classes=None if classes is None else tuple(classes))
    if cfg.split == "80/20":
        ds = subset(resplit(ds), cfg.train_size, cfg.test_size)
    return binarize(ds, cfg.binarize)


def read_user_npz(path: Path) -> Arrays:
    """A user's arrays: x_train and x_test (N, ...) numeric, uint8 taken as bytes/255; y_train and
    y_test optional integer labels."""
    arrays = load_npz(path)
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks {' and '.join(missing)} (it has {', '.join(arrays) or 'no arrays'}); "
                        "save it as numpy.savez(path, x_train=..., x_test=..., [y_train=..., y_test=...])")
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
    return tx, labels[0], sx, labels[1]


def hold_out_test(x: np.ndarray, y: np.ndarray | None, fraction: float, source: str) -> Arrays:
    """A seeded (SPLIT_SEED) random ``fraction`` of the examples as the test set, at least one of
    each part: (train_x, train_y, test_x, test_y)."""
    if len(x) < 2:
        raise DataError(f"{source} has {len(x)} example; a training and a test set need at least 2")
    n_test = min(max(1, round(fraction * len(x))), len(x) - 1)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train], None if y is None else y[train], x[test], None if y is None else y[test]


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


def as_labels(y) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(np.asarray(y, np.int64))


def cut(a, n: int | None):
    """The first n rows of an array or tensor (all where n is None; None stays None)."""
    return a if a is None or n is None else a[:n]


def subset(ds: Dataset, train_size: int | None, test_size: int | None) -> Dataset:
    """The first train_size / test_size examples (for quick runs)."""
    return replace(ds, train_x=cut(ds.train_x, train_size), train_y=cut(ds.train_y, train_size),
                   test_x=cut(ds.test_x, test_size), test_y=cut(ds.test_y, test_size))


def resplit(ds: Dataset) -> Dataset:
    """Train and test pooled, permuted once (SPLIT_SEED) and cut 80/20."""
    if (ds.train_y is None) != (ds.test_y is None):
        raise DataError(f"the 80/20 split pools train and test, but only one of them of {ds.name} has labels")
    perm = torch.randperm(len(ds.train_x) + len(ds.test_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(0.8 * len(perm))
    pool = lambda a, b: None if a is None else torch.cat([a, b])[perm]
    x, y = pool(ds.train_x, ds.test_x), pool(ds.train_y, ds.test_y)
    return replace(ds, train_x=x[:cut], train_y=None if y is None else y[:cut], test_x=x[cut:],
                   test_y=None if y is None else y[cut:])


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
    val_x = ds.train_x[val]
    if ds.binarize == "dynamic":
        val_x = torch.bernoulli(val_x, generator=torch.Generator().manual_seed(VALIDATION_BINARIZE_SEED))
    labels = lambda i: None if ds.train_y is None else ds.train_y[i]  # noqa: E731
    return replace(ds, train_x=ds.train_x[train], train_y=labels(train), val_x=val_x, val_y=labels(val),
                   validation={"fraction": fraction, "seed": seed, "count": count, "of": n})


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


__all__ = ["BINARIZE", "DATASETS", "Dataset", "available", "balanced_labels", "check_dataset", "hold_out",
           "load_dataset"]
