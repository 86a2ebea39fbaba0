"""A folder of PNG/JPEG images as a dataset (``folder:PATH``), decoded once and cached.

Layout (torchvision's ImageFolder convention): one sub-folder per class, labels numbered by the
sorted folder names, or the images directly in PATH for data without labels. Where PATH holds
``train/`` and ``test/`` sub-folders (each laid out so), they are the split; otherwise the caller
holds out a seeded fraction. Every image is converted to grey (L) or RGB (``channels``; by default
grey where every image is grey, else RGB, the alpha channel dropped) and resized (``image_size``,
bilinear) where asked. The decoded uint8 array (N, C, H, W) is cached in
``DATA_DIR/folders/<folder>-<listing>.npz``, named by the SHA-256 of the folder's path with the
options and of its listing (relative paths, sizes, mtimes) too, and holding the SHA-256 of its pixels:
a changed, added or removed file gives a new name, so the cache is rebuilt (and the stale one
deleted); a cache whose pixels do not match their checksum is rebuilt too.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from .formats import load_npz, one_line
from .sources import atomic_write_bytes

SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}
CACHE_VERSION = 1  # part of the cache's name: a change of the decoding makes old caches stale


@dataclass
class Listing:
    """The images of a folder in a fixed order, with their labels (None: no class folders), the
    class names, and which are test images (None: no train/ and test/ layout)."""

    files: list[Path]
    labels: list[int] | None
    classes: list[str]
    test: list[bool] | None


def visible(paths) -> list[Path]:
    return sorted(p for p in paths if not p.name.startswith("."))


def images_under(folder: Path) -> list[Path]:
    return visible(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def list_part(folder: Path) -> tuple[list[Path], list[str] | None]:
    """(files, their class names or None) of one folder: class sub-folders or images directly in it."""
    loose = visible(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    classes = [(d.name, images_under(d)) for d in visible(p for p in folder.iterdir() if p.is_dir())]
    classes = [(name, files) for name, files in classes if files]
    if loose and classes:
        raise DataError(f"{folder} has images both directly in it ({loose[0].name}, ...) and in class folders "
                        f"({classes[0][0]}/, ...); put every image in a class folder, or none (no labels)")
    if classes:
        return [f for _, files in classes for f in files], [name for name, files in classes for _ in files]
    return loose, None


def list_folder(root: Path) -> Listing:
    """The images of ``root``: its train/ and test/ sub-folders where both exist, else root itself."""
    if not root.is_dir():
        raise DataError(f"image folder {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                        "check the path after 'folder:'")
    parts = [root / "train", root / "test"]
    layout = all(p.is_dir() for p in parts)
    listed = [list_part(p) for p in parts] if layout else [list_part(root)]
    files = [f for fs, _ in listed for f in fs]
    empty = [str(p) for p, (fs, _) in zip(parts if layout else [root], listed) if not fs]
    if empty:
        raise DataError(f"{' and '.join(empty)} holds no images (*.png, *.jpg, *.jpeg); "
                        "put the images in it, one sub-folder per class or all directly in it")
    if len({names is None for _, names in listed}) > 1:
        raise DataError(f"{root}: one of train/ and test/ has class folders and the other not; lay both out alike")
    test = [i == 1 for i, (fs, _) in enumerate(listed) for _ in fs] if layout else None
    if listed[0][1] is None:
        return Listing(files, None, [], test)
    classes = sorted(set(listed[0][1]))
    unknown = sorted(set(n for _, names in listed for n in names) - set(classes))
    if unknown:
        raise DataError(f"{root}: test/ has class folders that train/ lacks ({', '.join(unknown)}); "
                        "give every class training images")
    label = {name: i for i, name in enumerate(classes)}
    return Listing(files, [label[n] for _, names in listed for n in names], classes, test)


def check_options(image_size: list[int] | None, channels: int | None) -> tuple[int, int] | None:
    """--image-size as (H, W) (one value: square) and --channels 1 or 3, checked."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size is None:
        return None
    if len(image_size) not in (1, 2):
        raise ConfigError(f"image_size takes one size (square) or two (H W), got {len(image_size)} values")
    return (image_size[0], image_size[-1])


