"""Evaluation against closed forms: the IS log-likelihood of a linear-Gaussian model converges to the
exact log p(x) within its reported standard error; the standard error is the spread it claims; the
memory budget bounds one decoder pass as measured by the allocator; active units and KL per
dimension are exact on models built with known dead dimensions."""
import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from aevb.cli import main
from aevb.config import ModelConfig
from aevb.errors import ConfigError
from aevb.evaluate import (ACTIVE_THRESHOLD, activity, active_units, collapse_warning, diagnostics, evaluate,
                           format_evaluation, importance_sampled, kl_per_dimension, sampling_cost)
from aevb.memory import chunk_sizes, peak_bytes
from aevb.models import DecodesLatent, LatentModel, build_model
from aevb.objectives import sgvb_b


class LinearGaussian(LatentModel, DecodesLatent):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so log p(x) = log N(x; b, WWᵀ + σ²I) exactly; q(z|x)
    is the exact posterior with its mean shifted by ``shift`` and its standard deviations scaled by
    ``widen`` (diagonal), an imperfect proposal so that importance sampling has work to do. A model
    under the contract of aevb.models.base: the evaluator needs nothing else of it."""

    def __init__(self, D=6, d=3, sigma=0.5, shift=0.3, widen=1.4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(D, d, generator=g, dtype=torch.float64), requires_grad=False)
        self.b = nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64), requires_grad=False)
        self.sigma, self.shift, self.widen = sigma, shift, widen
        self.x_shape, self.latent_dim = (D,), d
        precision = torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / sigma**2
        self.post_cov = torch.linalg.inv(precision)

    def encode(self, x):
        mean = (x - self.b) @ self.W @ self.post_cov / self.sigma**2 + self.shift
        scale = self.post_cov.diagonal().sqrt() * self.widen
        return Independent(Normal(mean, scale.expand_as(mean)), 1)

    def decode(self, z):
        return Independent(Normal(z @ self.W.T + self.b, self.sigma), 1)

    def prior(self):
        zero = torch.zeros(self.latent_dim, dtype=torch.float64)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def sample(self, n):
        return self.decode(self.prior().sample((n,))).mean

    def reconstruct(self, x):
        return self.decode(self.encode(x).mean).mean

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("max_memory", [2**30, 20_000])  # one pass per datapoint batch; chunks of a few samples
def test_is_estimate_converges_to_the_exact_log_likelihood(torch_seed, assert_within_se, max_memory):
    model = LinearGaussian()
    x = model.sample_x(40)
    k = 2000
    cost = sampling_cost(model, x)
    batch, chunk = chunk_sizes(cost, k, len(x), max_memory)
    if max_memory < 2**30:
        assert batch == 1 and chunk < k  # really chunked: several passes per datapoint
    log_p, se = importance_sampled(model, x, k, max_memory, cost)
    exact = model.log_px(x)
    # log of a mean of k weights is biased low by Var(w)/(2k E[w]²) = se²/2 (delta method); correct it, then
    # every datapoint must sit within 5 of its own standard errors of the exact value
    assert_within_se(log_p + se**2 / 2, exact, se, "IS log-likelihood per datapoint")
    assert_within_se((log_p + se**2 / 2).mean(), exact.mean(), se.pow(2).sum().sqrt() / len(x), "mean over datapoints")
    assert se.max() < 0.1  # the tolerance is tight enough to mean something ...
    elbo = sgvb_b(model, x, 200).elbo.mean()
    assert exact.mean() - elbo > 20 * se.pow(2).sum().sqrt() / len(x)  # ... the ELBO would fail it


def test_iwae_bound_rises_with_k_towards_log_px(torch_seed):
    model = LinearGaussian(shift=0.6, widen=1.8)
    x = model.sample_x(300)
    exact = model.log_px(x).mean().item()
    bounds = [importance_sampled(model, x, k)[0].mean().item() for k in (1, 10, 100, 1000)]
    assert bounds == sorted(bounds), bounds
    gaps = [exact - b for b in bounds]
    assert gaps[0] > 0.5 and 0 < gaps[-1] < gaps[0] / 20, gaps


def test_reported_standard_error_is_the_spread_of_the_estimator(torch_seed):
    model = LinearGaussian()
    x = model.sample_x(1).repeat(600, 1)  # 600 independent estimates of one log p(x), in one vectorised call
    log_p, se = importance_sampled(model, x, 1000)
    spread = log_p.std().item()
    assert spread == pytest.approx(se.mean().item(), rel=0.15)  # std of a std from n=600 is ~3%; delta method ~few %


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_max_memory_bounds_one_decoder_pass(torch_seed, net):
    model = build_model(ModelConfig(net=net, hidden=[32], latent_dim=4, conv_channels=[8, 16]), (1, 16, 16)).eval()
    x = torch.rand(12, 1, 16, 16).round()
    cost = sampling_cost(model, x)
    assert cost.measured
    for mib in (0.5, 2.0):
        budget = int(mib * 2**20)
        peak = peak_bytes(lambda: importance_sampled(model, x, 300, budget, cost), x.device)
        assert 0 < peak <= budget, (net, mib, peak)
        assert peak > 0.5 * budget or chunk_sizes(cost, 300, len(x), budget) == (len(x), 300)  # the budget is used
    with pytest.raises(ConfigError, match="--max-memory"):
        importance_sampled(model, x, 300, 1000, cost)


def _linear_vae(targets, n=2000, seed=0):
    """A VAE whose encoder is one linear layer, with posterior mean μ_d = c_d·x_d, c_d chosen so that
    Var_x(μ_d) is exactly targets[d] on the data returned (population variance)."""
    d = len(targets)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=[], latent_dim=d), (d,)).eval()
    x = torch.rand(n, d).round()
    layer = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        v = x.double().var(0, unbiased=False)
        for i, t in enumerate(targets):
            layer.weight[i, i] = math.sqrt(t / v[i])
            layer.bias[i] = 0.3  # a constant offset does not make a unit active
            layer.bias[d + i] = -2.0  # log-variance
    return model, x


def test_active_units_exact_on_a_model_with_known_dead_dimensions():
    # Burda et al.'s criterion is on the variance: sqrt(0.005) = 0.07 would pass a threshold on the std
    targets = [0.0, 0.005, 0.0095, 0.0105, 0.02, 1.0]
    model, x = _linear_vae(targets)
    a = activity(model, x)
    assert a.tolist() == pytest.approx(targets, rel=1e-4, abs=1e-9)
    assert active_units(model, x) == 3
    d = diagnostics(model, x)
    assert d["active_units"] == 3 and d["latent_dim"] == 6 and d["threshold"] == ACTIVE_THRESHOLD
    assert d["warning"] is None


def test_collapse_warning_when_no_or_few_units_are_active():
    dead, x = _linear_vae([0.0] * 5)
    warning = diagnostics(dead, x)["warning"]
    assert warning.startswith("posterior collapse: none of the 5 latent dimensions is active")
    one, x = _linear_vae([0.0, 0.0, 0.5, 0.0, 0.0])
    assert "only 1 of 5" in diagnostics(one, x)["warning"]
    assert collapse_warning(2, 20) is None and "only 1 of 20" in collapse_warning(1, 20)
    assert collapse_warning(1, 1) is None and collapse_warning(0, 1) is not None
    assert collapse_warning(19, 200) is not None and collapse_warning(20, 200) is None


def test_kl_per_dimension_closed_form_sums_to_the_kl_and_matches_monte_carlo(torch_seed, assert_within_se):
    model = build_model(ModelConfig(hidden=[16], latent_dim=4), (1, 6, 6)).eval()
    x = torch.rand(300, 1, 6, 6)
    closed = kl_per_dimension(model, x)
    assert closed["method"] == "closed form" and closed["standard_error"] is None
    assert sum(closed["kl"]) == pytest.approx(sgvb_b(model, x).kl.mean().item(), rel=1e-5)
    mc = kl_per_dimension(model, x, method="mc", samples=64)
    assert mc["method"].startswith("Monte Carlo")
    assert_within_se(torch.tensor(mc["kl"]), torch.tensor(closed["kl"]), torch.tensor(mc["standard_error"]), "MC KL per dim")


@pytest.mark.parametrize("change", [{"posterior": "full_normal"}, {"posterior": "student_t"},
                                    {"prior": "mixture_of_gaussians"}])
def test_kl_per_dimension_for_every_family(torch_seed, change):
    model = build_model(ModelConfig(hidden=[16], latent_dim=3, **change), (1, 6, 6)).eval()
    x = torch.rand(100, 1, 6, 6)
    kl = kl_per_dimension(model, x)
    assert len(kl["kl"]) == 3 and all(math.isfinite(v) for v in kl["kl"])
    if kl["standard_error"] is not None:
        assert all(v > -5 * s for v, s in zip(kl["kl"], kl["standard_error"]))  # a KL is not negative
    else:
        assert all(v >= 0 for v in kl["kl"])


def test_evaluate_reports_bounds_in_order_with_diagnostics(torch_seed):
    model = LinearGaussian(shift=0.6, widen=1.8)
    x = model.sample_x(100)
    r = evaluate(model, x, ks=(1, 5, 50, 500))
    ll = r["log_likelihood"]
    assert ll["k"] == 500 and ll["value"] >= r["elbo_B"]["elbo"]
    assert abs(ll["value"] - model.log_px(x).mean().item()) < 5 * ll["standard_error"] + 0.02
    bounds = [r["iwae"][k] for k in ("1", "5", "50", "500")]
    assert bounds[1:] == sorted(bounds[1:])
    assert r["bits_per_dim"] == pytest.approx(-ll["value"] / (6 * math.log(2)))
    assert r["diagnostics"]["latent_dim"] == 3 and len(r["diagnostics"]["kl_per_dim"]) == 3
    assert sum(r["diagnostics"]["kl_per_dim"]) == pytest.approx(r["elbo_B"]["kl"], rel=1e-6)
    table = format_evaluation(r)
    assert "IWAE bound, k=500" in table and "active units" in table and "z3" in table
    json.dumps(r)  # eval.json


def test_cli_evaluate_prints_the_table_and_warns_of_collapse(tmp_path, capsys):
    run = tmp_path / "collapsed"  # β = 20 drives every unit to the prior
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "3", "--epochs", "2", "--beta", "20",
                 "--train-size", "400", "--quiet", "--no-report", "--out", str(run)]) == 0
    assert not (run / "report.html").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "100", "--test-size", "100", "--max-memory", "4"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["decoder_pass"]["bytes"] <= 4 * 2**20 and result["decoder_pass"]["measured"]
    assert result["diagnostics"]["active_units"] == 0
    assert "warning: posterior collapse: none of the 3 latent dimensions is active" in out
    assert "log p(x), importance sampled" in out and "bits/dim" in out
    assert main(["evaluate", str(run), "--max-memory", "0"]) == 2
    assert main(["evaluate", str(run), "--max-memory", "0.0001", "--test-size", "5", "--k", "10"]) == 2
    assert "raise it" in capsys.readouterr().err
