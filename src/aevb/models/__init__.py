"""Models: encoder + prior + decoder as one object, registered by name and built from a config.

A semi-supervised model (``semi_supervised = True``: M2, the PC-VAE) also has
``labelled_elbo(x, y, ...)``, ``class_log_prob(x, y)`` = log q(y|x) and ``classify(x)``; the
trainer then draws a labelled batch beside the unlabelled one in every step.
"""
import torch

from ..registry import Registry

MODELS: Registry = Registry("model")

from .vae import VAE, build_vae  # noqa: E402,F401  (registers "vae")
from .m2 import M2  # noqa: E402,F401  (registers "m2")
from .pcvae import PCVAE  # noqa: E402,F401  (registers "pcvae")

__all__ = ["MODELS", "M2", "PCVAE", "VAE", "build_model", "is_semi_supervised", "predict"]


def build_model(cfg, x_shape, n_classes: int | None = None):
    """Build the registered model ``cfg.model`` for data of shape ``x_shape`` (and ``n_classes``
    classes, which the semi-supervised models need)."""
    return MODELS[cfg.model](cfg, tuple(x_shape), n_classes)


def is_semi_supervised(model) -> bool:
    return getattr(model, "semi_supervised", False)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The most probable class under a semi-supervised model's classifier, computed in batches."""
    return torch.cat([model.classify(x[i:i + batch_size]).logits.argmax(-1) for i in range(0, len(x), batch_size)])
