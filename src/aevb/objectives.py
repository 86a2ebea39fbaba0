"""Per-datapoint estimators of the ELBO and its relatives, in nats (higher is better).

Each takes a model (anything with ``encode``, ``decode``, ``prior``) and a batch x of shape
(N, *x_shape) and returns ``ELBOTerms`` of shape (N,). An ``Estimator`` names one of them with its
number of samples and β: it is the one value in which these travel from the config to a model's
``elbo``. Training minimises ``-objective.mean()``: the per-datapoint mean of the minibatch
estimator N/M Σ_i L(x_i) (Kingma & Welling 2013, eq. 8) divided by N, so learning rates do not
depend on the dataset size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from .registry import Registry

ESTIMATORS: Registry = Registry("estimator")
SCHEDULES: Registry = Registry("beta schedule")


@dataclass
class ELBOTerms:
    """Per-datapoint terms of a bound, each of shape (N,), in nats; the same meaning for every model
    and estimator:

    elbo       the bound on log p(x) (log p(x, y) for labelled data) that the estimator estimates,
               unweighted (β = 1): the ELBO for estimators A and B, the k-sample bound for iwae
    log_px_z   the reconstruction term E_q[log p(x|z)] (with M2, E_q[log p(x|y,z)])
    kl         KL(q(z|x) ‖ p(z)) of the continuous latent z: closed form under B, Monte Carlo otherwise
    kl_y       KL(q(y|x) ‖ p(y)) of a discrete latent class y; -log p(y) for an observed y (q is then
               a point mass); zero for a model without one
    objective  what training maximises: the bound with each KL weighted by its β (the iwae bound
               with β on log p(z) - log q(z|x))

    For A and B, elbo = log_px_z - kl - kl_y; for iwae, elbo ≥ that in expectation."""

    elbo: torch.Tensor
    log_px_z: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor
    kl_y: torch.Tensor | None = None

    def __post_init__(self):
        if self.kl_y is None:
            self.kl_y = torch.zeros_like(self.elbo)


@dataclass(frozen=True)
class Estimator:
    """A registered estimator (``name``: A, B, auto, iwae) with its ``samples`` (L, or k for iwae)
    and the weight β of the KL of z in the objective; ``beta_y`` weighs the KL of a latent class
    (M2's y) apart from β, None: β; ``free_bits`` λ makes the objective the free-bits one of
    estimators A and B (``free_bits_kl``; None: off). ``estimator(model, x)`` applies it to a model's
    encode, decode and prior; a model's ``elbo(x, estimator)`` is where a model with more latents combines it."""

    name: str = "auto"
    samples: int = 1
    beta: float = 1.0
    beta_y: float | None = None
    free_bits: float | None = None

    def __call__(self, model, x: torch.Tensor) -> "ELBOTerms":
        if self.free_bits is None:
            return ESTIMATORS[self.name](model, x, self.samples, self.beta)
        return ESTIMATORS[self.name](model, x, self.samples, self.beta, free_bits=self.free_bits)

    @property
    def class_beta(self) -> float:
        """The weight of the KL of a latent class: ``beta_y``, or β where unset."""
        return self.beta if self.beta_y is None else self.beta_y


def _sample(model, x, samples):
    q_z = model.encode(x)
    z = q_z.rsample((samples,))
    return q_z, z, model.decode(z).log_prob(x)


def _kl(q: Distribution, p: Distribution, z: torch.Tensor, closed: bool) -> torch.Tensor:
    """KL(q ‖ p) in closed form, or its MC estimate 1/L Σ_l log q(z_l) - log p(z_l) from z (L, N, ...)."""
    return kl_divergence(q, p) if closed else (q.log_prob(z) - p.log_prob(z)).mean(0)


def _sgvb(model, x, samples: int, beta: float, closed: bool, free_bits: float | None) -> ELBOTerms:
    """Estimator A (``closed`` False) or B (True); with ``free_bits`` λ the objective's KL is the free-bits one."""
    q_z, z, log_px_z = _sample(model, x, samples)
    p_z = model.prior()
    kl = _kl(q_z, p_z, z, closed)
    log_px_z = log_px_z.mean(0)
    penalty = kl if free_bits is None else free_bits_kl(q_z, p_z, z, closed, free_bits)
    return ELBOTerms(log_px_z - kl, log_px_z, kl, log_px_z - beta * penalty)


@ESTIMATORS.register("A")
def sgvb_a(model, x, samples: int = 1, beta: float = 1.0, free_bits: float | None = None) -> ELBOTerms:
    """SGVB estimator A (Kingma & Welling 2013, eq. 6):
    1/L Σ_l log p(x, z_l) - log q(z_l|x), z_l = g(ε_l, x). The KL is the MC estimate
    1/L Σ_l log q(z_l|x) - log p(z_l), weighted by β in the objective (free bits: ``free_bits_kl``)."""
    return _sgvb(model, x, samples, beta, False, free_bits)


@ESTIMATORS.register("B")
def sgvb_b(model, x, samples: int = 1, beta: float = 1.0, free_bits: float | None = None) -> ELBOTerms:
    """SGVB estimator B (Kingma & Welling 2013, eq. 7):
    -KL(q(z|x) ‖ p(z)) + 1/L Σ_l log p(x|z_l), the KL in closed form (free bits: ``free_bits_kl``)."""
    return _sgvb(model, x, samples, beta, True, free_bits)


def factorises(d: Distribution) -> bool:
    """Whether d over R^D is a product of D one-dimensional distributions, ``Independent(·, 1)``:
    then KL(q ‖ p) of two such is the sum of the KLs of their coordinates."""
    return isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1


def free_bits_kl(q_z: Independent, p_z: Independent, z: torch.Tensor, closed: bool, free_bits: float) -> torch.Tensor:
    """The KL term of the free-bits objective (Kingma et al. 2016, IAF paper, section 'free bits'),
    per datapoint, shape (N,): the objective replaces Σ_d KL_d, with KL_d = mean_i KL(q(z_d|x_i) ‖ p(z_d))
    the minibatch mean of dimension d, by Σ_d max(λ, KL_d). Written per datapoint as
    Σ_d [KL_id where KL_d > λ, else the constant λ], whose minibatch mean is that sum exactly: a dimension
    whose mean KL is below λ nats gets no gradient from the KL, the others the plain one. q and p must
    factorise (``factorises``); KL_id in closed form (``closed``) or the MC estimate from z, as the
    estimator computes the whole KL. Under torchrun the minibatch is each rank's shard."""
    kl = _kl(q_z.base_dist, p_z.base_dist, z, closed)  # (N, D)
    return torch.where(kl.mean(0) > free_bits, kl, torch.full_like(kl, free_bits)).sum(-1)


def has_analytic_kl(q: Distribution, p: Distribution) -> bool:
    """Whether kl_divergence(q, p) has a registered closed form (tried once, on the instances)."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


@ESTIMATORS.register("auto")
def sgvb_auto(model, x, samples: int = 1, beta: float = 1.0, free_bits: float | None = None) -> ELBOTerms:
    """Estimator B where a closed-form KL(q‖p) is registered for the model's pair, A otherwise."""
    return (sgvb_b if model.has_analytic_kl() else sgvb_a)(model, x, samples, beta, free_bits)


def log_joint(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) = log p(x|z) + log p(z) for z of shape (..., N, latent_dim) and x (N, *x_shape):
    the unnormalised log-posterior that Hamiltonian Monte Carlo samples (aevb.inference.hmc), shape (..., N)."""
    return model.decode(z).log_prob(x) + model.prior().log_prob(z)


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
    The objective weights log p(z_k) - log q(z_k|x) by β; ``elbo`` is the unweighted bound, and
    ``log_px_z`` and ``kl`` are estimator A's terms from the same k samples."""
    log_px_z, log_ratio = _log_weight_terms(model, x, samples)
    bound = lambda b: torch.logsumexp(log_px_z + b * log_ratio, 0) - math.log(samples)  # noqa: E731
    elbo = bound(1.0)
    return ELBOTerms(elbo, log_px_z.mean(0), -log_ratio.mean(0), elbo if beta == 1.0 else bound(beta))


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
