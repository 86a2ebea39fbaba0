"""The ELBO gap: log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x)) (Heindl, appendix C, eqs. 83-91),
on the linear-Gaussian model where p(x) and p(z|x) are exact.

For a family of Gaussians q, the lab checks the identity in closed form, estimates the ELBO
both ways with the library's estimators (SGVB A: E_q[log p(x, z) - log q(z|x)], eq. 12;
SGVB B: E_q[log p(x|z)] - KL(q ‖ p(z)), eq. 17), and shows that the gap closes at the exact
posterior, where log p(x, z) - log q(z|x) = log p(x) for every z (a zero-variance estimator).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import MultivariateNormal, kl_divergence

from ..objectives import sgvb_a, sgvb_b
from .base import LABS, Result, demonstration, mean_and_se, save_figure
from .linear_gaussian import LinearGaussian


def make_model(generator: torch.Generator) -> LinearGaussian:
    """D = 5 observations of d = 2 latents, σ = 0.5, the two columns of W mixed (cosine ≈ 0.8)
    so that the posterior is tighter than the prior and correlated."""
    model = LinearGaussian.random(5, 2, sigma=0.5, signal=1.5, generator=generator)
    W = torch.stack([model.W[:, 0], 0.8 * model.W[:, 0] + 0.6 * model.W[:, 1]], -1)
    return dataclasses.replace(model, W=W)


def interpolate(posterior: MultivariateNormal, t: float) -> MultivariateNormal:
    """q_t = N(t μ, (1 - t) I + t Σ): the prior at t = 0, the exact posterior N(μ, Σ) at t = 1."""
    eye = torch.eye(posterior.loc.shape[-1], dtype=posterior.loc.dtype)
    return MultivariateNormal(t * posterior.loc, (1 - t) * eye + t * posterior.covariance_matrix)


def mean_field(posterior: MultivariateNormal) -> MultivariateNormal:
    """argmin KL(q ‖ p(z|x)) over diagonal Gaussians: mean μ, variances 1/Λ_ii, Λ = Σ⁻¹
    (the mean-field optimum for a Gaussian target; its gap KL(q ‖ p(z|x)) stays > 0)."""
    return MultivariateNormal(posterior.loc, torch.diag(1 / posterior.precision_matrix.diagonal(dim1=-2, dim2=-1)))


def candidates(posterior: MultivariateNormal) -> dict[str, MultivariateNormal]:
    """The q's of the table."""
    shifted = MultivariateNormal(posterior.loc + 0.5, posterior.covariance_matrix)
    return {"prior (t=0)": interpolate(posterior, 0.0), "t=0.5": interpolate(posterior, 0.5),
            "mean-field optimum": mean_field(posterior), "posterior, mean + 0.5": shifted,
            "exact posterior (t=1)": interpolate(posterior, 1.0)}


def monte_carlo(model: LinearGaussian, q: MultivariateNormal, x: torch.Tensor, estimator, repeats: int):
    """Mean and standard error of ``repeats`` one-sample estimates of the ELBO at x (shape (D,))
    by a library estimator (sgvb_a or sgvb_b) with q(z|x) = q."""
    values = estimator(model.with_encoder(lambda xs: q.expand(xs.shape[:-1])), x.expand(repeats, -1)).elbo
    return mean_and_se(values)


@LABS.register("elbo-gap")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """log p(x) = ELBO(q) + KL(q ‖ p(z|x)) for a family of q, closed form and Monte Carlo."""
    repeats = 20_000 if quick else 200_000
    g = torch.Generator().manual_seed(seed)
    model = make_model(g)
    x = model.sample(1, g)[0][0]
    log_px = model.log_marginal(x).item()
    posterior = model.posterior(x)
    rows = []
    for name, q in candidates(posterior).items():
        (a, a_se), (b, b_se) = (monte_carlo(model, q, x, est, repeats) for est in (sgvb_a, sgvb_b))
        elbo, gap = model.elbo(q, x).item(), kl_divergence(q, posterior).item()
        rows.append([name, a.item(), a_se.item(), b.item(), b_se.item(), elbo, gap, elbo + gap - log_px, log_px])
    columns = ["q(z|x)", "A: E[log p(x,z) - log q]", "SE", "B: E[log p(x|z)] - KL(q‖p(z))", "SE",
               "ELBO exact", "KL(q‖p(z|x))", "ELBO + KL - log p(x)", "log p(x)"]
    figure = _plot(out_dir, model, x, posterior, log_px, rows)
    return Result(f"log p(x) = ELBO + KL(q‖p(z|x)) on a linear-Gaussian model (D=5, d=2), "
                  f"Monte Carlo over {repeats} one-sample estimates", columns, rows, figure)


def _ellipse(ax, q: MultivariateNormal, **style):
    """The 2-standard-deviation contour of a 2-d Gaussian."""
    angle = torch.linspace(0, 2 * np.pi, 200, dtype=q.loc.dtype)
    circle = 2 * torch.stack([angle.cos(), angle.sin()], -1)
    points = q.loc + circle @ q.scale_tril.T
    ax.plot(points[:, 0], points[:, 1], **style)


def _plot(out_dir, model, x, posterior, log_px, rows) -> Path:
    fig = Figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2)
    ts = np.linspace(0, 1, 41)
    elbos = np.array([model.elbo(interpolate(posterior, t), x).item() for t in ts])
    ax = axes[0]
    ax.plot(ts, elbos, "C0", label="ELBO(q_t), closed form")
    ax.axhline(log_px, color="k", label="log p(x)")
    ax.fill_between(ts, elbos, log_px, color="C1", alpha=0.3, label="gap = KL(q_t ‖ p(z|x))")
    for t, row in ((0.0, rows[0]), (0.5, rows[1]), (1.0, rows[-1])):
        ax.errorbar(t - 0.01, row[1], yerr=5 * row[2], fmt="o", color="C2", ms=4)
        ax.errorbar(t + 0.01, row[3], yerr=5 * row[4], fmt="s", color="C3", ms=4)
    ax.plot([], [], "o", color="C2", label="SGVB A (MC, ±5 SE)")
    ax.plot([], [], "s", color="C3", label="SGVB B (MC, ±5 SE)")
    ax.set(xlabel="t  (q_t = N(tμ, (1-t)I + tΣ): prior → posterior)", ylabel="nats",
           title="the ELBO rises to log p(x) as q → p(z|x)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    _ellipse(ax, posterior, color="k", lw=2.5, label="exact posterior p(z|x)")
    for (name, q), color in zip(candidates(posterior).items(), ("C0", "C4", "C2", "C3", "C1")):
        _ellipse(ax, q, color=color, ls="--", label=f"q: {name}")
    ax.set_aspect("equal")
    ax.set(xlabel="z₁", ylabel="z₂", title="the q's of the table (2σ contours)")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, out_dir, "elbo-gap")
