"""Training throughput: aevb's trainer against the pytorch/examples VAE loop, same process.

The reference is pytorch/examples vae/main.py as published: the 784-400-20 MLP, BCE(sum) + KL,
Adam 1e-3, batch 128, data served by a DataLoader over a TensorDataset (shuffle=True).
Both see the same MNIST training images; their epochs alternate (so both meet the same machine
load), one warm-up epoch each is dropped, and we print the median samples/s of each and the median
of the per-round ratios (a round's two epochs meet the same load, so the ratio is steadier than the rates).

A third loop bounds what any trainer of this model can reach here: the same step written by hand
with nothing around it (index slices, one fused expression for the loss, fused Adam, no metrics, no
distributions). Its ratio to the reference is the ceiling of ours on this machine.

    python benchmarks/train_throughput.py [--epochs 3] [--train-size 60000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aevb.config import Config
from aevb.data import load_dataset
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
    Bernoulli log-likelihood as x·h - softplus(h) (the same BCE), fused Adam."""

    def __init__(self, train_x: torch.Tensor):
        self.model, self.x = ReferenceVAE(), train_x.flatten(1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    def epoch(self) -> None:
        m = self.model
        for idx in torch.randperm(len(self.x)).split(128):
            x = self.x[idx]
            mu, logvar = m.encode(x)
            h = m.fc4(F.relu(m.fc3(m.reparameterize(mu, logvar))))
            loss = (F.softplus(h) - x * h).sum() - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def samples_per_sec(run_epoch, n: int) -> float:
    started = time.perf_counter()
    run_epoch()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=60000)
    args = parser.parse_args()
    cfg = Config()  # the defaults are the pytorch/examples set-up
    cfg.data.train_size, cfg.data.test_size = args.train_size, 1000
    data = load_dataset(cfg.data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(data.train_x)} MNIST images, "
          f"{args.epochs} timed epochs each, interleaved")
    torch.manual_seed(1)
    trainer = Trainer(cfg, data)
    loops = {"pytorch/examples loop": Reference(data.train_x).epoch,
             "aevb trainer": lambda: trainer.epoch(1),  # the epoch number only sets β, constant here
             "hand-written step (ceiling)": HandWritten(data.train_x).epoch}
    n = len(data.train_x)
    rates = {name: [] for name in loops}
    for epoch in range(args.epochs + 1):  # interleaved, so all meet the same machine load; epoch 0 warms up
        for name, run_epoch in loops.items():
            rate = samples_per_sec(run_epoch, n)
            if epoch:
                rates[name].append(rate)
    reference = rates["pytorch/examples loop"]
    for name, values in rates.items():
        ratio = statistics.median(v / r for v, r in zip(values, reference))
        print(f"{name:<30}{statistics.median(values):>10.0f} samples/s{ratio:>8.2f}x")


if __name__ == "__main__":
    main()
