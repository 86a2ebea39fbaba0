"""The Python API beside the CLI: load a trained run; embed an AnnData file with it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import rundir
from .data import h5ad
from .errors import DataError
from .models import build_model

EMBED_ROWS = 10_000  # cells made dense at a time: a sparse file is never dense as a whole


def load(run: str | Path, device: str = "cpu", checkpoint: str = "last"):
    """The trained model of a run directory, in eval mode: ``encode(x)`` gives q(z|x),
    ``decode(z)`` p(x|z), plus ``sample``, ``reconstruct``, ``embed`` and ``elbo``. ``checkpoint``:
    "last" (model.safetensors) or "best" (best.safetensors, the best validation ELBO of a run
    trained with a validation set)."""
    cfg, meta = rundir.read_config(Path(run))
    model = build_model(cfg.model, tuple(meta["x_shape"]), meta.get("n_classes"), len(meta.get("batches") or ()))
    rundir.load_weights(Path(run), model, checkpoint)
    return model.to(device).eval()


def embed_h5ad(run: str | Path, data: str | Path, out: str | Path, *, layer: str | None = None,
               key: str = "X_aevb", device: str = "cpu") -> Path:
    """Write a copy of the .h5ad file ``data`` to ``out`` (atomically) with the posterior means
    E_q[z|x] of every cell (``model.embed``, shape (n_obs, latent_dim)) as ``obsm[key]``. The matrix
    is ``layer`` (default: the run's own ``layer``, else X), made dense EMBED_ROWS cells at a time."""
    cfg, _ = rundir.read_config(Path(run))
    model = load(run, device)
    data, out = Path(data).expanduser(), Path(out).expanduser()
    if out.resolve() == data.resolve():
        raise DataError(f"--out {out} is the input file; write the copy elsewhere")
    adata = h5ad.read(data)
    m, what = h5ad.matrix(adata, layer if layer is not None else cfg.data.layer, data)
    if (m.shape[1],) != tuple(model.x_shape):
        raise DataError(f"{what} of {data} has {m.shape[1]} genes but the model of {run} was trained on data of shape "
                        f"{tuple(model.x_shape)}; embed data with the genes it was trained on")
    means = [model.embed(torch.from_numpy(h5ad.dense(m, slice(i, i + EMBED_ROWS))).to(device)).cpu().numpy()
             for i in range(0, m.shape[0], EMBED_ROWS)]
    adata.obsm[key] = np.concatenate(means).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write(out, lambda p: adata.write_h5ad(p))
    return out
