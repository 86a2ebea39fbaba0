"""Priors p(z) as modules, so that learnable ones train with the model and all follow its device."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Dirichlet, Distribution, Independent, MixtureSameFamily, Normal, constraints

from ..errors import ConfigError
from ..registry import Registry
from .posteriors import POSTERIORS
from .simplex import LogisticNormal, laplace_dirichlet

PRIORS: Registry[type[nn.Module]] = Registry("prior")


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I): the prior of Kingma & Welling 2013 (a closed-form KL exists for Gaussian q)."""

    support = constraints.real_vector

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

    support = constraints.real_vector

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


class _SymmetricDirichlet(nn.Module):
    """A prior over the simplex Δ^{K-1} (K = latent_dim ≥ 2) from Dir(α, ..., α), α = ``--prior-concentration``,
    by default 1/K (the document-topic prior of scikit-learn's and gensim's LDA)."""

    support = constraints.simplex

    def __init__(self, latent_dim: int, concentration: float | None = None):
        super().__init__()
        if latent_dim < 2:
            raise ConfigError(f"--prior {self.registered_name} is over the simplex of K = --latent-dim proportions and "
                              f"needs K ≥ 2, got {latent_dim}")
        alpha = 1 / latent_dim if concentration is None else concentration
        self.register_buffer("concentration", torch.full((latent_dim,), float(alpha)), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.latent_dim, cfg.prior_concentration)


@PRIORS.register("dirichlet")
class DirichletPrior(_SymmetricDirichlet):
    """p(θ) = Dir(α 1_K); KL(Dir(α_q) ‖ Dir(α)) in closed form (torch's) from a Dirichlet posterior."""

    def forward(self) -> Distribution:
        return Dirichlet(self.concentration, validate_args=False)


@PRIORS.register("laplace_dirichlet")
class LaplaceDirichlet(_SymmetricDirichlet):
    """ProdLDA's prior (Srivastava & Sutton 2017, eq. 3): the logistic normal softmax(η), η ~ N(μ, diag Σ), of the
    Laplace approximation of Dir(α 1_K) (``simplex.laplace_dirichlet``); KL from a logistic-normal posterior in
    closed form."""

    def forward(self) -> Distribution:
        mu, var = laplace_dirichlet(self.concentration)
        return LogisticNormal(mu, var.sqrt(), validate_args=False)


def latent_families(cfg):
    """The posterior family and the prior module of a ModelConfig, which must share one latent space (R^D or
    the simplex): a ConfigError where they do not, or where --prior-concentration is set for a prior without one."""
    posterior, prior = POSTERIORS[cfg.posterior].from_config(cfg), PRIORS[cfg.prior].from_config(cfg)
    if cfg.prior_concentration is not None and not isinstance(prior, _SymmetricDirichlet):
        takers = [name for name in PRIORS if issubclass(PRIORS[name], _SymmetricDirichlet)]
        raise ConfigError(f"--prior-concentration applies to --prior {' and '.join(takers)}, not {cfg.prior}")
    if posterior.support is not prior.support:
        where = lambda support: "the simplex" if support is constraints.simplex else "R^D"  # noqa: E731
        same = [name for name in PRIORS if PRIORS[name].support is posterior.support]
        raise ConfigError(f"--posterior {cfg.posterior} is over {where(posterior.support)} but --prior {cfg.prior} "
                          f"over {where(prior.support)}; choose --prior {' or '.join(same)}")
    return posterior, prior
