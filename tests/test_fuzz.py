"""Property-based tests (hypothesis) for everything that parses user input: IDX bytes, npz files
and their contents, config dictionaries, TOML text and command lines. Whatever the input, the
answer is a valid result or a UserError with a one-line message, never another exception."""
from __future__ import annotations

import atexit
import io
import math
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aevb.config import SECTIONS, Config, field_types, load_toml
from aevb.config import DataConfig
from aevb.data import load_dataset
from aevb.data.formats import IDX_DTYPES, load_npz, parse_idx
from aevb.errors import UserError

SCALE = float(os.environ.get("AEVB_FUZZ_SCALE", "1"))  # e.g. 20 for a deeper search than the suite's ~15 s
# derandomize: CI sees the same examples on every run (a fixed seed); AEVB_FUZZ_SCALE searches further
FAST = settings(max_examples=int(300 * SCALE), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=int(60 * SCALE), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TMP = Path(tempfile.mkdtemp(prefix="aevb-fuzz-"))  # one folder for all examples (fixtures are per test, not per example)
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def one_line_user_error(call):
    """call() → its result, or None after a UserError with a one-line message; anything else fails."""
    try:
        return call()
    except UserError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return None


# ---------------------------------------------------------------------------------------------
# IDX


@st.composite
def idx_like(draw):
    """Bytes that look like IDX: a real or forged magic, a header of ndim sizes, a payload whose
    length is right, short, long or random."""
    code = draw(st.sampled_from([*IDX_DTYPES, 0x00, 0x07, 0xFF]))
    ndim = draw(st.integers(0, 5))
    shape = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=ndim, max_size=ndim))
    prefix = draw(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\xff\x00"]))
    header = prefix + bytes([code, ndim]) + struct.pack(f">{ndim}I", *shape)
    header = header[:draw(st.integers(0, len(header)))] if draw(st.booleans()) else header
    size = math.prod(shape) * np.dtype(IDX_DTYPES.get(code, np.uint8)).itemsize
    length = draw(st.one_of(st.just(size), st.integers(0, 64))) if size < 4096 else draw(st.integers(0, 64))
    return header + draw(st.binary(min_size=length, max_size=length))


@FAST
@given(st.one_of(st.binary(max_size=300), idx_like()))
def test_parse_idx_gives_an_array_or_a_data_error(data):
    out = one_line_user_error(lambda: parse_idx(data, "fuzz.idx"))
    if out is not None:
        assert isinstance(out, np.ndarray)
        ndim = data[3]
        assert out.shape == struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        assert out.nbytes == len(data) - 4 - 4 * ndim


# ---------------------------------------------------------------------------------------------
# npz


DTYPES = st.sampled_from([np.bool_, np.int8, np.int16, np.int64, np.uint8, np.uint16, np.uint64, np.float16, np.float32,
                          np.float64, np.longdouble, np.complex64, np.dtype("U3"), np.dtype("S2"), np.dtype("m8[s]"),
                          np.dtype("M8[D]"), np.dtype(">f4"), np.dtype(">i2")])


def arrays():
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    return st.tuples(DTYPES, shapes).flatmap(lambda t: hnp.arrays(t[0], t[1]))


KEYS = st.sampled_from(["x_train", "x_test", "y_train", "y_test", "x", "labels"])


@SLOW
@given(st.dictionaries(KEYS, arrays(), max_size=5), st.sampled_from(["none", "static", "dynamic"]))
def test_npz_contents_give_a_dataset_or_a_data_error(contents, binarize):
    path = TMP / "fuzz.npz"
    with open(path, "wb") as f:
        np.savez(f, **contents)
    ds = one_line_user_error(lambda: load_dataset(DataConfig(dataset=f"npz:{path}", binarize=binarize)))
    if ds is not None:
        assert ds.train_x.dtype == ds.test_x.dtype == torch.float32 and len(ds.train_x) and len(ds.test_x)
        assert ds.train_x.shape[1:] == ds.test_x.shape[1:] and torch.isfinite(ds.train_x).all()
        for y, x in ((ds.train_y, ds.train_x), (ds.test_y, ds.test_x)):
            assert y is None or (y.dtype == torch.int64 and y.shape == (len(x),) and (y >= 0).all())


@st.composite
def mangled_npz(draw):
    """A valid npz with bytes flipped, cut or inserted, or a zip with odd members."""
    buf = io.BytesIO()
    np.savez(buf, x_train=np.full((4, 3), 0.5), x_test=np.full((2, 3), 0.25))
    data = bytearray(buf.getvalue())
    how = draw(st.sampled_from(["flip", "cut", "insert", "zip"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif how == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=20))
    else:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for name in draw(st.lists(st.sampled_from(["x_train.npy", "x_test.npy", "x_train", "a/../b.npy", "y_test.npy"]),
                                      max_size=4, unique=True)):
                z.writestr(name, draw(st.binary(max_size=200)) if draw(st.booleans()) else buf.getvalue()[:200])
        data = out.getvalue()
    return bytes(data)


@SLOW
@given(st.one_of(st.binary(max_size=400), mangled_npz()))
def test_npz_bytes_give_arrays_or_a_data_error(data):
    path = TMP / "bytes.npz"
    path.write_bytes(data)
    out = one_line_user_error(lambda: load_npz(path))
    if out is not None:
        assert all(isinstance(v, np.ndarray) for v in out.values())
    one_line_user_error(lambda: load_dataset(DataConfig(dataset=f"npz:{path}")))


# ---------------------------------------------------------------------------------------------
# config dictionaries, TOML text and command lines

NAMES = sorted(field_types()) + sorted(SECTIONS)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["none", "1e3", "16,8", "true", "nan", "inf", "-1", "0", "1,,2"]),
                    st.binary(max_size=4), st.builds(complex, st.floats(0, 1)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(NAMES), st.text(max_size=10), st.integers(0, 3), st.none())


@FAST
@given(st.one_of(st.dictionaries(keys, values, max_size=6), values))
def test_config_dicts_give_a_config_or_a_config_error(d):
    cfg = one_line_user_error(lambda: Config.from_dict(d, "fuzz.toml"))
    if cfg is not None:
        assert isinstance(cfg, Config)
        assert Config.from_dict(cfg.to_dict()) == cfg  # what was accepted is valid and round-trips
        assert cfg.validate() == cfg


@FAST
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(
    ["[model]", "[train]", "[data]", "[trian]", "latent_dim = 3", "latent_dim = -3", "lr = inf", "lr = nan", "hidden = [8, 0]",
     "hidden = []", 'hidden = "a"', "epochs = 1.5", "seed = 1979-05-27", "x = {a = 1}", 'on_nan = "rolback"', "model = 5",
     "download = 3", "[[train]]", "lr = 1e-3", "= 3", 'dataset = "npz:/nope"']), max_size=6).map("\n".join)))
