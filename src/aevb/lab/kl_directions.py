"""Forward versus reverse KL: fit a Gaussian q(x; μ, r = log σ²) to a bimodal mixture p(x)
(Heindl, appendix B and B.1, Figure 3).

- KL(p‖q) (eq. 58-62): SGD on -E_p log q with minibatches of a sample of p. Its optimum is the
  maximum-likelihood fit μ = sample mean, σ² = sample variance (eqs. 63-68): mass-covering.
- KL(q‖p) (eqs. 69-82): SGD with the score-function gradient E_q[∇ log q (log q - log p + 1)]
  (eq. 82, through the library's ``score_function_surrogate``) and with the pathwise gradient;
  both reach the same mode-seeking optimum, found independently by quadrature and Newton's method.
  The +1 is ∇f for f = log q - log p; since E_q[∇ log q] = 0 it changes the estimator's
  variance, not its mean, so it shows in the per-sample identity (tested), not in the optimum.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import Categorical, MixtureSameFamily, Normal

from ..objectives import score_function_surrogate
from .base import LABS, Result, demonstration, save_figure

WEIGHTS, MEANS, SCALES = (0.3, 0.7), (-2.0, 2.0), (0.6, 0.8)
INIT = (0.0, 0.0)  # (μ, r): q starts as N(0, 1), between the modes
LR = 0.2
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite_e.hermegauss(80)


@functools.cache
def target() -> MixtureSameFamily:
    """p(x) = Σ_k π_k N(m_k, s_k²), the bimodal mixture."""
    t = functools.partial(torch.tensor, dtype=torch.float64)
    return MixtureSameFamily(Categorical(probs=t(WEIGHTS)), Normal(t(MEANS), t(SCALES)), validate_args=False)


def gaussian(mu: torch.Tensor, r: torch.Tensor) -> Normal:
    """q(x; μ, r) = N(μ, e^r): r = log σ² keeps σ² positive (eq. 48)."""
    return Normal(mu, (0.5 * r).exp(), validate_args=False)


def score(x: torch.Tensor, mu: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """∇_(μ, r) log q(x; μ, r) = ((x - μ) e^{-r}, ½(x - μ)² e^{-r} - ½) (eqs. 50 and 57); shape (n, 2)."""
    return torch.stack([(x - mu) * (-r).exp(), 0.5 * (x - mu) ** 2 * (-r).exp() - 0.5], -1)


def score_function_gradient(x: torch.Tensor, mu: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-sample ∇_θ log q(x) (log q(x) - log p(x) + 1), x ~ q: the estimate of
    ∇_θ KL(q‖p) of eq. 82; shape (n, 2)."""
    f = gaussian(mu, r).log_prob(x) - target().log_prob(x)
    return score(x, mu, r) * (f + 1).unsqueeze(-1)


def _gauss_expectation(g, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E_{N(μ, σ²)}[g(x)] by Gauss-Hermite quadrature (80 nodes)."""
    nodes = torch.as_tensor(_HERMITE_NODES, dtype=torch.float64)
    weights = torch.as_tensor(_HERMITE_WEIGHTS, dtype=torch.float64) / math.sqrt(2 * math.pi)
    return (weights * g(mu.unsqueeze(-1) + sigma.unsqueeze(-1) * nodes)).sum(-1)


def kl_reverse(mu: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """KL(q‖p) = E_q[log q - log p] (eq. 70), by quadrature; scalar μ and r."""
    q = gaussian(mu, r)
    return _gauss_expectation(lambda x: q.log_prob(x) - target().log_prob(x), mu, q.scale)


def kl_forward(mu: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_k π_k E_{N(m_k, s_k²)}[log p - log q] (eq. 59), by quadrature per component;
    scalar μ and r."""
    p, q = target(), gaussian(mu, r)
    g = lambda x: p.log_prob(x) - q.log_prob(x)  # noqa: E731
    per_component = _gauss_expectation(g, p.component_distribution.loc, p.component_distribution.scale)
    return (p.mixture_distribution.probs * per_component).sum()


def reverse_optimum() -> tuple[float, float]:
    """argmin KL(q‖p) over (μ, r): Newton's method on the quadrature KL, exact gradient and
    Hessian by autograd, from a start at each mode, keeping the lower; a deterministic reference
    for the stochastic fits."""
    objective = lambda theta: kl_reverse(theta[0], theta[1])  # noqa: E731
    best = None
    for m, s in zip(MEANS, SCALES):
        theta = torch.tensor([m, 2 * math.log(s)], dtype=torch.float64)
        for _ in range(50):
            grad = torch.autograd.functional.jacobian(objective, theta)
            theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(objective, theta), grad)
            if grad.abs().max() < 1e-12:
                break
        kl = objective(theta).item()
        if best is None or kl < best[0]:
            best = (kl, theta[0].item(), theta[1].item())
    return best[1], best[2]


