"""Posterior families q(z|x): each maps an encoder output h of width ``n_params`` to a
distribution with event shape (latent_dim,) that supports ``rsample``, over its ``support`` (R^D, or the
simplex for topic proportions), which the prior must share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import (Dirichlet, Distribution, Independent, Laplace, MultivariateNormal, Normal, StudentT,
                                 constraints)

from ..errors import ConfigError
from ..registry import Registry
from .families import Logistic
from .simplex import LogisticNormal

POSTERIORS: Registry[type["PosteriorFamily"]] = Registry("posterior family")


class PosteriorFamily:
    """A location-scale family, diagonal unless a subclass says otherwise: h = [loc, log scale]."""

    support = constraints.real_vector

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    @classmethod
    def from_config(cls, cfg) -> "PosteriorFamily":
        return cls(cfg.latent_dim)

    @property
    def n_params(self) -> int:
        return 2 * self.latent_dim

    def __call__(self, h: torch.Tensor) -> Distribution:
        loc, log_scale = h.chunk(2, dim=-1)
        return Independent(self.base(loc, log_scale), 1)

    def base(self, loc: torch.Tensor, log_scale: torch.Tensor) -> Distribution:
        raise NotImplementedError


@POSTERIORS.register("normal")
class DiagonalNormal(PosteriorFamily):
    """N(μ, diag σ²) with a log-variance head, h = [μ, log σ²] (Kingma & Welling 2013, appendix C.2)."""

    def __call__(self, h):
        mu, log_var = h.chunk(2, dim=-1)
        return Independent(Normal(mu, (0.5 * log_var).exp(), validate_args=False), 1)


@POSTERIORS.register("full_normal")
class FullNormal(PosteriorFamily):
    """N(μ, LLᵀ) with a Cholesky factor L: h = [μ, log diag L, strictly-lower entries of L]."""

    @property
    def n_params(self):
        d = self.latent_dim
        return 2 * d + d * (d - 1) // 2

    def __call__(self, h):
        d = self.latent_dim
        mu, log_diag, off = h.split([d, d, d * (d - 1) // 2], dim=-1)
        rows, cols = torch.tril_indices(d, d, offset=-1, device=h.device)
        scale_tril = torch.diag_embed(log_diag.exp())
        scale_tril[..., rows, cols] = off
        return MultivariateNormal(mu, scale_tril=scale_tril, validate_args=False)


@POSTERIORS.register("laplace")
class DiagonalLaplace(PosteriorFamily):
    """Laplace(μ, b) per dimension, h = [μ, log b]."""

    def base(self, loc, log_scale):
        return Laplace(loc, log_scale.exp(), validate_args=False)


@POSTERIORS.register("student_t")
class DiagonalStudentT(PosteriorFamily):
    """Student's t(ν, μ, s) per dimension with fixed degrees of freedom ν, h = [μ, log s]."""

    def __init__(self, latent_dim: int, df: float = 5.0):
        super().__init__(latent_dim)
        self.df = df

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.latent_dim, cfg.posterior_df)

    def base(self, loc, log_scale):
        return StudentT(torch.full_like(loc, self.df), loc, log_scale.exp(), validate_args=False)


@POSTERIORS.register("logistic")
class DiagonalLogistic(PosteriorFamily):
    """Logistic(μ, s) per dimension by the inverse CDF, h = [μ, log s]."""

    def base(self, loc, log_scale):
        return Logistic(loc, log_scale.exp(), validate_args=False)


class SimplexPosterior(PosteriorFamily):
    """A family over the simplex Δ^{K-1}, K = latent_dim ≥ 2 (aevb.distributions.simplex)."""

    support = constraints.simplex

    def __init__(self, latent_dim: int):
        if latent_dim < 2:
            raise ConfigError(f"--posterior {self.registered_name} is over the simplex of K = --latent-dim proportions "
                              f"and needs K ≥ 2, got {latent_dim}")
        super().__init__(latent_dim)


@POSTERIORS.register("dirichlet")
class DirichletPosterior(SimplexPosterior):
    """Dir(α) with α = softplus(h) (at least the smallest normal float), h of width K. rsample is torch's
    implicit reparameterisation gradient of its gamma draws (Figurnov et al. 2018); KL from a Dirichlet prior
    in closed form (torch's)."""

    @property
    def n_params(self):
        return self.latent_dim

    def __call__(self, h):
        return Dirichlet(F.softplus(h).clamp(min=torch.finfo(h.dtype).tiny), validate_args=False)


@POSTERIORS.register("logistic_normal")
class LogisticNormalPosterior(SimplexPosterior):
    """θ = softmax(η), η ~ N(μ, diag σ²) in K dimensions (ProdLDA, Srivastava & Sutton 2017), h = [μ, log σ²]
    as for ``normal``; the law of θ on the simplex (simplex.LogisticNormal)."""

    def __call__(self, h):
        mu, log_var = h.chunk(2, dim=-1)
        return LogisticNormal(mu, (0.5 * log_var).exp(), validate_args=False)
