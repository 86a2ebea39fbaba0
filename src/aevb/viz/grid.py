"""Image grids without torchvision: tile (N, C, H, W) images into one array and save it as PNG."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import torch

from ..rundir import atomic_write


def image_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] row by row into an (rows·(H+pad)+pad, cols·(W+pad)+pad[, 3]) array."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.dim() == 2:  # flat vectors that form a square image
        side = math.isqrt(images.shape[1])
        images = images.reshape(-1, 1, side, side)
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None, scale: int = 2) -> Path:
    """Write an image grid to a PNG, upscaled ``scale`` times with nearest neighbours; atomically."""
    return save_array(image_grid(images, ncols), path, scale)


def save_array(array: np.ndarray, path: str | Path, scale: int = 2) -> Path:
    """Write a grid made by ``image_grid`` to a PNG, upscaled ``scale`` times with nearest neighbours; atomically."""
    path = Path(path)
    array = np.kron(array, np.ones((scale, scale) + (1,) * (array.ndim - 2)))
    atomic_write(path, lambda p: matplotlib.image.imsave(p, array, cmap="gray", vmin=0, vmax=1, format="png"))
    return path
