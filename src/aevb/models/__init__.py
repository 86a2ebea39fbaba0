"""Models: encoder + prior + decoder as one object, registered by name and built from a config.

Every model keeps the contract of ``base.LatentModel`` and declares what more it can do by
inheriting a capability (``DecodesLatent``, ``Classifier``, ``ClassLatent``); see ``base``.
"""
from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry = Registry("model")

from .base import ClassLatent, Classifier, ConsistentClassifier, DecodesLatent, LatentModel, conditioned, reported_terms  # noqa: E402
from .vae import VAE, build_vae  # noqa: E402,F401  (registers "vae")
from .m2 import M2  # noqa: E402,F401  (registers "m2")
from .pcvae import PCVAE  # noqa: E402,F401  (registers "pcvae")
from .hierarchical import Hierarchical  # noqa: E402,F401  (registers "hierarchical")
from .theta import make_bayesian  # noqa: E402

__all__ = ["MODELS", "Hierarchical", "M2", "PCVAE", "VAE", "ClassLatent", "Classifier", "ConsistentClassifier", "DecodesLatent",
           "LatentModel", "build_model", "conditioned", "reported_terms"]


def build_model(cfg, x_shape, n_classes: int | None = None, n_batches: int = 0) -> LatentModel:
    """Build the registered model ``cfg.model`` for data of shape ``x_shape`` (and ``n_classes``
    classes, which the semi-supervised models need; ``n_batches`` batches of a covariate s, for a model
    whose builder declares ``takes_batches``); with ``cfg.theta`` vb, its decoder Bayesian."""
    builder = MODELS[cfg.model]
    if n_batches and not getattr(builder, "takes_batches", False):
        raise ConfigError(f"--batch-key conditions the decoder on each cell's batch, and --model {cfg.model} takes "
                          f"no batch: use --model {', '.join(n for n in MODELS if getattr(MODELS[n], 'takes_batches', False))} "
                          "or drop --batch-key")
    model = builder(cfg, tuple(x_shape), n_classes, **({"n_batches": n_batches} if n_batches else {}))
    if cfg.theta == "vb":
        make_bayesian(model)
    return model
