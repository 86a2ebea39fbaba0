"""Where data comes from: the data directory, packages that ship it, and verified downloads."""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

from ..errors import DataError


def data_dir(configured: str | None) -> Path:
    """--data-dir, else $AEVB_DATA, else ~/.cache/aevb."""
    return Path(configured or os.environ.get("AEVB_DATA") or Path.home() / ".cache" / "aevb").expanduser()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(urls: list[str], target: Path, digest: str, gunzipped: bool = False, timeout: float = 30.0) -> Path:
    """Fetch the first URL that answers, check its SHA-256 (of the gunzipped content when
    ``gunzipped``) and only then write it to ``target``; a mismatch writes nothing."""
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                data = r.read()
        except (OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            continue
        try:
            content = gzip.decompress(data) if gunzipped else data
        except (OSError, EOFError, zlib.error):
            content = b""
        if sha256(content) != digest:
            errors.append(f"{url}: SHA-256 mismatch")
            continue
        atomic_write_bytes(target, data)
        return target
    raise DataError(f"could not download {target.name} ({'; '.join(errors)})")
