"""The catalogue of bad inputs: every case goes through the command line (a separate process:
exit code 2, exactly one line on stderr starting 'aevb: error: ' that names the problem, and the
working folder unchanged afterwards, so no partial file) and through the Python API (a UserError
subclass with the same message). One table row per case.

Each CLI case runs in its own process, forked from a warm server process that has imported aevb
(torch, scikit-learn, torch._dynamo) once: a fresh ``python -m aevb.cli`` pays ~5 s of imports
per case on 2 cores. ``test_the_fork_server_answers_like_the_real_command`` checks a few cases
against real ``python -m aevb.cli`` processes; AEVB_CATALOGUE_REAL_PROCESSES=1 runs the whole
catalogue that way."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import aevb
from aevb import rundir
from aevb.config import Config, field_types, load_toml
from aevb.data import load_dataset
from aevb.errors import ConfigError, DataError, RunError, UserError

# ---------------------------------------------------------------------------------------------
# a warm process that forks one child per command line

SERVER = r'''
import json, os, sys, traceback
import torch
from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import load_dataset
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo here, once
load_dataset(DataConfig(dataset="digits"))  # imports scikit-learn here, once
import aevb.viz, aevb.evaluate  # what sample, reconstruct and evaluate import
reply = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            exec(req.get("setup", ""), {"__name__": "__setup__"})
            code = main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), file=reply, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=reply, flush=True)
'''

# one thread: forking is safe (no OpenMP pool yet) and tiny nets run far faster on a shared machine
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


class CLIServer:
    """``run(argv, cwd)`` → Result of ``aevb`` in a fresh (forked) process; ``start``/``wait``
    for tests that signal or kill the child in between."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=ONE_THREAD)
        self.buffer = b""

    def _line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.proc.stdout], [], [], 0)[0]:
                raise AssertionError("the CLI server did not answer (or died)")
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError("the CLI server died")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, argv: list[str], cwd: Path, outdir: Path, setup: str = "") -> int:
        outdir.mkdir(parents=True, exist_ok=True)
        self.outdir = outdir
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "setup": setup,
               "stdout": str(outdir / "stdout"), "stderr": str(outdir / "stderr")}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        return self._line(120)["pid"]

    def wait(self, timeout: float = 120) -> Result:
        rc = self._line(timeout)["rc"]
        return Result(rc, (self.outdir / "stdout").read_text(), (self.outdir / "stderr").read_text())

    def run(self, argv: list[str], cwd: Path, outdir: Path, setup: str = "") -> Result:
        self.start(argv, cwd, outdir, setup)
        return self.wait()

    def close(self):
        self.proc.kill()  # it has no child left; skip the interpreter's teardown
        self.proc.wait(30)


def real_cli(argv: list[str], cwd: Path) -> Result:
    r = subprocess.run([sys.executable, "-m", "aevb.cli", *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=ONE_THREAD)
    return Result(r.returncode, r.stdout, r.stderr)


# ---------------------------------------------------------------------------------------------
# files for the cases


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(a.dtype.newbyteorder(">")).tobytes()


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_folder(folder: Path, change: Callable[[dict], None] | None = None, gz: bool = False) -> None:
    """A fashion-mnist folder of four small IDX files; ``change`` edits the {name: bytes} first."""
    rng = np.random.default_rng(0)
    files = {IDX_FILES[0]: idx_bytes(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)),
             IDX_FILES[1]: idx_bytes(rng.integers(0, 10, 20, dtype=np.uint8)),
             IDX_FILES[2]: idx_bytes(rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)),
             IDX_FILES[3]: idx_bytes(rng.integers(0, 10, 10, dtype=np.uint8))}
    if change:
        change(files)
    folder.mkdir(parents=True)
    for name, data in files.items():
        if data is not None:
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


