"""Where the metrics of every epoch go: loggers behind one interface, registered by name (``--logger``).

- ``jsonl``: metrics.jsonl, one JSON line per epoch (``rundir.append_metrics``). It is the run's source
  of truth (a resume truncates it to the checkpoint; the report, the curves and ``read_metrics`` read
  it), so it is always written, whether listed or not.
- ``csv``: metrics.csv, the same records as a table.
- ``tensorboard``: event files in the run directory, for ``tensorboard --logdir runs/``.

A logger is opened once the run directory exists (on a resume, after metrics.jsonl was truncated to
the checkpoint's epoch ``start``), is handed each completed epoch's record before that epoch's
checkpoint is written, and is closed at the end. Epochs after ``start`` that a killed run had logged
are dropped, so a resume logs every epoch once. Only the main process (rank 0 under torchrun) logs.

(This module is ``aevb.logging``; aevb imports its own modules relatively, so ``import logging``
anywhere still means the standard library.)
"""
from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from pathlib import Path

import torch

from . import rundir
from .config import Config
from .errors import ConfigError
from .registry import Registry

LOGGERS: Registry = Registry("logger")
EMBEDDED = 1000  # test images whose posterior means go to TensorBoard's projector
RECONSTRUCTED = 32  # test images in the reconstruction grid


class Logger:
    """One destination of the per-epoch metrics. ``trainer`` gives the model, data and config; ``start``
    is the epoch the run continues after (0 for a fresh run)."""

    @staticmethod
    def check() -> None:
        """Raise ConfigError when the logger cannot work here (called before anything is written)."""

    def __init__(self, trainer, run: Path, start: int):
        self.trainer, self.run = trainer, run

    def epoch(self, record: dict) -> None:
        """Log one completed epoch's record (keys as in metrics.jsonl; ``record['epoch']`` counts from 1)."""

    def close(self) -> None:
        """Flush and release what the logger holds open."""


def names(cfg: Config) -> list[str]:
    """The configured loggers, jsonl first and always, each once."""
    return list(dict.fromkeys(["jsonl", *cfg.train.logger]))


def check_loggers(cfg: Config) -> None:
    """Every configured logger exists and can work here: a typo or a missing package fails before training."""
    for name in names(cfg):
        LOGGERS[name].check()


@contextmanager
def open_loggers(trainer, run: Path, start: int):
    """The run's loggers as one callable ``log(record)``, closed on leaving; none but on the main process."""
    loggers: list[Logger] = []
    try:
        for name in names(trainer.cfg) if trainer.group.main else ():
            loggers.append(LOGGERS[name](trainer, run, start))

        def log(record: dict) -> None:
            for logger in loggers:
                logger.epoch(record)
        yield log
    finally:
        for logger in loggers:
            logger.close()


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@LOGGERS.register("jsonl")
class Jsonl(Logger):
    """metrics.jsonl (``rundir.append_metrics``); a resume truncates it together with loading the checkpoint."""

    def epoch(self, record: dict) -> None:
        rundir.append_metrics(self.run, record)


@LOGGERS.register("csv")
class Csv(Logger):
    """metrics.csv: metrics.jsonl's records as a table, one row per epoch, rewritten in full (atomically) after
    every epoch. Its columns are the union of the records' keys in order of first appearance, so a metric that
    appears only later (``lr`` after a rollback, a test metric of some epochs) adds a column to the whole file;
    a cell is empty where the record lacks the key or holds null (a NaN or Inf). Opened on a resume, it is
    rebuilt from metrics.jsonl, already truncated to the checkpoint: no epoch appears twice."""

    def __init__(self, trainer, run: Path, start: int):
        super().__init__(trainer, run, start)
        self.records = rundir.read_metrics(run)
        if self.records:
            self.write()

    def epoch(self, record: dict) -> None:
        self.records.append(rundir.json_safe(record))
        self.write()

    def write(self) -> None:
        columns = list(dict.fromkeys(key for record in self.records for key in record))

        def write(path: Path) -> None:
            with open(path, "w", newline="") as f:  # floats as repr(): they read back exactly, as from the JSON
                writer = csv.DictWriter(f, columns, restval="")
                writer.writeheader()
                writer.writerows(self.records)
        rundir.atomic_write(self.run / rundir.METRICS_CSV, write)


