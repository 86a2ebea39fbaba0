"""Peak memory of training on a file larger than it should take: ``--stream`` against in memory.

Writes a float32 .npy file of --gib GiB (rows of --features values drawn from a small linear-Gaussian
model, written a chunk at a time through numpy's open_memmap, in a process of its own: a child's
ru_maxrss starts from its parent's high-water mark, so the writer must not be the parent), then trains one epoch on it twice, each in its own process on one thread: ``aevb train --dataset
npy:FILE --stream`` and the same command without ``--stream``. The peak resident memory of each process
(ru_maxrss from os.wait4, which counts the file pages a process has mapped as well as its own) is
printed with their ratio, the wall time of each, and whether the two runs wrote the same metrics (they
must, timings aside). The file is deleted at the end.

    python benchmarks/stream_memory.py [--gib 2] [--features 1024] [--dir /tmp] [--keep]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN = ["--epochs", "1", "--likelihood", "gaussian", "--hidden", "32", "--latent-dim", "4", "--batch-size", "1024",
         "--eval-batch-size", "4096", "--device", "cpu", "--quiet", "--no-report", "--overwrite"]


def write_data(path: Path, gib: float, features: int, latent: int = 8, chunk: int = 16384) -> None:
    """x = W z + 0.1 ε, z ~ N(0, I_latent), float32, written chunk by chunk."""
    rows = int(gib * 2**30) // (4 * features)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((latent, features)).astype(np.float32) / np.sqrt(latent)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    for i in range(0, rows, chunk):
        n = min(chunk, rows - i)
        x[i:i + n] = rng.standard_normal((n, latent), np.float32) @ w + 0.1 * rng.standard_normal((n, features), np.float32)
    x.flush()


def train(path: Path, out: Path, stream: bool) -> dict:
    """One 'aevb train' in a child process: its peak RSS (MiB), wall time (s) and metrics."""
    argv = [sys.executable, "-m", "aevb.cli", "train", "--dataset", f"npy:{path}", "--out", str(out), *TRAIN]
    started = time.perf_counter()
    child = subprocess.Popen(argv + (["--stream"] if stream else []), env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {'streamed' if stream else 'in-memory'} run failed")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds, "metrics": metrics}


def without_timings(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("seconds", "samples_per_sec")} for m in metrics]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the generated file (default 2 GiB)")
    parser.add_argument("--features", type=int, default=1024, help="values per row (default 1024)")
    parser.add_argument("--dir", default=None, help="where to write the file (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the file and the runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aevb-stream-", dir=args.dir))
    path = work / "data.npy"
    try:
        started = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(target=write_data, args=(path, args.gib, args.features))
        writer.start()
        writer.join()
        rows, features = np.load(path, mmap_mode="r").shape
        print(f"wrote {path}: {rows} × {features} float32, {path.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - started:.0f} s")
        streamed = train(path, work / "streamed", stream=True)
        in_memory = train(path, work / "in-memory", stream=False)
        same = without_timings(streamed["metrics"]) == without_timings(in_memory["metrics"])
        for name, r in (("--stream", streamed), ("in memory", in_memory)):
            m = r["metrics"][-1]
            print(f"{name:<10} peak RSS {r['peak_rss_mib']:7.0f} MiB   wall {r['seconds']:6.0f} s   "
                  f"{m['samples_per_sec']:7.0f} samples/s   train ELBO {m['train_elbo']:.4f}   test ELBO {m['test_elbo']:.4f}")
        parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"(this process's own peak, the floor of both: {parent:.0f} MiB)")
        print(f"peak RSS ratio, streamed / in memory: {streamed['peak_rss_mib'] / in_memory['peak_rss_mib']:.3f}; "
              f"streamed under 1 GiB: {streamed['peak_rss_mib'] < 1024}; metrics identical: {same}")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
