"""Hamiltonian Monte Carlo (Neal 2011, "MCMC using Hamiltonian dynamics", Handbook of MCMC ch. 5),
batched over independent chains: one chain per row of z, shape (..., D), each with its own step size.

The target is a function ``log_prob`` from z (..., D) to the log-density of each chain (...), known up
to a constant (for a posterior p(z|x) ∝ p(x|z) p(z): ``aevb.objectives.log_joint``); its gradient
comes from torch.autograd.grad. One iteration (``hmc_step``) draws a momentum p ~ N(0, I), follows
the Hamiltonian H(z, p) = -log π(z) + ½ pᵀp for ``leapfrog_steps`` leapfrog steps of size ε (Neal's
leapfrog method) and accepts the end point with probability min(1, exp(H(z, p) - H(z', p'))). The
leapfrog map is reversible and preserves volume, so this leaves π invariant for any fixed ε. Each
iteration draws its ε uniformly from [(1 - j)ε, (1 + j)ε], j = JITTER = 0.5, as Neal suggests against
periodic trajectories: with L = 10 leapfrog steps a direction of the posterior whose scale is near
εL/2π otherwise returns to where it started. Neal suggests a small interval; ±10% is too small for a posterior whose scales
differ twofold (on one with standard deviations 0.27 and 0.54, the error of aevb.inference.hmc_likelihood's
log p̂ fell from 0.053 at ±10% to 0.023 at ±30% and 0.019 at ±50%, for the same number of draws).

Step sizes adapt toward a target acceptance rate δ by a Robbins-Monro update of log ε
(``adapt_step_size``): log ε ← log ε + γ (α - δ), α the chain's acceptance probability. Its fixed
point is E[α] = δ. With a constant gain γ the step size tracks a target that moves (Monte Carlo EM's
posterior changes with θ); with gains γ_t = t^-0.6 that satisfy Σγ_t = ∞, Σγ_t² < ∞ it converges, and
``run_chains`` freezes it after warm-up, since a kernel that keeps adapting is no longer a Markov chain
with π as its stationary law.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

LogProb = Callable[[torch.Tensor], torch.Tensor]
JITTER = 0.5  # see above
# The step size chains start with: the scale of a standard normal prior, which a posterior rarely
# exceeds. Too large a step is corrected 9× faster than too small a one (a rejection moves log ε by
# -γδ, an acceptance by +γ(1 - δ), at δ = 0.9), so start high.
INITIAL_STEP_SIZE = 1.0
WARMUP_DECAY = 0.6  # γ_t = t^-0.6 during run_chains' warm-up: in (1/2, 1], as Robbins-Monro asks


class HMCStep(NamedTuple):
    """One iteration's outcome per chain: the new states z (..., D), the acceptance probabilities
    min(1, exp(-ΔH)) (...,) and log π at the new states (...,)."""

    z: torch.Tensor
    accept_prob: torch.Tensor
    log_prob: torch.Tensor


class Chains(NamedTuple):
    """``run_chains``' result: the kept states (samples, ..., D), the frozen step sizes (...,), and each
    chain's mean acceptance probability over the kept iterations (...,)."""

    draws: torch.Tensor
    step_size: torch.Tensor
    accept_prob: torch.Tensor


def log_prob_and_grad(log_prob: LogProb, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(z) per chain and ∇_z log π(z), both detached; the gradient of the sum over chains is each
    chain's own gradient, since the chains are independent. Gradients of whatever parameters
    ``log_prob`` uses are neither computed nor accumulated."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad


def leapfrog(log_prob: LogProb, z: torch.Tensor, p: torch.Tensor, step_size: torch.Tensor, steps: int,
             grad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` leapfrog steps of size ``step_size`` (..., 1 or broadcastable) from (z, p):
    p ← p + ε/2 ∇log π(z), then ``steps`` times z ← z + ε p, p ← p + ε ∇log π(z) (ε/2 the last time).
    ``grad``: ∇log π at z where known. Returns z', p' and log π(z')."""
    if grad is None:
        grad = log_prob_and_grad(log_prob, z)[1]
    p = p + 0.5 * step_size * grad
    for i in range(steps):
        z = z + step_size * p
        lp, grad = log_prob_and_grad(log_prob, z)
        p = p + (step_size if i < steps - 1 else 0.5 * step_size) * grad
    return z, p, lp


def hmc_step(log_prob: LogProb, z: torch.Tensor, step_size: torch.Tensor, leapfrog_steps: int = 10,
             jitter: float = JITTER) -> HMCStep:
    """One HMC iteration of every chain in z (..., D) with its step size (...,), jittered; a proposal whose
    energy is not finite is rejected (acceptance probability 0)."""
    lp, grad = log_prob_and_grad(log_prob, z)
    p = torch.randn_like(z)
    eps = step_size * (1 + jitter * (2 * torch.rand_like(step_size) - 1))
    z_new, p_new, lp_new = leapfrog(log_prob, z, p, eps.unsqueeze(-1), leapfrog_steps, grad)
    log_ratio = (lp_new - 0.5 * p_new.pow(2).sum(-1)) - (lp - 0.5 * p.pow(2).sum(-1))  # H(z, p) - H(z', p')
    accept_prob = torch.nan_to_num(log_ratio, nan=-torch.inf).clamp(max=0).exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    return HMCStep(torch.where(accept.unsqueeze(-1), z_new, z.detach()), accept_prob, torch.where(accept, lp_new, lp))


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, target: float = 0.9,
                    gain: float = 0.1) -> torch.Tensor:
    """The Robbins-Monro update of each chain's step size: log ε ← log ε + gain·(α - target)."""
    return step_size * torch.exp(gain * (accept_prob - target))


def run_chains(log_prob: LogProb, z: torch.Tensor, step_size: torch.Tensor, samples: int, warmup: int,
               leapfrog_steps: int = 10, target: float = 0.9) -> Chains:
    """``warmup`` iterations adapting every chain's step size with gains t^-0.6 (t = 1, 2, ...), then
    ``samples`` iterations at the frozen step sizes, whose states are kept."""
    for t in range(1, warmup + 1):
        out = hmc_step(log_prob, z, step_size, leapfrog_steps)
        z, step_size = out.z, adapt_step_size(step_size, out.accept_prob, target, t ** -WARMUP_DECAY)
    draws, accept = [], torch.zeros_like(step_size)
    for _ in range(samples):
        out = hmc_step(log_prob, z, step_size, leapfrog_steps)
        z = out.z
        draws.append(z)
        accept += out.accept_prob
    return Chains(torch.stack(draws), step_size, accept / max(samples, 1))