class Payload:
    """Unpickling this calls os.system: a pickle that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def cifar_tar(path: Path, batches: dict | None = None, extra: tarfile.TarInfo | None = None, raw: dict | None = None) -> None:
    """A CIFAR-10 python tarball with 4 images per batch; ``batches``/``raw`` replace members by
    object or by bytes (None drops the member)."""
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            obj = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 4).tolist()}
            if batches and name in batches:
                obj = batches[name]
            data = pickle.dumps(obj, protocol=2)
            if raw and name in raw:
                data = raw[name]
            if obj is None or data is None:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)


def npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, **arrays)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


GOOD = dict(x_train=np.full((6, 4), 0.5), x_test=np.full((3, 4), 0.5))


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def edit_trainer_state(path: Path, edit: Callable[[dict], object]) -> None:
    state = torch.load(path, weights_only=True)
    state = edit(state) or state
    torch.save(state, path)


# ---------------------------------------------------------------------------------------------
# the catalogue

QUICK = ["--dataset", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet"]  # should a case wrongly train, it is quick


def cfg_of(ws: Path | None = None, **values) -> Config:
    """A Config with attributes assigned directly, as Python users do (unchecked until train);
    '{ws}' in a string value becomes the workspace folder."""
    cfg = Config()
    values = {"epochs": 1, "hidden": [8], "latent_dim": 2, "dataset": "digits", **values}
    types = field_types()
    for key, value in values.items():
        if isinstance(value, str) and ws is not None:
            value = value.replace("{ws}", str(ws))
        setattr(getattr(cfg, types[key][0]), key, value)
    return cfg


def train_api(**values) -> Callable[[Path], object]:
    return lambda ws: aevb.train(cfg_of(ws, **values), ws / "out", quiet=True)


def train_cli(*args) -> list[str]:
    return ["train", *QUICK, "--out", "{ws}/out", *args]


def resume_api(ws: Path):
    return aevb.train(cfg_of(epochs=2), ws / "run", resume=True, quiet=True)


RESUME = ["train", "--resume", "--out", "{ws}/run", "--epochs", "2", "--quiet"]


@dataclass
class Case:
    id: str
    cli: list[str] | None  # None: no command-line form
    api: Callable[[Path], object] | None  # None: no Python form
    error: type[UserError]
    match: str  # a regex both messages must contain
    setup: Callable[[Path, dict], None] = field(default=lambda ws, assets: None)
    patch: dict = field(default_factory=dict)  # "module:attribute" -> value, set in both forms


def copy_run(name: str = "run"):
    def setup(ws, assets):
        shutil.copytree(assets[name], ws / "run")
    return setup


def then(*steps):
    def setup(ws, assets):
        for step in steps:
            step(ws, assets)
    return setup


def write(rel: str, data: bytes | str | Callable[[], bytes]):
    def setup(ws, assets):
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = data() if callable(data) else data
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def truncate(rel: str, keep: int):
    def setup(ws, assets):
        path = ws / rel
        path.write_bytes(path.read_bytes()[:keep])
    return setup


def from_toml(ws: Path) -> Config:
    return Config.from_dict(load_toml(ws / "c.toml"), str(ws / "c.toml"))


def npz_case(id, match, error=DataError, extra_cli=(), extra_api=None, **arrays) -> Case:
    return Case(id, train_cli("--dataset", "npz:{ws}/d.npz", *extra_cli),
                train_api(dataset="npz:{ws}/d.npz", **(extra_api or {})), error, match,
                lambda ws, assets: npz(ws / "d.npz", **arrays))


def idx_case(id, match, change, gz=False) -> Case:
    return Case(id, train_cli("--dataset", "fashion-mnist", "--data-dir", "{ws}/data", "--no-download"),
                train_api(dataset="fashion-mnist", data_dir="{ws}/data", download=False), DataError, match,
                lambda ws, assets: idx_folder(ws / "data" / "fashion-mnist", change, gz))


def tar_case(id, match, patch=None, **kw) -> Case:
    return Case(id, train_cli("--dataset", "cifar10", "--data-dir", "{ws}/data", "--no-download"),
                train_api(dataset="cifar10", data_dir="{ws}/data", download=False), DataError, match,
                lambda ws, assets: cifar_tar(ws / "data" / "cifar10" / "cifar-10-python.tar.gz", **kw), patch or {})


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def big_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("cifar-10-batches-py/huge")
    info.size = 20000  # over the limit, which the case lowers to 16 kB (the real one is 256 MB)
    return info


def zip_with_text(ws, assets):
    with zipfile.ZipFile(ws / "d.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, GOOD["x_train"])
        z.writestr("x_train.npy", buf.getvalue())
        z.writestr("x_test", b"not an array")


def cells(sparse_nan=False, negative=False, csc=False):
    """Setup: c.h5ad, 6 cells × 4 genes of counts in X and in a sparse layer 'counts' (CSR, or CSC), obs
    'cell_type' and 'batch'; optionally a NaN in the layer or a negative count in X."""
    def setup(ws, assets):
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp

        counts = (np.arange(24, dtype=np.float32).reshape(6, 4) % 5) + 1
        layer = (sp.csc_matrix if csc else sp.csr_matrix)(counts)
        if sparse_nan:
            layer.data[3] = np.nan
        x = counts.copy()
        if negative:
            x[:, 1] = -3
        obs = pd.DataFrame({"cell_type": list("ababab"), "batch": list("xxyyxy")}, index=[f"c{i}" for i in range(6)])
        ad.AnnData(X=x, layers={"counts": layer}, obs=obs).write_h5ad(ws / "c.h5ad")
    return setup


def as_flags(values: dict) -> list[str]:
    """Config values as the command line's flags: {"batch_key": "b"} -> ["--batch-key", "b"]."""
    return [x for key, value in values.items() for x in (f"--{key.replace('_', '-')}", str(value))]


def h5ad_case(id, match, stream=False, error=DataError, setup=None, **values) -> Case:
    """A case on c.h5ad (``cells()`` unless ``setup``), the same settings as flags and as config values."""
    values = {"dataset": "h5ad:{ws}/c.h5ad", **values, **({"stream": True} if stream else {})}
    return Case(id, train_cli(*as_flags({k: v for k, v in values.items() if k != "stream"}), *["--stream"] * stream),
                train_api(**values), error, match, setup or cells())


def npy_case(id, match, data, error=DataError, **values) -> Case:
    """A case on d.npy (``data``: its bytes, None for no file) read with --stream."""
    return Case(id, train_cli("--dataset", "npy:{ws}/d.npy", "--stream", *as_flags(values)),
                train_api(dataset="npy:{ws}/d.npy", stream=True, **values), error, match,
                write("d.npy", data) if data is not None else (lambda ws, assets: None))


def set_weights_nan(ws, assets):
    from safetensors.torch import load_file, save_file
    state = load_file(str(ws / "run" / rundir.WEIGHTS))
    next(iter(state.values()))[0] = float("nan")
    save_file(state, str(ws / "run" / rundir.WEIGHTS), metadata={"epoch": "1"})


