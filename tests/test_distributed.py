"""Multi-process data parallel training (torchrun, gloo on the CPU): two processes take the optimizer
step of one process on their combined batch, write one run directory, and resume bit-identically."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import aevb
from aevb.cli import main
from aevb.config import Config
from aevb.data import load_dataset
from aevb.models import VAE
from aevb.train import Trainer

BATCH = torch.arange(40, 72)  # one global batch of 32 training images, split 16 / 16 over two ranks


def config() -> Config:
    cfg = Config()
    cfg.data.dataset, cfg.data.train_size, cfg.data.test_size = "digits", 200, 50
    cfg.model.hidden, cfg.model.latent_dim = [32], 4
    cfg.train.estimator, cfg.train.device, cfg.train.seed = "B", "cpu", 5
    return cfg


def trainer() -> Trainer:
    torch.manual_seed(config().train.seed)
    return Trainer(config(), load_dataset(config().data))


def one_ddp_step(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    t = trainer()
    assert t.group.world == 2 and t.group.rank == rank
    idx = t.group.shard(BATCH)
    t.algorithm.shard_weight = 2 * len(idx) / len(BATCH)
    torch.manual_seed(100 + rank)  # each rank's own noise, replayed by the test below
    t.algorithm.begin_epoch()
    t.algorithm.step(idx, 0, 0.0)
    if rank == 0:
        torch.save({k: v.clone() for k, v in t.model.state_dict().items()}, out)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_step_of_one_process_on_the_combined_batch(tmp_path):
    mp.spawn(one_ddp_step, args=(free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    t = trainer()  # one process: the mean loss over both halves (each with the noise its rank drew), one step
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    losses = []
    for rank, idx in enumerate(BATCH.tensor_split(2)):
        torch.manual_seed(100 + rank)
        losses.append(t.algorithm.loss(t.algorithm.x[idx], t.algorithm.estimator_at(0.0))[0])
    t.algorithm.update(torch.stack(losses).mean())
    moved = 0
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, before[k]))
    assert moved >= 4  # the step moved the weights: the comparison is not of two untouched models


def torchrun(*args: str, epochs: int, out) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aevb",
           "train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "3", "--train-size", "300",
           "--test-size", "60", "--batch-size", "32", "--device", "cpu", "--epochs", str(epochs), "--out", str(out),
           "--quiet", "--no-report", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_writes_one_run_that_loads_evaluates_and_resumes_bit_identically(tmp_path):
    straight = tmp_path / "straight"
    done = torchrun(epochs=3, out=straight)
    assert done.stdout.count("run directory:") == 1  # rank 0 alone speaks ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["straight"]  # ... and writes
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["samples_seen"] == 900  # the whole epoch, both shards
    assert records[-1]["test_elbo"] > records[0]["test_elbo"]
    resumed = tmp_path / "resumed"
    torchrun(epochs=2, out=resumed)
    torchrun("--resume", epochs=3, out=resumed)
    assert (resumed / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert isinstance(aevb.load(resumed), VAE)
    assert main(["evaluate", str(resumed), "--k", "10", "--test-size", "20"]) == 0


def test_a_global_batch_smaller_than_the_processes_is_refused(monkeypatch):
    from aevb.distributed import Group
    from aevb.errors import ConfigError

    monkeypatch.setattr(sys.modules["aevb.train"], "join", lambda device: (Group(0, 4), device))
    cfg = config()
    cfg.train.batch_size = 3
    with pytest.raises(ConfigError, match="--batch-size 3 is the global batch"):
        Trainer(cfg, load_dataset(cfg.data))
