"""Two stochastic layers (Burda et al. 2015, section 5): p(z2) p(z1|z2) p(x|z1) with the inference
model q(z1|x) q(z2|z1), every stochastic layer a diagonal Gaussian whose standard deviation is the
exponential of a linear head (``normal``: h = [μ, log σ²]) on tanh MLPs; the paper's architecture is
x → 100 → 100 → z1 (100) → 50 → 50 → z2 (50) (``--hidden 100 100 --latent-dim 100 --hidden2 50 50
--latent-dim2 50 --activation tanh``).

The two layers travel as one latent z = [z1, z2] (latent_dim = d1 + d2) whose q(z|x) and p(z) are
``TwoStage`` distributions: rsample draws the stages in order, log_prob sums them. So every
estimator of aevb.objectives (A, IWAE, the IS log-likelihood: log p(x|z1) + log p(z) − log q(z|x)
per sample) works on this model unchanged. No closed-form KL exists for the pair, so ``auto`` uses
estimator A, as the paper does.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.distributions import Distribution, constraints

from .. import nets
from ..distributions import LIKELIHOODS, POSTERIORS
from ..distributions.priors import StandardNormal
from ..errors import ConfigError
from . import MODELS
from .base import DecodesLatent, LatentModel

EMBED_SAMPLES = 64  # z1 draws per datapoint behind E_q[z2|x] in ``embed``


class TwoStage(Distribution):
    """A distribution over z = [z1, z2] (concatenated on the last axis) drawn in two stages: ``first``,
    then ``then(first's draw)``. ``first_is_z1``: q(z1|x) q(z2|z1); otherwise the first stage is z2,
    as in the prior p(z2) p(z1|z2). log_prob(z) = log first(a) + log then(a)(b)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, first: Distribution, then: Callable[[torch.Tensor], Distribution], sizes: tuple[int, int],
                 first_is_z1: bool = True):
        self.first, self.then, self.sizes, self.first_is_z1 = first, then, sizes, first_is_z1
        super().__init__(first.batch_shape, torch.Size([sum(sizes)]), validate_args=False)

    def _stages(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = z.split(self.sizes, -1)
        return (z1, z2) if self.first_is_z1 else (z2, z1)

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat((a, b) if self.first_is_z1 else (b, a), -1)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        a = self.first.rsample(sample_shape)
        return self._join(a, self.then(a).rsample())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self._stages(z)
        return self.first.log_prob(a) + self.then(a).log_prob(b)


class Hierarchical(LatentModel, DecodesLatent):
    """q(z1|x) q(z2|z1) and p(z2) p(z1|z2) p(x|z1); z = [z1, z2], ``sizes`` = (d1, d2)."""

    def __init__(self, x_shape, sizes: tuple[int, int], encoder, encoder2, decoder2, decoder, gaussian1, gaussian2,
                 likelihood):
        super().__init__()
        self.x_shape, self.sizes = tuple(x_shape), tuple(sizes)
        self.latent_dim = sum(sizes)
        self.encoder, self.encoder2 = encoder, encoder2  # x -> q(z1|x), z1 -> q(z2|z1)
        self.decoder2, self.decoder = decoder2, decoder  # z2 -> p(z1|z2), z1 -> p(x|z1)
        self.gaussian1, self.gaussian2 = gaussian1, gaussian2
        self.likelihood, self.prior_net = likelihood, StandardNormal(sizes[1])

    @property
    def latent_layers(self) -> tuple[int, ...]:
        return self.sizes

    def encode(self, x: torch.Tensor) -> TwoStage:
        """q(z|x) = q(z1|x) q(z2|z1), batch (N,), event (d1 + d2,)."""
        return TwoStage(self.gaussian1(self.encoder(x)), lambda z1: self.gaussian2(self.encoder2(z1)), self.sizes)

    def prior(self) -> TwoStage:
        """p(z) = p(z2) p(z1|z2), p(z2) = N(0, I)."""
        return TwoStage(self.prior_net(), lambda z2: self.gaussian1(self.decoder2(z2)), self.sizes,
                        first_is_z1=False)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z1), z = [z1, z2] of shape (..., d1 + d2)."""
        return self.likelihood(self.decoder(z[..., :self.sizes[0]]))

    def theta_networks(self) -> list[torch.nn.Module]:
        return [self.decoder, self.decoder2]

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """[E_q[z1|x], E_q[z2|x]], shape (N, d1 + d2): E_q[z2|x] = E_{q(z1|x)}[E[z2|z1]] by EMBED_SAMPLES
        draws of z1 (the activity of the second layer needs it, Burda et al. section 5.2)."""
        out = []
        for i in range(0, len(x), batch_size):
            q1 = self.gaussian1(self.encoder(x[i:i + batch_size]))
            z2 = self.gaussian2(self.encoder2(q1.sample((EMBED_SAMPLES,)))).mean.mean(0)
            out.append(torch.cat([q1.mean, z2], -1))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z1) at z1 = E_q[z1|x]."""
        return self.likelihood(self.decoder(self.gaussian1(self.encoder(x)).mean)).mean


@MODELS.register("hierarchical")
def build_hierarchical(cfg, x_shape, n_classes=None) -> Hierarchical:
    """Burda et al.'s two-layer model from a ModelConfig: ``hidden``/``latent_dim`` for x ↔ z1,
    ``hidden2``/``latent_dim2`` for z1 ↔ z2, diagonal Gaussian layers (``--posterior normal``)."""
    if cfg.posterior != "normal" or cfg.prior != "standard_normal" or cfg.net != "mlp":
        raise ConfigError("--model hierarchical has diagonal Gaussian layers on MLPs: use it with --posterior normal, "
                          "--prior standard_normal and --net mlp (the defaults)")
    likelihood = LIKELIHOODS[cfg.likelihood].from_config(cfg, x_shape)
    d1, d2 = cfg.latent_dim, cfg.latent_dim2
    gaussian1, gaussian2 = POSTERIORS["normal"](d1), POSTERIORS["normal"](d2)
    out_shape = (likelihood.n_heads * x_shape[0], *x_shape[1:])
    encoder, decoder = nets.mlp_nets(x_shape, gaussian1.n_params, d1, out_shape, hidden=cfg.hidden,
                                     activation=cfg.activation)
    # z1 -> q(z2|z1) and z2 -> p(z1|z2) act on draws with leading sample dimensions: Decoder bodies
    encoder2 = nets.Decoder(nets.mlp([d1, *cfg.hidden2, gaussian2.n_params], cfg.activation), (gaussian2.n_params,))
    decoder2 = nets.Decoder(nets.mlp([d2, *reversed(cfg.hidden2), gaussian1.n_params], cfg.activation),
                            (gaussian1.n_params,))
    model = Hierarchical(x_shape, (d1, d2), encoder, encoder2, decoder2, decoder, gaussian1, gaussian2, likelihood)
    if cfg.init_std is not None:
        nets.init_normal_(torch.nn.ModuleList([encoder, encoder2, decoder2, decoder]), cfg.init_std)
    return model