CASES = [
    # --- unknown or mistyped keys and flags, with a 'did you mean'
    Case("flag-typo", ["train", "--latnt-dim", "3"], lambda ws: Config.from_dict({"latnt_dim": 3}),
         ConfigError, r"did you mean '(--)?latent.dim'"),
    Case("toml-key-typo", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError,
         r"unknown key 'latnt_dim' in \[model\].*did you mean 'latent_dim'", write("c.toml", "[model]\nlatnt_dim = 3\n")),
    Case("toml-key-in-wrong-section", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError,
         r"unknown key 'latent_dim' in \[train\].*it belongs in \[model\]", write("c.toml", "[train]\nlatent_dim = 3\n")),
    Case("toml-section-not-a-table", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError,
         r"\[train\] in .* must be a table", write("c.toml", "train = 3\n")),
    Case("toml-syntax", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError, "not valid TOML",
         write("c.toml", "latent_dim = = 3\n")),
    Case("toml-not-utf8", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError, "not valid TOML",
         write("c.toml", b"\xff\xfe\x00latent")),
    Case("toml-wrong-type", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError, "epochs must be an int",
         write("c.toml", '[train]\nepochs = "ten"\n')),
    Case("toml-date-value", train_cli("--config", "{ws}/c.toml"), from_toml, ConfigError, "seed has an unsupported value",
         write("c.toml", "seed = 1979-05-27\n")),
    Case("config-missing", train_cli("--config", "{ws}/nope.toml"), lambda ws: load_toml(ws / "nope.toml"),
         ConfigError, "does not exist"),
    Case("config-is-a-folder", train_cli("--config", "{ws}"), lambda ws: load_toml(ws), ConfigError, "is a directory"),
    Case("json-config-not-an-object", train_cli("--config", "{ws}/c.json"),
         lambda ws: __import__("aevb.config", fromlist=["load_json"]).load_json(ws / "c.json"), ConfigError,
         "holds a JSON list", write("c.json", "[1, 2]")),
    Case("likelihood-typo", train_cli("--likelihood", "bernouli"), train_api(likelihood="bernouli"), ConfigError,
         "unknown likelihood 'bernouli' \\(did you mean 'bernoulli'\\?\\)"),
    Case("posterior-unknown", train_cli("--posterior", "gausian"), train_api(posterior="gausian"), ConfigError,
         "unknown posterior family 'gausian'.*choose one of: normal"),
    Case("optimizer-typo", train_cli("--optimizer", "adamm"), train_api(optimizer="adamm"), ConfigError, "did you mean 'adam'"),
    Case("estimator-typo", train_cli("--estimator", "iwea"), train_api(estimator="iwea"), ConfigError, "did you mean 'iwae'"),
    Case("activation-typo", train_cli("--activation", "rleu"), train_api(activation="rleu"), ConfigError, "did you mean 'relu'"),
    Case("net-typo", train_cli("--net", "mpl"), train_api(net="mpl"), ConfigError, "did you mean 'mlp'"),
    Case("schedule-typo", train_cli("--beta-schedule", "cyclic"), train_api(beta_schedule="cyclic"), ConfigError,
         "did you mean 'cyclical'"),
    Case("binarize-typo", train_cli("--binarize", "dynamc"), train_api(binarize="dynamc"), ConfigError,
         "unknown binarize 'dynamc' \\(did you mean 'dynamic'\\?\\)"),
    Case("on-nan-typo", train_cli("--on-nan", "rolback"), train_api(on_nan="rolback"), ConfigError,
         "unknown on_nan 'rolback' \\(did you mean 'rollback'\\?\\)"),
    Case("device-unknown", train_cli("--device", "tpu9"), train_api(device="tpu9"), ConfigError, "device 'tpu9' is not usable"),
    Case("likelihood-scale-unknown", train_cli("--likelihood", "gaussian", "--likelihood-scale", "predcted"),
         train_api(likelihood="gaussian", likelihood_scale="predcted"), ConfigError, "unknown likelihood_scale 'predcted'"),
    Case("likelihood-scale-misplaced", train_cli("--likelihood-scale", "predicted"), train_api(likelihood_scale="predicted"),
         ConfigError, "apply to gaussian, sigmoid_gaussian and laplace, not bernoulli"),
    Case("not-a-command", ["frobnicate"], None, ConfigError, "invalid choice: 'frobnicate'"),
    Case("flag-without-value", ["train", "--latent-dim"], None, ConfigError, "expected one argument"),
    Case("resume-without-out", ["train", "--resume", "--quiet"], lambda ws: aevb.train(Config(), resume=True),
         ConfigError, "--resume needs the run directory"),
    # --- semi-supervised settings
    Case("labelled-on-a-vae", train_cli("--labelled", "100"), train_api(labelled=100), ConfigError,
         "--labelled applies to the semi-supervised models"),
    Case("labelled-not-equal-per-class", train_cli("--model", "m2", "--labelled", "15"), train_api(model="m2", labelled=15),
         ConfigError, "cannot be split equally over 10 classes; use a multiple of 10"),
    Case("labelled-too-many", train_cli("--model", "pcvae", "--labelled", "5000"), train_api(model="pcvae", labelled=5000),
         ConfigError, "needs 500 examples of each class"),
    Case("labelled-zero", train_cli("--model", "m2", "--labelled", "0"), train_api(model="m2", labelled=0), ConfigError,
         "labelled must be positive"),
    Case("alpha-negative", train_cli("--model", "m2", "--alpha", "-1"), train_api(model="m2", alpha=-1.0), ConfigError,
         "alpha must be non-negative"),
    Case("labelled-every-on-a-vae", train_cli("--labelled-every", "10"), train_api(labelled_every=10), ConfigError,
         "--labelled-every applies to the semi-supervised models"),
    Case("beta-y-on-a-pcvae", train_cli("--model", "pcvae", "--beta-y", "1"), train_api(model="pcvae", beta_y=1.0),
         ConfigError, "--beta-y weighs the KL of M2's class y; pcvae has none"),
    Case("beta-y-negative", train_cli("--model", "m2", "--beta-y", "-1"), train_api(model="m2", beta_y=-1.0),
         ConfigError, "beta_y must be non-negative"),
    Case("consistency-on-m2", train_cli("--model", "m2", "--consistency", "1"), train_api(model="m2", consistency=1.0),
         ConfigError, "--consistency holds a classifier's predictions on the model's reconstructions to the label; m2 has"),
    Case("consistency-negative", train_cli("--model", "pcvae", "--consistency", "-1"),
         train_api(model="pcvae", consistency=-1.0), ConfigError, "consistency must be non-negative"),
    Case("labelled-every-zero", train_cli("--model", "m2", "--labelled-every", "0"), train_api(model="m2", labelled_every=0),
         ConfigError, "labelled_every must be positive"),
    Case("split-typo", train_cli("--split", "80-20"), train_api(split="80-20"), ConfigError, "unknown split '80-20'"),
    Case("model-typo", train_cli("--model", "m3"), train_api(model="m3"), ConfigError, "unknown model 'm3'"),
    Case("experiment-labels-not-a-count", ["experiment", "ssl", "--labels", "100,ten", "--out", "{ws}/out"],
         lambda ws: __import__("aevb.experiments.ssl", fromlist=["parse_labels"]).parse_labels("100,ten"), ConfigError,
         "--labels takes positive counts or 'all'"),
    Case("experiment-unknown", ["experiment", "sll"], None, ConfigError, "invalid choice: 'sll'"),
    # --- negative, zero, non-finite or out-of-range sizes and rates
    Case("latent-dim-zero", train_cli("--latent-dim", "0"), train_api(latent_dim=0), ConfigError, "latent_dim must be positive"),
    Case("batch-size-negative", train_cli("--batch-size", "-5"), train_api(batch_size=-5), ConfigError,
         "batch_size must be positive"),
    Case("hidden-zero", train_cli("--hidden", "16", "0"), train_api(hidden=[16, 0]), ConfigError, "hidden must be positive sizes"),
    Case("conv-channels-negative", train_cli("--conv-channels", "-8"), train_api(conv_channels=[-8]), ConfigError,
         "conv_channels must be positive sizes"),
    Case("epochs-zero", train_cli("--epochs", "0"), train_api(epochs=0), ConfigError, "epochs must be positive"),
    Case("epochs-fractional", train_cli("--epochs", "2.5"), train_api(epochs=2.5), ConfigError, "epochs must be an int"),
    Case("train-size-zero", train_cli("--train-size", "0"), train_api(train_size=0), ConfigError, "train_size must be positive"),
    Case("samples-zero", train_cli("--samples", "0"), train_api(samples=0), ConfigError, "samples must be positive"),
    Case("lr-zero", train_cli("--lr", "0"), train_api(lr=0.0), ConfigError, "lr must be positive"),
    Case("lr-nan", train_cli("--lr", "nan"), train_api(lr=float("nan")), ConfigError, "lr must be positive"),
    Case("lr-inf", train_cli("--lr", "inf"), train_api(lr=float("inf")), ConfigError, "lr must be a finite number"),
    Case("lr-not-a-number", train_cli("--lr", "fast"), train_api(lr="fast"), ConfigError, "lr must be a float"),
    Case("beta-negative", train_cli("--beta", "-1"), train_api(beta=-1.0), ConfigError, "beta must be non-negative"),
    Case("cycle-ratio-above-one", train_cli("--cycle-ratio", "2"), train_api(cycle_ratio=2.0), ConfigError,
         r"cycle_ratio must be in \(0, 1\]"),
    Case("nan-lr-factor-one", train_cli("--nan-lr-factor", "1"), train_api(nan_lr_factor=1.0), ConfigError,
         r"nan_lr_factor must be in \(0, 1\)"),
    Case("posterior-df-negative", train_cli("--posterior-df", "-1"), train_api(posterior_df=-1.0), ConfigError,
         "posterior_df must be positive"),
    # --- simplex latents (topic proportions) and bags of words
    Case("simplex-posterior-gaussian-prior", train_cli("--posterior", "dirichlet"), train_api(posterior="dirichlet"),
         ConfigError, "--posterior dirichlet is over the simplex but --prior standard_normal over R\\^D"),
    Case("gaussian-posterior-simplex-prior", train_cli("--prior", "laplace_dirichlet"), train_api(prior="laplace_dirichlet"),
         ConfigError, "choose --prior standard_normal or mixture_of_gaussians"),
    Case("simplex-of-one", train_cli("--posterior", "logistic_normal", "--prior", "dirichlet", "--latent-dim", "1"),
         train_api(posterior="logistic_normal", prior="dirichlet", latent_dim=1), ConfigError, "needs K ≥ 2, got 1"),
    Case("prior-concentration-negative", train_cli("--prior-concentration", "-1"), train_api(prior_concentration=-1.0),
         ConfigError, "prior_concentration must be positive"),
    Case("prior-concentration-misplaced", train_cli("--prior-concentration", "2"), train_api(prior_concentration=2.0),
         ConfigError, "--prior-concentration applies to --prior dirichlet and laplace_dirichlet, not standard_normal"),
    Case("free-bits-on-the-simplex", train_cli("--posterior", "dirichlet", "--prior", "dirichlet", "--free-bits", "0.1"),
         train_api(posterior="dirichlet", prior="dirichlet", free_bits=0.1), ConfigError,
         "--free-bits needs q\\(z\\|x\\) and p\\(z\\) that factorise"),
    Case("multinomial-on-images", train_cli("--likelihood", "multinomial"), train_api(likelihood="multinomial"),
         ConfigError, "multinomial needs datapoints that are vectors of counts"),
    Case("ldac-missing", train_cli("--dataset", "ldac:{ws}/nope.ldac"), train_api(dataset="ldac:{ws}/nope.ldac"),
         DataError, "does not exist"),
    Case("ldac-without-vocabulary", train_cli("--dataset", "ldac:{ws}/d.ldac"), train_api(dataset="ldac:{ws}/d.ldac"),
         DataError, "has no vocabulary beside it", write("d.ldac", b"2 0:1 1:2\n")),
    Case("ldac-word-beyond-vocabulary", train_cli("--dataset", "ldac:{ws}/d.ldac"), train_api(dataset="ldac:{ws}/d.ldac"),
         DataError, "not an LDA-C file of word ids below 2",
         then(write("d.ldac", b"2 0:1 5:2\n1 1:1\n"), write("d.tokens", b"a\nb\n"))),
    Case("ldac-wrong-count", train_cli("--dataset", "ldac:{ws}/d.ldac"), train_api(dataset="ldac:{ws}/d.ldac"),
         DataError, "line 2 of .* says 3 distinct words but lists 1",
         then(write("d.ldac", b"2 0:1 1:2\n3 1:1\n"), write("d.tokens", b"a\nb\n"))),
    Case("multinomial-fractional-counts", train_cli("--dataset", "ldac:{ws}/d.ldac", "--likelihood", "multinomial"),
         train_api(dataset="ldac:{ws}/d.ldac", likelihood="multinomial"), DataError, "has non-integer values",
         then(write("d.ldac", b"2 0:1.5 1:2\n1 1:1\n1 0:1\n"), write("d.tokens", b"a\nb\n"))),
    Case("conv-on-small-images", train_cli("--net", "conv", "--conv-channels", "4", "4", "4", "4"),
         train_api(net="conv", conv_channels=[4, 4, 4, 4]), ConfigError, "divisible by 16, got 8×8"),
    # --- datasets that do not exist or are not there
    Case("dataset-typo", train_cli("--dataset", "mnsit"), train_api(dataset="mnsit"), ConfigError, "did you mean 'mnist'"),
    Case("dataset-unknown", train_cli("--dataset", "imagenet"), train_api(dataset="imagenet"), ConfigError,
         "unknown dataset 'imagenet'; choose one of: mnist"),
    Case("data-dir-empty", train_cli("--dataset", "cifar10", "--data-dir", "{ws}/data", "--no-download"),
         train_api(dataset="cifar10", data_dir="{ws}/data", download=False), DataError, "is not on this machine.*put cifar-10"),
    idx_case("idx-one-file-missing", "has train-images-idx3-ubyte but not train-labels-idx1-ubyte",
             lambda f: f.update({IDX_FILES[1]: None})),
    # --- truncated or corrupt IDX files
    idx_case("idx-truncated", "truncated or corrupt", lambda f: f.update({IDX_FILES[0]: f[IDX_FILES[0]][:-9]})),
    idx_case("idx-bad-magic", "not an IDX file", lambda f: f.update({IDX_FILES[2]: b"\x01\x02" + f[IDX_FILES[2]][2:]})),
    idx_case("idx-header-truncated", "truncated inside its IDX header", lambda f: f.update({IDX_FILES[3]: f[IDX_FILES[3]][:6]})),
    idx_case("idx-empty-file", "not an IDX file", lambda f: f.update({IDX_FILES[1]: b""})),
    idx_case("idx-forged-huge-header", "needs", lambda f: f.update({IDX_FILES[0]: struct.pack(">HBB3I", 0, 8, 3, *[2**32 - 1] * 3)})),
    Case("idx-gz-truncated", train_cli("--dataset", "fashion-mnist", "--data-dir", "{ws}/data", "--no-download"),
         train_api(dataset="fashion-mnist", data_dir="{ws}/data", download=False), DataError, "cannot read .*t10k-images",
         then(lambda ws, a: idx_folder(ws / "data/fashion-mnist", gz=True),
              truncate("data/fashion-mnist/t10k-images-idx3-ubyte.gz", 200))),
    idx_case("idx-images-wrong-rank", "hold arrays of 2 and 3 dimensions",
             lambda f: f.update({IDX_FILES[0]: idx_bytes(np.zeros((20, 784), np.uint8))})),
    idx_case("idx-labels-do-not-match", "do not match", lambda f: f.update({IDX_FILES[1]: idx_bytes(np.zeros(7, np.uint8))})),
    idx_case("idx-labels-float", "labels must be non-negative integers",
             lambda f: f.update({IDX_FILES[1]: idx_bytes(np.zeros(20, np.float32), 0x0D)})),
    idx_case("idx-images-nan", "NaN or Inf",
             lambda f: f.update({IDX_FILES[0]: idx_bytes(np.full((20, 28, 28), np.nan, np.float32), 0x0D)})),
    idx_case("idx-images-out-of-support", "bernoulli likelihood needs",
             lambda f: f.update({IDX_FILES[0]: idx_bytes(np.full((20, 28, 28), 300, np.int16), 0x0B)})),
    # --- truncated or corrupt CIFAR tarballs and their pickles; archives that escape
    tar_case("tar-missing-batch", "lacks data_batch_3", batches={"data_batch_3": None}),
    tar_case("tar-corrupt-pickle", "not a valid array pickle", raw={"data_batch_2": b"\x80\x02garbage"}),
    tar_case("tar-malicious-pickle", "refusing to load posix.system",
             raw={"test_batch": pickle.dumps(Payload(Path("/tmp/aevb-badinput-marker")), protocol=2)}),
    tar_case("tar-batch-wrong-shape", r"expected \(N, 3072\) uint8",
             batches={"data_batch_1": {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}}),
    tar_case("tar-batch-not-a-dict", "is not a CIFAR-10 batch", batches={"data_batch_4": [1, 2, 3]}),
    tar_case("tar-labels-negative", "non-negative integers",
             batches={"test_batch": {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, -1, 2, 3]}}),
    tar_case("tar-member-dotdot", "unsafe member '../../evil'", extra=tarfile.TarInfo("../../evil")),
    tar_case("tar-member-absolute", "unsafe member '/tmp/evil'", extra=tarfile.TarInfo("/tmp/evil")),
    tar_case("tar-member-symlink", "unsafe member 'cifar-10-batches-py/link'",
             extra=link("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd")),
    tar_case("tar-member-hardlink", "unsafe member 'cifar-10-batches-py/hard'",
             extra=link("cifar-10-batches-py/hard", tarfile.LNKTYPE, "/etc/passwd")),
    tar_case("tar-member-huge", "far larger than a dataset batch", extra=big_member(),
             patch={"aevb.data.formats:MAX_MEMBER_BYTES": 16000}),
    Case("tar-truncated", train_cli("--dataset", "cifar10", "--data-dir", "{ws}/data", "--no-download"),
         train_api(dataset="cifar10", data_dir="{ws}/data", download=False), DataError, "not a readable tarball",
         then(lambda ws, a: cifar_tar(ws / "data/cifar10/cifar-10-python.tar.gz"),
              truncate("data/cifar10/cifar-10-python.tar.gz", 3000))),
    Case("tar-not-a-tarball", train_cli("--dataset", "cifar10", "--data-dir", "{ws}/data", "--no-download"),
         train_api(dataset="cifar10", data_dir="{ws}/data", download=False), DataError, "not a readable tarball",
         write("data/cifar10/cifar-10-python.tar.gz", np.random.default_rng(1).bytes(5000))),
    # --- npz files: unreadable, unsafe, the wrong shape or dtype, NaN/Inf, outside the likelihood's support
    Case("npz-missing", train_cli("--dataset", "npz:{ws}/nope.npz"), train_api(dataset="npz:{ws}/nope.npz"), DataError,
         "does not exist"),
    Case("npz-random-bytes", train_cli("--dataset", "npz:{ws}/d.npz"), train_api(dataset="npz:{ws}/d.npz"), DataError,
         "is not an .npz file \\(not a zip archive\\)", write("d.npz", b"\x80" + np.random.default_rng(0).bytes(3000))),
    Case("npz-truncated", train_cli("--dataset", "npz:{ws}/d.npz"), train_api(dataset="npz:{ws}/d.npz"), DataError,
         "not a readable .npz", then(lambda ws, a: npz(ws / "d.npz", **GOOD), truncate("d.npz", 300))),
    Case("npz-is-a-folder", train_cli("--dataset", "npz:{ws}"), train_api(dataset="npz:{ws}"), DataError,
         "is a folder without .npz shards; put the shards \\(numpy.savez files\\) there"),
    Case("npz-bare-npy", train_cli("--dataset", "npz:{ws}/d.npz"), train_api(dataset="npz:{ws}/d.npz"), DataError,
         "is a single .npy array", write("d.npz", lambda: npy_bytes(GOOD["x_train"]))),
    Case("npz-member-not-an-array", train_cli("--dataset", "npz:{ws}/d.npz"), train_api(dataset="npz:{ws}/d.npz"), DataError,
         "members that are not arrays", zip_with_text),
    npz_case("npz-pickled-objects", "holds pickled Python objects, which are never loaded", x_train=np.array([{"a": 1}] * 6, dtype=object), x_test=GOOD["x_test"]),
    npz_case("npz-lacks-x-test", "lacks x_test", x_train=GOOD["x_train"]),
    npz_case("m2-on-unlabelled-data", "--model m2 needs labelled data", extra_cli=("--model", "m2"),
             extra_api={"model": "m2"}, **GOOD),
    npz_case("npz-one-dimensional", "must be a numeric array", x_train=np.zeros(6), x_test=np.zeros(3)),
    npz_case("npz-no-rows", "must be a numeric array", x_train=np.zeros((0, 4)), x_test=GOOD["x_test"]),
    npz_case("npz-empty-dimension", "must be a numeric array", x_train=np.zeros((6, 0)), x_test=np.zeros((3, 0))),
    npz_case("npz-strings", "must be a numeric array", x_train=np.full((6, 4), "a"), x_test=np.full((3, 4), "b")),
    npz_case("npz-complex", "must be a numeric array", x_train=np.zeros((6, 4), complex), x_test=np.zeros((3, 4), complex)),
    npz_case("npz-timedelta", "must be a numeric array", x_train=np.zeros((6, 4), "m8[s]"), x_test=np.zeros((3, 4), "m8[s]")),
    npz_case("npz-float128", "must be a numeric array", x_train=np.zeros((6, 4), np.longdouble), x_test=np.zeros((3, 4), np.longdouble)),
    npz_case("npz-shapes-differ", "differ in shape", x_train=np.zeros((6, 4)), x_test=np.zeros((3, 5))),
    npz_case("npz-nan", "train data contains NaN or Inf", x_train=np.where(np.eye(6, 4) > 0, np.nan, 0.5), x_test=GOOD["x_test"]),
    npz_case("npz-inf", "test data contains NaN or Inf", x_train=GOOD["x_train"], x_test=np.full((3, 4), np.inf)),
    npz_case("npz-float64-overflows-float32", "NaN or Inf", x_train=np.full((6, 4), 1e300), x_test=GOOD["x_test"]),
    npz_case("npz-outside-bernoulli", r"values in \[2, 2\] but the bernoulli likelihood needs \[0.0, 1.0\]",
             x_train=np.full((6, 4), 2.0), x_test=GOOD["x_test"]),
    npz_case("npz-outside-continuous-bernoulli", "continuous_bernoulli likelihood needs",
             extra_cli=["--likelihood", "continuous_bernoulli"], extra_api={"likelihood": "continuous_bernoulli"},
             x_train=GOOD["x_train"], x_test=np.full((3, 4), -0.5)),
    npz_case("npz-binarize-outside-unit", r"--binarize static needs train values in \[0, 1\]",
             extra_cli=["--binarize", "static", "--likelihood", "gaussian"],
             extra_api={"binarize": "static", "likelihood": "gaussian"}, x_train=np.full((6, 4), 3.0), x_test=GOOD["x_test"]),
    npz_case("npz-labels-wrong-length", "one non-negative integer label", y_train=np.zeros(2, int), **GOOD),
    npz_case("npz-labels-negative", "one non-negative integer label", y_train=-np.ones(6, int), **GOOD),
    npz_case("npz-labels-float", "one non-negative integer label", y_train=np.zeros(6), **GOOD),
    npz_case("npz-conv-on-flat-data", r"--net conv needs images of shape \(C, H, W\), got data of shape \(4,\)",
             error=ConfigError, extra_cli=["--net", "conv"], extra_api={"net": "conv"}, **GOOD),
    npz_case("npz-negative-counts", r"training data has negative values \(down to -1\) but the poisson likelihood "
             "needs counts 0, 1, 2, ...; choose --likelihood gaussian", extra_cli=["--likelihood", "poisson"],
             extra_api={"likelihood": "poisson"}, x_train=np.full((6, 4), -1.0), x_test=np.ones((3, 4))),
    npz_case("npz-fractional-counts", r"has non-integer values \(e.g. 0.5\) but the negative_binomial likelihood needs "
             "counts", extra_cli=["--likelihood", "negative_binomial"], extra_api={"likelihood": "negative_binomial"},
             **GOOD),
    # --- data read from disk a minibatch at a time (--stream), and AnnData files
    npy_case("npy-stream-missing", r"npy file \S+d.npy does not exist; check the path", None),
    npy_case("npy-stream-truncated", r"is truncated \(\d+ bytes, its header needs \d+\); write it again",
             lambda: npy_bytes(np.zeros((6, 4), np.float32))[:-10]),
    npy_case("npy-stream-not-an-array", r"is not a .npy array .*; save it with numpy.save", b"not an array at all"),
    npy_case("npy-stream-pickled-objects", "holds pickled Python objects, which are never loaded",
             lambda: npy_bytes(np.array([{"a": 1}] * 6, dtype=object))),
    npy_case("npy-stream-one-dimensional", r"holds an array of shape \(6,\) .*it must be a numeric array \(N, ...\)",
             lambda: npy_bytes(np.zeros(6, np.float32))),
    npy_case("npy-stream-nan", r"the \S+d.npy data contains NaN or Inf", lambda: npy_bytes(np.full((6, 4), np.nan, np.float32)),
             likelihood="gaussian"),
    npy_case("npy-stream-binarize", r"--binarize dynamic needs the whole data set in memory .* \(--stream\); drop "
             "--binarize dynamic", lambda: npy_bytes(np.full((6, 4), 0.5, np.float32)), ConfigError, binarize="dynamic"),
    Case("npz-stream-compressed", train_cli("--dataset", "npz:{ws}/d.npz", "--stream"),
         train_api(dataset="npz:{ws}/d.npz", stream=True), DataError,
         r"is compressed \(numpy.savez_compressed\), which --stream cannot read a row at a time; save it with numpy.savez",
         lambda ws, a: np.savez_compressed(ws / "d.npz", **GOOD)),
    Case("npz-shards-differ", train_cli("--dataset", "npz:{ws}/shards"), train_api(dataset="npz:{ws}/shards"), DataError,
         r"the shards of \S+ hold different arrays \(a.npz: x_train, x_test; b.npz: x_train, x_test, y_train\)",
         then(lambda ws, a: npz(ws / "shards/a.npz", **GOOD), lambda ws, a: npz(ws / "shards/b.npz", **GOOD,
                                                                               y_train=np.zeros(6, int)))),
    Case("stream-a-registered-dataset", train_cli("--stream"), train_api(stream=True), ConfigError,
         "--stream reads npy:PATH, npz:PATH and h5ad:PATH data from disk; digits is read into memory"),
    h5ad_case("h5ad-no-layer", r"has no layer 'raw' \(its layers: counts\)", layer="raw"),
    h5ad_case("h5ad-stream-no-layer", r"has no layer 'raw' \(its layers: counts\)", True, layer="raw"),
    h5ad_case("h5ad-no-label-key", r"has no obs column 'celltype' \(its columns: cell_type, batch\)",
              label_key="celltype"),
    h5ad_case("h5ad-no-batch-key", r"has no obs column 'bach' \(its columns: cell_type, batch\)", True,
              batch_key="bach"),
    h5ad_case("h5ad-sparse-nan", r"layer 'counts' of \S+ contains NaN or Inf; clean or impute it", layer="counts",
              setup=cells(sparse_nan=True)),
    h5ad_case("h5ad-stream-sparse-nan", r"the layer 'counts' of \S+ data contains NaN or Inf", True,
              layer="counts", setup=cells(sparse_nan=True)),
    h5ad_case("h5ad-negative-counts", r"training data has negative values .* poisson likelihood needs counts",
              likelihood="poisson", setup=cells(negative=True)),
    h5ad_case("h5ad-stream-csc", r"layer 'counts' of \S+ is stored as csc_matrix, by genes: --stream reads it a cell "
              "at a time, from csr_matrix only", True, layer="counts", setup=cells(csc=True)),
    h5ad_case("h5ad-batch-key-on-m2", r"--batch-key conditions the decoder on each cell's batch, and --model m2 takes "
              "no batch", error=ConfigError, batch_key="batch", model="m2"),
    h5ad_case("feature-batch-without-batch-key", "--likelihood-dispersion feature-batch learns θ per gene and batch, "
              "and the data have no batches: add --batch-key", error=ConfigError, likelihood="negative_binomial",
              likelihood_dispersion="feature-batch"),
    # --- run directories that are not one, and checkpoints that are corrupt, unsafe or another model's
    Case("evaluate-not-a-run", ["evaluate", "{ws}", "--k", "5"], lambda ws: aevb.load(ws), RunError, "is not a run directory"),
    Case("sample-missing-run", ["sample", "{ws}/nowhere"], lambda ws: aevb.load(ws / "nowhere"), RunError, "is not a run directory"),
    Case("resume-not-a-run", RESUME, resume_api, RunError, "is not a run directory"),
    Case("config-json-corrupt", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "config.json is corrupt",
         then(copy_run(), write("run/config.json", '{"model": '))),
    Case("config-json-bad-value", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError,
         "config.json is corrupt .*latent_dim must be positive",
         then(copy_run(), lambda ws, a: edit_json(ws / "run/config.json", lambda d: d["model"].update(latent_dim=-1)))),
    Case("config-json-no-shape", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "config.json is corrupt",
         then(copy_run(), lambda ws, a: edit_json(ws / "run/config.json", lambda d: d["run"].pop("x_shape")))),
    Case("weights-of-another-shape", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError,
         "does not fit the model", then(copy_run(), lambda ws, a: shutil.copy(a["other"] / rundir.WEIGHTS, ws / "run"))),
    Case("resume-weights-of-another-shape", RESUME, resume_api, RunError, "does not fit the model",
         then(copy_run(), lambda ws, a: shutil.copy(a["other"] / rundir.WEIGHTS, ws / "run"))),
    Case("weights-truncated", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "corrupt or truncated",
         then(copy_run(), truncate("run/model.safetensors", 100))),
    Case("weights-empty", ["reconstruct", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "corrupt or truncated",
         then(copy_run(), write("run/model.safetensors", b""))),
    Case("weights-are-a-pickle", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "corrupt or truncated",
         then(copy_run(), write("run/model.safetensors", lambda: pickle.dumps(Payload(Path("/tmp/aevb-badinput-marker")))))),
    Case("weights-nan", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "holds NaN or Inf",
         then(copy_run(), set_weights_nan)),
    Case("weights-missing", ["sample", "{ws}/run"], lambda ws: aevb.load(ws / "run"), RunError, "has not finished an epoch",
         then(copy_run(), lambda ws, a: (ws / "run" / rundir.WEIGHTS).unlink())),
    Case("optimizer-truncated", RESUME, resume_api, RunError, "optimizer.pt is corrupt or unsafe",
         then(copy_run(), truncate("run/optimizer.pt", 500))),
    Case("optimizer-garbage", RESUME, resume_api, RunError, "optimizer.pt is corrupt or unsafe",
         then(copy_run(), write("run/optimizer.pt", b"not a checkpoint"))),
    Case("optimizer-malicious-pickle", RESUME, resume_api, RunError, "optimizer.pt is corrupt or unsafe",
         then(copy_run(), lambda ws, a: torch.save(Payload(ws / "pwned"), ws / "run/optimizer.pt"))),
    Case("optimizer-raw-pickle", RESUME, resume_api, RunError, "optimizer.pt is corrupt or unsafe",
         then(copy_run(), write("run/optimizer.pt", lambda: pickle.dumps(Payload(Path("/tmp/aevb-badinput-marker")), protocol=4)))),
    Case("optimizer-not-ours", RESUME, resume_api, RunError, "not an aevb optimizer checkpoint",
         then(copy_run(), lambda ws, a: torch.save([1, 2, 3], ws / "run/optimizer.pt"))),
    Case("optimizer-missing", RESUME, resume_api, RunError, "has no optimizer.pt",
         then(copy_run(), lambda ws, a: (ws / "run" / rundir.OPTIMIZER).unlink())),
    Case("optimizer-of-another-shape", RESUME, resume_api, RunError, r"from another model or optimizer \(exp_avg of shape",
         then(copy_run(), lambda ws, a: shutil.copy(a["other"] / rundir.OPTIMIZER, ws / "run"))),
    Case("optimizer-of-another-optimizer", RESUME, resume_api, RunError, r"from another model or optimizer \(settings",
         then(copy_run(), lambda ws, a: shutil.copy(a["sgd"] / rundir.OPTIMIZER, ws / "run"))),
    Case("optimizer-epoch-disagrees", RESUME, resume_api, RunError, r"\(epoch 1\) and optimizer.pt \(epoch 7\) .* disagree",
         then(copy_run(), lambda ws, a: edit_trainer_state(ws / "run/optimizer.pt", lambda s: s.update(epoch=7)))),
    Case("optimizer-rng-state-corrupt", RESUME, resume_api, RunError, "optimizer.pt is corrupt or from another model",
         then(copy_run(), lambda ws, a: edit_trainer_state(ws / "run/optimizer.pt",
                                                           lambda s: s.update(rng_state=torch.zeros(3, dtype=torch.uint8))))),
    Case("metrics-corrupt", RESUME, resume_api, RunError, "metrics.jsonl is corrupt",
         then(copy_run(), write("run/metrics.jsonl", '{"epoch": 1}\n{"epo'))),
    Case("metrics-without-epoch", RESUME, resume_api, RunError, "metrics.jsonl is corrupt \\(a line without an integer 'epoch'",
         then(copy_run(), write("run/metrics.jsonl", '{"loss": 1}\n'))),
    # --- an output directory that exists
    Case("out-exists", train_cli("--out", "{ws}/run"), lambda ws: aevb.train(cfg_of(), ws / "run", quiet=True), RunError,
         "already exists; pass --overwrite", copy_run()),
    Case("out-exists-not-a-run", train_cli("--out", "{ws}/mine", "--overwrite"),
         lambda ws: aevb.train(cfg_of(), ws / "mine", overwrite=True, quiet=True), RunError,
         "exists and is not a run directory; refusing to overwrite", write("mine/thesis.tex", "precious")),
    Case("out-is-a-file", train_cli("--out", "{ws}/file"), lambda ws: aevb.train(cfg_of(), ws / "file", quiet=True), RunError,
         "already exists", write("file", "x")),
    Case("out-inside-a-file", train_cli("--out", "{ws}/file/run"), lambda ws: aevb.train(cfg_of(), ws / "file/run", quiet=True),
         RunError, "cannot create the run directory", write("file", "x")),
]
assert len({c.id for c in CASES}) == len(CASES)


