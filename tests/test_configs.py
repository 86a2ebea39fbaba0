"""Every config in configs/ loads, names only registered things and builds its model; the Kingma &
Welling 2013 ones carry the paper's settings (section 5, appendix C)."""
from pathlib import Path

import math

import pytest
import torch

from aevb.config import Config, load_toml
from aevb.models import build_model
from aevb.train import check_names

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
X_SHAPE = {"mnist": (1, 28, 28), "frey-face": (1, 28, 20), "reuters": (4258,)}  # reuters: its vocabulary


def load(path: Path) -> Config:
    return Config.from_dict(load_toml(path), str(path))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_builds_its_model(path):
    cfg = load(path)
    check_names(cfg)
    model = build_model(cfg.model, X_SHAPE[cfg.data.dataset])
    assert model.decode(torch.zeros(3, cfg.model.latent_dim)).mean.shape == (3, *X_SHAPE[cfg.data.dataset])


# the paper's set-up: MLPs of one tanh hidden layer (500 units for MNIST, 200 for Frey Face), Bernoulli
# and sigmoid-mean Gaussian decoders, N(0, 0.01²) initialisation, Adagrad with a step size from
# {0.01, 0.02, 0.1}, M = 100, L = 1, estimator B, and the prior p(θ) = N(0, I) as a MAP term
PAPER = {"kingma2013-mnist": ([500], "bernoulli"), "kingma2013-frey-face": ([200], "sigmoid_gaussian")}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_kingma2013_configs_carry_the_papers_settings(name, torch_seed):
    cfg = load(Path(CONFIGS[0].parent / f"{name}.toml"))
    m, t = cfg.model, cfg.train
    hidden, likelihood = PAPER[name]
    assert (m.net, m.hidden, m.activation, m.likelihood, m.posterior, m.prior) == ("mlp", hidden, "tanh", likelihood,
                                                                                  "normal", "standard_normal")
    assert (m.init_std, m.theta, m.theta_prior_scale) == (0.01, "map", 1.0)
    assert (t.optimizer, t.batch_size, t.samples, t.estimator) == ("adagrad", 100, 1, "B") and t.lr in (0.01, 0.02, 0.1)
    if likelihood == "sigmoid_gaussian":  # the encoder's form: a mean head and a log-variance head per pixel
        assert m.likelihood_scale == "predicted"
    # every weight and bias drawn from N(0, 0.01²): the sample mean and sd of the n parameters within
    # 5 standard errors, 0.01/√n and 0.01/√(2n) (the sd's, for normal draws)
    params = torch.cat([p.detach().flatten() for p in build_model(m, X_SHAPE[cfg.data.dataset]).parameters()])
    n = len(params)
    assert abs(params.mean().item()) < 5 * 0.01 / math.sqrt(n)
    assert abs(params.std().item() - 0.01) < 5 * 0.01 / math.sqrt(2 * n)
