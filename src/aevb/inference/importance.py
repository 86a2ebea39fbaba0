"""How far to trust an importance-sampled log-likelihood log p̂(x) = log 1/k Σ_j w_j: per datapoint, from its
k log-weights log w_j = log p(x, z_j) - log q(z_j|x), the effective sample size, the Pareto k̂ of the
weights' right tail, and a standard error that is calibrated against independent replicates where k̂ ≤ 0.7
and withheld (NaN) where it is not.

Why: the weights of a VAE's encoder are heavy-tailed, and the delta-method standard error
sqrt(Var̂(w)/k)/mean(w) estimates Var(w) from draws that have mostly missed the tail, so it is too small
(on the pytorch-examples model two k = 5000 estimates of one image differ by ~1 nat while it says 0.3).
k̂ says how heavy the tail is (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
Sampling", JMLR 2024): the weights have a finite variance for k̂ < 1/2, a finite mean for k̂ < 1, and
beyond k̂ > 0.7 no feasible k gives a reliable estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GOOD_KHAT = 0.5  # k̂ below: Var(w) < ∞, the central limit theorem holds at rate 1/√k
RELIABLE_KHAT = 0.7  # k̂ above: unreliable at any feasible k (Vehtari et al. 2024, section 3.2.4)
WARN_SHARE = 0.01  # warn when more than this share of the datapoints is unreliable (see ``warning``)
BATCHES = 10  # see batch_standard_error
WORST = 10  # the datapoints with the largest k̂ listed in the summary
MIN_DIAGNOSED_K = 25  # the fewest samples with a tail of M = min(k/5, 3√k) ≥ 5 weights to fit


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS = (Σ_j w_j)² / Σ_j w_j² of each row of log-weights (N, k), shape (N,): between 1 (one weight
    carries everything) and k (all equal). Kish's formula, computed from log-sum-exps so nothing overflows."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    """The Pareto k̂ of each row of log-weights (N, k), shape (N,), float64: the shape of a generalised
    Pareto distribution fitted to the M = min(k/5, 3√k) largest weights above the next largest
    (Vehtari et al. 2024, eq. 4 and section 3.1), by the estimator of Zhang & Stephens 2009 with
    Vehtari's weak prior (k̂ shrunk towards 1/2 with the weight of 10 observations).

    The fit is ArviZ's (``arviz_stats``' PSIS, the reference Python implementation by the paper's
    authors' group; pure NumPy/SciPy): scipy.stats.genpareto.fit is a plain maximum-likelihood fit, with
    no prior, more variable for the few hundred tail draws here and ~100× slower (an optimiser per
    datapoint). ArviZ fits one datapoint at a time in a Python loop (~1 ms for k = 5000, so ~10 s for
    10,000 test images, against minutes for their weights). Its ``psislw`` takes log-likelihoods in the
    convention of leave-one-out cross-validation, whose importance ratios are their reciprocals, hence
    the minus sign."""
    from arviz_stats.base import array_stats

    _, khat = array_stats.psislw(-log_w.detach().double().cpu().numpy(), r_eff=1.0)
    return torch.as_tensor(khat, dtype=torch.float64, device=log_w.device)


def batch_standard_error(log_w: torch.Tensor, batches: int = BATCHES) -> torch.Tensor:
    """TODO"""
    n, k = log_w.shape
    size = k // batches
    log_p_b = torch.logsumexp(log_w[:, :size * batches].reshape(n, batches, size), -1) - math.log(size)
    return log_p_b.std(-1) / math.sqrt(batches)


@dataclass
class ImportanceEstimate:
    """Per datapoint, shape (N,), float64: ``log_p`` = log p̂(x) from k samples; ``delta_se`` =
    sqrt(Var̂(w)/k)/mean(w), the delta-method standard error (too small for heavy-tailed weights; kept for
    comparison); and, where diagnosed (``diagnose_weights``), ``khat``, ``ess``, the calibrated standard error
    ``se_all`` and ``se``, the same with NaN where k̂ > 0.7."""

    k: int
    log_p: torch.Tensor
    delta_se: torch.Tensor
    khat: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    se_all: torch.Tensor | None = None
    se: torch.Tensor | None = None


def diagnose_weights(log_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """k̂, ESS and the calibrated standard error of log p̂ (``batch_standard_error``) of each row of log-weights
    (N, k), each of shape (N,); the standard error is computed for every row (``se_all``, what the mean over
    datapoints uses) and reported (``se``) only where k̂ ≤ 0.7, NaN elsewhere."""
    khat = pareto_khat(log_w)
    se = batch_standard_error(log_w)
    return {"khat": khat, "ess": effective_sample_size(log_w), "se_all": se,
            "se": se.masked_fill(khat > RELIABLE_KHAT, math.nan)}


def summary(e: ImportanceEstimate) -> dict:
    """The diagnostics of ``e`` over its N datapoints, for eval.json: the mean of log p̂ with its calibrated
    standard error sqrt(Σ_i se_i²)/N (every datapoint's, the unreliable ones' too: their share is given
    beside it) and the delta-method one for comparison; the mean and least ESS; the shares of datapoints
    with 0.5 < k̂ ≤ 0.7 and k̂ > 0.7; and the WORST datapoints by k̂ (index, k̂, ESS, log p̂)."""
    n = len(e.log_p)
    if e.khat is None:
        return {"k": e.k, "value": e.log_p.mean().item(), "standard_error": (e.delta_se.pow(2).sum().sqrt() / n).item(),
                "standard_error_method": f"delta method: k < {MIN_DIAGNOSED_K} samples are too few to diagnose"}
    worst = torch.argsort(e.khat, descending=True, stable=True)[:WORST].tolist()
    return {"k": e.k, "value": e.log_p.mean().item(),
            "standard_error": (e.se_all.pow(2).sum().sqrt() / n).item(),
            "standard_error_method": f"batch means, B = {BATCHES}",
            "delta_method_standard_error": (e.delta_se.pow(2).sum().sqrt() / n).item(),
            "ess_mean": e.ess.mean().item(), "ess_min": e.ess.min().item(),
            "khat_share_above_0.7": (e.khat > RELIABLE_KHAT).double().mean().item(),
            "khat_share_0.5_to_0.7": ((e.khat > GOOD_KHAT) & (e.khat <= RELIABLE_KHAT)).double().mean().item(),
            "khat_worst": [{"index": i, "khat": e.khat[i].item(), "ess": e.ess[i].item(), "log_p": e.log_p[i].item()}
                           for i in worst]}


def warning(s: dict) -> str | None:
    """One line when more than WARN_SHARE (1%) of the datapoints have k̂ > 0.7, else None. 1%: the mean over
    datapoints is then carried by estimates that may be off by nats (their errors have no usable variance),
    so its standard error understates its error; below 1% those few move the mean by hundredths of a nat."""
    share = s.get("khat_share_above_0.7", 0.0)
    if share <= WARN_SHARE:
        return None
    return (f"{100 * share:.1f}% of the datapoints have Pareto k̂ > {RELIABLE_KHAT}: their importance weights are too "
            f"heavy-tailed for any feasible k, so log p(x) and its standard error are unreliable there; a wider or "
            f"better-trained encoder (the proposal q(z|x)) fixes this, a larger --k does not")
