"""The distributions of aevb against closed forms: q(z|x) families, priors p(z), likelihoods p(x|z).

Every test iterates the registries, so a newly registered family, prior or likelihood becomes a
case at once; one without a row in the reference tables below fails and asks for its row.
Monte Carlo checks use the 5-standard-error tolerance explained in conftest.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.distributions import (AffineTransform, Independent, MultivariateNormal, Normal, SigmoidTransform,
                                  TransformedDistribution, Uniform, kl_divergence)

from aevb.config import ModelConfig
from aevb.distributions import LIKELIHOODS, POSTERIORS, PRIORS, SCALE_MODES, CountLikelihood, Logistic
from aevb.errors import ConfigError, DataError, UserError

pytestmark = pytest.mark.usefixtures("torch_seed")
DT = torch.float64  # MC and quadrature checks run in double precision so that rounding is far below the SE


# ----------------------------------------------------------------------------------------------
# Reference table for the posterior families: from h, the exact mean, covariance and log density,
# written independently of aevb (moments from textbooks, densities from scipy), and for a family
# on a bounded set, its support box (low, high) per dimension.
# ----------------------------------------------------------------------------------------------

@dataclass
class Ref:
    mean: torch.Tensor
    cov: torch.Tensor
    logpdf: Callable[[np.ndarray], np.ndarray]
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None


def _diagonal(var_factor, scipy_logpdf, log_var_head=False):
    """A diagonal location-scale family with h = [loc, log scale] (or [loc, log variance]):
    Var = var_factor(family) · scale²."""
    def ref(fam, h):
        d = fam.latent_dim
        loc, head = h[..., :d], h[..., d:2 * d]
        scale = (0.5 * head).exp() if log_var_head else head.exp()
        cov = torch.diag_embed(var_factor(fam) * scale**2)

        def logpdf(z):
            return scipy_logpdf(fam, z, loc.detach().numpy(), scale.detach().numpy()).sum(-1)
        return Ref(loc, cov, logpdf)
    return ref


def _full_normal(fam, h):
    """h = [μ, log diag L, strictly-lower entries of L in row-major order], Σ = LLᵀ."""
    d = fam.latent_dim
    mu, log_diag, off = h[..., :d], h[..., d:2 * d], h[..., 2 * d:]
    L = torch.diag_embed(log_diag.exp())
    rows, cols = torch.tril_indices(d, d, offset=-1)
    L = _set_lower(L, rows, cols, off)
    cov = L @ L.transpose(-1, -2)

    def logpdf(z):
        return stats.multivariate_normal(mu.detach().numpy(), cov.detach().numpy()).logpdf(z)
    return Ref(mu, cov, logpdf)


def _set_lower(L, rows, cols, off):
    """L with its (i, j), i > j, entries taken from off in the order of torch.tril_indices."""
    L = L.clone()
    for k, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
        L[..., i, j] = off[..., k]
    return L


POSTERIOR_REFERENCE = {
    "normal": _diagonal(lambda f: 1.0, lambda f, z, m, s: stats.norm.logpdf(z, m, s), log_var_head=True),
    "full_normal": _full_normal,
    "laplace": _diagonal(lambda f: 2.0, lambda f, z, m, s: stats.laplace.logpdf(z, m, s)),
    "student_t": _diagonal(lambda f: f.df / (f.df - 2), lambda f, z, m, s: stats.t.logpdf(z, f.df, m, s)),
    "logistic": _diagonal(lambda f: math.pi**2 / 3, lambda f, z, m, s: stats.logistic.logpdf(z, m, s)),
}


def reference(name):
    if name not in POSTERIOR_REFERENCE:
        pytest.fail(f"posterior family {name!r} has no row in POSTERIOR_REFERENCE; add its exact moments and density")
    return POSTERIOR_REFERENCE[name]


def family_and_h(name, latent_dim=3, batch=()):
    """The family with its default settings and an encoder output h with locations ~ N(0, 1) and
    log-scales (and off-diagonal entries) ~ N(0, 0.5²)."""
    fam = POSTERIORS[name](latent_dim)
    h = 0.5 * torch.randn(*batch, fam.n_params, dtype=DT)
    h[..., :latent_dim] *= 2
    return fam, h


# the families over R^D; those over the simplex (dirichlet, logistic_normal) have their own checks in test_simplex.py
POSTERIOR_NAMES = [n for n in POSTERIORS.names() if POSTERIORS[n].support is torch.distributions.constraints.real_vector]
PRIOR_NAMES = [n for n in PRIORS.names() if PRIORS[n].support is torch.distributions.constraints.real_vector]


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_posterior_shapes_and_declared_moments(name):
    fam, h = family_and_h(name, batch=(4,))
    q = fam(h)
    assert q.batch_shape == (4,) and q.event_shape == (3,) and q.has_rsample
    ref = reference(name)(fam, h)
    mean, cov = ref.mean, ref.cov
    torch.testing.assert_close(q.mean, mean)
    declared = getattr(q, "covariance_matrix", None)
    torch.testing.assert_close(declared if declared is not None else torch.diag_embed(q.variance), cov)


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_rsample_mean_and_covariance(name, assert_within_se):
    fam, h = family_and_h(name)
    ref = reference(name)(fam, h)
    mean, cov = ref.mean, ref.cov
    n = 200_000
    z = fam(h).rsample((n,))
    assert z.shape == (n, 3)
    assert_within_se(z.mean(0), mean, z.std(0) / n**0.5, f"{name} sample mean")
    c = z - mean
    products = c.unsqueeze(-1) * c.unsqueeze(-2)  # (n, d, d): the mean of each entry estimates Σ_ij
    assert_within_se(products.mean(0), cov, products.std(0) / n**0.5, f"{name} sample covariance")


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_pathwise_gradient_of_second_moment(name, assert_within_se):
    """d/dh E_q[Σ z²] by the reparameterisation trick against the exact d/dh Σ(μ² + Var).
    Each of n rows holds the same h and one draw, so h.grad has one gradient sample per row and
    their spread gives the SE."""
    fam, h0 = family_and_h(name)
    n = 200_000
    h = h0.expand(n, -1).clone().requires_grad_()
    fam(h).rsample().pow(2).sum().backward()
    g = h.grad

    h_exact = h0.clone().requires_grad_()
    ref = reference(name)(fam, h_exact)
    (exact,) = torch.autograd.grad(ref.mean.pow(2).sum() + ref.cov.diagonal(dim1=-2, dim2=-1).sum(), h_exact)
    assert exact.abs().min() > 0  # every entry of h matters, so a dropped gradient path shows
    assert_within_se(g.mean(0), exact, g.std(0) / n**0.5, f"{name} pathwise gradient")


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_log_prob_matches_reference_density(name):
    fam, h = family_and_h(name)
    q = fam(h)
    ref = reference(name)(fam, h)
    tails = ref.mean + 30 * ref.cov.diagonal().sqrt() * torch.randn(20, 3, dtype=DT).sign()
    if ref.low is not None:
        tails = tails[((tails > ref.low) & (tails < ref.high)).all(-1)]
    z = torch.cat([q.sample((500,)), tails])  # the bulk and, where the support reaches, far tails
    np.testing.assert_allclose(q.log_prob(z).numpy(), ref.logpdf(z.numpy()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_log_prob_integrates_to_one_with_exact_moments(name):
    """Trapezoid quadrature of exp(log_prob) on a 2-d grid of ±25 sd around the mean, which has
    the mean (and with it a Laplace kink) on a node. Tolerance 2e-3 (of 1, sd, sd²): the
    quadrature error is 6e-4 at most (the Laplace kink; ~1e-15 for the smooth densities) and
    the tails of Student-t with ν = 5 beyond 25 sd hold 6e-4 of its variance."""
    fam, h = family_and_h(name, latent_dim=2)
    q = fam(h)
    ref = reference(name)(fam, h)
    mean, cov = ref.mean, ref.cov
    sd = cov.diagonal().sqrt()
    lo, hi = mean - 25 * sd, mean + 25 * sd
    if ref.low is not None:  # a bounded support: integrate over the box itself
        lo, hi = torch.maximum(lo, ref.low), torch.minimum(hi, ref.high)
    n = 1201
    axes = [torch.linspace(lo[j], hi[j], n, dtype=DT) for j in range(2)]
    g0, g1 = torch.meshgrid(*axes, indexing="ij")
    z = torch.stack([g0, g1], -1)
    p = q.log_prob(z.reshape(-1, 2)).exp().reshape(n, n)

    def integral(f):
        return torch.trapezoid(torch.trapezoid(f, axes[1], dim=1), axes[0])

    assert integral(p).item() == pytest.approx(1.0, abs=2e-3)
    m = torch.stack([integral(p * z[..., j]) for j in range(2)])
    assert torch.allclose(m, mean, atol=2e-3 * sd.max().item(), rtol=0)
    c = z - mean
    second = torch.stack([torch.stack([integral(p * c[..., i] * c[..., j]) for j in range(2)]) for i in range(2)])
    assert torch.allclose(second, cov, atol=2e-3 * sd.max().item() ** 2, rtol=0)


# ---------------------------------------------------------------------------- Logistic, full normal

def test_logistic_log_prob_formula_and_inverse_cdf_density():
    loc, scale = torch.tensor([0.3, -1.0, 2.0], dtype=DT), torch.tensor([0.5, 1.0, 2.5], dtype=DT)
    d = Logistic(loc, scale)
    z = loc + scale * torch.linspace(-12, 12, 97, dtype=DT).unsqueeze(-1)
    t = (z - loc) / scale
    formula = F.logsigmoid(t) + F.logsigmoid(-t) - scale.log()  # σ(t)σ(-t)/s, the logistic density
    torch.testing.assert_close(d.log_prob(z), formula)
    # torch's own change of variables through z = loc + s·logit(u), u ~ U(0, 1)
    generic = TransformedDistribution(Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                      [SigmoidTransform().inv, AffineTransform(loc, scale)])
    torch.testing.assert_close(d.log_prob(z), generic.log_prob(z))
    torch.testing.assert_close(d.icdf(d.cdf(z)), z)


def test_logistic_far_tails_and_float32_samples_are_finite():
    d = Logistic(torch.tensor(0.0, dtype=DT), torch.tensor(2.0, dtype=DT))
    z = torch.tensor([-1e4, -50.0, 50.0, 1e4], dtype=DT)
    torch.testing.assert_close(d.log_prob(z), -z.abs() / 2 - math.log(2) - 2 * F.softplus(-z.abs() / 2))
    assert torch.isfinite(Logistic(torch.zeros(()), torch.ones(())).rsample((1_000_000,))).all()


def test_logistic_entropy_against_monte_carlo(assert_within_se):
    d = Logistic(torch.tensor([0.0, 1.0], dtype=DT), torch.tensor([0.3, 3.0], dtype=DT))
    n = 200_000
    neg_log_q = -d.log_prob(d.sample((n,)))
    assert_within_se(neg_log_q.mean(0), d.entropy(), neg_log_q.std(0) / n**0.5, "logistic entropy")


def test_full_normal_log_prob_against_multivariate_normal_from_covariance():
    fam, h = family_and_h("full_normal", latent_dim=4, batch=(5,))
    q = fam(h)
    L = q.scale_tril
    assert torch.equal(L, L.tril()) and (L.diagonal(dim1=-2, dim2=-1) > 0).all()
    direct = MultivariateNormal(h[..., :4], covariance_matrix=reference("full_normal")(fam, h).cov)
    z = torch.randn(7, 5, 4, dtype=DT) * 2
    torch.testing.assert_close(q.log_prob(z), direct.log_prob(z))


# ----------------------------------------------------------------------------------------- priors
# name -> the exact mean, covariance and log density of the prior module's distribution, read off
# its parameters and computed without torch.distributions.

def _standard_normal_ref(prior):
    d = len(prior.loc)
    return Ref(torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT),
               lambda z: stats.multivariate_normal(np.zeros(d), np.eye(d)).logpdf(z))


def _mixture_ref(prior):
    w = torch.softmax(prior.logits.detach(), 0)
    mu, var = prior.means.detach(), prior.log_scales.detach().exp() ** 2  # (K, d)
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (torch.diag_embed(var) + mu[:, :, None] * mu[:, None, :])).sum(0)

    def logpdf(z):
        per_component = stats.norm.logpdf(z[..., None, :], mu.numpy(), var.sqrt().numpy()).sum(-1)
        return np.logaddexp.reduce(np.log(w.numpy()) + per_component, axis=-1)
    return Ref(mean, second - mean[:, None] * mean[None, :], logpdf)


PRIOR_REFERENCE = {"standard_normal": _standard_normal_ref, "mixture_of_gaussians": _mixture_ref}


def prior_and_ref(name, latent_dim=3):
    if name not in PRIOR_REFERENCE:
        pytest.fail(f"prior {name!r} has no row in PRIOR_REFERENCE; add its exact moments and density")
    prior = PRIORS[name](latent_dim).to(DT)
    with torch.no_grad():  # move learnable priors off their initialisation (e.g. unequal weights)
        for p in prior.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return prior, PRIOR_REFERENCE[name](prior)


@pytest.mark.parametrize("name", PRIOR_NAMES)
def test_prior_log_prob_and_sample_moments(name, assert_within_se):
    prior, ref = prior_and_ref(name)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (3,)
    n = 200_000
    with torch.no_grad():
        z = p.sample((n,))
        log_prob = p.log_prob(z[:500])
    np.testing.assert_allclose(log_prob.numpy(), ref.logpdf(z[:500].numpy()), rtol=1e-9, atol=1e-9)
    assert_within_se(z.mean(0), ref.mean, z.std(0) / n**0.5, f"{name} prior sample mean")
    c = z - ref.mean
    products = c.unsqueeze(-1) * c.unsqueeze(-2)
    assert_within_se(products.mean(0), ref.cov, products.std(0) / n**0.5, f"{name} prior sample covariance")


@pytest.mark.parametrize("name", PRIOR_NAMES)
def test_learnable_prior_parameters_receive_gradients(name):
    prior, _ = prior_and_ref(name)
    params = dict(prior.named_parameters())
    if name == "standard_normal":
        assert params == {}
    else:
        assert params
        prior().log_prob(torch.randn(10, 3, dtype=DT)).sum().backward()
        for k, p in params.items():
            assert p.grad is not None and (p.grad != 0).all(), k


# ------------------------------------------------------------------------------------- KL(q ‖ p)

def kl_priors(latent_dim):
    """Every registered prior (learnable ones at their random initialisation) and a diagonal
    normal with non-standard location and scale, for our MultivariateNormal ‖ Independent(Normal)."""
    priors = {name: PRIORS[name](latent_dim).to(DT)() for name in PRIOR_NAMES}
    priors["diagonal_normal"] = Independent(Normal(torch.randn(latent_dim, dtype=DT),
                                                   (0.5 * torch.randn(latent_dim, dtype=DT)).exp()), 1)
    return priors


def closed_form_pairs():
    with torch.random.fork_rng(devices=[]):
        priors = kl_priors(3)
        pairs = []
        for q_name in POSTERIOR_NAMES:
            fam, h = family_and_h(q_name)
            for p_name, p in priors.items():
                try:
                    kl_divergence(fam(h), p)
                except NotImplementedError:
                    continue
                pairs.append((q_name, p_name))
    return pairs


KL_PAIRS = closed_form_pairs()


def test_the_expected_closed_form_kls_are_registered():
    """Guards the table below against silently shrinking."""
    for pair in [("normal", "standard_normal"), ("full_normal", "standard_normal"),
                 ("full_normal", "diagonal_normal"), ("normal", "diagonal_normal"), ("laplace", "standard_normal")]:
        assert pair in KL_PAIRS
    assert not any(p == "mixture_of_gaussians" for _, p in KL_PAIRS)


@pytest.mark.parametrize("q_name,p_name", KL_PAIRS)
def test_closed_form_kl_against_monte_carlo(q_name, p_name, assert_within_se):
    p = kl_priors(3)[p_name]
    fam, h = family_and_h(q_name, batch=(3,))
    q = fam(h)
    kl = kl_divergence(q, p)
    assert kl.shape == (3,) and (kl >= 0).all()
    n = 200_000
    z = q.sample((n,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    assert_within_se(log_ratio.mean(0), kl, log_ratio.std(0) / n**0.5, f"KL({q_name} ‖ {p_name})")


def test_full_normal_kl_vanishes_at_the_prior():
    d = 3
    q = MultivariateNormal(torch.full((d,), 0.7, dtype=DT), scale_tril=torch.diag(torch.tensor([0.5, 2.0, 1.5], dtype=DT)))
    p = Independent(Normal(q.loc.clone(), q.scale_tril.diagonal().clone()), 1)
    assert kl_divergence(q, p).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------ likelihoods
# name -> (does it take a scale mode, per-pixel log density of x given head 1 and scale (or None),
#          the measure it is normalised over)

def _continuous_bernoulli_logpdf(x, logits, _):
    # λ = σ(h): log λ^x (1-λ)^(1-x) + log C(λ), C(λ) = 2 atanh(1-2λ)/(1-2λ) = h / tanh(h/2)
    return x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits) + (logits / torch.tanh(logits / 2)).log()


LIKELIHOOD_REFERENCE = {
    "bernoulli": (False, lambda x, h, _: -F.binary_cross_entropy_with_logits(h, x, reduction="none"), "binary"),
    "continuous_bernoulli": (False, _continuous_bernoulli_logpdf, "unit_interval"),
    "gaussian": (True, lambda x, m, s: -0.5 * ((x - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi), "real"),
    "sigmoid_gaussian": (True, lambda x, h, s: LIKELIHOOD_REFERENCE["gaussian"][1](x, torch.sigmoid(h), s), "real"),
    "laplace": (True, lambda x, m, b: -(x - m).abs() / b - (2 * b).log(), "real"),
}
SUPPORT = {"binary": (0.0, 1.0), "unit_interval": (0.0, 1.0), "real": None}


# the count likelihoods have their own table, against scipy.stats: tests/test_count_likelihoods.py
CONTINUOUS_LIKELIHOODS = [name for name in LIKELIHOODS.names() if not issubclass(LIKELIHOODS[name], CountLikelihood)]


def likelihood_rows():
    rows = []
    for name in CONTINUOUS_LIKELIHOODS:
        scaled = LIKELIHOOD_REFERENCE.get(name, (False,))[0]
        rows += [(name, mode) for mode in SCALE_MODES] if scaled else [(name, None)]
    return rows


LIKELIHOOD_ROWS = likelihood_rows()
X_SHAPE = (2, 3, 4)


def make_likelihood(name, mode, x_shape=X_SHAPE, scale_init=0.7):
    if name not in LIKELIHOOD_REFERENCE:
        pytest.fail(f"likelihood {name!r} has no row in LIKELIHOOD_REFERENCE; add its closed-form density")
    cfg = ModelConfig(likelihood=name) if mode is None else \
        ModelConfig(likelihood=name, likelihood_scale=mode, likelihood_scale_init=scale_init)
    like = LIKELIHOODS[name].from_config(cfg, x_shape).to(DT)
    if mode == "per_pixel":  # distinct per-pixel scales, so that using one shared value would show
        with torch.no_grad():
            like.log_scale.copy_(0.3 * torch.randn(x_shape, dtype=DT))
    return like


def decoder_output(like, batch):
    """A decoder output h for ``like``: logits/means bounded away from 0 (where the continuous
    Bernoulli's normaliser is a limit), and for 'predicted' a second block of log scales."""
    h = torch.randn(*batch, like.n_heads * like.x_shape[0], *like.x_shape[1:], dtype=DT)
    return h.sign() * (0.2 + h.abs())


def reference_log_prob(name, like, h, x):
    _, logpdf, _ = LIKELIHOOD_REFERENCE[name]
    if getattr(like, "scale_mode", None) == "predicted":
        mean, log_scale = h.chunk(2, dim=-len(like.x_shape))
        scale = log_scale.exp()
    else:
        mean, scale = h, (like.log_scale.exp() if hasattr(like, "log_scale") else None)
    x, mean = torch.broadcast_tensors(x, mean)
    return logpdf(x, mean, scale).flatten(-len(like.x_shape)).sum(-1)


@pytest.mark.parametrize("name,mode", LIKELIHOOD_ROWS)
def test_likelihood_event_shape_and_closed_form_log_prob(name, mode):
    like = make_likelihood(name, mode)
    h = decoder_output(like, (6, 5))  # (L samples, N datapoints)
    p = like(h)
    assert p.event_shape == X_SHAPE and p.batch_shape == (6, 5)
    x = torch.rand(5, *X_SHAPE, dtype=DT)  # greyscale values in (0, 1), broadcast over the samples
    torch.testing.assert_close(p.log_prob(x), reference_log_prob(name, like, h, x))


def test_bernoulli_log_prob_is_minus_binary_cross_entropy():
    like = make_likelihood("bernoulli", None)
    h, x = decoder_output(like, (5,)), torch.rand(5, *X_SHAPE, dtype=DT)
    bce = F.binary_cross_entropy(torch.sigmoid(h), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(like(h).log_prob(x), -bce)


@pytest.mark.parametrize("mode", ["fixed", "shared"])
def test_gaussian_log_prob_closed_form(mode):
    like = make_likelihood("gaussian", mode, scale_init=0.7)
    h, x = decoder_output(like, (5,)), torch.randn(5, *X_SHAPE, dtype=DT)
    D, sigma = math.prod(X_SHAPE), 0.7
    exact = (-0.5 * (x - h).pow(2).flatten(1).sum(1) / sigma**2 - D * math.log(sigma) - D / 2 * math.log(2 * math.pi))
    torch.testing.assert_close(like(h).log_prob(x), exact)


@pytest.mark.parametrize("name,mode", LIKELIHOOD_ROWS)
def test_likelihood_is_normalised(name, mode):
    """One pixel: Σ over {0, 1} for the Bernoulli, otherwise the trapezoid integral of the density
    over its support (±40 scales for real-valued ones; quadrature error < 1e-6 on this grid)."""
    like = make_likelihood(name, mode, x_shape=(1,))
    h = decoder_output(like, ())
    p = like(h)
    measure = LIKELIHOOD_REFERENCE[name][2]
    if measure == "binary":
        total = p.log_prob(torch.tensor([[0.0], [1.0]], dtype=DT)).exp().sum()
    else:
        if measure == "unit_interval":
            grid = torch.linspace(0, 1, 20001, dtype=DT)
        else:
            loc, scale = p.base_dist.loc, p.base_dist.scale
            grid = loc + scale * torch.linspace(-40, 40, 80001, dtype=DT)
        total = torch.trapezoid(p.log_prob(grid.unsqueeze(-1)).exp(), grid)
    assert total.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name,mode", [r for r in LIKELIHOOD_ROWS if r[1] in ("shared", "per_pixel")])
def test_learned_scales_are_parameters_that_receive_gradients(name, mode):
    like = make_likelihood(name, mode)
    params = dict(like.named_parameters())
    assert list(params) == ["log_scale"] and isinstance(like.log_scale, nn.Parameter)
    assert like.log_scale.shape == (() if mode == "shared" else X_SHAPE)
    h, x = decoder_output(like, (5,)), torch.rand(5, *X_SHAPE, dtype=DT)
    like(h).log_prob(x).sum().backward()
    assert like.log_scale.grad is not None and (like.log_scale.grad != 0).all()


@pytest.mark.parametrize("name,mode", [r for r in LIKELIHOOD_ROWS if r[1] in ("fixed", "predicted")])
def test_fixed_and_predicted_scales_are_not_parameters(name, mode):
    like = make_likelihood(name, mode, scale_init=0.7)
    assert list(like.parameters()) == []
    assert like.n_heads == (2 if mode == "predicted" else 1)
    h = decoder_output(like, (5,)).requires_grad_()
    p = like(h)
    if mode == "fixed":
        torch.testing.assert_close(p.base_dist.scale, torch.full_like(p.base_dist.scale, 0.7))
    else:  # the second head is the log scale, and gradients reach it
        _, log_scale = h.chunk(2, dim=1)
        torch.testing.assert_close(p.base_dist.scale, log_scale.exp())
        p.log_prob(torch.rand(5, *X_SHAPE, dtype=DT)).sum().backward()
        assert (h.grad[:, X_SHAPE[0]:] != 0).all()


@pytest.mark.parametrize("name", [r[0] for r in LIKELIHOOD_ROWS if r[1] is None])
def test_unscaled_likelihoods_have_one_head_and_refuse_scale_options(name):
    like = make_likelihood(name, None)
    assert like.n_heads == 1 and list(like.parameters()) == []
    for cfg in (ModelConfig(likelihood=name, likelihood_scale="fixed"), ModelConfig(likelihood=name, likelihood_scale_init=2.0)):
        with pytest.raises(ConfigError):
            LIKELIHOODS[name].from_config(cfg, X_SHAPE)


@pytest.mark.parametrize("name", sorted({r[0] for r in LIKELIHOOD_ROWS if r[1] is not None}))
@pytest.mark.parametrize("kwargs", [{"scale": "learned"}, {"scale_init": 0.0}, {"scale_init": -1.0}])
def test_scaled_likelihoods_reject_bad_scale_settings(name, kwargs):
    with pytest.raises(ConfigError):
        LIKELIHOODS[name](X_SHAPE, **kwargs)


@pytest.mark.parametrize("name", CONTINUOUS_LIKELIHOODS)
def test_check_support(name):
    if name not in LIKELIHOOD_REFERENCE:
        pytest.fail(f"likelihood {name!r} has no row in LIKELIHOOD_REFERENCE")
    like = LIKELIHOODS[name](X_SHAPE)
    support = SUPPORT[LIKELIHOOD_REFERENCE[name][2]]
    inside = torch.rand(5, *X_SHAPE)
    inside[0, 0, 0, 0], inside[0, 0, 0, 1] = 0.0, 1.0
    like.check_support(inside, "x")
    for bad in (-0.01, 1.01):
        x = inside.clone()
        x[3, 1, 2, 3] = bad
        if support is None:
            like.check_support(x * 10, "x")
        else:
            with pytest.raises(DataError, match="rescale"):
                like.check_support(x, "the training data")
    assert issubclass(DataError, UserError)
