"""Every family the AEVB paper names for the reparameterisation trick (Kingma & Welling 2013,
section 2.4) has a pathwise sampler z = g(ε, λ): torch's where torch has one, ours
(aevb.distributions) where it does not. For each, the lab compares

- the sample mean and variance of ``rsample`` with the exact ones (z-scores from the standard
  errors s/√n and √((m₄ - s⁴)/n)), and
- the pathwise gradient ∇_λ E[f(z)], f(z) = Σ_i T(z_i)², averaged over samples, with the
  closed-form gradient: autograd through E f = Σ Var T + (E T)² written from the exact moments.

T is the identity except for the Cauchy, which has no moments: there T = sin, with
E sin z = sin μ e^{-γ} and E cos 2z = cos 2μ e^{-2γ} from its characteristic function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import (Beta, Cauchy, Chi2, Dirichlet, Distribution, Exponential, FisherSnedecor, Gamma,
                                 Gumbel, Laplace, LogNormal, MultivariateNormal, Normal, Pareto, StudentT, Uniform,
                                 Weibull)

from ..distributions import Erlang, Gompertz, Logistic, MultivariateStudentT, Rayleigh, Reciprocal, Triangular
from .base import LABS, Result, demonstration, mean_and_se, save_figure, z_scores

INVERSE_CDF, LOCATION_SCALE, COMPOSITION = "inverse CDF", "location-scale", "composition"


def _moments(d: Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    return d.mean, d.variance


def _cauchy_sine_moments(d: Cauchy) -> tuple[torch.Tensor, torch.Tensor]:
    """E sin z = sin μ e^{-γ}; Var sin z = (1 - cos 2μ e^{-2γ})/2 - (E sin z)² (z ~ Cauchy(μ, γ))."""
    mean = d.loc.sin() * (-d.scale).exp()
    return mean, (1 - (2 * d.loc).cos() * (-2 * d.scale).exp()) / 2 - mean.pow(2)


@dataclass(frozen=True)
class Family:
    """One row of the table: ``build(**params)`` gives the distribution (a class, or a function
    where a parameter is fixed); ``statistic`` T and
    ``exact`` (E T, Var T) default to z and (mean, variance); ``marginal`` gives the first
    coordinate's distribution of a multivariate family (for the figure)."""

    name: str
    kind: str
    build: Callable[..., Distribution]
    params: dict
    statistic: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda z: z)
    exact: Callable[[Distribution], tuple[torch.Tensor, torch.Tensor]] = _moments
    marginal: Callable[[Distribution], Distribution] | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.params.items()}

    @property
    def source(self) -> str:
        return type(self.build(**self.tensors())).__module__.split(".")[0]


_TRIL = [[1.0, 0.0], [0.5, 0.8]]
FAMILIES = [
    Family("exponential", INVERSE_CDF, Exponential, {"rate": 1.5}),
    Family("Cauchy (T = sin)", INVERSE_CDF, Cauchy, {"loc": 0.5, "scale": 0.8}, statistic=torch.sin,
           exact=_cauchy_sine_moments),
    Family("logistic", f"{INVERSE_CDF}, {LOCATION_SCALE}", Logistic, {"loc": 0.5, "scale": 1.2}),
    Family("Rayleigh", INVERSE_CDF, Rayleigh, {"scale": 1.5}),
    Family("Pareto", INVERSE_CDF, Pareto, {"scale": 1.0, "alpha": 10.0}),
    Family("Weibull", INVERSE_CDF, Weibull, {"scale": 1.0, "concentration": 1.5}),
    Family("reciprocal", INVERSE_CDF, Reciprocal, {"low": 0.5, "high": 4.0}),
    Family("Gompertz", INVERSE_CDF, Gompertz, {"shape": 0.7, "scale": 1.3}),
    Family("Gumbel", INVERSE_CDF, Gumbel, {"loc": 0.5, "scale": 1.2}),
    Family("Erlang (k = 3)", f"{INVERSE_CDF}, {COMPOSITION}", lambda rate: Erlang(3, rate), {"rate": 2.0}),
    Family("Gaussian", LOCATION_SCALE, Normal, {"loc": 0.5, "scale": 1.2}),
    Family("Laplace", LOCATION_SCALE, Laplace, {"loc": 0.5, "scale": 1.2}),
    Family("elliptical: multivariate normal", LOCATION_SCALE, MultivariateNormal,
           {"loc": [0.5, -1.0], "scale_tril": _TRIL}, marginal=lambda d: Normal(d.loc[0], d.variance[0].sqrt())),
    Family("elliptical: multivariate t", LOCATION_SCALE, MultivariateStudentT,
           {"df": 10.0, "loc": [0.5, -1.0], "scale_tril": _TRIL},
           marginal=lambda d: StudentT(d.df, d.loc[0], d.scale_tril[0].norm())),
    Family("Student's t", LOCATION_SCALE, StudentT, {"df": 10.0, "loc": 0.5, "scale": 1.2}),
    Family("uniform", LOCATION_SCALE, Uniform, {"low": -1.0, "high": 2.0}),
    Family("triangular", LOCATION_SCALE, Triangular, {"low": -1.0, "peak": 0.5, "high": 2.0}),
    Family("log-normal", COMPOSITION, LogNormal, {"loc": 0.0, "scale": 0.3}),
    Family("gamma", COMPOSITION, Gamma, {"concentration": 2.5, "rate": 1.5}),
    Family("Dirichlet", COMPOSITION, Dirichlet, {"concentration": [2.0, 3.0, 4.0]},
           marginal=lambda d: Beta(d.concentration[0], d.concentration.sum() - d.concentration[0])),
    Family("beta", COMPOSITION, Beta, {"concentration1": 2.0, "concentration0": 3.0}),
    Family("chi-squared", COMPOSITION, Chi2, {"df": 4.0}),
    Family("F", COMPOSITION, FisherSnedecor, {"df1": 6.0, "df2": 20.0}),
]


