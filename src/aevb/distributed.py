"""Data-parallel training over processes started by torchrun: one process per CPU socket or GPU.

``torchrun --nproc-per-node N -m aevb train ...`` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; ``join`` makes them one
process group (gloo on the CPU, nccl on CUDA). Every rank builds the same model from the same
seed, the model is wrapped in DistributedDataParallel (which averages the gradients of the ranks
in each backward pass), each rank takes a disjoint shard of each global batch, and rank 0 alone
writes the run directory.

``--batch-size`` is the global batch: each of N ranks takes about batch_size / N of it, so the
averaged gradient is that of the whole batch and the learning rate means what it means in one
process; a run on N processes takes the steps of a one-process run, N times as fast at best.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, UserError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes: ``rank`` of ``world`` (1: no group)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0, which alone writes files and prints."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices: the ranks' parts are disjoint, cover it, and
        differ in length by one at most."""
        return batch.tensor_split(self.world)[self.rank] if self.active else batch

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (in place)."""
        if self.active:
            dist.all_reduce(t)
        return t

    def all_max(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([float(value)], device=device_of_group())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn):
        """``fn()`` on rank 0 alone (file work); its result, or the UserError it raised, on every rank."""
        if not self.active:
            return fn()
        result = error = None
        if self.main:
            try:
                result = fn()
            except UserError as e:
                error = e
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def device_of_group() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of a launch, or was not launched as one of several."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group of a torchrun launch; the group and this rank's device (cuda:LOCAL_RANK
    on CUDA). Outside a launch: no group and the device as it is."""
    if not launched():
        return Group(), device
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"multi-process training runs on cpu (gloo) or cuda (nccl), not {device.type}; use --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def epoch_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """A seed for one epoch (shared by every rank where ``rank`` is None, else this rank's own), so that
    every rank draws the same permutation and its own noise, and a resumed epoch draws what it drew."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).digest()[:8], "little") >> 1
