"""IS log-likelihood evaluation: aevb's batched evaluator against a per-datapoint loop, same model,
same process.

The reference is the loop of pythae's ``get_nll`` (``BaseAE`` models, e.g. ``VAE.get_nll``): for
each datapoint in turn, for each batch of 100 of its k samples, replicate x 100 times, run the
encoder on the copies, sample z, run the decoder, score with sigmoid + binary cross-entropy, and at
the end take one log-sum-exp per datapoint with ``.item()``. Ours (``aevb.evaluate.importance_sampled``)
encodes each datapoint once and sends the k samples of many datapoints through the decoder as one
pass, sized to a memory budget.

Both estimate log p(x) with k = 5000 on the first 1,000 MNIST test images of one trained model
(a pytorch/examples-like 784-400-20 VAE trained for one epoch here, unless --run names a run). The
loop is too slow to run on all of them, so it runs on a subset (--loop-n) and its time is
extrapolated linearly, which is exact for a loop whose every datapoint costs the same. The two
alternate in rounds so that both meet the same machine load; both estimates of the shared images are
printed as a check that they compute the same thing. A third timing, the decoder's forward pass
alone on the same passes, bounds the speed-up that any evaluator of this model can reach here.

    python benchmarks/iwae_eval.py [--run RUN] [--k 5000] [--n 1000] [--loop-n 40] [--rounds 4]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import aevb
from aevb.config import Config
from aevb.data import load_dataset
from aevb.evaluate import importance_sampled, sampling_cost, sampling_pass
from aevb.memory import DEFAULT_MAX_MEMORY, chunk_sizes, pass_budget
from aevb.rundir import read_config


@torch.no_grad()
def per_datapoint_loop(model, data: torch.Tensor, n_samples: int, batch_size: int = 100) -> list[float]:
    """log p̂(x) per datapoint, one datapoint at a time, as pythae's get_nll computes it (constants
    that cancel left out as there; the posterior is N(μ, diag exp(log σ²)), the prior N(0, I) and the
    decoder Bernoulli, so this is the same estimator as ours)."""
    n_full_batch = max(1, n_samples // batch_size)
    log_p = []
    for i in range(len(data)):
        x = data[i].unsqueeze(0)
        log_p_x = []
        for _ in range(n_full_batch):
            x_rep = torch.cat(batch_size * [x])
            mu, log_var = model.encoder(x_rep).chunk(2, dim=-1)
            std = torch.exp(0.5 * log_var)
            z = mu + torch.randn_like(std) * std
            log_q_z_given_x = -0.5 * (log_var + (z - mu) ** 2 / torch.exp(log_var)).sum(dim=-1)
            log_p_z = -0.5 * (z**2).sum(dim=-1)
            recon_x = torch.sigmoid(model.decoder(z))
            log_p_x_given_z = -F.binary_cross_entropy(recon_x.reshape(batch_size, -1), x_rep.reshape(batch_size, -1),
                                                      reduction="none").sum(dim=-1)
            log_p_x.append(log_p_x_given_z + log_p_z - log_q_z_given_x)
        log_p_x = torch.cat(log_p_x)
        log_p.append((torch.logsumexp(log_p_x, 0) - np.log(len(log_p_x))).item())
    return log_p


@torch.no_grad()
def decoder_only_rate(model, z: torch.Tensor, repeats: int = 10) -> float:
    """Samples/s of the decoder's forward pass alone on z (samples, datapoints, d): no encoder, no
    log-probability, no log-sum-exp. No importance-sampling evaluator of this model can beat it."""
    started = time.perf_counter()
    for _ in range(repeats):
        model.decoder(z)
    return repeats * z.shape[0] * z.shape[1] / (time.perf_counter() - started)


def train_reference_model(out: Path, epochs: int, train_size: int | None) -> Path:
    from aevb.train import train

    cfg = Config()  # the defaults are pytorch/examples' 784-400-20 ReLU MLP, Bernoulli decoder, Adam 1e-3, batch 128
    cfg.data.dataset, cfg.data.train_size, cfg.data.test_size = "mnist", train_size, None
    cfg.train.epochs, cfg.train.estimator, cfg.train.seed = epochs, "B", 1
    started = time.perf_counter()
    run = train(cfg, out, quiet=True)
    print(f"trained a 784-400-20 VAE for {epochs} epoch(s) on {train_size or 60000} MNIST images "
          f"in {time.perf_counter() - started:.0f} s")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained run directory (default: train one here)")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--n", type=int, default=1000, help="test images for the batched evaluator")
    parser.add_argument("--loop-n", type=int, default=40, help="test images for the per-datapoint loop (time extrapolated)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, help="training images when training here (default all 60,000)")
    parser.add_argument("--max-memory", type=float, default=DEFAULT_MAX_MEMORY / 2**20, help="MiB for one batched pass")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_reference_model(Path(tmp) / "run", args.epochs, args.train_size)
        cfg, _ = read_config(run)
        m = cfg.model
        if (m.posterior, m.prior, m.likelihood) != ("normal", "standard_normal", "bernoulli"):
            raise SystemExit("the reference loop is written for a normal posterior, standard normal prior and "
                             f"Bernoulli likelihood; {run} has {m.posterior}, {m.prior}, {m.likelihood}")
        model = aevb.load(run)
        cfg.data.train_size, cfg.data.test_size = 1, args.n
        x = load_dataset(cfg.data).test_x
    n, k, budget = len(x), args.k, int(args.max_memory * 2**20)
    loop_n = min(args.loop_n, n)

    torch.manual_seed(0)
    importance_sampled(model, x[:2], 100, budget)  # warm-up of both paths
    per_datapoint_loop(model, x[:1], 200)
    compiled_pass, why_not = sampling_pass(model, x, compile=True)
    importance_sampled(model, x[:2], 100, budget, run_pass=compiled_pass)
    cost = sampling_cost(model, x)
    batch, chunk = chunk_sizes(cost, k, n, pass_budget(budget, x.device))

    fast_s = loop_s = compiled_s = 0.0
    fast_lp, fast_se, loop_lp, bound_rates = [], [], [], []
    z = torch.randn(chunk, batch, model.latent_dim)
    for r in range(args.rounds):
        part = x[r * n // args.rounds:(r + 1) * n // args.rounds]
        started = time.perf_counter()
        lp, se = importance_sampled(model, part, k, budget)  # measures its own pass cost, as a user's call does
        fast_s += time.perf_counter() - started
        fast_lp.append(lp)
        fast_se.append(se)
        started = time.perf_counter()
        importance_sampled(model, part, k, budget, run_pass=compiled_pass)  # aevb evaluate --compile
        compiled_s += time.perf_counter() - started
        loop_part = x[r * loop_n // args.rounds:(r + 1) * loop_n // args.rounds]
        started = time.perf_counter()
        loop_lp += per_datapoint_loop(model, loop_part, k)
        loop_s += time.perf_counter() - started
        bound_rates.append(decoder_only_rate(model, z))
        print(f"  round {r + 1}/{args.rounds}: batched {fast_s:7.1f} s so far, loop {loop_s:7.1f} s so far", flush=True)
    fast_lp, fast_se = torch.cat(fast_lp), torch.cat(fast_se)
    loop_total = loop_s * n / loop_n

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nIS log-likelihood, k = {k}, on {n} MNIST test images; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load:.1f} at the end")
    print(f"batched (aevb.evaluate.importance_sampled; passes of {batch} datapoints x {chunk} samples, "
          f"{cost.bytes(batch, chunk) / 2**20:.0f} MiB, --max-memory {args.max_memory:.0f}):")
    print(f"  {fast_s:9.1f} s for {n} images ({n * k / fast_s / 1e3:.1f}k samples/s)")
    print(f"  {compiled_s:9.1f} s with the pass compiled (aevb evaluate --compile)"
          + (f": {why_not}" if why_not else f" ({n * k / compiled_s / 1e3:.1f}k samples/s)"))
    print(f"per-datapoint loop (pythae get_nll, batches of 100 samples, encoder on every copy):")
    print(f"  {loop_s:9.1f} s for {loop_n} images ({loop_n * k / loop_s / 1e3:.1f}k samples/s), "
          f"extrapolated linearly to {n} images: {loop_total:.0f} s")
    bound_s = n * k / float(np.median(bound_rates))
    print(f"the decoder's forward pass alone on the same passes (the bound of any evaluator of this model):")
    print(f"  {bound_s:9.1f} s for {n} images ({n * k / bound_s / 1e3:.1f}k samples/s)")
    print(f"speed-up at k = {k}: {loop_total / fast_s:.1f}x, compiled {loop_total / compiled_s:.1f}x "
          f"(bound: {loop_total / bound_s:.1f}x); aevb runs at {bound_s / fast_s:.0%} of the decoder-forward-only "
          f"bound, {bound_s / compiled_s:.0%} compiled")
    a, b = fast_lp[:loop_n].mean().item(), float(np.mean(loop_lp))
    se = (fast_se[:loop_n].pow(2).sum().sqrt() / loop_n).item()
    print(f"same estimate on the {loop_n} shared images: batched {a:.3f} ± {se:.3f}, loop {b:.3f} "
          f"(difference {a - b:+.3f} nats, {abs(a - b) / (math.sqrt(2) * se):.1f} combined standard errors)")
    print(f"all {n} images: log p(x) = {fast_lp.mean().item():.3f} ± {(fast_se.pow(2).sum().sqrt() / n).item():.3f} nats")


if __name__ == "__main__":
    main()