@dataclass
class Check:
    """Sample and exact moments of T(z), pathwise and exact gradients of E f, flattened over
    coordinates and parameters, with the z-score of every comparison."""

    samples: torch.Tensor
    mean: torch.Tensor
    mean_exact: torch.Tensor
    var: torch.Tensor
    var_exact: torch.Tensor
    grad: torch.Tensor
    grad_exact: torch.Tensor
    z: torch.Tensor


def check(family: Family, n: int) -> Check:
    """Moments of n draws of ``rsample`` and the pathwise gradient of E f against the exact ones."""
    params = family.tensors()
    dist = family.build(**params)
    if not dist.has_rsample:
        raise TypeError(f"{family.name}: {type(dist).__name__} has no rsample")
    with torch.no_grad():
        z = dist.rsample((n,))
    t = family.statistic(z).reshape(n, -1)
    mean, mean_se = mean_and_se(t)
    var = t.var(0)
    var_se = (((t - mean).pow(4).mean(0) - var.pow(2)) / n).sqrt()
    mean_exact, var_exact = (v.reshape(-1).detach() for v in family.exact(dist))

    # every sample gets its own copy of the parameters: one backward pass, n per-sample gradients
    replicas = {k: v.expand((n,) + v.shape).clone().requires_grad_() for k, v in params.items()}
    f = family.statistic(family.build(**replicas).rsample()).pow(2).reshape(n, -1).sum(-1)
    grad = torch.cat([g.reshape(n, -1) for g in torch.autograd.grad(f.sum(), list(replicas.values()))], -1)
    exact_params = {k: v.clone().requires_grad_() for k, v in params.items()}
    exact_mean, exact_var = family.exact(family.build(**exact_params))
    expected_f = (exact_var + exact_mean.pow(2)).sum()
    grad_exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected_f, list(exact_params.values()))])
    grad_mean, grad_se = mean_and_se(grad)
    z_all = torch.cat([z_scores(mean, mean_exact, mean_se), z_scores(var, var_exact, var_se),
                       z_scores(grad_mean, grad_exact, grad_se)])
    return Check(z, mean, mean_exact, var, var_exact, grad_mean, grad_exact, z_all)


@LABS.register("reparam-families")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """The table of section 2.4: moments and pathwise gradients of every family."""
    n = 20_000 if quick else 200_000
    rows, checks = [], []
    for family in FAMILIES:
        c = check(family, n)
        checks.append(c)
        first = next(iter(family.params))
        rows.append([family.name, family.kind, family.source, c.mean[0].item(), c.mean_exact[0].item(),
                     c.var[0].item(), c.var_exact[0].item(), first, c.grad[0].item(), c.grad_exact[0].item(),
                     c.z.max().item()])
    columns = ["family", "kind", "from", "mean", "exact", "var", "exact", "θ₁", "∂E[f]/∂θ₁ pathwise", "exact",
               "max |z|"]
    figure = _plot(out_dir, checks)
    return Result(f"Reparameterised samplers, n = {n} draws each (first coordinate shown; f = Σ T(z)², T = z "
                  "unless named; max |z| over all moments and parameter gradients)", columns, rows, figure)


def _plot(out_dir, checks) -> Path:
    cols = 5
    fig = Figure(figsize=(3.0 * cols, 2.4 * math.ceil(len(FAMILIES) / cols)))
    axes = fig.subplots(math.ceil(len(FAMILIES) / cols), cols).ravel()
    for ax, family, c in zip(axes, FAMILIES, checks):
        dist = family.build(**family.tensors())
        first = c.samples.reshape(len(c.samples), -1)[:, 0]
        lo, hi = np.quantile(first.numpy(), [0.02, 0.98])
        counts, edges = np.histogram(first.numpy(), bins=60, range=(lo, hi))
        # counts/(n·width): in-range bars are the density, the tails left out
        ax.stairs(counts / (len(first) * (edges[1] - edges[0])), edges, fill=True, color="0.8")
        grid = torch.linspace(lo, hi, 300, dtype=torch.float64)
        density = (family.marginal(dist) if family.marginal else dist).log_prob(grid).exp()
        ax.plot(grid, density, "C3", lw=1.5)
        ax.set_title(f"{family.name}\n({family.source})", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])  # the overlay, not the density scale, is the point
    for ax in axes[len(FAMILIES):]:
        ax.axis("off")
    fig.suptitle("rsample histograms (grey) against exp(log_prob) (red); multivariate: first coordinate", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "reparam-families")