def test_toml_text_gives_a_config_or_a_config_error(text):
    path = TMP / "fuzz.toml"
    path.write_text(text)
    d = one_line_user_error(lambda: load_toml(path))
    if d is not None:
        one_line_user_error(lambda: Config.from_dict(d, str(path)))


FLAGS = ["--" + k.replace("_", "-") for k in field_types()] + ["--no-download", "--resume", "--overwrite", "--config", "--latnt-dim"]


@FAST
@given(st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(["0", "-1", "3", "1.5", "nan", "x", "8,4", ""]),
                          st.text(max_size=6)), max_size=8))
def test_command_lines_give_a_config_or_a_config_error(argv):
    from aevb.cli import build_parser, config_from_args

    assume("--config" not in argv and not any(a.startswith(("-h", "--h")) for a in argv))
    assume(all(a.strip() for a in argv))  # a blank argument: see test_a_blank_argument_is_a_user_error

    def parse():
        args = build_parser().parse_args(["train", *argv])
        return config_from_args(args)

    cfg = one_line_user_error(parse)
    assert cfg is None or isinstance(cfg, Config)


def test_a_blank_argument_is_a_user_error():
    from aevb.cli import build_parser

    with pytest.raises(UserError):
        build_parser().parse_args(["train", ""])


# ---------------------------------------------------------------------------------------------
# CIFAR tarballs


def small_cifar_tar(mode: str) -> bytes:
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps({b"data": rng.integers(0, 256, (1, 3072), dtype=np.uint8), b"labels": [3]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


TARS = [small_cifar_tar("w"), small_cifar_tar("w:gz")]  # plain: flips land in headers and pickles


@SLOW
@given(st.sampled_from(TARS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 10**6))
def test_mangled_cifar_tarballs_give_arrays_or_a_data_error(tar, flips, cut):
    from aevb.data.formats import read_cifar10_tar

    data = bytearray(tar)
    cut = cut % (len(data) + 1)
    for i, b in flips:
        data[i % len(data)] = b
    path = TMP / "c.tar.gz"
    path.write_bytes(bytes(data[:max(cut, 1)]))
    out = one_line_user_error(lambda: read_cifar10_tar(path))
    if out is not None:
        assert out[0].shape == (5, 3, 32, 32) and out[0].dtype == np.uint8 and out[1].dtype == np.int64
