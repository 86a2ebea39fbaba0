"""Kingma & Welling 2013, "Auto-Encoding Variational Bayes": its Figures 2-5, each by one command
(``aevb reproduce kingma2013-fig2|fig3|fig4|fig5 --budget smoke|quick|paper [--dataset mnist|frey-face]``).

- Figure 2: the variational lower bound on the training and the test set against the number of
  training samples evaluated (log axis), AEVB against wake-sleep, one panel per N_z.
- Figure 3: the marginal likelihood (appendix D's HMC estimator) of AEVB, wake-sleep and Monte
  Carlo EM, N_z = 3 and 100 hidden units, for a small and a large training set (MNIST).
- Figure 4: the learned 2-D manifold (prior quantiles decoded through the inverse CDF).
- Figure 5: samples from MNIST models with N_z = 2, 5, 10, 20.

The set-up is the paper's (section 5): one tanh hidden layer (500 units for MNIST, 200 for Frey
Face, 100 for Figure 3), weights from N(0, 0.01²), Adagrad, minibatches of 100, L = 1, estimator B,
MAP with p(θ) = N(0, I) (``paper_config``; configs/kingma2013-*.toml hold the same). Wake-sleep
trains the same encoder/decoder pair (``--algorithm wake-sleep``), MCEM the decoder alone with HMC
(``--algorithm mcem``). Each curve is one run directory in OUT/runs, trained to each evaluation point
in turn (``train(..., resume=True)``) and evaluated there; a point once measured is kept in
RUN/curve.json, so the command resumes where it was interrupted. Each figure writes OUT/FIG.png,
OUT/results.json (the numbers behind it) and OUT/page.md (the paper's result beside ours).
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .. import rundir
from ..config import Config
from ..data import Dataset, load_dataset
from ..errors import ConfigError, TrainingDiverged
from ..evaluate import elbo_terms, importance_estimate
from ..inference.hmc_likelihood import MIXED_RHAT, hmc_log_likelihood
from ..inference.importance import RELIABLE_KHAT
from ..objectives import Estimator
from ..train import train

DATASETS = ("mnist", "frey-face")
ALGORITHMS = {"sgvb": "AEVB", "wake-sleep": "wake-sleep", "mcem": "MCEM"}
COLOURS = {"sgvb": "tab:red", "wake-sleep": "tab:blue", "mcem": "tab:green"}


def paper_config(dataset: str, latent_dim: int, algorithm: str | None = None, hidden: int | None = None) -> Config:
    """The paper's set-up (section 5) for one curve: tanh MLPs with one hidden layer (500 units for
    MNIST, 200 for Frey Face unless ``hidden``), weights from N(0, 0.01²), Adagrad (step size 0.02
    for MNIST and 0.01 for Frey Face, from the paper's {0.01, 0.02, 0.1}), M = 100, L = 1,
    estimator B, MAP with p(θ) = N(0, I); a Bernoulli decoder for MNIST, for Frey Face a Gaussian
    one whose mean passes through a sigmoid and whose variance the decoder predicts."""
    if dataset not in DATASETS:
        raise ConfigError(f"kingma2013 trains on {' or '.join(DATASETS)}, not {dataset!r}")
    cfg = Config()
    d, m, t = cfg.data, cfg.model, cfg.train
    d.dataset, d.binarize = dataset, "none"
    m.net, m.activation, m.latent_dim, m.init_std = "mlp", "tanh", latent_dim, 0.01
    m.posterior, m.prior, m.theta, m.theta_prior_scale = "normal", "standard_normal", "map", 1.0
    if dataset == "mnist":
        m.hidden, m.likelihood, t.lr = [hidden or 500], "bernoulli", 0.02
    else:
        m.hidden, m.likelihood, m.likelihood_scale, t.lr = [hidden or 200], "sigmoid_gaussian", "predicted", 0.01
    t.algorithm, t.optimizer, t.batch_size, t.estimator, t.samples, t.seed = algorithm, "adagrad", 100, "B", 1, 1
    if algorithm == "mcem":
        t.estimator = "auto"  # MCEM ascends no bound; it takes the default estimator, which it never uses
    return cfg


def evaluations_per_example(cfg: Config) -> int:
    """How often an epoch evaluates each training example in a gradient of θ: once for AEVB and
    wake-sleep, once per M-step (``--m-steps``, the paper's 5) for MCEM. The figures' x axis, "training
    samples evaluated", is epochs × N × this (the HMC's leapfrog gradients in z are not counted; the
    wall time of each point is in results.json)."""
    return cfg.train.m_steps if cfg.train.algorithm == "mcem" else 1


# ---------------------------------------------------------------------------------------------
# budgets


@dataclass(frozen=True)
class Budget:
    """One budget of one figure: the evaluation points (epochs), the training images (None: all),
    the images of each split the metric is measured on, and what it costs in words."""
    epochs: tuple[int, ...]
    train_size: int | None
    eval_size: int
    note: str
    grid: tuple[int, ...] | None = None  # latent dimensions (None: the dataset's grid)
    train_sizes: tuple[int, ...] = ()  # Figure 3: the training-set sizes compared
    options: dict = field(default_factory=dict)  # what else the figure's budget sets
    step_sizes: tuple[float, ...] | None = None  # Adagrad step sizes to choose from (None: the dataset's default)


STEP_SIZES = (0.01, 0.02, 0.1)  # the paper's Adagrad step sizes
PROBE_SAMPLES = 50_000  # "the first few iterations" on which the paper chose among them
PROBE_IMAGES = 1000  # training images on which a probe's bound is measured


def choose_step_size(where: Path, cfg: Config, data: Dataset, step_sizes: tuple[float, ...] | None, quiet: bool,
                     probe_samples: int = PROBE_SAMPLES) -> float:
    """The paper's choice of Adagrad's global step size (section 5): of ``step_sizes``, the one with the
    best performance on the training set in the first iterations (``probe_score`` after about
    ``probe_samples`` training samples evaluated from the same start; a diverged probe loses); kept in
    WHERE/step_size.json with the scores. None: the dataset's default."""
    if not step_sizes:
        return cfg.train.lr
    path = where / "step_size.json"
    if path.exists():
        return json.loads(path.read_text())["chosen"]
    epochs = max(1, round(probe_samples / (len(data.train_x) * evaluations_per_example(cfg))))
    scores = {}
    for lr in step_sizes:
        probe = copy.deepcopy(cfg)
        probe.train.lr, probe.train.epochs = lr, epochs
        with tempfile.TemporaryDirectory() as tmp:
            try:
                scores[lr] = probe_score(probe, train(probe, Path(tmp) / "probe", quiet=quiet, data=data), data)
            except TrainingDiverged:
                scores[lr] = -math.inf
    chosen = max(step_sizes, key=lambda lr: scores[lr] if math.isfinite(scores[lr]) else -math.inf)
    where.mkdir(parents=True, exist_ok=True)
    metric = "train_log_pxz" if cfg.train.algorithm == "mcem" else f"bound on {PROBE_IMAGES} training images"
    rundir.write_text(path, json.dumps({"probe_epochs": epochs, "metric": metric, "chosen": chosen,
                                        "scores": {str(lr): v for lr, v in scores.items()}}, indent=2) + "\n")
    return chosen


def probe_score(cfg: Config, run: Path, data: Dataset) -> float:
    """A probe's performance on the training set: the bound (estimator B, L = 1) of the model it ends with
    on the first PROBE_IMAGES training images, not the mean over its epoch, which the worst first steps of a
    large step size dominate (on 50,000 images AEVB at 0.1 averages -1,326 over its first epoch and ends it
    at -173, against 0.02's -191); MCEM, whose encoder is untrained, by its chains' log p(x, z)."""
    import aevb

    if cfg.train.algorithm == "mcem":
        return rundir.read_metrics(run)[-1]["train_log_pxz"]
    torch.manual_seed(0)
    return elbo_terms(aevb.load(run), data.train_x[:PROBE_IMAGES], Estimator("B", 1))["elbo"]


def tuned_curve(runs: Path, name: str, cfg: Config, data: Dataset, epochs, measure, b: "Budget", quiet: bool) -> list[dict]:
    """``curve`` in RUNS/NAME/lrSTEP at the step size ``choose_step_size`` picks; ``epochs(cfg)`` its points.
    Each point records the step size."""
    cfg.train.lr = choose_step_size(runs / name, cfg, data, b.step_sizes, quiet)
    points = curve(runs / name / f"lr{cfg.train.lr:g}", cfg, data, epochs(cfg), measure, quiet)
    return [p | {"lr": cfg.train.lr} for p in points]


def log_points(last: int, per_decade: int = 4) -> tuple[int, ...]:
    """Epochs 1 … last, log-spaced (``per_decade`` to a factor of 10), last included."""
    points = np.unique(np.round(np.logspace(0, math.log10(last), max(2, int(per_decade * math.log10(last)) + 1))))
    return tuple(int(p) for p in points)


# ---------------------------------------------------------------------------------------------
# one curve: train to each point, measure there


def curve(run: Path, cfg: Config, data: Dataset, epochs: tuple[int, ...], measure, quiet: bool) -> list[dict]:
    """Train ``cfg`` in ``run`` to each epoch of ``epochs`` in turn and ``measure(model)`` there
    (a dict); the points, each with its epoch, training samples evaluated and training seconds so far, kept in
    RUN/curve.json after each one so that an interrupted curve resumes at its last point."""
    import aevb

    path = run / "curve.json"
    points = json.loads(path.read_text()) if path.exists() else []
    n = len(data.train_x) * evaluations_per_example(cfg)
    for epoch in epochs:
        if any(p["epoch"] == epoch for p in points):
            continue
        resume = rundir.is_run(run)
        if not (resume and rundir.checkpoint_epoch(run) >= epoch):
            cfg.train.epochs = epoch
            train(cfg, run, resume=resume, overwrite=not resume, quiet=quiet, data=data)
        done = rundir.checkpoint_epoch(run)
        torch.manual_seed(0)
        started = time.perf_counter()
        metrics = measure(aevb.load(run))
        seconds = sum(r["seconds"] for r in rundir.read_metrics(run))
        points.append({"epoch": done, "samples": done * n, "train_seconds": seconds,
                       "measure_seconds": time.perf_counter() - started} | metrics)
        rundir.write_text(path, json.dumps(points, indent=2) + "\n")
    return points


def bound_on(**sets: torch.Tensor):
    """The measure of Figures 2, 4 and 5: the lower bound (estimator B, L = 1, as trained) per datapoint
    on each named set of images (train=..., test=...)."""
    def measure(model) -> dict:
        return {name: elbo_terms(model, x, Estimator("B", 1))["elbo"] for name, x in sets.items()}
    return measure


def subset(data: Dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return data.train_x[:size], data.test_x[:size]


def dataset_for(dataset: str, train_size: int | None, data_dir: str | None) -> Dataset:
    cfg = paper_config(dataset, 2)
    cfg.data.train_size, cfg.data.data_dir = train_size, data_dir
    return load_dataset(cfg.data)


# ---------------------------------------------------------------------------------------------
# drawing


def panels(n: int, width: float = 3.2, height: float = 3.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n, height), dpi=100)
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def draw_curves(ax, curves: dict[str, list[dict]], key_train: str, key_test: str) -> None:
    """Train (solid) and test (dashed) of each algorithm against the samples seen, log x axis."""
    for algorithm, points in curves.items():
        s = [p["samples"] for p in points]
        ax.plot(s, [p[key_train] for p in points], "-", color=COLOURS[algorithm], label=f"{ALGORITHMS[algorithm]} train")
        ax.plot(s, [p[key_test] for p in points], "--", color=COLOURS[algorithm], label=f"{ALGORITHMS[algorithm]} test")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # 2·10^5, 3·10^5 … labelled collide
    ax.set_xlabel("training samples evaluated")
    ax.grid(alpha=0.3)


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    rundir.atomic_write(path, lambda p: fig.savefig(p, format="png"))


def write_outputs(out: Path, name: str, results: dict, page: str) -> str:
    rundir.write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    rundir.write_text(out / "page.md", page)
    return page


def verdict(holds: bool) -> str:
    return "holds" if holds else "does NOT hold"


# ---------------------------------------------------------------------------------------------
# Figure 2: the lower bound, AEVB against wake-sleep


GRIDS = {"mnist": (3, 5, 10, 20, 200), "frey-face": (2, 5, 10, 20)}
FIG2_PAPER = ("AEVB's lower bound is above wake-sleep's throughout training, on the training and the test set, "
              "for every N_z (MNIST 3, 5, 10, 20, 200; Frey Face 2, 5, 10, 20), and converges faster; with N_z = 200 "
              "AEVB does not overfit (the bound regularises).")


class Fig2:
    name = "kingma2013-fig2"
    what = ("Kingma & Welling 2013, Figure 2: the lower bound on train and test against training samples "
            "evaluated, AEVB vs wake-sleep, one panel per N_z (MNIST or Frey Face)")
    options = ("dataset",)
    BUDGETS = {
        "smoke": Budget((1, 2), 300, 100, "2 epochs on 300 images, N_z 3 and 20: the tests' end-to-end check",
                        grid=(3, 20)),
        "quick": Budget((1, 2, 3, 5, 10), None, 10_000,
                        "10 epochs on all training images (6·10^5 samples), the bound on 10,000 training and "
                        "10,000 test images at 5 log-spaced points; 10 curves, about 25 min on 2 CPU cores (MNIST)",
                        step_sizes=STEP_SIZES),
        "paper": Budget(log_points(1667), None, 10_000,
                        "10^8 training samples (1,667 MNIST epochs) per curve at log-spaced points; about 5 h an "
                        "AEVB curve, 2-3 days for the 10 on 2 CPU cores, resumable", step_sizes=STEP_SIZES),
    }

    @classmethod
    def reproduce(cls, budget: str, out: Path, *, dataset: str | None = None, data_dir: str | None = None,
                  quiet: bool = True) -> str:
        dataset = dataset or "mnist"
        b, out = cls.BUDGETS[budget], Path(out)
        data = dataset_for(dataset, b.train_size, data_dir)
        x_train, x_test = subset(data, b.eval_size)
        measure = bound_on(train=x_train, test=x_test)
        grid = b.grid or GRIDS[dataset]
        curves = {nz: {a: tuned_curve(out / "runs", f"{dataset}-{a}-nz{nz}", paper_config(dataset, nz, a), data,
                                      lambda cfg: b.epochs, measure, b, quiet)
                       for a in ("sgvb", "wake-sleep")} for nz in grid}
        fig, axes = panels(len(grid))
        for ax, nz in zip(axes, grid):
            draw_curves(ax, curves[nz], "train", "test")
            ax.set_title(f"{dataset}, $N_z$ = {nz}")
            every = [p[key] for c in curves[nz].values() for p in c for key in ("train", "test")]
            ours = [p[key] for p in curves[nz]["sgvb"] for key in ("train", "test")]
            bottom = max(min(every), min(ours) - 60)  # as in the paper, wake-sleep's far-off start is cut
            ax.set_ylim(bottom - 2, max(every) + 0.05 * (max(every) - bottom) + 1)
        axes[0].set_ylabel("lower bound per datapoint (nats)")
        axes[-1].legend(fontsize=7)
        save_figure(fig, out / "fig2.png")
        rows, holds = [], []
        for nz in grid:
            aevb_end, ws_end = curves[nz]["sgvb"][-1], curves[nz]["wake-sleep"][-1]
            ok = aevb_end["test"] > ws_end["test"]
            holds.append(ok)
            rows.append(f"| {nz} | {aevb_end['samples']:,} | {aevb_end['train']:.2f} | {ws_end['train']:.2f} | "
                        f"{aevb_end['test']:.2f} | {ws_end['test']:.2f} | {'yes' if ok else 'no'} |")
        page = "\n".join([
            f"# Kingma & Welling 2013, Figure 2 ({dataset}, budget {budget})", "",
            f"Budget: {b.note}.", "", f"**The paper:** {FIG2_PAPER}", "",
            f"**Ours** (the bound per datapoint in nats, estimator B with L = 1, on {b.eval_size:,} training and "
            f"{b.eval_size:,} test images, at the last point):", "",
            "| N_z | samples | AEVB train | wake-sleep train | AEVB test | wake-sleep test | AEVB above on test |",
            "| --- | --- | --- | --- | --- | --- | --- |", *rows, "",
            f"The paper's ordering (AEVB above wake-sleep on the test bound at the last point, every N_z) "
            f"**{verdict(all(holds))}** here ({sum(holds)} of {len(holds)} panels).", "", "![Figure 2](fig2.png)", "",
            "Each panel's y axis ends 60 nats below AEVB's lowest point, as the paper's do; results.json has every "
            "point.", ""])
        results = {"figure": "fig2", "dataset": dataset, "budget": budget, "note": b.note,
                   "curves": {str(nz): c for nz, c in curves.items()}, "ordering_holds": all(holds)}
        return write_outputs(out, "fig2", results, page)


# ---------------------------------------------------------------------------------------------
# Figure 3: the marginal likelihood, AEVB against wake-sleep and MCEM


FIG3_PAPER = ("With N_z = 3 and 100 hidden units on MNIST, AEVB's estimated marginal likelihood rises fastest and "
              "ends highest for both training-set sizes (1,000 and 50,000), on the training and the test set; wake-sleep "
              "converges slower and lower, and MCEM, not an on-line algorithm, is slowest (on 1,000 images it catches up "
              "late and overfits; on 50,000 it stays far below).")


def marginal_likelihood_on(x_train: torch.Tensor, x_test: torch.Tensor, importance_k: int | None = None, **options):
    """The measure of Figure 3: the paper's HMC marginal-likelihood estimator (appendix D,
    ``hmc_log_likelihood`` with ``options``) per datapoint on training and test images, with its
    standard error, the share of images whose Pareto k̂ exceeds RELIABLE_KHAT (a fit that misses posterior
    mass) and the share whose chains' R̂ exceeds MIXED_RHAT (chains in different modes), both unreliable;
    both sets' chains run as one batch (the cost is per pass, not per image). With ``importance_k``, also
    aevb's importance-sampled estimate with the model's encoder and that many samples (``train_is``,
    ``test_is``): an independent check where an encoder is trained, a lower bound in expectation."""
    x, n = torch.cat([x_train, x_test]), len(x_train)
    halves = {"train": slice(0, n), "test": slice(n, None)}

    def measure(model) -> dict:
        e, out = hmc_log_likelihood(model, x, batch_size=len(x), **options), {}
        for key, h in halves.items():
            out |= {key: e.log_p[h].mean().item(), f"{key}_se": (e.se[h].pow(2).sum().sqrt() / len(e.se[h])).item(),
                    f"{key}_khat": (e.khat[h] > RELIABLE_KHAT).double().mean().item(),
                    f"{key}_rhat": (e.rhat[h] > MIXED_RHAT).double().mean().item()}
            if importance_k:
                out[f"{key}_is"] = importance_estimate(model, x[h], importance_k, diagnose=False).log_p.mean().item()
        return out
    return measure


def cell(p: dict) -> str:
    """One algorithm's last point on Figure 3's page: the appendix D estimates (train / test) ± their
    standard errors, the test images' shares of k̂ > 0.7 and of unmixed chains, the importance-sampled check
    where there is one, the step size and the training time."""
    check = f"; IS {p['train_is']:.2f} / {p['test_is']:.2f}" if "test_is" in p else ""
    mixing = f"; R̂ > {MIXED_RHAT}: {100 * p['test_rhat']:.0f}%" if "test_rhat" in p else ""  # points measured before R̂ have none
    return (f"{p['train']:.2f} ± {p['train_se']:.2f} / {p['test']:.2f} ± {p['test_se']:.2f} (k̂ > {RELIABLE_KHAT}: "
            f"{100 * p['test_khat']:.0f}%{mixing}{check}; step {p['lr']:g}; {p['train_seconds'] / 60:.1f} min)")


class Fig3:
    name = "kingma2013-fig3"
    what = ("Kingma & Welling 2013, Figure 3: the estimated marginal likelihood of AEVB, wake-sleep and Monte Carlo "
            "EM against training samples evaluated, N_z = 3, training sets of 1,000 and 50,000 MNIST images")
    options = ()
    LATENT_DIM, HIDDEN = 3, 100
    BUDGETS = {
        "smoke": Budget((), None, 10, "1,000 samples per curve on 100 and 200 images, the estimate on 10 images "
                        "with short chains: the tests' check", train_sizes=(100, 200),
                        options={"samples": 1000, "hmc": dict(samples=30, warmup=10, chains=2), "importance_k": 100}),
        "quick": Budget((), None, 100, "5·10^5 training samples evaluated per curve at 3 points (AEVB: 500 epochs of "
                        "1,000 images, 10 of 50,000; MCEM a fifth), the estimate on 100 training and 100 test images "
                        "(HMC: 8 chains of 100 warm-up and 50 draws; importance sampling with k = 5,000 as a check); 6 curves, about "
                        "30 min on 2 CPU cores", train_sizes=(1000, 50_000),
                        options={"samples": 5e5, "hmc": dict(samples=50, warmup=100, chains=8), "importance_k": 5000},
                        step_sizes=STEP_SIZES),
        "paper": Budget((), None, 1000, "the paper's axis, 6·10^7 training samples evaluated per curve, the estimate "
                        "on 1,000 images; MCEM dominates (days on 2 CPU cores), resumable",
                        train_sizes=(1000, 50_000), step_sizes=STEP_SIZES,
                        options={"samples": 6e7, "hmc": dict(samples=500, warmup=200, chains=8), "importance_k": 5000}),
    }

    @classmethod
    def epochs(cls, b: Budget, cfg: Config, n: int) -> tuple[int, ...]:
        """3 points, log-spaced, up to the budget's training samples evaluated for ``cfg`` on n images."""
        last = max(1, round(b.options["samples"] / (n * evaluations_per_example(cfg))))
        return tuple(sorted({max(1, round(last * f)) for f in (0.1, 0.3, 1.0)}))

    @classmethod
    def reproduce(cls, budget: str, out: Path, *, data_dir: str | None = None, quiet: bool = True) -> str:
        b, out = cls.BUDGETS[budget], Path(out)
        curves, rows, holds = {}, [], []
        for n in b.train_sizes:
            data = dataset_for("mnist", n, data_dir)
            curves[n] = {}
            for a in ("sgvb", "wake-sleep", "mcem"):
                cfg = paper_config("mnist", cls.LATENT_DIM, a, cls.HIDDEN)
                measure = marginal_likelihood_on(*subset(data, b.eval_size), **b.options["hmc"],
                                                 importance_k=None if a == "mcem" else b.options["importance_k"])
                curves[n][a] = tuned_curve(out / "runs", f"n{n}-{a}", cfg, data, lambda c: cls.epochs(b, c, n), measure,
                                           b, quiet)
            end = {a: c[-1] for a, c in curves[n].items()}
            ok = all(end["sgvb"]["test"] > end[a]["test"] for a in ("wake-sleep", "mcem"))
            holds.append(ok)
            test = {a: {p["samples"]: p["test"] for p in c} for a, c in curves[n].items()}
            shared = sorted(set.intersection(*map(set, test.values())))
            everywhere = all(test["sgvb"][s] > test[a][s] for s in shared for a in ("wake-sleep", "mcem"))
            rows.append(f"| {n:,} | {end['sgvb']['samples']:,} | " + " | ".join(map(cell, end.values()))
                        + f" | {'yes' if ok else 'no'} | {'yes' if everywhere else 'no'} ({len(shared)}) |")
        fig, axes = panels(len(b.train_sizes), 4.2, 3.4)
        for ax, n in zip(axes, b.train_sizes):
            draw_curves(ax, curves[n], "train", "test")
            ax.set_title(f"$N_{{train}}$ = {n:,}")
        axes[0].set_ylabel("marginal log-likelihood per datapoint (nats)")
        axes[-1].legend(fontsize=7)
        save_figure(fig, out / "fig3.png")
        gaps = [abs(p[key] - p[f"{key}_is"]) for c in curves.values() for points in c.values() for p in points
                for key in ("train", "test") if f"{key}_is" in p]
        gap = max(gaps, default=None)
        page = "\n".join([
            f"# Kingma & Welling 2013, Figure 3 (MNIST, budget {budget})", "", f"Budget: {b.note}.", "",
            f"**The paper:** {FIG3_PAPER}", "",
            f"**Ours** (log p(x) per datapoint in nats by the paper's HMC estimator, ± its standard error, on "
            f"{b.eval_size:,} training / {b.eval_size:,} test images, at the last point; for AEVB and wake-sleep also "
            f"aevb's importance-sampled estimate with the encoder (IS, k = {b.options['importance_k']:,}); the Adagrad "
            "step size the probe chose and each curve's training time). Training samples evaluated count each example once per gradient step on θ it enters: once per "
            "epoch for AEVB and wake-sleep, once per M-step (5 per batch) for MCEM, whose HMC gradients in z are "
            "not counted:", "",
            "| training images | samples | AEVB train / test | wake-sleep train / test | MCEM train / test | "
            "AEVB above both on test | … at every shared point (how many) |", "| --- | --- | --- | --- | --- | --- | --- |",
            *rows, "",
            f"The paper's ordering (AEVB's test estimate above wake-sleep's and MCEM's at the same number of samples, "
            f"for both training-set sizes, at the last point) **{verdict(all(holds))}** here.",
            "" if gap is None else f"\nThe ± is the chains' Monte Carlo error only; where both estimates exist, the "
            f"appendix D estimate and importance sampling differ by up to {gap:.2f} nats (mean over images), the better "
            "scale of the estimate's error (chains that miss a mode, a Gaussian fit that misses posterior mass).",
            "", "![Figure 3](fig3.png)", ""])
        results = {"figure": "fig3", "budget": budget, "note": b.note,
                   "curves": {str(n): c for n, c in curves.items()}, "ordering_holds": all(holds)}
        return write_outputs(out, "fig3", results, page)


# ---------------------------------------------------------------------------------------------
# Figures 4 and 5: the learned manifold and samples


class Fig4:
    name = "kingma2013-fig4"
    what = "Kingma & Welling 2013, Figure 4: the learned 2-D manifold of an AEVB model (MNIST or Frey Face)"
    options = ("dataset",)
    BUDGETS = {
        "smoke": Budget((1,), 300, 100, "1 epoch on 300 images: the tests' end-to-end check"),
        "quick": Budget((1, 3, 10, 30), None, 10_000, "30 epochs on all training images (MNIST: about 6 min on 2 CPU "
                        "cores)", step_sizes=STEP_SIZES),
        "paper": Budget(log_points(1667), None, 10_000, "10^8 training samples (1,667 MNIST epochs), about 5 h on 2 "
                        "CPU cores, resumable", step_sizes=STEP_SIZES),
    }

    @classmethod
    def reproduce(cls, budget: str, out: Path, *, dataset: str | None = None, data_dir: str | None = None,
                  quiet: bool = True) -> str:
        from ..viz.figures import fig_manifold

        dataset = dataset or "mnist"
        b, out = cls.BUDGETS[budget], Path(out)
        data = dataset_for(dataset, b.train_size, data_dir)
        points = tuned_curve(out / "runs", f"{dataset}-sgvb-nz2", paper_config(dataset, 2), data, lambda cfg: b.epochs,
                             bound_on(test=data.test_x[:b.eval_size]), b, quiet)
        fig_manifold(out / "runs" / f"{dataset}-sgvb-nz2" / f"lr{points[-1]['lr']:g}", out / "fig4.png", n=20,
                     scale=2 if dataset == "mnist" else 3)
        last = points[-1]
        page = "\n".join([
            f"# Kingma & Welling 2013, Figure 4 ({dataset}, budget {budget})", "", f"Budget: {b.note}.", "",
            "**The paper:** the learned data manifold of a generative model with a 2-D latent space learned with AEVB: "
            "linearly spaced coordinates on the unit square, mapped through the inverse CDF of the Gaussian prior, "
            "decoded to the mean of p(x|z). MNIST: the digits change smoothly across the plane, each class in "
            "its region; Frey Face: pose and expression along the two axes.", "",
            f"**Ours:** after {last['epoch']} epochs ({last['samples']:,} samples), test lower bound "
            f"{last['test']:.2f} nats per datapoint on {min(b.eval_size, len(data.test_x)):,} test images.", "",
            "![Figure 4](fig4.png)", ""])
        return write_outputs(out, "fig4", {"figure": "fig4", "dataset": dataset, "budget": budget, "note": b.note,
                                           "curve": points}, page)


class Fig5:
    name = "kingma2013-fig5"
    what = "Kingma & Welling 2013, Figure 5: samples from AEVB models with N_z = 2, 5, 10, 20 (MNIST)"
    options = ()
    GRID = (2, 5, 10, 20)
    BUDGETS = {
        "smoke": Budget((1,), 300, 100, "1 epoch on 300 images: the tests' end-to-end check"),
        "quick": Budget((1, 3, 10, 20), None, 10_000, "20 epochs on all training images for each of the 4 models, "
                        "about 16 min on 2 CPU cores", step_sizes=STEP_SIZES),
        "paper": Budget(log_points(1667), None, 10_000, "10^8 training samples (1,667 epochs) per model, about 20 h "
                        "for the 4 on 2 CPU cores, resumable", step_sizes=STEP_SIZES),
    }

    @classmethod
    def reproduce(cls, budget: str, out: Path, *, data_dir: str | None = None, quiet: bool = True) -> str:
        import aevb
        from ..viz.figures import samples_grid

        b, out = cls.BUDGETS[budget], Path(out)
        data = dataset_for("mnist", b.train_size, data_dir)
        fig, axes = panels(len(cls.GRID), 3.0, 3.3)
        rows, curves = [], {}
        for ax, nz in zip(axes, cls.GRID):
            curves[nz] = tuned_curve(out / "runs", f"mnist-sgvb-nz{nz}", paper_config("mnist", nz), data,
                                     lambda cfg: b.epochs, bound_on(test=data.test_x[:b.eval_size]), b, quiet)
            run = out / "runs" / f"mnist-sgvb-nz{nz}" / f"lr{curves[nz][-1]['lr']:g}"
            ax.imshow(samples_grid(aevb.load(run), 100, seed=0), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"({'abcd'[len(rows)]}) {nz}-D latent space")
            ax.axis("off")
            rows.append(f"| {nz} | {curves[nz][-1]['epoch']} | {curves[nz][-1]['test']:.2f} |")
        save_figure(fig, out / "fig5.png")
        page = "\n".join([
            f"# Kingma & Welling 2013, Figure 5 (MNIST, budget {budget})", "", f"Budget: {b.note}.", "",
            "**The paper:** random samples from learned generative models of MNIST for latent spaces of 2, 5, 10 "
            "and 20 dimensions (the means of p(x|z), z ~ p(z)); the samples grow sharper and more varied with more "
            "latent dimensions.", "", "**Ours** (test lower bound of each model, nats per datapoint):", "",
            "| N_z | epochs | test bound |", "| --- | --- | --- |", *rows, "", "![Figure 5](fig5.png)", ""])
        return write_outputs(out, "fig5", {"figure": "fig5", "budget": budget, "note": b.note,
                                           "curves": {str(k): v for k, v in curves.items()}}, page)
