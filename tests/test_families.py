"""Every reparameterisable family of Kingma & Welling 2013, section 2.4 (torch's and ours):
rsample moments and pathwise gradients against closed forms, table-driven over
``aevb.lab.reparam_families.FAMILIES``; the inverse CDF, CDF and density of our own families
against each other; and samplers with a deliberately wrong inverse CDF, which the same check
must reject."""
from __future__ import annotations

import math

import pytest
import torch

from aevb.distributions import Erlang, Gompertz, MultivariateStudentT, Rayleigh, Reciprocal, Triangular
from aevb.lab.reparam_families import FAMILIES, INVERSE_CDF, Family, check

DT = torch.float64
N = 50_000
SE_MULTIPLE = 5.0  # as in conftest: a correct estimator fails one comparison with probability 5.7e-7


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_rsample_moments_and_pathwise_gradient(family, torch_seed):
    """Sample mean and variance of T(z) within 5 SE of the exact ones, and the pathwise
    gradient of E Σ T(z)² within 5 SE of the gradient of its closed form, for every parameter."""
    c = check(family, N)
    assert c.z.max() < SE_MULTIPLE, (family.name, c.z.tolist())
    assert c.grad_exact.abs().max() > 0  # the gradient comparison is not vacuous


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_every_family_is_reparameterised(family):
    """rsample is differentiable in every parameter (the gradient reaches each one)."""
    params = {k: v.requires_grad_() for k, v in family.tensors().items()}
    z = family.build(**params).rsample((64,))
    grads = torch.autograd.grad(family.statistic(z).pow(2).sum(), list(params.values()), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_the_table_covers_the_paper_list():
    """Section 2.4's three lists (logistic is in two of them), and the source of each sampler."""
    bases = {f.name.lower().split(" (")[0]: f.source for f in FAMILIES}
    assert set(bases) == {
        "exponential", "cauchy", "logistic", "rayleigh", "pareto", "weibull", "reciprocal", "gompertz", "gumbel",
        "erlang", "gaussian", "laplace", "elliptical: multivariate normal", "elliptical: multivariate t",
        "student's t", "uniform", "triangular", "log-normal", "gamma", "dirichlet", "beta", "chi-squared", "f"}
    ours = {"logistic", "rayleigh", "reciprocal", "gompertz", "erlang", "elliptical: multivariate t", "triangular"}
    assert {name for name, source in bases.items() if source == "aevb"} == ours


# ------------------------------------------------------------------ a wrong inverse CDF is rejected

class RayleighWithoutTwo(Rayleigh):
    """σ √(-log(1 - u)): the inverse CDF with the factor 2 dropped."""

    def icdf(self, value):
        return self.scale * (-torch.log1p(-value)).sqrt()


class GompertzScaledWrong(Gompertz):
    """log(1 - log(1 - u)/η)/(b η): an extra 1/η."""

    def icdf(self, value):
        return torch.log1p(-torch.log1p(-value) / self.shape) / (self.scale * self.shape)


class ReciprocalLinear(Reciprocal):
    """a + u (b - a): uniform, not log-uniform, on [a, b]."""

    def icdf(self, value):
        return self.low + value * (self.high - self.low)


class TriangularSwapped(Triangular):
    """The two branches exchanged: the rising one used above F(c), the falling one below."""

    def icdf(self, value):
        width = self.high - self.low
        left = self.low + (value * width * (self.peak - self.low)).sqrt()
        right = self.high - ((1 - value) * width * (self.high - self.peak)).sqrt()
        return torch.where(value < (self.peak - self.low) / width, right, left)


class ErlangOneTooMany(Erlang):
    """k + 1 exponentials summed instead of k."""

    def rsample(self, sample_shape=torch.Size()):
        u = torch.rand(self._extended_shape(sample_shape) + (self.k + 1,), dtype=self.rate.dtype)
        return -u.log().sum(-1) / self.rate


MUTANTS = [
    Family("Rayleigh without the 2", INVERSE_CDF, RayleighWithoutTwo, {"scale": 1.5}),
    Family("Gompertz with 1/(bη)", INVERSE_CDF, GompertzScaledWrong, {"shape": 0.7, "scale": 1.3}),
    Family("reciprocal made linear", INVERSE_CDF, ReciprocalLinear, {"low": 0.5, "high": 4.0}),
    Family("triangular branches swapped", INVERSE_CDF, TriangularSwapped, {"low": -1.0, "peak": 0.5, "high": 2.0}),
    Family("Erlang with k + 1 terms", INVERSE_CDF, lambda rate: ErlangOneTooMany(3, rate), {"rate": 2.0}),
]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_a_wrong_sampler_fails_the_moment_check(mutant, torch_seed):
    assert check(mutant, N).z.max() > 10 * SE_MULTIPLE


# --------------------------------------------------- our families: inverse CDF, CDF and density agree

OURS = [
    Rayleigh(torch.tensor(1.5, dtype=DT)),
    Gompertz(torch.tensor(0.7, dtype=DT), torch.tensor(1.3, dtype=DT)),
    Reciprocal(torch.tensor(0.5, dtype=DT), torch.tensor(4.0, dtype=DT)),
    Triangular(torch.tensor(-1.0, dtype=DT), torch.tensor(0.5, dtype=DT), torch.tensor(2.0, dtype=DT)),
]


@pytest.mark.parametrize("dist", OURS, ids=lambda d: type(d).__name__)
def test_inverse_cdf_inverts_the_cdf_whose_derivative_is_the_density(dist):
    u = torch.linspace(0.01, 0.99, 99, dtype=DT)
    z = dist.icdf(u).detach().requires_grad_()
    cdf = dist.cdf(z)
    torch.testing.assert_close(cdf.detach(), u, rtol=0, atol=1e-12)
    (density,) = torch.autograd.grad(cdf.sum(), z)
    torch.testing.assert_close(dist.log_prob(z).exp().detach(), density, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dist", OURS, ids=lambda d: type(d).__name__)
def test_density_integrates_to_one_with_the_declared_moments(dist):
    """Trapezoid integrals of p, z p and z² p over [F⁻¹(1e-12), F⁻¹(1 - 1e-12)]."""
    lo, hi = dist.icdf(torch.tensor([1e-12, 1 - 1e-12], dtype=DT))
    z = torch.linspace(lo, hi, 400_001, dtype=DT)
    p = dist.log_prob(z).exp()
    mass, mean, second = (torch.trapezoid(p * z**k, z) for k in range(3))
    torch.testing.assert_close(mass, torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-6)
    torch.testing.assert_close(mean, dist.mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(second - mean**2, dist.variance, rtol=1e-5, atol=1e-8)


def test_gompertz_moments_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for eta, b in [(0.1, 1.0), (0.7, 1.3), (3.0, 0.5)]:
        d = Gompertz(torch.tensor(eta, dtype=DT), torch.tensor(b, dtype=DT))
        ref = stats.gompertz(c=eta, scale=1 / b)
        assert math.isclose(d.mean.item(), ref.mean(), rel_tol=1e-6)
        assert math.isclose(d.variance.item(), ref.var(), rel_tol=1e-5)


def test_multivariate_t_log_prob_against_scipy(torch_seed):
    stats = pytest.importorskip("scipy.stats")
    loc, tril = torch.tensor([0.5, -1.0], dtype=DT), torch.tensor([[1.0, 0.0], [0.5, 0.8]], dtype=DT)
    d = MultivariateStudentT(torch.tensor(5.0, dtype=DT), loc, tril)
    x = torch.randn(7, 2, dtype=DT) * 3
    ref = stats.multivariate_t(loc=loc.numpy(), shape=(tril @ tril.T).numpy(), df=5.0)
    torch.testing.assert_close(d.log_prob(x), torch.as_tensor(ref.logpdf(x.numpy())), rtol=1e-10, atol=1e-10)


def test_multivariate_t_tends_to_the_normal_as_df_grows():
    loc, tril = torch.tensor([0.5, -1.0], dtype=DT), torch.tensor([[1.0, 0.0], [0.5, 0.8]], dtype=DT)
    x = torch.tensor([[0.0, 0.0], [2.0, -3.0]], dtype=DT)
    normal = torch.distributions.MultivariateNormal(loc, scale_tril=tril).log_prob(x)
    torch.testing.assert_close(MultivariateStudentT(torch.tensor(1e8, dtype=DT), loc, tril).log_prob(x), normal,
                               rtol=1e-6, atol=1e-6)


def test_erlang_is_a_gamma_with_integer_shape():
    d = Erlang(3, torch.tensor([0.5, 2.0], dtype=DT))
    gamma = torch.distributions.Gamma(torch.tensor(3.0, dtype=DT), torch.tensor([0.5, 2.0], dtype=DT))
    z = torch.tensor([[0.3, 1.0], [2.0, 5.0]], dtype=DT)
    torch.testing.assert_close(d.log_prob(z), gamma.log_prob(z))
    torch.testing.assert_close(d.mean, gamma.mean)
    with pytest.raises(ValueError):
        Erlang(2.5, 1.0)


def test_triangular_rejects_a_peak_outside_its_range():
    with pytest.raises(ValueError):
        Triangular(0.0, 3.0, 2.0, validate_args=True)


@pytest.mark.parametrize("dist", [
    Rayleigh(torch.ones(3)), Gompertz(torch.ones(3), 2.0), Reciprocal(0.5, torch.full((3,), 4.0)),
    Triangular(torch.zeros(3), 0.5, 1.0), Erlang(2, torch.ones(3)),
    MultivariateStudentT(4.0, torch.zeros(3, 2), torch.eye(2)),
], ids=lambda d: type(d).__name__)
def test_batch_shapes_expand_and_float32(dist):
    assert dist.has_rsample
    big = dist.expand((5, 3))
    assert big.rsample((2,)).shape == (2, 5, 3) + dist.event_shape
    z = dist.rsample((4,))
    assert z.dtype == torch.float32 and torch.isfinite(dist.log_prob(z)).all()
