"""Where data comes from: the data directory, packages that ship it, and verified downloads."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from ..errors import DataError


def data_dir(configured: str | None) -> Path:
    """--data-dir, else $AEVB_DATA, else ~/.cache/aevb."""
    return Path(configured or os.environ.get("AEVB_DATA") or Path.home() / ".cache" / "aevb").expanduser()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so no half-written file is left."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"cannot write {path} ({e.strerror or e}); choose another --data-dir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DataError(f"cannot write {path} ({e.strerror or e}); free some space or choose another --data-dir") from None
        raise


MAX_DOWNLOAD_BYTES = 2**30  # the largest published file (CIFAR-10) is 170 MB


def fetch_first(urls: list[str], refusal: Callable[[bytes], str | None], name: str, timeout: float = 30.0) -> bytes:
    """The bytes of the first URL that answers with content that ``refusal`` finds nothing wrong with
    (it returns None, or what is wrong); nothing is written anywhere."""
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                data = r.read(MAX_DOWNLOAD_BYTES + 1)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, resets, short reads
            errors.append(f"{url}: {type(e).__name__}: {e}".replace("\n", " "))
            continue
        wrong = f"larger than {MAX_DOWNLOAD_BYTES} bytes" if len(data) > MAX_DOWNLOAD_BYTES else refusal(data)
        if wrong:
            errors.append(f"{url}: {wrong}")
            continue
        return data
    raise DataError(f"could not download {name} ({'; '.join(errors) or 'no URL to try'})")


def fetch_verified(urls: list[str], digest: str, name: str, gunzipped: bool = False, timeout: float = 30.0) -> bytes:
    """The bytes of the first URL that answers with content whose SHA-256 (of the gunzipped
    content when ``gunzipped``) is ``digest``; nothing is written anywhere."""
    def mismatch(data: bytes) -> str | None:
        try:
            content = gzip.decompress(data) if gunzipped else data
        except (OSError, EOFError, zlib.error):
            content = b""
        return None if sha256(content) == digest else "SHA-256 mismatch (the file differs from the published one)"

    return fetch_first(urls, mismatch, name, timeout)


def download(urls: list[str], target: Path, digest: str, gunzipped: bool = False, timeout: float = 30.0) -> Path:
    """Fetch the first URL that answers, check its SHA-256 (of the gunzipped content when
    ``gunzipped``) and only then write it to ``target`` (atomically); a mismatch writes nothing."""
    atomic_write_bytes(target, fetch_verified(urls, digest, target.name, gunzipped, timeout))
    return target


def download_all(folder: Path, mirrors: list[str], digests: dict[str, str], suffix: str = "",
                 gunzipped: bool = False) -> None:
    """Download every file NAME of ``digests`` (NAME -> SHA-256) as MIRROR + NAME + suffix, from the
    first mirror that has it, and verify them all before any is written into ``folder``, so that a
    failure leaves no partial dataset behind."""
    data = {name + suffix: fetch_verified([m + name + suffix for m in mirrors], digest, name + suffix, gunzipped)
            for name, digest in digests.items()}
    for name, content in data.items():
        atomic_write_bytes(folder / name, content)
