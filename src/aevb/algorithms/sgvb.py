"""Stochastic gradient variational Bayes (Kingma & Welling 2013, Algorithm 1): each step ascends
the model's bound on a minibatch, θ and φ together, by the reparameterised gradient of the
estimator (A, B, auto or the IWAE bound of Burda et al. 2015 with k = ``samples``).

--free-bits λ (Kingma et al. 2016) changes what the step ascends, not what it reports: the estimator
computes it (``aevb.objectives.free_bits_kl``, which needs the same draws as the bound), and this
module refuses it where the KL does not split into one term per latent dimension."""
from __future__ import annotations

import torch

from ..distributed import Group
from ..errors import ConfigError
from ..models import ClassLatent, conditioned
from ..objectives import ELBOTerms, Estimator, factorises
from .base import ALGORITHMS, Algorithm

SEMI_SUPERVISED_OPTIONS = {"labelled": "--labelled", "labelled_every": "--labelled-every",
                           "labelled_weight": "--labelled-weight", "labelled_batch_size": "--labelled-batch-size",
                           "alpha": "--alpha", "consistency": "--consistency"}


def refuse_semi_supervised_options(cfg, algorithm: str) -> None:
    """The options of semi-supervised training mean nothing to an unsupervised ``algorithm``: refuse them."""
    for key, flag in SEMI_SUPERVISED_OPTIONS.items():
        section = cfg.data if key == "labelled" else cfg.train
        if getattr(section, key) is not None:
            raise ConfigError(f"{flag} applies to the semi-supervised models (m2, pcvae) and "
                              f"--algorithm semi-supervised, not {cfg.model.model} trained by {algorithm}")


def check_free_bits(cfg, model, data) -> None:
    """--free-bits needs a KL per latent dimension: estimator A or B (not iwae), a single latent z
    (not M2's enumerated class), and q(z|x) and p(z) that factorise over the dimensions."""
    m, t = cfg.model, cfg.train
    if t.estimator not in ("A", "B", "auto"):
        raise ConfigError(f"--free-bits applies to estimators A, B and auto, not {t.estimator}; drop one of the two")
    if isinstance(model, ClassLatent):
        raise ConfigError(f"--free-bits needs one latent z with a KL per dimension; {m.model} enumerates a latent "
                          "class as well: drop --free-bits")
    with torch.no_grad():
        q, p = model.encode(data.train_x[:1].to(next(model.parameters()).device)), model.prior()
    if not (factorises(q) and factorises(p)):
        raise ConfigError(f"--free-bits needs q(z|x) and p(z) that factorise over the latent dimensions; "
                          f"--posterior {m.posterior} with --prior {m.prior} on --model {m.model} do not: "
                          "use a diagonal --posterior (normal) and --prior standard_normal, or drop --free-bits")


@ALGORITHMS.register("sgvb")
class SGVB(Algorithm):
    """Minimise -mean_i objective(x_i) over minibatches of every training example."""

    takes_batches = True

    def __init__(self, cfg, model, optimizer, data, device, group=Group()):
        super().__init__(cfg, model, optimizer, data, device, group)
        refuse_semi_supervised_options(cfg, "sgvb")
        if cfg.train.free_bits is not None:
            check_free_bits(cfg, model, data)
        self.x = data.train_x.to(device)
        self.s = None if data.train_s is None else data.train_s.to(device)

    def loss(self, x: torch.Tensor, estimator: Estimator, s: torch.Tensor | None = None) -> tuple[torch.Tensor, ELBOTerms]:
        """-mean objective of a minibatch x, given the batch s of each datapoint where the data have one."""
        terms = conditioned(self.model, s).elbo(x, estimator)
        return -terms.objective.mean(), terms

    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        s = None if self.s is None else self.s[idx]
        loss, terms = self.forward(self.binarize(self.x[idx]), self.estimator_at(progress), s)
        self.update(loss)
        self.accumulate(terms)
