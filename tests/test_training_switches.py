"""The training switches: --val-fraction (a held-out validation set), --early-stopping with
best.safetensors, --grad-clip and --free-bits; each checked for what it does, and resume stays
bit-identical with all of them on."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributions import Independent, Normal

import aevb
from aevb import rundir
from aevb.algorithms import base
from aevb.cli import main
from aevb.config import Config
from aevb.data import Dataset, hold_out, load_dataset
from aevb.errors import ConfigError, RunError
from aevb.objectives import sgvb_a, sgvb_b
from aevb.train import Trainer, seed_everything, train

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--quiet", "--no-report"]


def digits(**train_options) -> Config:
    cfg = Config()
    cfg.data.dataset, cfg.data.train_size, cfg.data.test_size = "digits", 256, 64
    cfg.model.hidden, cfg.model.latent_dim = [16], 2
    for k, v in {"device": "cpu", "epochs": 3, **train_options}.items():
        setattr(cfg.train, k, v)
    return cfg


def numbered(n: int = 100) -> Dataset:
    """A dataset whose i-th training example is the number i (its label i % 10): who went where is readable."""
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    return Dataset("numbers", "test", x, torch.arange(n) % 10, torch.zeros(5, 1), None)


# ---------------------------------------------------------------------------------------------
# --val-fraction

def test_the_validation_set_is_disjoint_reproducible_and_taken_from_the_training_set():
    ds = numbered(100)
    a, again, other = hold_out(ds, 0.25, seed=1), hold_out(ds, 0.25, seed=1), hold_out(ds, 0.25, seed=2)
    val, kept = set(a.val_x.flatten().tolist()), set(a.train_x.flatten().tolist())
    assert len(a.val_x) == 25 and len(a.train_x) == 100 - 25  # shrinks by exactly the held-out count
    assert not val & kept and val | kept == set(range(100))
    for x, y in ((a.val_x, a.val_y), (a.train_x, a.train_y)):  # the labels follow their examples
        assert torch.equal(y, x.flatten().long() % 10)
    assert torch.equal(a.val_x, again.val_x) and torch.equal(a.train_x, again.train_x)  # same seed, same split
    assert not torch.equal(a.val_x, other.val_x)  # another seed, another split
    assert a.validation == {"fraction": 0.25, "seed": 1, "count": 25, "of": 100}
    assert hold_out(ds, None, 1) is ds and a.test_x is ds.test_x
    with pytest.raises(ConfigError, match="--val-fraction 0.001 of 100 training examples holds out 0"):
        hold_out(ds, 0.001, 1)


def test_a_run_records_its_validation_set_and_its_metrics_per_epoch(tmp_path):
    cfg = digits(epochs=2, seed=7)
    cfg.data.val_fraction = 0.2
    run = train(cfg, tmp_path / "r", quiet=True)
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["val_fraction"] == 0.2 and meta["run"]["validation"] == {"fraction": 0.2, "seed": 7,
                                                                                 "count": 51, "of": 256}
    records = rundir.read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["samples_seen"] == 2 * (256 - 51)
    # val_* are the test metrics of the validation set, recomputed here from the run's own split and last weights:
    # estimator B's KL is in closed form (equal to rounding), its E_q[log p(x|z)] one draw per image (within 5 s.e.)
    data = hold_out(load_dataset(cfg.data), 0.2, 7)
    model, last = aevb.load(run), records[-1]
    with torch.no_grad():
        draws = torch.stack([model.elbo(data.val_x, aevb.Estimator("B")).log_px_z for _ in range(50)])  # (50, 51)
        kl = model.elbo(data.val_x, aevb.Estimator("B")).kl.mean().item()
    assert last["val_kl"] == pytest.approx(kl, rel=1e-5)
    assert last["val_elbo"] == pytest.approx(last["val_log_px_z"] - last["val_kl"], rel=1e-5)
    se = (draws.var(0).mean() / draws.shape[1]).sqrt().item()  # of a mean of one draw per image
    assert abs(last["val_log_px_z"] - draws.mean().item()) <= 5 * se
    assert best_epoch(run) == max(records, key=lambda r: r["val_elbo"])["epoch"]


def best_epoch(run) -> int:
    return rundir.checkpoint_epoch(run, "best")


def test_semi_supervised_labels_are_drawn_from_what_remains_after_the_validation_set():
    cfg = digits()
    cfg.model.model, cfg.data.labelled, cfg.data.val_fraction = "m2", 50, 0.25
    seed_everything(cfg.train.seed)
    data = hold_out(load_dataset(cfg.data), cfg.data.val_fraction, cfg.train.seed)
    trainer = Trainer(cfg, data)
    labelled = {tuple(r) for r in trainer.algorithm.x_labelled.flatten(1).tolist()}
    held_out = {tuple(r) for r in data.val_x.flatten(1).tolist()}
    training = {tuple(r) for r in data.train_x.flatten(1).tolist()}
    assert len(trainer.algorithm.x_labelled) == 50 and labelled <= training and not labelled & held_out
    assert "val_accuracy" in trainer.validate()


# ---------------------------------------------------------------------------------------------
# --early-stopping and best.safetensors

CURVE = [-10.0, -8.0, -9.0, -7.0, -7.5, -7.2, -6.0, -5.0, -4.0, -3.0]  # best at epoch 4, then two worse ones


@pytest.fixture
def scripted(monkeypatch):
    """Trainer.validate returns CURVE[epoch - 1] as val_elbo and records the weights it saw at each epoch."""
    weights: dict[int, dict] = {}
    epoch_of = Trainer.epoch

    def epoch(self, n, quiet=True):
        self.current = n
        return epoch_of(self, n, quiet)

    def validate(self):
        weights[self.current] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {"val_elbo": CURVE[self.current - 1]}

    monkeypatch.setattr(Trainer, "epoch", epoch)
    monkeypatch.setattr(Trainer, "validate", validate)
    return weights


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_its_weights(tmp_path, scripted, capsys):
    cfg = digits(epochs=10, early_stopping=2)
    cfg.data.val_fraction = 0.1
    run = train(cfg, tmp_path / "r", quiet=True)
    records = rundir.read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]  # the best is epoch 4, patience 2: stop after 6
    assert rundir.checkpoint_epoch(run) == 6 and best_epoch(run) == 4
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "early stopping: the validation ELBO has not improved for 2 epochs (--early-stopping 2), stopped after "
        f"epoch 6; the best was epoch 4 (validation ELBO -7.000), whose weights are in {run / 'best.safetensors'}")
    best = load_file(str(run / "best.safetensors"))
    for name, w in scripted[4].items():
        assert torch.equal(best[name], w), name
    loaded = aevb.load(run, checkpoint="best").state_dict()
    assert all(torch.equal(loaded[k], w) for k, w in scripted[4].items())
    assert not all(torch.equal(aevb.load(run).state_dict()[k], w) for k, w in scripted[4].items())  # last is epoch 6

    assert main(["evaluate", str(run), "--checkpoint", "best", "--k", "5", "--test-size", "20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == "best" and result["epoch"] == 4
    model = aevb.load(run, checkpoint="best")
    x = load_dataset(cfg.data).test_x[:20]
    assert result["elbo_B"]["elbo"] == pytest.approx(model.elbo(x, aevb.Estimator("B", 1)).elbo.mean().item(), abs=3.0)
    assert main(["evaluate", str(run), "--k", "5", "--test-size", "20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == "last" and result["epoch"] == 6


def test_a_resumed_run_knows_the_best_epoch_and_the_patience_spent(tmp_path, scripted):
    cfg = digits(epochs=5, early_stopping=2)
    cfg.data.val_fraction = 0.1
    run = train(cfg, tmp_path / "r", quiet=True)  # epochs 1..5: the best is 4, one epoch of patience spent
    assert best_epoch(run) == 4
    cfg.train.epochs = 10
    train(cfg, run, resume=True, quiet=True)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4, 5, 6] and best_epoch(run) == 4
    train(cfg, run, resume=True, quiet=True)  # already stopped: a resume trains nothing
    assert len(rundir.read_metrics(run)) == 6 and rundir.checkpoint_epoch(run) == 6


def test_best_needs_a_validation_set_and_early_stopping_too(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "1", "--train-size", "200", "--out", str(tmp_path / "plain")]) == 0
    with pytest.raises(RunError, match="has no best.safetensors: only a run with a validation set"):
        aevb.load(tmp_path / "plain", checkpoint="best")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "plain"), "--checkpoint", "best", "--k", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train with --val-fraction" in err
    assert main(["train", *SMALL, "--early-stopping", "3", "--out", str(tmp_path / "es")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "add --val-fraction" in err and not (tmp_path / "es").exists()


# ---------------------------------------------------------------------------------------------
# --grad-clip

def test_clipping_bounds_every_steps_gradient_norm_and_records_the_mean_norm_before(monkeypatch):
    norm = 1.0
    seen, before = [], []
    clip = base.clip_grad_norm_
    monkeypatch.setattr("aevb.algorithms.base.clip_grad_norm_",
                        lambda params, c: before.append(clip(params, c)) or before[-1])
    seed_everything(1)
    trainer = Trainer(digits(grad_clip=norm), load_dataset(digits().data))
    total = lambda: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()
                                                          if p.grad is not None])).item()  # noqa: E731
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(total()))
    record = trainer.epoch(1)
    assert len(seen) == len(before) == trainer.steps
    assert max(seen) <= norm + 1e-6
    assert min(b.item() for b in before) > norm  # clipping was at work: the bound above is not vacuous
    assert record["train_grad_norm"] == pytest.approx(sum(b.item() for b in before) / len(before), rel=1e-6)


def test_a_clip_above_every_norm_changes_nothing():
    weights = []
    for clip in (None, 1e9):
        seed_everything(1)
        trainer = Trainer(digits(grad_clip=clip), load_dataset(digits().data))
        record = trainer.epoch(1)
        weights.append(trainer.model.state_dict())
        assert ("train_grad_norm" in record) == (clip is not None)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ---------------------------------------------------------------------------------------------
# --free-bits

class Tiny(nn.Module):
    """q(z|x_i) = N(μ_i, diag exp(v_i)) with the encoder's head h_i = [μ_i, v_i] a parameter, p(z) = N(0, I),
    p(x|z) = N(zW, I): the KL of each dimension in closed form, KL_id = (μ² + e^v - 1 - v)/2."""

    def __init__(self, mu, log_var, w):
        super().__init__()
        self.h = nn.Parameter(torch.cat([mu, log_var], -1))
        self.w = w

    def encode(self, x):
        mu, log_var = self.h.chunk(2, -1)
        return Independent(Normal(mu, (0.5 * log_var).exp()), 1)

    def decode(self, z):
        return Independent(Normal(z @ self.w, 1.0), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(self.w.shape[0]), torch.ones(self.w.shape[0])), 1)


def head_gradient(model, estimator, x, seed=0, **options):
    model.h.grad = None
    torch.manual_seed(seed)
    terms = estimator(model, x, 1, 2.0, **options)  # β = 2: the weight applies to the free-bits KL too
    terms.objective.mean().backward()
    return terms, model.h.grad.clone()


def tiny():
    g = torch.Generator().manual_seed(0)
    n, d = 6, 4
    mu = torch.randn(n, d, generator=g) * torch.tensor([0.05, 2.0, 0.1, 1.5])  # dims 0 and 2 near the prior
    log_var = torch.randn(n, d, generator=g) * torch.tensor([0.05, 0.5, 0.1, 0.5])
    return Tiny(mu, log_var, torch.randn(d, 3, generator=g)), torch.randn(n, 3, generator=g), mu, log_var


@pytest.mark.parametrize("estimator", [sgvb_a, sgvb_b])
def test_free_bits_leaves_the_reported_bound_as_it_is(estimator):
    model, x, _, _ = tiny()
    plain, _ = head_gradient(model, estimator, x)
    free, _ = head_gradient(model, estimator, x, free_bits=0.5)
    for name in ("elbo", "log_px_z", "kl"):
        assert torch.equal(getattr(plain, name), getattr(free, name)), name
    assert not torch.equal(plain.objective, free.objective)


def test_free_bits_removes_the_kl_gradient_exactly_of_the_dimensions_below_lambda():
    model, x, mu, log_var = tiny()
    lam, beta, n = 0.5, 2.0, len(x)
    kl = 0.5 * (mu ** 2 + log_var.exp() - 1 - log_var)  # (N, D), closed form
    below = kl.mean(0) < lam
    assert below.tolist() == [True, False, True, False]
    plain, g_plain = head_gradient(model, sgvb_b, x)
    free, g_free = head_gradient(model, sgvb_b, x, free_bits=lam)
    # the free-bits objective's minibatch mean is the reconstruction minus β Σ_d max(λ, mean_i KL_id)
    bound = plain.log_px_z.mean() - beta * torch.clamp(kl.mean(0), min=lam).sum()
    assert free.objective.mean().item() == pytest.approx(bound.item(), rel=1e-6)
    # the plain objective's KL gradient is -β ∂KL_id/∂h / N: μ_id and (e^v_id - 1)/2; free bits drops it below λ
    expected = torch.cat([beta * mu / n, beta * 0.5 * (log_var.exp() - 1) / n], -1) * below.repeat(2)
    torch.testing.assert_close(g_free - g_plain, expected, rtol=1e-5, atol=1e-7)  # zero above λ


def test_free_bits_estimator_a_leaves_the_dimensions_above_lambda_alone():
    model, x, mu, log_var = tiny()
    _, g_plain = head_gradient(model, sgvb_a, x)
    _, g_free = head_gradient(model, sgvb_a, x, free_bits=0.5)
    above = torch.tensor([False, True, False, True]).repeat(2)
    torch.testing.assert_close(g_free[:, above], g_plain[:, above], rtol=1e-6, atol=1e-7)
    assert (g_free[:, ~above] - g_plain[:, ~above]).abs().max() > 1e-3


def test_free_bits_does_not_change_the_test_metrics_at_initialisation():
    tests = []
    for free_bits in (None, 0.5):
        seed_everything(1)
        tests.append(Trainer(digits(free_bits=free_bits), load_dataset(digits().data)).test())
    assert tests[0] == tests[1]


@pytest.mark.parametrize("flags, message", [
    (["--posterior", "full_normal"], "--free-bits needs q(z|x) and p(z) that factorise"),
    (["--prior", "mixture_of_gaussians"], "--free-bits needs q(z|x) and p(z) that factorise"),
    (["--estimator", "iwae", "--samples", "3"], "--free-bits applies to estimators A, B and auto, not iwae"),
    (["--model", "m2"], "--free-bits applies to --algorithm sgvb, not semi-supervised training"),
])
def test_free_bits_is_refused_where_the_kl_does_not_split_by_dimension(tmp_path, capsys, flags, message):
    assert main(["train", *SMALL, "--free-bits", "0.5", *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# resume with every switch on

def test_resume_is_bit_identical_with_the_switches_on(tmp_path):
    switches = [*SMALL, "--train-size", "400", "--val-fraction", "0.2", "--early-stopping", "3", "--grad-clip", "2",
                "--free-bits", "0.25"]
    assert main(["train", *switches, "--epochs", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *switches, "--epochs", "2", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", "--epochs", "4", "--out", str(tmp_path / "resumed"), *SMALL[-2:]]) == 0
    for checkpoint in ("last", "best"):
        a, b = (aevb.load(tmp_path / r, checkpoint=checkpoint).state_dict() for r in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), checkpoint
    lines = lambda run: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_sec")}  # noqa: E731
                         for r in rundir.read_metrics(run)]
    assert lines(tmp_path / "straight") == lines(tmp_path / "resumed")
    assert {"val_elbo", "train_grad_norm"} <= set(rundir.read_metrics(tmp_path / "straight")[-1])
