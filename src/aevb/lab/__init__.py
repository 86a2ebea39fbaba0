"""The theory lab: each derivation of the notes demonstrated numerically.

Each demonstration is registered in ``LABS`` as ``run(out_dir, seed=0, quick=False) -> Result``:
it writes ``lab-<name>.png`` into out_dir and returns its key figures as a table.
Importing this package registers all of them.
"""
from .base import LABS, Result
from . import elbo_gap, em, gradient_estimators, kl_directions, naive_mc, online_drift, reparam_families  # noqa: F401  (register)

__all__ = ["LABS", "Result"]
