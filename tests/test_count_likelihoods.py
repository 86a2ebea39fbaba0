"""The count likelihoods against scipy.stats: log-probabilities on a grid of parameters with extremes,
the library size, sampling moments against closed forms, the support check, and end to end through
the CLI on generated counts.

Every registered CountLikelihood must have a row in COUNT_REFERENCE. Monte Carlo checks use the
5-standard-error tolerance explained in conftest.py.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import aevb
from aevb.cli import main
from aevb.config import ModelConfig
from aevb.distributions import LIKELIHOODS, CountLikelihood
from aevb.errors import ConfigError, DataError
from aevb.objectives import Estimator

pytestmark = pytest.mark.usefixtures("torch_seed")
DT = torch.float64  # at x = 1e6 the log-gamma terms are ~1e7 and cancel to ~10: float32 keeps no digit of the answer
VECTOR_COUNTS = {"multinomial"}  # a law of whole count vectors, not per feature: tests/test_simplex.py checks it with scipy
COUNTS = [name for name in LIKELIHOODS.names()
          if issubclass(LIKELIHOODS[name], CountLikelihood) and name not in VECTOR_COUNTS]


# ------------------------------------------------------------------------------ reference table
# name -> (scipy log-pmf of x given the per-feature parameters, the closed-form mean and variance);
# the parameters are μ (mean of the count family), θ (inverse dispersion), g (zero-inflation logit, π =
# sigmoid(g)) and, for the binomial, N and the logit h.

def _nb_logpmf(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))  # n = θ, p = θ/(θ+μ)


def _zinb_logpmf(x, mu, theta, g):
    log_pi, log_keep = special.log_expit(g), special.log_expit(-g)  # log π, log(1 - π)
    nb = _nb_logpmf(x, mu, theta)
    return np.where(x == 0, np.logaddexp(log_pi, log_keep + nb), log_keep + nb)  # log(π + (1-π) NB(0)) at 0


def _zinb_moments(mu, theta, g):
    pi = special.expit(g)
    return (1 - pi) * mu, (1 - pi) * (mu + mu**2 / theta) + pi * (1 - pi) * mu**2


COUNT_REFERENCE = {
    "poisson": (lambda x, p: stats.poisson.logpmf(x, p["mu"]), lambda p: (p["mu"], p["mu"])),
    "negative_binomial": (lambda x, p: _nb_logpmf(x, p["mu"], p["theta"]),
                          lambda p: (p["mu"], p["mu"] + p["mu"]**2 / p["theta"])),
    "zero_inflated_negative_binomial": (lambda x, p: _zinb_logpmf(x, p["mu"], p["theta"], p["g"]),
                                        lambda p: _zinb_moments(p["mu"], p["theta"], p["g"])),
    "binomial": (lambda x, p: stats.binom.logpmf(x, p["N"], special.expit(p["h"])),
                 lambda p: (p["N"] * special.expit(p["h"]), p["N"] * special.expit(p["h"]) * special.expit(-p["h"]))),
}


def make(name, n_features, **options):
    """The likelihood ``name`` over (n_features,) in float64; mean heads give log μ unless library_size is set."""
    cfg = ModelConfig(likelihood=name, **options)
    if name == "binomial":
        cfg.likelihood_trials = cfg.likelihood_trials or 255
    elif "library_size" not in options:
        cfg.library_size = "none"
    return LIKELIHOODS[name].from_config(cfg, (n_features,)).to(DT)


def head(like, params, log_mean=None):
    """The decoder output that gives ``params`` (per feature): [log μ or h, g, log θ] as the likelihood's heads
    are laid out, with θ copied into a learned dispersion; ``log_mean`` replaces log μ (for proportions)."""
    if like.registered_name == "binomial":
        return torch.as_tensor(params["h"], dtype=DT)
    blocks = [torch.as_tensor(np.log(params["mu"]), dtype=DT) if log_mean is None else log_mean]
    if like.registered_name == "zero_inflated_negative_binomial":
        blocks.append(torch.as_tensor(params["g"], dtype=DT))
    if "theta" in params:
        log_theta = torch.as_tensor(np.log(params["theta"]), dtype=DT)
        if like.dispersion == "predicted":
            blocks.append(log_theta)
        else:
            with torch.no_grad():
                like.log_theta.copy_(log_theta if like.dispersion == "feature" else log_theta[0])
    return torch.cat(torch.broadcast_tensors(*blocks), -1)


def grid(name):
    """Per-feature parameters and counts over the cartesian grid, extremes included: zero and huge counts
    (1e6), tiny and huge means (1e-6, 1e6), tiny and huge dispersions (θ = 1e-4, 1e4), zero inflation from
    none (g = -20) to mostly (g = 3); for the binomial N up to 1e6 and counts 0 and N."""
    if name == "binomial":
        rows = [(n, x, h) for n in (1, 255, 10**6) for x in sorted({0, 1, n // 2, n - 1, n})
                for h in (-15, -3, 0, 2, 15)]
        n, x, h = map(np.array, zip(*rows))
        return {"N": n, "h": h.astype(float)}, x.astype(float)
    axes = {"mu": [1e-6, 1e-2, 1.0, 30.0, 1e4, 1e6], "x": [0, 1, 5, 100, 1e4, 1e6]}
    if name != "poisson":
        axes["theta"] = [1e-4, 0.1, 1.0, 10.0, 1e4]
    if name == "zero_inflated_negative_binomial":
        axes["g"] = [-20.0, -2.0, 0.0, 3.0]
    values = np.meshgrid(*axes.values(), indexing="ij")
    params = {k: v.ravel().astype(float) for k, v in zip(axes, values)}
    return params, params.pop("x")


def test_every_count_likelihood_has_a_row():
    missing = set(COUNTS) - set(COUNT_REFERENCE)
    assert not missing, f"add rows to COUNT_REFERENCE (scipy log-pmf, closed-form moments) for {sorted(missing)}"
    assert {"poisson", "negative_binomial", "zero_inflated_negative_binomial", "binomial"} <= set(COUNTS)


@pytest.mark.parametrize("name", COUNTS)
def test_log_prob_matches_scipy_on_a_grid_with_extremes(name):
    params, x = grid(name)
    if name == "binomial":  # one likelihood per number of trials
        cases = [(make(name, int((params["N"] == n).sum()), likelihood_trials=int(n)), params["N"] == n)
                 for n in np.unique(params["N"])]
    else:
        cases = [(make(name, len(x)), np.ones(len(x), bool))]
    for like, at in cases:
        sub = {k: v[at] for k, v in params.items()}
        p, x_at = like(head(like, sub)), torch.as_tensor(x[at], dtype=DT)
        ref = COUNT_REFERENCE[name][0](x[at], sub)
        assert np.isfinite(ref).all()
        np.testing.assert_allclose(p.base_dist.log_prob(x_at).detach().numpy(), ref, rtol=1e-5)
        torch.testing.assert_close(p.log_prob(x_at), p.base_dist.log_prob(x_at).sum())


# ------------------------------------------------------------------------------ library size
MEAN_COUNTS = [name for name in COUNTS if name != "binomial"]
F = 6


def dispersions(name):
    return ["feature", "shared", "predicted"] if "likelihood_dispersion" in LIKELIHOODS[name].options else [None]


def moderate(name, n_features=F, shared=False):
    """Per-feature θ and zero-inflation logits g of a likelihood (μ comes from the proportions)."""
    params = {}
    if name != "poisson":
        params["theta"] = np.full(n_features, 2.5) if shared else np.geomspace(0.1, 50, n_features)
    if name == "zero_inflated_negative_binomial":
        params["g"] = np.linspace(-3, 1, n_features)
    return params


def options(name, dispersion, library_size="observed"):
    return {"library_size": library_size} | ({} if dispersion is None else {"likelihood_dispersion": dispersion})


@pytest.mark.parametrize("name,dispersion", [(n, d) for n in MEAN_COUNTS for d in dispersions(n)])
def test_observed_library_scales_the_proportions(name, dispersion):
    """log_prob(x) is the family at μ = (Σ_i x_i) softmax(h); the mean at a library size l is l softmax(h)
    (times 1 - π for the ZINB), and by default l is the training mean."""
    like = make(name, F, **options(name, dispersion)).eval()  # scoring x leaves the default library at 1
    params = moderate(name, shared=dispersion == "shared")
    log_mean = torch.randn(4, F, dtype=DT)
    h = head(like, params, log_mean)
    x = torch.tensor([[0, 1, 0, 2, 0, 0], [3, 0, 7, 1, 12, 0], [40, 2, 0, 0, 9, 100], [0, 0, 0, 0, 0, 1]], dtype=DT)
    x[2] *= 10**4  # a library of 1.5e6
    p = like(h)
    rho = torch.softmax(log_mean, -1).numpy()
    mu = x.sum(-1, keepdim=True).numpy() * rho
    reference = COUNT_REFERENCE[name][0](x.numpy(), params | {"mu": mu}).sum(-1)
    np.testing.assert_allclose(p.log_prob(x).detach().numpy(), reference, rtol=1e-5)

    library = torch.tensor([1.0, 10.0, 1e3, 1e6], dtype=DT)
    expected_mean, expected_var = COUNT_REFERENCE[name][1](params | {"mu": library.numpy()[:, None] * rho})
    given = like(h, library=library)
    np.testing.assert_allclose(given.mean.detach().numpy(), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(given.variance.detach().numpy(), expected_var, rtol=1e-10)
    torch.testing.assert_close(like(h, library=7.0).mean, like(h, library=torch.full((4,), 7.0)).mean)
    torch.testing.assert_close(p.mean, like(h, library=1.0).mean)


@pytest.mark.parametrize("name", MEAN_COUNTS)
def test_default_library_is_the_mean_library_of_the_training_data(name):
    """In training mode log_prob folds the library sizes it scores into a running mean (one per datapoint,
    however many samples of z); in eval mode it leaves it; the state dict carries it."""
    like = make(name, F, library_size="observed")
    assert like.mean_library.item() == 1.0 and like.libraries_seen.item() == 0
    batches = [torch.poisson(torch.full((n, F), rate, dtype=DT)) + 1 for n, rate in ((5, 3.0), (7, 40.0), (2, 900.0))]
    for xb in batches:
        like(torch.randn(3, len(xb), like.n_heads * F, dtype=DT)).log_prob(xb)  # 3 samples of z per datapoint
    libraries = torch.cat(batches).sum(-1)
    assert like.libraries_seen.item() == len(libraries)
    torch.testing.assert_close(like.mean_library, libraries.mean())
    like.eval()
    like(torch.randn(2, like.n_heads * F, dtype=DT)).log_prob(batches[0][:2])
    assert like.libraries_seen.item() == len(libraries)
    assert {"mean_library", "libraries_seen"} <= set(like.state_dict())


# ------------------------------------------------------------------------------ sampling moments
MOMENT_PARAMS = {"mu": np.array([0.5, 4.0, 50.0]), "theta": np.array([0.5, 2.0, 20.0]),
                 "g": np.array([-1.0, 0.5, -3.0]), "N": 255, "h": np.array([-3.0, 0.0, 1.5])}


@pytest.mark.parametrize("name", COUNTS)
def test_sampling_moments_match_the_closed_forms(name, assert_within_se):
    """200k draws: the sample mean within 5 SE (SE = sqrt(Var/n)) and the sample variance within 5 SE
    (SE = sqrt((m4 - s⁴)/n), m4 the sample fourth central moment) of the closed forms; the
    distribution's own mean and variance equal them."""
    like = make(name, 3)
    params = {k: v for k, v in MOMENT_PARAMS.items() if k in ("N", "h")} if name == "binomial" else \
        {k: v for k, v in MOMENT_PARAMS.items() if k == "mu" or k in moderate(name, 3)}
    p = like(head(like, params)).base_dist
    mean, var = (torch.as_tensor(m, dtype=DT).expand(3) for m in COUNT_REFERENCE[name][1](params))
    torch.testing.assert_close(p.mean.detach(), mean)
    torch.testing.assert_close(p.variance.detach(), var)
    n = 200_000
    s = p.sample((n,))
    assert (s == s.round()).all() and (s >= 0).all()
    m = s.mean(0)
    c = s - m
    v = c.pow(2).sum(0) / (n - 1)
    assert_within_se(m, mean, (var / n).sqrt(), f"{name} mean")
    assert_within_se(v, var, ((c.pow(4).mean(0) - v**2) / n).sqrt(), f"{name} variance")


