"""The two-stochastic-layer model (Burda et al. 2015) against a hand computation, its IWAE bound rising
in k, and the learning-rate schedules (Burda's table, torch's schedulers, resume) through the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import aevb
from aevb.cli import main
from aevb.config import ModelConfig
from aevb.lr_schedules import BURDA_EPOCHS, burda_rate
from aevb.models import build_model
from aevb.objectives import Estimator


def tiny():
    cfg = ModelConfig(model="hierarchical", hidden=[4], hidden2=[3], latent_dim=2, latent_dim2=1, activation="tanh")
    torch.manual_seed(0)
    return build_model(cfg, (3,)).double()


def numpy_layers(net):
    """The (W, b) of each Linear of a Sequential body, as numpy."""
    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net.modules() if isinstance(m, torch.nn.Linear)]


def forward(layers, v):
    """tanh between the linear layers, none after the last."""
    for i, (w, b) in enumerate(layers):
        v = w @ v + b
        if i < len(layers) - 1:
            v = np.tanh(v)
    return v


def gaussian_log_pdf(z, head):
    mu, log_var = np.split(head, 2)
    return stats.norm.logpdf(z, mu, np.exp(0.5 * log_var)).sum()


def test_log_weight_is_the_hand_computed_log_p_x_z_minus_log_q_z_given_x():
    model = tiny()
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        q = model.encode(x)
        z = q.sample((4,))
        log_w = (model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)).numpy()
    enc, enc2, dec2, dec = (numpy_layers(m) for m in (model.encoder, model.encoder2, model.decoder2, model.decoder))
    for s in range(4):
        for n in range(2):
            xn, z1, z2 = x[n].numpy(), z[s, n, :2].numpy(), z[s, n, 2:].numpy()
            log_q = gaussian_log_pdf(z1, forward(enc, xn)) + gaussian_log_pdf(z2, forward(enc2, z1))
            logits = forward(dec, z1)
            log_px = (xn * logits - np.logaddexp(0, logits)).sum()
            log_p = stats.norm.logpdf(z2).sum() + gaussian_log_pdf(z1, forward(dec2, z2)) + log_px
            assert log_w[s, n] == pytest.approx(log_p - log_q, rel=1e-10, abs=1e-10)


def test_iwae_bound_rises_with_k_on_the_two_layer_model():
    """E[log 1/k Σ w] increases in k; each mean over 4000 replicates, compared with 4 standard errors of
    the difference (the replicates are independent)."""
    model = tiny()
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64).expand(4000, 3)
    torch.manual_seed(1)
    with torch.no_grad():
        bounds = {k: Estimator("iwae", k)(model, x).elbo for k in (1, 5, 50)}
    for small, large in ((1, 5), (5, 50)):
        diff = bounds[large] - bounds[small]
        assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff)), (small, large)


def test_burda_schedule_is_the_papers_table():
    """3^i epochs at 0.001 · 10^(-i/7), i = 0 … 7: 3,280 epochs."""
    assert BURDA_EPOCHS == 3280
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]
    for i, start in enumerate(starts):
        end = start + 3**i - 1
        for epoch in (start, end):
            assert burda_rate(epoch) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
    assert burda_rate(BURDA_EPOCHS - 1) == pytest.approx(1e-4)


COMMON = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--train-size", "200", "--test-size", "50",
          "--quiet", "--no-report"]


def lrs(run):
    return [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("schedule, expected", [
    ("burda", [burda_rate(e, 0.01) for e in range(14)]),
    ("cosine", [0.01 * (1 + math.cos(math.pi * e / 14)) / 2 for e in range(14)]),
    ("step", [0.01 * 0.5 ** (e // 4) for e in range(14)]),
])
def test_each_schedule_gives_its_rates_through_the_cli(tmp_path, schedule, expected):
    assert main(["train", *COMMON, "--epochs", "14", "--lr", "0.01", "--lr-schedule", schedule, "--lr-gamma", "0.5",
                 "--lr-step", "4", "--out", str(tmp_path / "r")]) == 0
    assert lrs(tmp_path / "r") == pytest.approx(expected, rel=1e-9)


def test_plateau_lowers_the_rate_when_the_training_bound_stops_rising(tmp_path):
    assert main(["train", *COMMON, "--epochs", "12", "--lr", "0.5", "--lr-schedule", "plateau", "--lr-patience", "0",
                 "--out", str(tmp_path / "r")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["lr"] < metrics[0]["lr"]
    best = -math.inf
    for this, following in zip(metrics, metrics[1:]):  # patience 0: any epoch not better than the best so far lowers it
        better = this["train_elbo"] > best
        best = max(best, this["train_elbo"])
        assert following["lr"] == pytest.approx(this["lr"] * (1 if better else 0.1), rel=1e-9)


def test_a_scheduled_two_layer_run_resumes_bit_identically_and_counts_active_units_per_layer(tmp_path):
    args = [*COMMON, "--model", "hierarchical", "--hidden2", "8", "--latent-dim2", "2", "--activation", "tanh",
            "--estimator", "iwae", "--samples", "3", "--lr-schedule", "step", "--lr-step", "1", "--lr-gamma", "0.5",
            "--optimizer-eps", "1e-4"]
    assert main(["train", *args, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", str(tmp_path / "resumed"), "--quiet", "--no-report"]) == 0
    a, b = aevb.load(tmp_path / "straight"), aevb.load(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert lrs(tmp_path / "resumed") == pytest.approx([0.001, 0.0005, 0.00025])
    assert main(["evaluate", str(tmp_path / "straight"), "--k", "20", "--test-size", "50"]) == 0
    d = json.loads((tmp_path / "straight" / "eval.json").read_text())["diagnostics"]
    assert d["latent_dim"] == 4 and len(d["active_units_per_layer"]) == 2
    assert sum(d["active_units_per_layer"]) == d["active_units"]
    assert d["active_units_per_layer"] == [sum(a > d["threshold"] for a in d["activity"][:2]),
                                           sum(a > d["threshold"] for a in d["activity"][2:])]


def test_optimizer_eps_is_refused_for_sgd(tmp_path, capsys):
    assert main(["train", *COMMON, "--optimizer", "sgd", "--optimizer-eps", "1e-4", "--out", str(tmp_path / "r")]) == 2
    assert "sgd has no ε" in capsys.readouterr().err and not (tmp_path / "r").exists()
