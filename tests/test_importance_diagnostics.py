"""Diagnostics of importance sampling against known values: Pareto k̂ recovers the shape of generalised Pareto
weights within its sampling spread, ESS is Kish's formula, the calibrated standard error covers the exact
log p(x) of a linear-Gaussian model at the nominal rate, and the evaluation warns when k̂ > 0.7 is common."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from aevb.evaluate import format_evaluation
from aevb.inference.importance import (RELIABLE_KHAT, ImportanceEstimate, diagnose_weights, effective_sample_size,
                                       estimate, pareto_khat, summary, warning)
from aevb.lab.linear_gaussian import LinearGaussian


@pytest.mark.parametrize("xi", [0.3, 0.6, 0.9])
def test_khat_recovers_the_shape_of_generalised_pareto_weights(torch_seed, xi):
    """w = σ((1-U)^-ξ - 1)/ξ is GPD(ξ, σ), and so is its tail above any threshold: k̂ of 4000 such weights
    estimates ξ from the M = 3√4000 = 189 largest. Its spread over seeds, measured on 400 rows, is 0.092,
    0.116 and 0.135 at ξ = 0.3, 0.6, 0.9: the asymptotic (1 + ξ)/√M of the maximum-likelihood fit. The
    weak prior pulls k̂ to 1/2 by (1/2 - ξ)·10/(M + 10) ≤ 0.02. So the mean of 64 rows must lie within 4
    of its standard errors (1 + ξ)/√(64 M) ≈ 0.012-0.017 of ξ, plus that pull."""
    rows, k = 64, 4000
    u = torch.rand(rows, k, dtype=torch.float64)
    w = 2.0 * torch.expm1(-xi * torch.log1p(-u)) / xi  # σ = 2: k̂ does not depend on the scale
    khat = pareto_khat(w.log())
    m = int(3 * math.sqrt(k))
    se, pull = (1 + xi) / math.sqrt(rows * m), abs(0.5 - xi) * 10 / (m + 10)
    assert khat.shape == (rows,)
    assert abs(khat.mean().item() - xi) < 4 * se + pull, (khat.mean().item(), xi, se)
    assert khat.std().item() == pytest.approx((1 + xi) / math.sqrt(m), rel=0.35)  # std of a std of 64: ~9%


def test_khat_is_invariant_to_the_scale_of_the_weights(torch_seed):
    log_w = torch.randn(8, 1000, dtype=torch.float64) * 1.5
    torch.testing.assert_close(pareto_khat(log_w), pareto_khat(log_w + 700.0))  # no overflow of exp(log w)


def test_effective_sample_size_is_kish_formula():
    w = torch.tensor([[1.0, 1.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0], [1e-300, 1e-300, 1e-300, 1.0]], dtype=torch.float64)
    ess = effective_sample_size(w.log())
    torch.testing.assert_close(ess, torch.tensor([8.0**2 / 22.0, 4.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(effective_sample_size(w.log() - 800.0), ess)  # weights of e^-800 do not underflow


@pytest.mark.parametrize("widen, share_unreliable", [(1.2, 0.0), (0.85, 0.15)])
def test_calibrated_interval_covers_the_exact_log_likelihood_at_the_nominal_rate(torch_seed, widen, share_unreliable):
    """Probabilistic PCA, log p(x) exact; the proposal is the posterior shifted by 0.3 sd and its sd scaled by
    ``widen``: wider gives light-tailed weights (k̂ ≈ 0.15), narrower heavier ones (a Gaussian proposal of
    variance s² times the posterior's has weights of tail shape 1 - s² ≈ 0.3; k̂ ≈ 0.5, above 0.7 for ~7%).
    Over 10 replicates × 100 datapoints with k̂ ≤ 0.7, log p̂ ± 1.96 s.e. must cover log p(x) at 95% within 3
    binomial standard deviations (±0.021 for 1000 intervals) on the light tails. On the heavier ones the
    rate pooled with the flagged datapoints makes it conservative (~0.98): at least 95% within the same
    tolerance, where the delta method's interval covers ~89%."""
    g = torch.Generator().manual_seed(0)
    model = LinearGaussian.random(6, 3, sigma=0.5, signal=2.0, generator=g)
    x, _ = model.sample(100, g)
    post = model.posterior(x)
    q = Independent(Normal(post.mean + 0.3 * post.stddev, post.stddev * widen), 1)
    replicates, k = 10, 1000
    z = q.sample((replicates, k))
    log_w = (model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)).permute(0, 2, 1).reshape(-1, k)
    log_p = torch.logsumexp(log_w, -1) - math.log(k)
    e = estimate(k, log_p, torch.zeros_like(log_p), **diagnose_weights(log_w))  # delta s.e. not needed here
    reliable = e.khat <= RELIABLE_KHAT
    assert e.se.isnan().equal(~reliable)  # no standard error where k̂ > 0.7
    assert (~reliable).double().mean().item() == pytest.approx(share_unreliable, abs=0.1)
    n = int(reliable.sum())
    error = log_p - model.log_marginal(x).repeat(replicates)
    coverage = (error.abs() <= 1.96 * e.se)[reliable].double().mean().item()
    tolerance = 3 * math.sqrt(0.95 * 0.05 / n)
    assert coverage > 0.95 - tolerance and (coverage < 0.95 + tolerance or share_unreliable > 0), (coverage, n)
    delta_se = torch.expm1(torch.logsumexp(2 * log_w, -1) - math.log(k) - 2 * log_p).div(k).sqrt()
    delta_coverage = (error.abs() <= 1.96 * delta_se)[reliable].double().mean().item()
    assert delta_coverage < 0.95 - tolerance or share_unreliable == 0, delta_coverage


