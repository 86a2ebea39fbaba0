"""Denoising and super-resolution tables of a trained run: aevb's posterior mean (aevb.inference.observation)
against the classical answers on the same test images, as PSNR, 10 log10(1 / MSE) for pixels in [0, 1]
(higher is better): for denoising the noisy input itself and a median filter (scipy.ndimage, the better
of sizes 3 and 5); for super-resolution nearest-neighbour and bicubic upsampling (scipy.ndimage.zoom,
orders 0 and 3).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import rundir
from ..errors import DataError
from ..inference.observation import check_factor, denoise, pooling, superresolve


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """10 log10(1 / MSE) over all pixels of all images."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def parse_noise(spec: str) -> float:
    """'gaussian-<σ>' -> σ, with σ in (0, 1]."""
    kind, _, level = spec.partition("-")
    try:
        sd = float(level)
    except ValueError:
        sd = -1.0
    if kind != "gaussian" or not 0 < sd <= 1:
        raise DataError(f"--noise {spec}: give gaussian-<σ> with σ in (0, 1], e.g. gaussian-0.3 "
                        "(the noise model is additive Gaussian; salt-and-pepper is not supported)")
    return sd


def median_filtered(x: torch.Tensor, size: int) -> torch.Tensor:
    """scipy.ndimage.median_filter of each image and channel (no filtering across images or channels)."""
    return torch.from_numpy(ndimage.median_filter(x.numpy(), size=(1, 1, size, size))).to(x.dtype)


def zoomed(low: torch.Tensor, factor: int, order: int) -> torch.Tensor:
    return torch.from_numpy(ndimage.zoom(low.numpy(), (1, 1, factor, factor), order=order)).clamp(0, 1).to(low.dtype)


def denoising(model, x: torch.Tensor, spec: str, samples: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """PSNR of the noisy images, the best median filter and aevb; the record and the images by name."""
    sd = parse_noise(spec)
    if x.dim() != 4:
        raise DataError(f"denoising compares with a median filter over images (C, H, W); these data are {tuple(x.shape[1:])}")
    started = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    noisy = x + sd * torch.randn(x.shape, generator=g)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    medians = {size: median_filtered(noisy, size) for size in (3, 5)}
    best = max(medians, key=lambda s: psnr(medians[s], x))
    images = {"noisy": noisy, "median-filter": medians[best],
              "aevb": denoise(model, noisy.to(device), sd, samples).cpu()}
    record = {"noise": spec, "metric": "psnr", "results": {k: psnr(v, x) for k, v in images.items()},
              "median_filter_size": best, "n": len(x), "samples": samples, "seed": seed,
              "seconds": time.perf_counter() - started}
    return record, images


def super_resolution(model, x: torch.Tensor, factor: int, samples: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """PSNR of nearest-neighbour, bicubic and aevb upsampling of the factor-pooled test images."""
    check_factor(factor, tuple(x.shape[1:]))
    started = time.perf_counter()
    torch.manual_seed(seed)
    low = pooling(factor)(x)
    device = next(model.parameters()).device
    images = {"nearest": zoomed(low, factor, 0), "bicubic": zoomed(low, factor, 3),
              "aevb": superresolve(model, low.to(device), factor, samples=samples).cpu()}
    record = {"factor": factor, "metric": "psnr", "results": {k: psnr(v, x) for k, v in images.items()},
              "n": len(x), "samples": samples, "seed": seed, "seconds": time.perf_counter() - started}
    return record, images


def write(run: Path, name: str, record: dict, x: torch.Tensor, images: dict, rows: int = 8) -> tuple[Path, Path]:
    """RUN/<name>.json and RUN/<name>.png: a row per test image, the original then each answer."""
    from ..viz.figures import as_images
    from ..viz.grid import save_grid

    rundir.write_text(run / f"{name}.json", json.dumps(record, indent=2) + "\n")
    columns = [x, *(v.clamp(0, 1) if v.shape == x.shape else torch.nn.functional.interpolate(v, size=x.shape[-2:])
                    for v in images.values())]
    grid = torch.stack([c[:rows] for c in columns], 1).flatten(0, 1)
    return run / f"{name}.json", save_grid(as_images(grid, tuple(x.shape[1:])), run / f"{name}.png", ncols=len(columns))


def format_record(what: str, record: dict) -> str:
    lines = [f"{what} of {record['n']} test images; PSNR in dB, higher is better"]
    lines += [f"  {name:<16}{value:8.2f}" for name, value in sorted(record["results"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)
