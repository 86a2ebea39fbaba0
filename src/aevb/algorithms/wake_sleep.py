"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the baseline of Kingma & Welling 2013
(section 5, figures 2 and 3), on the same encoder q_φ(z|x) and model p_θ(z) p_θ(x|z) as AEVB. Each step
has two phases, on disjoint parameters:

    wake   θ (decoder, prior and likelihood parameters) ascends mean_i 1/L Σ_l log p_θ(x_i, z_il),
           z_il ~ q_φ(z|x_i) drawn without a gradient to φ (L = ``samples``);
    sleep  φ (encoder parameters) ascends mean_j log q_φ(z_j|x_j) on M dreams z_j ~ p_θ(z),
           x_j ~ p_θ(x|z_j) (binary x under a Bernoulli decoder), M the batch size, drawn without a
           gradient to θ.

Sharing the optimizer: no gradient crosses between the phases (the wake z and the sleep (z, x) are
drawn under no_grad), so the sum of the two losses gives every parameter the gradient of its own
phase and nothing else. One backward pass and one step of the one optimizer over all parameters
therefore make both updates, and Adagrad's (or Adam's) per-parameter state is that of its phase. Both
phases start from the parameters at the start of the step (the dreams come from θ before its wake
update): simultaneous wake-sleep. ``--theta map|vb`` adds its θ term to the wake phase through
``Algorithm.update`` (it touches θ only); ``--grad-clip`` clips the norm of both phases' gradients together.

What it reports is AEVB's: the bound of its training batches and of the test set under the configured
estimator, by ``model.elbo``, the very code SGVB trains on, so that the two algorithms' lower bounds
compare as in figure 2; and the two phases' objectives, ``train_wake_log_joint`` and ``train_sleep_log_q``.
"""
from __future__ import annotations

import torch

from ..distributed import Group
from ..errors import ConfigError
from ..models import Classifier, DecodesLatent, LatentModel
from .base import ALGORITHMS, Algorithm
from .sgvb import refuse_semi_supervised_options


def wake_sleep_objectives(model: LatentModel, x: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The wake objective 1/L Σ_l log p(x_i, z_il), z_il ~ q(z|x_i), shape (N,), whose gradient reaches θ
    only, and the sleep objective log q(z_j|x_j) on N dreams (z_j, x_j) ~ p(z) p(x|z), shape (N,), whose
    gradient reaches φ only."""
    with torch.no_grad():
        z = model.encode(x).sample((samples,))  # (L, N, d)
        z_dream = model.prior().sample((len(x),))
        x_dream = model.decode(z_dream).sample()
    log_joint = (model.decode(z).log_prob(x) + model.prior().log_prob(z)).mean(0)
    return log_joint, model.encode(x_dream).log_prob(z_dream)


@ALGORITHMS.register("wake-sleep")
class WakeSleep(Algorithm):
    """Minimise -mean wake objective - mean sleep objective over minibatches of every training example."""

    requires = DecodesLatent
    requirement = "models whose decoder dreams x from z alone (vae, hierarchical)"

    def __init__(self, cfg, model, optimizer, data, device, group=Group()):
        super().__init__(cfg, model, optimizer, data, device, group)
        t = cfg.train
        if isinstance(model, Classifier):
            raise ConfigError(f"--algorithm wake-sleep trains unsupervised models (vae, hierarchical); {cfg.model.model} "
                              "has a classifier: train it with --algorithm semi-supervised")
        refuse_semi_supervised_options(cfg, "wake-sleep")
        if t.beta != 1.0 or t.beta_schedule != "constant":
            raise ConfigError("--beta and --beta-schedule weigh the KL of the ELBO that sgvb ascends; wake-sleep "
                              "ascends no ELBO (it reports the bound at β = 1): drop them")
        if t.free_bits is not None:
            raise ConfigError("--free-bits changes the KL of the ELBO that sgvb ascends; wake-sleep ascends no ELBO: "
                              "drop it")
        self.x = data.train_x.to(device)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_joint, log_q = wake_sleep_objectives(self.model, x, self.cfg.train.samples)
        return -(log_joint.mean() + log_q.mean()), log_joint, log_q

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self.phase_sums = torch.zeros(2, device=self.device)

    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        x = self.binarize(self.x[idx])
        with torch.no_grad():  # the bound at the step's parameters, as sgvb reports it
            self.accumulate(self.model.elbo(x, self.estimator_at(progress)))
        loss, log_joint, log_q = self.forward(x)
        self.update(loss)
        self.phase_sums += torch.stack([log_joint.sum(), log_q.sum()]).detach()

    def end_epoch(self) -> dict[str, float]:
        """AEVB's bound terms of the training batches, and the mean wake and sleep objectives per example."""
        wake, sleep = (self.group.all_sum(self.phase_sums) / self.n).tolist()
        return super().end_epoch() | {"train_wake_log_joint": wake, "train_sleep_log_q": sleep}
