"""Training throughput: aevb's trainer against the pytorch/examples VAE loop, same process.

The reference is pytorch/examples vae/main.py as published: the 784-400-20 MLP, BCE(sum) + KL,
Adam 1e-3, batch 128, data served by a DataLoader over a TensorDataset (shuffle=True).
Both see the same MNIST training images; their epochs alternate (so both meet the same machine
load), one warm-up epoch each is dropped, and we print the median samples/s of each and the ratio.

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
    reference, trainer = Reference(data.train_x), Trainer(cfg, data)
    n = len(data.train_x)
    ref_rates, our_rates = [], []
    for epoch in range(args.epochs + 1):  # interleaved, so both meet the same machine load; epoch 0 warms up
        ref_rate = samples_per_sec(reference.epoch, n)
        our_rate = samples_per_sec(lambda: trainer.epoch(epoch + 1), n)
        if epoch:
            ref_rates.append(ref_rate)
            our_rates.append(our_rate)
    ref, ours = statistics.median(ref_rates), statistics.median(our_rates)
    print(f"{'pytorch/examples loop':<24}{ref:>10.0f} samples/s")
    print(f"{'aevb trainer':<24}{ours:>10.0f} samples/s")
    print(f"{'ratio':<24}{ours / ref:>10.2f}x")


if __name__ == "__main__":
    main()
