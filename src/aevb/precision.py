"""Mixed precision: the networks of a model in bf16 or fp16, everything else in fp32.

``--precision`` takes Lightning's names: ``32`` (fp32 throughout), ``bf16-mixed`` and ``16-mixed``
(the matrix products of the networks under ``torch.autocast``; weights, optimizer state, gradients
and every log-density, KL, log-sum-exp and loss in fp32). Only the networks (``model.networks()``)
are wrapped: their outputs are cast back to fp32 before any distribution is built from them, so
no reduction of the bound ever runs in low precision. fp16 needs loss scaling (``GradScaler``)
and runs on CUDA only; bf16 has fp32's range and needs none.

bf16 is fast only where the hardware has it: on a CPU with avx512_bf16 or amx_bf16 a bf16 matmul
at the default net's shapes ran ~3.6× fp32; on AVX2 alone it is emulated and ran ~0.1× fp32.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or amx_bf16 among its flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no way to tell here, so do not promise speed
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(name: str, device: torch.device) -> str | None:
    """ConfigError where ``name`` cannot run on ``device``; a warning (or None) where it runs slowly."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    if name == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"--precision 16-mixed needs CUDA (fp16 with loss scaling); on {device.type} use "
                          "--precision bf16-mixed or 32")
    if name == "bf16-mixed" and device.type == "cpu" and not native_bf16_cpu():
        return ("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): bf16-mixed is emulated "
                "and slower than --precision 32 here")
    return None


class MixedPrecision:
    """Runs a model's networks under autocast to ``name``'s dtype, their outputs cast back to fp32.
    ``wrap`` replaces each network's ``forward`` in place (the state dict is unchanged) for as long
    as the model trains; ``enabled`` switches autocast off without unwrapping (fp32 test passes)."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.dtype, self.device_type = name, PRECISIONS[name], torch.device(device).type
        self.enabled = self.dtype is not None
        self.wrapped: list = []

    def wrap(self, model) -> None:
        if self.dtype is None:  # fp32: nothing to wrap, nothing to pay
            return
        for net in model.networks():
            net.forward = self._mixed(net.forward)
            self.wrapped.append(net)

    def unwrap(self) -> None:
        """Give the wrapped networks their own forward back."""
        for net in self.wrapped:
            net.__dict__.pop("forward", None)
        self.wrapped = []

    def _mixed(self, forward):
        @functools.wraps(forward)
        def run(*args, **kwargs):
            with torch.autocast(self.device_type, self.dtype, enabled=self.enabled):
                out = forward(*args, **kwargs)
            return out.float() if self.enabled else out
        return run

    @contextlib.contextmanager
    def full(self):
        """fp32 within the block."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling for fp16, which underflows without it; None for fp32 and bf16."""
        return torch.amp.GradScaler(self.device_type) if self.dtype is torch.float16 else None


@contextlib.contextmanager
def evaluated_in(model, name: str, device):
    """Evaluate ``model`` in precision ``name`` within the block (fp32 for '32'), and restore it after."""
    check_precision(name, torch.device(device))
    mixed = MixedPrecision(name, device)
    mixed.wrap(model)
    try:
        yield
    finally:
        mixed.unwrap()
