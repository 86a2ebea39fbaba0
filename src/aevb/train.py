"""The one training loop, for every model and algorithm: data lives in one tensor on the device (or in
``Rows`` read a batch at a time: ``aevb.data.streaming``), batches are index slices of a random
permutation, metrics are accumulated on the device and read once per epoch. What one step does belongs
to the training algorithm (``aevb.algorithms``)."""
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
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import rundir
from .algorithms import ALGORITHMS, default_algorithm
from .config import Config
from .data import Dataset, check_dataset, chunks, hold_out, load_dataset
from .distributed import epoch_seed, join, leave
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError
from .logging import check_loggers, open_loggers
from .lr_schedules import LR_SCHEDULES, step_schedule
from .models import MODELS, build_model
from .nets import ACTIVATIONS, NETS
from .objectives import ESTIMATORS, SCHEDULES
from .precision import check_precision
from .registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params, lr: float, **options) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015), fused into one kernel per step where the device has one (cpu, cuda):
    on 2 CPU cores the unfused update costs as much as the forward pass."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused, **options)


OPTIMIZERS.register("adagrad")(torch.optim.Adagrad)
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)


def optimizer_options(t) -> dict:
    """--optimizer-eps as the optimizer's ``eps`` (adam, adagrad, rmsprop; sgd has none)."""
    if t.optimizer_eps is None:
        return {}
    if t.optimizer == "sgd":
        raise ConfigError("--optimizer-eps applies to adam, adagrad and rmsprop; sgd has no ε: drop the flag")
    return {"eps": t.optimizer_eps}