# ------------------------------------------------------------------------------ stability
def test_poisson_gradient_stays_exact_where_the_rate_underflows():
    """d/dh log Poisson(x; e^h) = x - e^h; at h = -200 (e^h = 0 in float32) that is x, not NaN."""
    h = torch.tensor([-200.0, -200.0, 0.0, 3.0], requires_grad=True)
    x = torch.tensor([0.0, 1.0, 2.0, 0.0])
    like = LIKELIHOODS["poisson"].from_config(ModelConfig(likelihood="poisson", library_size="none"), (4,))
    log_p = like(h).base_dist.log_prob(x)
    log_p.sum().backward()
    torch.testing.assert_close(log_p.detach(), torch.tensor([0.0, -200.0, -1 - math.log(2), -math.exp(3)]))
    torch.testing.assert_close(h.grad, x - h.detach().exp())


def test_zinb_gradients_are_finite_at_the_extremes():
    """At zero counts with huge means and tiny dispersions, and at huge counts with tiny means, in float32."""
    like = make("zero_inflated_negative_binomial", 4).float()
    with torch.no_grad():
        like.log_theta.copy_(torch.tensor([1e-4, 1e4, 1e-4, 1e4]).log())
    h = torch.tensor([[math.log(1e6)] * 2 + [math.log(1e-6)] * 2, [-20.0, 20.0, -20.0, 20.0]]).reshape(1, 8)
    h.requires_grad_()
    like(h).log_prob(torch.tensor([0.0, 0.0, 1e6, 1e6])).sum().backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(like.log_theta.grad).all()


