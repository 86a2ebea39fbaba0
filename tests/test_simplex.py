"""Simplex latents (Dirichlet, logistic normal), the multinomial likelihood, bags of words and topics: pathwise
gradients against finite differences of closed-form expectations, densities and KLs against scipy, and ProdLDA
end to end through the CLI on a generated LDA-C corpus (the real Reuters file is checked where lda is installed)."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.special as sc
import torch
from scipy import integrate, stats
from torch.distributions import Dirichlet, Normal, kl_divergence

from aevb.cli import main
from aevb.config import Config, DataConfig
from aevb.data import load_dataset, vocabulary
from aevb.distributions import LIKELIHOODS, LogisticNormal, latent_families
from aevb.distributions.simplex import MEAN_DRAWS, laplace_dirichlet
from aevb.topics import npmi

DOUBLE = torch.float64
PRODLDA = Path(__file__).resolve().parent.parent / "configs" / "prodlda.toml"
FD_STEP = 1e-5  # central differences: error O(h²) ≈ 1e-10 on these smooth closed forms, far below the MC error


def families(posterior, prior, latent_dim=4, concentration=None):
    cfg = Config().model
    cfg.posterior, cfg.prior, cfg.latent_dim, cfg.prior_concentration = posterior, prior, latent_dim, concentration
    return latent_families(cfg)


def mc_gradient(param: torch.Tensor, draw, f, batches: int = 40, per_batch: int = 2500):
    """The pathwise gradient of E[f(z)] w.r.t. ``param`` (z = draw(n), reparameterised) from ``batches`` independent
    batch means, and its standard error: the sd of the batch gradients / √batches (the batch means of a correct
    estimator are iid with the true gradient as their mean)."""
    grads = []
    for _ in range(batches):
        (g,) = torch.autograd.grad(f(draw(per_batch)).mean(), param)
        grads.append(g)
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / batches**0.5


def finite_difference(closed_form, values: np.ndarray) -> np.ndarray:
    """The gradient of a scalar closed form of numpy parameters by central differences."""
    grad = np.zeros_like(values)
    for j in range(len(values)):
        step = np.zeros_like(values)
        step[j] = FD_STEP
        grad[j] = (closed_form(values + step) - closed_form(values - step)) / (2 * FD_STEP)
    return grad


ALPHA = np.array([0.3, 1.0, 2.5, 6.0])
WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0])


@pytest.mark.parametrize("name, f, closed_form", [
    ("E[log z_1] = ψ(α_1) - ψ(α_0)", lambda z: z[..., 0].log(), lambda a: sc.digamma(a[0]) - sc.digamma(a.sum())),
    ("E[z_3] = α_3/α_0", lambda z: z[..., 2], lambda a: a[2] / a.sum()),
    ("E[zᵀw] = αᵀw/α_0", lambda z: z @ torch.tensor(WEIGHTS), lambda a: a @ WEIGHTS / a.sum()),
])
def test_dirichlet_implicit_gradient_matches_finite_differences(name, f, closed_form, torch_seed, assert_within_se):
    alpha = torch.tensor(ALPHA, requires_grad=True)
    grad, se = mc_gradient(alpha, lambda n: Dirichlet(alpha).rsample((n,)), f)
    assert_within_se(grad, finite_difference(closed_form, ALPHA), se, f"∇_α {name}")


LOC, SCALE = np.array([0.5, -1.0, 0.2, 1.5]), np.array([0.7, 1.3, 0.4, 0.9])


def alr_square_moment(params: np.ndarray) -> float:
    """E[(log θ_1 - log θ_K)²] = (μ_1 - μ_K)² + σ_1² + σ_K² for θ = softmax(η), η ~ N(μ, diag σ²)."""
    mu, sigma = params[:4], params[4:]
    return (mu[0] - mu[-1]) ** 2 + sigma[0] ** 2 + sigma[-1] ** 2


def test_logistic_normal_pathwise_gradient_matches_finite_differences(torch_seed, assert_within_se):
    params = torch.tensor(np.concatenate([LOC, SCALE]), requires_grad=True)
    draw = lambda n: LogisticNormal(params[:4], params[4:]).rsample((n,))  # noqa: E731
    f = lambda theta: (theta[..., 0].log() - theta[..., -1].log()) ** 2  # noqa: E731
    grad, se = mc_gradient(params, draw, f)
    assert_within_se(grad, finite_difference(alr_square_moment, np.concatenate([LOC, SCALE])), se,
                     "∇ E[(log θ_1 - log θ_K)²]", atol=1e-12)


def test_logistic_normal_density_is_the_log_ratio_gaussian_with_its_jacobian(torch_seed):
    q = LogisticNormal(torch.tensor(LOC), torch.tensor(SCALE))
    theta = q.sample((5,))
    u = (theta[:, :-1].log() - theta[:, -1:].log()).numpy()
    covariance = np.diag(SCALE[:-1] ** 2) + SCALE[-1] ** 2
    expected = stats.multivariate_normal(LOC[:-1] - LOC[-1], covariance).logpdf(u) - np.log(theta.numpy()).sum(-1)
    np.testing.assert_allclose(q.log_prob(theta).numpy(), expected, rtol=1e-10)


def test_logistic_normal_mean_against_quadrature():
    """K = 2: θ_1 = sigmoid(u), u ~ N(μ_1 - μ_2, σ_1² + σ_2²), E[θ_1] a one-dimensional integral."""
    loc, scale = torch.tensor([[0.3, -0.4], [2.0, 0.0]], dtype=DOUBLE), torch.tensor([[1.0, 0.5], [0.2, 2.0]], dtype=DOUBLE)
    mean = LogisticNormal(loc, scale).mean
    for i in range(2):
        m, s = (loc[i, 0] - loc[i, 1]).item(), scale[i].pow(2).sum().sqrt().item()
        exact = integrate.quad(lambda u: sc.expit(u) * stats.norm.pdf(u, m, s), m - 12 * s, m + 12 * s)[0]
        sd = np.sqrt(integrate.quad(lambda u: sc.expit(u) ** 2 * stats.norm.pdf(u, m, s), m - 12 * s, m + 12 * s)[0]
                     - exact ** 2)
        assert abs(mean[i, 0].item() - exact) < 5 * sd / np.sqrt(MEAN_DRAWS)  # MEAN_DRAWS fixed draws
    torch.testing.assert_close(mean.sum(-1), torch.ones(2, dtype=DOUBLE))


def kl_dirichlet(a: np.ndarray, b: np.ndarray) -> float:
    """KL(Dir(a) ‖ Dir(b)) = ln Γ(a_0) - Σ ln Γ(a_k) - ln Γ(b_0) + Σ ln Γ(b_k) + Σ (a_k - b_k)(ψ(a_k) - ψ(a_0))."""
    return (sc.gammaln(a.sum()) - sc.gammaln(a).sum() - sc.gammaln(b.sum()) + sc.gammaln(b).sum()
            + ((a - b) * (sc.digamma(a) - sc.digamma(a.sum()))).sum())


def kl_gaussians(m_q, c_q, m_p, c_p) -> float:
    """KL(N(m_q, C_q) ‖ N(m_p, C_p)) with dense matrices."""
    inverse = np.linalg.inv(c_p)
    d = m_p - m_q
    return 0.5 * (np.trace(inverse @ c_q) + d @ inverse @ d - len(m_q) + np.linalg.slogdet(c_p)[1]
                  - np.linalg.slogdet(c_q)[1])


def log_ratio_gaussian(mu, var):
    """Mean and covariance of u = log θ_{<K} - log θ_K for θ = softmax(η), η ~ N(μ, diag var)."""
    return mu[:-1] - mu[-1], np.diag(var[:-1]) + var[-1]


def test_registered_kls_against_closed_forms_and_monte_carlo(torch_seed, assert_within_se):
    h = torch.randn(3, 8, dtype=DOUBLE)
    for posterior, prior, concentration in (("dirichlet", "dirichlet", 0.7), ("logistic_normal", "laplace_dirichlet", 1.0)):
        family, prior_net = families(posterior, prior, 4, concentration)
        q, p = family(h[:, :family.n_params]), prior_net.double()()
        kl = kl_divergence(q, p)
        for i in range(3):
            if posterior == "dirichlet":
                expected = kl_dirichlet(q.concentration[i].numpy(), p.concentration.numpy())  # α in float32, then 64
            else:
                mu_p, var_p = (t.numpy() for t in laplace_dirichlet(torch.full((4,), concentration, dtype=DOUBLE)))
                expected = kl_gaussians(*log_ratio_gaussian(q.loc[i].numpy(), q.scale[i].numpy() ** 2),
                                        *log_ratio_gaussian(mu_p, var_p))
                prodlda = kl_divergence(Normal(q.loc[i], q.scale[i]), Normal(torch.tensor(mu_p), torch.tensor(var_p).sqrt()))
                assert kl[i] <= prodlda.sum() + 1e-12  # the log-ratios are a function of η: data processing
            assert kl[i].item() == pytest.approx(expected, rel=1e-9)
        z = q.sample((20000,))
        ratio = q.log_prob(z) - p.log_prob(z)
        assert_within_se(ratio.mean(0), kl, ratio.std(0) / 20000**0.5, f"MC KL({posterior} ‖ {prior})")


def test_laplace_approximation_is_prodlda_equation_3():
    alpha = np.array([0.2, 1.0, 3.0, 0.5, 8.0])
    k = len(alpha)
    mu, var = laplace_dirichlet(torch.tensor(alpha))
    np.testing.assert_allclose(mu.numpy(), np.log(alpha) - np.log(alpha).sum() / k, rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), (1 / alpha) * (1 - 2 / k) + (1 / alpha).sum() / k**2, rtol=1e-12)
    symmetric = laplace_dirichlet(torch.full((k,), 0.5))[1]
    torch.testing.assert_close(symmetric, torch.full((k,), (1 / 0.5) * (1 - 1 / k)))


def test_prior_concentration_defaults_to_one_over_k():
    _, prior = families("dirichlet", "dirichlet", latent_dim=5)
    torch.testing.assert_close(prior().concentration, torch.full((5,), 0.2))


def test_multinomial_likelihood_against_scipy_and_its_mean():
    likelihood = LIKELIHOODS["multinomial"]((6,)).double()
    h = torch.tensor([[0.0, 1.0, -2.0, 30.0, -40.0, 0.5]] * 3, dtype=DOUBLE)
    x = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 3, 0, 900, 0, 1], [7, 1, 2, 0, 0, 5]], dtype=DOUBLE)
    p = likelihood(h)
    expected = [stats.multinomial.logpmf(row, int(row.sum()), torch.softmax(h[0], -1).numpy()) for row in x.numpy()]
    np.testing.assert_allclose(p.log_prob(x).numpy(), expected, rtol=1e-10)
    assert likelihood.mean_library.item() == pytest.approx((0 + 904 + 15) / 3)  # the training mean length
    torch.testing.assert_close(p.mean.sum(-1), torch.full((3,), (0 + 904 + 15) / 3, dtype=DOUBLE))


def test_npmi_is_the_textbook_formula():
    """Four documents: words 0 and 1 always together (NPMI 1), 0 and 2 independent halves (NPMI 0 by
    log(1/4 / (1/2 · 1/2)) = 0), 1 and 3 never together (-1, gensim's ε = 1e-12 in P(w_1, w_3) lifting it to
    log(ε / (1/2 · 1/2)) / -log ε)."""
    counts = np.array([[1, 2, 1, 0], [1, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]])
    assert npmi([[0, 1]], counts)[0] == pytest.approx(1.0, abs=1e-9)
    assert npmi([[0, 2]], counts)[0] == pytest.approx(0.0, abs=1e-9)
    assert npmi([[1, 3]], counts)[0] == pytest.approx(np.log(1e-12 / 0.25) / -np.log(1e-12), abs=1e-9)
    assert npmi([[0, 1, 2]], counts)[0] == pytest.approx((1.0 + 0.0 + 0.0) / 3, abs=1e-9)  # pairs (0,1) (0,2) (1,2)


def write_corpus(folder, documents: int = 240, seed: int = 0):
    """An LDA-C corpus of two topics over disjoint halves of a 20-word vocabulary: each document mostly one."""
    rng = np.random.default_rng(seed)
    words = [f"alpha{i}" for i in range(10)] + [f"beta{i}" for i in range(10)]
    lines = []
    for d in range(documents):
        theta = np.array([0.95, 0.05]) if d % 2 else np.array([0.05, 0.95])
        p = np.concatenate([np.full(10, theta[0] / 10), np.full(10, theta[1] / 10)])
        counts = rng.multinomial(int(rng.integers(20, 60)), p)
        ids = np.flatnonzero(counts)
        lines.append(f"{len(ids)} " + " ".join(f"{i}:{counts[i]}" for i in ids))
    (folder / "docs.ldac").write_text("\n".join(lines) + "\n")
    (folder / "docs.tokens").write_text("\n".join(words) + "\n")
    return folder / "docs.ldac", words


def test_ldac_source_reads_counts_and_vocabulary(tmp_path):
    path, words = write_corpus(tmp_path, documents=10)
    cfg = DataConfig(dataset=f"ldac:{path}", test_fraction=0.2)
    data = load_dataset(cfg)
    assert data.x_shape == (20,) and len(data.train_x) == 8 and len(data.test_x) == 2
    first = path.read_text().splitlines()
    total = sum(int(pair.split(":")[1]) for line in first for pair in line.split()[1:])
    assert data.train_x.sum() + data.test_x.sum() == total
    assert vocabulary(cfg) == words


def test_reuters_of_the_lda_package():
    lda_datasets = pytest.importorskip("lda.datasets")
    data = load_dataset(DataConfig(dataset="reuters"))
    assert (len(data.train_x), len(data.test_x), data.x_shape) == (355, 40, (4258,))
    assert data.train_x.sum() + data.test_x.sum() == 84010 == lda_datasets.load_reuters().sum()
    assert vocabulary(DataConfig(dataset="reuters"))[:3] == list(lda_datasets.load_reuters_vocab()[:3])


@pytest.fixture(scope="module")
def prodlda_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    path, _ = write_corpus(folder)
    run = folder / "run"
    assert main(["train", "--config", str(PRODLDA), "--dataset", f"ldac:{path}", "--latent-dim", "2",
                 "--hidden", "16", "--epochs", "40", "--batch-size", "40", "--lr", "0.01", "--out", str(run),
                 "--quiet", "--no-report"]) == 0
    return run


def test_prodlda_finds_the_two_topics_through_the_cli(prodlda_run, capsys):
    assert main(["topics", str(prodlda_run), "--top", "5"]) == 0
    result = json.loads((prodlda_run / "topics.json").read_text())
    prefixes = sorted({w.rstrip("0123456789") for w in t["words"]}.pop() for t in result["topics"]
                      if len({w.rstrip("0123456789") for w in t["words"]}) == 1)
    assert prefixes == ["alpha", "beta"], result["topics"]  # each topic's top words from one half of the vocabulary
    # Within a half the NPMI of a pair is log(P(a,b)/(P(a)P(b))) / -log P(a,b) > 0: in-topic words co-occur more
    assert all(t["npmi"] > 0 for t in result["topics"])
    # The data's own word distribution has perplexity ≈ exp(H) with H the entropy of a document's word law
    # (0.95/10 ten times, 0.05/10 ten times): a fit model lies between it and the uniform 20 words
    entropy = -(10 * 0.095 * np.log(0.095) + 10 * 0.005 * np.log(0.005))
    assert np.exp(entropy) < result["perplexity"] < 20
    assert "mean NPMI" in capsys.readouterr().out


def test_simplex_run_evaluates_and_refuses_what_needs_gaussian_latents(prodlda_run, capsys):
    assert main(["evaluate", str(prodlda_run), "--k", "20"]) == 0
    result = json.loads((prodlda_run / "eval.json").read_text())
    assert result["diagnostics"]["active_units"] is None and result["diagnostics"]["warning"] is None
    assert "active units not counted for proportions on the simplex" in capsys.readouterr().out
    assert "elbo_B" in result  # the logistic normal's closed-form KL from ProdLDA's prior
