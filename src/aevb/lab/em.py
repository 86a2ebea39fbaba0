"""The EM algorithm (Dempster, Laird & Rubin 1977; Heindl, section 6) for a Gaussian mixture and
for probabilistic PCA: each iteration maximises the ELBO over q(z|x) = p(z|x; θ_t) (E-step, the
gap KL(q ‖ p(z|x)) becomes 0) and then over θ (M-step), so log p(x; θ) never decreases.

- Gaussian mixture: responsibilities r_nk = π_k N(x_n; μ_k, Σ_k) / Σ_j π_j N(x_n; μ_j, Σ_j);
  π_k = N_k/N, μ_k = Σ_n r_nk x_n / N_k, Σ_k = Σ_n r_nk (x_n - μ_k)(x_n - μ_k)ᵀ / N_k
  (Bishop 2006, eqs. 9.23-9.27). Checked against scikit-learn's GaussianMixture run from the
  same initialisation.
- Probabilistic PCA: E[z_n] and E[z_n z_nᵀ] from the exact posterior of the linear-Gaussian
  model; W = [Σ_n (x_n - x̄) E[z_n]ᵀ][Σ_n E[z_n z_nᵀ]]⁻¹,
  σ² = 1/(ND) Σ_n {‖x_n - x̄‖² - 2 E[z_n]ᵀWᵀ(x_n - x̄) + tr(E[z_n z_nᵀ] WᵀW)} (Bishop 2006,
  eqs. 12.54-12.57). Checked against the closed-form maximum likelihood (Tipping & Bishop 1999)
  of scikit-learn's PCA.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from .base import LABS, Result, demonstration, save_figure
from .linear_gaussian import LinearGaussian

TRUE_WEIGHTS = (0.5, 0.3, 0.2)
TRUE_MEANS = ((-2.5, 0.0), (2.0, 2.0), (1.5, -2.5))
TRUE_COVS = (((1.0, 0.6), (0.6, 1.0)), ((0.6, -0.3), (-0.3, 0.8)), ((0.5, 0.0), (0.0, 0.3)))


@dataclass
class Mixture:
    """Gaussian mixture parameters: weights (K,), means (K, D), covariances (K, D, D)."""

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor

    def distribution(self) -> MixtureSameFamily:
        """p(x) = Σ_k π_k N(x; μ_k, Σ_k)."""
        return MixtureSameFamily(Categorical(probs=self.weights), MultivariateNormal(self.means, self.covs))

    def log_likelihood(self, X: torch.Tensor) -> float:
        """1/N Σ_n log p(x_n)."""
        return self.distribution().log_prob(X).mean().item()


def gmm_data(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points from the three-component mixture TRUE_*; shape (n, 2)."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    k = torch.multinomial(t(TRUE_WEIGHTS), n, replacement=True, generator=generator)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return t(TRUE_MEANS)[k] + (torch.linalg.cholesky(t(TRUE_COVS))[k] @ eps.unsqueeze(-1)).squeeze(-1)


def gmm_init(X: torch.Tensor, k: int, generator: torch.Generator) -> Mixture:
    """Uniform weights, means at k distinct random data points, identity covariances."""
    idx = torch.randperm(len(X), generator=generator)[:k]
    eye = torch.eye(X.shape[1], dtype=X.dtype)
    return Mixture(torch.full((k,), 1 / k, dtype=X.dtype), X[idx].clone(), eye.repeat(k, 1, 1))


def gmm_em_step(X: torch.Tensor, theta: Mixture) -> Mixture:
    """One E-step (responsibilities) and M-step (weighted ML of each component)."""
    log_joint = MultivariateNormal(theta.means, theta.covs).log_prob(X.unsqueeze(1)) + theta.weights.log()
    resp = (log_joint - log_joint.logsumexp(1, keepdim=True)).exp()
    nk = resp.sum(0)
    means = resp.T @ X / nk.unsqueeze(-1)
    diff = X.unsqueeze(1) - means
    covs = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
    return Mixture(nk / len(X), means, covs)


def gmm_em(X: torch.Tensor, theta: Mixture, iterations: int) -> tuple[Mixture, list[float]]:
    """``iterations`` EM steps; the log-likelihood before each step and after the last."""
    trace = [theta.log_likelihood(X)]
    for _ in range(iterations):
        theta = gmm_em_step(X, theta)
        trace.append(theta.log_likelihood(X))
    return theta, trace


def sklearn_gmm(X: torch.Tensor, init: Mixture, iterations: int):
    """scikit-learn's GaussianMixture from the same initialisation for the same number of
    iterations (tol 0, no covariance regularisation)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(len(init.weights), covariance_type="full", tol=0.0, reg_covar=0.0, max_iter=iterations,
                         weights_init=init.weights.numpy(), means_init=init.means.numpy(),
                         precisions_init=torch.linalg.inv(init.covs).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X.numpy())
    return gm


def ppca_em_step(X: torch.Tensor, model: LinearGaussian) -> LinearGaussian:
    """One EM step for probabilistic PCA; b = x̄ is its closed-form ML and stays fixed."""
    posterior = model.posterior(X)
    Ez = posterior.loc
    Ezz = posterior.covariance_matrix.sum(0) + Ez.T @ Ez
    centred = X - model.b
    W = centred.T @ Ez @ torch.linalg.inv(Ezz)
    sigma2 = (centred.pow(2).sum() - 2 * (Ez @ W.T * centred).sum() + torch.trace(Ezz @ W.T @ W)) / X.numel()
    return LinearGaussian(W, model.b, sigma2.sqrt())


