"""AnnData files (``h5ad:PATH``, single-cell data: cells × genes) as a dataset, through the
``anndata`` package (``pip install aevb[anndata]``).

The matrix is X or a named layer (e.g. raw ``counts`` for the count likelihoods); labels and the
batch of each cell (scVI's batch annotation) are obs columns (categorical: its integer codes, the
category names kept; anything else made categorical, its sorted values the names). A dense matrix is
read into memory; a sparse one stays sparse (scipy.sparse CSR) as ``Rows``, made dense a minibatch at
a time. With ``stream`` nothing of the matrix is read up front: X or the layer is read from the file
a minibatch at a time, through anndata's on-disk datasets (``anndata.io.sparse_dataset``, the backed
mode's own; h5py for a dense matrix). ``anndata.read_h5ad(backed="r")`` itself is not used there,
because it reads every layer into memory.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .formats import one_line
from .streaming import Rows

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
    with reading(path):
        return anndata().read_h5ad(path)


@contextmanager
def reading(path: Path):
    """Context: any error of reading ``path`` (h5py's, zarr's, anndata's: all the same to a user) as one DataError."""
    if not path.is_file():
        raise DataError(f"h5ad file {path} {'is not a file' if path.exists() else 'does not exist'}; "
                        "check the path after 'h5ad:'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # anndata moving parts of older files: nothing to act on
            yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path} is not a readable .h5ad file ({type(e).__name__}: {one_line(e)}); "
                        "write it with anndata.AnnData.write_h5ad") from None


def on_disk(path: Path, layer: str | None):
    """(X or the layer as a reader of rows on disk, its name, obs): ``--stream``'s access to an .h5ad file."""
    import h5py

    with reading(path):
        module, f = anndata(), h5py.File(path, "r")
        layers = list(f["layers"]) if "layers" in f else []
        element, what = pick(f.get("X"), dict(f["layers"]) if layers else {}, layer, path)
        sparse = isinstance(element, h5py.Group)
        if sparse and element.attrs.get("encoding-type") != "csr_matrix":
            raise DataError(f"{what} of {path} is stored as {element.attrs.get('encoding-type')}, by genes: --stream "
                            "reads it a cell at a time, from csr_matrix only; write it as CSR (adata.X = "
                            "adata.X.tocsr()) or drop --stream")
        return (module.io.sparse_dataset(element) if sparse else element), what, module.io.read_elem(f["obs"])


def pick(x, layers, layer: str | None, path: Path):
    """(X or the layer named ``layer``, its name) of the matrices of an .h5ad file."""
    if layer is None:
        m, what = x, "X"
    elif layer in layers:
        m, what = layers[layer], f"layer {layer!r}"
    else:
        have = ", ".join(layers) or "none; drop --layer to use X"
        raise DataError(f"{path} has no layer {layer!r} (its layers: {have})")
    if m is None:
        raise DataError(f"{path} has no X matrix; name a layer with --layer "
                        f"(its layers: {', '.join(layers) or 'none'})")
    return m, what


def matrix(adata, layer: str | None, path: Path):
    """X or the layer named ``layer`` (dense ndarray or scipy.sparse CSR), checked to be numeric and finite."""
    m, what = pick(adata.X, adata.layers, layer, path)
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


def codes(obs, key: str | None, path: Path, what: str = "labels") -> tuple[np.ndarray | None, list[str] | None]:
    """obs[key] as integer codes and the category names (None, None without a key)."""
    if key is None:
        return None, None
    if key not in obs:
        raise DataError(f"{path} has no obs column {key!r} (its columns: {', '.join(obs.columns) or 'none'})")
    import pandas as pd

    column = obs[key]
    categorical = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    values = categorical.cat.codes.to_numpy()
    if (values < 0).any():
        raise DataError(f"obs[{key!r}] of {path} has {int((values < 0).sum())} missing {what}; "
                        "fill them or drop those cells")
    return values.astype(np.int64), [str(c) for c in categorical.cat.categories]


def read_h5ad(path: Path, layer: str | None = None, label_key: str | None = None, batch_key: str | None = None,
              stream: bool = False):
    """((x, y, None, None), class names or None, (batch codes, batch names) or None) of an .h5ad file:
    the caller holds out the test cells. x is the dense float32 (n_obs, n_vars) matrix, or ``Rows`` of a
    sparse one or (``stream``) of the matrix on disk."""
    if stream:
        m, what, obs = on_disk(path, layer)
        x = Rows(m, f"{what} of {path}")
    else:
        adata = read(path)
        m, what = matrix(adata, layer, path)
        obs = adata.obs
        x = Rows(m, f"{what} of {path}") if sp.issparse(m) else dense(m)
    if 0 in m.shape:
        raise DataError(f"{what} of {path} has shape {m.shape}; it needs at least one cell and one gene")
    y, classes = codes(obs, label_key, path)
    s, batches = codes(obs, batch_key, path, "batches")
    return (x, y, None, None), classes, None if batch_key is None else (s, batches)
