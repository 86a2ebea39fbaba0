"""The variational autoencoder: q(z|x) from an encoder net, a prior p(z), p(x|z) from a decoder net.

The model only builds distributions; estimators (aevb.objectives) turn them into bounds.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from .. import nets
from ..distributions import LIKELIHOODS, latent_families
from . import MODELS
from .base import DecodesLatent, LatentModel


class VAE(LatentModel, DecodesLatent):
    """encode(x) = q(z|x), prior() = p(z), decode(z) = p(x|z), all torch Distributions."""

    def __init__(self, x_shape, latent_dim, encoder, decoder, posterior, prior, likelihood):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = encoder, decoder
        self.posterior, self.prior_net, self.likelihood = posterior, prior, likelihood

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) with batch shape (N,) and event shape (latent_dim,)."""
        return self.posterior(self.encoder(x))

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) with batch shape z.shape[:-1] and event shape x_shape."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n draws z ~ p(z) decoded to the mean of p(x|z): shape (n, *x_shape)."""
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) at the posterior mean z = E_q[z|x]."""
        return self.decode(self.encode(x).mean).mean


@MODELS.register("vae")
def build_vae(cfg, x_shape, n_classes=None) -> VAE:
    """A VAE from a ModelConfig: the net, posterior family, prior and likelihood looked up by name."""
    likelihood = LIKELIHOODS[cfg.likelihood].from_config(cfg, x_shape)
    posterior, prior = latent_families(cfg)
    out_shape = (likelihood.n_heads * x_shape[0], *x_shape[1:])
    encoder, decoder = nets.NETS[cfg.net](
        x_shape, posterior.n_params, cfg.latent_dim, out_shape,
        hidden=cfg.hidden, activation=cfg.activation, conv_channels=cfg.conv_channels,
    )
    model = VAE(x_shape, cfg.latent_dim, encoder, decoder, posterior, prior, likelihood)
    if cfg.init_std is not None:
        nets.init_normal_(nn.ModuleList([encoder, decoder]), cfg.init_std)
    return model
