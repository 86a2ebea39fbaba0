"""Semi-supervised models: M2's bounds against hand computation, the enumerated unlabelled bound
against the explicit sum over classes, M2's stratified importance sampling against an exact
log p(x), balanced label selection, short runs that learn, and the experiment through the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal

import aevb
from aevb.cli import main
from aevb.config import Config, ModelConfig
from aevb.data import balanced_labels
from aevb.errors import ConfigError
from aevb.evaluate import importance_sampled
from aevb.experiments.ssl import ROWS, Experiment, Settings, active_features, feature_accuracy, mean_ci
from aevb.models import build_model
from aevb.models.m2 import _GivenClass
from aevb.algorithms.semi_supervised import semi_supervised_loss
from aevb.objectives import Estimator, log_weights

D, K, d = 5, 3, 2


def tiny_m2(likelihood="bernoulli", **kw) -> torch.nn.Module:
    """M2 with no hidden layers: q(z|x,y), p(x|y,z) and q(y|x) are single linear maps, in float64."""
    cfg = ModelConfig(model="m2", hidden=[], latent_dim=d, likelihood=likelihood, **kw)
    torch.manual_seed(3)
    model = build_model(cfg, (D,), K).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    return model


def hand_bound(model, x, y, eps):
    """L(x,y) = log p(x|y,z) + log p(y) - KL(N(μ, σ²) ‖ N(0, I)), z = μ + σ ε, from the weights."""
    enc, dec = model.encoder, model.decoder.body[0]
    c = F.one_hot(y, K).double()
    h = x @ enc.first.weight.T + enc.first.bias + c @ enc.cond.weight.T
    mu, log_var = h[:, :d], h[:, d:]
    z = mu + (0.5 * log_var).exp() * eps
    logits = torch.cat([z, c], -1) @ dec.weight.T + dec.bias
    log_px = (x * logits - F.softplus(logits)).sum(-1)
    kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1)
    return log_px - math.log(K) - kl


def test_m2_labelled_bound_matches_a_hand_computed_value():
    model = tiny_m2()
    x = torch.rand(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1, 2])
    torch.manual_seed(7)
    got = model.labelled_elbo(x, y, Estimator("B")).elbo
    torch.manual_seed(7)
    eps = torch.randn(1, 4, d, dtype=torch.float64)[0]
    torch.testing.assert_close(got, hand_bound(model, x, y, eps), rtol=1e-10, atol=1e-10)


def test_enumerated_unlabelled_bound_equals_the_explicit_sum_over_classes():
    model = tiny_m2()
    n = 6
    x = torch.rand(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(11)
    terms = model.elbo(x, Estimator("B"))
    torch.manual_seed(11)
    eps = torch.randn(1, K, n, d, dtype=torch.float64)[0]  # the enumerated pass draws (samples, K, N, d) at once
    q = F.softmax(model.classifier(x), -1)
    explicit = sum(q[:, k] * hand_bound(model, x, torch.full((n,), k), eps[k]) for k in range(K))
    explicit = explicit - (q * q.log()).sum(-1)  # + H(q(y|x))
    torch.testing.assert_close(terms.elbo, explicit, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl - terms.kl_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms.kl_y, (q * (q.log() + math.log(K))).sum(-1), rtol=1e-10, atol=1e-12)
    # and the same against the model's own labelled bound, class by class, in expectation order
    torch.manual_seed(11)
    again = model.elbo(x, Estimator("B")).elbo
    torch.testing.assert_close(again, terms.elbo)


def test_unlabelled_objective_weights_both_kls_by_beta():
    model = tiny_m2()
    x = torch.rand(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    t = model.elbo(x, Estimator("B", beta=0.3))
    torch.testing.assert_close(t.objective, t.log_px_z - 0.3 * (t.kl + t.kl_y), rtol=1e-10, atol=1e-10)


def test_beta_y_weighs_the_kl_of_the_class_apart():
    """objective = Σ_y q(y|x)(E log p(x|y,z) - β KL_z) - β_y KL(q(y|x) ‖ Uniform), from its parts."""
    model = tiny_m2()
    x = torch.rand(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    q = model.classify(x).probs
    kl_y = (q * (q.log() + math.log(K))).sum(-1)
    torch.manual_seed(0)
    t = model.elbo(x, Estimator("B", beta=2.0, beta_y=0.5))
    torch.testing.assert_close(t.kl_y, kl_y, rtol=1e-10, atol=1e-12)  # t.kl is Σ_y q(y|x) KL_z, the KL of z alone
    torch.testing.assert_close(t.objective, t.log_px_z - 2.0 * t.kl - 0.5 * kl_y, rtol=1e-10, atol=1e-10)
    torch.manual_seed(0)
    same = model.elbo(x, Estimator("B", beta=2.0, beta_y=2.0)).objective
    torch.manual_seed(0)
    torch.testing.assert_close(same, model.elbo(x, Estimator("B", beta=2.0)).objective)


def linear_gaussian_m2():
    """M2 with a linear Gaussian decoder, so p(x|y) = N(W_y e_y + b, W_z W_zᵀ + σ²I) exactly; q(z|x,y)
    is the exact posterior's mean P⁻¹W_zᵀ(x - W_y e_y - b)/σ² (linear in x and y) with its diagonal
    variances widened 1.5², an imperfect proposal as an encoder would learn. Returns the model and
    the exact log p(x|y) of every class, shape (N, K)."""
    model = tiny_m2("gaussian", likelihood_scale="fixed", likelihood_scale_init=0.6)
    dec = model.decoder.body[0]
    W_z, W_y, b = dec.weight[:, :d].detach(), dec.weight[:, d:].detach(), dec.bias.detach()
    cov = W_z @ W_z.T + 0.36 * torch.eye(D, dtype=torch.float64)
    post_cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + W_z.T @ W_z / 0.36)
    A = post_cov @ W_z.T / 0.36
    enc = model.encoder
    with torch.no_grad():
        enc.first.weight.zero_(), enc.cond.weight.zero_()
        enc.first.weight[:d], enc.first.bias[:d], enc.cond.weight[:d] = A, -A @ b, -A @ W_y
        enc.first.bias[d:] = (2.25 * post_cov.diagonal()).log()
    return model, lambda x: torch.stack([MultivariateNormal(W_y[:, k] + b, cov).log_prob(x) for k in range(K)], -1)


def test_m2_importance_sampling_converges_to_the_exact_log_likelihood(torch_seed, assert_within_se):
    """log p(x) = log Σ_y p(y) p(x|y) in closed form: the stratified IS estimate must converge to it."""
    model, log_px_y = linear_gaussian_m2()
    x = torch.randn(8, D, dtype=torch.float64)
    exact = torch.logsumexp(log_px_y(x), -1) - math.log(K)
    log_p, se = importance_sampled(model, x, 4000)
    assert_within_se(log_p + se**2 / 2, exact, se, "M2 IS log-likelihood")
    u = model.elbo(x, Estimator("B", samples=2000)).elbo.detach()  # U(x) ≤ log p(x), up to its MC error (≈ 0.02 here)
    assert (u <= exact + 0.1).all() and (exact - u > 0.1).any()


def test_m2_class_joint_converges_to_the_exact_log_p_x_y(torch_seed, assert_within_se):
    """log p(x, y) per class against N(x; W_y e_y + b, W_z W_zᵀ + σ²I)/K, within 5 delta-method
    standard errors sqrt(Var(w)/(S E[w]²)) of the S-sample estimate."""
    model, log_px_y = linear_gaussian_m2()
    x = torch.randn(8, D, dtype=torch.float64)
    S = 4000
    torch.manual_seed(11)
    estimate = model.class_log_joint(x, S).detach()
    torch.manual_seed(11)
    lw = log_weights(_GivenClass(model, model.all_classes()), x, S).detach()  # the same draws: (S, K, N)
    log_mean = torch.logsumexp(lw, 0) - math.log(S)
    se = (torch.expm1(torch.logsumexp(2 * lw, 0) - math.log(S) - 2 * log_mean).clamp(min=0) / S).sqrt().T
    assert estimate.shape == (8, K)
    assert_within_se(estimate + se**2 / 2, log_px_y(x) - math.log(K), se, "M2 log p(x, y)")


def float64_batches(seed: int, *sizes: int) -> list[torch.Tensor]:
    """Uniform inputs in [0, 1]^D, one batch per size, drawn by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, D, generator=g, dtype=torch.float64) for n in sizes]


