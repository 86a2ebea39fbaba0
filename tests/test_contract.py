"""The model and algorithm contracts: a model defined in this file only, registered by name, goes
through training, evaluation, figures and the report by the public API and the CLI, and the
library's estimates on it match its exact log-likelihood.

The model is a VAE whose decoder is a fixed random linear map with Gaussian noise,
p(x|z) = N(Wz + b, σ²I): probabilistic PCA, so log p(x) = log N(x; b, WWᵀ + σ²I) is known exactly
and only the encoder q(z|x) is trained.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

import aevb
from aevb import nets
from aevb.cli import main
from aevb.config import Config, DataConfig
from aevb.data import load_dataset
from aevb.distributions import LIKELIHOODS
from aevb.evaluate import evaluate
from aevb.models import MODELS, DecodesLatent, LatentModel
from aevb.viz.figures import FIGURES, draw_figures, figures_for
from aevb.viz.report import write_report

SIGMA, LATENT = 0.3, 2


class FixedDecoderVAE(LatentModel, DecodesLatent):
    """q(z|x) = N(μ(x), diag σ²(x)) from a one-layer tanh MLP; p(z) = N(0, I); p(x|z) = N(Wz + b, σ²I)
    with W and b fixed at random (buffers: saved with the run, never trained)."""

    def __init__(self, x_shape, latent_dim, hidden, likelihood, seed=0):
        super().__init__()
        self.x_shape, self.latent_dim, self.likelihood = tuple(x_shape), latent_dim, likelihood
        g = torch.Generator().manual_seed(seed)
        d = math.prod(x_shape)
        self.register_buffer("W", 0.3 * torch.randn(d, latent_dim, generator=g))
        self.register_buffer("b", 0.2 + 0.2 * torch.rand(d, generator=g))
        self.encoder = nets.mlp([d, hidden, 2 * latent_dim], "tanh")

    def prior(self):
        zero = self.b.new_zeros(self.latent_dim)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def encode(self, x):
        mean, log_var = self.encoder(x.flatten(1)).chunk(2, -1)
        return Independent(Normal(mean, (0.5 * log_var).exp()), 1)

    def decode(self, z):
        return self.likelihood((z @ self.W.T + self.b).reshape(*z.shape[:-1], *self.x_shape))

    @torch.no_grad()
    def sample(self, n):
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x).mean).mean

    def log_px(self, x):
        """The exact log p(x) = log N(x; b, WWᵀ + σ²I)."""
        scale = self.likelihood.log_scale.exp()
        cov = self.W @ self.W.T + scale**2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b.double(), cov.double()).log_prob(x.flatten(1).double())


@MODELS.register("fixed-decoder-test")
def build_fixed_decoder_vae(cfg, x_shape, n_classes=None):
    return FixedDecoderVAE(x_shape, cfg.latent_dim, cfg.hidden[0], LIKELIHOODS[cfg.likelihood].from_config(cfg, x_shape))


FLAGS = ["--model", "fixed-decoder-test", "--dataset", "digits", "--hidden", "32", "--latent-dim", str(LATENT),
         "--likelihood", "gaussian", "--likelihood-scale", "fixed", "--likelihood-scale-init", str(SIGMA),
         "--lr", "3e-3", "--epochs", "8", "--seed", "3"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("contract") / "cli"
    assert main(["train", *FLAGS, "--out", str(run), "--quiet"]) == 0  # with the report
    return run


def test_a_model_defined_outside_the_library_trains_by_the_api_like_by_the_cli(tmp_path, cli_run):
    cfg = Config.from_dict({"model": {"model": "fixed-decoder-test", "hidden": [32], "latent_dim": LATENT,
                                      "likelihood": "gaussian", "likelihood_scale": "fixed",
                                      "likelihood_scale_init": SIGMA},
                            "data": {"dataset": "digits"}, "train": {"lr": 3e-3, "epochs": 8, "seed": 3}})
    run = aevb.train(cfg, tmp_path / "api", quiet=True)
    assert (run / "model.safetensors").read_bytes() == (cli_run / "model.safetensors").read_bytes()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run / "config.json").read_text())["train"]["algorithm"] == "sgvb"
    assert records[-1]["test_elbo"] > records[0]["test_elbo"] + 1.0  # the encoder learns
    model = aevb.load(run)
    assert isinstance(model, FixedDecoderVAE)
    fresh = build_fixed_decoder_vae(cfg.model, model.x_shape)
    assert torch.equal(model.W, fresh.W) and torch.equal(model.b, fresh.b)  # the decoder was never trained


def test_the_evaluator_recovers_the_exact_log_likelihood_of_the_model(cli_run):
    """Importance sampling with the trained encoder as proposal: log p(x) within 5 of its standard
    errors of the closed form, and the ELBO below it by the mean KL(q(z|x) ‖ p(z|x)) ≥ 0."""
    torch.manual_seed(0)
    model = aevb.load(cli_run)
    data = load_dataset(DataConfig(dataset="digits", test_size=200))
    r = evaluate(model, data.test_x, ks=(1, 50, 1000))
    exact = model.log_px(data.test_x).mean().item()
    ll = r["log_likelihood"]
    assert abs(ll["value"] - exact) < 5 * ll["standard_error"] + 1e-3, (ll, exact)
    assert r["elbo_B"]["elbo"] < exact
    assert r["iwae"]["1"] < r["iwae"]["50"] < r["iwae"]["1000"] + 1e-3


def test_figures_report_and_commands_take_the_new_model(cli_run, capsys):
    model = aevb.load(cli_run)
    assert set(figures_for(model)) == set(FIGURES) - {"analogies"}  # it decodes z alone; no latent class
    page = (cli_run / "report.html").read_text()
    assert sorted(re.findall(r'alt="([a-z]+)"', page)) == sorted(figures_for(model))
    assert main(["evaluate", str(cli_run), "--k", "50", "--test-size", "100"]) == 0
    assert main(["plot", str(cli_run), "manifold", "--n", "5"]) == 0
    assert main(["sample", str(cli_run), "--n", "4"]) == 0
    assert main(["reconstruct", str(cli_run), "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "log p(x), importance sampled" in out and "manifold" in out
    drawn = dict((name, path) for name, path, _ in draw_figures(cli_run, ["latent", "kl"]))
    assert all(Path(p).stat().st_size > 0 for p in drawn.values())
    assert write_report(cli_run, cli_run / "again.html").stat().st_size > 0


def test_an_algorithm_that_needs_a_classifier_refuses_the_model(tmp_path, capsys):
    assert main(["train", *FLAGS, "--algorithm", "semi-supervised", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--algorithm semi-supervised trains models with a classifier" in err and "fixed-decoder-test" in err
    assert not (tmp_path / "r").exists()
    assert main(["train", *FLAGS, "--algorithm", "sgvd", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "did you mean 'sgvb'" in capsys.readouterr().err
    assert main(["train", *FLAGS, "--theta", "map", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "FixedDecoderVAE has no 'decoder'" in capsys.readouterr().err and not (tmp_path / "r").exists()
