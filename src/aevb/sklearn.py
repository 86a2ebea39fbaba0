"""scikit-learn estimators over aevb's models: ``VAETransformer`` maps X (n_samples, n_features) to
the posterior means E_q[z|x] of a VAE trained by aevb's one Trainer, and back through the decoder;
``VAEClassifier`` trains M2 or the PC-VAE semi-supervised (unlabelled samples marked y = -1) and
predicts with the model's own classifier q(y|x).

Fitting builds an aevb ``Config`` from the estimator's parameters and hands the arrays to the
``Trainer`` as an in-memory ``Dataset`` (the path ``npz:`` data takes after loading): no run
directory is written. The weights travel in pickles as safetensors bytes beside the config.
"""
from __future__ import annotations

import contextlib

import numpy as np
import safetensors.torch
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .config import Config
from .data import UNLABELLED, Dataset
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


class VAEEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What the estimators share: their parameters as an aevb Config (``parameters`` names the config
    keys), training by aevb's Trainer, ``transform`` to the posterior means E_q[z|x] (features named
    by the class, e.g. vaetransformer0 …), and pickles that hold the weights as safetensors bytes
    beside the config."""

    parameters = PARAMETERS

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

    def config(self, X: np.ndarray, **fixed) -> Config:
        """The aevb Config of a fit on X: the parameters (and the ``fixed`` settings) checked by aevb's
        own config rules, the likelihood resolved and the seed drawn from ``random_state``."""
        params = {key: plain(getattr(self, key)) for key in self.parameters} | fixed
        if params["likelihood"] == "auto":
            params["likelihood"] = "bernoulli" if X.min() >= 0 and X.max() <= 1 else "gaussian"
        params["seed"] = int(check_random_state(self.random_state).randint(2**31 - 1))
        cfg = Config.from_dict(params, where=f"the {type(self).__name__} parameters")
        check_names(cfg)
        return cfg

    def train(self, cfg: Config, X: np.ndarray, y: torch.Tensor | None = None) -> None:
        """Train the model of ``cfg`` on X (and the labels y, -1 where unknown) for ``cfg.train.epochs``
        epochs, seeded; set ``model_``, ``config_`` and ``history_``."""
        x = torch.tensor(X, dtype=torch.float32)
        with seeded(cfg.train.seed):
            trainer = Trainer(cfg, Dataset("array", "the X given to fit", x, y, x[:0], None))  # no test set
            history = []
            for epoch in range(1, cfg.train.epochs + 1):
                try:
                    history.append(trainer.epoch(epoch))
                    check_parameters(trainer.model, epoch)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"{e}; fit again with a lower lr (now {cfg.train.lr:g})") from None
        self.model_, self.config_, self.history_ = trainer.model.eval(), cfg, history
        self._n_features_out = cfg.model.latent_dim

    def tensor(self, X: np.ndarray) -> torch.Tensor:
        """X as float32 on the model's device (a copy: read-only arrays are fine)."""
        return torch.tensor(X, dtype=torch.float32, device=next(self.model_.parameters()).device)

    def transform(self, X) -> np.ndarray:
        """The posterior means E_q[z|x], shape (n_samples, latent_dim), in X's float type."""
        check_is_fitted(self)
        X = validated(validate_data, self, X, reset=False)
        return self.model_.embed(self.tensor(X)).cpu().numpy().astype(X.dtype)

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
            cfg = Config.from_dict(state["config_"], where=f"the pickled {type(self).__name__}")
            n_classes = len(state["classes_"]) if "classes_" in state else None
            model = build_model(cfg.model, (state["n_features_in_"],), n_classes)
            model.load_state_dict(safetensors.torch.load(state["model_"]))
            state = state | {"model_": model.to(resolve_device(cfg.train.device)).eval(), "config_": cfg}
        super().__setstate__(state)


class VAETransformer(VAEEstimator):
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

    def fit(self, X, y=None) -> "VAETransformer":
        """Train a VAE on X (n_samples, n_features); y is ignored."""
        X = validated(validate_data, self, X, reset=True)
        self.train(self.config(X), X)
        return self

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