def test_semi_supervised_loss_is_its_three_terms():
    model = tiny_m2()
    x_u, x_l = float64_batches(5, 7, 3)
    y_l = torch.tensor([0, 1, 2])
    torch.manual_seed(1)
    loss, terms, nll = semi_supervised_loss(model, x_u, x_l, y_l, Estimator("B"), alpha=2.5, labelled_share=0.3)
    torch.manual_seed(1)
    expected = (-0.3 * model.labelled_elbo(x_l, y_l, Estimator("B")).objective.mean() + 2.5 * -model.classify(x_l).log_prob(y_l).mean()
                - 0.7 * model.elbo(x_u, Estimator("B")).objective.mean())
    torch.testing.assert_close(loss, expected)
    assert terms.elbo.shape == (7,) and nll > 0


def test_each_step_of_an_interleaved_schedule_drops_the_other_batch():
    """Pyro's schedule: an unlabelled step is -mean U alone, a labelled one α·CE - mean L alone."""
    model = tiny_m2()
    x_u, x_l = float64_batches(6, 5, 3)
    y_l = torch.tensor([2, 0, 1])
    torch.manual_seed(2)
    unlabelled, terms, nll = semi_supervised_loss(model, x_u, None, None, Estimator("B"), alpha=3.0, labelled_share=0.0)
    torch.manual_seed(2)
    torch.testing.assert_close(unlabelled, -model.elbo(x_u, Estimator("B")).objective.mean())
    assert nll is None and terms.elbo.shape == (5,)
    torch.manual_seed(2)
    labelled, terms, nll = semi_supervised_loss(model, None, x_l, y_l, Estimator("B"), alpha=3.0, labelled_share=1.0)
    torch.manual_seed(2)
    expected = -model.labelled_elbo(x_l, y_l, Estimator("B")).objective.mean() - 3.0 * model.classify(x_l).log_prob(y_l).mean()
    torch.testing.assert_close(labelled, expected)
    assert terms.elbo.shape == (3,)


