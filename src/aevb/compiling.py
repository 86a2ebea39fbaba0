"""torch.compile where it helps, and a plain fallback where the platform cannot compile.

Inductor needs a C++ compiler on the CPU and triton on CUDA; without them (or where compiling
fails) aevb runs eagerly and says so in one line, rather than stopping a run.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from typing import Callable

import torch


def compiler_missing(device: torch.device | str) -> str | None:
    """What torch.compile lacks on this machine for ``device`` (None where nothing is missing)."""
    device = torch.device(device).type
    if device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "a C++ compiler"
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return "triton"
    return None


def failure(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


class CompiledLoss:
    """An algorithm's loss under torch.compile: forward and backward traced and fused as one graph
    (AOTAutograd), the random draws left to torch's own generator (``fallback_random``) so that a
    compiled run draws what an eager one does. Where the first compiled call fails, it says so in
    one line and computes eagerly from then on."""

    def __init__(self, loss: Callable):
        import torch._inductor.config as inductor

        inductor.fallback_random = True
        self.eager, self.run, self.tried = loss, torch.compile(loss), False

    def __call__(self, *args):
        if self.tried:
            return self.run(*args)
        self.tried = True
        state = torch.get_rng_state()
        try:
            return self.run(*args)
        except Exception as e:  # noqa: BLE001  (any failure of the compiler stack means the same: run eagerly)
            print(f"aevb: warning: --compile failed here ({failure(e)}); training without compiling", file=sys.stderr)
            torch.set_rng_state(state)
            self.run = self.eager
            return self.eager(*args)


@functools.cache
def compiled(fn):
    """``fn`` compiled once per process (dynamic shapes: the last chunk of a pass may be shorter)."""
    return torch.compile(fn, dynamic=True)
