"""How far to trust an importance-sampled log-likelihood log p̂(x) = log 1/k Σ_j w_j: per datapoint, from its
k log-weights log w_j = log p(x, z_j) - log q(z_j|x), the effective sample size, the Pareto k̂ of the
weights' right tail, and a standard error that is calibrated against independent replicates where k̂ ≤ 0.7
and withheld (NaN) where it is not.

Why: the weights of a VAE's encoder are heavy-tailed, and the delta-method standard error
sqrt(Var̂(w)/k)/mean(w) estimates Var(w) from draws that have mostly missed the tail, so it is too small
(on the pytorch-examples model two k = 5000 estimates of one image differ by ~1 nat while it says 0.3).
k̂ says how heavy the tail is (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
Sampling", JMLR 2024): the weights have a finite variance for k̂ < 1/2, a finite mean for k̂ < 1, and
beyond k̂ > 0.7 no feasible k gives a reliable estimate. The standard error is measured on the draws
themselves (``calibrated_standard_error``): how the spread of log p̂ over disjoint batches shrinks with
the batch size, extrapolated to k.

Streaming: the callers (aevb.evaluate.importance_estimate) keep all k log-weights of the datapoints in
flight and hand them here as (N, k); everything below is batched over datapoints but the GPD fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GOOD_KHAT = 0.5  # k̂ below: Var(w) < ∞, the central limit theorem holds at rate 1/√k
RELIABLE_KHAT = 0.7  # k̂ above: unreliable at any feasible k (Vehtari et al. 2024, section 3.2.4)
WARN_SHARE = 0.01  # warn when more than this share of the datapoints is unreliable (see ``warning``)
SUBSAMPLES = (50, 25, 10, 5)  # numbers of disjoint batches whose spread gives the rate (calibrated_standard_error)
WORST = 10  # the datapoints with the largest k̂ listed in the summary
MIN_DIAGNOSED_K = 100  # the fewest samples with 2 in each of 50 batches (and a tail of M ≥ 5 weights to fit)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS = (Σ_j w_j)² / Σ_j w_j² of each row of log-weights (N, k), shape (N,): between 1 (one weight
    carries everything) and k (all equal). Kish's formula, computed from log-sum-exps so nothing overflows."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    """The Pareto k̂ of each row of log-weights (N, k), shape (N,), float64: the shape of a generalised
    Pareto distribution fitted to the M = min(k/5, 3√k) largest weights above the next largest
    (Vehtari et al. 2024, eq. 4 and section 3.1), by the estimator of Zhang & Stephens 2009 with
    Vehtari's weak prior (k̂ shrunk towards 1/2 with the weight of 10 observations).

    The fit is ArviZ's (``arviz_stats``' PSIS, from the group of the paper's authors; pure NumPy/SciPy):
    scipy.stats.genpareto.fit is a plain maximum-likelihood fit, without the prior, so more variable on a
    few hundred tail draws, and ~15× slower (an optimiser per datapoint: 76 against 4.5 ms at k = 5000).
    ArviZ too fits one datapoint at a time in a Python loop: 1-5 ms each at k = 5000, 10-50 s for 10,000
    test images (idle to busy 2-core CPU), against the minutes their weights take. Its ``psislw`` takes log-likelihoods in the
    convention of leave-one-out cross-validation, whose importance ratios are their reciprocals, hence
    the minus sign."""
    from arviz_stats.base import array_stats

    _, khat = array_stats.psislw(-log_w.detach().double().cpu().numpy(), r_eff=1.0)
    return torch.as_tensor(khat, dtype=torch.float64, device=log_w.device)


def subsample_spread(log_w: torch.Tensor) -> torch.Tensor:
    """s_i(n): for each B in SUBSAMPLES, the standard deviation over B disjoint batches of n = k // B samples of
    the batch estimates log 1/n Σ_(j in batch) w_j, from log-weights (N, k); shape (N, len(SUBSAMPLES))."""
    n, k = log_w.shape
    spread = []
    for b in SUBSAMPLES:
        size = k // b
        log_p_b = torch.logsumexp(log_w[:, :size * b].reshape(n, b, size), -1) - math.log(size)
        spread.append(log_p_b.std(-1))
    return torch.stack(spread, -1)


def convergence_rate(spread: torch.Tensor, k: int) -> float:
    """γ in sd(log p̂_n) ∝ n^γ, the least-squares slope of log sqrt(mean_i s_i(n)²) on log n over the sizes
    n = k // B (pooled over the N datapoints of ``subsample_spread``), within [-1/2, 0]: -1/2 where Var(w) is
    finite (the central limit theorem), nearer 0 for heavy tails, where sd(log p̂) falls much more slowly."""
    log_n = torch.tensor([math.log(k // b) for b in SUBSAMPLES], dtype=torch.float64)
    log_sd = spread.pow(2).mean(0).sqrt().log().cpu()
    centred = log_n - log_n.mean()
    return min(0.0, max(-0.5, ((centred * (log_sd - log_sd.mean())).sum() / centred.pow(2).sum()).item()))


def calibrated_standard_error(spread: torch.Tensor, k: int) -> torch.Tensor:
    """sd(log p̂_k), per datapoint, shape (N,): subsampling with an estimated rate of convergence (Bertail,
    Politis & Romano 1999, "On subsampling estimators with unknown rate of convergence", JASA). Each
    s_i(k/B) of ``subsample_spread`` extrapolated to k with the pooled rate γ (``convergence_rate``),
    s_i(k/B)·(k/(k/B))^γ, and the B estimates combined as exp of the mean of their logs weighted by their
    degrees of freedom ν = B - 1, each log first raised by 1/(2ν), its bias for a normal sample.

    Why not the delta method: it assumes the rate -1/2 and a variance the draws have seen, and heavy tails
    break both (replicates of k = 5000 on the pytorch-examples model spread as n^-0.14). Why not plain batch
    means with B = 10: their 9 degrees of freedom leave the ±1.96 s.e. interval at 92% coverage where the
    weights are light-tailed; pooled over SUBSAMPLES it has ~86."""
    log_n = torch.tensor([math.log(k // b) for b in SUBSAMPLES], dtype=spread.dtype, device=spread.device)
    dof = torch.tensor([b - 1.0 for b in SUBSAMPLES], dtype=spread.dtype, device=spread.device)
    log_se = spread.log() + 1 / (2 * dof) + convergence_rate(spread, k) * (math.log(k) - log_n)
    return torch.exp((log_se * dof).sum(-1) / dof.sum())


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
    """k̂, ESS and ``subsample_spread`` of each row of log-weights (N, k): what ``estimate`` needs of them."""
    return {"khat": pareto_khat(log_w), "ess": effective_sample_size(log_w), "spread": subsample_spread(log_w)}


def estimate(k: int, log_p: torch.Tensor, delta_se: torch.Tensor, khat: torch.Tensor | None = None,
             ess: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> ImportanceEstimate:
    """The ImportanceEstimate of N datapoints from their log p̂, delta-method standard errors and, where
    diagnosed, the ``diagnose_weights`` of their k log-weights (joined over the datapoints: the rate of
    ``calibrated_standard_error`` is pooled over all of them)."""
    if khat is None:
        return ImportanceEstimate(k, log_p, delta_se)
    se = calibrated_standard_error(spread, k)
    return ImportanceEstimate(k, log_p, delta_se, khat, ess, se, se.masked_fill(khat > RELIABLE_KHAT, math.nan))


def summary(e: ImportanceEstimate) -> dict:
    """The diagnostics of ``e`` over its N datapoints, for eval.json: the mean of log p̂ with its calibrated
    standard error sqrt(Σ_i se_i²)/N (every datapoint's, the unreliable ones' too: their share is given
    beside it) and the delta-method one for comparison; the mean and least ESS; the shares of datapoints
    with 0.5 < k̂ ≤ 0.7 and k̂ > 0.7, and ``reliable``: at most WARN_SHARE above 0.7 (otherwise the flagged
    estimates may be biased by more than any spread shows: the standard error is then no error bar); and
    the WORST datapoints by k̂ (index, k̂, ESS, log p̂). Undiagnosed
    (k < MIN_DIAGNOSED_K): the mean and the delta-method standard error, and a line saying so."""
    n = len(e.log_p)
    if e.khat is None:
        return {"k": e.k, "value": e.log_p.mean().item(), "standard_error": (e.delta_se.pow(2).sum().sqrt() / n).item(),
                "standard_error_method": f"delta method: k < {MIN_DIAGNOSED_K} samples are too few to diagnose"}
    worst = torch.argsort(e.khat, descending=True, stable=True)[:WORST].tolist()
    return {"k": e.k, "value": e.log_p.mean().item(),
            "standard_error": (e.se_all.pow(2).sum().sqrt() / n).item(),
            "standard_error_method": f"subsampling with an estimated rate, B = {SUBSAMPLES} batches",
            "delta_method_standard_error": (e.delta_se.pow(2).sum().sqrt() / n).item(),
            "ess_mean": e.ess.mean().item(), "ess_min": e.ess.min().item(),
            "khat_share_above_0.7": (share := (e.khat > RELIABLE_KHAT).double().mean().item()),
            "reliable": share <= WARN_SHARE,
            "khat_share_0.5_to_0.7": ((e.khat > GOOD_KHAT) & (e.khat <= RELIABLE_KHAT)).double().mean().item(),
            "khat_worst": [{"index": i, "khat": e.khat[i].item(), "ess": e.ess[i].item(), "log_p": e.log_p[i].item()}
                           for i in worst]}


def warning(s: dict) -> str | None:
    """One line when more than WARN_SHARE (1%) of the datapoints have k̂ > 0.7, else None. 1%: a flagged
    estimate may be off by nats that no standard error captures (typically low: the draws missed the tail);
    at 1% of the datapoints off by up to 5 nats the mean moves by ≤ 0.05, below the ~0.1-nat differences
    that tables such as Burda et al.'s separate; beyond it, it may not."""
    share = s.get("khat_share_above_0.7", 0.0)
    if share <= WARN_SHARE:
        return None
    return (f"{100 * share:.1f}% of the datapoints have Pareto k̂ > {RELIABLE_KHAT}: their importance weights are too "
            f"heavy-tailed for any feasible k (PSIS asks for > 10^(1/(1-k̂)) samples: 10^5 at k̂ = 0.8), so log p(x) "
            f"and its standard error are unreliable there; a proposal q(z|x) closer to the posterior fixes this")
