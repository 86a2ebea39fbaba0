"""The imputation table of a trained run: each conditional-inference method (aevb.inference) against
two real baselines on the same test images and mask: the training set's mean image, and
scikit-learn's KNNImputer (5 neighbours, fitted on the whole training set).

The error is measured on the missing pixels only: the mean binary cross-entropy for binary data,
else the mean squared error with its PSNR, 10 log10(1 / MSE) for pixels in [0, 1]. Lower is better.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import rundir
from ..inference.conditional import METHODS, impute, make_mask

BASELINES = ("mean-image", "knn-imputer")


def knn_fill(train_x: torch.Tensor, x: torch.Tensor, missing: torch.Tensor, neighbours: int = 5) -> torch.Tensor:
    """scikit-learn's KNNImputer, fitted on the training images, filling the missing pixels of x."""
    from sklearn.impute import KNNImputer

    imputer = KNNImputer(n_neighbors=neighbours).fit(train_x.flatten(1).numpy())
    holes = x.flatten(1).numpy().copy()
    holes[missing.flatten(1).numpy()] = np.nan
    filled = torch.from_numpy(imputer.transform(holes)).float().view_as(x)
    return torch.where(missing, filled, x)


def error(filled: torch.Tensor, x: torch.Tensor, missing: torch.Tensor, binary: bool) -> float:
    """Mean binary cross-entropy (binary data) or squared error over the missing pixels."""
    a, b = filled[missing].double(), x[missing].double()
    if binary:
        return F.binary_cross_entropy(a.clamp(1e-6, 1 - 1e-6), b).item()
    return (a - b).pow(2).mean().item()


def psnr(mse: float) -> float:
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def mask_name(spec: str) -> str:
    """The mask's name in file names: the spec, or a mask file's stem."""
    return Path(spec).stem if ("/" in spec or spec.endswith((".npy", ".png"))) else re.sub(r"[^\w.-]", "_", spec)


def compare(model, x: torch.Tensor, train_x: torch.Tensor, spec: str, methods=METHODS, samples: int = 5000,
            sweeps: int | None = None, chains: int = 20, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """Impute the pixels ``spec`` hides in x by each method and baseline (``sweeps`` None: each chain
    method's own default); the result record
    {"mask", "metric", "results", ...}, the filled images by name, and the mask."""
    missing = make_mask(spec, tuple(x.shape[1:]), len(x), seed)
    binary = bool(((train_x == 0) | (train_x == 1)).all())
    started = time.perf_counter()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    fills = {}
    for method in methods:
        options = {"samples": samples} if method == "importance" else {} if sweeps is None else {"sweeps": sweeps}
        fills[method] = impute(model, x.to(device), missing.to(device), method, chains=chains, **options).cpu()
    fills["mean-image"] = torch.where(missing, train_x.mean(0).expand_as(x), x)
    fills["knn-imputer"] = knn_fill(train_x, x, missing)
    results = {name: error(f, x, missing, binary) for name, f in fills.items()}
    record = {"mask": spec, "metric": "binary cross-entropy" if binary else "squared error", "results": results,
              "n": len(x), "missing_fraction": missing.float().mean().item(), "samples": samples, "sweeps": sweeps,
              "chains": chains, "seed": seed, "seconds": time.perf_counter() - started}
    if not binary:
        record["psnr"] = {name: psnr(v) for name, v in results.items()}
    return record, fills, missing


def write(run: Path, record: dict, fills: dict[str, torch.Tensor], x: torch.Tensor, missing: torch.Tensor,
          rows: int = 8) -> tuple[Path, Path]:
    """RUN/impute-<mask>.json and RUN/impute-<mask>.png: a row per test image, original | masked
    (missing pixels grey) | each method's and baseline's fill."""
    from ..viz.figures import as_images
    from ..viz.grid import save_grid

    name = mask_name(record["mask"])
    json_path = run / f"impute-{name}.json"
    rundir.write_text(json_path, json.dumps(record, indent=2) + "\n")
    columns = [x, torch.where(missing, torch.full_like(x, 0.5), x), *fills.values()]
    grid = torch.stack([c[:rows] for c in columns], 1).flatten(0, 1)
    png = save_grid(as_images(grid, tuple(x.shape[1:])), run / f"impute-{name}.png", ncols=len(columns), scale=2)
    return json_path, png


def format_record(record: dict) -> str:
    lines = [f"imputation of {record['n']} test images, mask {record['mask']} "
             f"({100 * record['missing_fraction']:.0f}% missing); {record['metric']} on the missing pixels, lower is better"]
    for name, value in sorted(record["results"].items(), key=lambda kv: kv[1]):
        extra = f"   PSNR {record['psnr'][name]:6.2f} dB" if "psnr" in record else ""
        lines.append(f"  {name:<18}{value:10.5f}{extra}")
    return "\n".join(lines)
