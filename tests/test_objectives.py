"""The ELBO estimators and the IWAE bound against exact values, and the β schedules.

Exact values come from probabilistic PCA, where log p(x), the posterior and so the ELBO of any
Gaussian q are closed forms. Monte Carlo checks use the 5-standard-error tolerance of conftest.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from aevb import objectives
from aevb.config import Config, ModelConfig
from aevb.data import Dataset
from aevb.distributions import POSTERIORS, PRIORS
from aevb.models import build_vae
from aevb.objectives import ESTIMATORS, SCHEDULES, Estimator, iwae_bound, log_weights, sgvb_a, sgvb_b
from aevb.train import Trainer

pytestmark = pytest.mark.usefixtures("torch_seed")
DT = torch.float64


class PPCA(nn.Module):
    """Probabilistic PCA with a Gaussian q, duck-typed like a VAE (encode, decode, prior):
    p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so p(x) = N(b, WWᵀ + σ²I) and
    p(z|x) = N(S Wᵀ(x - b)/σ², S), S = (I + WᵀW/σ²)⁻¹. q(z|x) is the exact posterior moved by
    ``shift`` posterior standard deviations along each Cholesky direction, with its covariance
    multiplied by ``inflate`` (> 1/2 keeps the importance weights' variance finite)."""

    def __init__(self, x_dim=5, z_dim=2, sigma=0.5, shift=0.0, inflate=1.0):
        super().__init__()
        self.W, self.b, self.sigma = torch.randn(x_dim, z_dim, dtype=DT), torch.randn(x_dim, dtype=DT), sigma
        self.S = torch.linalg.inv(torch.eye(z_dim, dtype=DT) + self.W.T @ self.W / sigma**2)
        self.L = torch.linalg.cholesky(self.S)
        self.shift, self.inflate = shift, inflate

    def posterior(self, x):
        return MultivariateNormal((x - self.b) @ self.W @ self.S / self.sigma**2, scale_tril=self.L)

    def encode(self, x):
        exact = self.posterior(x)
        return MultivariateNormal(exact.loc + self.shift * self.L.sum(-1), scale_tril=math.sqrt(self.inflate) * self.L)

    def decode(self, z):
        return Independent(Normal(z @ self.W.T + self.b, self.sigma), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(self.W.shape[1], dtype=DT), 1.0), 1)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=DT)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def exact_elbo(self, x):
        """log p(x) - KL(q(z|x) ‖ p(z|x))."""
        return self.log_px(x) - kl_divergence(self.encode(x), self.posterior(x))

    def sample_x(self, n):
        z = torch.randn(n, self.W.shape[1], dtype=DT)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), dtype=DT)


def repeated(estimator, model, x, draws, **kw):
    """``draws`` independent one-sample estimates per datapoint, shape (draws, N)."""
    with torch.no_grad():
        return estimator(model, x.repeat(draws, *[1] * (x.dim() - 1)), **kw).elbo.view(draws, len(x))


# --------------------------------------------------------------------------- SGVB A and B

def test_a_and_b_are_unbiased_for_the_exact_elbo(assert_within_se):
    """No variance claim here: with q this close to p(z|x), log p(x, z) - log q(z|x) is nearly
    constant, so A has the lower variance (zero at q = p(z|x)); B wins where the KL's Monte Carlo
    noise dominates, as in the VAE test below."""
    model = PPCA(shift=0.8, inflate=2.0)
    x = model.sample_x(4)
    exact = model.exact_elbo(x)
    draws = 20_000
    values = {name: repeated(est, model, x, draws) for name, est in (("A", sgvb_a), ("B", sgvb_b))}
    for name, v in values.items():
        assert_within_se(v.mean(0), exact, v.std(0) / draws**0.5, f"SGVB {name} on PPCA")


