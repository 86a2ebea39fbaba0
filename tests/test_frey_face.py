"""frey-face on files written here in the published format: a MATLAB file (scipy.io.savemat, levels 4
and 5) with one uint8 variable ff of shape (560, 1965), each column one 28 × 20 frame stored row after
row. No checksum of the published file exists to pin, so what is checked is the content: a corrupt or
mis-shaped file is one line naming it, and a download that fails the check writes nothing."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import DATASETS, load_dataset
from aevb.data.datasets import FreyFace
from aevb.errors import DataError

N, ROWS, COLS = 1965, 28, 20
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kingma2013-frey-face.toml"


def frames() -> np.ndarray:
    """(1965, 28, 20) uint8 frames, all different, whose pixels say where they are: (7r + 3c) mod 256 at row r
    and column c, but for pixels (0, 0) and (0, 1), which hold n mod 256 and n // 256 of frame n."""
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    x = np.broadcast_to((7 * r + 3 * c) % 256, (N, ROWS, COLS)).astype(np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(N) % 256, np.arange(N) // 256
    return x


def frame_numbers(x: torch.Tensor) -> torch.Tensor:
    """n of each frame read back, from its pixels (0, 0) and (0, 1)."""
    return (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()


def write_frey(path, ff=None, variable="ff", fmt="5"):
    """ff as MATLAB holds it: one frame per column, the frame's rows one after another."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {variable: frames().reshape(N, ROWS * COLS).T if ff is None else ff}, format=fmt)
    return path


def config(root, **kw):
    return DataConfig(dataset="frey-face", data_dir=str(root), download=False, **kw)


@pytest.mark.parametrize("fmt", ["4", "5"])
def test_the_frames_are_read_upright_scaled_and_split_by_a_fixed_seed(tmp_path, fmt):
    write_frey(tmp_path / "frey-face" / "frey_rawface.mat", fmt=fmt)
    ds = load_dataset(config(tmp_path))
    assert ds.x_shape == (1, ROWS, COLS) and ds.train_y is None and ds.test_y is None
    assert (len(ds.train_x), len(ds.test_x)) == (1769, 196)  # test_fraction 0.1: round(196.5) = 196
    found = torch.cat([ds.train_x, ds.test_x])
    order = frame_numbers(found).argsort()
    assert torch.equal(frame_numbers(found)[order], torch.arange(N))  # every frame once, in train or test
    assert torch.equal(found[order], torch.from_numpy(frames()).float().div(255).unsqueeze(1))  # as written, bytes/255
    again = load_dataset(config(tmp_path, train_size=10))  # the same test frames whatever the training subset
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.train_x, ds.train_x[:10])
    wider = load_dataset(config(tmp_path, test_fraction=0.2))
    assert (len(wider.train_x), len(wider.test_x)) == (1572, 393)


@pytest.mark.parametrize("write, found", [
    (lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200)), "is not a readable MATLAB file"),
    (lambda p: p.write_bytes(write_frey(p).read_bytes()[:50_000]), "is not a readable MATLAB file"),
    (lambda p: write_frey(p, variable="faces"), "holds no variable 'ff'"),
    (lambda p: write_frey(p, ff=np.zeros((560, 100), np.uint8)), "holds ff of shape (560, 100) (uint8), not the published (560, 1965)"),
    (lambda p: write_frey(p, ff=np.zeros((560, 1965))), "holds ff of shape (560, 1965) (float64)"),
], ids=["garbage", "truncated", "no-ff", "too-few-frames", "not-bytes"])
def test_a_corrupt_or_wrong_file_is_one_line_naming_it(tmp_path, write, found):
    path = tmp_path / "frey-face" / "frey_rawface.mat"
    path.parent.mkdir(parents=True)
    write(path)
    with pytest.raises(DataError) as e:
        load_dataset(config(tmp_path))
    message = str(e.value)
    assert message.startswith(str(path)) and found in message and "\n" not in message
    assert message.endswith("replace it with the original file") or message.endswith("original frey_rawface.mat")


def test_a_missing_file_names_the_file_and_the_folder(tmp_path, capsys):
    assert main(["train", "--dataset", "frey-face", "--data-dir", str(tmp_path), "--no-download",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frey_rawface.mat" in err and str(tmp_path / "frey-face") in err
    assert "https://cs.nyu.edu/~roweis/data/frey_rawface.mat" in err and not (tmp_path / "run").exists()


def test_a_download_is_checked_before_it_is_written(tmp_path):
    """From file:// mirrors: a corrupt copy and a wrong one are refused, the first good one is written."""
    bad = write_frey(tmp_path / "bad" / "frey_rawface.mat", ff=np.zeros((560, 1964), np.uint8))
    corrupt = tmp_path / "corrupt.mat"
    corrupt.write_bytes(write_frey(tmp_path / "good" / "frey_rawface.mat").read_bytes()[:-1000])
    spec = FreyFace()
    spec.urls = [corrupt.as_uri(), bad.as_uri()]
    with pytest.raises(DataError, match="frey-face is not on this machine and could not download frey_rawface.mat .*"
                                        "corrupt.mat: not the published file .*bad/frey_rawface.mat: not the published"):
        spec.load(tmp_path / "data", allow_download=True)
    assert not (tmp_path / "data").exists()
    spec.urls.append((tmp_path / "good" / "frey_rawface.mat").as_uri())
    (train_x, _, test_x, _), source = spec.load(tmp_path / "data", allow_download=True)
    assert source == f"downloaded to {tmp_path / 'data' / 'frey-face' / 'frey_rawface.mat'}" and test_x is None
    assert np.array_equal(train_x[:, 0], frames())
    assert DATASETS["frey-face"].urls[0] == "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


def test_the_kingma2013_config_trains_on_it(tmp_path):
    write_frey(tmp_path / "data" / "frey-face" / "frey_rawface.mat")
    for algorithm in ("sgvb", "wake-sleep"):
        run = tmp_path / algorithm
        assert main(["train", "--config", str(CONFIG), "--data-dir", str(tmp_path / "data"),
                     "--algorithm", algorithm, "--epochs", "1", "--hidden", "16", "--test-size", "50",
                     "--out", str(run), "--quiet", "--no-report"]) == 0
        assert main(["sample", str(run), "--n", "4"]) == 0
