"""Why naive Monte Carlo fails: estimate log p(x) of a linear-Gaussian model (known p(x)) by
sampling z from the prior versus importance sampling from q(z|x)
(Kingma & Welling 2013, section 2.1: the naive estimator; Heindl, eqs. 8-11 and appendix A).

Both estimators of p(x) are unbiased: p(x) ≈ 1/K Σ_k p(x|z_k), z_k ~ p(z), and
p(x) ≈ 1/K Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x). Their logs are the IWAE bound of the library
(``iwae_bound``) with q = p(z) and with q = q(z|x). An importance sampler needs about
K ≈ exp KL(p(z|x) ‖ proposal) samples (Chatterjee & Diaconis 2018); KL(p(z|x) ‖ p(z)) grows in
proportion to the latent dimension, KL(p(z|x) ‖ q(z|x)) far more slowly for a q close to the
posterior, so prior sampling breaks down as d grows while importance sampling does not.

q(z|x) here is the diagonal Gaussian with the posterior's marginal means and variances: the
minimiser of KL(p(z|x) ‖ q) over the mean-field family a VAE encoder uses.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from ..objectives import iwae_bound
from .base import LABS, Result, demonstration, save_figure
from .linear_gaussian import LinearGaussian

DATA_PER_LATENT, SIGMA, SIGNAL = 2, 0.5, 1.0


def make_model(latent_dim: int, generator: torch.Generator) -> LinearGaussian:
    """D = 2d observations, WᵀW ≈ I, σ = 0.5: the posterior variance is about σ²/(σ² + 1) = 0.2
    per latent dimension, so KL(p(z|x) ‖ p(z)) grows about linearly in d."""
    return LinearGaussian.random(DATA_PER_LATENT * latent_dim, latent_dim, SIGMA, SIGNAL, generator)


def mean_field(posterior: MultivariateNormal) -> Independent:
    """The diagonal Gaussian with the posterior's marginal means and variances."""
    return Independent(Normal(posterior.loc, posterior.variance.sqrt()), 1)


def estimates(model: LinearGaussian, x: torch.Tensor, proposal: str, samples: int, repeats: int) -> torch.Tensor:
    """``repeats`` independent K-sample estimates of log p(x) for one x of shape (D,), shape
    (repeats,): log 1/K Σ_k p(x, z_k)/r(z_k), z_k ~ r, r = p(z) ("prior") or q(z|x) ("q")."""
    if proposal == "prior":
        encoder = lambda xs: model.prior().expand(xs.shape[:-1])  # noqa: E731
    else:
        encoder = lambda xs: mean_field(model.posterior(xs))  # noqa: E731
    return iwae_bound(model.with_encoder(encoder), x.expand(repeats, -1), samples).elbo


@LABS.register("naive-mc")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """Error and spread of log p(x) estimates from prior sampling and from importance sampling."""
    dims = [1, 2, 4, 8, 16, 32]
    samples, repeats = (500, 50) if quick else (1000, 200)
    rows = []
    for d in dims:
        g = torch.Generator().manual_seed(seed * 1000 + d)
        model = make_model(d, g)
        x = model.sample(1, g)[0][0]
        log_px = model.log_marginal(x).item()
        posterior = model.posterior(x)
        kl_prior = kl_divergence(posterior, model.prior())
        kl_q = kl_divergence(posterior, MultivariateNormal(posterior.loc, torch.diag(posterior.variance)))
        row = [d, kl_prior.item(), kl_q.item()]
        for proposal in ("prior", "q"):
            err = estimates(model, x, proposal, samples, repeats) - log_px
            row += [err.mean().item(), err.std().item()]
        rows.append(row)
    columns = ["latent d", "KL(p(z|x)‖p(z))", "KL(p(z|x)‖q)", "prior: error", "prior: std", "IS: error", "IS: std"]
    figure = _plot(out_dir, np.array(rows), samples)
    return Result(f"log p(x) estimated with K = {samples} samples, {repeats} repeats per d "
                  "(error = mean of estimate - exact log p(x))", columns, rows, figure)


def _plot(out_dir, table: np.ndarray, samples: int) -> Path:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    d = table[:, 0]
    ax = axes[0]
    ax.errorbar(d, table[:, 3], yerr=table[:, 4], fmt="-o", color="C3", capsize=3, label="prior sampling")
    ax.errorbar(d, table[:, 5], yerr=table[:, 6], fmt="-s", color="C0", capsize=3,
                label="importance sampling from q(z|x)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set(xlabel="latent dimension d", ylabel="estimate - log p(x)  [nats]",
           title=f"error of log p(x) estimates (K = {samples}), mean ± std")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(d, table[:, 1], "-o", color="C3", label="KL(p(z|x) ‖ p(z))")
    ax.plot(d, table[:, 2], "-s", color="C0", label="KL(p(z|x) ‖ q(z|x))")
    ax.axhline(math.log(samples), color="k", ls=":", label=f"log K = {math.log(samples):.1f}")
    ax.set(xlabel="latent dimension d", ylabel="nats", title="samples needed: K ≈ exp KL(posterior ‖ proposal)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "naive-mc")
