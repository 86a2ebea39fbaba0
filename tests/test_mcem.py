"""Monte Carlo EM (aevb.algorithms.mcem, Kingma & Welling 2013 appendix E): on data from a
linear-Gaussian model it finds the maximum-likelihood solution of probabilistic PCA; end to end through
the CLI it trains, resumes its chains bit-identically, leaves the encoder untouched, evaluates with the
HMC marginal likelihood, and refuses what it cannot do in one line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.stats import chi2
from torch import nn

import aevb
from aevb import nets, rundir
from aevb.algorithms.mcem import MCEM
from aevb.cli import main
from aevb.config import Config
from aevb.data import Dataset
from aevb.distributions import LIKELIHOODS, POSTERIORS, PRIORS
from aevb.errors import DataError
from aevb.lab.linear_gaussian import LinearGaussian
from aevb.models import VAE, build_model
from aevb.train import seed_everything
from aevb.viz import fig_curves

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_vae(cfg: Config, data_dim: int) -> VAE:
    """aevb's VAE with a linear decoder z ↦ Wz + b (an MLP without hidden layers: ``--hidden`` cannot say
    it) and the configured Gaussian likelihood: probabilistic PCA, with an encoder that MCEM never uses."""
    d = cfg.model.latent_dim
    encoder = nets.Encoder(nn.Flatten(), nets.mlp([data_dim, 2 * d], "tanh"))
    decoder = nets.Decoder(nets.mlp([d, data_dim], "tanh"), (data_dim,))
    return VAE((data_dim,), d, encoder, decoder, POSTERIORS["normal"](d), PRIORS["standard_normal"](d),
               LIKELIHOODS["gaussian"].from_config(cfg.model, (data_dim,)))


def test_mcem_finds_the_maximum_likelihood_solution_of_probabilistic_pca(torch_seed):
    # Data from p(z) = N(0, I₂), p(x|z) = N(Wz + b, 0.25 I₅). The maximum-likelihood solution is in closed
    # form (Tipping & Bishop 1999): b = x̄, σ² = the mean of the D - d smallest eigenvalues λ of the sample
    # covariance, W = U_d (Λ_d - σ²I)^½ R. MCEM (full batch, Adagrad) must reach it as far as the data can
    # tell: its mean log-likelihood, exact here, within χ²_k(0.999)/(2N) of the maximum, k = 15 free
    # parameters (9 of W modulo rotation, 5 of b, σ): inside the 99.9% likelihood-ratio confidence region of
    # the ML estimate (Wilks). Measured: 0.005 nats after 80 epochs, against 0.038.
    N, D, d = 500, 5, 2
    g = torch.Generator().manual_seed(0)
    truth = LinearGaussian.random(D, d, sigma=0.5, signal=3.0, generator=g, dtype=torch.float32)
    x = truth.sample(N, generator=g)[0]
    lam, U = torch.linalg.eigh(torch.cov(x.T.double()))
    lam, U = lam.flip(0), U.flip(1)
    sigma2 = lam[d:].mean()
    ml = LinearGaussian(U[:, :d] * (lam[:d] - sigma2).sqrt(), x.double().mean(0), sigma2.sqrt())

    cfg = Config()
    cfg.model.latent_dim, cfg.model.likelihood = d, "gaussian"
    cfg.train.algorithm, cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size = "mcem", "adagrad", 0.3, N
    model = linear_vae(cfg, D)
    encoder = [p.detach().clone() for p in model.encoder.parameters()]
    mcem = MCEM(cfg, model, torch.optim.Adagrad(model.parameters(), lr=0.3), Dataset("ppca", "test", x, None, x, None),
                torch.device("cpu"))
    for epoch in range(80):
        mcem.begin_epoch()
        mcem.step(torch.randperm(N), 0, epoch)
        metrics = mcem.end_epoch()
    assert metrics["train_accept"] == pytest.approx(0.9, abs=0.05)

    linear = model.decoder.body[0]
    fitted = LinearGaussian(linear.weight.detach().double(), linear.bias.detach().double(),
                            model.likelihood.log_scale.detach().double().exp())
    gap = (ml.log_marginal(x.double()).mean() - fitted.log_marginal(x.double()).mean()).item()
    assert 0 <= gap < chi2.ppf(0.999, 15) / (2 * N)
    # the subspace, within 5 of the ML subspace's own asymptotic errors (Anderson 1963: the angle between the
    # eigenvectors i ≤ d < j has sd sqrt(λ_i λ_j / (N (λ_i - λ_j)²)))
    sd = max(math.sqrt(lam[i] * lam[j] / (N * (lam[i] - lam[j]) ** 2)) for i in range(d) for j in range(d, D))
    assert subspace_angles(fitted.W.numpy(), U[:, :d].numpy()).max() < 5 * sd
    assert all(torch.equal(a, b) for a, b in zip(encoder, model.encoder.parameters()))  # never trained


MCEM_FLAGS = ["--algorithm", "mcem", "--dataset", "digits", "--train-size", "200", "--test-size", "20",
              "--hidden", "32", "--latent-dim", "2", "--optimizer", "adagrad", "--lr", "0.02", "--quiet", "--no-report"]


def chains(run):
    return torch.load(run / rundir.OPTIMIZER, weights_only=True)["algorithm"]


@pytest.fixture(scope="module")
def mcem_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mcem") / "run"
    assert main(["train", *MCEM_FLAGS, "--epochs", "2", "--out", str(run)]) == 0
    return run


def test_train_reports_the_chains_and_no_bound(mcem_run):
    records = rundir.read_metrics(mcem_run)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["train_log_pxz"] < 0 and 0 < r["train_accept"] <= 1 and r["train_step_size"] > 0
        assert not any("elbo" in key or key.startswith("test_") for key in r)
    state = chains(mcem_run)
    assert state["z"].shape == (200, 2) and state["step_size"].shape == (200,)
    # the encoder keeps the weights it was built with, from the run's seed
    cfg, meta = rundir.read_config(mcem_run)
    seed_everything(cfg.train.seed)
    initial = build_model(cfg.model, meta["x_shape"])
    trained = aevb.load(mcem_run)
    for a, b in zip(initial.encoder.parameters(), trained.encoder.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(initial.decoder.parameters()), next(trained.decoder.parameters()))
    with pytest.raises(DataError, match="no ELBO to draw"):  # the report says why, and draws the rest
        fig_curves(mcem_run)


def test_resume_continues_the_chains_bit_identically(mcem_run, tmp_path):
    resumed = tmp_path / "resumed"
    assert main(["train", *MCEM_FLAGS, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main(["train", "--resume", "--epochs", "2", "--out", str(resumed), "--quiet", "--no-report"]) == 0
    for name, value in chains(mcem_run).items():
        assert torch.equal(value, chains(resumed)[name]), name
    for (name, a), b in zip(aevb.load(mcem_run).state_dict().items(), aevb.load(resumed).state_dict().values()):
        assert torch.equal(a, b), name
    drop = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_sec")} for r in records]  # noqa: E731
    assert drop(rundir.read_metrics(mcem_run)) == drop(rundir.read_metrics(resumed))


def test_evaluate_with_the_hmc_likelihood(mcem_run, capsys):
    assert main(["evaluate", str(mcem_run), "--k", "100", "--test-size", "5", "--hmc-likelihood",
                 "--hmc-samples", "20"]) == 0
    hmc = json.loads((mcem_run / "eval.json").read_text())["hmc_log_likelihood"]
    assert (hmc["samples"], hmc["chains"]) == (20, 4) and hmc["standard_error"] > 0
    assert 0.8 < hmc["accept_mean"] < 1 and hmc["value"] < 0
    assert "log p(x), HMC" in capsys.readouterr().out


@pytest.mark.parametrize("flags, says", [
    (["--algorithm", "mcem", "--model", "m2"], "decoder alone gives p(x|z)"),
    (["--algorithm", "mcem", "--estimator", "iwae"], "--estimator iwae shapes a variational bound"),
    (["--algorithm", "mcem", "--theta", "vb"], "--theta vb"),
    (["--algorithm", "mcem", "--val-fraction", "0.1", "--early-stopping", "2"], "--early-stopping"),
    (["--m-steps", "3"], "--m-steps applies to --algorithm mcem, not sgvb"),
])
def test_refusals_are_one_line(flags, says, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "digits", "--train-size", "100", "--epochs", "1", "--quiet", "--no-report"]
    assert main(["train", *common, *flags, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert not run.exists()


def test_a_checkpoint_with_chains_of_another_shape_is_refused(mcem_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(mcem_run, run)
    state = torch.load(run / rundir.OPTIMIZER, weights_only=True)
    state["algorithm"]["z"] = torch.zeros(7, 2)
    torch.save(state, run / rundir.OPTIMIZER)
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--quiet", "--no-report"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert np.array_equal([r["epoch"] for r in rundir.read_metrics(run)], [1, 2])