@pytest.mark.parametrize("every", [None, 1, 4, 1000])
def test_labelled_every_adds_one_labelled_step_per_k_unlabelled(every):
    """An epoch takes ceil(S/K) labelled steps besides its S unlabelled ones; unset, S steps that
    each hold both batches."""
    from aevb.data import load_dataset
    from aevb.train import Trainer

    cfg = digits_cfg("m2", epochs=1, labelled_every=every)
    trainer = Trainer(cfg, load_dataset(cfg.data))
    steps = []
    optimizer_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(1), optimizer_step(*a, **k))[1]
    record = trainer.epoch(1)
    s = trainer.steps
    assert len(steps) == s + (0 if every is None else math.ceil(s / every))
    assert math.isfinite(record["train_class_nll"]) and record["train_class_nll"] > 0


def test_beta_y_is_refused_for_a_model_without_a_generative_class():
    with pytest.raises(ConfigError, match="--beta-y weighs the KL of M2's class y; pcvae has none"):
        aevb.train(digits_cfg("pcvae", beta_y=1.0), None, quiet=True)


def test_labelled_every_is_refused_for_a_model_without_labels():
    with pytest.raises(ConfigError, match="--labelled-every applies to the semi-supervised models"):
        cfg = digits_cfg("vae", labelled_every=10)
        cfg.data.labelled = None
        aevb.train(cfg, None, quiet=True)


