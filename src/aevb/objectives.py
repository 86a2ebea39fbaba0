"""Per-datapoint estimators of the ELBO and its relatives, in nats (higher is better).

Each takes a model (with ``encode``, ``decode``, ``prior``) and a batch x of shape (N, *x_shape)
and returns ``ELBOTerms`` of shape (N,). Training minimises ``-objective.mean()``: the
per-datapoint mean of the minibatch estimator N/M Σ_i L(x_i) (Kingma & Welling 2013, eq. 8)
divided by N, so learning rates do not depend on the dataset size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, kl_divergence

from .registry import Registry

ESTIMATORS: Registry = Registry("estimator")
SCHEDULES: Registry = Registry("beta schedule")


@dataclass
class ELBOTerms:
    """elbo = log_px_z - kl (the unweighted bound); objective is what training maximises
    (the β-weighted bound, or the IWAE bound)."""

    elbo: torch.Tensor
    log_px_z: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor


def _sample(model, x, samples):
    q_z = model.encode(x)
    z = q_z.rsample((samples,))
    return q_z, z, model.decode(z).log_prob(x)


@ESTIMATORS.register("A")
def sgvb_a(model, x, samples: int = 1, beta: float = 1.0) -> ELBOTerms:
    """SGVB estimator A (Kingma & Welling 2013, eq. 6):
    1/L Σ_l log p(x, z_l) - log q(z_l|x), z_l = g(ε_l, x). The KL is the MC estimate
    1/L Σ_l log q(z_l|x) - log p(z_l), weighted by β in the objective."""
    q_z, z, log_px_z = _sample(model, x, samples)
    kl = (q_z.log_prob(z) - model.prior().log_prob(z)).mean(0)
    log_px_z = log_px_z.mean(0)
    return ELBOTerms(log_px_z - kl, log_px_z, kl, log_px_z - beta * kl)


@ESTIMATORS.register("B")
def sgvb_b(model, x, samples: int = 1, beta: float = 1.0) -> ELBOTerms:
    """SGVB estimator B (Kingma & Welling 2013, eq. 7):
    -KL(q(z|x) ‖ p(z)) + 1/L Σ_l log p(x|z_l), the KL in closed form."""
    q_z, _, log_px_z = _sample(model, x, samples)
    kl = kl_divergence(q_z, model.prior())
    log_px_z = log_px_z.mean(0)
    return ELBOTerms(log_px_z - kl, log_px_z, kl, log_px_z - beta * kl)


def has_analytic_kl(q: Distribution, p: Distribution) -> bool:
    """Whether kl_divergence(q, p) has a registered closed form (tried once, on the instances)."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


@ESTIMATORS.register("auto")
def sgvb_auto(model, x, samples: int = 1, beta: float = 1.0) -> ELBOTerms:
    """Estimator B where a closed-form KL(q‖p) is registered for the model's pair, A otherwise."""
    return (sgvb_b if model.has_analytic_kl() else sgvb_a)(model, x, samples, beta)


def bound(model, x, estimator: str = "auto", samples: int = 1, beta: float = 1.0) -> ELBOTerms:
    """The model's own bound where it defines one (M2 sums over its classes), else the registered
    estimator applied to its encode, decode and prior."""
    if hasattr(model, "elbo"):
        return model.elbo(x, estimator, samples, beta)
    return ESTIMATORS[estimator](model, x, samples, beta)


def log_weights(model, x, samples: int, beta: float = 1.0) -> torch.Tensor:
    """log w_k = log p(x|z_k) + β(log p(z_k) - log q(z_k|x)), z_k ~ q(z|x); shape (samples, N)."""
    log_px_z, log_ratio = _log_weight_terms(model, x, samples)
    return log_px_z + beta * log_ratio


def _log_weight_terms(model, x, samples):
    """log p(x|z_k) and log p(z_k) - log q(z_k|x) for z_k ~ q(z|x), each of shape (samples, N)."""
    q_z, z, log_px_z = _sample(model, x, samples)
    return log_px_z, model.prior().log_prob(z) - q_z.log_prob(z)


