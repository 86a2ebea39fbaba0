"""Count likelihoods p(x|z) for data of non-negative integers (gene expression counts, photon counts, 8-bit
pixels as counts out of 255), registered into LIKELIHOODS beside the continuous ones.

poisson, negative_binomial and zero_inflated_negative_binomial take the mean μ of each feature from the
decoder's first head h, as ``--library-size`` says:

  observed  μ = l softmax(h), the softmax over the features and l = Σ_i x_i the observed library size of
            the datapoint (scVI, Lopez et al. 2018): the decoder gives proportions, and log_prob(x)
            conditions on x's own library size. Where no x is at hand (sampling, the mean, the per-pixel
            distributions of imputation) l is the ``library`` given to ``forward``, by default the mean
            library size of the training data: a buffer updated in training mode from the data that
            log_prob scores, as BatchNorm keeps its running statistics, and saved with the weights.
  none      log μ = h, the log link of a Poisson GLM: canonical, and the same link as ``observed`` less
            its normalisation. Softplus would avoid exp(h) in the rate but needs log softplus(h), which
            is log(0) once h < -103 in float32.

Every family is built from log μ (a negative binomial's logits are log μ - log θ), so that no log(0) arises
however small μ becomes. binomial takes logits h and a known number of trials; multinomial (bags of words)
the word probabilities softmax(h), each datapoint scored at its own number of words.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (Bernoulli, Binomial, Distribution, Independent, Multinomial, NegativeBinomial, Poisson,
                                 constraints)
from torch.distributions.utils import _sum_rightmost, broadcast_all

from ..errors import ConfigError, DataError
from ..registry import did_you_mean
from .likelihoods import LIKELIHOODS, Likelihood

LIBRARY_SIZES = ("observed", "none")
DISPERSIONS = ("feature", "shared", "predicted", "feature-batch")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}{did_you_mean(str(value), list(choices))}; "
                          f"choose one of: {', '.join(choices)}")
    return value


class LogRatePoisson(Poisson):
    """Poisson(λ = exp(log_rate)) whose log_prob = x log λ - λ - log x! takes log λ as given: torch's Poisson
    computes xlogy(x, λ), whose gradient is 0/0 = NaN where λ has underflowed to 0 at x = 0."""

    def __init__(self, log_rate: torch.Tensor, validate_args=None):
        self.log_rate = log_rate
        super().__init__(log_rate.exp(), validate_args=validate_args)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return value * self.log_rate - self.rate - torch.lgamma(value + 1)


class ZeroInflatedNegativeBinomial(Distribution):
    """π δ_0 + (1 - π) NB(θ, logits): a negative binomial (torch's, total_count θ) whose zeros are inflated
    by a gate π = sigmoid(gate_logits) (scVI's ZINB; torch.distributions has none). In log space,

        log p(0) = log(π + (1 - π) NB(0)) = logaddexp(log π, log(1 - π) + log NB(0)),
        log p(x) = log(1 - π) + log NB(x),   x > 0,

    with log π = logsigmoid(g) and log(1 - π) = logsigmoid(-g): no log(0) and no exp overflow for any gate,
    dispersion or count. Mean (1 - π) μ, variance (1 - π)(μ + μ²/θ) + π(1 - π) μ²."""

    arg_constraints = {"total_count": constraints.nonnegative, "logits": constraints.real,
                       "gate_logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, total_count, logits, gate_logits, validate_args=None):
        self.total_count, self.logits, self.gate_logits = broadcast_all(total_count, logits, gate_logits)
        self.nb = NegativeBinomial(self.total_count, logits=self.logits, validate_args=False)
        super().__init__(self.gate_logits.shape, validate_args=validate_args)

    @property
    def mean(self):
        return torch.sigmoid(-self.gate_logits) * self.nb.mean

    @property
    def variance(self):
        keep = torch.sigmoid(-self.gate_logits)
        return keep * (self.nb.variance + (1 - keep) * self.nb.mean.pow(2))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            inflated = Bernoulli(logits=self.gate_logits).sample(sample_shape).bool()
            return self.nb.sample(sample_shape).masked_fill(inflated, 0)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_nb = self.nb.log_prob(value)
        log_keep = F.logsigmoid(-self.gate_logits)
        return torch.where(value == 0, torch.logaddexp(F.logsigmoid(self.gate_logits), log_keep + log_nb),
                           log_keep + log_nb)


class ObservedLibrary(Independent):
    """Π_i p(x_i | μ_i = l ρ_i) with the library size l observed: ``log_prob(x)`` conditions on x's own
    l = Σ_i x_i, while ``base_dist`` (and so mean, variance and samples) is the family at ``log_library``
    (broadcast over the batch). ``family(log l)`` gives the per-feature distribution at a library size;
    ``observe(l)`` is told each library size scored."""

    def __init__(self, family: Callable[[torch.Tensor], Distribution], log_library: torch.Tensor, event_dims: int,
                 observe: Callable[[torch.Tensor], None]):
        self.family, self.observe = family, observe
        super().__init__(family(log_library), event_dims, validate_args=False)

    def log_prob(self, value):
        n = self.reinterpreted_batch_ndims
        library = value.sum(tuple(range(-n, 0)), keepdim=True)
        self.observe(library)
        return _sum_rightmost(self.family(library.log()).log_prob(value), n)


class DocumentMultinomial(Multinomial):
    """Mult(x; N, softmax(logits)) over count vectors (the last axis): torch's Multinomial, whose ``log_prob``
    scores each x at its own N = Σ_i x_i (log N! - Σ_i log x_i! + Σ_i x_i log p_i), which it tells ``observe``;
    mean and variance are at ``length`` (a tensor broadcasting against the batch), samples at one whole length."""

    def __init__(self, logits: torch.Tensor, length: torch.Tensor, observe: Callable[[torch.Tensor], None]):
        super().__init__(logits=logits, validate_args=False)
        self.total_count, self.observe = length, observe

    def log_prob(self, value):
        self.observe(value.sum(-1, keepdim=True))
        return super().log_prob(value)

    def sample(self, sample_shape=torch.Size()):
        return Multinomial(int(self.total_count.round()), logits=self.logits, validate_args=False).sample(sample_shape)


class CountLikelihood(Likelihood):
    """Base of the likelihoods over counts 0, 1, 2, ... (at most ``trials`` where it is set)."""

    trials: int | None = None

    def check_support(self, x: torch.Tensor, name: str) -> None:
        if not x.numel():
            return
        counts = "0, 1, 2, ..." if self.trials is None else f"0, 1, ..., {self.trials}"
        what = f"the {self.registered_name} likelihood needs counts {counts}"
        if x.min() < 0:
            raise DataError(f"{name} has negative values (down to {x.min().item():.3g}) but {what}; "
                            "choose --likelihood gaussian or laplace")
        fractional = x[x != x.round()]
        if fractional.numel():
            raise DataError(f"{name} has non-integer values (e.g. {fractional[0].item():.6g}) but {what}; store the "
                            "counts as integers (an .npz of uint8 is read as bytes/255: save int32 or int64)")
        if self.trials is not None and x.max() > self.trials:
            raise DataError(f"{name} has counts up to {x.max().item():.0f} but --likelihood-trials is {self.trials}; "
                            f"set --likelihood-trials to at least {x.max().item():.0f}")


class _MeanCountLikelihood(CountLikelihood):
    """A count family with mean μ from the first head by ``library_size`` (see the module docstring), and
    ``extra_heads`` more heads passed on to ``family(log_mean, *heads)``, the per-feature distribution."""

    options = ("library_size",)
    extra_heads = 0

    def __init__(self, x_shape, library_size: str = "observed"):
        super().__init__(x_shape)
        self.library_size = _choice("library_size", library_size, LIBRARY_SIZES)
        self.register_buffer("mean_library", torch.ones(()))  # l̄ of the training data (1 before any)
        self.register_buffer("libraries_seen", torch.zeros((), dtype=torch.long))

    @property
    def n_heads(self) -> int:
        return 1 + self.extra_heads

    def forward(self, h: torch.Tensor, library: torch.Tensor | float | None = None,
                s: torch.Tensor | None = None) -> Distribution:
        """p(x|z) from the decoder's output h (..., n_heads · C, ...). Under ``observed``, ``library`` is the
        library size (a number, or one per datapoint of h's batch shape) of the mean, samples and
        ``base_dist``, by default the training mean; log_prob(x) always takes x's own. ``s``: the batch of each
        datapoint, for the parameters per batch (``batch_heads``)."""
        head, *heads = h.chunk(self.n_heads, dim=-len(self.x_shape))
        heads += self.batch_heads(s)
        if self.library_size == "none":
            return self._event(self.family(head, *heads))
        log_proportions = head - head.logsumexp(tuple(range(-len(self.x_shape), 0)), keepdim=True)
        library = self.mean_library if library is None else torch.as_tensor(library, dtype=h.dtype, device=h.device)
        log_library = library.log().reshape(*library.shape, *(1,) * len(self.x_shape))
        return ObservedLibrary(lambda log_l: self.family(log_l + log_proportions, *heads), log_library,
                               len(self.x_shape), self._observe)

    def batch_heads(self, s: torch.Tensor | None) -> list[torch.Tensor]:
        """Parameters of each datapoint's batch s, passed to ``family`` after the decoder's heads (none here)."""
        return []

    def _observe(self, library: torch.Tensor) -> None:
        """Fold the library sizes of a training batch into the running mean l̄ (training mode only)."""
        if self.training:
            with torch.no_grad():
                self.libraries_seen += library.numel()
                self.mean_library += (library.sum() - library.numel() * self.mean_library) / self.libraries_seen

    def check_support(self, x: torch.Tensor, name: str) -> None:
        super().check_support(x, name)
        if self.library_size == "observed" and x.numel():
            empty = int((x.flatten(1).sum(1) == 0).sum())
            if empty:
                raise DataError(f"{name} has {empty} datapoints without any count, whose library size 0 "
                                "--library-size observed cannot scale to; remove them or use --library-size none")


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(_MeanCountLikelihood):
    """Poisson(x; μ) per feature: variance = mean."""

    def family(self, log_mean, *heads):
        return LogRatePoisson(log_mean, validate_args=False)


class _Dispersed(_MeanCountLikelihood):
    """Negative binomials in scVI's parameterisation, mean μ and inverse dispersion θ (Var = μ + μ²/θ), as
    torch's NegativeBinomial(total_count = θ, logits = log μ - log θ). ``dispersion``: θ learned per feature
    (``feature``, scVI's 'gene'), one learned θ (``shared``), a last decoder head log θ per datapoint and
    feature (``predicted``, scVI's 'gene-cell'), or θ learned per feature and batch s of the ``n_batches``
    (``feature-batch``, scVI's 'gene-batch': log θ_s is row s of a table, looked up by each datapoint's s);
    a learned log θ starts at 0."""

    options = ("library_size", "likelihood_dispersion")
    batch_parameters = True

    def __init__(self, x_shape, library_size: str = "observed", dispersion: str = "feature", n_batches: int = 0):
        super().__init__(x_shape, library_size)
        self.dispersion = _choice("likelihood_dispersion", dispersion, DISPERSIONS)
        if dispersion == "feature-batch" and not n_batches:
            raise ConfigError("--likelihood-dispersion feature-batch learns θ per gene and batch, and the data have "
                              "no batches: add --batch-key (h5ad data), or choose feature")
        if dispersion != "predicted":
            shape = {"feature": self.x_shape, "shared": (), "feature-batch": (n_batches, *self.x_shape)}[dispersion]
            self.log_theta = nn.Parameter(torch.zeros(shape))

    @property
    def n_heads(self) -> int:
        return super().n_heads + (self.dispersion == "predicted")

    def batch_heads(self, s):
        if self.dispersion != "feature-batch":
            return []
        if s is None:
            raise ValueError("a dispersion per batch needs the batch s of each datapoint")
        return [self.log_theta[s]]

    def _log_theta(self, heads) -> torch.Tensor:
        return heads[-1] if self.dispersion in ("predicted", "feature-batch") else self.log_theta


@LIKELIHOODS.register("negative_binomial")
class NegativeBinomialLikelihood(_Dispersed):
    """NB(x; μ, θ) per feature: overdispersed counts, Var = μ + μ²/θ."""

    def family(self, log_mean, *heads):
        log_theta = self._log_theta(heads)
        return NegativeBinomial(log_theta.exp(), logits=log_mean - log_theta, validate_args=False)


@LIKELIHOODS.register("zero_inflated_negative_binomial")
class ZeroInflatedNegativeBinomialLikelihood(_Dispersed):
    """ZINB(x; π, μ, θ) per feature, the zero-inflation logit π a second decoder head (per datapoint and
    feature): heads [log μ (or proportions), logit π, (log θ)]."""

    extra_heads = 1

    def family(self, log_mean, gate_logits, *heads):
        log_theta = self._log_theta(heads)
        return ZeroInflatedNegativeBinomial(log_theta.exp(), log_mean - log_theta, gate_logits, validate_args=False)


@LIKELIHOODS.register("binomial")
class BinomialLikelihood(CountLikelihood):
    """Binomial(x; N, sigmoid(h)) per feature with a known number of trials N (``--likelihood-trials``):
    8-bit images as counts out of 255, or successes out of N reads."""

    options = ("likelihood_trials",)

    def __init__(self, x_shape, trials: int | None = None):
        super().__init__(x_shape)
        if trials is None or isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"--likelihood binomial needs --likelihood-trials N, a positive whole number of trials "
                              f"(e.g. 255 for 8-bit images as counts), got {trials!r}")
        self.trials = trials

    def forward(self, h):
        return self._event(Binomial(self.trials, logits=h, validate_args=False))


@LIKELIHOODS.register("multinomial")
class MultinomialLikelihood(_MeanCountLikelihood):
    """Mult(x; N = Σ_i x_i, softmax(h)): a bag of words whose N words are drawn from the decoder's distribution over
    the vocabulary (ProdLDA's likelihood, Srivastava & Sutton 2017), log p(x|z) = log N! - Σ_i log x_i! +
    Σ_i x_i log softmax(h)_i. The mean and samples are at the training data's mean document length, kept as the
    other count likelihoods keep their mean library size. Datapoints are vectors (documents × vocabulary)."""

    options = ()

    def __init__(self, x_shape):
        if len(x_shape) != 1:
            raise ConfigError(f"--likelihood multinomial needs datapoints that are vectors of counts (a bag of words: "
                              f"documents × vocabulary), got datapoints of shape {tuple(x_shape)}; choose poisson")
        super().__init__(x_shape, "observed")

    def forward(self, h: torch.Tensor, library: torch.Tensor | float | None = None) -> Distribution:
        """p(x|z) from the decoder's output h (..., V); ``library`` the length of the mean and samples, by default
        the training mean (log_prob always scores x at its own length)."""
        length = self.mean_library if library is None else torch.as_tensor(library, dtype=h.dtype, device=h.device)
        return DocumentMultinomial(h, length.reshape(*length.shape, 1), self._observe)

    def check_support(self, x: torch.Tensor, name: str) -> None:
        CountLikelihood.check_support(self, x, name)  # an empty document is scored, p = 1: nothing to refuse
