"""The prediction-constrained VAE (Hope, Abdrakhmanova, Chen, Hughes & Sudderth 2020, "Learning
consistent deep generative models from sparse data via prediction constraints", arXiv 2012.06718;
the prediction constraint after Hughes et al. 2018's prediction-constrained topic models).

A VAE p(z) p(x|z), q(z|x) whose latent code feeds a classifier p(y|z) = softmax(W z + b). The label
is not a variable of the generative model (unlike M2's): training maximises the ELBO L(x) of every
image subject to a bound on the prediction loss of the labelled ones,

    max Σ_n L(x_n)   subject to   Σ_{n labelled} E_q(z|x_n)[-log p(y_n|z)] ≤ ε,

which the Lagrangian turns into a penalty with a multiplier λ ≥ 0 that grows as ε shrinks: the
point of the paper is a LARGE λ, so that the labels shape the code rather than being outweighed by
the reconstruction of every pixel. To it the paper adds its consistency constraint, derived from the
generative model: a reconstruction x̃ = E[x|z], z ~ q(z|x), must be classified as x is, i.e. as its
label y where x is labelled and as the classifier's own (fixed) prediction p(y|E_q[z|x]) where not;
C(x) is that cross-entropy and γ its weight. The objective minimised is

    -Σ_n L(x_n) + λ Σ_{n labelled} E_q[-log p(y_n|z)] + γ Σ_n C(x_n),

on the labelled and the unlabelled batch of every step (``aevb.algorithms.semi_supervised``). In the
trainer's per-datapoint units (everything ÷ N) λ's term is ``alpha`` · mean_labelled, so
``alpha`` = λ·N_l/N, and ``consistency`` is γ. λ and γ are hyperparameters, chosen by held-out
labelled accuracy over a grid: ``default_alpha`` 1 (λ = N/N_l, 600 at 100 MNIST labels against the
1 of a joint likelihood's label term) and ``default_consistency`` γ = 10.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from ..errors import DataError
from ..objectives import ELBOTerms, Estimator
from . import MODELS
from .base import ConsistentClassifier
from .vae import VAE, build_vae


class PCVAE(VAE, ConsistentClassifier):
    """A VAE plus ``head``: logits of p(y|z). ``labelled_elbo`` is the plain ELBO (the label does
    not enter the generative model); ``class_log_prob`` is the prediction term, ``consistency_nll``
    the consistency term."""

    # Chosen on a grid by the accuracy of held-out labelled images (never the test set): MNIST, 100
    # labels, the sweep above MODEL_SETTINGS in aevb/experiments/ssl.py. α = 1 is λ = N/N_l (600 at
    # 100 of 60,000 labels): the labelled set's prediction loss weighs as much as the ELBO of all
    # images; a larger λ fits the 100 labels exactly and generalises worse.
    default_alpha = 1.0
    default_consistency = 10.0

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

    def consistency_nll(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """C(x) = -Σ_k t_k log p(y = k | z̃), one sample each of z ~ q(z|x) and z̃ ~ q(z|x̃) at the
        reconstruction x̃ = E[x|z], pathwise through both (so the decoder learns to keep the class);
        the target t is one-hot at y, or without y the prediction softmax(W E_q[z|x] + b), held fixed."""
        q = self.encode(x)
        log_p = F.log_softmax(self.head(self.encode(self.decode(q.rsample()).mean).rsample()), -1)
        if y is not None:
            return -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        target = F.softmax(self.head(q.mean), -1).detach()
        return -(target * log_p).sum(-1)


@MODELS.register("pcvae")
def build_pcvae(cfg, x_shape, n_classes=None) -> PCVAE:
    if not n_classes or n_classes < 2:
        raise DataError("--model pcvae needs labelled data with at least two classes; this dataset has "
                        f"{'no labels' if not n_classes else 'one class'}")
    return PCVAE(build_vae(cfg, x_shape), n_classes)
