"""The theory lab: every demonstration runs, writes its figure and prints its table, and its
mathematics holds. Each test is built so that the error it names (the KL direction swapped,
the +1 of eq. 82 dropped, a wrong score, q left out of the importance weights, ...) fails it;
where practical the wrong variant is computed in the test and shown to be rejected."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aevb.errors import ConfigError
from aevb.lab import LABS, Result
from aevb.lab import elbo_gap, em, gradient_estimators as ge, kl_directions as kd, naive_mc
from aevb.lab.linear_gaussian import LinearGaussian
from aevb.objectives import score_function_surrogate, sgvb_a

DT = torch.float64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    """Every demonstration once, quick, seed 0 (the tables are what the tests below read)."""
    out = tmp_path_factory.mktemp("lab")
    return {name: LABS[name](out, seed=0, quick=True) for name in LABS}


def column(result: Result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


def row(result: Result, first: str) -> dict:
    (match,) = [r for r in result.rows if r[0] == first]
    return dict(zip(result.columns, match))


# ------------------------------------------------------------------------------------ all of them

def test_the_seven_demonstrations_are_registered():
    assert set(LABS.names()) == {"kl-directions", "gradient-estimators", "naive-mc", "elbo-gap", "em",
                                 "reparam-families", "online-drift"}
    with pytest.raises(ConfigError, match="did you mean 'em'"):
        LABS["emm"]


@pytest.mark.parametrize("name", ["kl-directions", "gradient-estimators", "naive-mc", "elbo-gap", "em",
                                  "reparam-families", "online-drift"])
def test_demonstration_writes_its_figure_and_table(results, name):
    result = results[name]
    assert result.figure.name == f"lab-{name}.png"
    assert result.figure.read_bytes()[:8] == PNG_SIGNATURE and result.figure.stat().st_size > 10_000
    assert result.rows and all(len(r) == len(result.columns) for r in result.rows)
    lines = result.format().splitlines()
    assert lines[0] == result.title and len(lines) == 3 + len(result.rows)


def test_format_aligns_columns(tmp_path):
    text = Result("t", ["name", "value"], [["a", 1.0], ["bbb", 123456.0], ["c", float("nan")]], tmp_path).format()
    assert text.splitlines() == ["t", "name      value", "----  ---------", "a             1",
                                 "bbb   1.235e+05", "c           nan"]


def test_a_run_restores_the_thread_count_and_is_reproducible(tmp_path):
    torch.set_num_threads(2)
    try:
        first = LABS["elbo-gap"](tmp_path, seed=3, quick=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert LABS["elbo-gap"](tmp_path, seed=3, quick=True).rows == first.rows


# ---------------------------------------------------------------------------------- kl-directions

def _mixture_moments() -> tuple[float, float]:
    w, m, s = (np.array(v) for v in (kd.WEIGHTS, kd.MEANS, kd.SCALES))
    mean = (w * m).sum()
    return mean, (w * (s**2 + m**2)).sum() - mean**2


def _grad(fn, mu, r) -> torch.Tensor:
    theta = torch.tensor([mu, r], dtype=DT, requires_grad=True)
    return torch.autograd.grad(fn(theta[0], theta[1]), theta)[0]


def test_each_reference_optimum_is_stationary_for_its_own_direction_only():
    """KL(p‖q) is stationary at moment matching (eqs. 63-68 in the population limit), KL(q‖p)
    at the quadrature optimum, and neither at the other's optimum: a swapped direction fails."""
    mean, var = _mixture_moments()
    mu_rev, r_rev = kd.reverse_optimum()
    assert _grad(kd.kl_forward, mean, math.log(var)).abs().max() < 1e-9
    assert _grad(kd.kl_reverse, mu_rev, r_rev).abs().max() < 1e-9
    assert _grad(kd.kl_reverse, mean, math.log(var)).abs().max() > 0.1
    assert _grad(kd.kl_forward, mu_rev, r_rev).abs().max() > 0.1
    # mode-seeking: the reverse optimum sits on the heavier mode with about its width
    assert abs(mu_rev - kd.MEANS[1]) < 0.1 and abs(math.exp(r_rev) - kd.SCALES[1] ** 2) < 0.1


