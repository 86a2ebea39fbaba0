"""Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", Table 1 (MNIST): test NLL
and active units of the VAE and the IWAE trained with k = 1, 5, 50 samples, one or two stochastic layers.

The paper's set-up, as far as it states it: dynamically binarised MNIST, the 60,000 training images;
one layer x → 200 → 200 → z (50), two layers x → 100 → 100 → z1 (100) → 50 → 50 → z2 (50), tanh,
Gaussian layers with exp-parameterised standard deviations, Bernoulli output; Adam (β1 0.9, β2 0.999,
ε 1e-4), batches of 20, 3^i epochs at 0.001 · 10^(-i/7), i = 0 … 7 (``--lr-schedule burda``); the
NLL by importance sampling with k = 5000 on the 10,000 test images. VAE rows train the k-sample ELBO
(its KL in closed form where one exists), IWAE rows the k-sample bound. Not reproduced: the paper's
weight initialisation (torch's default here).

Budgets: ``smoke`` (seconds, for the tests), ``quick`` (the schedule's first three stages, 13
epochs on the full training set, the NLL on the first 1,000 test images; the rows run in turn), ``paper`` (3,280 epochs). Each row is a run directory in
OUT/runs/ROW, resumed where it stopped and not trained again once done; OUT/table.md and
OUT/results.json put the paper's numbers beside ours.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rundir
from ..config import Config
from ..data import load_dataset
from ..errors import ConfigError
from ..evaluate import evaluate
from ..lr_schedules import BURDA_EPOCHS
from ..train import train

# Table 1 of the paper, MNIST: (NLL in nats, active units; two layers: first + second)
PAPER = {
    "vae-k1-1layer": (86.76, "19"), "vae-k5-1layer": (86.47, "20"), "iwae-k5-1layer": (85.54, "22"),
    "vae-k50-1layer": (86.35, "20"), "iwae-k50-1layer": (84.78, "25"),
    "vae-k1-2layer": (85.33, "16+5"), "vae-k5-2layer": (85.01, "17+5"), "iwae-k5-2layer": (83.89, "21+5"),
    "vae-k50-2layer": (84.78, "17+5"), "iwae-k50-2layer": (82.90, "26+7"),
}
ROWS = tuple(PAPER)
what = ("Burda, Grosse & Salakhutdinov 2015, Table 1: test NLL and active units of VAE and IWAE, k = 1, 5, 50, "
        "one and two stochastic layers (MNIST)")
options = ("rows",)


@dataclass(frozen=True)
class Budget:
    epochs: int
    k: int  # importance samples of the NLL
    train_size: int | None = None
    test_size: int | None = None
    note: str = ""


BUDGETS = {
    "smoke": Budget(1, 50, train_size=200, test_size=50, note="1 epoch on 200 images: the tests' end-to-end check"),
    "quick": Budget(13, 5000, test_size=1000,
                    note="13 epochs (the burda schedule's stages 0-2), the first 1,000 test images, k = 5000; on 2 "
                         "idle CPU cores about 15 min (vae-k1) to 25 min (iwae-k5) of training a row, k = 50 rows about "
                         "3 times an iwae-k5 row's epoch (40-50 min of training)"),
    "paper": Budget(BURDA_EPOCHS, 5000, note=f"the paper's {BURDA_EPOCHS:,} epochs; see the README for the time a row takes"),
}


def row_config(row: str, budget: Budget, seed: int = 1, data_dir: str | None = None) -> Config:
    """The Config of one row: vae|iwae, k, 1|2 layers."""
    objective, k, layers = row.split("-")
    cfg = Config()
    d, m, t = cfg.data, cfg.model, cfg.train
    d.binarize, d.train_size, d.test_size, d.data_dir = "dynamic", budget.train_size, budget.test_size, data_dir
    m.activation = "tanh"
    if layers == "1layer":
        m.hidden, m.latent_dim = [200, 200], 50
    else:
        m.model, m.hidden, m.latent_dim, m.hidden2, m.latent_dim2 = "hierarchical", [100, 100], 100, [50, 50], 50
    t.estimator, t.samples = ("auto" if objective == "vae" else "iwae"), int(k[1:])
    t.batch_size, t.lr, t.optimizer_eps, t.lr_schedule = 20, 1e-3, 1e-4, "burda"
    t.epochs, t.seed = budget.epochs, seed
    return cfg


def parse_rows(text: str | None) -> list[str]:
    if not text:
        return list(ROWS)
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in PAPER]
    if unknown:
        raise ConfigError(f"unknown row {unknown[0]!r}; choose from: {', '.join(ROWS)}")
    return rows


def run_row(row: str, budget: Budget, out: Path, data_dir: str | None, quiet: bool) -> dict:
    """Train (or resume, or reuse) one row and evaluate it; its result record, kept in RUN/burda2015.json."""
    run = out / "runs" / row
    done = run / "burda2015.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = row_config(row, budget, data_dir=data_dir)
    resume = rundir.is_run(run)
    if not (resume and rundir.checkpoint_epoch(run) >= budget.epochs):
        train(cfg, run, resume=resume, overwrite=not resume, quiet=quiet)
    import aevb

    torch.manual_seed(0)
    started = time.perf_counter()
    r = evaluate(aevb.load(run), load_dataset(cfg.data).test_x, ks=(budget.k,))
    metrics = rundir.read_metrics(run)
    ll = r["log_likelihood"]
    record = {"row": row, "paper_nll": PAPER[row][0], "paper_active_units": PAPER[row][1],
              "nll": -ll["value"], "standard_error": ll["standard_error"], "k": budget.k,
              "active_units": r["diagnostics"]["active_units_per_layer"], "epochs": len(metrics),
              "train_seconds": sum(m["seconds"] for m in metrics), "eval_seconds": time.perf_counter() - started,
              "test_elbo": r["elbo_A"]["elbo"], "n_test": r["n"],
              "log_likelihood": {key: v for key, v in ll.items() if key != "value"}}
    rundir.write_text(done, json.dumps(record, indent=2) + "\n")
    return record


def khat_share(record: dict) -> str:
    """The share of test images whose Pareto k̂ exceeds 0.7 (their estimates unreliable), or '-' where k
    was too small to diagnose."""
    share = record["log_likelihood"].get("khat_share_above_0.7")
    return "-" if share is None else f"{100 * share:.1f}%"


def table(records: list[dict], budget_name: str) -> str:
    b = BUDGETS[budget_name]
    lines = [f"Burda et al. 2015, Table 1 (MNIST), budget {budget_name}: {b.note}. Test NLL in nats (lower is better), "
             "± its calibrated standard error, the share of images with Pareto k̂ > 0.7 (unreliable); "
             "active units per stochastic layer (Cov_x E_q[z_d] > 0.01).", "",
             "| row | paper NLL | our NLL | difference | k̂ > 0.7 | paper active | our active | epochs | "
             "train + eval time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        minutes = (r["train_seconds"] + r["eval_seconds"]) / 60
        lines.append(f"| {r['row']} | {r['paper_nll']:.2f} | {r['nll']:.2f} ± {r['standard_error']:.2f} | "
                     f"{r['nll'] - r['paper_nll']:+.2f} | {khat_share(r)} | {r['paper_active_units']} | "
                     f"{'+'.join(map(str, r['active_units']))} | {r['epochs']} | {minutes:.1f} min |")
    return "\n".join(lines) + "\n"


def reproduce(budget: str, out: Path, *, rows: str | None = None, data_dir: str | None = None, quiet: bool = True) -> str:
    """Every selected row of the budget, then OUT/results.json and OUT/table.md; returns the table."""
    out = Path(out)
    b = BUDGETS[budget]
    records = [run_row(row, b, out, data_dir, quiet) for row in parse_rows(rows)]
    rundir.write_text(out / "results.json", json.dumps({"budget": budget, "note": b.note, "rows": records},
                                                       indent=2) + "\n")
    text = table(records, budget)
    rundir.write_text(out / "table.md", text)
    return text
