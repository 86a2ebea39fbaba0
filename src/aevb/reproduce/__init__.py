"""Papers' tables and figures, each reproduced by one command with budgets (``aevb reproduce NAME
--budget smoke|quick|paper``): the name maps to its module, which holds BUDGETS and ``reproduce``."""
from __future__ import annotations

from importlib import import_module

REPRODUCTIONS = {"burda2015": "Burda, Grosse & Salakhutdinov 2015, Table 1: test NLL and active units of VAE and "
                              "IWAE, k = 1, 5, 50, one and two stochastic layers (MNIST)"}


def module(name: str):
    return import_module(f"{__name__}.{name}")


def listing() -> str:
    """Every reproduction with its budgets and what each costs."""
    lines = []
    for name, what in REPRODUCTIONS.items():
        lines.append(f"{name}: {what}")
        lines += [f"  --budget {budget:<6} {b.note}" for budget, b in module(name).BUDGETS.items()]
    return "\n".join(lines)
