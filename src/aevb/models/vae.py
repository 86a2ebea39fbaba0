"""The variational autoencoder: q(z|x) from an encoder net, a prior p(z), p(x|z) from a decoder net.

The model only builds distributions; estimators (aevb.objectives) turn them into bounds. Trained with a
batch s of each datapoint (``n_batches`` > 0: single-cell data with ``--batch-key``), it is scVI's model
p(z) p(x|z, s) (Lopez et al. 2018): s is observed, the encoder does not see it (scVI's default), the
decoder does, and ``given(s)`` is the model for a minibatch of known batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from .. import nets
from ..distributions import LIKELIHOODS, latent_families
from ..errors import ConfigError
from ..objectives import Estimator, log_weights
from . import MODELS
from .base import DecodesLatent, LatentModel


class VAE(LatentModel, DecodesLatent):
    """encode(x) = q(z|x), prior() = p(z), decode(z) = p(x|z), all torch Distributions."""

    def __init__(self, x_shape, latent_dim, encoder, decoder, posterior, prior, likelihood, n_batches: int = 0):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = encoder, decoder
        self.posterior, self.prior_net, self.likelihood = posterior, prior, likelihood
        self.n_batches = n_batches

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) with batch shape (N,) and event shape (latent_dim,)."""
        return self.posterior(self.encoder(x))

    def decode(self, z: torch.Tensor, s: torch.Tensor | None = None) -> Distribution:
        """p(x|z) with batch shape z.shape[:-1] and event shape x_shape; for a model of batches, p(x|z, s)
        given the batch s of each datapoint (int64, broadcasting against z.shape[:-1]): the one-hot s joins z
        at the decoder's input, as scVI injects its covariates into the first layer (into every hidden
        layer by default there: the same with one hidden layer, scVI's default), and picks the likelihood's
        parameters of that batch where it has them (``batch_parameters``: a dispersion per gene and batch)."""
        if not self.n_batches:
            return self.likelihood(self.decoder(z))
        if s is None:
            raise ConfigError("this model decodes given each datapoint's batch s (it was trained with --batch-key): "
                              "pass the batches, model.given(s).decode(z); sampling and figures of p(x|z) alone "
                              "do not apply")
        c = F.one_hot(s, self.n_batches).to(z.dtype).expand(*z.shape[:-1], self.n_batches)
        h = self.decoder(torch.cat([z, c], -1))
        return self.likelihood(h, s=s) if self.likelihood.batch_parameters else self.likelihood(h)

    def given(self, s: torch.Tensor) -> "GivenBatch":
        """The model for datapoints of known batches s (shape (N,)): what the estimators take."""
        return GivenBatch(self, s)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n draws z ~ p(z) decoded to the mean of p(x|z): shape (n, *x_shape)."""
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) at the posterior mean z = E_q[z|x]."""
        return self.decode(self.encode(x).mean).mean


class GivenBatch:
    """A VAE with the batch s of each datapoint fixed: encode, decode (p(x|z, s)) and prior, the interface the
    estimators take, so that they apply unchanged; ``elbo`` and ``log_weights`` through them."""

    def __init__(self, model: VAE, s: torch.Tensor):
        self.model, self.s = model, s

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, z):
        return self.model.decode(z, self.s)

    def prior(self):
        return self.model.prior()

    def has_analytic_kl(self):
        return self.model.has_analytic_kl()

    def elbo(self, x, estimator: Estimator = Estimator()):
        return estimator(self, x)

    def log_weights(self, x, samples: int):
        return log_weights(self, x, samples)


@MODELS.register("vae")
def build_vae(cfg, x_shape, n_classes=None, n_batches: int = 0) -> VAE:
    """A VAE from a ModelConfig: the net, posterior family, prior and likelihood looked up by name; with
    ``n_batches``, its decoder takes the one-hot batch beside z."""
    likelihood = LIKELIHOODS[cfg.likelihood].from_config(cfg, x_shape, n_batches)
    posterior, prior = latent_families(cfg)
    out_shape = (likelihood.n_heads * x_shape[0], *x_shape[1:])
    encoder, decoder = nets.NETS[cfg.net](
        x_shape, posterior.n_params, cfg.latent_dim + n_batches, out_shape,  # the decoder's input: z and one-hot s
        hidden=cfg.hidden, activation=cfg.activation, conv_channels=cfg.conv_channels,
    )
    model = VAE(x_shape, cfg.latent_dim, encoder, decoder, posterior, prior, likelihood, n_batches)
    if cfg.init_std is not None:
        nets.init_normal_(nn.ModuleList([encoder, decoder]), cfg.init_std)
    return model


build_vae.takes_batches = True
