"""torch.compile where it helps, and a plain fallback where the platform cannot compile.

Inductor needs a C++ compiler on the CPU and triton on CUDA; without them (or where compiling
fails) aevb runs eagerly and says so in one line, rather than stopping a run.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil

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


def compile_networks(model, x: torch.Tensor) -> str | None:
    """torch.compile each of the model's networks in place (the state dict keeps its keys), compiled
    on a first bound of ``x`` (RNG untouched). Where the platform's compiler is missing or fails, the
    networks stay eager and the returned warning says why."""
    missing = compiler_missing(x.device)
    if missing:
        return f"--compile needs {missing} on {x.device.type}, which is not installed here; training without compiling"
    nets = model.networks()
    for net in nets:
        net.compile()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if x.device.type == "cuda" else []):
            model.elbo(x)
    except Exception as e:  # noqa: BLE001  (any failure of the compiler stack means the same: run eagerly)
        for net in nets:
            net._compiled_call_impl = None
        return f"--compile failed here ({failure(e)}); training without compiling"
    return None


@functools.cache
def compiled(fn):
    """``fn`` compiled once per process (dynamic shapes: the last chunk of a pass may be shorter)."""
    return torch.compile(fn, dynamic=True)