@pytest.mark.parametrize("weight", [None, 0.5])
def test_labelled_weight_sets_the_share_of_the_labelled_bound(weight):
    """Unset, the labelled bound weighs N_l/N (Kingma et al.'s sum over the data); set, it weighs as asked."""
    from aevb.data import load_dataset
    from aevb.train import Trainer

    cfg = digits_cfg("m2", labelled_weight=weight)
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    assert trainer.algorithm.labelled_share == (50 / len(data.train_x) if weight is None else weight)


@pytest.mark.parametrize("n", [10, 30, 100])
def test_label_selection_is_balanced_and_reproducible(n):
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 10, 2000))
    idx = balanced_labels(y, n, seed=4)
    assert len(idx) == n == len(set(idx.tolist()))
    assert torch.bincount(y[idx], minlength=10).tolist() == [n // 10] * 10
    assert torch.equal(idx, balanced_labels(y, n, seed=4))
    assert not torch.equal(idx, balanced_labels(y, n, seed=5))
    assert torch.equal(balanced_labels(y, None, seed=4), torch.arange(2000))


def test_label_selection_leaves_unlabelled_examples_out():
    """UNLABELLED (-1, scikit-learn's mark, as aevb.sklearn.VAEClassifier passes it) is never a label."""
    y = torch.from_numpy(np.random.default_rng(0).integers(-1, 3, 300))
    assert torch.equal(balanced_labels(y, None, seed=0), torch.nonzero(y >= 0).flatten())
    idx = balanced_labels(y, 30, seed=0)
    assert torch.bincount(y[idx], minlength=3).tolist() == [10, 10, 10]


def test_label_selection_refuses_what_cannot_be_balanced():
    y = torch.tensor([0] * 50 + [1] * 3)
    with pytest.raises(ConfigError, match="use a multiple of 2"):
        balanced_labels(y, 5, 0)
    with pytest.raises(ConfigError, match="only 3 of class 1"):
        balanced_labels(y, 10, 0)


def digits_cfg(model, **train):
    cfg = Config()
    cfg.data.dataset, cfg.data.labelled = "digits", 50
    cfg.model.model, cfg.model.hidden, cfg.model.latent_dim = model, [128], 8
    cfg.train.epochs, cfg.train.batch_size = train.pop("epochs", 4), 64
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.parametrize("model", ["m2", "pcvae"])
def test_a_short_semi_supervised_run_learns_above_chance(tmp_path, model):
    """50 labels of the 8×8 digits (5 per class), a few epochs: above the 10% of chance by more than 5
    binomial standard errors sqrt(0.1·0.9/n) of the n test images (0.18 at n = 360). (The PC-VAE's
    consistency term, γ = 10 by default, slows its start here: ~0.3 after 6 epochs, 0.73 after 30.)"""
    from aevb.data import load_dataset

    run = aevb.train(digits_cfg(model, epochs=6), tmp_path / model, quiet=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    n = len(load_dataset(digits_cfg(model).data).test_y)
    assert records[-1]["test_accuracy"] > 0.1 + 5 * math.sqrt(0.1 * 0.9 / n), records[-1]
    assert "train_class_nll" in records[-1]
    m = aevb.load(run)
    x = torch.zeros(1, 64)
    assert m.predict(x).shape == (1,)


def test_m2_runs_evaluate_and_report(tmp_path):
    run = aevb.train(digits_cfg("m2", epochs=1), tmp_path / "m2", quiet=True)
    assert main(["evaluate", str(run), "--k", "20", "--test-size", "50"]) == 0
    r = json.loads((run / "eval.json").read_text())
    assert r["log_likelihood"]["value"] >= r["elbo_B"]["elbo"] - 0.5
    c = r["classes"]  # the labels of the 50 test images: both accuracies, and how often they agree
    assert set(c) == {"classifier_accuracy", "generative_accuracy", "agreement", "samples"}
    assert all(0 <= c[k] <= 1 for k in ("classifier_accuracy", "generative_accuracy", "agreement"))
    assert main(["report", str(run), "--test-size", "50"]) == 0
    page = (run / "report.html").read_text()
    assert "analogies.png" in page or "data:image/png" in page
    assert (run / "analogies.png").stat().st_size > 0


def test_resume_of_a_semi_supervised_run_is_bit_identical(tmp_path):
    straight = aevb.train(digits_cfg("m2", epochs=2), tmp_path / "a", quiet=True)
    aevb.train(digits_cfg("m2", epochs=1), tmp_path / "b", quiet=True)
    resumed = aevb.train(digits_cfg("m2", epochs=2), tmp_path / "b", resume=True, quiet=True)
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([0.9, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert mean_ci([0.5]) == (0.5, None)


def test_experiment_through_the_cli(tmp_path, capsys, monkeypatch):
    out = tmp_path / "exp"
    argv = ["experiment", "ssl", "--dataset", "digits", "--labels", "50,all", "--seeds", "2", "--epochs", "1",
            "--train-size", "300", "--test-size", "100", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    table = (out / "table.md").read_text()
    for name in ROWS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.count("±") == 2, row  # both columns, two seeds each
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0].startswith("row,labels,n_seeds,accuracy_mean") and len(rows) == 1 + 2 * len(ROWS)
    assert (out / "figures" / "m2-analogies.png").stat().st_size > 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 2 * 2 * len(ROWS)
    # the budget: every model's epochs, and the training time as the runs' metrics.jsonl record it
    assert "Budget: epochs per model: vae 1, m1 1, pcvae 1, m2 1, m1+m2 1;" in table
    budget = json.loads((out / "table.json").read_text())["budget"]
    epoch_seconds = [json.loads(line)["seconds"] for metrics in (out / "runs").glob("*/seed*/*/metrics.jsonl")
                     for line in metrics.read_text().splitlines()]
    assert len(epoch_seconds) == 2 * (2 * 2 + 3 * 2)  # per seed: vae, m1 per split; pcvae, m2, m1+m2 per label setting
    assert budget["model_training_seconds"] == pytest.approx(sum(epoch_seconds), abs=0.1)
    assert (budget["commands"], budget["precision"], budget["jobs"]) == (1, "32", 1)
    # the same command continues (nothing to do); other settings are refused with one line
    before = (out / "results.jsonl").read_text()
    assert main(argv) == 0 and (out / "results.jsonl").read_text() == before
    capsys.readouterr()
    assert main([*argv[:-3], "--train-size", "500", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds an experiment with other settings (train_size)" in err
    assert main([*argv[:-1], "--classifier", "svm", "--quiet"]) == 2
    assert "other settings (classifier)" in capsys.readouterr().err
    # a change to one model's settings recomputes only the rows that depend on it, in runs of their own
    from aevb.experiments import ssl
    monkeypatch.setitem(ssl.MODEL_SETTINGS, "m2", dict(ssl.MODEL_SETTINGS["m2"], alpha=5.0))
    assert main(argv) == 0
    new = (out / "results.jsonl").read_text()[len(before):].splitlines()
    assert sorted((json.loads(r)["row"], str(json.loads(r)["labels"])) for r in new) == [("m2", "50")] * 2 + [("m2", "all")] * 2
    assert len(list((out / "runs" / "labels-50" / "seed1").glob("m2-*"))) == 2


def test_the_svm_option_is_a_kernel_classifier():
    """Two concentric rings: no line separates them (logistic regression near chance), the RBF SVM does."""
    g = np.random.default_rng(0)
    def rings(n):
        r = np.repeat([1.0, 3.0], n // 2) + g.normal(0, 0.2, n)
        a = g.uniform(0, 2 * np.pi, n)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1), np.repeat([0, 1], n // 2)
    (x, y), (x_test, y_test) = rings(200), rings(1000)
    assert feature_accuracy(x, y, x_test, y_test, seed=0, classifier="logistic") < 0.7
    assert feature_accuracy(x, y, x_test, y_test, seed=0, classifier="svm") > 0.97
    exp = Experiment(Settings(classifier="svm"))
    assert exp.row_name("d") == "(d) M1: SVM on M1 latent samples" and exp.row_name("m2") == ROWS["m2"]


def test_m1_features_are_the_active_dimensions_standardised_by_the_training_set():
    """Columns of variance 4, 1e-3 (inactive: ≤ 0.01) and 0.25 keep the first and the last, each
    shifted and scaled by the training mean and standard deviation (the test set by the same);
    with no active column, all are kept."""
    g = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([2.0, 0.03, 0.5]), torch.tensor([1.0, -2.0, 3.0])
    train, test = torch.randn(5000, 3, generator=g) * scale + shift, torch.randn(7, 3, generator=g) * scale + shift
    f_train, f_test, active = active_features(train, test)
    assert active == 2 and f_train.shape == (5000, 2) and f_test.shape == (7, 2)
    assert torch.allclose(f_train.mean(0), torch.zeros(2), atol=1e-6) and torch.allclose(f_train.std(0), torch.ones(2), atol=1e-6)
    kept = train[:, [0, 2]].double()
    assert torch.allclose(f_test, ((test[:, [0, 2]] - kept.mean(0)) / kept.std(0)).float(), atol=1e-6)
    f_train, _, active = active_features(train[:, [1]], test[:, [1]])  # collapsed: every dimension is kept
    assert active == 0 and f_train.shape == (5000, 1) and torch.allclose(f_train.std(0), torch.ones(1), atol=1e-6)


def tiny_pcvae() -> torch.nn.Module:
    """A PC-VAE with no hidden layers (q(z|x), p(x|z) and p(y|z) single linear maps), in float64."""
    torch.manual_seed(3)
    model = build_model(ModelConfig(model="pcvae", hidden=[], latent_dim=d), (D,), K).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    return model


def hand_consistency(model, x, y=None):
    """C(x) from the weights: z = μ + σ ε₁, x̃ = sigmoid(decoder(z)), z̃ = μ̃ + σ̃ ε₂ from x̃, and the
    cross-entropy of softmax(W z̃ + b) against y, or against softmax(W μ + b) without y."""
    enc, dec, head = model.encoder.first, model.decoder.body[0], model.head
    h = x @ enc.weight.T + enc.bias
    mu, log_var = h[:, :d], h[:, d:]
    x_rec = torch.sigmoid((mu + (0.5 * log_var).exp() * torch.randn(len(x), d, dtype=torch.float64)) @ dec.weight.T + dec.bias)
    h_rec = x_rec @ enc.weight.T + enc.bias
    z_rec = h_rec[:, :d] + (0.5 * h_rec[:, d:]).exp() * torch.randn(len(x), d, dtype=torch.float64)
    log_p = F.log_softmax(z_rec @ head.weight.T + head.bias, -1)
    target = F.one_hot(y, K).double() if y is not None else F.softmax(mu @ head.weight.T + head.bias, -1)
    return -(target * log_p).sum(-1)


@pytest.mark.parametrize("labelled", [True, False])
def test_pcvae_consistency_matches_a_hand_computed_value(labelled):
    model = tiny_pcvae()
    (x,) = float64_batches(8, 5)
    y = torch.tensor([0, 2, 1, 1, 0]) if labelled else None
    torch.manual_seed(4)
    got = model.consistency_nll(x, y)
    torch.manual_seed(4)
    torch.testing.assert_close(got, hand_consistency(model, x, y), rtol=1e-10, atol=1e-10)


def test_pcvae_consistency_trains_the_decoder_and_holds_the_unlabelled_target_fixed():
    """The reconstruction is differentiated through (the decoder learns to keep the class), the
    prediction that an unlabelled image's reconstruction must match is not: its gradient is that of
    the cross-entropy against the same target given as a constant."""
    model = tiny_pcvae()
    (x,) = float64_batches(9, 6)
    torch.manual_seed(5)
    model.consistency_nll(x).sum().backward()
    assert model.decoder.body[0].weight.grad.abs().sum() > 0
    got = model.head.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        target = model.classify(x).probs
    torch.manual_seed(5)
    q = model.encode(x)
    log_p = F.log_softmax(model.head(model.encode(model.decode(q.rsample()).mean).rsample()), -1)
    (-(target * log_p).sum()).backward()
    torch.testing.assert_close(got, model.head.weight.grad)


def test_semi_supervised_loss_adds_the_consistency_term_weighted_like_the_bounds():
    """-N_l/N mean L - N_u/N mean U + α CE + γ (N_l/N mean_l C(x, y) + N_u/N mean_u C(x))."""
    model = tiny_pcvae()
    x_u, x_l = float64_batches(10, 7, 3)
    y_l = torch.tensor([0, 1, 2])
    torch.manual_seed(6)
    loss, _, _ = semi_supervised_loss(model, x_u, x_l, y_l, Estimator("B"), alpha=50.0, labelled_share=0.2,
                                      consistency=3.0)
    torch.manual_seed(6)
    expected = (-0.2 * model.labelled_elbo(x_l, y_l, Estimator("B")).objective.mean()
                - 50.0 * model.class_log_prob(x_l, y_l).mean() + 3.0 * 0.2 * model.consistency_nll(x_l, y_l).mean()
                - 0.8 * model.elbo(x_u, Estimator("B")).objective.mean() + 3.0 * 0.8 * model.consistency_nll(x_u).mean())
    torch.testing.assert_close(loss, expected)


def test_the_pcvae_trains_with_its_large_weights_by_default():
    from aevb.data import load_dataset
    from aevb.models import PCVAE
    from aevb.train import Trainer

    cfg = digits_cfg("pcvae", epochs=1)
    algorithm = Trainer(cfg, load_dataset(cfg.data)).algorithm
    assert (algorithm.alpha, algorithm.consistency) == (PCVAE.default_alpha, PCVAE.default_consistency)
    cfg.train.alpha, cfg.train.consistency = 2.0, 0.0
    algorithm = Trainer(cfg, load_dataset(cfg.data)).algorithm
    assert (algorithm.alpha, algorithm.consistency) == (2.0, 0.0)


def test_consistency_is_refused_for_a_model_without_a_classifier_of_reconstructions():
    with pytest.raises(ConfigError, match="--consistency holds a classifier's predictions .*; m2 has no such"):
        aevb.train(digits_cfg("m2", consistency=1.0), None, quiet=True)


@pytest.mark.slow  # ~30 s: two experiments, one of them in two spawned processes
def test_cifar10_runs_every_row_and_two_jobs_give_the_cells_of_one(tmp_path, monkeypatch, one_thread):
    """A CIFAR-10 tarball in the real format (python pickles, 20 images a batch, 2 per class): every
    row of the table, M1+M2 by an MLP on M1's features while the others use conv nets; and --jobs 2
    (two spawned processes of one thread each) computes the same cells, bit for bit, as --jobs 1
    (this process, one thread): every model and cell is seeded by its own seed."""
    from test_badinput import cifar_tar
    from aevb.experiments import ssl

    rng = np.random.default_rng(0)
    batches = {name: {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
               for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    cifar_tar(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", batches=batches)
    monkeypatch.setattr(ssl, "available_cores", lambda: 2)  # --jobs 2: one thread each, as here
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert main(["experiment", "ssl", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--labels", "10",
                     "--seeds", "1", "--epochs", "1", "--out", str(out), "--jobs", str(jobs), "--quiet"]) == 0
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        results[jobs] = {r["row"]: r["accuracy"] for r in records}
        assert sorted(results[jobs]) == sorted(ROWS) and len(records) == len(ROWS)
        budget = json.loads((out / "table.json").read_text())["budget"]
        assert (budget["jobs"], budget["threads_per_job"]) == (jobs, 1)
    assert results[1] == results[2]
    nets = {run.name.split("-")[0]: json.loads((run / "config.json").read_text())["model"]["net"]
            for run in (tmp_path / "jobs1" / "runs").glob("*/seed1/*")}
    assert nets == {"vae": "conv", "m1": "conv", "pcvae": "conv", "m2": "conv", "m1+m2": "mlp"}


def test_the_table_puts_the_published_accuracies_beside_ours(tmp_path):
    """Kingma et al.'s Table 1 and Pyro's M2 beside each label count they report, none for the
    80/20 split or a dataset they did not report."""
    rng = np.random.default_rng(0)
    labels = [100, 600, 1000, 3000, "all"]
    known = {(row, str(l), seed): {"accuracy": float(rng.uniform(0.8, 0.99)), "seconds": 1.0}
             for row in ROWS for l in labels for seed in (1, 2, 3)}
    md, _ = Experiment(Settings(dataset="mnist", labels=labels, seeds=3, out=tmp_path)).write_tables(known)
    lines = md.splitlines()
    assert lines[0] == ("| model | 100 labels | published | 600 labels | published | 1000 labels | published | "
                        "3000 labels | published | 80/20 split |")
    m2 = next(line for line in lines if line.startswith("| M2"))
    assert "| 88.03 [K14]; 93.19 [Pyro] |" in m2 and "| 95.06 [K14]; 94.37 [Pyro] |" in m2
    assert "| 96.40 [K14]; 94.87 [Pyro] |" in m2 and "| 96.08 [K14]; 95.82 [Pyro] |" in m2
    m1m2 = next(line for line in lines if line.startswith("| M1+M2"))
    assert [c.strip() for c in m1m2.split("|")[3:10:2]] == ["96.67 [K14]", "97.41 [K14]", "97.60 [K14]", "97.82 [K14]"]
    d = next(line for line in lines if line.startswith("| (d)"))
    assert [c.strip() for c in d.split("|")[3:10:2]] == ["88.18 [K14]", "94.28 [K14]", "95.76 [K14]", "96.51 [K14]"]
    assert next(line for line in lines if line.startswith("| (a)")).count("| — |") == 4
    cell = json.loads((tmp_path / "table.json").read_text())["rows"][ROWS_INDEX["m2"] * 5]
    accs = [known[("m2", "100", s)]["accuracy"] for s in (1, 2, 3)]
    assert (cell["labels"], cell["accuracies"], cell["published_accuracy_percent"]) == ("100", accs, {"K14": 100 - 11.97, "Pyro": 93.19})
    assert cell["ci95_halfwidth"] == pytest.approx(mean_ci(accs)[1])
    (tmp_path / "f").mkdir()
    md, _ = Experiment(Settings(dataset="fashion-mnist", labels=[100], seeds=3, out=tmp_path / "f")).write_tables(known)
    assert md.splitlines()[0] == "| model | 100 labels |" and "[K14]" not in md


ROWS_INDEX = {row: i for i, row in enumerate(ROWS)}


def test_a_label_count_that_cannot_be_balanced_fails_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "ssl", "--dataset", "digits", "--labels", "100,55", "--seeds", "1", "--jobs", "2",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "use a multiple of 10" in err
    assert not (out / "results.jsonl").exists() and not (out / "runs").exists()


def test_the_help_states_the_default_budget_and_weights(capsys):
    from aevb.config import HELP
    from aevb.experiments.ssl import MODEL_SETTINGS
    from aevb.models import M2, PCVAE

    with pytest.raises(SystemExit):
        main(["experiment", "ssl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    epochs = ", ".join(f"{name} {m['epochs']}" for name, m in MODEL_SETTINGS.items())
    assert f"Default budget, epochs per model: {epochs} (--epochs sets them all)" in text
    assert f"m2 {M2.default_alpha:g}, the paper's; pcvae {PCVAE.default_alpha:g}," in HELP["alpha"]
    assert f"(default {PCVAE.default_consistency:g})" in HELP["consistency"]
    settings = MODEL_SETTINGS["pcvae"]  # the experiment trains the PC-VAE at its defaults, named for the digest
    assert (settings["alpha"], settings["consistency"]) == (PCVAE.default_alpha, PCVAE.default_consistency)
