"""AnnData files (``h5ad:PATH``, single-cell data: cells × genes) as a dataset, through the
``anndata`` package (``pip install aevb[anndata]``).

The matrix is X or a named layer (e.g. raw ``counts`` for the count likelihoods); labels are an
obs column (categorical: its integer codes, the category names kept; anything else made
categorical, its sorted values the names). A sparse matrix is read as scipy.sparse CSR and made
dense here, because the Trainer keeps the training set as one dense tensor on the device: its
dense size (n_obs · n_vars · 4 bytes) must fit in half the free memory. Streaming sparse rows
into minibatches is a separate item.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .formats import one_line

INSTALL = "pip install aevb[anndata]"


def anndata():
    """The anndata module; DataError naming the install command where it is missing."""
    try:
        import anndata
    except ImportError:
        raise DataError(f"reading .h5ad files needs the anndata package; {INSTALL}") from None
    return anndata


def read(path: Path):
    """The AnnData object of an .h5ad file, in memory."""
    if not path.is_file():
        raise DataError(f"h5ad file {path} {'is not a file' if path.exists() else 'does not exist'}; "
                        "check the path after 'h5ad:'")
    module = anndata()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # anndata moving parts of older files: nothing to act on
            return module.read_h5ad(path)
    except DataError:
        raise
    except Exception as e:  # h5py, zarr and anndata's own errors all mean the same to a user
        raise DataError(f"{path} is not a readable .h5ad file ({type(e).__name__}: {one_line(e)}); "
                        "write it with anndata.AnnData.write_h5ad") from None


def matrix(adata, layer: str | None, path: Path):
    """X or the layer named ``layer`` (dense ndarray or scipy.sparse CSR), checked to be numeric and finite."""
    if layer is None:
        m, what = adata.X, "X"
    elif layer in adata.layers:
        m, what = adata.layers[layer], f"layer {layer!r}"
    else:
        have = ", ".join(adata.layers) or "none; drop --layer to use X"
        raise DataError(f"{path} has no layer {layer!r} (its layers: {have})")
    if m is None:
        raise DataError(f"{path} has no X matrix; name a layer with --layer "
                        f"(its layers: {', '.join(adata.layers) or 'none'})")
    m = sp.csr_matrix(m) if sp.issparse(m) else np.asarray(m)
    values = m.data if sp.issparse(m) else m
    if values.dtype.kind not in "biuf":
        raise DataError(f"{what} of {path} has dtype {values.dtype}; it must hold numbers")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        others = ", ".join(["X"] * (layer is not None) + [k for k in adata.layers if k != layer]) or "none"
        raise DataError(f"{what} of {path} contains NaN or Inf; clean or impute it, or train on another matrix "
                        f"(this file has: {others})")
    return m, what


def dense(m, rows: slice = slice(None)) -> np.ndarray:
    """Rows of X or a layer as a dense float32 array."""
    part = m[rows]
    return (part.toarray() if sp.issparse(part) else np.asarray(part)).astype(np.float32, copy=False)


def free_memory() -> int:
    """Bytes of memory free now (physical pages available)."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def labels(adata, key: str | None, path: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """obs[key] as integer codes and the category names (None, None without a key)."""
    if key is None:
        return None, None
    if key not in adata.obs:
        raise DataError(f"{path} has no obs column {key!r} (its columns: {', '.join(adata.obs.columns) or 'none'})")
    import pandas as pd

    column = adata.obs[key]
    categorical = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    codes = categorical.cat.codes.to_numpy()
    if (codes < 0).any():
        raise DataError(f"obs[{key!r}] of {path} has {int((codes < 0).sum())} missing labels; "
                        "fill them or drop those cells")
    return codes.astype(np.int64), [str(c) for c in categorical.cat.categories]


def read_h5ad(path: Path, layer: str | None = None, label_key: str | None = None):
    """((x, y, None, None), class names or None) of an .h5ad file: the caller holds out the test
    cells. x is the dense float32 (n_obs, n_vars) matrix (see the module's note on memory)."""
    adata = read(path)
    m, what = matrix(adata, layer, path)
    if 0 in m.shape:
        raise DataError(f"{what} of {path} has shape {m.shape}; it needs at least one cell and one gene")
    need = m.shape[0] * m.shape[1] * 4
    if sp.issparse(m) and need > free_memory() // 2:
        raise DataError(f"{what} of {path} needs {need / 2**30:.1f} GiB dense, more than half the free memory; "
                        "keep fewer genes (e.g. the highly variable ones) or cells")
    y, classes = labels(adata, label_key, path)
    return (dense(m), y, None, None), classes