def test_sgd_fits_reach_their_references(results):
    """Each stochastic fit lands within 0.05 in μ and 5% in σ² of its reference, while the two
    directions' optima are 1.2 apart in μ and a factor 5.8 apart in σ²: a fit that minimised
    the other direction (or followed a wrong gradient) would be far outside."""
    r = results["kl-directions"]
    for fit in r.rows:
        values = dict(zip(r.columns, fit))
        assert abs(values["μ"] - values["μ ref"]) < 0.05, fit
        assert abs(values["σ²"] / values["σ² ref"] - 1) < 0.05, fit
    forward, score, pathwise = r.rows
    mean, var = _mixture_moments()
    assert abs(forward[r.columns.index("σ²")] - var) < 0.3  # mass-covering: the mixture's spread
    for fit in (score, pathwise):
        assert fit[r.columns.index("σ²")] < var / 4  # mode-seeking
        assert fit[r.columns.index("KL(q‖p)")] < forward[r.columns.index("KL(q‖p)")]
    assert forward[r.columns.index("KL(p‖q)")] < min(score[r.columns.index("KL(p‖q)")],
                                                      pathwise[r.columns.index("KL(p‖q)")])


def test_score_function_surrogate_gradient_is_eq_82_with_its_plus_one(torch_seed):
    """The library's surrogate with f = log q - log p differentiates to eq. 82 sample by
    sample. Without the +1 the per-batch gradient changes by the batch mean of ∇ log q."""
    mu, r = torch.tensor(0.3, dtype=DT, requires_grad=True), torch.tensor(0.2, dtype=DT, requires_grad=True)
    q = kd.gaussian(mu, r)
    x = q.sample((4096,))
    log_q = q.log_prob(x)
    surrogate = score_function_surrogate(log_q, log_q - kd.target().log_prob(x))
    autograd = torch.stack(torch.autograd.grad(surrogate, [mu, r]))
    eq_82 = kd.score_function_gradient(x, mu.detach(), r.detach())
    torch.testing.assert_close(autograd, eq_82.mean(0), rtol=1e-12, atol=1e-12)
    without_plus_one = eq_82 - kd.score(x, mu.detach(), r.detach())
    assert (without_plus_one.mean(0) - autograd).abs().max() > 1e-3


def test_score_is_the_gradient_of_log_q(torch_seed):
    """Eqs. 50 and 57 against autograd of the Gaussian log density in (μ, r = log σ²)."""
    x = torch.randn(50, dtype=DT) * 2
    mu, r = torch.tensor(0.4, dtype=DT, requires_grad=True), torch.tensor(-0.3, dtype=DT, requires_grad=True)
    rows = [torch.stack(torch.autograd.grad(kd.gaussian(mu, r).log_prob(xi), [mu, r])) for xi in x]
    torch.testing.assert_close(kd.score(x, mu.detach(), r.detach()), torch.stack(rows))


def test_eq_82_estimates_the_reverse_kl_gradient_not_the_forward_one(torch_seed, assert_within_se):
    """The mean of eq. 82 over x ~ q is within 5 SE of ∇KL(q‖p) (quadrature, autograd) and
    far from ∇KL(p‖q)."""
    mu, r = 0.5, 0.3
    x = kd.gaussian(torch.tensor(mu, dtype=DT), torch.tensor(r, dtype=DT)).sample((200_000,))
    g = kd.score_function_gradient(x, torch.tensor(mu, dtype=DT), torch.tensor(r, dtype=DT))
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(g))
    assert_within_se(mean, _grad(kd.kl_reverse, mu, r), se, "eq. 82 vs ∇KL(q‖p)")
    assert ((mean - _grad(kd.kl_forward, mu, r)).abs() / se).max() > 50


# ---------------------------------------------------------------------------- gradient-estimators

@pytest.mark.parametrize("fn", [ge.quadratic(), ge.sine()], ids=lambda f: f.name)
@pytest.mark.parametrize("estimator", ge.ESTIMATORS)
def test_both_estimators_are_unbiased(fn, estimator, torch_seed, assert_within_se):
    grads = ge.per_sample_gradients(fn, 3, 40_000, estimator)
    assert_within_se(grads.mean(0), ge.exact_gradient(fn, 3), grads.std(0) / math.sqrt(len(grads)), estimator)


def test_a_wrong_score_is_detected(torch_seed):
    """∂ log q/∂σ = ((z - μ)²/σ² - 1)/σ; dropping the -1/σ biases the σ-gradient by -E[f]/σ."""
    fn, n = ge.sine(), 40_000
    z = ge.MU + ge.SIGMA * torch.randn(n, 1, dtype=DT)
    wrong = fn.f(z) * (z[:, 0] - ge.MU) ** 2 / ge.SIGMA**3
    exact = ge.exact_gradient(fn, 1)[1]
    assert abs(wrong.mean() - exact) / (wrong.std() / math.sqrt(n)) > 20


def test_table_gradient_means_are_within_5_se(results):
    """Against the exact gradient, or for the neural net (no closed form) against each other."""
    r = results["gradient-estimators"]
    for fit in r.rows:
        assert fit[r.columns.index("max |z|")] < 5, fit