# ------------------------------------------------------------------------------ support and options
@pytest.mark.parametrize("name", COUNTS)
def test_check_support(name):
    like = make(name, 4, **({} if name == "binomial" else {"library_size": "observed"}))
    like.check_support(torch.tensor([[0.0, 1.0, 2.0, 255.0], [3.0, 0.0, 0.0, 7.0]]), "the training data")
    counts = "0, 1, 2, \\.\\.\\." if name != "binomial" else "0, 1, \\.\\.\\., 255"
    cases = [(-1.0, f"has negative values \\(down to -1\\) but the {name} likelihood needs counts {counts};"),
             (0.5, "has non-integer values \\(e.g. 0.5\\) .* store the counts as integers")]
    if name == "binomial":
        cases.append((256.0, "has counts up to 256 but --likelihood-trials is 255; "
                             "set --likelihood-trials to at least 256"))
    for bad, match in cases:
        x = torch.tensor([[0.0, 1.0, bad, 3.0]])
        with pytest.raises(DataError, match=match) as e:
            like.check_support(x, "the training data")
        assert "\n" not in str(e.value) and str(e.value).startswith("the training data")
    empty = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    if name == "binomial":
        like.check_support(empty, "x")
        return
    with pytest.raises(DataError, match="1 datapoints without any count.*use --library-size none"):
        like.check_support(empty, "the test data")
    make(name, 4, library_size="none").check_support(empty, "x")


