"""Training throughput: aevb's trainer against the pytorch/examples VAE loop, same process.

The reference is pytorch/examples vae/main.py as published: the 784-400-20 MLP, BCE(sum) + KL,
Adam 1e-3, batch 128, data served by a DataLoader over a TensorDataset (shuffle=True).
Both see the same MNIST training images; their epochs alternate (so both meet the same machine
load), one warm-up epoch each is dropped, and we print the median samples/s of each and the median
of the per-round ratios (a round's two epochs meet the same load, so the ratio is steadier than the rates).

Beside them: aevb with ``--precision bf16-mixed``, with ``--compile`` (fp32 and bf16), and the
ceilings: the same step written by hand with nothing around it (index slices, one fused expression
for the loss, fused Adam, no metrics, no distributions), in fp32 and under bf16 autocast. Their
ratios to the reference bound what any trainer of this model can reach here.

On a CPU without native bf16 (no avx512_bf16 or amx_bf16) the bf16 loops are emulated and ~10×
slower: the benchmark says so and times them on the first ``--bf16-size`` images only (samples/s
does not depend on the epoch's length).

    python benchmarks/train_throughput.py [--epochs 3] [--train-size 60000] [--no-compile]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aevb.config import Config
from aevb.data import load_dataset
from aevb.precision import native_bf16_cpu
from aevb.train import Trainer


class ReferenceVAE(nn.Module):
    """pytorch/examples vae/main.py, verbatim in structure."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def reference_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class Reference:
    """The pytorch/examples training loop, one epoch per call."""

    def __init__(self, train_x: torch.Tensor):
        self.model = ReferenceVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loader = DataLoader(TensorDataset(train_x, torch.zeros(len(train_x))), batch_size=128, shuffle=True)

    def epoch(self) -> float:
        self.model.train()
        train_loss = 0
        for data, _ in self.loader:
            self.optimizer.zero_grad()
            recon, mu, logvar = self.model(data)
            loss = reference_loss(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
        return train_loss


class HandWritten:
    """The ceiling: the reference's model and loss as one bare step over index slices of one tensor,
    Bernoulli log-likelihood as x·h - softplus(h) (the same BCE), fused Adam; with ``bf16`` the
    matrix products under bf16 autocast and the loss in fp32."""

    def __init__(self, train_x: torch.Tensor, bf16: bool = False):
        self.model, self.x = ReferenceVAE(), train_x.flatten(1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def epoch(self) -> None:
        m = self.model
        for idx in torch.randperm(len(self.x)).split(128):
            x = self.x[idx]
            with self.autocast():
                mu, logvar = m.encode(x)
                mu, logvar = mu.float(), logvar.float()
                h = m.fc4(F.relu(m.fc3(m.reparameterize(mu, logvar)))).float()
            loss = (F.softplus(h) - x * h).sum() - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def samples_per_sec(run_epoch, n: int) -> float:
    started = time.perf_counter()
    run_epoch()
    return n / (time.perf_counter() - started)


def aevb_epoch(data, quiet_warnings: list, **train) -> tuple:
    """One aevb Trainer with the default (pytorch/examples) config and the given train settings."""
    cfg = Config()
    for k, v in train.items():
        setattr(cfg.train, k, v)
    torch.manual_seed(1)
    trainer = Trainer(cfg, data)
    quiet_warnings += trainer.warnings
    return lambda: trainer.epoch(1), len(trainer.algorithm.x)  # the epoch number only sets β, constant here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--bf16-size", type=int, default=6400, help="images per bf16 epoch on a CPU without native bf16")
    parser.add_argument("--no-compile", action="store_true", help="leave out the --compile rows")
    args = parser.parse_args()
    cfg = Config()  # the defaults are the pytorch/examples set-up
    cfg.data.train_size, cfg.data.test_size = args.train_size, 1000
    data = load_dataset(cfg.data)
    native = native_bf16_cpu()
    small = data if native else load_dataset(type(cfg.data)(train_size=min(args.bf16_size, args.train_size), test_size=1000))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(data.train_x)} MNIST images, "
          f"{args.epochs} timed epochs each, interleaved")
    print(f"bf16: {'native (avx512_bf16 or amx_bf16)' if native else 'NOT native on this CPU (AVX2 or older): emulated, '}"
          f"{'' if native else f'timed on {len(small.train_x)} images; keep --precision 32 here'}")
    warnings: list = []
    loops = {"pytorch/examples loop": (Reference(data.train_x).epoch, len(data.train_x)),
             "aevb fp32": aevb_epoch(data, warnings),
             "aevb bf16-mixed": aevb_epoch(small, warnings, precision="bf16-mixed")}
    if not args.no_compile:
        loops["aevb --compile fp32"] = aevb_epoch(data, warnings, compile=True)
        loops["aevb --compile bf16-mixed"] = aevb_epoch(small, warnings, compile=True, precision="bf16-mixed")
    loops["hand-written fp32 (ceiling)"] = (HandWritten(data.train_x).epoch, len(data.train_x))
    loops["hand-written bf16 (ceiling)"] = (HandWritten(small.train_x, bf16=True).epoch, len(small.train_x))
    for w in dict.fromkeys(warnings):
        print(f"warning: {w}")
    rates = {name: [] for name in loops}
    for epoch in range(args.epochs + 1):  # interleaved, so all meet the same machine load; epoch 0 warms up (and compiles)
        for name, (run_epoch, n) in loops.items():
            rate = samples_per_sec(run_epoch, n)
            if epoch:
                rates[name].append(rate)
    reference, ceiling = rates["pytorch/examples loop"], rates["hand-written fp32 (ceiling)"]
    print(f"{'':<30}{'samples/s':>10}{'× reference':>13}{'× hand-written fp32':>21}")
    for name, values in rates.items():
        ratio = statistics.median(v / r for v, r in zip(values, reference))
        of_ceiling = statistics.median(v / c for v, c in zip(values, ceiling))
        print(f"{name:<30}{statistics.median(values):>10.0f}{ratio:>12.2f}×{of_ceiling:>20.2f}×")


if __name__ == "__main__":
    main()
