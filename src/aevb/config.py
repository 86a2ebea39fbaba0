"""Typed configuration: one dataclass per component, loaded from TOML and ``--key value`` flags.

A config file may use sections ([data], [model], [train]) or flat keys; every key is checked
against the dataclass fields, with a 'did you mean' for a mistyped one.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .registry import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "mnist"
    binarize: str = "none"
    data_dir: typing.Optional[str] = None
    download: bool = True
    train_size: typing.Optional[int] = None
    test_size: typing.Optional[int] = None


@dataclass
class ModelConfig:
    model: str = "vae"
    net: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    latent_dim: int = 20
    posterior: str = "normal"
    posterior_df: float = 5.0
    prior: str = "standard_normal"
    prior_components: int = 10
    likelihood: str = "bernoulli"
    likelihood_scale: str = "shared"
    likelihood_scale_init: float = 1.0
    init_std: typing.Optional[float] = None


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    seed: int = 1
    estimator: str = "auto"
    samples: int = 1
    beta: float = 1.0
    beta_schedule: str = "constant"
    warmup_epochs: float = 5.0
    cycles: int = 4
    cycle_ratio: float = 0.5
    device: str = "auto"
    eval_batch_size: int = 1000


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "Config":
        cfg = cls()
        apply(cfg, d, where)
        return cfg


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
POSITIVE_ITEMS = {"hidden", "conv_channels"}  # layer sizes: every item of the list
POSITIVE = {"train_size", "test_size", "latent_dim", "prior_components", "epochs", "batch_size", "samples",
            "cycles", "eval_batch_size", "posterior_df", "likelihood_scale_init", "lr", "init_std", "cycle_ratio"}
NON_NEGATIVE = {"beta", "warmup_epochs"}


def field_types() -> dict[str, tuple[str, type]]:
    """Every config key -> (section, type). Keys are unique across sections, so flags stay flat."""
    out = {}
    for section, klass in SECTIONS.items():
        for name, tp in typing.get_type_hints(klass).items():
            out[name] = (section, tp)
    return out


def convert(key: str, value, tp) -> object:
    """Check and convert one value to the type of field ``key``, with a one-line error naming it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {args[0].__name__}s, got {value!r}")
        items = [convert(key, v, args[0]) for v in items if v != ""]
        if not items:
            raise ConfigError(f"{key} must not be empty")
        if key in POSITIVE_ITEMS and min(items) <= 0:
            raise ConfigError(f"{key} must be positive sizes, got {value!r}")
        return items
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if tp in (int, float) and isinstance(value, bool) or tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if tp is str and not isinstance(value, str):
            raise ValueError
        out = tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {'an' if tp is int else 'a'} {tp.__name__}, got {value!r}") from None
    if key in POSITIVE and not out > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in NON_NEGATIVE and not out >= 0:
        raise ConfigError(f"{key} must be non-negative, got {value!r}")
    return out


def apply(cfg: Config, d: dict, where: str) -> None:
    """Set the keys of d (flat, or nested by section) on cfg, checking each."""
    types = field_types()
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if types.get(sub_key, (None,))[0] != key:
                    choices = [k for k, (s, _) in types.items() if s == key]
                    raise ConfigError(f"unknown key {sub_key!r} in [{key}] of {where}{did_you_mean(sub_key, choices)}")
                set_key(cfg, sub_key, sub_value)
        elif key in types:
            set_key(cfg, key, value)
        else:
            raise ConfigError(f"unknown key {key!r} in {where}{did_you_mean(key, list(types) + list(SECTIONS))}")


def set_key(cfg: Config, key: str, value) -> None:
    section, tp = field_types()[key]
    if not isinstance(value, (str, int, float, bool, list, type(None))):
        raise ConfigError(f"{key} has an unsupported value {value!r}")
    setattr(getattr(cfg, section), key, convert(key, value, tp))


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML ({e}); fix the syntax") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a .toml file") from None


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path} ({e})") from None