def vae(posterior="normal", prior="standard_normal", x_dim=6, **kw):
    """A small MLP VAE whose q(z|x) sits away from the prior (loc + 1, log-scale head -2), so the
    KL term is a sizeable part of the ELBO."""
    cfg = ModelConfig(hidden=[16], latent_dim=3, posterior=posterior, prior=prior, prior_components=3, **kw)
    model = build_vae(cfg, (x_dim,))
    head = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.bias[:3] += 1.0
        head.bias[3:6] = -2.0
    return model


def closed_form_posteriors():
    with torch.random.fork_rng(devices=[]):
        return [name for name in POSTERIORS.names()  # over R^D: the simplex families are checked in test_simplex.py
                if POSTERIORS[name].support is PRIORS["standard_normal"].support and vae(name).has_analytic_kl()]


@pytest.mark.parametrize("posterior", closed_form_posteriors())
def test_a_and_b_agree_in_expectation_on_a_vae(posterior, assert_within_se):
    model, x = vae(posterior), torch.rand(4, 6)
    draws = 10_000
    a, b = repeated(sgvb_a, model, x, draws).double(), repeated(sgvb_b, model, x, draws).double()
    se = (a.var(0) / draws + b.var(0) / draws).sqrt()  # independent draws: the variances add
    assert_within_se(a.mean(0) - b.mean(0), 0.0, se, f"SGVB A - B, {posterior} posterior")


def test_b_has_lower_variance_than_a_for_the_gaussian_pair():
    model, x = vae("normal"), torch.rand(4, 6)
    draws = 10_000
    a, b = repeated(sgvb_a, model, x, draws).double(), repeated(sgvb_b, model, x, draws).double()
    var_a, var_b = a.var(0), b.var(0)
    # SE of a sample variance: the std of the squared deviations / sqrt(draws)
    se = ((((a - a.mean(0)) ** 2).var(0) + ((b - b.mean(0)) ** 2).var(0)) / draws).sqrt()
    assert (var_a - var_b > 5 * se).all(), (var_a, var_b, se)


# ----------------------------------------------------------------------------------- auto

def pairs():
    return [(q, p) for q in POSTERIORS.names() for p in PRIORS.names() if POSTERIORS[q].support is PRIORS[p].support]


@pytest.fixture
def estimator_calls(monkeypatch):
    """Wraps objectives.sgvb_a and sgvb_b (which sgvb_auto looks up at call time) to record calls."""
    calls = []
    for name in ("A", "B"):
        real = getattr(objectives, f"sgvb_{name.lower()}")

        def spy(*args, _real=real, _name=name, **kw):
            calls.append(_name)
            return _real(*args, **kw)
        monkeypatch.setattr(objectives, f"sgvb_{name.lower()}", spy)
    return calls


@pytest.mark.parametrize("posterior,prior", pairs())
def test_auto_uses_b_exactly_when_a_closed_form_kl_exists(posterior, prior, estimator_calls):
    model, x = vae(posterior, prior), torch.rand(4, 6)
    try:
        kl_divergence(model.encode(x), model.prior())
        expected = "B"
    except NotImplementedError:
        expected = "A"
    if (posterior, prior) == ("normal", "standard_normal"):
        assert expected == "B"
    if prior == "mixture_of_gaussians":
        assert expected == "A"
    assert model.has_analytic_kl() == (expected == "B")
    model.elbo(x, Estimator("auto"))
    assert estimator_calls == [expected]


def test_mixture_prior_has_no_closed_form_kl():
    model, x = vae("normal", "mixture_of_gaussians"), torch.rand(4, 6)
    with pytest.raises(NotImplementedError):
        kl_divergence(model.encode(x), model.prior())


def test_training_step_with_mixture_prior_runs_a_and_trains_the_prior(estimator_calls):
    cfg = Config.from_dict({"model": {"hidden": [16], "latent_dim": 2, "prior": "mixture_of_gaussians",
                                      "prior_components": 3},
                            "train": {"batch_size": 32, "epochs": 1, "device": "cpu", "estimator": "auto"}})
    x = torch.rand(64, 6)
    trainer = Trainer(cfg, Dataset("toy", "test", x, None, x[:16].clone(), None))
    prior = trainer.model.prior_net
    before = {k: v.detach().clone() for k, v in prior.named_parameters()}
    assert set(before) == {"logits", "means", "log_scales"}
    metrics = trainer.epoch(1)
    assert estimator_calls == ["A", "A"] and math.isfinite(metrics["train_elbo"])
    for k, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, k
        assert not torch.equal(p.detach(), before[k]), k


