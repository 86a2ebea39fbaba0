"""Training algorithms, one per file, registered by name (``--algorithm``): each owns one
optimisation step and the metrics of its steps; ``aevb.train.Trainer`` runs the epochs around them.
See ``base.Algorithm`` for the contract."""
from .base import ALGORITHMS, Algorithm, default_algorithm
from . import sgvb, semi_supervised, wake_sleep, mcem  # noqa: F401,E402  (register "sgvb", "semi-supervised", "wake-sleep", "mcem")

__all__ = ["ALGORITHMS", "Algorithm", "default_algorithm"]
