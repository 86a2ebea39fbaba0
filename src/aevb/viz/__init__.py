"""Figures of a trained model, written as PNG with matplotlib, and the one-page HTML report of a run.

Every figure is a function ``fig_xxx(model_or_run, path=None, ...) -> Path`` (see ``figures``),
also registered by name in ``FIGURES`` for the CLI (``aevb plot RUN NAME``).
"""
from .figures import (FIGURES, SIZES, fig_curves, fig_histograms, fig_interpolation, fig_kl, fig_latent,
                      fig_manifold, fig_reconstructions, fig_samples)
from .grid import image_grid, save_grid
from .report import write_report

__all__ = ["FIGURES", "SIZES", "fig_curves", "fig_histograms", "fig_interpolation", "fig_kl", "fig_latent",
           "fig_manifold", "fig_reconstructions", "fig_samples", "image_grid", "save_grid", "write_report"]