def _evaluation(khat: torch.Tensor) -> dict:
    """The least result of aevb.evaluate that format_evaluation prints, with these k̂ (and matching weights)."""
    n = len(khat)
    full = lambda v: torch.full((n,), v, dtype=torch.float64)  # noqa: E731
    e = ImportanceEstimate(5000, full(-90.0), full(0.1), khat, full(100.0), full(0.2),
                           full(0.2).masked_fill(khat > RELIABLE_KHAT, math.nan))
    return {"n": n, "elbo_A": {"elbo": -95.0, "log_px_z": -70.0, "kl": 25.0}, "iwae": {"5000": -90.0},
            "log_likelihood": summary(e), "bits_per_dim": 0.1}


@pytest.mark.parametrize("flagged, warned", [(0, False), (5, False), (10, False), (11, True), (300, True)])
def test_format_evaluation_warns_when_more_than_one_percent_have_khat_above_0_7(flagged, warned):
    khat = torch.full((1000,), 0.3, dtype=torch.float64)
    khat[:flagged] = 0.9
    khat[flagged:flagged + 50] = 0.6
    r = _evaluation(khat)
    ll = r["log_likelihood"]
    assert ll["khat_share_above_0.7"] == flagged / 1000 and ll["khat_share_0.5_to_0.7"] == 0.05
    assert ll["standard_error"] == pytest.approx(0.2 / math.sqrt(1000))  # every datapoint's, flagged or not
    assert ll["delta_method_standard_error"] == pytest.approx(0.1 / math.sqrt(1000))
    assert [w["index"] for w in ll["khat_worst"]] == list(range(min(flagged, 10))) + list(range(flagged, flagged + 10))[
        :10 - min(flagged, 10)]
    table = format_evaluation(r)
    assert ("Pareto k̂ > 0.7" in table) == warned and (warning(ll) is not None) == warned
    assert ("unreliable: see the warning" in table) == warned and ll["reliable"] != warned
    assert "s.e. by the delta method" in table and "ESS, mean and least" in table
