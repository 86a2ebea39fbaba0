"""Latents on the probability simplex Δ^{K-1} = {θ ∈ R^K : θ_k ≥ 0, Σ_k θ_k = 1}, such as the topic
proportions of a document: the Dirichlet, and the logistic normal θ = softmax(η), η ~ N(μ, diag σ²) in K
dimensions, ProdLDA's posterior (Srivastava & Sutton 2017), with its Laplace approximation of a Dirichlet prior.

The logistic normal is the law of θ itself, with a density on the simplex (Aitchison 1982): in additive
log-ratio coordinates u_k = log θ_k - log θ_K = η_k - η_K (k < K), u ~ N(μ_{<K} - μ_K, diag σ²_{<K} + σ_K² 11ᵀ),
a (K-1)-dimensional Gaussian of rank-one-plus-diagonal covariance (torch's LowRankMultivariateNormal), mapped
to the simplex by softmax([u, 0]). So log q(θ) is exact, every estimator (A, B, IWAE) sees the same latent θ,
and KL(q ‖ p) between two logistic normals is the closed-form KL of their log-ratio Gaussians (torch's
TransformedDistribution KL). ProdLDA's KL between the K-dimensional η Gaussians is an upper bound on it (the
log-ratios are a function of η), so this bound is at least as tight as the paper's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import LowRankMultivariateNormal, TransformedDistribution, constraints
from torch.distributions.transforms import Transform

MEAN_DRAWS = 1000  # draws behind LogisticNormal.mean: each coordinate within 0.5/√1000 = 0.016 (sd of θ_k ≤ ½)


class AdditiveLogistic(Transform):
    """u ∈ R^{K-1} ↦ θ = softmax([u, 0]) ∈ Δ^{K-1}, the inverse additive log-ratio (Aitchison 1982), with inverse
    u_k = log θ_k - log θ_K. Its Jacobian ∂θ_{<K}/∂u = diag(θ_{<K}) - θ_{<K} θ_{<K}ᵀ has determinant
    Π_{k≤K} θ_k, so log |det J| = Σ_k log θ_k (the density on the simplex is over its first K-1 coordinates,
    as torch's Dirichlet's is)."""

    domain = constraints.real_vector
    codomain = constraints.simplex
    bijective = True

    def __init__(self, cache_size: int = 1):  # the cache gives log q(θ) of a draw θ from its own u, never log θ = -inf
        super().__init__(cache_size=cache_size)

    def __eq__(self, other):
        return isinstance(other, AdditiveLogistic)

    def _call(self, u):
        return torch.softmax(F.pad(u, (0, 1)), -1)

    def _inverse(self, theta):
        log_theta = theta.log()
        return log_theta[..., :-1] - log_theta[..., -1:]

    def log_abs_det_jacobian(self, u, theta):
        return torch.log_softmax(F.pad(u, (0, 1)), -1).sum(-1)

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)


class LogisticNormal(TransformedDistribution):
    """θ = softmax(η), η ~ N(loc, diag scale²) in R^K (ProdLDA's q(θ|x); loc and scale (..., K)), as the law of
    θ on the simplex: the log-ratio Gaussian of the module docstring through ``AdditiveLogistic``. rsample is
    reparameterised (u = m + σ_K ε_0 1 + σ_{<K} ε); event shape (K,)."""

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.independent(constraints.positive, 1)}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        ratio_scale = self.scale[..., -1:, None].expand(*self.scale.shape[:-1], self.scale.shape[-1] - 1, 1)
        log_ratios = LowRankMultivariateNormal(self.loc[..., :-1] - self.loc[..., -1:], ratio_scale,
                                               self.scale[..., :-1].pow(2), validate_args=False)
        super().__init__(log_ratios, AdditiveLogistic(), validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        """E[θ], which has no closed form: the mean of softmax(loc + scale ε) over MEAN_DRAWS draws ε ~ N(0, I)
        fixed once (seed 0) and shared by every datapoint, so that the means of two datapoints differ by their
        parameters and not by Monte Carlo noise; each coordinate is within 0.5/√MEAN_DRAWS of E[θ_k] (one sd)."""
        generator = torch.Generator(device=self.loc.device).manual_seed(0)
        eps = torch.randn(MEAN_DRAWS, self.loc.shape[-1], generator=generator, device=self.loc.device,
                          dtype=self.loc.dtype)
        eps = eps.view(MEAN_DRAWS, *(1,) * (self.loc.dim() - 1), -1)
        return sum(torch.softmax(self.loc + self.scale * e, -1).sum(0) for e in eps.split(100)) / MEAN_DRAWS


def laplace_dirichlet(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and diagonal variance of η whose softmax approximates Dir(α) (Laplace approximation in the
    softmax basis, MacKay 1998; Srivastava & Sutton 2017, eq. 3): μ_k = log α_k - (1/K) Σ_i log α_i and
    Σ_kk = (1/α_k)(1 - 2/K) + (1/K²) Σ_i 1/α_i."""
    k = alpha.shape[-1]
    mu = alpha.log() - alpha.log().mean(-1, keepdim=True)
    var = (1 - 2 / k) / alpha + alpha.reciprocal().sum(-1, keepdim=True) / k**2
    return mu, var
