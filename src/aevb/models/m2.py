"""M2 (Kingma, Rezende, Mohamed & Welling 2014): a class y beside the latent z.

Generative model p(y) p(z) p(x|y,z) with p(y) = Cat(1/K), p(z) the configured prior; inference
q(z|x,y) from an encoder conditioned on the one-hot y, and a classifier q(y|x), which is the
predictor. The bounds (Kingma et al. 2014, eqs. 6 and 7):

    labelled    log p(x,y) ≥ L(x,y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]
    unlabelled  log p(x)   ≥ U(x)   = Σ_y q(y|x) L(x,y) + H(q(y|x))

U enumerates the K classes in one batched pass: the encoder's features of x are computed once
and the K one-hot codes broadcast against them (see ``nets.Encoder``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution

from .. import nets
from ..distributions import LIKELIHOODS, latent_families
from ..errors import DataError
from ..objectives import ELBOTerms, Estimator, log_weights
from . import MODELS
from .base import ClassLatent, LatentModel


class _GivenClass:
    """The VAE interface (encode, decode, prior) of M2 with the class fixed to a one-hot c of
    shape (N, K), or (K, 1, K) to enumerate every class: the SGVB estimators then apply as they are."""

    def __init__(self, model: "M2", c: torch.Tensor):
        self.model, self.c = model, c

    def encode(self, x):
        return self.model.posterior(self.model.encoder(x, self.c))

    def decode(self, z):
        return self.model.decode(z, self.c)

    def prior(self):
        return self.model.prior()

    def has_analytic_kl(self):
        return self.model.has_analytic_kl()


class M2(LatentModel, ClassLatent):
    """p(y) p(z) p(x|y,z), q(z|x,y), q(y|x); ``elbo(x)`` is U(x), ``labelled_elbo(x, y)`` is L(x,y),
    ``classify(x)`` is q(y|x)."""

    default_alpha = 0.1  # Kingma et al. 2014: α = 0.1·N, i.e. 0.1 per datapoint

    def __init__(self, x_shape, n_classes, latent_dim, classifier, encoder, decoder, posterior, prior, likelihood):
        super().__init__()
        self.x_shape, self.n_classes, self.latent_dim = tuple(x_shape), n_classes, latent_dim
        self.classifier, self.encoder, self.decoder = classifier, encoder, decoder
        self.posterior, self.prior_net, self.likelihood = posterior, prior, likelihood

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.n_classes).to(next(self.parameters()).dtype)

    def all_classes(self) -> torch.Tensor:
        """The K one-hot codes shaped (K, 1, K), to broadcast against a batch."""
        p = next(self.parameters())
        return torch.eye(self.n_classes, device=p.device, dtype=p.dtype).unsqueeze(1)

    def classify(self, x: torch.Tensor) -> Categorical:
        """q(y|x), batch shape (N,)."""
        return Categorical(logits=self.classifier(x))

    def label_prior(self) -> Categorical:
        p = next(self.parameters())
        return Categorical(logits=torch.zeros(self.n_classes, device=p.device, dtype=p.dtype))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z|x,y); without y, at the classifier's most probable class."""
        y = self.classify(x).probs.argmax(-1) if y is None else y
        return self.posterior(self.encoder(x, self.one_hot(y)))

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> Distribution:
        """p(x|y,z) for z of shape (..., d) and the one-hot class c broadcastable to (..., K)."""
        c = c.expand(*z.shape[:-1], self.n_classes)
        return self.likelihood(self.decoder(torch.cat([z, c], -1)))

    def labelled_elbo(self, x, y, estimator: Estimator = Estimator()) -> ELBOTerms:
        """L(x,y) per datapoint = E[log p(x|y,z)] - KL(q(z|x,y) ‖ p(z)) + log p(y): ``kl_y`` is
        -log p(y), the KL of the point mass at the observed y from p(y), not weighted by β_y."""
        t = estimator(_GivenClass(self, self.one_hot(y)), x)
        log_py = self.label_prior().log_prob(y)
        return ELBOTerms(t.elbo + log_py, t.log_px_z, t.kl, t.objective + log_py, -log_py)

    def elbo(self, x, estimator: Estimator = Estimator()) -> ELBOTerms:
        """U(x) per datapoint, the K classes enumerated in one pass. Written as a reconstruction
        term minus the KL of the joint posterior q(y,z|x) from p(y,z):
        U = Σ_y q(y|x) E[log p(x|y,z)] - Σ_y q(y|x) KL(q(z|x,y) ‖ p(z)) - KL(q(y|x) ‖ p(y));
        in the objective β weights the KL of z and ``estimator.beta_y`` (default β) the KL of y:
        β > β_y makes information dearer in z than in y, pushing the class into y."""
        t = estimator(_GivenClass(self, self.all_classes()), x)  # shape (K, N)
        q_y = self.classify(x)
        weights = q_y.probs.T
        kl_y = (weights * (q_y.logits.T - self.label_prior().logits.unsqueeze(-1))).sum(0)
        return ELBOTerms((weights * t.elbo).sum(0) - kl_y, (weights * t.log_px_z).sum(0), (weights * t.kl).sum(0),
                         (weights * t.objective).sum(0) - estimator.class_beta * kl_y, kl_y)

    def log_weights(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Stratified importance weights of p(x) = Σ_y p(y) p(x|y): for each of the ``samples``
        draws, one z_y ~ q(z|x,y) per class and log w = log Σ_y p(y) p(x|y,z_y) p(z_y) / q(z_y|x,y),
        so E[w] = p(x). Shape (samples, N); K decoder passes per draw."""
        lw = log_weights(_GivenClass(self, self.all_classes()), x, samples)  # (samples, K, N)
        return torch.logsumexp(lw + self.label_prior().logits.view(1, -1, 1), 1)

    def class_log_joint(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """log p(x, y) for every class, shape (N, K): log p(y) + log (1/S) Σ_s p(x|y,z_s) p(z_s) / q(z_s|x,y)
        with z_s ~ q(z|x,y), an importance-sampled estimate (consistent, biased low for finite S).
        Its argmax over y is the generative model's own classification of x."""
        lw = log_weights(_GivenClass(self, self.all_classes()), x, samples)  # (samples, K, N)
        return (torch.logsumexp(lw, 0) - math.log(samples) + self.label_prior().logits.unsqueeze(-1)).T

    def class_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log q(y|x), the classification term of Kingma et al. 2014, eq. 9."""
        return self.classify(x).log_prob(y)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """n draws z ~ p(z) with classes y (uniform draws where None) decoded to the mean of p(x|y,z)."""
        p = next(self.parameters())
        y = torch.randint(self.n_classes, (n,), device=p.device) if y is None else y
        return self.decode(self.prior().sample((n,)), self.one_hot(y)).mean

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Posterior means E_q[z|x] = Σ_y q(y|x) E_q[z|x,y], shape (N, latent_dim)."""
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            means = self.posterior(self.encoder(xb, self.all_classes())).mean  # (K, N, d)
            out.append((self.classify(xb).probs.T.unsqueeze(-1) * means).sum(0))
        return torch.cat(out)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|ŷ,z) at z = E_q[z|x,ŷ], ŷ the most probable class."""
        y = self.classify(x).probs.argmax(-1)
        return self.decode(self.encode(x, y).mean, self.one_hot(y)).mean

    @torch.no_grad()
    def analogies(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Each input's style z = E_q[z|x,y] decoded with every class: shape (N, K, *x_shape)
        (Kingma et al. 2014, Fig. 1)."""
        y = self.classify(x).probs.argmax(-1) if y is None else y
        z = self.encode(x, y).mean.unsqueeze(1).expand(-1, self.n_classes, -1)
        return self.decode(z, self.all_classes().squeeze(1)).mean


