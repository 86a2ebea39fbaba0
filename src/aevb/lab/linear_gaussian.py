"""The linear-Gaussian latent variable model (probabilistic PCA), where everything is exact.

p(z) = N(0, I_d),  p(x|z) = N(Wz + b, σ²I_D)  (Tipping & Bishop 1999), so
p(x) = N(b, WWᵀ + σ²I)  and  p(z|x) = N(M⁻¹Wᵀ(x - b)/σ², M⁻¹),  M = I + WᵀW/σ².

It follows the model interface of ``aevb.objectives`` (``encode``, ``decode``, ``prior``), so
the library's estimators run on it unchanged: ``encode`` is the exact posterior unless an
encoder is given with ``with_encoder``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, kl_divergence


@dataclass(frozen=True)
class LinearGaussian:
    """W: (D, d) loadings, b: (D,) offset, sigma: observation noise σ (a scalar tensor)."""

    W: torch.Tensor
    b: torch.Tensor
    sigma: torch.Tensor
    encoder: Callable[[torch.Tensor], Distribution] | None = None

    @classmethod
    def random(cls, data_dim: int, latent_dim: int, sigma: float = 1.0, signal: float = 1.0,
               generator: torch.Generator | None = None, dtype=torch.float64) -> "LinearGaussian":
        """W with iid N(0, signal²/D) entries (so WᵀW ≈ signal²·I whatever D), b ~ N(0, I)."""
        W = torch.randn(data_dim, latent_dim, generator=generator, dtype=dtype) * signal / math.sqrt(data_dim)
        b = torch.randn(data_dim, generator=generator, dtype=dtype)
        return cls(W, b, torch.tensor(sigma, dtype=dtype))

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def with_encoder(self, encoder: Callable[[torch.Tensor], Distribution]) -> "LinearGaussian":
        """The same model with q(z|x) = encoder(x) in place of the exact posterior."""
        return dataclasses.replace(self, encoder=encoder)

    def prior(self) -> Distribution:
        """p(z) = N(0, I_d)."""
        zeros = self.W.new_zeros(self.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) = N(Wz + b, σ²I), batch shape z.shape[:-1]."""
        return Independent(Normal(z @ self.W.T + self.b, self.sigma, validate_args=False), 1)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x): the given encoder, else the exact posterior."""
        return self.encoder(x) if self.encoder is not None else self.posterior(x)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, WWᵀ + σ²I)."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.data_dim, dtype=self.W.dtype)
        return MultivariateNormal(self.b, covariance_matrix=cov, validate_args=False)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), shape x.shape[:-1]."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """p(z|x) = N(M⁻¹Wᵀ(x - b)/σ², M⁻¹), M = I + WᵀW/σ²; batch shape x.shape[:-1]."""
        precision = torch.eye(self.latent_dim, dtype=self.W.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        loc = (x - self.b) @ self.W @ cov / self.sigma**2
        # one Cholesky factor shared by the batch, not one per datapoint
        scale_tril = torch.linalg.cholesky(cov).expand(loc.shape[:-1] + cov.shape)
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws (x, z) from p(x, z): shapes (n, D) and (n, d)."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.W.dtype)
        eps = torch.randn(n, self.data_dim, generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * eps, z

    def expected_log_likelihood(self, q: Distribution, x: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x|z)] = log N(x; Wm + b, σ²I) - tr(W S Wᵀ)/(2σ²) for q with mean m and
        covariance S (a MultivariateNormal or a diagonal Gaussian)."""
        cov = q.covariance_matrix if isinstance(q, MultivariateNormal) else torch.diag_embed(q.variance)
        trace = (self.W @ cov @ self.W.T).diagonal(dim1=-2, dim2=-1).sum(-1)
        return self.decode(q.mean).log_prob(x) - trace / (2 * self.sigma**2)

    def elbo(self, q: Distribution, x: torch.Tensor) -> torch.Tensor:
        """ELBO(q, x) = E_q[log p(x|z)] - KL(q ‖ p(z)) in closed form (Kingma & Welling 2013, eq. 3)."""
        return self.expected_log_likelihood(q, x) - kl_divergence(q, self.prior())
