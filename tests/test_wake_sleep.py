"""Wake-sleep (Hinton et al. 1995), the baseline of Kingma & Welling 2013: its two phases touch
disjoint parameters, on a linear-Gaussian model it finds the principal subspace that maximum
likelihood (probabilistic PCA) finds, and it trains through the CLI and the Python API alike,
reporting AEVB's bound."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from torch import nn

import aevb
from aevb import nets
from aevb.algorithms import ALGORITHMS
from aevb.algorithms.wake_sleep import wake_sleep_objectives
from aevb.cli import main
from aevb.config import Config, ModelConfig
from aevb.data import Dataset
from aevb.distributions import LIKELIHOODS, POSTERIORS, PRIORS
from aevb.lab.linear_gaussian import LinearGaussian
from aevb.models import VAE, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("settings", [
    {"prior": "mixture_of_gaussians", "likelihood": "gaussian"},  # θ also holds the prior's and the likelihood's parameters
    {"model": "hierarchical"},  # two stochastic layers: the dreams come from p(z2) p(z1|z2) p(x|z1)
], ids=["vae-learned-prior", "hierarchical"])
def test_the_wake_phase_reaches_theta_only_and_the_sleep_phase_phi_only(settings, torch_seed):
    model = build_model(ModelConfig(hidden=[16], latent_dim=3, hidden2=[8], latent_dim2=2, **settings), (1, 8, 8))
    params = dict(model.named_parameters())
    phi = [name for name in params if name.startswith(("encoder", "encoder2"))]
    theta = [name for name in params if name not in phi]
    assert phi and theta and any(name.startswith(("prior_net", "likelihood", "decoder2")) for name in theta)
    log_joint, log_q = wake_sleep_objectives(model, torch.rand(5, 1, 8, 8), samples=2)
    assert log_joint.shape == log_q.shape == (5,)
    for objective, own, other in ((log_joint, theta, phi), (log_q, phi, theta)):
        grads = dict(zip(params, torch.autograd.grad(objective.mean(), list(params.values()), retain_graph=True,
                                                     allow_unused=True)))
        assert all(grads[name] is None for name in other)
        assert all(grads[name] is not None for name in own) and any(grads[name].abs().sum() > 0 for name in own)


# Probabilistic PCA (Tipping & Bishop 1999): x = Wz + b + σε in D = 5 dimensions, N_z = 2, a signal of
# singular values 2 and 1.4 over noise σ = 0.3. Maximum likelihood puts W's columns in the span of the
# sample covariance's top two eigenvectors.
D, LATENT, N, SIGMA, SIGNAL = 5, 2, 1000, 0.3, (2.0, 1.4)


def linear_gaussian_vae() -> VAE:
    """The library's VAE with linear networks: q(z|x) = N(Ax + a, diag exp(Cx + c)) and
    p(x|z) = N(Wz + b, σ²I) with σ learned (a shared scale): the model class of probabilistic PCA."""
    return VAE((D,), LATENT, nets.Encoder(nn.Flatten(), nets.mlp([D, 2 * LATENT], "tanh")),
               nets.Decoder(nets.mlp([LATENT, D], "tanh"), (D,)), POSTERIORS["normal"](LATENT),
               PRIORS["standard_normal"](LATENT), LIKELIHOODS["gaussian"]((D,), "shared", 1.0))


def test_on_probabilistic_pca_wake_sleep_finds_the_principal_subspace():
    """The decoder's column space against the sample principal subspace, the ML solution. Tolerance from
    the sampling error of that ML estimate itself: the sample eigenvector i has asymptotic coordinates of
    variance λ_i λ_j / (N (λ_i - λ_j)²) along the population eigenvector j (Anderson 1963), and the small
    principal angles between the sample and the population subspaces are those coordinates, so their norm
    has sd ≈ √(Σ_{i ≤ 2 < j} λ_i λ_j / (N (λ_i - λ_j)²)) = 0.015 here. Wake-sleep must come within 5 of
    those sd of the ML subspace (the ML subspace is within them of the truth's, checked on this draw too),
    where a subspace missing a principal direction is ~1 radian away; 20 epochs reach 0.02."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=torch.float64))[0]
    truth = LinearGaussian(basis * torch.tensor(SIGNAL, dtype=torch.float64),
                           torch.randn(D, generator=g, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64))
    x = truth.sample(N, generator=g)[0].float()
    torch.manual_seed(1)
    model = linear_gaussian_vae()
    cfg = Config()
    cfg.train.algorithm, cfg.train.batch_size = "wake-sleep", 100
    algorithm = ALGORITHMS["wake-sleep"](cfg, model, torch.optim.Adam(model.parameters(), lr=0.02),
                                         Dataset("ppca", "drawn", x, None, x[:100], None), torch.device("cpu"))
    for epoch in range(20):
        algorithm.begin_epoch()
        for step, idx in enumerate(torch.randperm(N).split(cfg.train.batch_size)):
            algorithm.step(idx, step, epoch)
        metrics = algorithm.end_epoch()
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.double().numpy().T, bias=True))
    principal = eigenvectors[:, -LATENT:]
    lam = np.array([s**2 + SIGMA**2 for s in SIGNAL] + [SIGMA**2] * (D - LATENT))
    sd = math.sqrt(sum(lam[i] * lam[j] / (N * (lam[i] - lam[j]) ** 2) for i in range(LATENT) for j in range(LATENT, D)))
    assert np.linalg.norm(subspace_angles(principal, truth.W.numpy())) < 5 * sd
    W = model.decoder.body[0].weight.detach().double().numpy()
    assert np.linalg.norm(subspace_angles(W, principal)) < 5 * sd, (subspace_angles(W, principal), sd)
    assert np.linalg.svd(W, compute_uv=False).min() > 1.0  # both directions carry signal (1.4 in the truth)
    assert metrics["train_elbo"] == pytest.approx(metrics["train_log_px_z"] - metrics["train_kl"], rel=1e-5)