def test_variance_falls_as_one_over_samples(results):
    """Each log-variance is estimated from R = 100 repeats (SE ≈ √(2/R) ≈ 0.14 for near-normal
    averages), so the fitted slope over log L ∈ [0, 5.5] has SE ≈ 0.03; ±0.25 leaves room for
    the heavy tails of one-sample score-function estimates."""
    for slope in column(results["gradient-estimators"], "slope of var vs L"):
        assert -1.25 < slope < -0.75


def test_score_function_variance_grows_with_dimension_pathwise_does_not(results):
    r = results["gradient-estimators"]
    for name in ("quadratic", "sine"):
        sf, pw = ([v for v in r.rows if v[0] == name and v[1] == est][0] for est in ge.ESTIMATORS)
        lo, hi = r.columns.index("var d=1"), r.columns.index("var d=256")
        assert sf[hi] / sf[lo] > 100
        assert 0.8 < pw[hi] / pw[lo] < 1.25  # a separable f: ∂/∂μ₁ does not depend on d
        assert pw[lo] < sf[lo]


# -------------------------------------------------------------------------------------- naive-mc

def _relative_estimates(d: int, proposal: str, samples=500, repeats=200):
    g = torch.Generator().manual_seed(d)
    model = naive_mc.make_model(d, g)
    x = model.sample(1, g)[0][0]
    return (naive_mc.estimates(model, x, proposal, samples, repeats) - model.log_marginal(x)).exp()


@pytest.mark.parametrize("proposal", ["prior", "q"])
def test_both_estimators_of_p_x_are_unbiased_in_low_dimension(proposal, torch_seed, assert_within_se):
    ratio = _relative_estimates(2, proposal)
    assert_within_se(ratio.mean(), 1.0, ratio.std() / math.sqrt(len(ratio)), f"p̂(x)/p(x), {proposal}")


def test_prior_sampling_fails_in_high_dimension_importance_sampling_does_not(torch_seed, assert_within_se):
    ratio = _relative_estimates(32, "q")
    assert_within_se(ratio.mean(), 1.0, ratio.std() / math.sqrt(len(ratio)), "p̂(x)/p(x), q")
    log_ratio = _relative_estimates(32, "prior").log()
    assert log_ratio.mean() + 5 * log_ratio.std() / math.sqrt(len(log_ratio)) < -5  # nats too low


def test_importance_weights_need_the_proposal_density(torch_seed):
    """Σ p(x, z_k), z_k ~ q, without the division by q(z_k|x), is not an estimate of p(x)."""
    g = torch.Generator().manual_seed(4)
    model = naive_mc.make_model(4, g)
    x = model.sample(1, g)[0][0]
    z = naive_mc.mean_field(model.posterior(x)).sample((20_000,))
    log_joint = model.decode(z).log_prob(x) + model.prior().log_prob(z)
    wrong = torch.logsumexp(log_joint, 0) - math.log(len(z))
    assert abs(wrong - model.log_marginal(x)) > 1


def test_naive_mc_table(results):
    r = results["naive-mc"]
    kl_prior = column(r, "KL(p(z|x)‖p(z))")
    assert all(b > a for a, b in zip(kl_prior, kl_prior[1:]))
    assert r.rows[-1][r.columns.index("prior: error")] < -5
    assert abs(r.rows[-1][r.columns.index("IS: error")]) < 1


# -------------------------------------------------------------------------------------- elbo-gap

