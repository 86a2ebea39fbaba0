"""Distributions for q(z|x), p(z) and p(x|z), each registered by name; all extend torch.distributions."""
from . import kl as _kl  # noqa: F401  (registers the extra closed-form KLs)
from .families import Erlang, Gompertz, InverseCDF, Logistic, MultivariateStudentT, Rayleigh, Reciprocal, Triangular
from .likelihoods import LIKELIHOODS, SCALE_MODES, Likelihood
from .counts import CountLikelihood, LogRatePoisson, ZeroInflatedNegativeBinomial  # registers the count likelihoods
from .posteriors import POSTERIORS, PosteriorFamily
from .priors import PRIORS, latent_families
from .simplex import AdditiveLogistic, LogisticNormal

__all__ = [
    "LIKELIHOODS", "POSTERIORS", "PRIORS", "SCALE_MODES", "AdditiveLogistic", "CountLikelihood", "Erlang", "Gompertz",
    "InverseCDF", "Likelihood", "LogRatePoisson", "Logistic", "LogisticNormal", "MultivariateStudentT",
    "PosteriorFamily", "Rayleigh", "Reciprocal", "Triangular", "ZeroInflatedNegativeBinomial", "latent_families",
]