@pytest.mark.parametrize("name,options,heads,parameters", [
    ("poisson", {}, 1, {}),
    ("negative_binomial", {}, 1, {"log_theta": (2, 3)}),
    ("negative_binomial", {"likelihood_dispersion": "shared"}, 1, {"log_theta": ()}),
    ("negative_binomial", {"likelihood_dispersion": "predicted"}, 2, {}),
    ("zero_inflated_negative_binomial", {}, 2, {"log_theta": (2, 3)}),
    ("zero_inflated_negative_binomial", {"likelihood_dispersion": "predicted", "library_size": "none"}, 3, {}),
    ("binomial", {"likelihood_trials": 255}, 1, {}),
])
def test_heads_and_learned_dispersions(name, options, heads, parameters):
    like = LIKELIHOODS[name].from_config(ModelConfig(likelihood=name, **options), (2, 3))
    assert like.n_heads == heads
    assert {k: tuple(v.shape) for k, v in like.named_parameters()} == parameters
    h = torch.randn(5, heads * 2, 3, requires_grad=True)
    p = like(h)
    assert p.batch_shape == (5,) and p.event_shape == (2, 3)
    p.log_prob(torch.poisson(torch.full((5, 2, 3), 4.0)).clamp(max=255) + 1).sum().backward()
    assert (h.grad.flatten(2).abs().sum(-1) > 0).all()  # every head moves the log-likelihood


