"""Score-function versus pathwise estimators of ∇_λ E_q[f(z)], q = N(μ, diag σ²), λ = (μ, σ)
(Heindl, appendices A.1 and A.2; Kingma & Welling 2013, section 2.2 and 2.4).

- score function (eq. 40): f(z) ∇_λ log q(z; λ), z ~ q, through ``score_function_surrogate``;
- pathwise (eq. 43): ∇_λ f(μ + σ ε), ε ~ N(0, I), through ``rsample``.

Both are unbiased; the lab measures their means against the exact gradient (where one
exists), and their variance against the number of samples L (∝ 1/L for both) and against the
dimension d (the score-function variance of ∂/∂μ₁ grows with d because f sums over all d
coordinates, the pathwise one does not for a separable f).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import Independent, Normal

from ..objectives import score_function_surrogate
from .base import LABS, Result, demonstration, mean_and_se, save_figure, z_scores

MU, SIGMA = 0.5, 0.8
ESTIMATORS = ("score function", "pathwise")


@dataclass
class TestFunction:
    """f: (..., d) -> (...), and the exact (∇_μ, ∇_σ) E_q f for q = N(μ, diag σ²), if known."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def quadratic() -> TestFunction:
    """f = Σ (z_i - 1)²: E f = Σ (μ_i - 1)² + σ_i², ∇ = (2(μ - 1), 2σ)."""
    return TestFunction("quadratic", lambda z: (z - 1).pow(2).sum(-1),
                        lambda mu, sigma: torch.cat([2 * (mu - 1), 2 * sigma]))


def sine() -> TestFunction:
    """f = Σ sin z_i: E f = Σ sin μ_i e^{-σ_i²/2}, ∇ = (cos μ e^{-σ²/2}, -σ sin μ e^{-σ²/2})."""
    def exact(mu, sigma):
        damp = (-sigma.pow(2) / 2).exp()
        return torch.cat([mu.cos() * damp, -sigma * mu.sin() * damp])

    return TestFunction("sine", lambda z: z.sin().sum(-1), exact)


def neural_net(dim: int, generator: torch.Generator, hidden: int = 16) -> TestFunction:
    """f = vᵀ tanh(Az + c)/√h with fixed random A, c, v: no closed-form gradient."""
    A = torch.randn(hidden, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    c = torch.randn(hidden, generator=generator, dtype=torch.float64)
    v = torch.randn(hidden, generator=generator, dtype=torch.float64) / math.sqrt(hidden)
    return TestFunction("neural net", lambda z: torch.tanh(z @ A.T + c) @ v, None)


def per_sample_gradients(fn: TestFunction, dim: int, n: int, estimator: str) -> torch.Tensor:
    """n independent one-sample estimates of ∇_(μ, σ) E_q f, shape (n, 2d): the parameters are
    replicated per sample, so one backward pass gives every sample's own gradient."""
    mu = torch.full((n, dim), MU, dtype=torch.float64, requires_grad=True)
    sigma = torch.full((n, dim), SIGMA, dtype=torch.float64, requires_grad=True)
    q = Independent(Normal(mu, sigma, validate_args=False), 1)
    if estimator == "pathwise":
        total = fn.f(q.rsample()).sum()
    else:
        z = q.sample()
        total = n * score_function_surrogate(q.log_prob(z), fn.f(z))
    return torch.cat(torch.autograd.grad(total, [mu, sigma]), -1)


def exact_gradient(fn: TestFunction, dim: int) -> torch.Tensor | None:
    """The exact ∇_(μ, σ) E_q f at μ = MU, σ = SIGMA, shape (2d,), or None."""
    if fn.exact is None:
        return None
    return fn.exact(torch.full((dim,), MU, dtype=torch.float64), torch.full((dim,), SIGMA, dtype=torch.float64))


def variance_against_samples(fn: TestFunction, dim: int, estimator: str, sizes, repeats: int) -> np.ndarray:
    """Empirical variance over ``repeats`` runs of the L-sample estimate of ∂/∂μ₁, per L in sizes."""
    return np.array([per_sample_gradients(fn, dim, repeats * L, estimator)[:, 0].view(repeats, L).mean(1).var().item()
                     for L in sizes])


@LABS.register("gradient-estimators")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """Bias and variance of both estimators for three f (appendix A)."""
    n, repeats = (20_000, 100) if quick else (100_000, 400)
    dim, sizes, dims = 4, [1, 4, 16, 64, 256], [1, 4, 16, 64, 256]
    nets = {d: neural_net(d, torch.Generator().manual_seed(seed + d)) for d in dims}
    functions = {"quadratic": lambda d: quadratic(), "sine": lambda d: sine(), "neural net": lambda d: nets[d]}
    rows, var_L, var_d = [], {}, {}
    for name, make in functions.items():
        fn = make(dim)
        grads = {est: per_sample_gradients(fn, dim, n, est) for est in ESTIMATORS}
        exact = exact_gradient(fn, dim)
        for est in ESTIMATORS:
            mean, se = mean_and_se(grads[est])
            if exact is not None:
                z = z_scores(mean, exact, se)
            else:  # no closed form: the two unbiased estimators must agree
                other_mean, other_se = mean_and_se(grads[ESTIMATORS[1 - ESTIMATORS.index(est)]])
                z = z_scores(mean, other_mean, (se**2 + other_se**2).sqrt())
            var_L[name, est] = variance_against_samples(fn, dim, est, sizes, repeats)
            var_d[name, est] = np.array([per_sample_gradients(make(d), d, n // 10, est)[:, 0].var().item()
                                         for d in dims])
            slope = np.polyfit(np.log(sizes), np.log(var_L[name, est]), 1)[0]
            rows.append([name, est, mean[0].item(), exact[0].item() if exact is not None else "n/a",
                         z.max().item(), slope, *var_d[name, est][[0, 2, 4]].tolist()])
    columns = ["f", "estimator", "∂E[f]/∂μ₁", "exact", "max |z|", "slope of var vs L",
               f"var d={dims[0]}", f"var d={dims[2]}", f"var d={dims[4]}"]
    figure = _plot(out_dir, sizes, dims, dim, var_L, var_d)
    return Result(f"Score-function vs pathwise gradients, q = N({MU}, {SIGMA}²) per dimension "
                  f"(d={dim} for the means; var = per-sample variance of ∂/∂μ₁)", columns, rows, figure)


def _plot(out_dir, sizes, dims, dim, var_L, var_d) -> Path:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    styles = {"score function": "-o", "pathwise": "--s"}
    for (name, est), values in var_L.items():
        color = f"C{list(dict.fromkeys(k for k, _ in var_L)).index(name)}"
        axes[0].loglog(sizes, values, styles[est], color=color, ms=4, label=f"{name}, {est}")
        axes[1].loglog(dims, var_d[name, est], styles[est], color=color, ms=4, label=f"{name}, {est}")
    axes[0].set(xlabel="samples L", ylabel="variance of the L-sample estimate of ∂/∂μ₁",
                title=f"variance ∝ 1/L (d = {dim})")
    axes[1].set(xlabel="dimension d", ylabel="per-sample variance of ∂/∂μ₁", title="variance against dimension")
    axes[1].legend(fontsize=7)
    return save_figure(fig, out_dir, "gradient-estimators")