@MODELS.register("m2")
def build_m2(cfg, x_shape, n_classes=None) -> M2:
    """M2 from a ModelConfig: the classifier q(y|x) has the encoder's architecture."""
    if not n_classes or n_classes < 2:
        raise DataError("--model m2 needs labelled data with at least two classes; this dataset has "
                        f"{'no labels' if not n_classes else 'one class'}")
    likelihood = LIKELIHOODS[cfg.likelihood].from_config(cfg, x_shape)
    posterior, prior = latent_families(cfg)
    out_shape = (likelihood.n_heads * x_shape[0], *x_shape[1:])
    kw = dict(hidden=cfg.hidden, activation=cfg.activation, conv_channels=cfg.conv_channels)
    encoder, decoder = nets.NETS[cfg.net](x_shape, posterior.n_params, cfg.latent_dim + n_classes, out_shape,
                                          cond_dim=n_classes, **kw)
    classifier, _ = nets.NETS[cfg.net](x_shape, n_classes, 1, (1,), **kw)
    model = M2(x_shape, n_classes, cfg.latent_dim, classifier, encoder, decoder, posterior, prior, likelihood)
    if cfg.init_std is not None:
        nets.init_normal_(nn.ModuleList([classifier, encoder, decoder]), cfg.init_std)
    return model

