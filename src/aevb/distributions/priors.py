"""Priors p(z) as modules, so that learnable ones train with the model and all follow its device."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from ..registry import Registry

PRIORS: Registry[type[nn.Module]] = Registry("prior")


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I): the prior of Kingma & Welling 2013 (a closed-form KL exists for Gaussian q)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> "StandardNormal":
        return cls(cfg.latent_dim)

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)


@PRIORS.register("mixture_of_gaussians")
class MixtureOfGaussians(nn.Module):
    """p(z) = Σ_k π_k N(μ_k, diag σ_k²) with learnable π, μ, σ. KL(q‖p) has no closed form,
    so the ELBO falls back to Monte Carlo (SGVB estimator A)."""

    def __init__(self, latent_dim: int, components: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    @classmethod
    def from_config(cls, cfg) -> "MixtureOfGaussians":
        return cls(cfg.latent_dim, cfg.prior_components)

    def forward(self) -> Distribution:
        components = Independent(Normal(self.means, self.log_scales.exp(), validate_args=False), 1)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), components, validate_args=False)