def summary_writer():
    """torch's SummaryWriter; ConfigError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--logger tensorboard needs the tensorboard package: pip install aevb[tensorboard], "
                          "or leave tensorboard out of --logger") from None
    return SummaryWriter


@contextmanager
def aside(model: torch.nn.Module):
    """Run the model for a figure in the middle of training without changing the training: eval mode, no
    gradients, and the random state (CPU and the model's accelerator) put back afterwards, so that a run
    goes on (and ``--resume`` stays bit-identical) as without the figure; train mode again after."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train()


@LOGGERS.register("tensorboard")
class TensorBoard(Logger):
    """TensorBoard event files in the run directory, through ``torch.utils.tensorboard.SummaryWriter``:

    - every numeric metric of every epoch as a scalar of the same name, at step = epoch;
    - the grid of prior samples (``samples``) and of test images beside their reconstructions
      (``reconstructions``), the figures of ``aevb plot``, every ``log_images_every`` epochs and at the last;
    - at the last epoch, the posterior means E[z|x] of the first 1000 test images in the projector
      (``posterior_means``, with the images as sprites and the labels as metadata), and the flattened config
      as hyper-parameters with the final test metrics (the HParams tab).

    On a resume the writer purges the events of epochs after the checkpoint (``purge_step``), so each epoch
    shows once. Images and sprites need image data; for other data only the scalars, hparams and means go."""

    check = staticmethod(summary_writer)

    def __init__(self, trainer, run: Path, start: int):
        from .viz.figures import is_image_data  # the figures' layer, imported only where figures are logged

        super().__init__(trainer, run, start)
        self.images = is_image_data(trainer.data.x_shape)
        self.writer = summary_writer()(log_dir=str(run), purge_step=start + 1 if start else None)

    def epoch(self, record: dict) -> None:
        t, step = self.trainer.cfg.train, record["epoch"]
        for key, value in record.items():
            if key != "epoch" and is_number(value):
                self.writer.add_scalar(key, value, step)
        last = step == t.epochs
        if self.images and (step % t.log_images_every == 0 or last):
            self.add_images(step)
        if last:
            self.add_embedding(step)
            self.add_hparams(record)
        self.writer.flush()

    def add_images(self, step: int) -> None:
        from .viz.figures import reconstructions_grid, samples_grid

        model = self.trainer.model
        with aside(model):
            grids = {"samples": samples_grid(model), "reconstructions":
                     reconstructions_grid(model, self.trainer.x_test[:RECONSTRUCTED])}
        for tag, grid in grids.items():
            self.writer.add_image(tag, grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")

    def add_embedding(self, step: int) -> None:
        from .evaluate import posterior_means
        from .viz.figures import as_images

        model, x, y = self.trainer.model, self.trainer.x_test[:EMBEDDED], self.trainer.y_test
        with aside(model):
            means = posterior_means(model, x)
        sprites = as_images(x, model.x_shape).float().clamp(0, 1).cpu() if self.images else None
        self.writer.add_embedding(means.cpu(), metadata=None if y is None else y[:len(x)].tolist(),
                                  label_img=sprites, global_step=step, tag="posterior_means")

    def add_hparams(self, record: dict) -> None:
        """The flattened config (config keys are unique across its sections) as hyper-parameters, and the final
        test metrics as their metrics. Written into this run's own event file: the HParams tab reads each metric's
        value from the scalar of the same name, already logged, where ``SummaryWriter.add_hparams`` would open a
        second run in a sub-folder holding copies of them."""
        from torch.utils.tensorboard.summary import hparams

        config = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                  for section in self.trainer.cfg.to_dict().values() for key, value in section.items()}
        metrics = {key: value for key, value in record.items()
                   if key.startswith("test_") and is_number(value) and math.isfinite(value)}
        for summary in hparams(config, metrics):
            self.writer.file_writer.add_summary(summary, record["epoch"])

    def close(self) -> None:
        self.writer.close()