QUICK = ["--algorithm", "wake-sleep", "--dataset", "mnist", "--train-size", "300", "--test-size", "100",
         "--hidden", "64", "--latent-dim", "4", "--epochs", "2", "--quiet", "--no-report"]


def test_aevb_train_algorithm_wake_sleep_end_to_end(tmp_path):
    """The CLI and aevb.train with the same Config give the same weights; the run reports AEVB's bound
    (elbo = log p(x|z) - KL under estimator B) and both phases' objectives, and loads back."""
    run = tmp_path / "cli"
    assert main(["train", *QUICK, "--out", str(run)]) == 0
    cfg = Config.from_dict({"data": {"dataset": "mnist", "train_size": 300, "test_size": 100},
                            "model": {"hidden": [64], "latent_dim": 4}, "train": {"algorithm": "wake-sleep", "epochs": 2}})
    api = aevb.train(cfg, tmp_path / "api", quiet=True)
    assert (api / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert json.loads((run / "config.json").read_text())["train"]["algorithm"] == "wake-sleep"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for part in ("train", "test"):
            assert r[f"{part}_elbo"] == pytest.approx(r[f"{part}_log_px_z"] - r[f"{part}_kl"], rel=1e-5)
        assert r["train_wake_log_joint"] < 0 and r["train_sleep_log_q"] != 0
    assert records[1]["test_elbo"] > records[0]["test_elbo"]
    assert isinstance(aevb.load(run), VAE)


@pytest.mark.parametrize("flags, message", [
    (["--model", "m2"], "--algorithm wake-sleep trains models whose decoder dreams x from z alone "
                        "(vae, hierarchical); m2 is not one"),
    (["--model", "pcvae"], "--algorithm wake-sleep trains unsupervised models (vae, hierarchical); pcvae has a "
                           "classifier: train it with --algorithm semi-supervised"),
    (["--labelled", "100"], "--labelled applies to the semi-supervised models (m2, pcvae) and --algorithm "
                            "semi-supervised, not vae trained by wake-sleep"),
    (["--beta", "2"], "--beta and --beta-schedule weigh the KL of the ELBO that sgvb ascends"),
    (["--beta-schedule", "linear"], "--beta and --beta-schedule weigh the KL of the ELBO that sgvb ascends"),
    (["--free-bits", "0.5"], "--free-bits changes the KL of the ELBO that sgvb ascends; wake-sleep ascends no ELBO"),
], ids=["m2", "pcvae", "labelled", "beta", "beta-schedule", "free-bits"])
def test_what_wake_sleep_cannot_train_is_one_line_and_exit_2(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--algorithm", "wake-sleep", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2",
                 *flags, "--out", str(out), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aevb: error: {message}") and err.count("\n") == 1
    assert not out.exists()
