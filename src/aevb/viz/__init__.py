"""Figures of a trained model, written as PNG with matplotlib."""
from .grid import image_grid, save_grid

__all__ = ["image_grid", "save_grid"]
