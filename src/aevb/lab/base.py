"""What every demonstration shares: the registry, the result table and the figure writer."""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..registry import Registry
from ..train import seed_everything

LABS: Registry = Registry("lab demonstration")


@dataclass
class Result:
    """A demonstration's key figures as a table, and the PNG it wrote."""

    title: str
    columns: list[str]
    rows: list[list]
    figure: Path

    def format(self) -> str:
        """The table as aligned plain text: numbers right-aligned to 4 significant digits."""
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(c) for c in col) for col in zip(self.columns, *cells)]
        numeric = [all(isinstance(row[i], (int, float)) for row in self.rows) for i in range(len(self.columns))]

        def line(values):
            return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([self.title, line(self.columns), rule, *map(line, cells)])


def demonstration(fn):
    """Wrap a lab's ``run(out_dir, seed, quick)``: one seed drives torch, numpy and random, and
    the run uses one thread (its many tiny tensor ops lose more to thread synchronisation than
    they gain), restoring the caller's thread count after."""

    @functools.wraps(fn)
    def run(out_dir: Path, seed: int = 0, quick: bool = False) -> Result:
        seed_everything(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(Path(out_dir), seed, quick)
        finally:
            torch.set_num_threads(threads)

    return run


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def save_figure(fig: Figure, out_dir: Path, name: str) -> Path:
    """Write ``lab-<name>.png`` into out_dir (created if missing) by temp file and rename."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"lab-{name}.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def z_scores(estimate: torch.Tensor, exact: torch.Tensor, standard_error: torch.Tensor) -> torch.Tensor:
    """|estimate - exact| / standard error, elementwise. Where the standard error is 0 (a
    quantity the samples do not vary) it is 0 if the difference is 0 too, else inf."""
    diff = (estimate - exact).abs()
    return torch.where(standard_error > 0, diff / standard_error.clamp(min=torch.finfo(diff.dtype).tiny),
                       torch.where(diff > 0, torch.inf, 0.0))


def mean_and_se(values: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean along dim and its standard error s/√n."""
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / math.sqrt(n)
