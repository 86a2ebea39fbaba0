"""Typed configuration: one dataclass per component, loaded from TOML and ``--key value`` flags.

A config file may use sections ([data], [model], [train]) or flat keys; every key is checked
against the dataclass fields, with a 'did you mean' for a mistyped one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .registry import did_you_mean


@dataclass
class DataConfig:
    dataset: str = "mnist"
    binarize: str = "none"
    data_dir: typing.Optional[str] = None
    download: bool = True
    train_size: typing.Optional[int] = None
    test_size: typing.Optional[int] = None
    split: str = "standard"  # the dataset's own train/test split, or "80/20" of both pooled
    labelled: typing.Optional[int] = None  # semi-supervised models: labelled training examples, equal per class; None: all
    test_fraction: float = 0.1  # data without a test split (folder:, h5ad:, ldac:, frey-face, reuters): the fraction held out (seeded)
    image_size: typing.Optional[list[int]] = None  # folder: images resized to H W (one value: square); None: as stored
    channels: typing.Optional[int] = None  # folder: 1 (grey) or 3 (RGB); None: 1 if every image is grey, else 3
    layer: typing.Optional[str] = None  # h5ad: the layer to train on (e.g. counts); None: X
    label_key: typing.Optional[str] = None  # h5ad: the obs column of class labels (shown in figures); None: no labels
    batch_key: typing.Optional[str] = None  # h5ad: the obs column of each cell's batch, a covariate of the decoder; None: none
    stream: bool = False  # npy, npz, h5ad: read the data from disk a minibatch at a time (bounded memory)
    val_fraction: typing.Optional[float] = None  # held out of the training set by the run's seed; None: no validation


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
    prior_concentration: typing.Optional[float] = None  # dirichlet, laplace_dirichlet: α of Dir(α 1_K); None: 1/K
    likelihood: str = "bernoulli"
    likelihood_scale: str = "shared"
    likelihood_scale_init: float = 1.0
    library_size: str = "observed"  # poisson and negative binomials: μ = (Σ_i x_i) softmax(h), or none: μ = exp(h)
    likelihood_dispersion: str = "feature"  # negative binomials: θ learned per feature, shared, or predicted (a head)
    likelihood_trials: typing.Optional[int] = None  # binomial: the number of trials N of every feature (255: 8-bit)
    init_std: typing.Optional[float] = None
    theta: str = "ml"  # the decoder's parameters: ml (a point), map (with a Gaussian prior) or vb (a Gaussian q(θ)); see models/theta.py
    theta_prior_scale: float = 1.0  # p(θ) = N(0, scale²) on each decoder weight and bias (map, vb)
    hidden2: list[int] = field(default_factory=lambda: [50, 50])  # hierarchical: the hidden layers between z1 and z2
    latent_dim2: int = 50  # hierarchical: the size of the second stochastic layer z2 (latent_dim is z1's)


@dataclass
class TrainConfig:
    algorithm: typing.Optional[str] = None  # a registered training algorithm; None: the model's own (sgvb; semi-supervised for m2, pcvae)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    optimizer_eps: typing.Optional[float] = None  # the ε of adam, adagrad, rmsprop; None: torch's default (Burda et al.: 1e-4)
    lr_schedule: str = "constant"  # a registered learning-rate schedule (aevb.lr_schedules): constant, burda, step, cosine, plateau
    lr_gamma: float = 0.1  # step and plateau: the factor of each decrease
    lr_step: typing.Optional[int] = None  # step: epochs between decreases; None: a third of the epochs
    lr_patience: int = 5  # plateau: epochs without a better training bound before a decrease
    seed: int = 1
    estimator: str = "auto"
    samples: int = 1
    beta: float = 1.0
    beta_schedule: str = "constant"
    beta_y: typing.Optional[float] = None  # M2: weight of KL(q(y|x) || p(y)) in the unlabelled bound; None: beta
    warmup_epochs: float = 5.0
    cycles: int = 4
    cycle_ratio: float = 0.5
    device: str = "auto"
    precision: str = "32"  # 32, bf16-mixed or 16-mixed (CUDA): the networks under autocast, everything else fp32
    compile: bool = False  # torch.compile the training loss, forward and backward
    eval_batch_size: int = 1000
    on_nan: str = "stop"  # a NaN/Inf loss: stop (keeping the last good checkpoint) or roll back and lower lr
    nan_lr_factor: float = 0.1  # rollback multiplies the learning rate by this
    nan_retries: int = 3  # rollbacks allowed in one run before it stops anyway
    alpha: typing.Optional[float] = None  # weight of the mean classification loss per datapoint; None: the model's default
    consistency: typing.Optional[float] = None  # pcvae: weight γ of the consistency term per datapoint; None: the model's default
    labelled_batch_size: typing.Optional[int] = None  # labelled examples per step; None: min(batch_size, labelled)
    labelled_weight: typing.Optional[float] = None  # weight of the labelled bound's mean, the unlabelled one's is 1 - it; None: N_l/N
    labelled_every: typing.Optional[int] = None  # a labelled step after every K unlabelled steps (Pyro's schedule); None: a labelled batch in every step
    logger: list[str] = field(default_factory=lambda: ["jsonl"])  # where metrics go (aevb.logging); jsonl always
    log_images_every: int = 5  # tensorboard: sample and reconstruction grids every N epochs and at the last
    early_stopping: typing.Optional[int] = None  # stop after this many epochs without a better val_elbo; None: never
    grad_clip: typing.Optional[float] = None  # clip the total gradient norm of each step to this; None: no clipping
    free_bits: typing.Optional[float] = None  # sgvb: each latent dimension's KL in the objective ≥ λ nats; None: off
    hmc_steps: int = 1  # mcem: HMC iterations of a batch's chains before its M-steps
    leapfrog_steps: int = 10  # mcem: leapfrog steps per HMC iteration (Kingma & Welling 2013, appendix E: 10)
    hmc_acceptance: float = 0.9  # mcem: the acceptance rate every chain's step size adapts toward (appendix E: 0.9)
    m_steps: int = 5  # mcem: gradient steps on θ per batch, on the same chain states (appendix E: 5)


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

    def validate(self) -> "Config":
        """Check (and convert) every field again, for configs built in Python by assigning
        attributes, which bypasses the checks of ``from_dict`` and the flags."""
        for key, (section, tp) in field_types().items():
            sec = getattr(self, section)
            setattr(sec, key, convert(key, getattr(sec, key), tp))
        return self


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
POSITIVE_ITEMS = {"hidden", "conv_channels", "hidden2", "image_size"}  # layer sizes: every item of the list
POSITIVE = {"train_size", "test_size", "latent_dim", "prior_components", "epochs", "batch_size", "samples",
            "cycles", "eval_batch_size", "posterior_df", "prior_concentration", "likelihood_scale_init", "lr", "init_std", "cycle_ratio",
            "nan_retries", "labelled", "labelled_batch_size", "labelled_weight", "labelled_every",
            "theta_prior_scale", "latent_dim2", "optimizer_eps", "lr_step", "likelihood_trials", "log_images_every",
            "early_stopping", "grad_clip", "free_bits", "hmc_steps", "leapfrog_steps", "m_steps"}
NON_NEGATIVE = {"beta", "beta_y", "warmup_epochs", "alpha", "consistency", "lr_patience"}
AT_MOST_ONE = {"cycle_ratio": "(0, 1]", "labelled_weight": "(0, 1]"}  # fractions: upper bound inclusive
BELOW_ONE = {"nan_lr_factor": "(0, 1)", "lr_gamma": "(0, 1)", "test_fraction": "(0, 1)",
             "val_fraction": "(0, 1)", "hmc_acceptance": "(0, 1)"}  # fractions: upper bound exclusive
BINARIZE = ("none", "dynamic", "static")
ON_NAN = ("stop", "rollback")
SPLITS = ("standard", "80/20")
PRECISION = ("32", "bf16-mixed", "16-mixed")
THETA = ("ml", "map", "vb")
CHOICES = {"binarize": BINARIZE, "on_nan": ON_NAN, "split": SPLITS, "precision": PRECISION, "theta": THETA}  # fixed choices (registered names are checked by their registry)
HELP = {  # the flags' help lines, where the name alone could mislead
    "dataset": "a registered dataset ('aevb datasets' lists them), npz:PATH (a file or a folder of shards), "
               "npy:PATH (one array, no labels), folder:PATH (PNG/JPEG files, one sub-folder per class), h5ad:PATH "
               "(AnnData; pip install aevb[anndata]) or ldac:PATH (bags of words in LDA-C, the vocabulary beside it) "
               "(default mnist)",
    "test_fraction": "data without a test split (folder: without a test/ folder, h5ad:, npy:, ldac:, frey-face, "
                     "reuters): the fraction held out as the test set, the same examples in every run (default 0.1)",
    "image_size": "folder: resize every image to H W (one value: square); needed where the images differ in size",
    "channels": "folder: 1 (grey) or 3 (RGB); default 1 where every image is grey, else 3",
    "layer": "h5ad: the layer to train on (e.g. counts; default X)",
    "label_key": "h5ad: the obs column of class labels, shown in the figures and report (default none)",
    "batch_key": "h5ad: the obs column of each cell's batch: its one-hot joins z at the decoder's input, as in scVI, "
                 "and --likelihood-dispersion feature-batch gives the negative binomials a dispersion per gene and "
                 "batch (default none)",
    "stream": "read the training and test data from disk a minibatch at a time, in bounded memory: npy:PATH and "
              "npz:PATH memory-mapped (arrays saved by numpy.save / numpy.savez, not savez_compressed), h5ad:PATH "
              "through anndata's on-disk datasets; the same seed gives the same results as in memory",
    "binarize": "pixels drawn from Bernoulli(grey level): none (default); dynamic (the training set afresh in every "
                "batch, the test set once, as in Burda et al. 2015); static (both once, by aevb's fixed seed: on mnist "
                "a fixed binarisation of our MNIST, NOT the Larochelle & Murray set of the papers' 'static' numbers; "
                "for that set use --dataset binarized-mnist)",
    "prior_concentration": "--prior dirichlet and laplace_dirichlet: the concentration α of each of the K = "
                           "--latent-dim components of Dir(α, ..., α) (default 1/K, LDA's default in scikit-learn "
                           "and gensim; ProdLDA uses 1)",
    "hidden2": "--model hierarchical: the hidden layers between z1 and z2 (default 50 50)",
    "latent_dim2": "--model hierarchical: the size of z2 (default 50; --latent-dim is z1's)",
    "algorithm": "how to train: sgvb (AEVB, Kingma & Welling 2013), semi-supervised (m2, pcvae) or wake-sleep "
                 "(Hinton et al. 1995: the baseline of the AEVB paper, reporting the same ELBO); default: the "
                 "model's own (sgvb; semi-supervised for m2, pcvae)",
    "optimizer_eps": "the ε of adam, adagrad and rmsprop (default: torch's; Burda et al. 2015 use 1e-4 with adam)",
    "lr_schedule": "constant (default), burda (3^i epochs at lr·10^(-i/7), i = 0…7), step, cosine or plateau",
    "lr_gamma": "step and plateau: the factor of each decrease (default 0.1)",
    "lr_step": "step: epochs between decreases (default a third of the epochs)",
    "lr_patience": "plateau: epochs without a better training ELBO before a decrease (default 5)",
    "logger": "where the metrics of every epoch go: jsonl (metrics.jsonl, always written), csv (metrics.csv), "
              "tensorboard (event files in the run directory; pip install aevb[tensorboard]); several at once, "
              "e.g. --logger jsonl,csv,tensorboard",
    "log_images_every": "--logger tensorboard: sample and reconstruction grids every N epochs and at the last "
                        "(default 5)",
    "val_fraction": "hold this fraction of the training set out for validation, drawn by --seed (default: none); "
                    "metrics.jsonl gets val_elbo etc. per epoch",
    "early_stopping": "the patience: stop after this many epochs without a better validation ELBO (needs "
                      "--val-fraction); RUN/best.safetensors holds the best epoch's weights (default: never stop)",
    "grad_clip": "clip each step's total gradient norm to this (torch.nn.utils.clip_grad_norm_); metrics.jsonl gets "
                 "train_grad_norm, the mean norm before clipping (default: no clipping)",
    "hmc_steps": "--algorithm mcem: HMC iterations of a batch's persistent chains (one per training example) "
                 "before its M-steps (default 1)",
    "leapfrog_steps": "--algorithm mcem: leapfrog steps per HMC iteration (default 10, as Kingma & Welling 2013)",
    "hmc_acceptance": "--algorithm mcem: the acceptance rate each chain's step size adapts toward (default 0.9)",
    "m_steps": "--algorithm mcem: gradient steps on the decoder's θ per batch, on the same chain states (default 5)",
    "alpha": "m2, pcvae: the weight of the labelled batch's mean cross-entropy per datapoint (Kingma et al. 2014's "
             "α/N; the PC-VAE's λ·N_l/N, Hope et al. 2020); default: the model's (m2 0.1, the paper's; pcvae 1, "
             "i.e. λ = N/N_l)",
    "consistency": "pcvae: the weight γ per datapoint of Hope et al. 2020's consistency term, the cross-entropy of "
                   "the classifier on each image's reconstruction against its label (unlabelled: against the "
                   "prediction on the image); 0 turns it off (default 10)",
    "free_bits": "free bits λ (Kingma et al. 2016): in the training objective each latent dimension's minibatch-mean "
                 "KL is at least λ nats; the reported ELBO is unchanged (sgvb, estimators A/B/auto, factorised q, p)",
}


@functools.cache
def field_types() -> dict[str, tuple[str, type]]:
    """Every config key -> (section, type). Keys are unique across sections, so flags stay flat.
    Computed once (typing.get_type_hints is slow, and every key set asks); callers only read it."""
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
        if args[0] is str:  # names: --logger jsonl,csv as well as --logger jsonl csv
            items = [part for item in items for part in (item.split(",") if isinstance(item, str) else [item])]
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
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be {'an' if tp is int else 'a'} {tp.__name__}, got {value!r}") from None
    if key in POSITIVE and not out > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in NON_NEGATIVE and not out >= 0:
        raise ConfigError(f"{key} must be non-negative, got {value!r}")
    if tp is float and not math.isfinite(out):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if key in AT_MOST_ONE and not 0 < out <= 1 or key in BELOW_ONE and not 0 < out < 1:
        raise ConfigError(f"{key} must be in {AT_MOST_ONE.get(key) or BELOW_ONE[key]}, got {value!r}")
    if key in CHOICES and out not in CHOICES[key]:
        raise ConfigError(f"unknown {key} {out!r}{did_you_mean(out, list(CHOICES[key]))}; "
                          f"choose one of: {', '.join(CHOICES[key])}")
    return out


def apply(cfg: Config, d: dict, where: str) -> None:
    """Set the keys of d (flat, or nested by section) on cfg, checking each."""
    types = field_types()
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must hold a table of settings (key = value), not a {type(d).__name__}")
    for key, value in d.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r} in {where}")
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if not isinstance(sub_key, str):
                    raise ConfigError(f"config keys must be strings, got {sub_key!r} in [{key}] of {where}")
                section = types.get(sub_key, (None,))[0]
                if section != key:
                    choices = [k for k, (s, _) in types.items() if s == key]
                    hint = f" (it belongs in [{section}])" if section else did_you_mean(sub_key, choices)
                    raise ConfigError(f"unknown key {sub_key!r} in [{key}] of {where}{hint}")
                set_key(cfg, sub_key, sub_value)
        elif key in types:
            set_key(cfg, key, value)
        elif key in SECTIONS:
            raise ConfigError(f"[{key}] in {where} must be a table of settings, got {value!r}")
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
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or e}); check the path and its permissions") from None


def load_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path} ({e}); pass a TOML file or a run's config.json") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} holds a JSON {type(d).__name__}, not a config object; pass a run's config.json")
    return d