@pytest.mark.parametrize("cfg,match", [
    ({"likelihood": "bernoulli", "library_size": "none"},
     "^--library-size applies to poisson, negative_binomial and zero_inflated_negative_binomial, not bernoulli$"),
    ({"likelihood": "poisson", "likelihood_dispersion": "shared"},
     "^--likelihood-dispersion applies to negative_binomial and zero_inflated_negative_binomial, not poisson$"),
    ({"likelihood": "gaussian", "likelihood_trials": 255}, "^--likelihood-trials applies to binomial, not gaussian$"),
    ({"likelihood": "poisson", "likelihood_scale": "fixed"},
     "^--likelihood-scale and --likelihood-scale-init apply to gaussian, sigmoid_gaussian and laplace, not poisson$"),
    ({"likelihood": "binomial"}, "--likelihood binomial needs --likelihood-trials N"),
    ({"likelihood": "poisson", "library_size": "observd"},
     "unknown library_size 'observd' \\(did you mean 'observed'\\?\\)"),
    ({"likelihood": "negative_binomial", "likelihood_dispersion": "gene"}, "unknown likelihood_dispersion 'gene'"),
])
def test_options_a_likelihood_does_not_take_are_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        LIKELIHOODS[cfg["likelihood"]].from_config(ModelConfig(**cfg), (4,))


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def counts_npz(tmp_path_factory):
    """400 datapoints of 30 negative binomial counts (θ = 5) with means l softmax(W z), z ~ N(0, I_2), library
    sizes l uniform in [50, 500): 300 for training, 100 for testing, stored as int64."""
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=(400, 2)), rng.normal(size=(2, 30))
    mu = rng.integers(50, 500, size=(400, 1)) * special.softmax(z @ w, axis=1)
    x = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.int64)
    path = tmp_path_factory.mktemp("counts") / "counts.npz"
    np.savez(path, x_train=x[:300], x_test=x[300:])
    return path, x


@pytest.mark.parametrize("name", ["poisson", "negative_binomial"])
def test_train_and_evaluate_through_the_cli(counts_npz, tmp_path, name):
    """2 epochs, then the IS log-likelihood (k = 100) is at least the ELBO (L = 50 draws of z per datapoint)
    up to Monte Carlo error: the expected k-sample bound is ≥ the ELBO for every datapoint, and the two
    test-set means differ from their expectations by independent errors with standard errors se_IS (the
    evaluator's) and se_ELBO = sqrt(Σ_i Var_z[ELBO_i] / L) / n, Var_z from 20 fresh single draws; the check
    allows 5 sqrt(se_IS² + se_ELBO²). After 2 epochs Var_z is large (sd ~ 400 nats at L = 1), hence L = 50."""
    path, x = counts_npz
    run = tmp_path / name
    assert main(["train", "--dataset", f"npz:{path}", "--likelihood", name, "--hidden", "32", "--latent-dim", "2",
                 "--epochs", "2", "--batch-size", "32", "--out", str(run), "--quiet", "--no-report"]) == 0
    assert main(["evaluate", str(run), "--k", "100", "--samples", "50"]) == 0
    result = json.loads((run / "eval.json").read_text())
    model = aevb.load(run)
    assert model.likelihood.libraries_seen.item() == 2 * 300
    assert model.likelihood.mean_library.item() == pytest.approx(x[:300].sum(1).mean(), rel=1e-5)
    x_test = torch.as_tensor(x[300:], dtype=torch.float32)
    with torch.no_grad():
        draws = torch.stack([model.elbo(x_test, Estimator("B")).elbo for _ in range(20)]).double()
    se_one = draws.var(0).sum().sqrt().item() / len(x_test)  # of a mean over the test set with one draw each
    se_elbo, se_is = se_one / math.sqrt(50), result["log_likelihood"]["standard_error"]
    gap = result["log_likelihood"]["value"] - result["elbo_B"]["elbo"]
    assert gap >= -5 * math.hypot(se_is, se_elbo), (gap, se_is, se_elbo)
    assert result["elbo_B"]["elbo"] == pytest.approx(draws.mean().item(), abs=5 * se_one * math.sqrt(1 / 50 + 1 / 20))
