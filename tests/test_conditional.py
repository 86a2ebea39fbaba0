"""Conditional inference for missing pixels, against the exact conditional of a linear-Gaussian model
(probabilistic PCA: x ~ N(b, WWᵀ + σ²I), so E[x_m | x_o] = b_m + C_mo C_oo⁻¹ (x_o - b_o)), and the
imputation command end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from aevb.api import load
from aevb.cli import main
from aevb.errors import DataError
from aevb.inference import impute, make_mask
from aevb.models import DecodesLatent, LatentModel

D, d, SIGMA, CHAINS = 6, 2, 0.4, 200


class PPCA(LatentModel, DecodesLatent):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I); q(z|x) the exact posterior, its mean shifted by
    ``shift`` and its standard deviations scaled by ``widen`` (an imperfect encoder where these differ
    from 0 and 1)."""

    def __init__(self, shift=0.0, widen=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = torch.nn.Parameter(torch.randn(D, d, generator=g, dtype=torch.float64), requires_grad=False)
        self.b = torch.nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64), requires_grad=False)
        self.x_shape, self.latent_dim, self.shift, self.widen = (D,), d, shift, widen
        self.post_cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / SIGMA**2)

    def prior(self):
        zero = torch.zeros(d, dtype=torch.float64)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def encode(self, x):
        mean = (x - self.b) @ self.W @ self.post_cov / SIGMA**2 + self.shift
        return Independent(Normal(mean, (self.post_cov.diagonal().sqrt() * self.widen).expand_as(mean)), 1)

    def decode(self, z):
        return Independent(Normal(z @ self.W.T + self.b, SIGMA), 1)

    def sample(self, n):
        return self.decode(self.prior().sample((n,))).mean

    def reconstruct(self, x):
        return self.decode(self.encode(x).mean).mean

    def conditional_mean(self, x, missing):
        c = self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        m, o = missing, ~missing
        return self.b[m] + c[m][:, o] @ torch.linalg.solve(c[o][:, o], x[o] - self.b[o])


def chains(model, method, **options):
    """CHAINS independent estimates of E[x_miss | x_obs] for one point (pixels 1, 3, 4 missing), each
    from ``options["chains"]`` chains; their mean and standard error, and the exact value."""
    torch.manual_seed(0)
    x = model.sample(1)[0] + SIGMA * torch.randn(D, dtype=torch.float64)
    missing = torch.tensor([False, True, False, True, True, False])
    estimates = model.impute(x.expand(CHAINS, D).clone(), missing.expand(CHAINS, D).clone(), method, **options)[:, missing]
    return estimates.mean(0), estimates.std(0) / CHAINS**0.5, model.conditional_mean(x, missing)


@pytest.mark.parametrize("method, options", [("importance", {"samples": 2000, "sweeps": 3, "chains": 5}),
                                             ("metropolis-gibbs", {"sweeps": 200, "chains": 1})])
def test_exact_methods_find_the_conditional_mean_with_an_imperfect_encoder(method, options, assert_within_se):
    """The encoder's mean off by 0.1 (0.6 posterior standard deviations here) and its spread 1.5× too wide."""
    mean, se, exact = chains(PPCA(shift=0.1, widen=1.5), method, **options)
    assert_within_se(mean, exact, se, f"{method}: E[x_miss | x_obs]")


def test_pseudo_gibbs_is_exact_with_the_true_posterior_and_drifts_without_it(assert_within_se):
    mean, se, exact = chains(PPCA(), "pseudo-gibbs", sweeps=200, chains=1)
    assert_within_se(mean, exact, se, "pseudo-Gibbs with q = p(z|x)")
    mean, se, exact = chains(PPCA(shift=0.1, widen=1.5), "pseudo-gibbs", sweeps=200, chains=1)
    assert ((mean - exact).abs() > 10 * se).any()  # the bias that Metropolis-within-Gibbs corrects (measured 14-66 SE)


@pytest.mark.parametrize("spec, missing", [("top-half", 14 * 28), ("center-10", 100), ("left-half", 14 * 28)])
def test_masks_hide_what_they_say(spec, missing):
    mask = make_mask(spec, (1, 28, 28), 3)
    assert mask.shape == (3, 1, 28, 28) and mask[0].sum() == missing and torch.equal(mask[0], mask[2])
    assert mask[0, 0, :14].all() == (spec == "top-half")


def test_random_masks_differ_per_image_and_follow_the_seed():
    a, b = make_mask("random-0.3", (1, 8, 8), 400, seed=1), make_mask("random-0.3", (1, 8, 8), 400, seed=1)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert abs(a.float().mean().item() - 0.3) < 5 * (0.3 * 0.7 / a.numel()) ** 0.5


@pytest.mark.parametrize("spec, message", [("random-1.5", "must be a number in (0, 1)"), ("center-40", "whole number"),
                                           ("nowhere.npy", "neither a mask name nor a file"),
                                           ("wrong.npy", "has shape (5, 5)"), ("empty.npy", "leaves no pixel missing"),
                                           ("full.npy", "hides every pixel")])
def test_bad_masks_are_refused_with_one_line(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    np.save("wrong.npy", np.ones((5, 5)))
    np.save("empty.npy", np.zeros((8, 8)))
    np.save("full.npy", np.ones((8, 8)))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_mask(spec, (1, 8, 8), 2)


def test_impute_command_writes_the_table_and_figure(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--hidden", "64", "--latent-dim", "4", "--epochs", "20",
                 "--quiet", "--no-report", "--out", str(run)]) == 0
    assert main(["impute", str(run), "--mask", "random-0.5", "--test-size", "40", "--samples", "500",
                 "--sweeps", "20"]) == 0
    record = json.loads((run / "impute-random-0.5.json").read_text())
    assert record["mask"] == "random-0.5" and record["metric"] == "squared error"
    assert set(record["results"]) == {"pseudo-gibbs", "metropolis-gibbs", "importance", "mean-image", "knn-imputer"}
    assert record["results"]["importance"] < record["results"]["mean-image"]  # the model knows more than the mean
    assert (run / "impute-random-0.5.png").stat().st_size > 0
    model, x = load(run), torch.rand(4, 1, 8, 8)
    torch.manual_seed(0)
    by_name = model.impute(x, "bottom-half", samples=100)
    torch.manual_seed(0)
    assert torch.equal(by_name, impute(model, x, make_mask("bottom-half", (1, 8, 8), 4), samples=100))
    assert torch.equal(by_name[..., :4, :], x[..., :4, :]) and not torch.equal(by_name, x)
    assert "knn-imputer" in capsys.readouterr().out
    assert main(["report", str(run), "--test-size", "40"]) == 0
    page = (run / "report.html").read_text()
    assert "mask random-0.5" in page and 'alt="impute-random-0.5"' in page
    assert main(["impute", str(run), "--mask", "random-2"]) == 2
    assert "must be a number in (0, 1)" in capsys.readouterr().err
    assert not (run / "impute-random-2.json").exists()
