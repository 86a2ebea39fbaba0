"""Likelihoods p(x|z): each maps a decoder output to a distribution whose event is one datapoint.

The decoder emits ``n_heads`` blocks along the channel axis (the first axis of the datapoint's
shape): one block (logits or means), or two where the scale is predicted.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import ContinuousBernoulli, Bernoulli, Distribution, Independent, Laplace, Normal

from ..config import ModelConfig
from ..errors import ConfigError, DataError
from ..registry import Registry

LIKELIHOODS: Registry[type["Likelihood"]] = Registry("likelihood")
SCALE_MODES = ("fixed", "shared", "per_pixel", "predicted")


# the ModelConfig fields that configure a likelihood; each likelihood names those it reads in ``options``
OPTIONS = ("likelihood_scale", "likelihood_scale_init", "library_size", "likelihood_dispersion", "likelihood_trials")


def _listed(names: list[str]) -> str:
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _takers(option: str) -> list[str]:
    """The registered likelihoods that read ``option``."""
    return [name for name in LIKELIHOODS if option in LIKELIHOODS[name].options]


class Likelihood(nn.Module):
    """Base: ``forward(h)`` gives p(x|z) with event shape ``x_shape``; ``check_support`` rejects data
    the likelihood cannot score. ``options`` are the ModelConfig fields passed to the constructor
    after ``x_shape``, in order."""

    support: tuple[float, float] | None = None
    options: tuple[str, ...] = ()
    batch_parameters = False  # has parameters per batch of a covariate s: built with n_batches, forward(h, s=s)

    def __init__(self, x_shape: tuple[int, ...]):
        super().__init__()
        self.x_shape = tuple(x_shape)

    @classmethod
    def from_config(cls, cfg, x_shape, n_batches: int = 0) -> "Likelihood":
        """The likelihood with its ``options`` read from cfg (and ``n_batches``, the batches of the data, where it
        has ``batch_parameters``); a ConfigError where cfg sets an option that this likelihood does not take
        (it would be silently ignored)."""
        defaults = ModelConfig()
        for option in OPTIONS:
            if option not in cls.options and getattr(cfg, option) != getattr(defaults, option):
                takers = _takers(option)
                flags = [f"--{o.replace('_', '-')}" for o in OPTIONS if _takers(o) == takers]
                raise ConfigError(f"{_listed(flags)} appl{'y' if len(flags) > 1 else 'ies'} to {_listed(takers)}, "
                                  f"not {cls.registered_name}")
        return cls(x_shape, *(getattr(cfg, option) for option in cls.options),
                   **({"n_batches": n_batches} if cls.batch_parameters else {}))

    @property
    def n_heads(self) -> int:
        return 1

    def check_support(self, x: torch.Tensor, name: str) -> None:
        if self.support is None:
            return
        lo, hi = self.support
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise DataError(
                f"{name} has values in [{x.min().item():.3g}, {x.max().item():.3g}] but the "
                f"{self.registered_name} likelihood needs [{lo}, {hi}]; rescale the data or choose "
                "--likelihood gaussian"
            )

    def _event(self, base: Distribution) -> Distribution:
        return Independent(base, len(self.x_shape))


class _LogitLikelihood(Likelihood):
    family: type[Distribution]
    support = (0.0, 1.0)

    def forward(self, h):
        return self._event(self.family(logits=h, validate_args=False))


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(_LogitLikelihood):
    """Bernoulli(sigmoid(h)) per pixel. On greyscale x in [0, 1] log_prob is the negative binary
    cross-entropy (the loss of pytorch/examples), not a normalised density."""

    family = Bernoulli


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(_LogitLikelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1]."""

    family = ContinuousBernoulli


class _LocationScaleLikelihood(Likelihood):
    """Mean from the decoder (through ``location``); scale ``fixed``, ``shared`` (one learned scalar),
    ``per_pixel`` (a learned map of x's shape) or ``predicted`` (a second decoder head, h = [mean, log scale])."""

    family: type[Distribution]
    options = ("likelihood_scale", "likelihood_scale_init")

    def __init__(self, x_shape, scale: str = "shared", scale_init: float = 1.0):
        super().__init__(x_shape)
        if scale not in SCALE_MODES:
            raise ConfigError(f"unknown likelihood_scale {scale!r}; choose one of: {', '.join(SCALE_MODES)}")
        if not scale_init > 0:
            raise ConfigError(f"likelihood_scale_init must be positive, got {scale_init}")
        self.scale_mode = scale
        log_scale = torch.full(self.x_shape if scale == "per_pixel" else (), math.log(scale_init))
        if scale in ("shared", "per_pixel"):
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def n_heads(self):
        return 2 if self.scale_mode == "predicted" else 1

    def forward(self, h):
        if self.scale_mode == "predicted":
            mean, log_scale = h.chunk(2, dim=-len(self.x_shape))
        else:
            mean, log_scale = h, self.log_scale
        return self._event(self.family(self.location(mean), log_scale.exp(), validate_args=False))

    def location(self, h: torch.Tensor) -> torch.Tensor:
        """The mean from the decoder's mean head: the head itself."""
        return h


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScaleLikelihood):
    """N(x; f(z), σ²) per pixel."""

    family = Normal


@LIKELIHOODS.register("sigmoid_gaussian")
class SigmoidGaussianLikelihood(GaussianLikelihood):
    """N(x; sigmoid(f(z)), σ²) per pixel: a Gaussian whose mean is constrained to (0, 1), the Frey Face
    decoder of Kingma & Welling 2013 (section 5: the Gaussian encoder's form, the means through a sigmoid;
    with ``--likelihood-scale predicted`` the log variance is a second head, as the encoder's is)."""

    def location(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScaleLikelihood):
    """Laplace(x; f(z), b) per pixel: an L1 reconstruction error with a learned scale."""

    family = Laplace
