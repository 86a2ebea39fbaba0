"""scikit-learn estimators over aevb's models: ``VAETransformer`` maps X (n_samples, n_features) to
the posterior means E_q[z|x] of a VAE trained by aevb's one Trainer, and back through the decoder.

Fitting builds an aevb ``Config`` from the estimator's parameters and hands the arrays to the
``Trainer`` as an in-memory ``Dataset`` (the path ``npz:`` data takes after loading): no run
directory is written. The weights travel in pickles as safetensors bytes beside the config.
"""
from __future__ import annotations

import contextlib

import numpy as np
import safetensors.torch
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .config import Config
from .data import Dataset
from .errors import DataError, TrainingDiverged
from .evaluate import elbo_terms
from .models import build_model
from .objectives import Estimator
from .train import Trainer, check_names, check_parameters, resolve_device

FLOATS = (np.float64, np.float32)  # what transform returns is X's own float type
PARAMETERS = ("latent_dim", "hidden", "activation", "likelihood", "posterior", "prior",  # aevb config keys
              "epochs", "batch_size", "lr", "optimizer", "beta", "estimator", "samples", "device")


def plain(value):
    """A parameter as aevb's config takes it: a tuple as a list, a numpy scalar (a parameter grid's
    np.arange) as the Python number."""
    if isinstance(value, np.generic):
        return value.item()
    return list(value) if isinstance(value, tuple) else value


class InputError(DataError, ValueError, TypeError):
    """Input scikit-learn's validation refuses, in its words on one line: a DataError for aevb, and
    both the ValueError and the TypeError that scikit-learn's conventions (and check_estimator)
    expect, as its own InvalidParameterError is both."""


def validated(check, *args, **kwargs) -> np.ndarray:
    """``check`` (validate_data or check_array) as a float array, its refusals as InputError."""
    try:
        return check(*args, dtype=FLOATS, **kwargs)
    except (ValueError, TypeError) as e:
        raise InputError(str(e)) from None


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generators seeded with ``seed`` inside, restored outside: fitting and scoring
    draw the same numbers every time and leave the caller's random state as they found it."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


class VAETransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A variational autoencoder (Kingma & Welling 2013) as a scikit-learn transformer.

    ``fit`` maximises the mean ELBO per sample, E_q[log p(x|z)] - β KL(q(z|x) ‖ p(z)), by aevb's
    Trainer (SGVB, Algorithm 1, minibatches of ``batch_size``, ``epochs`` passes); ``transform`` gives
    the posterior means E_q[z|x], shape (n, latent_dim), named vaetransformer0 … by
    ``get_feature_names_out``; ``inverse_transform`` the decoder's mean E[x|z]; ``score`` the mean
    ELBO per sample (β = 1) in nats, higher is better, its Monte Carlo draws seeded like the fit.

    Parameters are aevb's config keys of the same names (``aevb train --help``): an MLP encoder
    n_features → ``hidden`` → q(z|x) and its mirror as decoder. ``likelihood="auto"`` takes
    ``bernoulli`` when every value of the training X lies in [0, 1] (pixel intensities, min-max
    scaled features: log p(x|z) is then the negative binary cross-entropy) and ``gaussian`` with a
    learned shared σ otherwise (standardise such features first, e.g. with StandardScaler). An int
    ``random_state`` makes fit bit-identical on one machine and thread count; torch's global random
    state is left as it was.

    Attributes: ``model_`` (the trained aevb model, in eval mode), ``config_`` (its resolved
    ``aevb.Config``), ``history_`` (the training metrics of every epoch), ``n_features_in_`` and
    ``feature_names_in_`` (for a DataFrame).

    Passes every check of ``sklearn.utils.estimator_checks.check_estimator`` (scikit-learn 1.9) with
    none marked as an expected failure (scikit-learn itself skips ``check_array_api_input`` unless
    SCIPY_ARRAY_API=1 is set; with it set, that check passes too).
    """

    def __init__(self, latent_dim: int = 10, hidden: tuple[int, ...] = (128,), activation: str = "relu",
                 likelihood: str = "auto", posterior: str = "normal", prior: str = "standard_normal",
                 epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
                 beta: float = 1.0, estimator: str = "auto", samples: int = 1, random_state=None,
                 device: str = "auto"):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.likelihood = likelihood
        self.posterior = posterior
        self.prior = prior
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.beta = beta
        self.estimator = estimator
        self.samples = samples
        self.random_state = random_state
        self.device = device

    def config(self, X: np.ndarray) -> Config:
        """The aevb Config of a fit on X: the parameters checked by aevb's own config rules, the
        likelihood resolved and the seed drawn from ``random_state``."""
        params = {key: plain(getattr(self, key)) for key in PARAMETERS}
        if params["likelihood"] == "auto":
            params["likelihood"] = "bernoulli" if X.min() >= 0 and X.max() <= 1 else "gaussian"
        params["seed"] = int(check_random_state(self.random_state).randint(2**31 - 1))
        cfg = Config.from_dict(params, where="the VAETransformer parameters")
        check_names(cfg)
        return cfg

    def fit(self, X, y=None) -> "VAETransformer":
        """Train a VAE on X (n_samples, n_features); y is ignored."""
        X = validated(validate_data, self, X, reset=True)
        cfg = self.config(X)
        x = torch.tensor(X, dtype=torch.float32)
        with seeded(cfg.train.seed):
            trainer = Trainer(cfg, Dataset("array", "the X given to fit", x, None, x[:0], None))  # no test set
            history = []
            for epoch in range(1, cfg.train.epochs + 1):
                try:
                    history.append(trainer.epoch(epoch))
                    check_parameters(trainer.model, epoch)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"{e}; fit again with a lower lr (now {cfg.train.lr:g})") from None
        self.model_, self.config_, self.history_ = trainer.model.eval(), cfg, history
        self._n_features_out = cfg.model.latent_dim
        return self

    def tensor(self, X: np.ndarray) -> torch.Tensor:
        """X as float32 on the model's device (a copy: read-only arrays are fine)."""
        return torch.tensor(X, dtype=torch.float32, device=next(self.model_.parameters()).device)

    def transform(self, X) -> np.ndarray:
        """The posterior means E_q[z|x], shape (n_samples, latent_dim), in X's float type."""
        check_is_fitted(self)
        X = validated(validate_data, self, X, reset=False)
        return self.model_.embed(self.tensor(X)).cpu().numpy().astype(X.dtype)

    def inverse_transform(self, Z) -> np.ndarray:
        """The decoder's mean E[x|z] of each row z of Z (n_samples, latent_dim): shape (n_samples, n_features)."""
        check_is_fitted(self)
        Z = validated(check_array, Z)
        if Z.shape[1] != self._n_features_out:
            raise InputError(f"Z has {Z.shape[1]} columns but the latent space has {self._n_features_out} "
                             "dimensions; pass the output of transform")
        with torch.no_grad():
            return self.model_.decode(self.tensor(Z)).mean.cpu().numpy().astype(Z.dtype)

    def score(self, X, y=None) -> float:
        """The mean ELBO per sample of X in nats under the fitted estimator and samples, β = 1 (higher
        is better): (1/n) Σ_i E_q[log p(x_i|z)] - KL(q(z|x_i) ‖ p(z)); y is ignored."""
        check_is_fitted(self)
        X = validated(validate_data, self, X, reset=False)
        x = self.tensor(X)
        self.model_.check_support(x, "X")
        t = self.config_.train
        with seeded(t.seed):
            return elbo_terms(self.model_, x, Estimator(t.estimator, t.samples), t.eval_batch_size)["elbo"]

    def __sklearn_tags__(self):
        """transform keeps float32 as float32 (the networks compute in float32 either way)."""
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def __getstate__(self) -> dict:
        """The trained weights as safetensors bytes and the config as a dict: no pickled tensors."""
        state = super().__getstate__()
        if "model_" in state:
            weights = {k: v.detach().contiguous().cpu() for k, v in self.model_.state_dict().items()}
            state = state | {"model_": safetensors.torch.save(weights), "config_": self.config_.to_dict()}
        return state

    def __setstate__(self, state: dict) -> None:
        """The model rebuilt from its config, its safetensors weights loaded strictly, on its device."""
        if "model_" in state:
            cfg = Config.from_dict(state["config_"], where="the pickled VAETransformer")
            model = build_model(cfg.model, (state["n_features_in_"],))
            model.load_state_dict(safetensors.torch.load(state["model_"]))
            state = state | {"model_": model.to(resolve_device(cfg.train.device)).eval(), "config_": cfg}
        super().__setstate__(state)
