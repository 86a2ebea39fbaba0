"""Models: encoder + prior + decoder as one object, registered by name and built from a config."""
from ..registry import Registry

MODELS: Registry = Registry("model")

from .vae import VAE, build_vae  # noqa: E402,F401  (registers "vae")

__all__ = ["MODELS", "VAE", "build_model"]


def build_model(cfg, x_shape):
    """Build the registered model ``cfg.model`` for data of shape ``x_shape``."""
    return MODELS[cfg.model](cfg, tuple(x_shape))
