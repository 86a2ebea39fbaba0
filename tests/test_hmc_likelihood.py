"""The marginal likelihood estimator of Kingma & Welling 2013, appendix D (aevb.inference.hmc_likelihood):
exact on a linear-Gaussian model within its stated error, that error the spread of independent
replicates, and in agreement with aevb's importance-sampled log-likelihood on a trained VAE."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2
from torch.distributions import Independent, Normal

import aevb
from aevb.cli import load_test_data, main
from aevb.evaluate import importance_estimate
from aevb.inference.hmc_likelihood import MIXED_RHAT, hmc_log_likelihood
from aevb.inference.importance import summary
from aevb.lab.linear_gaussian import LinearGaussian

pytestmark = pytest.mark.usefixtures("one_thread")

POINTS, REPLICATES = 16, 4


def test_exact_on_a_linear_gaussian_model_within_its_stated_error(torch_seed, assert_within_se):
    # p(z) = N(0, I₂), p(x|z) = N(Wz + b, 0.25 I₆): log p(x) = log N(x; b, WWᵀ + σ²I). The posterior's
    # standard deviations differ twofold: the case where HMC's trajectories need their jittered length.
    g = torch.Generator().manual_seed(1)
    model = LinearGaussian.random(6, 2, sigma=0.5, signal=2.0, generator=g)
    x = model.sample(POINTS, generator=g)[0].repeat(REPLICATES, 1)  # each point estimated REPLICATES times, independently
    exact = model.log_marginal(x)
    r = hmc_log_likelihood(model, x, samples=100, chains=4, warmup=50, batch_size=len(x))
    # the mean over the rows: the estimates are independent, so its s.e. is the stated sqrt(Σ se_i²)/N
    assert_within_se(r.value, exact.mean(), r.standard_error, "mean log p(x)")
    # the stated errors against the spread of the replicates: Σ_i s_i² / Σ_i mean(se²)_i, s_i² the sample
    # variance of point i's REPLICATES estimates, is χ²_ν/ν with ν = POINTS·(REPLICATES - 1) = 48 degrees of
    # freedom where the errors are right: inside its central 99.9% (0.53-1.68). Measured: 0.85-1.09 over 5 seeds.
    estimates, se = r.log_p.reshape(REPLICATES, POINTS), r.se.reshape(REPLICATES, POINTS)
    ratio = (estimates.var(0).sum() / se.pow(2).mean(0).sum()).item()
    nu = POINTS * (REPLICATES - 1)
    assert chi2.ppf(0.0005, nu) / nu < ratio < chi2.ppf(0.9995, nu) / nu
    assert 0.85 < r.accept.mean().item() < 0.95  # the step sizes adapted toward 0.9
    assert r.rhat.max() < MIXED_RHAT  # one mode: the chains agree (measured: at most 1.056)


def test_agrees_with_importance_sampling_on_a_trained_vae(tmp_path, torch_seed):
    # A VAE with two latent dimensions on the 8×8 digits, whose full-covariance encoder is a good proposal:
    # importance sampling with k = 2000 keeps an effective sample size above 200 on every image. The two
    # estimates of the mean log p(x) of ten test images must agree within 5 of their combined standard
    # errors (both are Monte Carlo estimates of the same number; measured: 0.007 apart, combined s.e. 0.016).
    run = tmp_path / "vae"
    assert main(["train", "--dataset", "digits", "--hidden", "64", "--latent-dim", "2", "--posterior", "full_normal",
                 "--epochs", "20", "--out", str(run), "--quiet", "--no-report"]) == 0
    model = aevb.load(run)
    x = load_test_data(run, 10)[0]
    importance = summary(importance_estimate(model, x, 2000))
    assert importance["ess_min"] > 200
    hmc = hmc_log_likelihood(model, x, samples=100, chains=4, warmup=50)
    combined = math.hypot(importance["standard_error"], hmc.standard_error)
    assert abs(hmc.value - importance["value"]) < 5 * combined, (hmc.value, importance["value"], combined)


class TwoModes:
    """p(z) = N(0, 1), p(x|z) = N(x; 3 tanh²(2z), 0.2²), bounded and smooth like a decoder's: x = 2.5 has two
    posterior modes, z ≈ ±0.77, with a barrier of 78 nats at z = 0 that no chain crosses."""

    def prior(self):
        return Independent(Normal(torch.zeros(1), torch.ones(1)), 1)

    def decode(self, z):
        return Independent(Normal(3 * torch.tanh(2 * z).pow(2), 0.2), 1)


def test_chains_stuck_in_different_modes_are_flagged(torch_seed):
    # 8 chains start at prior draws, so on each datapoint both modes hold some of them unless all 8 start on
    # one side (probability 2/2⁸): nearly every datapoint's R̂ is far above MIXED_RHAT and the summary
    # calls the estimate unreliable, whatever its Monte Carlo ± says.
    r = hmc_log_likelihood(TwoModes(), torch.full((16, 1), 2.5), samples=50, chains=8, warmup=50)
    assert (r.rhat > MIXED_RHAT).double().mean() >= 0.75
    assert r.summary()["reliable"] is False