# ----------------------------------------------------------------------------------- IWAE

KS = (1, 5, 50, 500)


def test_iwae_bound_rises_with_k_to_the_exact_log_likelihood(assert_within_se):
    """Gaps log p(x) - bound_k over 2000 datapoints of an imperfect q (KL(q ‖ p(z|x)) ≈ 0.95 nats).
    Each per-datapoint gap uses fresh samples, so gaps at different k are independent and their
    SEs add in quadrature."""
    model = PPCA(shift=0.8, inflate=2.0)
    x = model.sample_x(2000)
    log_px = model.log_px(x)
    gaps = {k: log_px - iwae_bound(model, x, k).objective for k in KS}
    mean = {k: g.mean() for k, g in gaps.items()}
    se = {k: g.std() / len(x) ** 0.5 for k, g in gaps.items()}
    for k in KS:  # every bound ≤ log p(x)
        assert mean[k] > -5 * se[k], (k, mean[k], se[k])
    for k, k2 in zip(KS, KS[1:]):  # rising in k
        assert mean[k2] < mean[k] + 5 * math.hypot(se[k], se[k2]), (k, k2, mean)
    assert mean[1] - mean[500] > 5 * math.hypot(se[1], se[500])  # and visibly so
    # k = 1 is the ELBO: its expected gap is KL(q ‖ p(z|x)), exactly
    kl = kl_divergence(model.encode(x), model.posterior(x))
    d = gaps[1] - kl
    assert_within_se(d.mean(), 0.0, d.std() / len(x) ** 0.5, "IWAE k=1 gap - KL(q ‖ posterior)")
    # the gap shrinks like Var(w)/(2k): about 0.004 nats at k = 500 here
    assert mean[500] < 0.02


def test_iwae_with_the_exact_posterior_is_exact_with_zero_variance():
    model = PPCA()
    x = model.sample_x(50)
    bounds = torch.stack([iwae_bound(model, x, 1).objective for _ in range(10)])
    torch.testing.assert_close(bounds, model.log_px(x).expand(10, -1), rtol=0, atol=1e-10)
    torch.testing.assert_close(model.exact_elbo(x), model.log_px(x), rtol=0, atol=1e-10)


def test_iwae_with_one_sample_is_estimator_a():
    model = PPCA(shift=0.8, inflate=2.0)
    x = model.sample_x(8)
    state = torch.random.get_rng_state()
    a = sgvb_a(model, x).elbo
    torch.random.set_rng_state(state)
    torch.testing.assert_close(iwae_bound(model, x, 1).objective, a)
    assert log_weights(model, x, 7).shape == (7, 8)


# ----------------------------------------------------------------------------------- β

# (schedule, beta, progress, epochs, warmup_epochs, cycles, ratio, expected β)
SCHEDULE_CASES = {
    "constant": [(0.7, p, 10, 5.0, 4, 0.5, 0.7) for p in (0.0, 0.3, 4.0, 9.9)],
    "linear": [(2.0, 0.0, 10, 4.0, 4, 0.5, 0.0), (2.0, 1.0, 10, 4.0, 4, 0.5, 0.5), (2.0, 3.0, 10, 4.0, 4, 0.5, 1.5),
               (2.0, 4.0, 10, 4.0, 4, 0.5, 2.0), (2.0, 9.5, 10, 4.0, 4, 0.5, 2.0), (2.0, 0.0, 10, 0.0, 4, 0.5, 2.0)],
    # 8 epochs in 4 cycles: period 2, β ramping over its first half (ratio 0.5); in 2 cycles: period 4,
    # ramping over its first epoch (ratio 0.25)
    "cyclical": [(1.0, 0.0, 8, 0.0, 4, 0.5, 0.0), (1.0, 0.5, 8, 0.0, 4, 0.5, 0.5), (1.0, 1.0, 8, 0.0, 4, 0.5, 1.0),
                 (1.0, 1.9, 8, 0.0, 4, 0.5, 1.0), (1.0, 2.0, 8, 0.0, 4, 0.5, 0.0), (1.0, 6.25, 8, 0.0, 4, 0.5, 0.25),
                 (3.0, 0.3, 8, 0.0, 2, 0.25, 0.9), (3.0, 4.3, 8, 0.0, 2, 0.25, 0.9), (3.0, 7.9, 8, 0.0, 2, 0.25, 3.0)],
}


