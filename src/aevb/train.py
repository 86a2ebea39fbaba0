"""The one training loop, for every model: data lives in one tensor on the device, batches are
index slices of a random permutation, metrics are accumulated on the device and read once per epoch."""
from __future__ import annotations

import copy
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import rundir
from .config import Config
from .data import Dataset, balanced_labels, load_dataset
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .evaluate import elbo_terms
from .errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError
from .models import MODELS, build_model, is_semi_supervised, predict
from .nets import ACTIVATIONS, NETS
from .objectives import ESTIMATORS, SCHEDULES, ELBOTerms, semi_supervised
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
    cfg.validate()  # types and ranges again: a Config built in Python skips the checks of from_dict
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
        self.model = build_model(cfg.model, data.x_shape, data.n_classes)
        self.model.likelihood.check_support(data.train_x, "the training data")
        self.model.likelihood.check_support(data.test_x, "the test data")
        self.model.to(self.device)
        self.optimizer = OPTIMIZERS[t.optimizer](self.model.parameters(), lr=t.lr)
        self.x_train, self.x_test = data.train_x.to(self.device), data.test_x.to(self.device)
        self.estimator, self.schedule = ESTIMATORS[t.estimator], SCHEDULES[t.beta_schedule]
        self.semi_supervised = is_semi_supervised(self.model)
        if self.semi_supervised:
            self._split_labelled(data, t)
        else:
            for flag, value in (("--labelled", cfg.data.labelled), ("--labelled-every", t.labelled_every)):
                if value is not None:
                    raise ConfigError(f"{flag} applies to the semi-supervised models (m2, pcvae), not {cfg.model.model}")
        if t.beta_y is not None and not hasattr(self.model, "class_log_joint"):
            raise ConfigError(f"--beta-y weighs the KL of M2's class y; {cfg.model.model} has none (use --model m2)")
        self.steps = math.ceil(len(self.x_train) / t.batch_size)

    def _split_labelled(self, data: Dataset, t) -> None:
        """The balanced labelled set (chosen by the seed) and the unlabelled rest, which an epoch
        passes over; where every example is labelled, an epoch passes over the labelled set.
        With ``labelled_every`` K, a labelled batch gets a step of its own before every K-th
        unlabelled one, as Pyro's SS-VAE does (K ≈ N_u / N_l batches), instead of joining every step."""
        labelled = balanced_labels(data.train_y, self.cfg.data.labelled, t.seed)
        unlabelled = torch.ones(len(data.train_x), dtype=torch.bool)
        unlabelled[labelled] = False
        self.x_labelled = data.train_x[labelled].to(self.device)
        self.y_labelled = data.train_y[labelled].to(self.device)
        self.has_unlabelled = bool(unlabelled.any())
        self.x_train = data.train_x[unlabelled].to(self.device) if self.has_unlabelled else self.x_labelled
        self.alpha = self.model.default_alpha if t.alpha is None else t.alpha
        self.labelled_share = len(labelled) / len(data.train_x) if t.labelled_weight is None else t.labelled_weight
        self.labelled_batch = min(t.labelled_batch_size or t.batch_size, len(labelled))
        self.labelled_every = t.labelled_every if self.has_unlabelled else None

    def _loss(self, x: torch.Tensor, idx: torch.Tensor, beta: float) -> tuple[torch.Tensor, ELBOTerms, torch.Tensor | None]:
        """The loss of one step, the ELBO terms to log and the classification NLL (None without labels)."""
        t = self.cfg.train
        if not self.semi_supervised:
            terms = self.estimator(self.model, x, t.samples, beta)
            return -terms.objective.mean(), terms, None
        if not self.has_unlabelled:
            return self._semi_supervised(None, x, self.y_labelled[idx], beta, self.labelled_share)
        if self.labelled_every:
            return self._semi_supervised(x, None, None, beta, 0.0)
        return self._semi_supervised(x, *self._labelled_batch(), beta, self.labelled_share)

    def _labelled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randperm(len(self.x_labelled), device=self.device)[:self.labelled_batch]
        return self.binarized(self.x_labelled[pick]), self.y_labelled[pick]

    def _semi_supervised(self, x_u, x_l, y_l, beta: float, labelled_share: float):
        t = self.cfg.train
        return semi_supervised(self.model, x_u, x_l, y_l, t.estimator, t.samples, beta, self.alpha, labelled_share, t.beta_y)

    def _step(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at epoch {epoch}, step {step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def binarized(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x) if self.data.binarize == "dynamic" else x

    def epoch(self, epoch: int, quiet: bool = True) -> dict[str, float]:
        """One pass over the training data in random order (epochs count from 1)."""
        t = self.cfg.train
        n, bs = len(self.x_train), t.batch_size
        started = time.perf_counter()
        sums = torch.zeros(3, device=self.device)
        class_nll_sum, class_steps = torch.zeros((), device=self.device), 0
        perm = torch.randperm(n, device=self.device)
        bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{t.epochs}", disable=quiet, leave=False, mininterval=0.5)
        try:
            for step in range(self.steps):
                idx = perm[step * bs:(step + 1) * bs]
                x = self.binarized(self.x_train[idx])
                beta = self.schedule(t.beta, epoch - 1 + step / self.steps, t.epochs, t.warmup_epochs, t.cycles, t.cycle_ratio)
                if self.semi_supervised and self.labelled_every and step % self.labelled_every == 0:
                    loss, _, class_nll = self._semi_supervised(None, *self._labelled_batch(), beta, 1.0)
                    self._step(loss, epoch, step)
                else:
                    class_nll = None
                loss, terms, step_nll = self._loss(x, idx, beta)
                self._step(loss, epoch, step)
                sums += torch.stack([terms.elbo.sum(), terms.log_px_z.sum(), terms.kl.sum()]).detach()
                for nll in (class_nll, step_nll):
                    if nll is not None:
                        class_nll_sum, class_steps = class_nll_sum + nll.detach(), class_steps + 1
                bar.update()
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        elbo, log_px_z, kl = (sums / n).tolist()
        record = {"epoch": epoch, "samples_seen": epoch * n, "beta": beta, "train_elbo": elbo,
                  "train_log_px_z": log_px_z, "train_kl": kl, "seconds": seconds, "samples_per_sec": n / seconds}
        return record | ({"train_class_nll": class_nll_sum.item() / max(class_steps, 1)} if self.semi_supervised else {})

    def test(self) -> dict[str, float]:
        """Mean test ELBO terms under the training estimator."""
        t = self.cfg.train
        terms = elbo_terms(self.model, self.x_test, t.estimator, t.samples, t.eval_batch_size)
        out = {f"test_{k}": v for k, v in terms.items()}
        if self.semi_supervised and self.data.test_y is not None:
            y = self.data.test_y.to(self.device)
            out["test_accuracy"] = (predict(self.model, self.x_test, t.eval_batch_size) == y).float().mean().item()
        self.model.train()
        return out


# ---------------------------------------------------------------------------------------------
# faults: signals, NaN roll-back, and the epoch loop that survives them
#
# A checkpoint is only ever written at an epoch boundary (weights, optimizer state and the RNG
# state as the next epoch would find them), so that --resume is bit-identical to a run that was
# never stopped. A signal therefore never writes a mid-epoch checkpoint: the first SIGINT or
# SIGTERM lets the current epoch finish (test pass, metrics, checkpoint as usual) and then stops;
# a second one abandons the current epoch at once, discarding its partial work, and stops with the
# checkpoint of the last completed epoch. The step loop is untouched: the handler only sets a
# flag, read between epochs, or raises (second signal) wherever the interpreter is.

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Context manager holding SIGINT/SIGTERM handlers for one training run (in the main thread
    only: signals cannot be caught elsewhere); restores the previous handlers on exit."""

    def __init__(self, quiet: bool):
        self.quiet, self.signum, self.previous = quiet, None, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_NAMES:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(f"interrupted by {SIGNAL_NAMES[signum]}", signum)  # the second: abandon at once
        self.signum = signum
        if not self.quiet:  # os.write: print() may be in the middle of a write that this signal interrupted
            try:
                os.write(sys.stdout.fileno(), f"\n{SIGNAL_NAMES[signum]}: stopping when this epoch ends "
                                              "(send it again to stop at once, discarding the epoch)\n".encode())
            except (OSError, ValueError, AttributeError):
                pass


def interrupted(run: Path, signum: int, abandoned: bool) -> TrainingInterrupted:
    """The one line an interrupted run ends with: which checkpoint is kept and how to go on."""
    epoch = rundir.checkpoint_epoch(run)
    what = "the unfinished epoch was discarded" if abandoned else "stopped at the end of an epoch"
    kept = f"the checkpoint of epoch {epoch} is in {run}" if epoch else f"no epoch was completed in {run}"
    return TrainingInterrupted(f"interrupted by {SIGNAL_NAMES[signum]}: {what}; {kept}; "
                               f"continue with 'aevb train --resume --out {run}'", signum)


class Snapshot:
    """The trainer's state at the start of an epoch (the state of the last checkpoint), kept in
    memory for ``--on-nan rollback``: weights, optimizer state and RNG state."""

    def __init__(self, trainer: "Trainer"):
        self.model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self, trainer: "Trainer") -> None:
        trainer.model.load_state_dict(self.model)
        trainer.optimizer.load_state_dict(copy.deepcopy(self.optimizer))  # the optimizer would alias our tensors
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def check_parameters(model: torch.nn.Module, epoch: int) -> None:
    """The last update of an epoch can make weights NaN with a finite loss; never checkpoint them."""
    params = [p.detach().isfinite().all() for p in model.parameters()]
    if params and not torch.stack(params).all():
        raise TrainingDiverged(f"the parameters became NaN or Inf in epoch {epoch}")


def train(cfg: Config, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, data: Dataset | None = None) -> Path:
    """Train cfg's model on cfg's data; returns the run directory. With ``resume``, continue the run
    in ``out`` from its last checkpoint: its saved config holds, except ``epochs`` and the NaN
    policy (``on_nan``, ``nan_lr_factor``, ``nan_retries``), which come from cfg and are saved.

    Faults: a NaN or Inf loss (or weights) raises TrainingDiverged naming the epoch and step and
    keeps the last good checkpoint; with ``on_nan="rollback"`` the epoch is instead rolled back to
    its start, the learning rate multiplied by ``nan_lr_factor`` and the epoch run again, at most
    ``nan_retries`` times in the run (each epoch's metrics record ``lr`` and ``nan_rollbacks``).
    SIGINT/SIGTERM stop at an epoch boundary (see above) and raise TrainingInterrupted."""
    with StopRequest(quiet) as stop:
        meta = None
        if resume:
            if out is None:
                raise ConfigError("--resume needs the run directory: aevb train --resume --out RUN")
            saved, meta = rundir.read_config(Path(out))
            for key in ("epochs", "on_nan", "nan_lr_factor", "nan_retries"):
                setattr(saved.train, key, getattr(cfg.train, key))
            cfg = saved
        check_names(cfg)
        seed_everything(cfg.train.seed)
        data = data or load_dataset(cfg.data)
        trainer = Trainer(cfg, data)
        if stop.signum:
            raise TrainingInterrupted(f"interrupted by {SIGNAL_NAMES[stop.signum]} before training started; "
                                      "nothing was written", stop.signum)
        if resume:
            run = Path(out)
            start = rundir.load_checkpoint(run, trainer.model, trainer.optimizer)
            rundir.truncate_metrics(run, start)
            rundir.rewrite_config(run, cfg, meta)
            rollbacks = (rundir.read_metrics(run)[-1:] or [{}])[0].get("nan_rollbacks") or 0
        else:
            run = Path(out) if out else rundir.default_path(cfg)
            was_there = run.is_dir() and not any(run.iterdir())  # an empty folder the user made: keep it
            run = rundir.create(run, overwrite)
            start, rollbacks = 0, 0
        try:
            if not resume:
                rundir.write_config(run, cfg, data.x_shape, data.source, data.n_classes)
            if not quiet:
                print(f"run directory: {run}", flush=True)
            finished = run_epochs(trainer, run, start, rollbacks, stop, quiet)
        except TrainingInterrupted as e:
            raise interrupted(run, e.signum, abandoned=True) from None
        except UserError:
            if not resume and rundir.checkpoint_epoch(run) == 0:  # nothing worth keeping: leave no half-made run
                for path in ([*run.iterdir()] if was_there else [run]):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            raise
        if not finished:
            raise interrupted(run, stop.signum, abandoned=False)
    return run


def diverged(e: TrainingDiverged, run: Path, epoch: int, lr: float, rollbacks: int | None) -> TrainingDiverged:
    """The one line a diverged run stops with: where, what is kept, and what to do."""
    kept = epoch > 1 or rundir.checkpoint_epoch(run) > 0
    where = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {run}" if kept
             else "no epoch was completed, so nothing is kept")
    if rollbacks is not None:
        return TrainingDiverged(f"{e}; after {rollbacks} rollbacks (learning rate now {lr:.3g}), {where}: allow more "
                                "with --nan-retries, or look for the cause in the data, the model or --lr")
    fix = (f"continue from it with 'aevb train --resume --out {run} --on-nan rollback', which lowers the learning "
           f"rate (now {lr:.3g}) by itself, or start again with a lower --lr" if kept
           else f"start again with a lower --lr (now {lr:.3g}), or with --on-nan rollback")
    return TrainingDiverged(f"{e}; {where}: {fix}")


def run_epochs(trainer: Trainer, run: Path, start: int, rollbacks: int, stop: StopRequest, quiet: bool) -> bool:
    """Epochs start+1 .. epochs: train, test, metrics, checkpoint. Stops early when a signal came
    (returns False), at an epoch boundary."""
    cfg = trainer.cfg
    t = cfg.train
    epoch = start + 1
    while epoch <= t.epochs and not stop.signum:
        snapshot = Snapshot(trainer) if t.on_nan == "rollback" else None
        try:
            record = trainer.epoch(epoch, quiet)
            check_parameters(trainer.model, epoch)
        except TrainingDiverged as e:
            lr = trainer.optimizer.param_groups[0]["lr"]
            if snapshot is None or rollbacks >= t.nan_retries:
                raise diverged(e, run, epoch, lr, None if snapshot is None else rollbacks) from None
            snapshot.restore(trainer)
            for group in trainer.optimizer.param_groups:
                group["lr"] *= t.nan_lr_factor
            rollbacks += 1
            if not quiet:
                tqdm.write(f"{e}: rolled back to the start of epoch {epoch}, learning rate "
                           f"{lr:.3g} -> {lr * t.nan_lr_factor:.3g} (rollback {rollbacks} of {t.nan_retries})")
            continue
        record |= trainer.test()
        if snapshot is not None:
            record |= {"lr": trainer.optimizer.param_groups[0]["lr"], "nan_rollbacks": rollbacks}
        # metrics first: killed between the two, a resume truncates the metrics to the checkpoint
        rundir.append_metrics(run, record)
        rundir.save_checkpoint(run, trainer.model, trainer.optimizer, epoch)
        if not quiet:
            tqdm.write(f"epoch {epoch:>3}/{t.epochs}  train ELBO {record['train_elbo']:9.3f}  "
                       f"test ELBO {record['test_elbo']:9.3f}  test KL {record['test_kl']:7.3f}  "
                       + (f"test accuracy {record['test_accuracy']:.4f}  " if "test_accuracy" in record else "") +
                       f"{record['samples_per_sec']:8.0f} samples/s")
        epoch += 1
    return epoch > t.epochs
