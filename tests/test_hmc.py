"""The HMC kernel of aevb.inference.hmc against exact answers: the leapfrog map of a Gaussian target
in closed form, its reversibility and unit Jacobian, invariance of the target under the accept/reject
step, the moments reached by many parallel chains, and the adapted acceptance rate."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from aevb.inference.hmc import adapt_step_size, hmc_step, leapfrog, run_chains

pytestmark = pytest.mark.usefixtures("one_thread")


def standard_normal(z):
    return -0.5 * z.pow(2).sum(-1)


def banana(z):
    """A non-Gaussian target: log π = -z₁²/2 - (z₂ - z₁²)²/2."""
    return -0.5 * z[..., 0] ** 2 - 0.5 * (z[..., 1] - z[..., 0] ** 2) ** 2


def test_leapfrog_is_the_exact_linear_map_on_a_standard_normal():
    # For log π = -z²/2 one leapfrog step of size ε is the linear map (z, p) ↦ A (z, p) with
    # A = [[1 - ε²/2, ε], [-ε(1 - ε²/4), 1 - ε²/2]]; L steps are A^L.
    eps = torch.tensor([0.1, 0.7, 1.3], dtype=torch.float64)
    z0, p0 = torch.tensor([[0.5], [-1.2], [2.0]], dtype=torch.float64), torch.tensor([[1.0], [0.3], [-0.4]], dtype=torch.float64)
    z, p, lp = leapfrog(standard_normal, z0, p0, eps.unsqueeze(-1), steps=7)
    for i, e in enumerate(eps.tolist()):
        A = torch.tensor([[1 - e**2 / 2, e], [-e * (1 - e**2 / 4), 1 - e**2 / 2]], dtype=torch.float64)
        expected = torch.linalg.matrix_power(A, 7) @ torch.tensor([z0[i, 0], p0[i, 0]], dtype=torch.float64)
        torch.testing.assert_close(torch.stack([z[i, 0], p[i, 0]]), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp, standard_normal(z))


def test_leapfrog_is_reversible_and_preserves_volume():
    # The two properties that make min(1, exp(-ΔH)) the right acceptance probability (Neal 2011, 3.1-3.2):
    # flipping the momentum retraces the path, and the map's Jacobian determinant is 1 (here by central
    # differences in float64: error O(h²) ≈ 1e-8).
    z0, p0 = torch.tensor([0.4, -0.3], dtype=torch.float64), torch.tensor([0.9, 0.5], dtype=torch.float64)
    eps = torch.tensor(0.15, dtype=torch.float64)
    z1, p1, _ = leapfrog(banana, z0, p0, eps, 10)
    z2, p2, _ = leapfrog(banana, z1, -p1, eps, 10)
    torch.testing.assert_close(z2, z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(-p2, p0, rtol=0, atol=1e-12)

    def flow(u):
        z, p, _ = leapfrog(banana, u[:2], u[2:], eps, 10)
        return torch.cat([z, p])

    u, h = torch.cat([z0, p0]), 1e-5
    jacobian = torch.stack([(flow(u + h * e) - flow(u - h * e)) / (2 * h) for e in torch.eye(4, dtype=torch.float64)], 1)
    assert torch.linalg.det(jacobian).item() == pytest.approx(1.0, abs=1e-6)


def test_the_accept_reject_step_keeps_the_target_where_the_proposal_alone_would_not(torch_seed, assert_within_se):
    # From exact draws of N(0, 1), one leapfrog step of ε = 1.9 maps z to -0.805 z + 1.9 p: variance 4.26.
    # HMC's accept/reject must undo that exactly, five iterations in a row. Draws are independent, so the
    # sample mean has s.e. 1/√B and the sample variance √(2/B).
    B = 20000
    z = torch.randn(B, 1, dtype=torch.float64)
    eps = torch.full((B,), 1.9, dtype=torch.float64)
    proposal, _, _ = leapfrog(standard_normal, z, torch.randn_like(z), eps.unsqueeze(-1), 1)
    assert proposal.var().item() > 3.5
    accepted = []
    for _ in range(5):
        out = hmc_step(standard_normal, z, eps, leapfrog_steps=1, jitter=0.0)
        z = out.z
        accepted.append(out.accept_prob.mean().item())
    assert 0.2 < min(accepted) and max(accepted) < 0.8  # a real test: many proposals are rejected
    assert_within_se(z.mean(), 0.0, 1 / math.sqrt(B), "mean")
    assert_within_se(z.var(), 1.0, math.sqrt(2 / B), "variance")


CORRELATED = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
              torch.tensor([[2.0, 1.2, 0.1], [1.2, 1.0, 0.0], [0.1, 0.0, 0.05]], dtype=torch.float64))


@pytest.mark.parametrize("mean, cov", [(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)),
                                       CORRELATED], ids=["standard-normal", "correlated"])
def test_many_chains_reach_the_moments_of_a_gaussian_target(mean, cov, torch_seed, assert_within_se):
    # B independent chains started far off (N(0, 9I)); after warm-up and more iterations at the frozen
    # step sizes their final states are B independent draws of the target where the chains have mixed.
    # So the sample mean has s.e. √(Σ_ii/B), and the sample covariance entry s_ij has s.e.
    # √((Σ_ii Σ_jj + Σ_ij²)/B) (the variance of a product of jointly Gaussian variables).
    B = 2000
    target = MultivariateNormal(mean, cov)
    chains = run_chains(target.log_prob, 3 * torch.randn(B, 3, dtype=torch.float64), torch.ones(B, dtype=torch.float64),
                        samples=40, warmup=60)
    z = chains.draws[-1]
    assert_within_se(z.mean(0), mean, (cov.diagonal() / B).sqrt(), "mean")
    se = ((cov.diagonal().outer(cov.diagonal()) + cov**2) / B).sqrt()
    assert_within_se(torch.cov(z.T), cov, se, "covariance")
    # the adapted acceptance rate: B chain means over 40 iterations, independent across chains, so the s.e.
    # is their sd/√B (~0.001); 0.01 more for what a finite warm-up leaves of the Robbins-Monro error
    # (the gain at its end is 60^-0.6 = 0.09; measured 0.899-0.901 over six seeds).
    accept = chains.accept_prob
    assert_within_se(accept.mean(), 0.9, accept.std() / math.sqrt(B), "acceptance", atol=0.01)


def test_a_constant_gain_tracks_the_target_acceptance(torch_seed):
    # Monte Carlo EM's regime: every iteration adapts with the same gain γ. The update telescopes,
    # Σ_t (α_t - δ) = (log ε_T - log ε_0)/γ, so the mean acceptance over T iterations is δ up to the
    # change of log ε divided by γT: here exactly that identity, and that the step size settles.
    B, gain, T = 1000, 0.1, 100
    z, eps = torch.randn(B, 3, dtype=torch.float64), torch.full((B,), 2.0, dtype=torch.float64)
    start, total = eps.log(), torch.zeros(B, dtype=torch.float64)
    for _ in range(T):
        out = hmc_step(standard_normal, z, eps)
        z, eps = out.z, adapt_step_size(eps, out.accept_prob, 0.9, gain)
        total += out.accept_prob - 0.9
    torch.testing.assert_close(total, (eps.log() - start) / gain)
    late = torch.zeros(B, dtype=torch.float64)
    for _ in range(50):
        out = hmc_step(standard_normal, z, eps)
        z, eps = out.z, adapt_step_size(eps, out.accept_prob, 0.9, gain)
        late += out.accept_prob / 50
    assert late.mean().item() == pytest.approx(0.9, abs=0.01)
