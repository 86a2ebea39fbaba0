"""Online learning on a drifting stream: "the method can be applied to online, non-stationary
settings" (Kingma & Welling 2013, section 2.3). A VAE (the pytorch/examples model: 784-400-20, Bernoulli,
Adam 1e-3, minibatches of 100) is trained by SGVB on a stream of MNIST training images that sees each
image once: first the digits 0-4 in random order, then, without warning, the digits 5-9. Every
``every`` images the test ELBO is measured on test images of each half.

What it shows: while the stream holds 0-4, their ELBO climbs and that of the unseen 5-9 climbs less
(shared strokes); after the switch the 5-9 curve overtakes within a few thousand images and the 0-4
curve falls: the model follows the stream and forgets what it no longer sees, as a plain
stochastic-gradient learner with a constant step size must; the fall stops, and partly recovers, as
the strokes that both halves share keep improving. The default run (15,000 images of each half, seed 0)
measured 0-4 at -150.5 nats at the switch, -162.6 four thousand images later and -156.4 at the end,
while 5-9 rose from -185.2 to -141.4. The table gives both ELBOs at the switch, at 0-4's worst after it,
and at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..config import Config
from ..data import Dataset, load_dataset
from ..rundir import write_text
from ..train import Trainer
from .base import LABS, Result, demonstration, save_figure

HALVES = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
BATCH = 100


def half(x: torch.Tensor, y: torch.Tensor, digits: tuple[int, ...]) -> torch.Tensor:
    return x[torch.isin(y, torch.tensor(digits))]


def stream(data: Dataset, per_half: int, generator: torch.Generator) -> torch.Tensor:
    """The training stream: ``per_half`` images of 0-4 in random order, then ``per_half`` of 5-9."""
    parts = []
    for digits in HALVES:
        x = half(data.train_x, data.train_y, digits)
        parts.append(x[torch.randperm(len(x), generator=generator)[:per_half]])
    return torch.cat(parts)


@LABS.register("online-drift")
@demonstration
def run(out_dir: Path, seed: int, quick: bool) -> Result:
    """Online SGVB on a stream of MNIST 0-4 then 5-9: the test ELBO of both halves over time (forgetting)."""
    per_half, every, test_n = (2000, 500, 500) if quick else (15000, 1000, 2000)
    cfg = Config()
    cfg.train.batch_size, cfg.train.seed, cfg.train.device = BATCH, seed, "cpu"
    mnist = load_dataset(cfg.data)
    g = torch.Generator().manual_seed(seed)
    x = stream(mnist, per_half, g)
    tests = [half(mnist.test_x, mnist.test_y, digits)[:test_n] for digits in HALVES]
    trainer = Trainer(cfg, Dataset("mnist", "a stream of MNIST 0-4, then 5-9", x, None, torch.cat(tests), None))
    algorithm = trainer.algorithm
    algorithm.begin_epoch()

    def measure(seen: int) -> dict:
        record = {"seen": seen}
        for digits, test in zip(HALVES, tests):
            record[f"{digits[0]}-{digits[-1]}"] = algorithm.test(test, None)["test_elbo"]
        trainer.model.train()
        return record

    curve = [measure(0)]
    for start in range(0, len(x), BATCH):  # each image once, in the stream's order
        idx = torch.arange(start, min(start + BATCH, len(x)))
        algorithm.step(idx, start // BATCH, 0.0)
        seen = start + len(idx)
        if seen % every == 0 or seen == len(x):
            curve.append(measure(seen))
    at_switch = next(r for r in curve if r["seen"] == per_half)
    worst = min((r for r in curve if r["seen"] > per_half), key=lambda r: r["0-4"])
    end = curve[-1]
    numbers = {"per_half": per_half, "every": every, "test_images_per_half": test_n, "batch_size": BATCH,
               "passes": 1, "seed": seed, "curve": curve}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(out_dir) / "lab-online-drift.json", json.dumps(numbers, indent=2) + "\n")
    rows = [[f"after {per_half} images of 0-4 (the switch)", per_half, at_switch["0-4"], at_switch["5-9"]],
            ["0-4 at its worst after the switch", worst["seen"], worst["0-4"], worst["5-9"]],
            [f"after {per_half} more of 5-9 (the end)", 2 * per_half, end["0-4"], end["5-9"]],
            ["change over the 5-9 half", per_half, end["0-4"] - at_switch["0-4"], end["5-9"] - at_switch["5-9"]]]
    figure = _plot(out_dir, curve, per_half)
    return Result("Online SGVB on MNIST 0-4 then 5-9, each image seen once: test ELBO (nats) of each half",
                  ["when", "images seen", "test ELBO 0-4", "test ELBO 5-9"], rows, figure)


def _plot(out_dir: Path, curve: list[dict], per_half: int) -> Path:
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    seen = [r["seen"] for r in curve]
    for name, colour in (("0-4", "C0"), ("5-9", "C1")):
        ax.plot(seen, [r[name] for r in curve], f"{colour}.-", label=f"test digits {name}")
    later = [r[name] for r in curve if r["seen"] >= per_half // 5 for name in ("0-4", "5-9")]
    low, high = min(later), max(later)  # the untrained start, hundreds of nats lower, stays below the axis
    ax.set_ylim(low - 0.15 * (high - low), high + 0.05 * (high - low))
    ax.axvline(per_half, color="0.5", ls="--", lw=1)
    ax.text(per_half, ax.get_ylim()[0], " stream switches to 5-9", color="0.4", fontsize=8, va="bottom")
    ax.set(title="Online SGVB on a drifting stream: the model forgets 0-4 once it sees only 5-9",
           xlabel="training images seen (each once)", ylabel="test ELBO (nats per image)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "online-drift")
