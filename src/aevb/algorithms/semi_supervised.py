"""Semi-supervised training of a model with a classifier (M2, the PC-VAE): each step takes a batch
of unlabelled examples and one of labelled ones, from a balanced labelled set that the seed chooses.

The loss is Kingma et al. 2014's J^α (eq. 9) per training example, plus, for a model whose classifier
reads its reconstructions (the PC-VAE), Hope et al. 2020's consistency term γ·C(x) over both batches;
with ``labelled_every`` K the labelled batch instead gets a step of its own before every K-th
unlabelled one, as Pyro's SS-VAE does.
"""
from __future__ import annotations

import torch

from ..data import balanced_labels, select
from ..distributed import Group
from ..errors import ConfigError
from ..models import Classifier, ConsistentClassifier
from ..objectives import ELBOTerms, Estimator
from .base import ALGORITHMS, Algorithm


def semi_supervised_loss(model: Classifier, x_u, x_l, y_l, estimator: Estimator, alpha: float = 0.1,
                         labelled_share: float = 1.0, consistency: float = 0.0
                         ) -> tuple[torch.Tensor, ELBOTerms, torch.Tensor | None]:
    """J^α = Σ_l L(x,y) + Σ_u U(x) + α E_l[log q(y|x)] with α = 0.1·N (Kingma et al. 2014, eq. 9),
    divided by the N training examples:

        -(N_l/N) mean_l L(x,y) - (N_u/N) mean_u U(x) + 0.1 · mean_l[-log q(y|x)]

    ``labelled_share`` is N_l/N and ``alpha`` the per-datapoint weight α/N (0.1 in the paper). A
    larger ``labelled_share`` (0.5 weighs a labelled and an unlabelled example alike, as the
    per-step loss of most M2 code does) over-samples the labelled examples. M2 has its bounds U and
    L; the PC-VAE the plain ELBO for both and its latent classifier as q(y|x). Either batch may be
    None and its terms are dropped: ``x_u`` where every training example is labelled, and on the
    two kinds of step of an interleaved schedule (labelled_share 1 with ``x_u`` None, 0 with ``x_l``
    None). ``consistency`` γ > 0 (a ``ConsistentClassifier``) adds γ times the consistency
    cross-entropy C(x) weighted as the bounds are: + γ (N_l/N mean_l C(x, y) + N_u/N mean_u C(x)).
    Returns the loss, the terms of the unlabelled batch (of the labelled one without it) and the
    mean of -log q(y|x) (None without a labelled batch)."""
    loss, terms, class_nll = 0.0, None, None
    if x_l is not None:
        terms = model.labelled_elbo(x_l, y_l, estimator)
        class_nll = -model.class_log_prob(x_l, y_l).mean()
        loss = alpha * class_nll - labelled_share * terms.objective.mean()
        if consistency:
            loss = loss + consistency * labelled_share * model.consistency_nll(x_l, y_l).mean()
    if x_u is not None:
        terms = model.elbo(x_u, estimator)
        loss = loss - (1 - labelled_share) * terms.objective.mean()
        if consistency:
            loss = loss + consistency * (1 - labelled_share) * model.consistency_nll(x_u).mean()
    return loss, terms, class_nll


@ALGORITHMS.register("semi-supervised")
class SemiSupervised(Algorithm):
    """An epoch passes over the unlabelled examples (over the labelled ones where every example is
    labelled); each step adds a labelled batch drawn from the labelled set, or, with
    ``labelled_every`` K, a labelled step of its own comes before every K-th unlabelled step."""

    requires = Classifier
    requirement = "models with a classifier q(y|x) (m2, pcvae)"
    skips_parameters = True  # an unlabelled step leaves the PC-VAE's classifier out

    def __init__(self, cfg, model, optimizer, data, device, group=Group()):
        super().__init__(cfg, model, optimizer, data, device, group)
        t = cfg.train
        if t.free_bits is not None:
            raise ConfigError("--free-bits applies to --algorithm sgvb, not semi-supervised training; drop it")
        labelled = balanced_labels(data.train_y, cfg.data.labelled, t.seed)
        unlabelled = torch.ones(len(data.train_x), dtype=torch.bool)
        unlabelled[labelled] = False
        self.x_labelled = data.train_x[labelled].to(device)
        self.y_labelled = data.train_y[labelled].to(device)
        self.has_unlabelled = bool(unlabelled.any())
        self.x = select(data.train_x, unlabelled.nonzero().flatten()).to(device) if self.has_unlabelled else self.x_labelled
        self.alpha = model.default_alpha if t.alpha is None else t.alpha
        if t.consistency is not None and not isinstance(model, ConsistentClassifier):
            raise ConfigError(f"--consistency holds a classifier's predictions on the model's reconstructions to the "
                              f"label; {cfg.model.model} has no such classifier (use --model pcvae)")
        self.consistency = (t.consistency if t.consistency is not None
                            else model.default_consistency if isinstance(model, ConsistentClassifier) else 0.0)
        self.labelled_share = len(labelled) / len(data.train_x) if t.labelled_weight is None else t.labelled_weight
        self.labelled_batch = min(t.labelled_batch_size or t.batch_size, len(labelled))
        self.labelled_every = t.labelled_every if self.has_unlabelled else None

    def _labelled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randperm(len(self.x_labelled), device=self.device)[:self.labelled_batch]
        return self.binarize(self.x_labelled[pick]), self.y_labelled[pick]

    def loss(self, x_u, x_l, y_l, estimator: Estimator, labelled_share: float):
        return semi_supervised_loss(self.model, x_u, x_l, y_l, estimator, self.alpha, labelled_share, self.consistency)

    def _train_on(self, x_u, x_l, y_l, estimator: Estimator, labelled_share: float) -> ELBOTerms:
        loss, terms, class_nll = self.forward(x_u, x_l, y_l, estimator, labelled_share)
        self.update(loss)
        if class_nll is not None:
            self.class_nll, self.class_steps = self.class_nll + class_nll.detach(), self.class_steps + 1
        return terms

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self.class_nll, self.class_steps = torch.zeros((), device=self.device), 0

    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        x = self.binarize(self.x[idx])
        estimator = self.estimator_at(progress)
        if not self.has_unlabelled:
            terms = self._train_on(None, x, self.y_labelled[idx], estimator, self.labelled_share)
        elif self.labelled_every:
            if step % self.labelled_every == 0:
                self._train_on(None, *self._labelled_batch(), estimator, 1.0)
            terms = self._train_on(x, None, None, estimator, 0.0)
        else:
            terms = self._train_on(x, *self._labelled_batch(), estimator, self.labelled_share)
        self.accumulate(terms)

    def end_epoch(self) -> dict[str, float]:
        """The bound terms of the unlabelled batches (labelled where all are), and the mean
        classification loss -log q(y|x) of the labelled batches."""
        nll = self.group.all_sum(torch.stack([self.class_nll, torch.tensor(float(self.class_steps), device=self.device)]))
        return super().end_epoch() | {"train_class_nll": nll[0].item() / max(nll[1].item(), 1)}

    def test(self, x: torch.Tensor, y: torch.Tensor | None, s: torch.Tensor | None = None) -> dict[str, float]:
        """The bound terms, and the accuracy of the classifier where the test labels are known."""
        out = super().test(x, y, s)
        if y is not None:
            with self.precision.full():
                predicted = self.model.predict(x, self.cfg.train.eval_batch_size)
            out["test_accuracy"] = (predicted == y).float().mean().item()
        return out
