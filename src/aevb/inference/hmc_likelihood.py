"""The marginal likelihood estimator of Kingma & Welling 2013, appendix D, for models with a
low-dimensional latent space (< 5 dimensions in the paper) and no need of an encoder: per datapoint,

  1. draw samples from the posterior p(z|x) ∝ p(x|z) p(z) by Hamiltonian Monte Carlo
     (aevb.inference.hmc): C chains started at prior draws, warmed up with step-size adaptation, then
     L draws each;
  2. fit a density q(z) to the draws of half the chains: a full-covariance Gaussian N(μ̂, c Σ̂) with
     the sample mean and the sample covariance shrunk by c = SHRINK (torch.distributions.MultivariateNormal);
  3. with the draws z_l of the other half, estimate p(x) ≈ ( (1/n) Σ_l q(z_l) / (p(z_l) p(x|z_l)) )⁻¹.

The paper draws the new samples after the first ones; drawing them from other chains makes them
independent of q, so that E[r̄ | q] = 1/p(x) holds exactly (a chain's first new draws would sit next
to the last draws that q was fitted to, where q is high: a bias toward lower estimates).

Step 3 is reciprocal importance sampling (Gelfand & Dey 1994): r = q(z)/p(x, z) with z ~ p(z|x) has
E[r] = ∫ q(z) p(z|x)/p(x, z) dz = 1/p(x) for any normalised q, and a finite variance
E[r²]/E[r]² = ∫ q²/p(z|x) dz exactly when q's tails are lighter than the posterior's. Why the Gaussian
is safe: for a Gaussian posterior N(m, S) the integral is finite iff cΣ̂ ≺ 2S, so c = 0.8 tolerates a
sample covariance 2.5 times too large in any direction, at the price of a relative variance of
((2/c - 1)^(-1/2)/c)^d - 1 = 4% (d = 2) to 6% (d = 3) where the fit is exact. Far out, a posterior of
an MLP decoder has the prior's tails exp(-|z|²/2) up to factors of lower order wherever log p(x|z)
changes slower than |z|² (bounded activations; Bernoulli logits at most linear in z), so there the
condition is cΣ̂ ≺ 2I, which holds where the posterior is no wider than the prior. A q from a kernel density estimate or a mixture fitted by EM inherits the samples'
outliers and has no such margin. Where the assumption fails, the Pareto k̂ of the ratios (fitted as
for importance weights, aevb.inference.importance) says so.

The standard error: log p̂ = -log r̄, so by the delta method se(log p̂) = se(r̄)/r̄ = sd(r)/(r̄ √ESS),
ESS the effective sample size of the mean of the correlated draws r over C/2 chains of L draws
(arviz-stats, method "mean": Geyer's initial monotone sequence on the multi-chain autocorrelation,
Vehtari et al. 2021), so that the autocorrelation of the HMC draws widens it. -log is convex, so the
estimate is biased upward by about se²/2 (Jensen): 0.005 nats at se = 0.1.

Neither that error nor k̂ sees a mode that every kept chain missed, nor chains stuck in different
modes: the rank-normalised split R̂ of the C chains' draws of z (Vehtari et al. 2021, arviz-stats; the
largest over the dimensions) does. Above MIXED_RHAT the chains disagree, and the estimate of that
datapoint is unreliable whatever its ± says. The threshold is Gelman & Rubin's 1.1, not the 1.01 that
Vehtari et al. recommend for long chains: on a Gaussian posterior, 4 chains of 100 draws that do mix give
R̂ up to 1.06 (tests/test_hmc_likelihood.py), while chains in separate modes give R̂ of 2 and more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import MultivariateNormal

from ..objectives import log_joint
from .hmc import INITIAL_STEP_SIZE, run_chains
from .importance import GOOD_KHAT, RELIABLE_KHAT, WARN_SHARE, pareto_khat

SHRINK = 0.8  # q's covariance: c times the sample covariance (see above)
MIXED_RHAT = 1.1  # above it, a datapoint's chains disagree (see above)


@dataclass
class HMCLikelihood:
    """Per datapoint, shape (N,), float64: ``log_p`` = log p̂(x), ``se`` its standard error, ``ess`` the
    effective sample size of the ratios, ``khat`` their Pareto k̂, ``rhat`` the chains' R̂ (over z's
    dimensions, the largest), ``accept`` the chains' mean acceptance
    probability while sampling and ``step_size`` their mean step size; from ``samples`` draws of each of
    ``chains`` chains per datapoint (half for the fit, half for the estimate), after ``warmup``."""

    samples: int
    chains: int
    warmup: int
    log_p: torch.Tensor
    se: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    rhat: torch.Tensor
    accept: torch.Tensor
    step_size: torch.Tensor

    @property
    def value(self) -> float:
        """The mean of log p̂(x) over the datapoints."""
        return self.log_p.mean().item()

    @property
    def standard_error(self) -> float:
        """sqrt(Σ_i se_i²)/N: the Monte Carlo error of ``value`` (the estimates are independent)."""
        return (self.se.pow(2).sum().sqrt() / len(self.se)).item()

    def summary(self) -> dict:
        """For eval.json: the mean log p̂(x) with its standard error, and the diagnostics."""
        share = (self.khat > RELIABLE_KHAT).double().mean().item()
        unmixed = (self.rhat > MIXED_RHAT).double().mean().item()
        return {"value": self.value, "standard_error": self.standard_error,
                "method": "Kingma & Welling 2013 appendix D: HMC posterior draws, reciprocal importance sampling "
                          f"with a Gaussian fitted to them (covariance × {SHRINK})",
                "samples": self.samples, "chains": self.chains, "warmup": self.warmup,
                "ess_mean": self.ess.mean().item(), "ess_min": self.ess.min().item(),
                "khat_share_0.5_to_0.7": ((self.khat > GOOD_KHAT) & (self.khat <= RELIABLE_KHAT)).double().mean().item(),
                "khat_share_above_0.7": share, "rhat_max": self.rhat.max().item(),
                f"rhat_share_above_{MIXED_RHAT}": unmixed, "reliable": max(share, unmixed) <= WARN_SHARE,
                "accept_mean": self.accept.mean().item(), "step_size_mean": self.step_size.mean().item()}


def fit_gaussian(draws: torch.Tensor) -> MultivariateNormal:
    """N(μ̂, SHRINK·Σ̂) per datapoint from draws (n, N, d): batch shape (N,)."""
    mean = draws.mean(0)
    centred = (draws - mean).movedim(0, -2)  # (N, n, d)
    cov = centred.mT @ centred / (len(draws) - 1)
    return MultivariateNormal(mean, covariance_matrix=SHRINK * cov, validate_args=False)


def hmc_log_likelihood(model, x: torch.Tensor, samples: int = 500, chains: int = 4, warmup: int = 200,
                       leapfrog_steps: int = 10, target_accept: float = 0.9, batch_size: int = 100) -> HMCLikelihood:
    """log p(x) per datapoint of x (N, *x_shape) by the estimator above, for any model with ``prior()``
    and ``decode(z)`` = p(x|z); its encoder, if any, is not used. ``samples`` L draws per chain,
    ``chains`` C (even) per datapoint started at prior draws, ``warmup`` HMC iterations adapting the step
    sizes toward ``target_accept`` (with ``leapfrog_steps`` per iteration), ``batch_size`` datapoints whose
    chains run together. Draws come from torch's global generator: seed it for a repeatable estimate."""
    from arviz_stats.base import array_stats

    if samples < 2 or chains < 2 or chains % 2:
        raise ValueError(f"hmc_log_likelihood needs samples ≥ 2 and an even number of chains, got {samples} and {chains}")
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        target = lambda z: log_joint(model, xb, z)  # noqa: E731
        with torch.no_grad():
            z = model.prior().sample((chains, len(xb)))
        step = torch.full(z.shape[:-1], INITIAL_STEP_SIZE, dtype=z.dtype, device=z.device)
        run = run_chains(target, z, step, samples, warmup, leapfrog_steps, target_accept)
        fit, kept = run.draws.chunk(2, 1)  # (L, C/2, B, d) each
        q = fit_gaussian(fit.flatten(0, 1))
        with torch.no_grad():
            log_r = (q.log_prob(kept) - log_joint(model, xb, kept)).double()  # (L, C/2, B)
        log_mean_r = torch.logsumexp(log_r.flatten(0, 1), 0) - math.log(log_r[..., 0].numel())
        r = torch.exp(log_r - log_mean_r)  # r / r̄: mean 1
        by_chain = r.permute(2, 1, 0).cpu().numpy()  # (B, C, L), as arviz-stats wants it
        ess = torch.as_tensor(array_stats.ess(by_chain, chain_axis=-2, draw_axis=-1, method="mean"),
                              dtype=torch.float64, device=r.device)
        sd = r.flatten(0, 1).std(0)
        draws = run.draws.permute(2, 3, 1, 0).double().cpu().numpy()  # (B, d, C, L)
        rhat = torch.as_tensor(array_stats.rhat(draws, chain_axis=-2, draw_axis=-1), dtype=torch.float64).amax(-1)
        out.append((-log_mean_r, sd / ess.sqrt(), ess, pareto_khat(log_r.flatten(0, 1).T), rhat.to(r.device),
                    run.accept_prob.double().mean(0), run.step_size.double().mean(0)))
    log_p, se, ess, khat, rhat, accept, step_size = (torch.cat(parts) for parts in zip(*out))
    return HMCLikelihood(samples, chains, warmup, log_p, se, ess, khat, rhat, accept, step_size)
