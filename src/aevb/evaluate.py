"""Honest evaluation of a trained model: ELBO by estimators A and B, IWAE bounds, and the
importance-sampled log-likelihood with its Monte Carlo standard error.

The k importance samples of many datapoints go through the decoder as one batched pass, chunked so
that one pass stays under a memory budget; nothing loops over datapoints in Python.
"""
from __future__ import annotations

import math

import torch

from .objectives import log_weights, sgvb_a, sgvb_b

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes for one decoder pass


def chunk_sizes(model, k: int, max_memory: int) -> tuple[int, int]:
    """(datapoints per batch, samples per chunk) so that samples × datapoints decoder outputs, with
    room for activations (×8 of the output), fit ``max_memory`` bytes."""
    per_sample = 8 * 4 * math.prod(model.x_shape) * model.likelihood.n_heads
    budget = max(1, max_memory // per_sample)  # samples × datapoints per pass
    batch = max(1, min(1000, budget // min(k, budget)))
    return batch, max(1, min(k, budget // batch))


@torch.no_grad()
def importance_sampled(model, x: torch.Tensor, k: int, max_memory: int = DEFAULT_MAX_MEMORY):
    """log p̂(x) = log 1/k Σ_j p(x, z_j)/q(z_j|x), z_j ~ q(z|x) (Burda et al. 2015, eq. 8), and its
    delta-method standard error sqrt(Var(w)/k)/E[w], per datapoint: two tensors of shape (N,).

    Streams over chunks of samples with running log-sum-exps of w and w², so memory does not grow with k.
    """
    model.eval()
    batch, chunk = chunk_sizes(model, k, max_memory)
    log_p, se = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        lse1 = torch.full((len(xb),), -math.inf, device=x.device, dtype=torch.float64)
        lse2 = lse1.clone()
        for start in range(0, k, chunk):
            lw = log_weights(model, xb, min(chunk, k - start)).double()
            lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        log_mean_w = lse1 - math.log(k)
        rel_var = torch.expm1(lse2 - math.log(k) - 2 * log_mean_w).clamp(min=0)  # Var(w)/E[w]²
        log_p.append(log_mean_w)
        se.append((rel_var / k).sqrt())
    return torch.cat(log_p), torch.cat(se)


@torch.no_grad()
def elbo_terms(model, x: torch.Tensor, estimator, samples: int = 1, batch_size: int = 1000) -> dict[str, float]:
    """Means over x of the ELBO, its reconstruction term and its KL under one estimator."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        t = estimator(model, x[i:i + batch_size], samples)
        sums += torch.stack([t.elbo.sum(), t.log_px_z.sum(), t.kl.sum()]).double()
    elbo, rec, kl = (sums / len(x)).tolist()
    return {"elbo": elbo, "log_px_z": rec, "kl": kl}


def evaluate(model, x: torch.Tensor, ks=(1, 5, 50, 5000), samples: int = 1,
             max_memory: int = DEFAULT_MAX_MEMORY) -> dict:
    """Test-set ELBO (A, and B where a closed-form KL exists), the IWAE bound for every k, and the
    IS log-likelihood at the largest k with its standard error, in nats per datapoint and bits/dim."""
    result = {"n": len(x), "elbo_A": elbo_terms(model, x, sgvb_a, samples)}
    if model.has_analytic_kl():
        result["elbo_B"] = elbo_terms(model, x, sgvb_b, samples)
    result["iwae"] = {}
    for k in sorted(ks):
        log_p, se = importance_sampled(model, x, k, max_memory)
        result["iwae"][str(k)] = log_p.mean().item()
    k_max = max(ks)
    result["log_likelihood"] = {"k": k_max, "value": log_p.mean().item(),
                                "standard_error": (se.pow(2).sum().sqrt() / len(x)).item()}
    result["bits_per_dim"] = -result["log_likelihood"]["value"] / (math.prod(model.x_shape) * math.log(2))
    return result
