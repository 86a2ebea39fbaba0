"""The model contract: what every model provides, and the optional capabilities it declares.

Every model is a ``LatentModel``: ``encode(x)`` gives q(z|x), ``decode(z, ...)`` p(x|z, ...) and
``prior()`` p(z), all torch Distributions, p(x|z, ...) made by ``likelihood`` (a registered
``aevb.distributions`` Likelihood, which also says what data it can score); ``elbo(x, estimator)``
its per-datapoint bound,
``log_weights(x, k)`` the importance weights log p(x, z_k)/q(z_k|x) of its marginal likelihood,
and ``sample``, ``embed``, ``reconstruct`` for the figures. Plain latent-variable models inherit
every method but the three distributions.

What only some models can do is declared by inheriting a capability, never found out by probing
for methods: the trainer, the evaluator and the figures ask ``isinstance(model, Capability)``.

  DecodesLatent  decode(z) alone is p(x|z): decoded prior quantiles, interpolations (a VAE; not M2,
                 whose decoder needs the class as well)
  Classifier     a classifier q(y|x) and a bound for labelled data: semi-supervised training
  ClassLatent    the class is a latent variable of the generative model, p(y) p(z) p(x|y,z),
                 enumerated in the bound (M2): its generative classification and class analogies
  ConsistentClassifier  the classifier can be applied to the model's own reconstructions, so that
                 training can hold them to the label of what they reconstruct (the PC-VAE)
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.distributions import Categorical, Distribution

from ..distributions.likelihoods import Likelihood
from ..errors import ConfigError
from ..objectives import ELBOTerms, Estimator, has_analytic_kl, log_weights


class LatentModel(nn.Module, ABC):
    """A model p(z) p(x|z) with an inference model q(z|x). Subclasses set ``x_shape`` (the shape of
    one datapoint), ``latent_dim``, ``likelihood`` and ``prior_net`` (a module returning p(z); or
    override ``prior``), and implement ``encode``, ``decode``, ``sample`` and ``reconstruct``."""

    x_shape: tuple[int, ...]
    latent_dim: int
    likelihood: Likelihood
    _analytic_kl: bool | None = None

    @abstractmethod
    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) with batch shape (N,) and event shape (latent_dim,)."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z, ...) with batch shape z.shape[:-1] and event shape x_shape."""

    def prior(self) -> Distribution:
        """p(z), event shape (latent_dim,)."""
        return self.prior_net()

    def elbo(self, x: torch.Tensor, estimator: Estimator = Estimator()) -> ELBOTerms:
        """Per-datapoint bound on log p(x) under ``estimator`` (its name, samples and β); a model
        with more latent variables than z (M2's class) sums or enumerates them here."""
        return estimator(self, x)

    def log_weights(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """log w_k = log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x), shape (samples, N): E[w] = p(x)."""
        return log_weights(self, x, samples)

    def check_support(self, x: torch.Tensor, what: str) -> None:
        """DataError naming ``what`` (e.g. "the training data") where x lies outside what p(x|z) can score."""
        self.likelihood.check_support(x, what)

    @property
    def latent_layers(self) -> tuple[int, ...]:
        """The sizes of the stochastic layers that z concatenates (one layer: (latent_dim,)); the
        evaluator counts active units per layer, as Burda et al. 2015 do."""
        return (self.latent_dim,)

    def has_analytic_kl(self) -> bool:
        """Whether KL(q(z|x) ‖ p(z)) has a registered closed form (decided once per model)."""
        if self._analytic_kl is None:
            p = next(self.parameters())
            x = torch.zeros(1, *self.x_shape, device=p.device, dtype=p.dtype)
            training = self.training
            with torch.no_grad():  # in eval mode: one zero datapoint must not touch batch-norm statistics
                self._analytic_kl = has_analytic_kl(self.eval().encode(x), self.prior())
            self.train(training)
        return self._analytic_kl

    def networks(self) -> list[nn.Module]:
        """The neural networks of the model, the modules that ``--precision`` runs under autocast:
        every child module but ``likelihood`` and ``prior_net``."""
        return [m for name, m in self.named_children() if name not in ("likelihood", "prior_net")]

    def theta_networks(self) -> list[nn.Module]:
        """The networks of p(x|z), whose parameters θ ``--theta map`` puts a prior on and ``--theta vb``
        a distribution over: ``decoder`` (override where the generative networks are named otherwise)."""
        try:
            return [self.decoder]
        except AttributeError:
            raise ConfigError(f"--theta map and vb need the networks of p(x|z), and {type(self).__name__} has no "
                              "'decoder'; train it with --theta ml (or give the model a theta_networks method)") from None

    @abstractmethod
    def sample(self, n: int) -> torch.Tensor:
        """n draws from the model decoded to the mean of p(x|·): shape (n, *x_shape)."""

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Posterior means E_q[z|x], shape (N, latent_dim), computed in batches."""
        return torch.cat([self.encode(x[i:i + batch_size]).mean for i in range(0, len(x), batch_size)])

    @abstractmethod
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x encoded and decoded at the posterior mean: the mean of p(x|z = E_q[z|x]), shape of x."""


class DecodesLatent(ABC):
    """Capability: ``decode(z)`` with z alone is p(x|z), so any point of latent space can be drawn, and
    p(x) = ∫ p(x|z) p(z) dz is a prior over x for inverse problems (the estimators in aevb.inference)."""

    def impute(self, x: torch.Tensor, missing: torch.Tensor | str, method: str = "importance",
               **options) -> torch.Tensor:
        """x (N, *x_shape) with its missing pixels at E[x_miss | x_obs] = E_{p(z|x_obs)}[E[x_miss|z]];
        ``missing`` a boolean mask of x's shape or a mask name (``bottom-half``, ``random-0.5``, ...);
        ``method`` pseudo-gibbs, metropolis-gibbs or importance (aevb.inference.conditional)."""
        from ..inference.conditional import impute, make_mask

        if isinstance(missing, str):
            missing = make_mask(missing, tuple(x.shape[1:]), len(x)).to(x.device)
        return impute(self, x, missing, method, **options)

    def denoise(self, noisy: torch.Tensor, noise: float, **options) -> torch.Tensor:
        """E[E[x|z] | y] for y = x + N(0, noise² I): the clean images' posterior mean
        (aevb.inference.observation.denoise)."""
        from ..inference.observation import denoise

        return denoise(self, noisy, noise, **options)

    def superresolve(self, low: torch.Tensor, factor: int, **options) -> torch.Tensor:
        """E[E[x|z] | y] for y = the factor × factor block means of x: the high-resolution images'
        posterior mean (aevb.inference.observation.superresolve)."""
        from ..inference.observation import superresolve

        return superresolve(self, low, factor, **options)


class Classifier(ABC):
    """Capability: a classifier q(y|x) over ``n_classes`` classes and a bound for labelled data,
    which semi-supervised training needs. ``default_alpha`` is the model's weight of the mean
    classification loss per datapoint."""

    n_classes: int
    default_alpha: float

    @abstractmethod
    def classify(self, x: torch.Tensor) -> Categorical:
        """q(y|x), batch shape (N,): what the model predicts."""

    @abstractmethod
    def class_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training classification term log q(y|x) (an estimate where it is an expectation), shape (N,)."""

    @abstractmethod
    def labelled_elbo(self, x: torch.Tensor, y: torch.Tensor, estimator: Estimator = Estimator()) -> ELBOTerms:
        """The bound on log p(x, y) (or on log p(x) where y is not part of the generative model)."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The most probable class under q(y|x), computed in batches, shape (N,)."""
        return torch.cat([self.classify(x[i:i + batch_size]).logits.argmax(-1) for i in range(0, len(x), batch_size)])


class ClassLatent(Classifier):
    """Capability: the class y is a latent variable of the generative model, p(y) p(z) p(x|y,z),
    enumerated in the unlabelled bound; its KL is the ``kl_y`` of ELBOTerms and ``estimator.beta_y``
    weighs it in training."""

    @abstractmethod
    def class_log_joint(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """log p(x, y) for every class, shape (N, n_classes): argmax_y is the generative model's class."""

    @abstractmethod
    def analogies(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Each input's style decoded with every class, shape (N, n_classes, *x_shape)."""


def conditioned(model: LatentModel, s: torch.Tensor | None):
    """The model for datapoints of known batches s (``model.given(s)``, a VAE trained with --batch-key), or the
    model itself where s is None: what the estimators and ``elbo`` are applied to."""
    return model if s is None else model.given(s)


class ConsistentClassifier(Classifier):
    """Capability: the classifier reads the model's reconstructions as well as its inputs, so a
    training term can ask a reconstruction to keep the class of the image it reconstructs (Hope et
    al. 2020's consistency constraint). ``default_consistency`` is the model's weight of that term."""

    default_consistency: float

    @abstractmethod
    def consistency_nll(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the classifier's prediction on a reconstruction of x against the label
        y where given, else against the classifier's own (fixed) prediction on x; shape (N,)."""


def reported_terms(model: LatentModel) -> tuple[str, ...]:
    """The ELBOTerms fields that describe a model's bound: elbo, log_px_z and kl, and kl_y where
    the model has a latent class (for others it is zero)."""
    return ("elbo", "log_px_z", "kl", "kl_y") if isinstance(model, ClassLatent) else ("elbo", "log_px_z", "kl")
