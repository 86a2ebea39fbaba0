"""The prediction-constrained VAE (Hughes, Hope, Weiner et al. 2018, "Semi-supervised
prediction-constrained topic models"; Hope et al. for VAEs): a VAE whose latent code feeds a
classifier p(y|z) = softmax(W z + b). Training minimises

    -ELBO(x) over all images  +  λ · E_q(z|x)[-log p(y|z)] over the labelled ones,

so the label shapes the latent space through the encoder but is never an input to the encoder or
the decoder (unlike M2). λ is the trainer's ``alpha``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

from ..errors import DataError
from ..objectives import ELBOTerms, Estimator
from . import MODELS
from .base import Classifier
from .vae import VAE, build_vae


class PCVAE(VAE, Classifier):
    """A VAE plus ``head``: logits of p(y|z). ``labelled_elbo`` is the plain ELBO (the label does
    not enter the generative model); ``class_log_prob`` is the prediction term."""

    default_alpha = 1.0  # λ: one nat of cross-entropy weighs as one nat of the per-datapoint ELBO

    def __init__(self, vae: VAE, n_classes: int):
        super().__init__(vae.x_shape, vae.latent_dim, vae.encoder, vae.decoder, vae.posterior, vae.prior_net,
                         vae.likelihood)
        self.n_classes = n_classes
        self.head = nn.Linear(vae.latent_dim, n_classes)

    def labelled_elbo(self, x, y, estimator: Estimator = Estimator()) -> ELBOTerms:
        """The plain ELBO of x: y is not a variable of the generative model."""
        return self.elbo(x, estimator)

    def class_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of E_q(z|x)[log p(y|z)], pathwise through z = g(ε, x)."""
        return Categorical(logits=self.head(self.encode(x).rsample())).log_prob(y)

    def classify(self, x: torch.Tensor) -> Categorical:
        """p(y|z) at the posterior mean z = E_q[z|x]."""
        return Categorical(logits=self.head(self.encode(x).mean))


@MODELS.register("pcvae")
def build_pcvae(cfg, x_shape, n_classes=None) -> PCVAE:
    if not n_classes or n_classes < 2:
        raise DataError("--model pcvae needs labelled data with at least two classes; this dataset has "
                        f"{'no labels' if not n_classes else 'one class'}")
    return PCVAE(build_vae(cfg, x_shape), n_classes)
