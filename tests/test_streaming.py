"""Data read on demand (``aevb.data.streaming``, ``--stream``) and the batch covariate of AnnData data
(``--batch-key``). ``Rows`` must give exactly the rows, in the order asked, that the data in memory
give, so that a streamed run and a sparse-matrix run write the same metrics, bit for bit, as the run
in memory for the same seed; a pass over a memory-mapped file must keep its pages out of the process;
the batch s of each cell must reach the likelihood through the model's decode (a dispersion per gene
and batch, checked against scipy.stats)."""
import json
import re

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st
import torch

from aevb.cli import main
from aevb.config import Config
from aevb.data.streaming import Concatenated, Rows, as_float, chunks, map_npy, map_npz
from aevb.distributions import LIKELIHOODS
from aevb.errors import ConfigError
from aevb.models import build_model
from aevb.objectives import Estimator

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--quiet", "--no-report"]


def digits():
    """scikit-learn's 8×8 digits as uint8 images (1,797 × 1 × 8 × 8) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.data.reshape(-1, 1, 8, 8) * 255 / 16).astype(np.uint8), d.target


def metrics(run) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "samples_per_sec")} for line in lines]


def train(tmp_path, name, dataset, *flags) -> list[dict]:
    run = tmp_path / name
    assert main(["train", "--dataset", dataset, "--out", str(run), *QUICK, *flags]) == 0
    return metrics(run)


# ------------------------------------------------------------------------------------------ Rows

@pytest.mark.parametrize("dtype", [np.uint8, np.float32, ">f8"])
def test_rows_read_exactly_the_rows_memory_holds_in_the_order_asked(tmp_path, dtype):
    x = (np.random.default_rng(0).random((50, 1, 4, 3)) * 255).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    rows, memory = Rows(map_npy(tmp_path / "x.npy"), "x.npy"), as_float(x, "train")
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (50, 1, 4, 3) and len(rows) == 50
    assert torch.equal(rows[perm[:17]], memory[perm[:17]])  # unsorted: read sorted, put back in order
    assert torch.equal(rows[10:30], memory[10:30]) and torch.equal(rows[:], memory)
    view = rows.select(np.array([3, 9, 20, 41])).select(slice(1, None))  # a view of a view, nothing read
    assert len(view) == 3 and torch.equal(view[torch.tensor([2, 0])], memory[[41, 9]])
    assert torch.equal(torch.cat(list(chunks(rows, chunk_bytes=4 * 12 * 7))), memory)  # 7 rows a chunk


def test_sparse_rows_are_made_dense_a_batch_at_a_time():
    dense = sp.random(40, 9, density=0.3, format="csr", dtype=np.float32, random_state=0)
    rows = Rows(dense, "m")
    idx = torch.tensor([39, 0, 17, 18, 19, 5])
    assert torch.equal(rows[idx], torch.from_numpy(dense.toarray())[idx])


def test_npz_members_are_mapped_where_they_lie_and_shards_join_in_order(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (30, 2, 3), dtype=np.uint8), "y_train": rng.integers(0, 9, 30),
              "x_test": rng.random((7, 2, 3)).astype(">f4"), "odd name": np.arange(5.0)}
    np.savez(tmp_path / "a.npz", **arrays)
    mapped = map_npz(tmp_path / "a.npz")
    assert set(mapped) == set(arrays)
    for key, a in arrays.items():
        assert mapped[key].dtype == a.dtype and np.array_equal(mapped[key][...], a)
    parts = [arrays["x_train"][:12], arrays["x_train"][12:13], arrays["x_train"][13:]]
    for i, part in enumerate(parts):
        np.savez(tmp_path / f"s{i}.npz", x=part)
    joined = Concatenated([map_npz(tmp_path / f"s{i}.npz")["x"] for i in range(3)], "shards")
    idx = np.array([0, 11, 12, 13, 29])
    assert joined.shape == (30, 2, 3) and np.array_equal(joined[idx], arrays["x_train"][idx])


def resident_file_pages() -> int:
    """Bytes of file-backed pages mapped into this process (RssFile of /proc/self/status)."""
    status = open("/proc/self/status").read()
    return int(re.search(r"RssFile:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="Linux /proc needed")
def test_a_pass_over_a_mapped_file_keeps_its_pages_out_of_the_process(tmp_path):
    """A 64 MiB file read whole, in 4 MiB chunks and in random batches: the process's file-backed resident
    memory grows by less than 16 MiB; the same pass through numpy's memmap (no madvise) grows by more
    than 48 MiB here, so the test tells the two apart."""
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(16384, 1024))
    x[:] = 1.0
    x.flush()
    del x
    rows = Rows(map_npy(tmp_path / "x.npy"), "x.npy")
    before = resident_file_pages()
    total = sum(float(c.sum()) for c in chunks(rows, chunk_bytes=4 * 2**20))
    for idx in torch.randperm(len(rows)).split(512):
        rows[idx]
    assert total == 16384 * 1024 and resident_file_pages() - before < 16 * 2**20
    plain = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = resident_file_pages()
    assert sum(float(plain[i:i + 1024].sum()) for i in range(0, 16384, 1024)) == total
    assert resident_file_pages() - before > 48 * 2**20


# ------------------------------------------------------------- the same metrics, streamed or not

def test_streamed_npy_trains_exactly_as_in_memory(tmp_path):
    x, _ = digits()
    np.save(tmp_path / "d.npy", x)
    flags = ["--epochs", "2", "--val-fraction", "0.1"]
    memory = train(tmp_path, "memory", f"npy:{tmp_path / 'd.npy'}", *flags)
    assert train(tmp_path, "stream", f"npy:{tmp_path / 'd.npy'}", *flags, "--stream") == memory
    assert len(memory) == 2 and "val_elbo" in memory[-1]


def test_streamed_npz_shards_train_m2_exactly_as_one_file_in_memory(tmp_path):
    x, y = digits()
    np.savez(tmp_path / "one.npz", x_train=x[:1500], y_train=y[:1500], x_test=x[1500:], y_test=y[1500:])
    (tmp_path / "shards").mkdir()
    for i, (a, b, c, d) in enumerate(((0, 700, 1500, 1650), (700, 1500, 1650, 1797))):
        np.savez(tmp_path / "shards" / f"part{i}.npz", x_train=x[a:b], y_train=y[a:b], x_test=x[c:d], y_test=y[c:d])
    flags = ["--model", "m2", "--labelled", "100"]  # the labelled examples in memory, the rest streamed
    memory = train(tmp_path, "memory", f"npz:{tmp_path / 'one.npz'}", *flags)
    assert train(tmp_path, "stream", f"npz:{tmp_path / 'shards'}", *flags, "--stream") == memory
    assert "test_accuracy" in memory[-1]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """300 cells × 12 genes of counts from 3 cell types in 2 batches (batch b2 doubles every rate): X
    dense, the same counts as a sparse CSR layer 'counts'; obs 'cell_type' and 'batch'."""
    ad = pytest.importorskip("anndata")
    import pandas as pd

    rng = np.random.default_rng(0)
    kind, batch = rng.integers(0, 3, 300), rng.integers(0, 2, 300)
    counts = rng.poisson(rng.gamma(2.0, 2.0, (3, 12))[kind] * (1 + batch[:, None])).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1  # every cell has a library size
    adata = ad.AnnData(X=counts, layers={"counts": sp.csr_matrix(counts)},
                       obs=pd.DataFrame({"cell_type": pd.Categorical.from_codes(kind, ["T", "B", "NK"]),
                                         "batch": np.where(batch, "b2", "b1")}, index=[f"c{i}" for i in range(300)]))
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_sparse_and_streamed_anndata_train_exactly_as_dense_in_memory(cells, tmp_path):
    nb = ["--likelihood", "negative_binomial", "--label-key", "cell_type"]
    dense = train(tmp_path, "dense", f"h5ad:{cells}", *nb)
    assert train(tmp_path, "sparse", f"h5ad:{cells}", "--layer", "counts", *nb) == dense
    assert train(tmp_path, "sparse-stream", f"h5ad:{cells}", "--layer", "counts", "--stream", *nb) == dense
    assert train(tmp_path, "dense-stream", f"h5ad:{cells}", "--stream", *nb) == dense


def test_batch_key_trains_streamed_as_in_memory_and_conditions_the_decoder(cells, tmp_path, capsys):
    flags = ["--layer", "counts", "--likelihood", "negative_binomial", "--batch-key", "batch",
             "--likelihood-dispersion", "feature-batch"]
    memory = train(tmp_path, "memory", f"h5ad:{cells}", *flags)
    assert train(tmp_path, "stream", f"h5ad:{cells}", *flags, "--stream") == memory
    meta = json.loads((tmp_path / "memory" / "config.json").read_text())["run"]
    assert meta["batches"] == ["b1", "b2"]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "memory"), "--k", "5"]) == 2  # p(x|z) alone needs a batch: said in one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decodes given each datapoint's batch s" in err


# ------------------------------------------------------------------------- the batch covariate

def batch_model(likelihood="negative_binomial", dispersion="feature-batch", n_batches=3):
    cfg = Config().model
    cfg.hidden, cfg.latent_dim, cfg.likelihood, cfg.likelihood_dispersion = [8], 2, likelihood, dispersion
    return build_model(cfg, (5,), None, n_batches)


def test_the_batch_joins_z_at_the_decoders_input_and_only_there(torch_seed):
    model = batch_model()
    first = model.decoder.body[0]
    assert first.in_features == 2 + 3  # z and the one-hot batch (scVI's covariate injection)
    z = torch.randn(4, 2)
    means = [model.decode(z, torch.full((4,), s)).mean for s in range(3)]
    assert not torch.equal(means[0], means[1]) and not torch.equal(means[1], means[2])
    x = torch.poisson(torch.full((4, 5), 3.0))
    given = model.given(torch.tensor([0, 2, 1, 2]))
    torch.manual_seed(1)
    terms = given.elbo(x, Estimator("B"))
    torch.manual_seed(1)  # the same draw of z by hand: E_q log p(x|z, s) - KL
    q = model.encode(x)
    z = q.rsample((1,))
    expected = model.decode(z, torch.tensor([0, 2, 1, 2])).log_prob(x).mean(0)
    assert torch.allclose(terms.log_px_z, expected)
    with pytest.raises(ConfigError, match="decodes given each datapoint's batch s"):
        model.decode(z)
    with pytest.raises(ConfigError, match="--model m2 takes no batch"):
        build_model(type(Config().model)(model="m2"), (5,), 2, 3)


@pytest.mark.parametrize("name", ["negative_binomial", "zero_inflated_negative_binomial"])
def test_a_dispersion_per_gene_and_batch_against_scipy(name, torch_seed):
    """log p(x|z, s) of every cell, with θ_s the row of its batch, against scipy.stats.nbinom (n = θ,
    p = θ/(θ + μ)) and, for the zero-inflated family, π·[x = 0] + (1 - π)·nbinom: to 1e-5 relative."""
    cfg = Config().model
    cfg.likelihood, cfg.likelihood_dispersion, cfg.library_size = name, "feature-batch", "none"
    likelihood = LIKELIHOODS[name].from_config(cfg, (6,), 3).double()
    with torch.no_grad():
        likelihood.log_theta.copy_(torch.tensor([-3.0, 0.0, 4.0]).unsqueeze(-1) + torch.randn(3, 6, dtype=torch.float64))
    n = 8
    h = torch.randn(n, likelihood.n_heads * 6, dtype=torch.float64) * 2
    s = torch.randint(0, 3, (n,))
    x = torch.distributions.Poisson(torch.full((n, 6), 4.0)).sample().double()
    x[0] = 0
    got = likelihood(h, s=s).log_prob(x)
    log_mean, *gate = h.chunk(likelihood.n_heads, -1)
    theta, mu = likelihood.log_theta[s].exp().detach().numpy(), log_mean.exp().numpy()
    pmf = st.nbinom.pmf(x.numpy(), theta, theta / (theta + mu))
    if gate:
        pi = torch.sigmoid(gate[0]).numpy()
        pmf = pi * (x.numpy() == 0) + (1 - pi) * pmf
    np.testing.assert_allclose(got.detach().numpy(), np.log(pmf).sum(-1), rtol=1e-5)
    with pytest.raises(ConfigError, match="feature-batch learns θ per gene and batch.*add --batch-key"):
        LIKELIHOODS[name].from_config(cfg, (6,), 0)
