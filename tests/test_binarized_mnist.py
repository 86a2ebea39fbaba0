"""binarized-mnist (Larochelle & Murray 2011) on files generated here in the published layout: one
line of 784 space-separated 0/1 values per image, 1,568 bytes a line (the published files have
78,400,000 and 15,680,000 bytes: 50,000 and 10,000 such lines). Local files are trusted and
digests are checked on download, as for every dataset: downloads come from a file:// mirror."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import DATASETS, load_dataset
from aevb.data.datasets import BinarizedMNIST
from aevb.errors import ConfigError, DataError

FILES = BinarizedMNIST.FILES
RHO = 0.2  # every generated pixel is Bernoulli(RHO), independently


def write_amat(folder, rows=(40, 10, 20), seed=0) -> dict[str, np.ndarray]:
    """The three files with rows[i] images each; returns the arrays written, (N, 784) uint8."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, n in zip(FILES, rows):
        arrays[name] = (rng.random((n, 784)) < RHO).astype(np.uint8)
        np.savetxt(folder / name, arrays[name], fmt="%d", delimiter=" ", newline="\n")
        assert (folder / name).stat().st_size == n * 1568  # the published line layout
    return arrays


@pytest.fixture
def amat_dir(tmp_path):
    return tmp_path, write_amat(tmp_path / "binarized-mnist")


def test_the_files_are_read_back_exactly_with_train_and_valid_as_the_training_set(amat_dir):
    root, arrays = amat_dir
    ds = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), download=False))
    train = np.concatenate([arrays[FILES[0]], arrays[FILES[1]]])  # in this order: --train-size 50000 is the 50k set
    assert torch.equal(ds.train_x, torch.from_numpy(train).float().reshape(-1, 1, 28, 28))
    assert torch.equal(ds.test_x, torch.from_numpy(arrays[FILES[2]]).float().reshape(-1, 1, 28, 28))
    assert ds.train_y is None and ds.test_y is None and ds.n_classes is None
    assert ds.source == f"data directory {root / 'binarized-mnist'}"
    first = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), download=False, train_size=40))
    assert torch.equal(first.train_x, ds.train_x[:40])


@pytest.mark.parametrize("values, found", [
    (["0"] * 783, "line 3 has 783 values"),
    (["0"] * 783 + ["2"], "line 3 has '2'"),
    (["0"] * 783 + ["0.5"], "line 3 has '0.5'"),
    (["1"] * 785, "line 3 has 785 values"),
], ids=["783-values", "a-2", "a-0.5", "785-values"])
def test_a_malformed_row_is_one_line_naming_the_file_and_the_line(amat_dir, values, found):
    root, _ = amat_dir
    path = root / "binarized-mnist" / FILES[2]
    lines = path.read_text().splitlines()
    lines[2] = " ".join(values)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), download=False))
    assert str(e.value) == (f"{path} is not a matrix of 0/1 values ({found}); each line must hold 784 of them "
                            "separated by spaces: replace it with the original file")


def test_an_empty_file_is_refused(amat_dir):
    root, _ = amat_dir
    (root / "binarized-mnist" / FILES[1]).write_text("")
    with pytest.raises(DataError, match=f"{FILES[1]} is not a matrix of 0/1 values \\(it has no rows\\)"):
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), download=False))


def test_missing_files_are_named_with_where_to_put_them(amat_dir, tmp_path_factory):
    root, _ = amat_dir
    (root / "binarized-mnist" / FILES[1]).unlink()
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), download=False))
    assert str(e.value) == (f"{root / 'binarized-mnist'} lacks {FILES[1]}; put all three .amat files there "
                            "(or delete the folder so that they are downloaded)")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(empty), download=False))
    message = str(e.value)
    assert "\n" not in message and all(name in message for name in FILES) and "DATA_DIR/binarized-mnist" in message
    assert "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/" in message


def test_the_registered_spec_verifies_every_file_from_the_canonical_url():
    spec = DATASETS["binarized-mnist"]
    assert sorted(spec.digests) == sorted(FILES) and all(len(d) == 64 for d in spec.digests.values())
    assert "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/" in spec.mirrors


def test_a_download_is_verified_and_a_mismatch_writes_nothing(tmp_path):
    arrays = write_amat(tmp_path / "mirror")
    digests = {name: hashlib.sha256((tmp_path / "mirror" / name).read_bytes()).hexdigest() for name in FILES}
    spec = BinarizedMNIST(name="bm", digests={**digests, FILES[2]: hashlib.sha256(b"other").hexdigest()},
                          mirrors=[(tmp_path / "nowhere").as_uri() + "/", (tmp_path / "mirror").as_uri() + "/"],
                          how_to_get="serve it")
    with pytest.raises(DataError, match=f"bm is not on this machine and could not download {FILES[2]} .*SHA-256 mism"):
        spec.load(tmp_path / "data", allow_download=True)
    assert not (tmp_path / "data").exists()  # the two good files are not written either
    spec.digests = digests
    (train_x, train_y, test_x, test_y), source = spec.load(tmp_path / "data", allow_download=True)
    assert source == f"downloaded to {tmp_path / 'data' / 'bm' / FILES[0]}" and train_y is None and test_y is None
    assert np.array_equal(test_x.reshape(-1, 784), arrays[FILES[2]])
    assert sorted(p.name for p in (tmp_path / "data" / "bm").iterdir()) == sorted(FILES)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_binarize_is_refused_on_data_that_are_already_binary(amat_dir, mode):
    root, _ = amat_dir
    with pytest.raises(ConfigError, match=f"--binarize {mode} has nothing to do on binarized-mnist.*--dataset mnist"):
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(root), binarize=mode))


def test_train_evaluate_and_report_without_labels(tmp_path, one_thread, capsys):
    """Every pixel of the generated data is Bernoulli(ρ) on its own, so no model has a higher expected
    log-likelihood than the generating one, -784 H(ρ) (Gibbs' inequality): the evaluated bounds
    must lie below it, within 5 standard errors of a test-set mean of log p(x) (sd √(784 ρ(1-ρ))
    |log(ρ/(1-ρ))| per image). Data read as grey levels k/255 instead of 0/1 would break it."""
    root = tmp_path / "data"
    write_amat(root / "binarized-mnist", rows=(200, 56, 100))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "binarized-mnist", "--data-dir", str(root), "--epochs", "1", "--hidden", "16",
                 "--latent-dim", "2", "--quiet", "--no-report", "--out", str(run)]) == 0
    meta = json.loads((run / "config.json").read_text())["run"]
    assert meta["x_shape"] == [1, 28, 28] and meta["n_classes"] is None
    assert main(["evaluate", str(run), "--k", "50"]) == 0
    result = json.loads((run / "eval.json").read_text())
    entropy = -(RHO * math.log(RHO) + (1 - RHO) * math.log(1 - RHO))
    se = math.sqrt(784 * RHO * (1 - RHO)) * abs(math.log(RHO / (1 - RHO))) / math.sqrt(result["n"])
    assert result["n"] == 100
    assert result["iwae"]["1"] <= result["iwae"]["50"] <= -784 * entropy + 5 * se
    assert main(["report", str(run), "--test-size", "20"]) == 0
    assert (run / "report.html").is_file()
    capsys.readouterr()
    assert main(["plot", str(run), "interpolation", "--classes", "3", "5"]) == 2
    assert capsys.readouterr().err.strip() == ("aevb: error: the test data have no labels to choose classes by; "
                                               "choose test images by index instead")