def check_names(cfg: Config) -> None:
    """Look every registered name up before any work starts, so a typo fails at once."""
    cfg.validate()  # types and ranges again: a Config built in Python skips the checks of from_dict
    m, t = cfg.model, cfg.train
    for registry, name in ((MODELS, m.model), (NETS, m.net), (ACTIVATIONS, m.activation), (POSTERIORS, m.posterior),
                           (PRIORS, m.prior), (LIKELIHOODS, m.likelihood), (OPTIMIZERS, t.optimizer),
                           (ESTIMATORS, t.estimator), (SCHEDULES, t.beta_schedule), (LR_SCHEDULES, t.lr_schedule)):
        registry[name]
    if t.algorithm is not None:
        ALGORITHMS[t.algorithm]
    check_dataset(cfg.data)
    check_loggers(cfg)
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
    """One model, its optimizer, its training algorithm and the data on the device; ``epoch(n)``
    runs one pass and returns the training metrics of that pass. What a step does is the
    algorithm's (``cfg.train.algorithm``, by default the model's own: see ``aevb.algorithms``)."""

    def __init__(self, cfg: Config, data: Dataset):
        t = cfg.train
        self.cfg, self.data = cfg, data
        self.group, self.device = join(resolve_device(t.device))  # a torchrun launch: this rank's place and device
        if t.early_stopping is not None and data.val_x is None:
            raise ConfigError(f"--early-stopping {t.early_stopping} watches the validation ELBO, and there is no "
                              "validation set: add --val-fraction (e.g. 0.1)")
        if t.batch_size < self.group.world:
            raise ConfigError(f"--batch-size {t.batch_size} is the global batch and cannot be split over "
                              f"{self.group.world} processes; raise it to at least {self.group.world}")
        self.model = build_model(cfg.model, data.x_shape, data.n_classes, data.n_batches)
        for x, what in ((data.train_x, "the training data"), (data.test_x, "the test data")):
            for part in chunks(x):  # streamed data: one pass over the file, a chunk at a time
                self.model.check_support(part, what)
        self.model.to(self.device)
        self.optimizer = OPTIMIZERS[t.optimizer](self.model.parameters(), lr=t.lr, **optimizer_options(t))
        self.schedule = LR_SCHEDULES[t.lr_schedule](self.optimizer, t)
        t.algorithm = t.algorithm or default_algorithm(self.model)
        self.algorithm = ALGORITHMS[t.algorithm](cfg, self.model, self.optimizer, data, self.device, self.group)
        self.warnings = [w for w in (check_precision(t.precision, self.device),) if w] + self.algorithm.warnings
        self.x_test, self.y_test, self.s_test, self.x_val, self.y_val, self.s_val = (
            None if a is None else a.to(self.device)
            for a in (data.test_x, data.test_y, data.test_s, data.val_x, data.val_y, data.val_s))
        self.steps = math.ceil(self.algorithm.n / t.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the training examples. Under torchrun every rank draws the same one from
        the shared seed, and then seeds its own noise (so a resumed epoch draws what it drew)."""
        n, group = self.algorithm.n, self.group
        if not group.active:
            return torch.randperm(n, device=self.device)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.cfg.train.seed, epoch)))
        torch.manual_seed(epoch_seed(self.cfg.train.seed, epoch, group.rank))
        return perm.to(self.device)

    def epoch(self, epoch: int, quiet: bool = True) -> dict[str, float]:
        """One pass over the algorithm's training examples in random order (epochs count from 1); under
        torchrun each rank steps on its shard of every global batch of ``batch_size``."""
        t, algorithm, group = self.cfg.train, self.algorithm, self.group
        n, bs = algorithm.n, t.batch_size
        started = time.perf_counter()
        perm = self.permutation(epoch)
        algorithm.begin_epoch()
        bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{t.epochs}", disable=quiet, leave=False, mininterval=0.5)
        try:
            for step in range(self.steps):
                batch = perm[step * bs:(step + 1) * bs]
                idx = group.shard(batch)
                if group.active:
                    algorithm.shard_weight = group.world * len(idx) / len(batch)
                try:
                    algorithm.step(idx, step, epoch - 1 + step / self.steps)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"{e} at epoch {epoch}, step {step + 1}") from None
                bar.update()
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "samples_seen": epoch * n, **algorithm.end_epoch(), "seconds": seconds,
                "samples_per_sec": n / seconds}

    def test(self) -> dict[str, float]:
        """The algorithm's test metrics (the mean test ELBO terms under the training estimator, ...)."""
        out = self.algorithm.test(self.x_test, self.y_test, self.s_test)
        self.model.train()
        return out

    def validate(self) -> dict[str, float]:
        """The test metrics of the validation set, named val_* (val_elbo, ...); {} without one. Under
        torchrun, rank 0's, so that every rank takes the same early-stopping decision."""
        if self.x_val is None:
            return {}
        out = self.algorithm.test(self.x_val, self.y_val, self.s_val)
        self.model.train()
        return self.group.broadcast({"val_" + k.removeprefix("test_"): v for k, v in out.items()})


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

    def agreed(self, group) -> bool:
        """Whether to stop at this epoch boundary: under torchrun, when any rank was signalled (every
        rank then stops at the same boundary and names the signal)."""
        signum = int(group.all_max(self.signum or 0))
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)

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
    memory for ``--on-nan rollback``: weights, optimizer state, the algorithm's own state and RNG state."""

    def __init__(self, trainer: "Trainer"):
        self.model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.algorithm = {k: v.detach().clone() for k, v in trainer.algorithm.state_dict().items()}
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self, trainer: "Trainer") -> None:
        trainer.model.load_state_dict(self.model)
        trainer.optimizer.load_state_dict(copy.deepcopy(self.optimizer))  # the optimizer would alias our tensors
        trainer.algorithm.load_state_dict({k: v.clone() for k, v in self.algorithm.items()})
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
    in ``out`` from its last checkpoint: its saved config holds, except ``epochs``, the NaN
    policy (``on_nan``, ``nan_lr_factor``, ``nan_retries``) and the loggers (``logger``,
    ``log_images_every``), which come from cfg and are saved.

    Faults: a NaN or Inf loss (or weights) raises TrainingDiverged naming the epoch and step and
    keeps the last good checkpoint; with ``on_nan="rollback"`` the epoch is instead rolled back to
    its start, the learning rate multiplied by ``nan_lr_factor`` and the epoch run again, at most
    ``nan_retries`` times in the run (each epoch's metrics record ``lr`` and ``nan_rollbacks``).
    SIGINT/SIGTERM stop at an epoch boundary (see above) and raise TrainingInterrupted. With
    ``val_fraction`` a validation set is held out (``data.hold_out``, by the run's seed); with
    ``early_stopping`` the run ends normally, saying why, once its ELBO has not improved for that many epochs."""
    with StopRequest(quiet) as stop:
        meta = None
        if resume:
            if out is None:
                raise ConfigError("--resume needs the run directory: aevb train --resume --out RUN")
            saved, meta = rundir.read_config(Path(out))
            for key in ("epochs", "on_nan", "nan_lr_factor", "nan_retries", "logger", "log_images_every"):
                setattr(saved.train, key, getattr(cfg.train, key))
            cfg = saved
        check_names(cfg)
        seed_everything(cfg.train.seed)
        data = hold_out(data or load_dataset(cfg.data), cfg.data.val_fraction, cfg.train.seed)
        trainer = Trainer(cfg, data)
        main = trainer.group.main  # under torchrun rank 0 alone writes and prints
        quiet = quiet or not main
        for warning in trainer.warnings if main else ():
            print(f"aevb: warning: {warning}", file=sys.stderr)
        if stop.signum:
            raise TrainingInterrupted(f"interrupted by {SIGNAL_NAMES[stop.signum]} before training started; "
                                      "nothing was written", stop.signum)
        try:
            with ExitStack() as hold:
                return _train(trainer, data, out, resume, overwrite, quiet, meta, stop, hold)
        finally:
            leave()


def _train(trainer: Trainer, data: Dataset, out, resume: bool, overwrite: bool, quiet: bool, meta, stop,
           hold: ExitStack) -> Path:
    """The run directory (rank 0 makes it and holds its lock in ``hold``, the others are told where it
    is) and the epochs."""
    cfg, group = trainer.cfg, trainer.group

    def claim(run: Path) -> Path:
        hold.enter_context(rundir.training_lock(run))
        return run
    if resume:
        run = Path(out)

        def load() -> int:  # rank 0 first: loading tidies what a killed save left
            claim(run)
            epoch = rundir.load_checkpoint(run, trainer.model, trainer.optimizer, trainer.schedule, trainer.algorithm)
            rundir.truncate_metrics(run, epoch)
            rundir.rewrite_config(run, cfg, meta)
            return epoch
        start = group.on_main(load)
        if not group.main:
            rundir.load_checkpoint(run, trainer.model, trainer.optimizer, trainer.schedule, trainer.algorithm)
        rollbacks = (rundir.read_metrics(run)[-1:] or [{}])[0].get("nan_rollbacks") or 0
    else:
        run = Path(out) if out else rundir.default_path(cfg)
        was_there = run.is_dir() and not any(run.iterdir())  # an empty folder the user made: keep it
        run = group.on_main(lambda: claim(rundir.create(run, overwrite)))
        start, rollbacks = 0, 0
    try:
        if not resume and group.main:
            rundir.write_config(run, cfg, data.x_shape, data.source, data.n_classes, data.validation, data.batches)
        if not quiet:
            print(f"run directory: {run}", flush=True)
        with open_loggers(trainer, run, start) as log:
            finished = run_epochs(trainer, run, start, rollbacks, stop, quiet, log)
    except TrainingInterrupted as e:
        raise interrupted(run, e.signum, abandoned=True) from None
    except UserError:
        if not resume and group.main and rundir.checkpoint_epoch(run) == 0:  # nothing worth keeping: leave no half-made run
            for path in ([*run.iterdir()] if was_there else [run]):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    if not finished:
        raise interrupted(run, stop.signum, abandoned=False)
    group.barrier()
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


class BestEpoch:
    """The epoch of the best validation ELBO so far (the first of the highest ``val_elbo``), and
    --early-stopping's verdict on it. Built from the metrics of the epochs a run has done, so a
    resumed run knows both from metrics.jsonl: no state of its own is saved."""

    def __init__(self, records: list[dict], patience: int | None):
        self.epoch, self.elbo, self.patience = 0, -math.inf, patience
        for record in records:
            self.update(record)

    def update(self, record: dict) -> bool:
        """Take one epoch's metrics; whether its val_elbo beats every earlier one (NaN never does)."""
        elbo = record.get("val_elbo")
        if elbo is None or not elbo > self.elbo:
            return False
        self.epoch, self.elbo = record["epoch"], elbo
        return True

    def exhausted(self, epoch: int) -> bool:
        """Whether, after ``epoch``, --early-stopping's patience has run out."""
        return self.patience is not None and epoch - self.epoch >= self.patience

    def stopped(self, epoch: int, run: Path) -> str:
        """The line a run stopped early ends with: why, and where the best epoch is."""
        best = (f"the best was epoch {self.epoch} (validation ELBO {self.elbo:.3f}), whose weights are in "
                f"{run / rundir.BEST}" if self.epoch else "no epoch had a finite validation ELBO")
        return (f"early stopping: the validation ELBO has not improved for {epoch - self.epoch} epochs "
                f"(--early-stopping {self.patience}), stopped after epoch {epoch}; {best}")


# the metrics of an epoch's printed line (key, label, format), those that the algorithm reports
PROGRESS = (("train_elbo", "train ELBO", "9.3f"), ("test_elbo", "test ELBO", "9.3f"), ("test_kl", "test KL", "7.3f"),
            ("test_accuracy", "test accuracy", ".4f"), ("val_elbo", "val ELBO", "9.3f"),
            ("train_log_pxz", "train log p(x,z)", "9.3f"), ("train_accept", "HMC acceptance", ".3f"))


def run_epochs(trainer: Trainer, run: Path, start: int, rollbacks: int, stop: StopRequest, quiet: bool,
               log) -> bool:
    """Epochs start+1 .. epochs: train, test, validate, metrics (to ``log``, the run's loggers), checkpoint (and best.safetensors,
    written before the checkpoint, when the validation ELBO improves). Stops early when a signal came
    (returns False), at an epoch boundary, or when --early-stopping's patience ran out (returns True)."""
    cfg = trainer.cfg
    t = cfg.train
    best = BestEpoch(rundir.read_metrics(run) if start else [], t.early_stopping)
    epoch = start + 1
    while epoch <= t.epochs and not best.exhausted(epoch - 1) and not stop.agreed(trainer.group):
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
        record |= trainer.test() | trainer.validate()
        if snapshot is not None or trainer.schedule is not None:  # the rate this epoch ran at
            record["lr"] = trainer.optimizer.param_groups[0]["lr"]
        if snapshot is not None:
            record["nan_rollbacks"] = rollbacks
        step_schedule(trainer.schedule, record)
        improved = best.update(record)
        if trainer.group.main:  # metrics first: killed between the two, a resume truncates the metrics to the checkpoint
            log(record)
            if improved:
                rundir.save_best(run, trainer.model, epoch)
            rundir.save_checkpoint(run, trainer.model, trainer.optimizer, epoch, trainer.schedule,
                                   trainer.algorithm.state_dict())
        if not quiet:
            tqdm.write(f"epoch {epoch:>3}/{t.epochs}  " + "".join(f"{label} {record[key]:{form}}  " for key, label, form
                                                               in PROGRESS if key in record)
                       + f"{record['samples_per_sec']:8.0f} samples/s")
        epoch += 1
    if best.exhausted(epoch - 1) and epoch <= t.epochs:
        if trainer.group.main:
            print(best.stopped(epoch - 1, run), flush=True)
        return True
    return epoch > t.epochs