@ESTIMATORS.register("iwae")
def iwae_bound(model, x, samples: int = 1, beta: float = 1.0) -> ELBOTerms:
    """The importance-weighted bound (Burda et al. 2015, eq. 8):
    log 1/k Σ_k p(x, z_k)/q(z_k|x) ≤ log p(x), rising with k; k = 1 is estimator A.
    The objective weights log p(z_k) - log q(z_k|x) by β; ``elbo`` is the unweighted bound."""
    log_px_z, log_ratio = _log_weight_terms(model, x, samples)
    bound = lambda b: torch.logsumexp(log_px_z + b * log_ratio, 0) - math.log(samples)
    elbo = bound(1.0)
    nan = torch.full_like(elbo, float("nan"))
    return ELBOTerms(elbo, nan, nan, elbo if beta == 1.0 else bound(beta))


def semi_supervised(model, x_u, x_l, y_l, estimator: str = "auto", samples: int = 1, beta: float = 1.0,
                    alpha: float = 0.1, labelled_share: float = 1.0,
                    beta_y: float | None = None) -> tuple[torch.Tensor, ELBOTerms, torch.Tensor | None]:
    """The semi-supervised loss of Kingma et al. 2014 (eq. 9), J^α = Σ_l L(x,y) + Σ_u U(x)
    + α E_l[log q(y|x)] with α = 0.1·N, divided by the N training examples:

        -(N_l/N) mean_l L(x,y) - (N_u/N) mean_u U(x) + 0.1 · mean_l[-log q(y|x)]

    ``labelled_share`` is N_l/N and ``alpha`` the per-datapoint weight α/N (0.1 in the paper).
    A larger ``labelled_share`` (the trainer's ``labelled_weight``; 0.5 weighs a labelled and an
    unlabelled example alike, as the per-step loss of most M2 code does) over-samples the labelled
    examples.
    M2 has its bounds U and L; the PC-VAE the plain ELBO for both and its latent classifier as
    q(y|x); ``beta_y`` (M2 only) weighs the KL of y in U apart from β. Either batch may be None and
    its terms are dropped: ``x_u`` where every training example is labelled, and on the two kinds of
    step of an interleaved schedule (labelled_share 1 with ``x_u`` None, 0 with ``x_l`` None). Returns the loss, the terms of the unlabelled batch (of
    the labelled one without it) and the mean of -log q(y|x) (None without a labelled batch)."""
    loss, terms, class_nll = 0.0, None, None
    if x_l is not None:
        terms = model.labelled_elbo(x_l, y_l, estimator, samples, beta)
        class_nll = -model.class_log_prob(x_l, y_l).mean()
        loss = alpha * class_nll - labelled_share * terms.objective.mean()
    if x_u is not None:
        terms = model.elbo(x_u, estimator, samples, beta, **({} if beta_y is None else {"beta_y": beta_y}))
        loss = loss - (1 - labelled_share) * terms.objective.mean()
    return loss, terms, class_nll


def score_function_surrogate(log_q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient is the score-function (REINFORCE) estimate
    1/L Σ_l f(z_l) ∇ log q(z_l) + ∇f(z_l), z_l drawn without a pathwise gradient
    (Williams 1992; the 'naive' estimator of Kingma & Welling 2013, section 2.2)."""
    return (f.detach() * log_q + f).mean()


@SCHEDULES.register("constant")
def constant(beta: float, progress: float, epochs: int, warmup_epochs: float, cycles: int, ratio: float) -> float:
    """β throughout."""
    return beta


@SCHEDULES.register("linear")
def linear(beta, progress, epochs, warmup_epochs, cycles, ratio):
    """KL annealing (Bowman et al. 2016): β·min(1, t / warmup_epochs), t in epochs."""
    return beta * min(1.0, progress / warmup_epochs) if warmup_epochs > 0 else beta


@SCHEDULES.register("cyclical")
def cyclical(beta, progress, epochs, warmup_epochs, cycles, ratio):
    """Cyclical annealing (Fu et al. 2019): ``cycles`` periods over the run, each ramping β
    linearly from 0 over the first ``ratio`` of the period, then holding it."""
    period = epochs / cycles
    tau = (progress % period) / period
    return beta * min(1.0, tau / ratio)
