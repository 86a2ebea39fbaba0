"""ML, MAP and full VB over the decoder's parameters θ on a small training set, where the difference
matters (the AEVB paper, section 2.1 and appendix F): the pytorch-examples VAE on the first 1,000
MNIST training images, the same encoder, decoder and budget for each, three seeds.

Reported per θ (mean ± sd over seeds): the test ELBO (estimator B) and the importance-sampled test
log-likelihood (for vb averaged over θ ~ q(θ) as well: models/theta.py). Runs live in OUT/runs and
are reused or resumed; the table goes to OUT/table.md and the numbers to OUT/results.json.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from .. import rundir
from ..config import Config
from ..data import load_dataset
from ..evaluate import evaluate
from ..models.theta import THETA
from ..train import train

BUDGETS = {  # quick: minutes on 2 CPU cores; paper: the full test set and k = 5000 (hours)
    "quick": {"train_size": 1000, "test_size": 1000, "epochs": 50, "k": 1000, "seeds": 3},
    "paper": {"train_size": 1000, "test_size": None, "epochs": 500, "k": 5000, "seeds": 3},
}


def run_theta(budget: str, out: Path, data_dir: str | None = None, quiet: bool = True) -> str:
    """Train (or reuse) every (θ, seed) run of the budget, evaluate each, write the table; returns it."""
    b = BUDGETS[budget]
    out = Path(out)
    results = {}
    for theta in THETA:
        for seed in range(1, b["seeds"] + 1):
            cfg = Config()
            cfg.data.train_size, cfg.data.test_size, cfg.data.data_dir = b["train_size"], b["test_size"], data_dir
            cfg.train.epochs, cfg.train.seed, cfg.model.theta = b["epochs"], seed, theta
            run = out / "runs" / f"{theta}-seed{seed}"
            resume = rundir.is_run(run)
            if not (resume and rundir.checkpoint_epoch(run) >= b["epochs"]):
                train(cfg, run, resume=resume, overwrite=not resume, quiet=quiet)
            import aevb

            torch.manual_seed(seed)
            r = evaluate(aevb.load(run), load_dataset(cfg.data).test_x, ks=(b["k"],))
            results.setdefault(theta, []).append({"seed": seed, "test_elbo": r["elbo_B"]["elbo"],
                                                  "test_log_likelihood": r["log_likelihood"]["value"],
                                                  "standard_error": r["log_likelihood"]["standard_error"]})
    summary = {theta: {key: (statistics.mean(v[key] for v in rows), statistics.stdev(v[key] for v in rows)
                             if len(rows) > 1 else 0.0) for key in ("test_elbo", "test_log_likelihood")}
               for theta, rows in results.items()}
    rundir.write_text(out / "results.json", json.dumps({"budget": budget, **b, "runs": results, "summary": summary},
                                                       indent=2) + "\n")
    lines = [f"θ by ML, MAP and VB: the pytorch-examples VAE on {b['train_size']} MNIST training images, "
             f"{b['epochs']} epochs, {b['seeds']} seeds (mean ± sd), "
             f"{b['test_size'] or 'all'} test images, IS with k = {b['k']}; nats per image, higher is better",
             "", "| θ | test ELBO | test log p(x) (IS) |", "| --- | --- | --- |"]
    lines += [f"| {theta} | {s['test_elbo'][0]:.2f} ± {s['test_elbo'][1]:.2f} | "
              f"{s['test_log_likelihood'][0]:.2f} ± {s['test_log_likelihood'][1]:.2f} |" for theta, s in summary.items()]
    table = "\n".join(lines) + "\n"
    rundir.write_text(out / "table.md", table)
    return table
