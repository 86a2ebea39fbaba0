"""θ by MAP and full VB: the prior and KL terms against their closed forms and scaling, a collapsed
q(θ) giving back the ML bound, and runs that resume bit-identically and evaluate like any other."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import aevb
from aevb.cli import main
from aevb.config import Config, ModelConfig
from aevb.errors import ConfigError
from aevb.models import build_model
from aevb.models.theta import BayesLinear, make_bayesian, theta_penalty

N = 1000


def vae(**model) -> torch.nn.Module:
    cfg = ModelConfig(hidden=[16], latent_dim=3, **model)
    torch.manual_seed(0)
    return build_model(cfg, (1, 8, 8))


def test_map_term_is_minus_the_log_prior_of_the_decoder_over_n():
    model = vae()
    exact = sum(Normal(0.0, 0.7).log_prob(p).sum() for p in model.decoder.parameters())
    torch.testing.assert_close(theta_penalty(model, "map", 0.7, N), -exact / N)
    assert theta_penalty(model, "ml", 0.7, N) is None


def test_vb_term_is_the_closed_form_kl_of_every_bayesian_layer_over_n():
    model = vae(theta="vb")
    layers = [m for m in model.decoder.modules() if isinstance(m, BayesLinear)]
    assert len(layers) == 2 and not any(type(m) is torch.nn.Linear for m in model.decoder.modules())
    with torch.no_grad():
        for layer in layers:  # a q(θ) away from its initialisation
            layer.weight_log_sigma.uniform_(-3, 0)
            layer.bias_log_sigma.uniform_(-3, 0)
    exact = sum(kl_divergence(Normal(mu, ls.exp()), Normal(0.0, 0.5)).sum() for layer in layers
                for mu, ls in ((layer.weight_mu, layer.weight_log_sigma), (layer.bias_mu, layer.bias_log_sigma)))
    torch.testing.assert_close(theta_penalty(model, "vb", 0.5, N), exact / N)


def test_a_collapsed_q_theta_gives_back_the_ml_bound():
    ml = vae()
    vb = copy.deepcopy(ml)
    make_bayesian(vb)  # means at the ML weights
    with torch.no_grad():
        for layer in (m for m in vb.decoder.modules() if isinstance(m, BayesLinear)):
            layer.weight_log_sigma.fill_(-40.0)
            layer.bias_log_sigma.fill_(-40.0)
    x = torch.rand(6, 1, 8, 8)
    torch.manual_seed(3)
    a = ml.elbo(x, aevb.Estimator("B"))
    torch.manual_seed(3)  # the same z: the decoder's own draws come after it
    b = vb.elbo(x, aevb.Estimator("B"))
    torch.testing.assert_close(a.elbo, b.elbo, rtol=0, atol=1e-5)


@pytest.mark.parametrize("theta", ["map", "vb"])
def test_runs_resume_bit_identically_and_evaluate(tmp_path, theta, capsys):
    flags = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "3", "--theta", theta, "--quiet", "--no-report"]
    assert main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_theta_term"] > 0
    assert main(["evaluate", str(tmp_path / "a"), "--k", "20", "--test-size", "30"]) == 0
    assert main(["sample", str(tmp_path / "a"), "--n", "4"]) == 0
    assert isinstance(aevb.load(tmp_path / "a"), aevb.models.VAE)


def test_vb_refuses_a_convolutional_decoder():
    cfg = Config()
    cfg.model.net, cfg.model.theta = "conv", "vb"
    with pytest.raises(ConfigError, match="--theta vb puts a Gaussian q"):
        build_model(cfg.model, (1, 28, 28))