def ppca_em(X: torch.Tensor, latent_dim: int, iterations: int, generator: torch.Generator):
    """EM from W ~ N(0, 1), σ = 1; the final model and the log-likelihood per iteration."""
    model = LinearGaussian(torch.randn(X.shape[1], latent_dim, generator=generator, dtype=X.dtype), X.mean(0),
                           torch.tensor(1.0, dtype=X.dtype))
    trace = [model.log_marginal(X).mean().item()]
    for _ in range(iterations):
        model = ppca_em_step(X, model)
        trace.append(model.log_marginal(X).mean().item())
    return model, trace


def ppca_ml_covariance(X: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """The closed-form ML covariance WWᵀ + σ²I of probabilistic PCA from scikit-learn's PCA,
    rescaled by (N-1)/N: sklearn normalises the sample covariance by N-1, ML by N."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=latent_dim).fit(X.numpy())
    return torch.as_tensor(pca.get_covariance()) * (len(X) - 1) / len(X)


@LABS.register("em")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """EM for a Gaussian mixture and for probabilistic PCA, against scikit-learn."""
    g = torch.Generator().manual_seed(seed)
    gmm_iters, ppca_iters = (30, 100) if quick else (60, 200)
    X = gmm_data(600, g)
    init = gmm_init(X, 3, g)
    theta, gmm_trace = gmm_em(X, init, gmm_iters)
    gm = sklearn_gmm(X, init, gmm_iters)
    sk = Mixture(*(torch.as_tensor(a) for a in (gm.weights_, gm.means_, gm.covariances_)))
    gmm_diff = max((a - b).abs().max().item() for a, b in zip((theta.weights, theta.means, theta.covs),
                                                               (sk.weights, sk.means, sk.covs)))

    true_model = LinearGaussian.random(8, 2, sigma=0.5, signal=2.0, generator=g)
    Y = true_model.sample(500, g)[0]
    ppca, ppca_trace = ppca_em(Y, 2, ppca_iters, g)
    ml_cov = ppca_ml_covariance(Y, 2)
    ml_ll = MultivariateNormal(Y.mean(0), ml_cov).log_prob(Y).mean().item()
    ppca_diff = (ppca.marginal().covariance_matrix - ml_cov).abs().max().item()

    rows = [["Gaussian mixture (K=3, 2-d, N=600)", gmm_iters, min(np.diff(gmm_trace)), gmm_trace[-1],
             "sklearn GaussianMixture, same init", sk.log_likelihood(X), gmm_diff],
            ["probabilistic PCA (D=8, d=2, N=500)", ppca_iters, min(np.diff(ppca_trace)), ppca_trace[-1],
             "closed-form ML (sklearn PCA)", ml_ll, ppca_diff]]
    columns = ["model", "iterations", "min Δ log-lik", "log-lik (EM)", "reference", "log-lik (ref)",
               "max |Δ parameter|"]
    figure = _plot(out_dir, X, theta, sk, gmm_trace, gm.lower_bounds_, ppca_trace, ml_ll)
    return Result("EM never decreases the log-likelihood (mean per datapoint, nats) and reaches the reference",
                  columns, rows, figure)


def _plot(out_dir, X, theta, sk, gmm_trace, sk_trace, ppca_trace, ml_ll) -> Path:
    fig = Figure(figsize=(15, 4.3))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    labels = MultivariateNormal(theta.means, theta.covs).log_prob(X.unsqueeze(1)).add(theta.weights.log()).argmax(1)
    ax.scatter(X[:, 0], X[:, 1], c=[f"C{k}" for k in labels.tolist()], s=6, alpha=0.5)
    angle = torch.linspace(0, 2 * np.pi, 200, dtype=X.dtype)
    circle = 2 * torch.stack([angle.cos(), angle.sin()], -1)
    for params, style in ((theta, "k-"), (sk, "r--")):
        for mean, cov in zip(params.means, params.covs):
            pts = mean + circle @ torch.linalg.cholesky(cov).T
            ax.plot(pts[:, 0], pts[:, 1], style, lw=1.5)
    ax.plot([], [], "k-", label="EM (ours), 2σ")
    ax.plot([], [], "r--", label="sklearn GaussianMixture")
    ax.set_aspect("equal")
    ax.set(title="Gaussian mixture fit", xlabel="x₁", ylabel="x₂")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(range(len(gmm_trace)), gmm_trace, "C0-", label="EM (ours)")
    ax.plot(range(len(sk_trace)), sk_trace, "r.", ms=4, label="sklearn (before each M-step)")
    ax.set(title="mixture: log-likelihood per iteration", xlabel="iteration", ylabel="1/N Σ log p(x_n)")
    ax.legend(fontsize=8)
    ax = axes[2]
    gap = ml_ll - np.array(ppca_trace)
    ax.semilogy(np.clip(gap, 1e-16, None), "C2")
    ax.set(title="probabilistic PCA: distance to the ML log-likelihood", xlabel="iteration",
           ylabel="log-lik(ML) - log-lik(EM)")
    return save_figure(fig, out_dir, "em")