def _model_and_x(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = elbo_gap.make_model(g)
    return model, model.sample(3, g)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_log_px_is_elbo_plus_kl_to_the_posterior(seed):
    model, xs = _model_and_x(seed)
    for x in xs:
        posterior, log_px = model.posterior(x), model.log_marginal(x)
        for name, q in elbo_gap.candidates(posterior).items():
            gap = torch.distributions.kl_divergence(q, posterior)
            torch.testing.assert_close(model.elbo(q, x) + gap, log_px, rtol=0, atol=1e-10)
            if name != "exact posterior (t=1)":
                assert gap > 1e-3
            if name in ("prior (t=0)", "t=0.5", "mean-field optimum"):  # KL is symmetric for a pure shift
                swapped = torch.distributions.kl_divergence(posterior, q)
                assert (model.elbo(q, x) + swapped - log_px).abs() > 1e-3  # the identity needs KL(q‖p(z|x))


def test_the_gap_closes_at_the_exact_posterior_with_zero_variance():
    model, xs = _model_and_x()
    repeats = 1000
    values = sgvb_a(model, xs.repeat(repeats, 1)).elbo.view(repeats, -1)
    torch.testing.assert_close(values, model.log_marginal(xs).expand(repeats, -1), rtol=0, atol=1e-10)


def test_both_elbo_estimators_agree_with_the_closed_form(results):
    r = results["elbo-gap"]
    a, b, exact = (r.columns.index(c) for c in ("A: E[log p(x,z) - log q]", "B: E[log p(x|z)] - KL(q‖p(z))",
                                               "ELBO exact"))
    for fit in r.rows:
        for i in (a, b):
            se = fit[i + 1]
            assert abs(fit[i] - fit[exact]) <= 5 * se + 1e-10, (fit[0], r.columns[i])
        assert abs(fit[r.columns.index("ELBO + KL - log p(x)")]) < 1e-10
    assert row(r, "mean-field optimum")["KL(q‖p(z|x))"] > 0.01  # a restricted family keeps a gap


def test_linear_gaussian_posterior_is_bayes_rule(torch_seed):
    """log p(x|z) + log p(z) - log p(z|x) = log p(x) for every z."""
    model = LinearGaussian.random(4, 3, sigma=0.3, signal=2.0, generator=torch.Generator().manual_seed(0))
    x, _ = model.sample(5)
    z = torch.randn(7, 5, 3, dtype=DT)
    log_px = model.decode(z).log_prob(x) + model.prior().log_prob(z) - model.posterior(x).log_prob(z)
    torch.testing.assert_close(log_px, model.log_marginal(x).expand(7, -1))


# -------------------------------------------------------------------------------------------- em

def test_em_never_decreases_and_matches_its_references(results):
    r = results["em"]
    gmm, ppca = r.rows
    cols = r.columns
    for fit in r.rows:
        assert fit[cols.index("min Δ log-lik")] > -1e-12
        assert abs(fit[cols.index("log-lik (EM)")] - fit[cols.index("log-lik (ref)")]) < 1e-6
    assert gmm[cols.index("max |Δ parameter|")] < 1e-8  # same init, same iterations: same numbers
    assert ppca[cols.index("max |Δ parameter|")] < 1e-2


def test_gmm_log_likelihood_per_iteration_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    X = em.gmm_data(300, g)
    init = em.gmm_init(X, 3, g)
    _, trace = em.gmm_em(X, init, 15)
    np.testing.assert_allclose(trace[:-1], em.sklearn_gmm(X, init, 15).lower_bounds_, rtol=0, atol=1e-10)
    assert min(np.diff(trace)) > -1e-12


def test_ppca_em_converges_to_the_closed_form_maximum_likelihood():
    g = torch.Generator().manual_seed(2)
    Y = LinearGaussian.random(6, 2, sigma=0.4, signal=2.0, generator=g).sample(400, g)[0]
    model, trace = em.ppca_em(Y, 2, 150, g)
    assert min(np.diff(trace)) > -1e-12
    torch.testing.assert_close(model.marginal().covariance_matrix, em.ppca_ml_covariance(Y, 2), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- reparam-families

def test_reparam_families_table(results):
    r = results["reparam-families"]
    assert len(r.rows) == 23
    assert max(column(r, "max |z|")) < 5


# ---------------------------------------------------------------------------------- online-drift

def test_online_drift_follows_the_stream_and_writes_its_numbers(results):
    """The quick run (2,000 images of 0-4, then 2,000 of 5-9, each seen once; 500 test images of each half).
    The curve is measured every 500 images from 0 to 4,000, the switch among them. The model follows the
    stream: while it sees 0-4 it ends better on 0-4 than on 5-9; while it sees 5-9 the 5-9 ELBO gains more
    than the 0-4 one, and ends above it although 0-4 (with its 1s) is the easier half. The quick run (seed 0)
    moves the gap ELBO(5-9) - ELBO(0-4) by 16 nats over the second half; the test asks for 5, a margin
    against changes of floating-point order, not of the seed (the run is deterministic)."""
    import json

    result = results["online-drift"]
    numbers = json.loads((result.figure.parent / "lab-online-drift.json").read_text())
    assert (numbers["per_half"], numbers["every"], numbers["passes"]) == (2000, 500, 1)
    curve = numbers["curve"]
    assert [r["seen"] for r in curve] == list(range(0, 4001, 500))
    switch, end = curve[4], curve[-1]
    assert row(result, "after 2000 images of 0-4 (the switch)")["test ELBO 0-4"] == switch["0-4"]
    assert switch["0-4"] > switch["5-9"] and end["5-9"] > end["0-4"]
    assert (end["5-9"] - end["0-4"]) - (switch["5-9"] - switch["0-4"]) > 5
    assert end["5-9"] - switch["5-9"] > end["0-4"] - switch["0-4"]
    assert curve[0]["0-4"] < switch["0-4"] - 100  # it learned: an untrained decoder is hundreds of nats worse
