"""A user's own data: folders of PNG/JPEG images (folder:PATH, decoded once and cached) and AnnData
files (h5ad:PATH, embedded back with 'aevb embed'). Pixels and counts must come back exactly; the
cache must be reused while the folder is unchanged and rebuilt when it changes; every bad input is
one line and exit code 2 with nothing written."""
import json
import os
import re
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from PIL import Image

import aevb
from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import folders, load_dataset
from aevb.errors import ConfigError, DataError

QUICK = ["--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--batch-size", "8", "--quiet"]


def save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def pixels(seed, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """float32 pixels = bytes/255 back to bytes: exact, since k/255 rounds back to k for every byte."""
    return np.rint(t.numpy() * 255).astype(np.uint8)


@pytest.fixture
def classes(tmp_path):
    """train/ and test/ with two class folders each, 6x5 grey PNGs: {(part, class): [pixels]}."""
    images = {}
    for part, n in (("train", 4), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            images[part, name] = [pixels(100 * c + 10 * (part == "test") + i) for i in range(n)]
            for i, p in enumerate(images[part, name]):
                save(tmp_path / "pets" / part / name / f"{i}.png", p)
    return tmp_path / "pets", images


def cfg(path, tmp_path, **kw):
    return DataConfig(dataset=f"folder:{path}", data_dir=str(tmp_path / "cache"), **kw)


def test_class_folders_round_trip_exactly(classes, tmp_path):
    root, images = classes
    ds = load_dataset(cfg(root, tmp_path))
    assert ds.classes == ("cat", "dog") and ds.n_classes == 2 and ds.x_shape == (1, 6, 5)
    for part, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        expected = np.stack(images[part, "cat"] + images[part, "dog"])[:, None]
        np.testing.assert_array_equal(as_bytes(x), expected)
        assert y.tolist() == [0] * (len(expected) // 2) + [1] * (len(expected) // 2)


def test_flat_folder_holds_out_a_seeded_fraction(tmp_path):
    images = [pixels(i, (4, 4, 3)) for i in range(20)]  # RGB
    for i, p in enumerate(images):
        save(tmp_path / "flat" / f"{i:02d}.png", p)
    ds = load_dataset(cfg(tmp_path / "flat", tmp_path, test_fraction=0.25))
    assert ds.classes is None and ds.train_y is None and ds.x_shape == (3, 4, 4)
    assert (len(ds.train_x), len(ds.test_x)) == (15, 5)
    got = sorted(map(bytes, as_bytes(torch.cat([ds.train_x, ds.test_x]))))
    assert got == sorted(bytes(p.transpose(2, 0, 1)) for p in images)  # every image once, in one part
    again = load_dataset(cfg(tmp_path / "flat", tmp_path, test_fraction=0.25))
    assert torch.equal(again.test_x, ds.test_x)  # the same split every time


def test_grey_and_rgb_mixed_become_rgb(tmp_path):
    grey, rgb = pixels(0, (3, 3)), pixels(1, (3, 3, 3))
    save(tmp_path / "mix" / "a.png", grey)
    save(tmp_path / "mix" / "b.png", rgb)
    ds = load_dataset(cfg(tmp_path / "mix", tmp_path, test_fraction=0.5))
    x = as_bytes(torch.cat([ds.train_x, ds.test_x]))
    assert x.shape == (2, 3, 3, 3)  # L -> RGB copies the grey level into every channel
    assert sorted(map(bytes, x)) == sorted([bytes(np.stack([grey] * 3)), bytes(rgb.transpose(2, 0, 1))])
    grey_only = load_dataset(cfg(tmp_path / "mix", tmp_path, test_fraction=0.5, channels=1))
    assert grey_only.x_shape == (1, 3, 3)


def test_resize_to_image_size(tmp_path):
    save(tmp_path / "sizes" / "a.png", np.full((8, 8), 200, np.uint8))
    save(tmp_path / "sizes" / "b.JPG", np.full((4, 6), 50, np.uint8))  # JPEG, any case of the suffix
    with pytest.raises(DataError, match=r"differ in size .*a.png is 8x8, .*b.JPG is 6x4\); pass --image-size"):
        load_dataset(cfg(tmp_path / "sizes", tmp_path))
    ds = load_dataset(cfg(tmp_path / "sizes", tmp_path, image_size=[2, 3], test_fraction=0.5))
    x = as_bytes(torch.cat([ds.train_x, ds.test_x])).astype(int)
    assert x.shape == (2, 1, 2, 3)
    constants = sorted(x.reshape(2, -1), key=lambda a: a[0])  # resizing keeps a constant; JPEG's DCT within 1 level
    assert set(constants[1]) == {200} and np.abs(constants[0] - 50).max() <= 1
    assert load_dataset(cfg(tmp_path / "sizes", tmp_path, image_size=[5], test_fraction=0.5)).x_shape == (1, 5, 5)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(classes, tmp_path, monkeypatch):
    root, images = classes
    first = load_dataset(cfg(root, tmp_path))
    cached = list((tmp_path / "cache" / "folders").iterdir())
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the folder did not change")
    with monkeypatch.context() as m:
        m.setattr(folders, "open_image", no_decoding)
        second = load_dataset(cfg(root, tmp_path))
    assert torch.equal(second.train_x, first.train_x) and torch.equal(second.test_y, first.test_y)

    new = 255 - images["train", "dog"][0]
    target = root / "train" / "dog" / "0.png"
    save(target, new)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file within one mtime tick
    third = load_dataset(cfg(root, tmp_path))
    np.testing.assert_array_equal(as_bytes(third.train_x[4, 0]), new)  # first dog image
    assert [p.name for p in (tmp_path / "cache" / "folders").iterdir()] != [p.name for p in cached]
    assert len(list((tmp_path / "cache" / "folders").iterdir())) == 1  # the stale cache is gone


def test_a_cache_failing_its_checksum_is_rebuilt(classes, tmp_path):
    root, _ = classes
    first = load_dataset(cfg(root, tmp_path))
    path = next((tmp_path / "cache" / "folders").iterdir())
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x"][0, 0, 0, 0] ^= 1
    np.savez(path, **arrays)
    assert torch.equal(load_dataset(cfg(root, tmp_path)).train_x, first.train_x)


def test_train_on_class_folders_and_report_shows_the_classes(classes, tmp_path, monkeypatch):
    root, _ = classes
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{root}", "--data-dir", str(tmp_path / "cache"), "--out", str(run),
                 "--image-size", "4", "3", *QUICK]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    meta = json.loads((run / "config.json").read_text())["run"]
    assert meta["n_classes"] == 2 and meta["x_shape"] == [1, 4, 3]
    report = (run / "report.html").read_text()
    assert "2 classes: cat, dog" in report and "latent.png" in report


def bad_folder(kind, root):
    if kind == "empty":
        root.mkdir()
        (root / "notes.txt").write_text("no images here")
    elif kind == "unreadable":
        save(root / "a.png", pixels(0))
        (root / "broken.png").write_bytes(b"not a png at all")
    elif kind == "loose and classes":
        save(root / "a.png", pixels(0))
        save(root / "cls" / "b.png", pixels(1))
    elif kind == "unknown test class":
        save(root / "train" / "cat" / "a.png", pixels(0))
        save(root / "test" / "cow" / "b.png", pixels(1))
    elif kind == "empty test":
        save(root / "train" / "a.png", pixels(0))
        (root / "test").mkdir()
    elif kind == "mixed sizes":
        save(root / "a.png", pixels(0, (6, 5)))
        save(root / "b.png", pixels(1, (4, 4)))


@pytest.mark.parametrize("kind, flags, message", [
    ("missing", [], r"image folder \S+ does not exist; check the path after 'folder:'"),
    ("empty", [], r"holds no images \(\*.png, \*.jpg, \*.jpeg\)"),
    ("unreadable", [], r"cannot read image \S+broken.png \(.*\); replace or remove it"),
    ("loose and classes", [], r"has images both directly in it \(a.png, ...\) and in class folders \(cls/, ...\)"),
    ("unknown test class", [], r"test/ has class folders that train/ lacks \(cow\); give every class training images"),
    ("empty test", [], r"imgs/test holds no images"),
    ("mixed sizes", [], r"differ in size .*a.png is 5x6, .*b.png is 4x4\); pass --image-size"),
    ("unreadable", ["--channels", "2"], r"channels must be 1 \(grey\) or 3 \(RGB\), got 2"),
    ("unreadable", ["--image-size", "2", "3", "4"], r"image_size takes one size \(square\) or two \(H W\), got 3"),
])
def test_bad_folders_are_one_line_and_write_nothing(kind, flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "imgs"
    bad_folder(kind, root)
    argv = ["train", "--dataset", f"folder:{root}", "--data-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), *flags, *QUICK]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aevb: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_options_of_other_sources_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="image_size applies to folder:PATH data only, not to mnist; drop it"):
        load_dataset(DataConfig(dataset="mnist", image_size=[28]))
    with pytest.raises(ConfigError, match="layer applies to h5ad:PATH data only"):
        load_dataset(cfg(tmp_path, tmp_path, layer="counts"))
    with pytest.raises(ConfigError, match="test_fraction applies to data without a test split \\(folder:, h5ad:, npy:, "
                                          "ldac:, frey-face, reuters\\)"):
        load_dataset(DataConfig(dataset="mnist", test_fraction=0.2))


# ------------------------------------------------------------------------------------------------
# AnnData

N_OBS, N_VARS = 80, 12


@pytest.fixture
def h5ad_file(tmp_path):
    """Counts (a sparse CSR layer 'counts'), X = log1p(counts) dense, obs 'cell_type' (3 categories)
    and 'batch' (a string column, not categorical): written with anndata itself, the real format."""
    ad = pytest.importorskip("anndata")
    import pandas as pd

    rng = np.random.default_rng(0)
    kind = rng.integers(0, 3, N_OBS)
    rates = rng.gamma(2.0, 2.0, (3, N_VARS))[kind]
    counts = rng.poisson(rates).astype(np.float32)
    adata = ad.AnnData(X=np.log1p(counts), layers={"counts": sp.csr_matrix(counts)},
                       obs=pd.DataFrame({"cell_type": pd.Categorical.from_codes(kind, ["T", "B", "NK"]),
                                         "batch": np.where(np.arange(N_OBS) % 2, "b2", "b1")},
                                        index=[f"cell{i}" for i in range(N_OBS)]))
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path, counts, kind


def h5(path, **kw):
    return DataConfig(dataset=f"h5ad:{path}", **kw)


def test_h5ad_layer_and_labels_round_trip(h5ad_file):
    path, counts, kind = h5ad_file
    ds = load_dataset(h5(path, layer="counts", label_key="cell_type"))
    assert ds.classes == ("T", "B", "NK") and ds.n_classes == 3 and ds.x_shape == (N_VARS,)
    assert (len(ds.train_x), len(ds.test_x)) == (72, 8)
    assert isinstance(ds.train_x.reader, sp.csr_matrix)  # the sparse layer stays sparse, made dense a batch at a time
    x, y = torch.cat([ds.train_x[:], ds.test_x[:]]), torch.cat([ds.train_y, ds.test_y])
    order = np.argsort(np.concatenate([np.setdiff1d(np.arange(N_OBS), test := held_out()), test]), kind="stable")
    np.testing.assert_array_equal(x.numpy()[order], counts)
    np.testing.assert_array_equal(y.numpy()[order], kind)
    strings = load_dataset(h5(path, label_key="batch"))  # a plain column: its sorted values are the classes
    assert strings.classes == ("b1", "b2")
    np.testing.assert_allclose(torch.cat([strings.train_x, strings.test_x]).numpy()[order], np.log1p(counts), rtol=1e-6)


def held_out():
    """The test rows of an 80-cell file: hold_out_test's seeded draw, restated."""
    return np.sort(np.random.default_rng(0).permutation(N_OBS)[:8])


def test_h5ad_train_negative_binomial_and_embed(h5ad_file, tmp_path, monkeypatch):
    ad = pytest.importorskip("anndata")
    path, counts, _ = h5ad_file
    monkeypatch.chdir(tmp_path)
    run, out = tmp_path / "run", tmp_path / "out" / "embedded.h5ad"
    assert main(["train", "--dataset", f"h5ad:{path}", "--layer", "counts", "--label-key", "cell_type",
                 "--likelihood", "negative_binomial", "--out", str(run), *QUICK]) == 0
    assert "3 classes: T, B, NK" in (run / "report.html").read_text()
    assert main(["embed", str(run), "--data", str(path), "--out", str(out)]) == 0
    written, original = ad.read_h5ad(out), ad.read_h5ad(path)
    z = written.obsm["X_aevb"]
    assert z.shape == (N_OBS, 2)
    expected = aevb.load(run).embed(torch.from_numpy(counts)).numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(written.X, original.X)  # a copy: everything else as it was
    assert (written.layers["counts"] != original.layers["counts"]).nnz == 0
    assert "X_aevb" not in original.obsm


def test_bad_h5ad_input(h5ad_file, tmp_path, monkeypatch, capsys):
    ad = pytest.importorskip("anndata")
    path, counts, _ = h5ad_file
    with pytest.raises(DataError, match=r"has no layer 'raw' \(its layers: counts\)"):
        load_dataset(h5(path, layer="raw"))
    with pytest.raises(DataError, match=r"has no obs column 'celltype' \(its columns: cell_type, batch\)"):
        load_dataset(h5(path, label_key="celltype"))
    nan = ad.read_h5ad(path)
    nan.X[3, 4] = np.nan
    nan.obs["cell_type"] = nan.obs["cell_type"].cat.remove_categories(["NK"])
    nan.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(DataError, match=r"X of \S+ contains NaN or Inf; .*\(this file has: counts\)"):
        load_dataset(h5(tmp_path / "nan.h5ad"))
    with pytest.raises(DataError, match=r"obs\['cell_type'\] of \S+ has \d+ missing labels"):
        load_dataset(h5(tmp_path / "nan.h5ad", layer="counts", label_key="cell_type"))
    with pytest.raises(DataError, match=r"h5ad file \S+ does not exist"):
        load_dataset(h5(tmp_path / "none.h5ad"))
    (tmp_path / "junk.h5ad").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"is not a readable .h5ad file"):
        load_dataset(h5(tmp_path / "junk.h5ad"))
    monkeypatch.setitem(sys.modules, "anndata", None)  # as if not installed
    assert main(["train", "--dataset", f"h5ad:{path}", "--out", str(tmp_path / "run"), *QUICK]) == 2
    assert "needs the anndata package; pip install aevb[anndata]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_embed_refuses_other_genes_and_its_own_input(h5ad_file, tmp_path, monkeypatch, capsys):
    ad = pytest.importorskip("anndata")
    path, _, _ = h5ad_file
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"h5ad:{path}", "--likelihood", "gaussian", "--no-report", "--out", str(run),
                 *QUICK]) == 0
    fewer = ad.read_h5ad(path)[:, :5].copy()
    fewer.write_h5ad(tmp_path / "fewer.h5ad")
    for argv, message in ((["--data", str(tmp_path / "fewer.h5ad"), "--out", str(tmp_path / "e.h5ad")],
                           "X of .*fewer.h5ad has 5 genes but the model of .* was trained on data of shape \\(12,\\)"),
                          (["--data", str(path), "--out", str(path)], "is the input file; write the copy elsewhere"),
                          (["--data", str(path), "--out", str(tmp_path / "e.h5ad"), "--layer", "raw"],
                           "has no layer 'raw'")):
        assert main(["embed", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "e.h5ad").exists()
