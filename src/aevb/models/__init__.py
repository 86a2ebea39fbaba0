"""Models: encoder + prior + decoder as one object, registered by name and built from a config.

Every model keeps the contract of ``base.LatentModel`` and declares what more it can do by
inheriting a capability (``DecodesLatent``, ``Classifier``, ``ClassLatent``); see ``base``.
"""
from ..registry import Registry

MODELS: Registry = Registry("model")

from .base import ClassLatent, Classifier, ConsistentClassifier, DecodesLatent, LatentModel, reported_terms  # noqa: E402
from .vae import VAE, build_vae  # noqa: E402,F401  (registers "vae")
from .m2 import M2  # noqa: E402,F401  (registers "m2")
from .pcvae import PCVAE  # noqa: E402,F401  (registers "pcvae")
from .hierarchical import Hierarchical  # noqa: E402,F401  (registers "hierarchical")
from .theta import make_bayesian  # noqa: E402

__all__ = ["MODELS", "Hierarchical", "M2", "PCVAE", "VAE", "ClassLatent", "Classifier", "ConsistentClassifier", "DecodesLatent", "LatentModel", "build_model",
           "reported_terms"]


def build_model(cfg, x_shape, n_classes: int | None = None) -> LatentModel:
    """Build the registered model ``cfg.model`` for data of shape ``x_shape`` (and ``n_classes``
    classes, which the semi-supervised models need); with ``cfg.theta`` vb, its decoder Bayesian."""
    model = MODELS[cfg.model](cfg, tuple(x_shape), n_classes)
    if cfg.theta == "vb":
        make_bayesian(model)
    return model
