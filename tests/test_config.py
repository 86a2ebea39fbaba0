"""Config loading from TOML and dicts: sections and flat keys, conversion, and the one-line
ConfigError (a UserError) for every mistake."""
from __future__ import annotations

import pytest

from aevb import config as config_module
from aevb.config import Config, load_toml
from aevb.errors import ConfigError, UserError


def from_toml(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return Config.from_dict(load_toml(path), str(path))


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


def test_toml_with_sections(tmp_path):
    cfg = from_toml(tmp_path, """
[data]
dataset = "npz:toy.npz"
download = false
train_size = 500
[model]
hidden = [100, 50]
latent_dim = 5
likelihood = "gaussian"
init_std = 0.01
[train]
lr = 0.01
epochs = 3
estimator = "B"
""")
    assert (cfg.data.dataset, cfg.data.download, cfg.data.train_size) == ("npz:toy.npz", False, 500)
    assert (cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood, cfg.model.init_std) == ([100, 50], 5, "gaussian", 0.01)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.estimator) == (0.01, 3, "B")
    assert cfg.train.batch_size == Config().train.batch_size  # untouched keys keep their defaults


def test_toml_with_flat_keys_and_mixed_sections(tmp_path):
    cfg = from_toml(tmp_path, 'latent_dim = 7\nlr = 3e-4\nbinarize = "dynamic"\nmodel = "vae"\n[train]\nepochs = 2\n')
    assert (cfg.model.latent_dim, cfg.train.lr, cfg.data.binarize, cfg.model.model, cfg.train.epochs) == (7, 3e-4, "dynamic", "vae", 2)
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.model.latent_dim, int)


@pytest.mark.parametrize("key,value,expected", [
    ("latent_dim", "7", 7), ("lr", "1e-3", 1e-3), ("lr", 1, 1.0), ("hidden", "400,200", [400, 200]),
    ("hidden", [300], [300]), ("download", "no", False), ("download", "yes", True), ("train_size", "none", None),
    ("init_std", None, None), ("init_std", "0.01", 0.01), ("estimator", "iwae", "iwae"), ("beta", 0, 0.0),
    ("warmup_epochs", "0", 0.0),
])
def test_string_and_number_conversion(key, value, expected):
    cfg = Config.from_dict({key: value})
    section = config_module.field_types()[key][0]
    got = getattr(getattr(cfg, section), key)
    assert got == expected and type(got) is type(expected)


def test_round_trip_through_a_dict():
    cfg = Config.from_dict({"latent_dim": 3, "hidden": [8, 4], "lr": 0.5, "train_size": 10})
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict(Config().to_dict()) == Config()


@pytest.mark.parametrize("d", [
    {"latent_dim": "abc"}, {"latent_dim": 2.5}, {"latent_dim": True}, {"lr": "fast"}, {"download": "maybe"},
    {"hidden": "a,b"}, {"hidden": 5}, {"hidden": ""}, {"dataset": 5}, {"lr": {"a": 1}}, {"model": {"latent_dim": "x"}},
    {"lr": True}, {"hmc_acceptance": 1}, {"hmc_acceptance": 0.0}, {"leapfrog_steps": "ten"}, {"m_steps": 2.5},
    {"stream": "maybe"}, {"batch_key": 5},
])
def test_type_errors(d):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(d)
    key = next(iter(d["model"])) if "model" in d else next(iter(d))
    assert key.replace("_", "-") in str(e.value) or key in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("d,suggestion", [
    ({"latnet_dim": 3}, "latent_dim"), ({"model": {"latnet_dim": 3}}, "latent_dim"), ({"trian": {"lr": 1}}, "train"),
    ({"learning_rat": 0.1}, None), ({"train": {"latent_dim": 3}}, None), ({"epoch": 3}, "epochs"),
])
def test_unknown_key_with_did_you_mean(d, suggestion):
    with pytest.raises(ConfigError, match="unknown key") as e:
        Config.from_dict(d, "my.toml")
    assert "my.toml" in str(e.value)
    if suggestion:
        assert f"did you mean {suggestion!r}" in str(e.value)


def test_unknown_key_in_a_toml_section_names_the_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'latnet_dim' in \[model\].*did you mean 'latent_dim'"):
        from_toml(tmp_path, "[model]\nlatnet_dim = 3\n")


def positive_cases():
    types = config_module.field_types()
    cases = []
    for key in sorted(config_module.POSITIVE):
        for bad in (0, -1):
            value = bad if "int" in str(types[key][1]) else float(bad)
            cases.append((key, value))
    cases += [(key, -1 if "int" in str(types[key][1]) else -0.5) for key in sorted(config_module.NON_NEGATIVE)]
    cases += [(k, v) for k in sorted(config_module.POSITIVE_ITEMS) for v in ([0], [16, -4])]  # layer sizes, item by item
    return cases


@pytest.mark.parametrize("key,value", positive_cases())
def test_sizes_and_rates_must_be_positive(key, value):
    with pytest.raises(ConfigError, match="positive|non-negative"):
        Config.from_dict({key: value})


def test_positive_keys_accept_positive_values():
    cfg = Config.from_dict({k: 1 for k in config_module.POSITIVE} | {k: 0 for k in config_module.NON_NEGATIVE})
    assert cfg.model.latent_dim == 1 and cfg.train.warmup_epochs == 0.0


@pytest.mark.parametrize("text,match", [
    (None, "does not exist"), ("latent_dim = = 3\n", "not valid TOML"), ("dir", "is a directory"),
])
def test_load_toml_errors(tmp_path, text, match):
    path = tmp_path / "config.toml"
    if text == "dir":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_toml(path)