@dataclass
class Fit:
    """An SGD trace of (μ, r) per step and the Polyak average of its last quarter."""

    trace: np.ndarray

    @property
    def mu(self) -> float:
        return float(self.trace[-len(self.trace) // 4:, 0].mean())

    @property
    def var(self) -> float:
        return float(np.exp(self.trace[-len(self.trace) // 4:, 1].mean()))


def _sgd(loss_fn, steps: int, lr: float) -> Fit:
    """Stochastic gradient descent on θ = (μ, r) from INIT (eq. 25) with Robbins-Monro step
    sizes lr/(1 + 10t/steps); loss_fn(μ, r) is a stochastic objective whose gradient is the
    estimator under study."""
    theta = torch.tensor(INIT, dtype=torch.float64, requires_grad=True)
    trace = np.empty((steps, 2))
    for t in range(steps):
        (grad,) = torch.autograd.grad(loss_fn(theta[0], theta[1]), theta)
        with torch.no_grad():
            theta -= lr / (1 + 10 * t / steps) * grad
        trace[t] = theta.detach().numpy()
    return Fit(trace)


def fit_forward(data: torch.Tensor, steps: int, batch: int, lr: float = LR) -> Fit:
    """min KL(p‖q) = min -E_p log q + const (eq. 61), minibatches of the sample ``data`` of p."""
    def loss(mu, r):
        x = data[torch.randint(len(data), (batch,))]
        return -gaussian(mu, r).log_prob(x).mean()

    return _sgd(loss, steps, lr)


def fit_reverse_score(steps: int, batch: int, lr: float = LR) -> Fit:
    """min KL(q‖p) with score-function gradients: the surrogate's gradient is
    1/L Σ f ∇log q + ∇f with f = log q - log p, i.e. eq. 82 (∇f = ∇ log q gives the +1)."""
    def loss(mu, r):
        q = gaussian(mu, r)
        x = q.sample((batch,))
        log_q = q.log_prob(x)
        return score_function_surrogate(log_q, log_q - target().log_prob(x))

    return _sgd(loss, steps, lr)


def fit_reverse_pathwise(steps: int, batch: int, lr: float = LR) -> Fit:
    """min KL(q‖p) with pathwise gradients: x = μ + e^{r/2} ε, ε ~ N(0, 1) (appendix A.2)."""
    def loss(mu, r):
        q = gaussian(mu, r)
        x = q.rsample((batch,))
        return (q.log_prob(x) - target().log_prob(x)).mean()

    return _sgd(loss, steps, lr)


@LABS.register("kl-directions")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """Fit q to p by both KL directions and both gradient estimators; Figure 3 of the notes."""
    steps, batch, n_data = (1000, 128, 2000) if quick else (3000, 256, 5000)
    data = target().sample((n_data,))
    ml = (data.mean().item(), data.var(unbiased=False).item())
    fits = {
        "forward": fit_forward(data, steps, batch),
        "score": fit_reverse_score(steps, batch),
        "pathwise": fit_reverse_pathwise(steps, batch),
    }
    mu_rev, r_rev = reverse_optimum()
    refs = {"forward": ("sample mean / variance (ML)", *ml), "score": ("quadrature + Newton", mu_rev, math.exp(r_rev)),
            "pathwise": ("quadrature + Newton", mu_rev, math.exp(r_rev))}
    labels = {"forward": ("KL(p‖q)", "samples of p"), "score": ("KL(q‖p)", "score function (eq. 82)"),
              "pathwise": ("KL(q‖p)", "pathwise")}
    rows = []
    for key, fit in fits.items():
        mu, r = torch.tensor(fit.mu, dtype=torch.float64), torch.tensor(math.log(fit.var), dtype=torch.float64)
        ref_name, ref_mu, ref_var = refs[key]
        rows.append([*labels[key], fit.mu, fit.var, ref_mu, ref_var, ref_name,
                     kl_forward(mu, r).item(), kl_reverse(mu, r).item()])
    columns = ["minimises", "gradient", "μ", "σ²", "μ ref", "σ² ref", "reference", "KL(p‖q)", "KL(q‖p)"]
    figure = _plot(out_dir, data, fits, ml, (mu_rev, math.exp(r_rev)))
    return Result("Forward KL covers the mass, reverse KL seeks a mode (Heindl, Figure 3)", columns, rows, figure)


def _plot(out_dir, data, fits, ml, rev) -> Path:
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    x = torch.linspace(-5, 5, 500, dtype=torch.float64)
    p = target().log_prob(x).exp()
    t = functools.partial(torch.tensor, dtype=torch.float64)
    density = lambda mu, var: gaussian(t(mu), t(math.log(var))).log_prob(x).exp()  # noqa: E731

    ax = axes[0]
    counts, edges = np.histogram(data.numpy(), bins=80, density=True)
    ax.stairs(counts, edges, fill=True, color="0.85", label="sample of p")
    ax.plot(x, p, "k", label="p(x)")
    ax.plot(x, density(fits["forward"].mu, fits["forward"].var), "C0", lw=2, label="q by SGD")
    ax.plot(x, density(*ml), "C1--", label="q = ML closed form")
    ax.set_title("min KL(p‖q): mass-covering")
    ax = axes[1]
    ax.plot(x, p, "k", label="p(x)")
    ax.plot(x, density(fits["score"].mu, fits["score"].var), "C2", lw=2, label="q, score function")
    ax.plot(x, density(fits["pathwise"].mu, fits["pathwise"].var), "C3--", lw=2, label="q, pathwise")
    ax.plot(x, density(*rev), "k:", label="optimum (quadrature)")
    ax.set_title("min KL(q‖p): mode-seeking")
    for ax in axes[:2]:
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    ax = axes[2]
    for (key, fit), color in zip(fits.items(), ("C0", "C2", "C3")):
        steps = np.arange(1, len(fit.trace) + 1)
        ax.plot(steps, fit.trace[:, 0], color=color, label=f"μ, {key}")
        ax.plot(steps, np.exp(fit.trace[:, 1]), color=color, ls="--", label=f"σ², {key}")
    for value in (*ml, *rev):
        ax.axhline(value, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("SGD step")
    ax.set_title("convergence (dotted: references)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return save_figure(fig, out_dir, "kl-directions")
