"""End to end through the CLI: train on a few hundred real images, evaluate, sample, reconstruct,
load back; and every user mistake answered with one line and exit code 2."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import aevb
from aevb.cli import main

QUICK = ["--train-size", "300", "--test-size", "100", "--epochs", "2", "--quiet", "--no-report"]


def aevb_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aevb.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mnist"
    assert main(["train", "--dataset", "mnist", "--out", str(run), "--hidden", "64", "--latent-dim", "4", *QUICK]) == 0
    return run


def test_train_writes_a_run_directory(mnist_run):
    assert {p.name for p in mnist_run.iterdir()} >= {"config.json", "model.safetensors", "optimizer.pt", "metrics.jsonl"}
    records = [json.loads(line) for line in (mnist_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["test_elbo"] < 0 and r["test_kl"] > 0 and r["samples_per_sec"] > 0
        assert r["test_elbo"] == pytest.approx(r["test_log_px_z"] - r["test_kl"], rel=1e-5)
    config = json.loads((mnist_run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["run"]["x_shape"] == [1, 28, 28]


def test_load_gives_a_working_model(mnist_run):
    model = aevb.load(mnist_run)
    x = torch.rand(5, 1, 28, 28)
    assert model.encode(x).rsample().shape == (5, 4)
    assert model.decode(torch.zeros(3, 4)).mean.shape == (3, 1, 28, 28)
    assert model.sample(7).shape == (7, 1, 28, 28) and model.reconstruct(x).shape == x.shape
    assert model.embed(x).shape == (5, 4)
    assert model.elbo(x, aevb.Estimator("B")).elbo.shape == (5,)


def test_evaluate_sample_reconstruct(mnist_run, capsys):
    assert main(["evaluate", str(mnist_run), "--k", "20", "--test-size", "50"]) == 0
    result = json.loads((mnist_run / "eval.json").read_text())
    assert result["log_likelihood"]["value"] >= result["elbo_B"]["elbo"] - 3 * result["log_likelihood"]["standard_error"] - 0.5
    assert "IWAE bound, k=20" in capsys.readouterr().out
    assert main(["sample", str(mnist_run), "--n", "16"]) == 0
    assert main(["reconstruct", str(mnist_run), "--n", "8"]) == 0
    for name in ("samples.png", "reconstructions.png"):
        assert (mnist_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    common = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "2", "--quiet", "--no-report"]
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", str(tmp_path / "resumed"), "--quiet", "--no-report"]) == 0
    a, b = aevb.load(tmp_path / "straight"), aevb.load(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    lines = lambda run: [{k: v for k, v in json.loads(l).items() if k not in ("seconds", "samples_per_sec")}
                         for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines(tmp_path / "straight") == lines(tmp_path / "resumed")


def test_config_file_and_flags(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nlatent_dim = 3\nhidden = [16]\n[train]\nepochs = 1\n')
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--dataset", "digits", "--latent-dim", "5",
                 "--out", str(tmp_path / "r"), "--quiet", "--no-report"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["latent_dim"] == 5 and cfg["model"]["hidden"] == [16]  # the flag wins over the file


@pytest.mark.parametrize("variant", [
    ["--posterior", "full_normal"], ["--posterior", "laplace"], ["--posterior", "student_t"], ["--posterior", "logistic"],
    ["--prior", "mixture_of_gaussians"], ["--likelihood", "continuous_bernoulli"],
    ["--likelihood", "gaussian", "--likelihood-scale", "predicted"], ["--likelihood", "laplace", "--likelihood-scale", "per_pixel"],
    ["--estimator", "iwae", "--samples", "5"], ["--beta", "2", "--beta-schedule", "cyclical", "--cycles", "1"],
    ["--net", "conv", "--conv-channels", "8", "16"], ["--optimizer", "adagrad", "--lr", "0.02", "--init-std", "0.01"],
    ["--binarize", "dynamic"],
])
def test_every_variant_trains(tmp_path, variant):
    args = ["train", "--dataset", "digits", "--hidden", "32", "--latent-dim", "2", "--epochs", "1", "--train-size", "256",
            "--quiet", "--no-report", "--out", str(tmp_path / "r"), *variant]
    assert main(args) == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert np.isfinite(record["test_elbo"])


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A folder with a mis-shaped npz, an out-of-range npz and a run whose weights are truncated."""
    tmp = tmp_path_factory.mktemp("bad")
    np.savez(tmp / "shape.npz", x_train=np.zeros((4, 3)), x_test=np.zeros((4, 5)))
    np.savez(tmp / "range.npz", x_train=np.full((4, 3), 2.0), x_test=np.zeros((4, 3)))
    corrupt = tmp / "corrupt"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--out", str(corrupt), "--quiet", "--no-report"]) == 0
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return tmp


@pytest.mark.parametrize("args, message", [
    (["train", "--latnt-dim", "3"], "did you mean '--latent-dim'"),
    (["train", "--latent-dim", "0"], "latent_dim must be positive"),
    (["train", "--batch-size", "-5"], "batch_size must be positive"),
    (["train", "--lr", "fast"], "lr must be a float"),
    (["train", "--posterior", "gausian"], "unknown posterior family 'gausian'"),
    (["train", "--dataset", "mnsit"], "did you mean 'mnist'"),
    (["train", "--dataset", "cifar10", "--data-dir", "{tmp}", "--no-download"], "is not on this machine"),
    (["train", "--config", "{tmp}/nope.toml"], "does not exist"),
    (["train", "--dataset", "npz:{tmp}/shape.npz"], "differ in shape"),
    (["train", "--dataset", "npz:{tmp}/range.npz"], "bernoulli likelihood needs [0.0, 1.0]"),
    (["evaluate", "{tmp}"], "is not a run directory"),
    (["sample", "{tmp}/corrupt"], "corrupt or truncated"),
    (["frobnicate"], "invalid choice"),
])
def test_user_mistakes_get_one_line_and_exit_2(bad_inputs, args, message):
    result = aevb_cli(*[a.replace("{tmp}", str(bad_inputs)) for a in args], cwd=bad_inputs)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aevb: error: ") and message in lines[0], result.stderr
    assert not (bad_inputs / "runs").exists()  # nothing half-made


def test_an_existing_run_directory_is_refused_without_overwrite(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--quiet", "--no-report", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_datasets_lists_every_registered_dataset(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion-mnist", "cifar10", "digits", "npz:PATH"):
        assert name in out