def cache_path(cache: Path, root: Path, listing: Listing, size, channels) -> Path:
    """folders/<SHA-256 of the folder's path and the options>-<SHA-256 of the listing too>.npz."""
    stats = [(str(f.relative_to(root)), *(lambda s: (s.st_size, s.st_mtime_ns))(f.stat())) for f in listing.files]
    key = json.dumps([CACHE_VERSION, stats, size, channels]).encode()
    where = hashlib.sha256(json.dumps([str(root.resolve()), size, channels]).encode()).hexdigest()[:16]
    return cache / "folders" / f"{where}-{hashlib.sha256(key).hexdigest()[:32]}.npz"


def open_image(path: Path, decode: bool = True) -> Image.Image:
    """The image (decoded, or with its header read only); DataError naming the file where Pillow cannot read it."""
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({one_line(e)}); replace or remove it") from None


def decode(listing: Listing, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """All images as one uint8 array (N, C, H, W): converted to L or RGB, resized to ``size`` (H, W).
    The headers are read first, so that mixed sizes are refused before anything is decoded."""
    headers = [open_image(f, decode=False) for f in listing.files]
    if size is None:
        (w, h), i = headers[0].size, next((i for i, im in enumerate(headers) if im.size != headers[0].size), None)
        if i is not None:
            raise DataError(f"the images differ in size ({listing.files[0]} is {w}x{h}, {listing.files[i]} is "
                            f"{headers[i].size[0]}x{headers[i].size[1]}); pass --image-size H W to resize them all")
        size = (h, w)
    channels = channels or (1 if all(im.mode in GREY_MODES for im in headers) else 3)
    x = np.empty((len(headers), channels, *size), np.uint8)
    for i, f in enumerate(listing.files):
        im = open_image(f).convert("L" if channels == 1 else "RGB")
        if im.size != size[::-1]:
            im = im.resize(size[::-1], Image.Resampling.BILINEAR)
        a = np.asarray(im)
        x[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return x


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None where there is no cache or it fails its checksum."""
    if not path.is_file():
        return None
    try:
        arrays = load_npz(path)
    except DataError:
        return None
    if "x" not in arrays or "x_sha256" not in arrays:
        return None
    return arrays if hashlib.sha256(arrays["x"].tobytes()).hexdigest() == arrays["x_sha256"] else None


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache (atomically) and delete the stale caches of the same folder."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, x_sha256=np.array(hashlib.sha256(arrays["x"].tobytes()).hexdigest()))
    atomic_write_bytes(path, buffer.getvalue())
    for old in path.parent.glob(path.name.split("-")[0] + "-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def read_folder(root: Path, cache: Path, image_size: list[int] | None = None, channels: int | None = None):
    """((train_x, train_y, test_x, test_y), class names or None) of an image folder; test_x and
    test_y are None where the folder has no train/ and test/ layout (the caller holds out a part)."""
    size = check_options(image_size, channels)
    listing = list_folder(root)
    path = cache_path(cache, root, listing, size, channels)
    arrays = read_cache(path)
    if arrays is None:
        arrays = {"x": decode(listing, size, channels), "classes": np.array(listing.classes, dtype=str)}
        if listing.labels is not None:
            arrays["y"] = np.array(listing.labels, np.int64)
        if listing.test is not None:
            arrays["test"] = np.array(listing.test, bool)
        write_cache(path, arrays)
    x, y = arrays["x"], arrays.get("y")
    classes = [str(c) for c in arrays["classes"]] or None
    if "test" not in arrays:
        return (x, y, None, None), classes
    test = arrays["test"]
    pick = lambda a, m: None if a is None else a[m]  # noqa: E731
    return (x[~test], pick(y, ~test), x[test], pick(y, test)), classes

