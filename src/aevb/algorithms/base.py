"""The contract of a training algorithm.

An algorithm is built once per run from the config, the model, its optimizer and the data, and
owns everything that is particular to how it trains: which examples an epoch passes over (``x``),
one optimisation step on a batch of their indices (loss, backward, optimizer step), and the
metrics of its steps and of the test set. The ``Trainer`` owns what every algorithm shares: the
data on the device, the epoch's permutation, checkpoints, resume, signals and the metrics file;
it calls ``begin_epoch``, ``step`` for each batch and ``end_epoch``, then ``test``.

Precision is the algorithm's too: ``--precision`` wraps the model's networks once (see
``aevb.precision``), ``update`` scales fp16 losses, and test passes run in fp32; ``--compile``
compiles its ``loss`` (see ``aevb.compiling``).

β and the estimator reach the model as one value, ``estimator_at(progress)``: an ``Estimator``
with the configured name, samples and free bits and the scheduled β. ``update`` clips the gradient
norm where --grad-clip asks (after unscaling an fp16 gradient).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grad_norm_

from ..compiling import CompiledLoss, compiler_missing
from ..config import Config
from ..data import Dataset
from ..distributed import Group
from ..errors import ConfigError, TrainingDiverged
from ..evaluate import elbo_terms
from ..models import ClassLatent, Classifier, LatentModel, reported_terms
from ..models.theta import theta_penalty
from ..objectives import SCHEDULES, ELBOTerms, Estimator
from ..precision import MixedPrecision
from ..registry import Registry

ALGORITHMS: Registry = Registry("algorithm")


def refuse_foreign_options(t, name: str, own: tuple[str, ...]) -> None:
    """ConfigError where ``t`` sets, to other than its default, an option that another algorithm reads
    (its ``options``) and algorithm ``name`` does not: it would be silently ignored."""
    defaults = type(t)()
    for other in ALGORITHMS:
        for option in ALGORITHMS[other].options:
            if option not in own and getattr(t, option) != getattr(defaults, option):
                raise ConfigError(f"--{option.replace('_', '-')} applies to --algorithm {other}, not {name}; drop it")


def default_algorithm(model: LatentModel) -> str:
    """The algorithm a model trains with unless told otherwise: semi-supervised for a model with a
    classifier, sgvb for the rest."""
    return "semi-supervised" if isinstance(model, Classifier) else "sgvb"


class _Loss(nn.Module):
    """An algorithm's ``loss`` as the forward of a module that holds the model, so that
    DistributedDataParallel, which synchronises gradients of what its forward computed, can wrap it."""

    def __init__(self, model: nn.Module, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args):
        return self.loss(*args)


class Algorithm(ABC):
    """One training algorithm for ``model``. Subclasses set ``x`` (the training examples an epoch
    passes over: a tensor on the device, or ``Rows`` that read each batch onto it, aevb.data.streaming)
    and implement ``loss`` and ``step``; ``requires`` is the capability
    a model needs for it, ``requirement`` says it in words for the error. Under torchrun (``group``
    active) ``forward`` runs ``loss`` through DistributedDataParallel; ``skips_parameters`` says
    that some steps leave some parameters unused (DDP must then look for them). ``options`` are the
    TrainConfig fields that this algorithm alone reads: any other algorithm refuses them where they
    are set. An algorithm with state of its own beyond the model and optimizer (Monte Carlo EM's
    chains) returns it from ``state_dict``, which checkpoints save and a resume hands back to
    ``load_state_dict``."""

    requires: type = LatentModel
    requirement: str = "a latent-variable model"
    skips_parameters: bool = False
    takes_batches: bool = False  # passes each datapoint's batch s (--batch-key) to the model
    options: tuple[str, ...] = ()

    def __init__(self, cfg: Config, model: LatentModel, optimizer: torch.optim.Optimizer, data: Dataset,
                 device: torch.device, group: Group = Group()):
        t = cfg.train
        if not isinstance(model, self.requires):
            raise ConfigError(f"--algorithm {self.registered_name} trains {self.requirement}; "
                              f"{cfg.model.model} is not one")
        if data.train_s is not None and not self.takes_batches:
            raise ConfigError(f"--batch-key conditions the decoder on each datapoint's batch, which --algorithm "
                              f"{self.registered_name} does not pass to the model: train with --algorithm sgvb, or "
                              "drop --batch-key")
        if t.beta_y is not None and not isinstance(model, ClassLatent):
            raise ConfigError(f"--beta-y weighs the KL of M2's class y; {cfg.model.model} has none (use --model m2)")
        refuse_foreign_options(t, self.registered_name, self.options)
        self.cfg, self.model, self.optimizer, self.device, self.group = cfg, model, optimizer, device, group
        self.precision = MixedPrecision(t.precision, device)
        self.precision.wrap(model)
        self.scaler = self.precision.scaler()
        missing = compiler_missing(device) if t.compile else None
        self.warnings = [f"--compile needs {missing} on {device.type}, which is not installed here; "
                         "training without compiling"] if missing else []
        loss = CompiledLoss(self.loss) if t.compile and not missing else self.loss
        self.forward = loss if not group.active else DistributedDataParallel(
            _Loss(model, loss), device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=self.skips_parameters)
        self.shard_weight = 1.0  # this rank's share of the global batch × world size (the Trainer sets it)
        self.theta = (cfg.model.theta, cfg.model.theta_prior_scale, len(data.train_x))
        self.dynamic = data.binarize == "dynamic"
        self.schedule = SCHEDULES[t.beta_schedule]
        self.terms = reported_terms(model)
        self.beta = t.beta
        self.grad_clip = t.grad_clip
        self.x: torch.Tensor

    @property
    def n(self) -> int:
        """Training examples in one epoch."""
        return len(self.x)

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh Bernoulli draw of each pixel in every batch for dynamically binarised data."""
        return torch.bernoulli(x) if self.dynamic else x

    def estimator_at(self, progress: float) -> Estimator:
        """The configured estimator (and --free-bits) with β as the schedule sets it ``progress`` epochs in."""
        t = self.cfg.train
        self.beta = self.schedule(t.beta, progress, t.epochs, t.warmup_epochs, t.cycles, t.cycle_ratio)
        return Estimator(t.estimator, t.samples, self.beta, t.beta_y, t.free_bits)

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` plus the θ term of ``--theta`` (models/theta.py), refused
        where it is not finite on any rank (the Trainer says where). Under DDP each rank's mean is
        weighted by its share of the global batch, so that the averaged gradient is that of the
        global batch's mean."""
        if self.group.active:
            loss = loss * self.shard_weight
        penalty = theta_penalty(self.model, *self.theta)  # -log p(θ)/N or KL(q(θ)‖p(θ))/N: the same on every rank
        if penalty is not None:
            loss = loss + penalty
            self.theta_term = penalty.detach()
        finite = torch.isfinite(loss)
        if self.group.active:
            finite = self.group.all_sum((~finite).float().reshape(1)) == 0
        if not finite:
            raise TrainingDiverged(f"the loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.clip()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            self.clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def clip(self) -> None:
        """--grad-clip c: rescale the gradient g of all parameters to g·min(1, c/‖g‖₂)
        (torch.nn.utils.clip_grad_norm_), adding ‖g‖₂ before clipping to the epoch's sum (a step whose fp16
        gradient overflowed, which the GradScaler skips, is left out of the mean)."""
        if self.grad_clip is None:
            return
        norm = clip_grad_norm_(self.model.parameters(), self.grad_clip)
        finite = torch.isfinite(norm)
        self.grad_norms += torch.stack([torch.where(finite, norm, 0.0), finite.float()]).detach()

    def begin_epoch(self) -> None:
        self.sums = torch.zeros(len(self.terms), device=self.device)
        self.grad_norms = torch.zeros(2, device=self.device)  # --grad-clip: the sum of the norms, the steps counted

    def accumulate(self, terms: ELBOTerms) -> None:
        """Add a batch's bound terms to the epoch's sums (on the device: read once per epoch)."""
        self.sums += torch.stack([getattr(terms, name).sum() for name in self.terms]).detach()

    @abstractmethod
    def loss(self, *batch):
        """The loss of one step (a scalar to minimise) and what the step logs."""

    @abstractmethod
    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        """One optimisation step on the examples ``x[idx]``, the ``step``-th of its epoch (from 0),
        ``progress`` epochs into the run."""

    def end_epoch(self) -> dict[str, float]:
        """The epoch's training metrics: β at its end and the mean bound terms per example, and those
        of ``update_metrics``."""
        sums = self.group.all_sum(self.sums)  # each rank summed its shards
        return ({"beta": self.beta} | {f"train_{name}": v for name, v in zip(self.terms, (sums / self.n).tolist())}
                | self.update_metrics())

    def update_metrics(self) -> dict[str, float]:
        """What ``update`` measured in the epoch: the θ term of --theta map or vb (``train_theta_term``),
        and with --grad-clip ``train_grad_norm``, the mean gradient norm before clipping (DDP's is the
        same on every rank)."""
        theta = {"train_theta_term": self.theta_term.item()} if self.theta[0] != "ml" else {}
        norm, steps = self.grad_norms.tolist()
        return theta | ({"train_grad_norm": norm / steps if steps else math.nan} if self.grad_clip is not None else {})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The algorithm's own state for a checkpoint, beyond the model's and the optimizer's: none here."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take back what ``state_dict`` saved (a ValueError where it does not fit: the checkpoint then
        cannot be resumed)."""
        if state:
            raise ValueError(f"unexpected algorithm state {sorted(state)}")

    def test(self, x: torch.Tensor, y: torch.Tensor | None, s: torch.Tensor | None = None) -> dict[str, float]:
        """Test metrics in fp32 whatever the training precision: the mean bound terms under the
        training estimator (β = 1), given the batch s of each datapoint where the data have one."""
        t = self.cfg.train
        with self.precision.full():
            terms = elbo_terms(self.model, x, Estimator(t.estimator, t.samples), t.eval_batch_size, s)
        return {f"test_{name}": v for name, v in terms.items()}
