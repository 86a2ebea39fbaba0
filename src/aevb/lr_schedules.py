"""Learning-rate schedules, registered by name (``--lr-schedule``), all from torch.optim.lr_scheduler
and stepped once per epoch by the Trainer (after the epoch's test pass):

  constant  no schedule
  burda     Burda et al. 2015, section 5: 3^i epochs at 0.001 · 10^(-i/7), i = 0 … 7 (3,280 epochs in
            all), as a MultiplicativeLR that divides the rate by 10^(1/7) at each stage's first epoch;
            from the configured --lr, so with --lr 0.001 it is the paper's table
  step      StepLR: × lr_gamma every lr_step epochs (default a third of the run)
  cosine    CosineAnnealingLR from --lr to 0 over the run's epochs
  plateau   ReduceLROnPlateau on the training bound: × lr_gamma after lr_patience epochs without a better one

Every one is chainable (it multiplies the current rate), so that ``--on-nan rollback``'s lowered
rate persists under it; its state travels in the checkpoint, so that --resume is bit-identical.
"""
from __future__ import annotations

from torch.optim import Optimizer, lr_scheduler

from .registry import Registry

LR_SCHEDULES: Registry = Registry("learning-rate schedule")

BURDA_STAGES = 8  # i = 0 … 7
BURDA_STAGE_STARTS = frozenset(sum(3**j for j in range(i)) for i in range(1, BURDA_STAGES))  # epochs 1, 4, 13, …, 1093
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3,280


def burda_rate(epoch: int, lr: float = 1e-3) -> float:
    """The rate of (0-based) ``epoch`` in Burda et al.'s table: lr · 10^(-i/7), i the epoch's stage."""
    stage = sum(1 for start in BURDA_STAGE_STARTS if start <= epoch)
    return lr * 10 ** (-stage / 7)


def _burda_factor(epoch: int) -> float:
    return 10 ** (-1 / 7) if epoch in BURDA_STAGE_STARTS else 1.0


@LR_SCHEDULES.register("constant")
def constant(optimizer: Optimizer, t) -> None:
    return None


@LR_SCHEDULES.register("burda")
def burda(optimizer, t):
    return lr_scheduler.MultiplicativeLR(optimizer, _burda_factor)


@LR_SCHEDULES.register("step")
def step(optimizer, t):
    return lr_scheduler.StepLR(optimizer, t.lr_step or max(1, t.epochs // 3), t.lr_gamma)


@LR_SCHEDULES.register("cosine")
def cosine(optimizer, t):
    return lr_scheduler.CosineAnnealingLR(optimizer, t.epochs)


@LR_SCHEDULES.register("plateau")
def plateau(optimizer, t):
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.lr_gamma, patience=t.lr_patience)


def step_schedule(schedule, record: dict) -> None:
    """One epoch's step of ``schedule`` (None: nothing); plateau watches the epoch's training ELBO."""
    if schedule is None:
        return
    if isinstance(schedule, lr_scheduler.ReduceLROnPlateau):
        schedule.step(record["train_elbo"])
    else:
        schedule.step()