def patch_code(patch: dict) -> str:
    return "".join(f"import {k.split(':')[0]}\n{k.replace(':', '.')} = {v!r}\n" for k, v in patch.items())


def fill(args: list[str], ws: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)) for a in args]


def snapshot(ws: Path) -> dict[str, str]:
    """Every file and folder under ws with a hash of its bytes: what 'no partial file' compares."""
    return {str(p.relative_to(ws)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(ws.rglob("*"))}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Small real runs on digits to copy and corrupt: one of the shape QUICK gives, one of another
    shape (hidden 12), one with another optimizer."""
    root = tmp_path_factory.mktemp("assets")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {"run": cfg_of(), "other": cfg_of(hidden=[12]), "sgd": cfg_of(optimizer="sgd")}
        return {name: aevb.train(cfg, root / name, quiet=True) for name, cfg in runs.items()}
    finally:
        torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def cli_results(assets, tmp_path_factory) -> dict[str, tuple[Result, dict, dict]]:
    """Every CLI case, run once: (result, snapshot before, snapshot after)."""
    root = tmp_path_factory.mktemp("cli")
    real = os.environ.get("AEVB_CATALOGUE_REAL_PROCESSES") == "1"
    server = None if real else CLIServer()
    results = {}
    try:
        for case in CASES:
            if case.cli is None:
                continue
            ws = root / case.id
            ws.mkdir()
            case.setup(ws, assets)
            before = snapshot(ws)
            argv = fill(case.cli, ws)
            t0 = time.perf_counter()
            if real and case.patch:
                continue
            result = real_cli(argv, ws) if real else server.run(argv, ws, root / "_out" / case.id, patch_code(case.patch))
            if os.environ.get("AEVB_CATALOGUE_TIMES"):
                print(f"{time.perf_counter() - t0:6.2f}s {case.id}", file=sys.stderr)
            results[case.id] = (result, before, snapshot(ws), ws)
    finally:
        if server:
            server.close()
    return results


@pytest.mark.parametrize("case", [c for c in CASES if c.cli is not None], ids=lambda c: c.id)
def test_cli_answers_with_one_line_and_exit_2(case, cli_results):
    if case.id not in cli_results:
        pytest.skip("a patched case runs in the fork server only")
    result, before, after, _ = cli_results[case.id]
    lines = result.stderr.strip().splitlines()
    assert result.rc == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("aevb: error: "), result.stderr
    assert re.search(case.match, lines[0]), f"{case.match!r} not in {lines[0]!r}"
    assert after == before, "the command changed or left files behind"
    assert not Path("/tmp/aevb-badinput-marker").exists()


@pytest.mark.parametrize("case", [c for c in CASES if c.api is not None], ids=lambda c: c.id)
def test_api_raises_a_user_error(case, assets, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    case.setup(ws, assets)
    before = snapshot(ws)
    monkeypatch.chdir(ws)  # a default run directory would land here, and be seen
    for target, value in case.patch.items():
        module, attr = target.split(":")
        monkeypatch.setattr(sys.modules[module], attr, value)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(case.error) as e:
            case.api(ws)
    finally:
        torch.set_num_threads(torch_threads)
    message = str(e.value)
    assert "\n" not in message and re.search(case.match, message), message
    assert isinstance(e.value, UserError)
    assert snapshot(ws) == before, "the call changed or left files behind"
    assert not (ws / "pwned").exists() and not Path("/tmp/aevb-badinput-marker").exists()


def test_the_catalogue_size():
    """The count the issue asks for (see the note): cases, and how many have each form."""
    assert len(CASES) >= 120
    assert sum(c.cli is not None for c in CASES) >= 120 and sum(c.api is not None for c in CASES) >= 115


@pytest.mark.parametrize("case_id", ["flag-typo", "weights-truncated"])
def test_the_fork_server_answers_like_the_real_command(case_id, cli_results, assets, tmp_path):
    """A real ``python -m aevb.cli`` in a fresh process gives the same exit code and line."""
    case = next(c for c in CASES if c.id == case_id)
    ws = tmp_path / case.id
    ws.mkdir()
    case.setup(ws, assets)
    before = snapshot(ws)
    result = real_cli(fill(case.cli, ws), ws)
    forked, _, _, forked_ws = cli_results[case_id]
    assert result.rc == forked.rc == 2
    assert result.stderr.replace(str(ws), "WS") == forked.stderr.replace(str(forked_ws), "WS")
    assert snapshot(ws) == before