class VAEClassifier(ClassifierMixin, VAEEstimator):
    """A semi-supervised classifier: M2 (Kingma et al. 2014) or the prediction-constrained VAE trained
    by aevb's semi-supervised algorithm (the J^α of Kingma et al. 2014, eq. 9, per sample) on every
    sample of X, the labelled ones also through the classification term.

    ``fit(X, y)`` takes y = -1 for an unlabelled sample, scikit-learn's convention (SelfTrainingClassifier,
    LabelSpreading; for string labels an object array holding -1 there); ``classes_`` are the labels
    of the labelled samples, sorted. ``predict_proba`` gives the model's own classifier q(y|x) (M2's
    classifier network; the PC-VAE's p(y|z) at the posterior mean), ``predict`` its most probable class,
    ``score`` the accuracy (ClassifierMixin), ``transform`` the posterior means E_q[z|x].

    Parameters are VAETransformer's, plus ``model`` ("m2" or "pcvae") and ``alpha``, the weight of the
    mean cross-entropy of the labelled samples per sample (None: the model's own, M2 0.1 and PC-VAE 1).

    Passes ``sklearn.utils.estimator_checks.check_estimator`` (scikit-learn 1.9) with one check
    expected to fail, ``check_classifiers_classes``: its last problem labels two classes -1 and 1, and
    -1 marks an unlabelled sample here, leaving one class (scikit-learn exempts its own semi-supervised
    classifiers from that problem by name).
    """

    parameters = PARAMETERS + ("model", "alpha")

    def __init__(self, latent_dim: int = 10, hidden: tuple[int, ...] = (128,), activation: str = "relu",
                 likelihood: str = "auto", posterior: str = "normal", prior: str = "standard_normal",
                 epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
                 beta: float = 1.0, estimator: str = "auto", samples: int = 1, random_state=None,
                 device: str = "auto", model: str = "m2", alpha: float | None = None):
        super().__init__(latent_dim, hidden, activation, likelihood, posterior, prior, epochs, batch_size, lr,
                         optimizer, beta, estimator, samples, random_state, device)
        self.model = model
        self.alpha = alpha

    def fit(self, X, y) -> "VAEClassifier":
        """Train on X (n_samples, n_features) with labels y (n_samples,), -1 where unknown."""
        X, y = validated(validate_data, self, X, y, reset=True)
        unlabelled = np.asarray(y == UNLABELLED) if y.dtype.kind in "iufO" else np.zeros(len(y), bool)
        try:
            check_classification_targets(y[~unlabelled])
        except ValueError as e:
            raise InputError(str(e)) from None
        self.classes_, codes = np.unique(y[~unlabelled], return_inverse=True)
        if len(self.classes_) < 2:
            raise InputError(f"VAEClassifier needs labelled samples of at least two classes; y has "
                             f"{'one class' if len(self.classes_) else 'no labelled sample'} (unlabelled ones are -1)")
        labels = np.full(len(y), UNLABELLED)
        labels[~unlabelled] = codes
        self.train(self.config(X, algorithm="semi-supervised"), X, torch.tensor(labels))
        return self

    @torch.no_grad()
    def predict_log_proba(self, X) -> np.ndarray:
        """log q(y|x) for each class of ``classes_``, shape (n_samples, n_classes), float64."""
        check_is_fitted(self)
        x = self.tensor(validated(validate_data, self, X, reset=False))
        batch = self.config_.train.eval_batch_size
        logits = torch.cat([self.model_.classify(x[i:i + batch]).logits for i in range(0, len(x), batch)])
        return torch.log_softmax(logits.double(), -1).cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """q(y|x) for each class of ``classes_``, shape (n_samples, n_classes), float64: rows sum to 1."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X) -> np.ndarray:
        """The most probable class under q(y|x), one of ``classes_``, shape (n_samples,)."""
        log_proba = self.predict_log_proba(X)
        return self.classes_[log_proba.argmax(1)]
