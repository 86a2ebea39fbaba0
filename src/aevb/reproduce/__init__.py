"""Papers' tables and figures, each reproduced by one command with budgets (``aevb reproduce NAME
--budget smoke|quick|paper``): the name maps to its reproduction (a module, or a class in one), which
holds ``BUDGETS``, the ``options`` it takes besides the budget (rows, dataset) and ``reproduce``."""
from __future__ import annotations

from importlib import import_module

REPRODUCTIONS = {
    "burda2015": "burda2015",
    "kingma2013-fig2": "kingma2013:Fig2",
    "kingma2013-fig3": "kingma2013:Fig3",
    "kingma2013-fig4": "kingma2013:Fig4",
    "kingma2013-fig5": "kingma2013:Fig5",
}


def reproduction(name: str):
    """The module or class that reproduces ``name``."""
    module, _, attr = REPRODUCTIONS[name].partition(":")
    found = import_module(f"{__name__}.{module}")
    return getattr(found, attr) if attr else found


def listing() -> str:
    """Every reproduction with its budgets and what each costs."""
    lines = []
    for name in REPRODUCTIONS:
        r = reproduction(name)
        lines.append(f"{name}: {r.what}")
        lines += [f"  --budget {budget:<6} {b.note}" for budget, b in r.BUDGETS.items()]
    return "\n".join(lines)