def schedule_cases():
    return [(name, *case) for name in SCHEDULES.names() for case in SCHEDULE_CASES.get(name, [(None,) * 7])]


@pytest.mark.parametrize("name,beta,progress,epochs,warmup,cycles,ratio,expected", schedule_cases())
def test_beta_schedule_values(name, beta, progress, epochs, warmup, cycles, ratio, expected):
    if name not in SCHEDULE_CASES:
        pytest.fail(f"beta schedule {name!r} has no rows in SCHEDULE_CASES")
    assert SCHEDULES[name](beta, progress, epochs, warmup, cycles, ratio) == pytest.approx(expected)


@pytest.mark.parametrize("epochs,cycles,ratio", [(8, 4, 0.5), (10, 3, 0.25), (12, 1, 1.0)])
def test_cyclical_schedule_period_and_ratio(epochs, cycles, ratio):
    def beta(t):
        return SCHEDULES["cyclical"](2.0, t, epochs, 0.0, cycles, ratio)

    period = epochs / cycles
    ts = torch.linspace(0, epochs, 24001, dtype=DT)[:-1].tolist()
    betas = torch.tensor([beta(t) for t in ts], dtype=DT)
    assert ((betas < 2.0).double().mean().item()) == pytest.approx(ratio, abs=1e-3)  # ramping a `ratio` of each period
    assert betas.max() == (2.0 if ratio < 1 else pytest.approx(2.0, abs=1e-3))
    for k in range(cycles):  # restarting from 0 at every multiple of the period, and periodic
        assert beta(k * period + 1e-9) < 1e-6
        for t in (0.1, 0.37, 0.8):
            assert beta(k * period + t * period) == pytest.approx(beta(t * period))


@pytest.mark.parametrize("estimator", ESTIMATORS.names())
def test_beta_weights_the_kl_in_the_objective_only(estimator):
    model, x = vae("normal"), torch.rand(5, 6)
    state = torch.random.get_rng_state()
    weighted = ESTIMATORS[estimator](model, x, 3, 0.25)
    torch.random.set_rng_state(state)
    plain = ESTIMATORS[estimator](model, x, 3, 1.0)
    for t in (weighted, plain):
        assert t.elbo.shape == t.objective.shape == (5,)
    torch.testing.assert_close(plain.objective, plain.elbo)
    if estimator == "iwae":  # log-mean-exp of the k log weights ≥ their mean (A's terms), on the same samples
        assert (weighted.elbo >= weighted.log_px_z - weighted.kl - 1e-5).all()
        assert (weighted.objective >= weighted.log_px_z - 0.25 * weighted.kl - 1e-5).all()
        assert (weighted.elbo > weighted.log_px_z - weighted.kl + 1e-3).any()
    else:
        torch.testing.assert_close(weighted.objective, weighted.log_px_z - 0.25 * weighted.kl)
        torch.testing.assert_close(weighted.elbo, weighted.log_px_z - weighted.kl)
    assert (weighted.kl_y == 0).all()  # a VAE has no latent class
    assert not torch.allclose(weighted.objective, plain.objective)
    torch.testing.assert_close(weighted.elbo, plain.elbo)  # the reported bound does not depend on β
