"""The memory of a batched pass, measured rather than guessed, and the chunks that keep a pass
within a budget.

Importance sampling sends the k samples of many datapoints through the decoder as one pass; how
many fit is decided here. The peak memory of a small probe pass is measured once per model and
data shape (three probe sizes give the bytes per sample, per datapoint and fixed: allocation is
deterministic) and the chunks are sized from that. On the CPU the record comes from the autograd
profiler's allocation events, on CUDA from the caching allocator's peak statistics.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes for one decoder pass
# On the CPU a pass above this runs slower, not faster: its tensors exceed the allocator's mmap
# threshold, so every pass maps fresh pages and faults them in (measured on the pytorch-examples VAE:
# 120k samples/s at 16-64 MiB, 72k at 512 MiB with a third of the time in the kernel). GPUs keep freed
# memory in PyTorch's caching allocator and get the whole budget.
CPU_PASS_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------
# the memory budget of one decoder pass


@dataclass
class PassCost:
    """Bytes one importance-sampling pass needs: ``per_sample`` × (datapoints × samples)
    + ``per_datapoint`` × datapoints + ``fixed``. ``measured`` is False where the device gave no
    allocation record and the numbers are the conservative estimate of ``estimated_cost``."""

    per_sample: float
    per_datapoint: float
    fixed: float
    measured: bool

    def bytes(self, batch: int, samples: int) -> float:
        return self.per_sample * batch * samples + self.per_datapoint * batch + self.fixed


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to the null device for a while: the profiler's C++ library logs a line at
    every start and stop, and reads its log level only when torch is loaded."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above what was allocated before; None
    where this device keeps no record. CUDA: the caching allocator's peak statistics; CPU: the
    allocation and free events of the autograd profiler, summed in time order."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    try:
        with _quiet_stderr(), torch.autograd.profiler.profile(profile_memory=True) as prof:
            out = fn()  # noqa: F841  (held until the events are read, so its frees do not count)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    except (AttributeError, RuntimeError):  # a torch without this record, or a profiler already running
        return None
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


def estimated_cost(model) -> PassCost:
    """A conservative guess where nothing can be measured: 8 decoder outputs per sample, 8 inputs per datapoint."""
    out = 4 * math.prod(model.x_shape) * model.likelihood.n_heads
    return PassCost(8 * out, 8 * 4 * math.prod(model.x_shape), 0, measured=False)


_COSTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(pass, shape, dtype, device, probe): PassCost}


@torch.no_grad()
def pass_cost(model, x: torch.Tensor, run: Callable, probe: int = 64) -> PassCost:
    """Measure the memory of one pass ``run(model, x, samples)`` at (1 datapoint, probe samples),
    (1, 2·probe) and (2, probe) and solve for the bytes per sample, per datapoint and fixed.
    Allocation is deterministic, so three probes pin the linear model down; a pass of a million
    samples costs what it predicts. Remembered per model, pass and datapoint shape (the weights'
    values do not change the memory)."""
    key = (run.__qualname__, tuple(x.shape[1:]), x.dtype, str(x.device), probe)
    try:
        return _COSTS[model][key]
    except (KeyError, TypeError):
        pass
    cost = _measure_cost(model, x, run, probe)
    try:
        _COSTS.setdefault(model, {})[key] = cost
    except TypeError:  # a model that cannot be weakly referenced is measured every time
        pass
    return cost


def _measure_cost(model, x: torch.Tensor, run: Callable, probe: int) -> PassCost:
    model.eval()
    x2 = x[:2] if len(x) >= 2 else x[:1].repeat(2, *[1] * (x.dim() - 1))
    p11, p12, p21 = (peak_bytes(lambda: run(model, xp, s), x.device)
                     for xp, s in ((x2[:1], probe), (x2[:1], 2 * probe), (x2, probe)))
    if None in (p11, p12, p21) or p12 <= p11:
        return estimated_cost(model)
    per_sample = (p12 - p11) / probe
    per_datapoint = max(0.0, p21 - p11 - per_sample * probe)
    fixed = max(0.0, p11 - per_sample * probe - per_datapoint)
    return PassCost(per_sample, per_datapoint, fixed, measured=True)


def pass_budget(max_memory: int, device) -> int:
    """The bytes one pass may use: max_memory, and on the CPU at most CPU_PASS_BYTES (faster there)."""
    return min(max_memory, CPU_PASS_BYTES) if torch.device(device).type == "cpu" else max_memory


def chunk_sizes(cost: PassCost, k: int, n: int, max_memory: int) -> tuple[int, int]:
    """(datapoints per pass, samples per pass) with cost.bytes(datapoints, samples) ≤ max_memory:
    all k samples of as many datapoints as fit, or, where one datapoint's k samples do not fit,
    as many samples of one datapoint as fit."""
    room = max_memory - cost.fixed
    if room < cost.per_sample + cost.per_datapoint:
        need = cost.per_sample + cost.per_datapoint + cost.fixed
        raise ConfigError(f"--max-memory {max_memory / 2**20:.3g} MiB is below what one decoder pass of a single "
                          f"sample needs ({need / 2**20:.3g} MiB); raise it")
    batch = int(room // (cost.per_sample * k + cost.per_datapoint))
    if batch >= 1:
        return min(batch, n), k
    return 1, min(k, int((room - cost.per_datapoint) // cost.per_sample))
