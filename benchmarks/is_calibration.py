"""Is the standard error of `aevb evaluate`'s importance-sampled log-likelihood calibrated?

Independent replicates of log p̂(x) (k samples each, fresh draws) on the same test images give the spread
the standard error should predict. Reported: (a) on images with Pareto k̂ ≤ 0.7 in every replicate, the mean
reported per-image standard error (calibrated, and the delta method's) against the mean standard deviation
of the replicates; (b) the share of images flagged k̂ > 0.7 (and 0.5 < k̂ ≤ 0.7); (c) the standard error of the
mean over images (summary's ``standard_error``) against the standard deviation of the replicates' means.
Targets: (a) and (c) within ±30%. With 10 replicates a standard deviation is itself uncertain by ~24%
(1/√(2·9)), which averaging over images removes in (a) and not in (c).

    python benchmarks/is_calibration.py                     # trains the pytorch-examples model (~45 s) first
    python benchmarks/is_calibration.py --run RUN --n 500 --replicates 10 --k 5000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import aevb
from aevb.data import load_dataset
from aevb.evaluate import importance_estimate
from aevb.inference.importance import GOOD_KHAT, RELIABLE_KHAT, summary
from aevb.memory import DEFAULT_MAX_MEMORY
from aevb.rundir import read_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory (default: train configs/pytorch-examples.toml)")
    parser.add_argument("--n", type=int, default=500, help="test images")
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--k", type=int, default=5000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            subprocess.run([sys.executable, "-m", "aevb.cli", "train", "--config",
                            str(ROOT / "configs/pytorch-examples.toml"), "--out", str(run), "--no-report"], check=True)
        model = aevb.load(run)
        cfg, _ = read_config(run)
        cfg.data.train_size, cfg.data.test_size = 1, args.n
        x = load_dataset(cfg.data).test_x
    started = time.perf_counter()
    estimates = []
    for r in range(args.replicates):
        torch.manual_seed(r)
        estimates.append(importance_estimate(model, x, args.k, DEFAULT_MAX_MEMORY))
        print(f"  replicate {r + 1}/{args.replicates}: {time.perf_counter() - started:.0f} s", flush=True)
    stack = lambda name: torch.stack([getattr(e, name) for e in estimates])  # noqa: E731  (replicates, images)
    log_p, khat, se, delta = stack("log_p"), stack("khat"), stack("se_all"), stack("delta_se")
    spread = log_p.std(0)  # per image, over replicates
    reliable = (khat <= RELIABLE_KHAT).all(0)

    print(f"\n{args.n} test images, {args.replicates} replicates of k = {args.k}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s")
    for title, images in ((f"(a) images with k̂ ≤ {RELIABLE_KHAT} in every replicate", reliable),
                          (f"    and with k̂ ≤ {RELIABLE_KHAT} in replicate 1", khat[0] <= RELIABLE_KHAT),
                          ("    and all images, flagged or not (the s.e. the mean over images uses)", khat[0] > -1)):
        print(f"{title}: {int(images.sum())}")
        print(f"    mean sd of the replicates          {spread[images].mean().item():8.4f} nats")
        for name, s in (("calibrated", se), ("delta method", delta)):
            ratio = s[:, images].mean().item() / spread[images].mean().item()
            print(f"    mean {name + ' s.e.':<30}{s[:, images].mean().item():8.4f}  ratio {ratio:.2f}")
    flagged = khat > RELIABLE_KHAT
    print(f"(b) share of images with k̂ > {RELIABLE_KHAT}: {flagged.double().mean().item():.4f} per replicate, "
          f"{flagged.any(0).double().mean().item():.4f} in any replicate; with {GOOD_KHAT} < k̂ ≤ {RELIABLE_KHAT}: "
          f"{((khat > GOOD_KHAT) & ~flagged).double().mean().item():.4f}")
    if flagged.any():
        print(f"    their mean sd of the replicates {spread[flagged.any(0)].mean().item():.4f} nats, "
              f"mean delta-method s.e. {delta[flagged].mean().item():.4f}")
    means = log_p.mean(1)
    sums = [summary(e) for e in estimates]
    print(f"(c) mean over images, by replicate: {', '.join(f'{m:.4f}' for m in means.tolist())}")
    print(f"    sd of the replicates' means        {means.std().item():8.4f} nats")
    for key in ("standard_error", "delta_method_standard_error"):
        s = sum(d[key] for d in sums) / len(sums)
        print(f"    mean {key:<30}{s:8.4f}  ratio {s / means.std().item():.2f}")


if __name__ == "__main__":
    main()
