"""Closed-form KL divergences that torch.distributions does not register."""
from __future__ import annotations

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl


@register_kl(MultivariateNormal, Independent)
def _kl_full_normal_diagonal_normal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    """KL(N(μ_q, Σ_q) ‖ N(μ_p, diag σ_p²)) = ½[tr(Σ_p⁻¹Σ_q) + (μ_p-μ_q)ᵀΣ_p⁻¹(μ_p-μ_q) - d
    + log|Σ_p| - log|Σ_q|], with tr(Σ_p⁻¹Σ_q) = ‖diag(1/σ_p) L_q‖_F²."""
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    sigma_p = p.base_dist.scale
    trace = (q.scale_tril / sigma_p.unsqueeze(-1)).pow(2).sum((-2, -1))
    mahalanobis = ((p.base_dist.loc - q.loc) / sigma_p).pow(2).sum(-1)
    log_det_p = 2 * sigma_p.log().sum(-1)
    log_det_q = 2 * q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.event_shape[0] + log_det_p - log_det_q)
