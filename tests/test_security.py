"""Nothing unsafe is loaded: a checkpoint carrying a malicious pickle is refused without running
its payload (the payload would create a marker file); weights load only through safetensors;
archive members that would land outside the target folder are refused; downloads are checked
against their SHA-256 before anything is written, so a mismatch leaves no file (tested against an
HTTP server on 127.0.0.1)."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import aevb
from aevb import rundir
from aevb.cli import main
from aevb.config import Config
from aevb.data.datasets import IDXDataset
from aevb.data.formats import load_array_pickle, read_cifar10_tar, safe_members
from aevb.data.sources import download
from aevb.errors import DataError, RunError


class Payload:
    """Unpickling this runs ``touch marker`` (os.system): the classic pickle exploit."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload:
    """The same through builtins.exec, which some allow-lists forget."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    cfg = Config()
    cfg.data.dataset, cfg.model.hidden, cfg.model.latent_dim, cfg.train.epochs = "digits", [8], 2, 1
    return aevb.train(cfg, tmp_path_factory.mktemp("run") / "run", quiet=True)


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_the_payloads_are_live(tmp_path):
    """Control: an unrestricted unpickler does run them, so the refusals below mean something."""
    for i, payload in enumerate((Payload, ExecPayload)):
        marker = tmp_path / f"marker{i}"
        torch.save(payload(marker), tmp_path / "evil.pt")
        torch.load(tmp_path / "evil.pt", weights_only=False)
        assert marker.exists()


@pytest.mark.parametrize("payload", [Payload, ExecPayload])
@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "inside the state"])
def test_a_malicious_optimizer_state_is_refused_without_running(run, tmp_path, payload, how):
    run = copy_of(run, tmp_path)
    marker = tmp_path / "pwned"
    if how == "torch.save":
        torch.save(payload(marker), run / rundir.OPTIMIZER)
    elif how == "raw pickle":
        (run / rundir.OPTIMIZER).write_bytes(pickle.dumps(payload(marker)))
    else:  # a genuine checkpoint with the payload tucked into the optimizer state
        state = torch.load(run / rundir.OPTIMIZER, weights_only=True)
        state["optimizer"]["state"][0]["extra"] = payload(marker)
        torch.save(state, run / rundir.OPTIMIZER)
    cfg = Config.from_dict({k: v for k, v in __import__("json").loads((run / "config.json").read_text()).items() if k != "run"})
    cfg.train.epochs = 2
    with pytest.raises(RunError, match="optimizer.pt is corrupt or unsafe"):
        aevb.train(cfg, run, resume=True, quiet=True)
    assert not marker.exists()


def test_a_malicious_optimizer_state_is_refused_through_the_cli(run, tmp_path, capsys):
    run = copy_of(run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), run / rundir.OPTIMIZER)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aevb: error: ") and "unsafe" in err[0]
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_weights_load_through_safetensors_only(run, tmp_path):
    run = copy_of(run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"encoder.1.0.weight": Payload(marker)}, run / rundir.WEIGHTS)  # a torch pickle named .safetensors
    with pytest.raises(RunError, match="corrupt or truncated"):
        aevb.load(run)
    (run / rundir.WEIGHTS).write_bytes(b"\xff" * 8 + b'{"__metadata__": {}}')  # a header length far past the end
    with pytest.raises(RunError, match="corrupt or truncated"):
        aevb.load(run)
    assert not marker.exists()


def test_no_unsafe_loader_anywhere_in_the_package():
    """Every torch.load in aevb passes weights_only=True; no pickle.load(s), torch.load without it,
    or numpy load with allow_pickle=True (a guard against an edit that drops one)."""
    import ast
    root = Path(aevb.__file__).parent
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{file.relative_to(root)}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, where
            assert (owner, node.func.attr) not in {("pickle", "load"), ("pickle", "loads"), ("torch", "jit")}, where
            if (owner, node.func.attr) == ("np", "load"):
                assert isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False, where


@pytest.mark.parametrize("payload", [Payload, ExecPayload])
def test_a_malicious_dataset_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": payload(marker)}, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_array_pickle(data, "batch")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# archives


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


ESCAPES = {
    "absolute path": member("/tmp/aevb-escape", data=b"x"),
    "dot-dot": member("../aevb-escape", data=b"x"),
    "dot-dot inside": member("cifar-10-batches-py/../../aevb-escape", data=b"x"),
    "backslash dot-dot": member("..\\..\\aevb-escape", data=b"x"),
    "drive letter": member("C:/aevb-escape", data=b"x"),
    "symlink out": member("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"),
    "symlink relative": member("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../../etc/passwd"),
    "symlink inside": member("cifar-10-batches-py/link", tarfile.SYMTYPE, "data_batch_1"),
    "hardlink": member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "/etc/passwd"),
    "character device": member("cifar-10-batches-py/dev", tarfile.CHRTYPE),
    "fifo": member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE),
}


def cifar_archive(path: Path, extra: tuple[tarfile.TarInfo, bytes] | None) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        if extra is not None and extra[0].name.endswith("aevb-escape"):
            tar.addfile(extra[0], io.BytesIO(extra[1]))  # first, so no batch read happens before the refusal
            extra = None
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra[0], io.BytesIO(extra[1]) if extra[1] else None)


@pytest.mark.parametrize("kind", ESCAPES)
def test_an_archive_member_that_would_escape_is_refused(tmp_path, kind):
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    cifar_archive(folder / "cifar-10-python.tar.gz", ESCAPES[kind])
    with pytest.raises(DataError, match="unsafe member"):
        read_cifar10_tar(folder / "cifar-10-python.tar.gz")
    with tarfile.open(folder / "cifar-10-python.tar.gz") as tar, pytest.raises(DataError, match="unsafe member"):
        safe_members(tar, "archive")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-10-python.tar.gz", "cifar10", "data"]
    assert not Path("/tmp/aevb-escape").exists()


def test_a_clean_archive_is_read(tmp_path):
    cifar_archive(tmp_path / "c.tar.gz", None)
    train_x, train_y, test_x, test_y = read_cifar10_tar(tmp_path / "c.tar.gz")
    assert train_x.shape == (10, 3, 32, 32) and test_y.tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------
# downloads, against a server on 127.0.0.1


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):
        if self.path == "/short":  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only this")
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


sha = lambda b: hashlib.sha256(b).hexdigest()


def test_a_verified_download_is_written(server, tmp_path):
    Handler.files["/good.bin"] = b"the published bytes"
    target = tmp_path / "cache" / "good.bin"
    assert download([f"{server}/good.bin"], target, sha(b"the published bytes")) == target
    assert target.read_bytes() == b"the published bytes" and os.listdir(target.parent) == ["good.bin"]


def test_a_sha256_mismatch_leaves_no_file(server, tmp_path):
    Handler.files["/tampered.bin"] = b"not the published bytes"
    target = tmp_path / "cache" / "tampered.bin"
    with pytest.raises(DataError, match="tampered.bin .*SHA-256 mismatch"):
        download([f"{server}/tampered.bin"], target, sha(b"the published bytes"))
    assert not target.parent.exists()  # not the file, not a temporary, not even the folder
    (tmp_path / "cache").mkdir()
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download([f"{server}/tampered.bin"], target, sha(b"the published bytes"))
    assert os.listdir(tmp_path / "cache") == []


def test_a_short_read_or_a_missing_mirror_fails_cleanly_and_the_next_mirror_is_tried(server, tmp_path):
    Handler.files["/ok.gz"] = gzip.compress(b"content")
    target = tmp_path / "ok.gz"
    with pytest.raises(DataError, match="404.*IncompleteRead|404"):
        download([f"{server}/missing", f"{server}/short"], target, sha(b"content"), gunzipped=True)
    assert not target.exists() and os.listdir(tmp_path) == []
    download([f"{server}/missing", f"{server}/short", f"{server}/ok.gz"], target, sha(b"content"), gunzipped=True)
    assert gzip.decompress(target.read_bytes()) == b"content"


def idx(a: np.ndarray) -> bytes:
    import struct
    return struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def test_a_dataset_download_with_one_bad_file_leaves_no_file(server, tmp_path):
    rng = np.random.default_rng(0)
    content = {"train-images-idx3-ubyte": idx(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
               "train-labels-idx1-ubyte": idx(rng.integers(0, 10, 6, dtype=np.uint8)),
               "t10k-images-idx3-ubyte": idx(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
               "t10k-labels-idx1-ubyte": idx(rng.integers(0, 10, 3, dtype=np.uint8))}
    for name, data in content.items():
        Handler.files[f"/toy/{name}.gz"] = gzip.compress(data)
    digests = {name: sha(data) for name, data in content.items()}
    spec = IDXDataset(name="toy", digests={**digests, "t10k-labels-idx1-ubyte": sha(b"something else")},
                      mirrors=[f"{server}/toy/"], how_to_get="serve it")
    with pytest.raises(DataError, match="toy is not on this machine and could not download t10k-labels.*SHA-256 mismatch"):
        spec.load(tmp_path, allow_download=True)
    assert list(tmp_path.iterdir()) == []  # the three good files are not written either
    spec.digests = digests
    (train_x, train_y, test_x, test_y), source = spec.load(tmp_path, allow_download=True)
    assert train_x.shape == (6, 1, 28, 28) and test_y.shape == (3,) and source.startswith("downloaded")
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == sorted(n + ".gz" for n in content)
