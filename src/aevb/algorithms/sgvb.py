"""Stochastic gradient variational Bayes (Kingma & Welling 2013, Algorithm 1): each step ascends
the model's bound on a minibatch, θ and φ together, by the reparameterised gradient of the
estimator (A, B, auto or the IWAE bound of Burda et al. 2015 with k = ``samples``)."""
from __future__ import annotations

import torch

from ..distributed import Group
from ..errors import ConfigError
from ..objectives import ELBOTerms, Estimator
from .base import ALGORITHMS, Algorithm

SEMI_SUPERVISED_OPTIONS = {"labelled": "--labelled", "labelled_every": "--labelled-every",
                           "labelled_weight": "--labelled-weight", "labelled_batch_size": "--labelled-batch-size",
                           "alpha": "--alpha"}


@ALGORITHMS.register("sgvb")
class SGVB(Algorithm):
    """Minimise -mean_i objective(x_i) over minibatches of every training example."""

    def __init__(self, cfg, model, optimizer, data, device, group=Group()):
        super().__init__(cfg, model, optimizer, data, device, group)
        for key, flag in SEMI_SUPERVISED_OPTIONS.items():
            section = cfg.data if key == "labelled" else cfg.train
            if getattr(section, key) is not None:
                raise ConfigError(f"{flag} applies to the semi-supervised models (m2, pcvae) and "
                                  f"--algorithm semi-supervised, not {cfg.model.model} trained by sgvb")
        self.x = data.train_x.to(device)

    def loss(self, x: torch.Tensor, estimator: Estimator) -> tuple[torch.Tensor, ELBOTerms]:
        terms = self.model.elbo(x, estimator)
        return -terms.objective.mean(), terms

    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        loss, terms = self.forward(self.binarize(self.x[idx]), self.estimator_at(progress))
        self.update(loss)
        self.accumulate(terms)
