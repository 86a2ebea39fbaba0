"""The one training loop, for every model: data lives in one tensor on the device, batches are
index slices of a random permutation, metrics are accumulated on the device and read once per epoch."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import rundir
from .config import Config
from .data import Dataset, load_dataset
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .evaluate import elbo_terms
from .errors import ConfigError, TrainingDiverged
from .models import MODELS, build_model
from .nets import ACTIVATIONS, NETS
from .objectives import ESTIMATORS, SCHEDULES
from .registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params, lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015), fused into one kernel per step where the device has one (cpu, cuda):
    on 2 CPU cores the unfused update costs as much as the forward pass."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


OPTIMIZERS.register("adagrad")(torch.optim.Adagrad)
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)


def check_names(cfg: Config) -> None:
    """Look every registered name up before any work starts, so a typo fails at once."""
    m, t = cfg.model, cfg.train
    for registry, name in ((MODELS, m.model), (NETS, m.net), (ACTIVATIONS, m.activation), (POSTERIORS, m.posterior),
                           (PRIORS, m.prior), (LIKELIHOODS, m.likelihood), (OPTIMIZERS, t.optimizer),
                           (ESTIMATORS, t.estimator), (SCHEDULES, t.beta_schedule)):
        registry[name]
    if not cfg.data.dataset.startswith("npz:"):
        from .data import DATASETS
        DATASETS[cfg.data.dataset]
    resolve_device(t.device)


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"device {name!r} is not usable here ({str(e).splitlines()[0]}); use --device cpu or auto") from None
    return device


def seed_everything(seed: int) -> None:
    """One seed drives torch, numpy and random."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One model, its optimizer and its data on the device; ``epoch(n)`` runs one pass and returns
    the training metrics of that pass."""

    def __init__(self, cfg: Config, data: Dataset):
        t = cfg.train
        self.cfg, self.data = cfg, data
        self.device = resolve_device(t.device)
        self.model = build_model(cfg.model, data.x_shape)
        self.model.likelihood.check_support(data.train_x, "the training data")
        self.model.likelihood.check_support(data.test_x, "the test data")
        self.model.to(self.device)
        self.optimizer = OPTIMIZERS[t.optimizer](self.model.parameters(), lr=t.lr)
        self.x_train, self.x_test = data.train_x.to(self.device), data.test_x.to(self.device)
        self.estimator, self.schedule = ESTIMATORS[t.estimator], SCHEDULES[t.beta_schedule]
        self.steps = math.ceil(len(self.x_train) / t.batch_size)

    def epoch(self, epoch: int, quiet: bool = True) -> dict[str, float]:
        """One pass over the training data in random order (epochs count from 1)."""
        t, model, optimizer = self.cfg.train, self.model, self.optimizer
        n, bs = len(self.x_train), t.batch_size
        started = time.perf_counter()
        sums = torch.zeros(3, device=self.device)
        perm = torch.randperm(n, device=self.device)
        bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{t.epochs}", disable=quiet, leave=False, mininterval=0.5)
        for step in range(self.steps):
            x = self.x_train[perm[step * bs:(step + 1) * bs]]
            if self.data.binarize == "dynamic":
                x = torch.bernoulli(x)
            beta = self.schedule(t.beta, epoch - 1 + step / self.steps, t.epochs, t.warmup_epochs, t.cycles, t.cycle_ratio)
            terms = self.estimator(model, x, t.samples, beta)
            loss = -terms.objective.mean()
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(f"the loss became {loss.item()} at epoch {epoch}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([terms.elbo.sum(), terms.log_px_z.sum(), terms.kl.sum()]).detach()
            bar.update()
        bar.close()
        seconds = time.perf_counter() - started
        elbo, log_px_z, kl = (sums / n).tolist()
        return {"epoch": epoch, "samples_seen": epoch * n, "beta": beta, "train_elbo": elbo,
                "train_log_px_z": log_px_z, "train_kl": kl, "seconds": seconds, "samples_per_sec": n / seconds}

    def test(self) -> dict[str, float]:
        """Mean test ELBO terms under the training estimator."""
        t = self.cfg.train
        terms = elbo_terms(self.model, self.x_test, self.estimator, t.samples, t.eval_batch_size)
        self.model.train()
        return {f"test_{k}": v for k, v in terms.items()}


def train(cfg: Config, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, data: Dataset | None = None) -> Path:
    """Train cfg's model on cfg's data; returns the run directory. With ``resume``, continue the run
    in ``out`` from its last checkpoint (its saved config holds, except for ``epochs``)."""
    if resume:
        if out is None:
            raise ConfigError("--resume needs the run directory: aevb train --resume --out RUN")
        saved, _ = rundir.read_config(Path(out))
        saved.train.epochs = cfg.train.epochs
        cfg = saved
    check_names(cfg)
    seed_everything(cfg.train.seed)
    data = data or load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    if resume:
        run = Path(out)
        start = rundir.load_checkpoint(run, trainer.model, trainer.optimizer)
        rundir.truncate_metrics(run, start)
    else:
        run = rundir.create(Path(out) if out else rundir.default_path(cfg), overwrite)
        rundir.write_config(run, cfg, data.x_shape, data.source, data.n_classes)
        start = 0
    if not quiet:
        print(f"run directory: {run}", flush=True)
    for epoch in range(start + 1, cfg.train.epochs + 1):
        try:
            record = trainer.epoch(epoch, quiet)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; the last good checkpoint (epoch {epoch - 1}) is kept in {run}: "
                                   f"lower --lr (now {cfg.train.lr}) and continue with --resume") from None
        record |= trainer.test()
        rundir.save_checkpoint(run, trainer.model, trainer.optimizer, epoch)
        rundir.append_metrics(run, record)
        if not quiet:
            tqdm.write(f"epoch {epoch:>3}/{cfg.train.epochs}  train ELBO {record['train_elbo']:9.3f}  "
                       f"test ELBO {record['test_elbo']:9.3f}  test KL {record['test_kl']:7.3f}  "
                       f"{record['samples_per_sec']:8.0f} samples/s")
    return run
