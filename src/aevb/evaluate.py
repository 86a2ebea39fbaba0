"""Honest evaluation of a trained model: ELBO by estimators A and B, IWAE bounds, the
importance-sampled log-likelihood with its Monte Carlo standard error, and the diagnostics of
posterior collapse (KL per latent dimension, active units).

The k importance samples of many datapoints go through the decoder as one batched pass, chunked so
that one pass stays under a memory budget (measured, not guessed: ``aevb.memory``); nothing loops
over datapoints in Python.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch.distributions import (Beta, Dirichlet, Distribution, Independent, MixtureSameFamily, MultivariateNormal,
                                 Normal, constraints, kl_divergence)

from .compiling import compiled, compiler_missing, failure
from .inference.hmc_likelihood import MIXED_RHAT, hmc_log_likelihood
from .inference.importance import MIN_DIAGNOSED_K, ImportanceEstimate, diagnose_weights, estimate, summary
from .inference.importance import warning as importance_warning
from .memory import DEFAULT_MAX_MEMORY, PassCost, chunk_sizes, pass_budget, pass_cost
from .models import ClassLatent, Classifier, conditioned, reported_terms
from .objectives import Estimator
from .precision import evaluated_in

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2: a unit is active if Cov_x(E_q[z_d]) > 10^-2
ON_SIMPLEX = ("not counted for proportions on the simplex: Burda et al.'s threshold 0.01 is on the scale of a "
              "N(0, 1) prior, and a proportion's variance is at most 1/4")


# ---------------------------------------------------------------------------------------------
# the importance-sampled log-likelihood


def _pass(model, x: torch.Tensor, samples: int) -> torch.Tensor:
    """One decoder pass of importance_estimate: the log-weights of ``samples`` draws, (samples, N), float64."""
    return model.log_weights(x, samples).double()


def sampling_pass(model, x: torch.Tensor, compile: bool) -> tuple[Callable, str | None]:
    """The importance-sampling pass to use: compiled (one fused kernel for the likelihood and its
    sums, on a C++ compiler or triton) where asked and possible, else eager; and why not, if not."""
    if not compile:
        return _pass, None
    missing = compiler_missing(x.device)
    if missing:
        return _pass, f"--compile needs {missing} on {x.device.type}; evaluated without compiling"
    run = compiled(_pass)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=range(torch.cuda.device_count()) if x.is_cuda else []):
            run(model, x[:1], 2)
    except Exception as e:  # noqa: BLE001  (any failure of the compiler stack: evaluate eagerly)
        return _pass, f"--compile failed here ({failure(e)}); evaluated without compiling"
    return run, None


def sampling_cost(model, x: torch.Tensor) -> PassCost:
    """The memory of one importance-sampling pass of ``model`` on datapoints like ``x``, measured once."""
    return pass_cost(model, x, _pass)


@torch.no_grad()
def importance_estimate(model, x: torch.Tensor, k: int, max_memory: int = DEFAULT_MAX_MEMORY,
                        cost: PassCost | None = None, progress: bool = False, run_pass: Callable = _pass,
                        diagnose: bool = True) -> ImportanceEstimate:
    """log p̂(x) = log 1/k Σ_j p(x, z_j)/q(z_j|x), z_j ~ q(z|x) (Burda et al. 2015, eq. 8), per datapoint, with
    its delta-method standard error sqrt(Var(w)/k)/E[w] and, with ``diagnose``, the Pareto k̂, the effective
    sample size and the calibrated standard error of aevb.inference.importance.

    Streams over chunks of samples with running log-sum-exps of w and w²; one pass (datapoints × samples
    through the decoder) stays within ``max_memory`` bytes (and within CPU_PASS_BYTES on the CPU, where
    larger passes are slower). Diagnosing keeps the k log-weights of the datapoints in flight, 8·k bytes
    each: a small fraction of a pass, whose every sample costs far more (the decoder's output for it), and
    8 MB a datapoint at k = 10⁶. ``cost`` is ``sampling_cost(model, x)``, measured here when not given;
    ``progress`` shows a bar; ``run_pass`` is the pass (``sampling_pass``: eager or compiled).
    """
    from tqdm.auto import tqdm

    model.eval()
    cost = cost or sampling_cost(model, x)
    batch, chunk = chunk_sizes(cost, k, len(x), pass_budget(max_memory, x.device))
    log_p, se, diagnosed = [], [], []
    bar = tqdm(total=len(x), desc=f"importance sampling, k={k}", unit="datapoint", disable=not progress,
               leave=False, mininterval=1.0)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        lse1 = torch.full((len(xb),), -math.inf, device=x.device, dtype=torch.float64)
        lse2 = lse1.clone()
        kept = []
        for start in range(0, k, chunk):
            lw = run_pass(model, xb, min(chunk, k - start))
            lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
            if diagnose:
                kept.append(lw)
        log_mean_w = lse1 - math.log(k)
        rel_var = torch.expm1(lse2 - math.log(k) - 2 * log_mean_w).clamp(min=0)  # Var(w)/E[w]²
        log_p.append(log_mean_w)
        se.append((rel_var / k).sqrt())
        if diagnose:
            diagnosed.append(diagnose_weights(torch.cat(kept).T))
        bar.update(len(xb))
    bar.close()
    joined = {name: torch.cat([d[name] for d in diagnosed]) for name in diagnosed[0]} if diagnose else {}
    return estimate(k, torch.cat(log_p), torch.cat(se), **joined)


def importance_sampled(model, x: torch.Tensor, k: int, max_memory: int = DEFAULT_MAX_MEMORY,
                       cost: PassCost | None = None, progress: bool = False,
                       run_pass: Callable = _pass) -> tuple[torch.Tensor, torch.Tensor]:
    """log p̂(x) and its delta-method standard error per datapoint, two float64 tensors of shape (N,):
    ``importance_estimate`` without its diagnostics."""
    e = importance_estimate(model, x, k, max_memory, cost, progress, run_pass, diagnose=False)
    return e.log_p, e.delta_se


# ---------------------------------------------------------------------------------------------
# the ELBO


@torch.no_grad()
def elbo_terms(model, x: torch.Tensor, estimator: Estimator, batch_size: int = 1000,
               s: torch.Tensor | None = None) -> dict[str, float]:
    """Means over x of the bound's terms under ``estimator``: the ELBO, its reconstruction term, its
    KL, and the KL of the class where the model has a latent class (``reported_terms``); ``s``: the
    batch of each datapoint, for a model conditioned on it (``models.conditioned``)."""
    model.eval()
    names = reported_terms(model)
    sums = torch.zeros(len(names), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        t = conditioned(model, None if s is None else s[i:i + batch_size]).elbo(x[i:i + batch_size], estimator)
        sums += torch.stack([getattr(t, name).sum() for name in names]).double()
    return dict(zip(names, (sums / len(x)).tolist()))


# ---------------------------------------------------------------------------------------------
# diagnostics: KL per dimension, active units, collapse


def marginals(d: Distribution) -> Distribution | None:
    """The one-dimensional marginals of a distribution over R^D as one distribution with batch
    shape (..., D) and event shape (): the base of ``Independent(·, 1)``, N(μ_d, Σ_dd) of a
    multivariate normal, Beta(α_d, α_0 - α_d) of a Dirichlet; None where this has no closed form (mixtures:
    see marginal_log_prob; the logistic normal)."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    if isinstance(d, MultivariateNormal):
        return Normal(d.loc, d.variance.sqrt(), validate_args=False)
    if isinstance(d, Dirichlet):
        alpha = d.concentration
        return Beta(alpha, alpha.sum(-1, keepdim=True) - alpha, validate_args=False)
    return None


def marginal_log_prob(d: Distribution, z: torch.Tensor) -> torch.Tensor | None:
    """log p(z_d) of each coordinate of z (..., D) under d's one-dimensional marginals, shape (..., D):
    the marginals above, and for a mixture Σ_k π_k p_k the mixture of its components' marginals."""
    m = marginals(d)
    if m is not None:
        return m.log_prob(z)
    if isinstance(d, MixtureSameFamily):
        components = marginals(d.component_distribution)  # batch (..., K, D)
        if components is None:
            return None
        log_pi = torch.log_softmax(d.mixture_distribution.logits, -1).unsqueeze(-1)  # (..., K, 1)
        return torch.logsumexp(components.log_prob(z.unsqueeze(-2)) + log_pi, -2)
    return None


@torch.no_grad()
def kl_per_dimension(model, x: torch.Tensor, method: str = "auto", samples: int = 16,
                     batch_size: int = 1000) -> dict | None:
    """KL(q(z_d|x) ‖ p(z_d)) of the one-dimensional marginals, averaged over x: where q and p
    factorise over dimensions these are the terms of the full KL and sum to it. In closed form where
    one is registered for the marginals (``method`` "auto" or "closed"), otherwise Monte Carlo with
    ``samples`` draws per datapoint, E_q[log q(z_d|x) - log p(z_d)], with its standard error.
    Returns {"kl": [D floats], "standard_error": [D floats] or None, "method": str}, or None where
    the marginals of q or p are unknown."""
    model.eval()
    prior = model.prior()
    sums, squares, n = 0.0, 0.0, 0
    closed = method in ("auto", "closed")
    for i in range(0, len(x), batch_size):
        q = model.encode(x[i:i + batch_size])
        kl = None
        if closed:
            qm, pm = marginals(q), marginals(prior)
            try:
                kl = kl_divergence(qm, pm) if qm is not None and pm is not None else None
            except NotImplementedError:
                kl = None
            if kl is None:
                if method == "closed":
                    raise ValueError(f"no closed-form KL for the marginals of {type(q).__name__} and {type(prior).__name__}")
                closed = False
        if kl is None:
            z = q.sample((samples,))
            lq, lp = marginal_log_prob(q, z), marginal_log_prob(prior, z)
            if lq is None or lp is None:
                return None
            kl = (lq - lp).mean(0)
            squares = squares + ((lq - lp).var(0) / samples).sum(0).double()  # MC variance of each datapoint's mean
        sums = sums + kl.double().sum(0)
        n += len(kl)
    mean = sums / n
    se = (squares.sqrt() / n).tolist() if not closed else None
    return {"kl": mean.tolist(), "standard_error": se, "method": "closed form" if closed else f"Monte Carlo, {samples} samples"}


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z|x], shape (N, latent_dim)."""
    model.eval()
    return model.embed(x, batch_size)


def activity_of(means: torch.Tensor) -> torch.Tensor:
    """A_d = Cov_x(E_q[z_d|x]) from posterior means of shape (N, latent_dim): the variance over the
    data of each (Burda et al. 2015, section 5.2), shape (latent_dim,), float64."""
    means = means.double()
    return means.var(0, unbiased=False) if len(means) > 1 else torch.zeros(means.shape[1], dtype=torch.float64)


@torch.no_grad()
def activity(model, x: torch.Tensor) -> torch.Tensor:
    """A_d of ``model``'s posterior means of ``x`` (``activity_of``)."""
    return activity_of(posterior_means(model, x))


def on_simplex(model) -> bool:
    """Whether the model's latent z is a vector of proportions on the simplex (whose active units are not
    counted: ON_SIMPLEX)."""
    return model.prior().support is constraints.simplex


def active_units(model, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """How many latent dimensions are active: A_d > threshold (0.01, Burda et al. 2015)."""
    return int((activity(model, x) > threshold).sum())


def collapse_warning(active: int, latent_dim: int) -> str | None:
    """A plain-words warning when no or few latent dimensions are active, else None. Few: fewer
    than max(2, 10% of the dimensions), and never all of them."""
    few = min(latent_dim, max(2, math.ceil(latent_dim / 10)))
    if active >= few:
        return None
    fixes = ("the decoder ignores z for most inputs. Try KL annealing (--beta-schedule linear or cyclical), "
             "β < 1, fewer latent dimensions or a weaker decoder")
    if active == 0:
        return f"posterior collapse: none of the {latent_dim} latent dimensions is active (Cov_x E[z_d] ≤ {ACTIVE_THRESHOLD}); {fixes}"
    return (f"posterior collapse: only {active} of {latent_dim} latent dimensions "
            f"{'is' if active == 1 else 'are'} active (Cov_x E[z_d] > {ACTIVE_THRESHOLD}); {fixes}")


def diagnostics(model, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """KL per dimension, the activity of each dimension, the active-unit count and the collapse warning (the
    count and the warning None for proportions on the simplex: ``on_simplex``)."""
    a = activity(model, x)
    kl = kl_per_dimension(model, x)
    counted = not on_simplex(model)
    active = int((a > threshold).sum()) if counted else None
    per_layer = [int((layer > threshold).sum()) for layer in a.split(list(model.latent_layers))] if counted else None
    return {"latent_dim": len(a), "active_units": active, "active_units_per_layer": per_layer, "threshold": threshold,
            "activity": a.tolist(),
            "kl_per_dim": None if kl is None else kl["kl"],
            "kl_per_dim_standard_error": None if kl is None else kl["standard_error"],
            "kl_method": None if kl is None else kl["method"],
            "warning": collapse_warning(active, len(a)) if counted else None}


@torch.no_grad()
def class_metrics(model, x: torch.Tensor, y: torch.Tensor, samples: int = 50, batch_size: int = 100) -> dict:
    """For a semi-supervised model with labelled test data: the accuracy of its classifier q(y|x),
    and for a model with a generative class (M2) the accuracy of argmax_y p(x, y), the class its
    generative model gives x (importance-sampled, ``samples`` draws per class), with the agreement
    of the two. A classifier far better than its generative model says the labels, not the
    unlabelled bound, taught it: the generative class y is not the label."""
    y, predicted = y.cpu(), model.predict(x).cpu()
    out = {"classifier_accuracy": (predicted == y).double().mean().item()}
    if isinstance(model, ClassLatent):
        joint = torch.cat([model.class_log_joint(x[i:i + batch_size], samples).argmax(-1)
                           for i in range(0, len(x), batch_size)]).cpu()
        out |= {"generative_accuracy": (joint == y).double().mean().item(),
                "agreement": (joint == predicted).double().mean().item(), "samples": samples}
    return out


# ---------------------------------------------------------------------------------------------
# everything together


def evaluate(model, x: torch.Tensor, ks=(1, 5, 50, 5000), samples: int = 1,
             max_memory: int = DEFAULT_MAX_MEMORY, progress: bool = False, y: torch.Tensor | None = None,
             precision: str = "32", compile: bool = False, hmc_samples: int = 0) -> dict:
    """Test-set ELBO (A, and B where a closed-form KL exists), the IWAE bound for every k, the IS
    log-likelihood at the largest k with its calibrated standard error and its diagnostics (ESS, Pareto k̂:
    aevb.inference.importance.summary), in nats per datapoint and bits/dim,
    the diagnostics (KL per dimension, active units, a collapse warning) and, for a
    semi-supervised model given the labels ``y``, its class metrics. In fp32 unless ``precision``
    says otherwise (the networks alone then run in bf16 or fp16; see aevb.precision); with
    ``compile``, the importance-sampling passes compiled (``result["compile"]`` says if not, and why).
    With ``hmc_samples`` L > 0, also ``result["hmc_log_likelihood"]``: log p(x) by the estimator of Kingma &
    Welling 2013, appendix D (aevb.inference.hmc_likelihood, L samples per chain; in fp32, since its
    acceptance tests compare energies), which needs no encoder."""
    with evaluated_in(model, precision, x.device):
        started = time.perf_counter()
        run_pass, not_compiled = sampling_pass(model, x, compile)
        result = {"n": len(x), "precision": precision, "compiled": run_pass is not _pass, "compile": not_compiled, "elbo_A": elbo_terms(model, x, Estimator("A", samples))}
        if model.has_analytic_kl():
            result["elbo_B"] = elbo_terms(model, x, Estimator("B", samples))
        cost = sampling_cost(model, x)
        result["iwae"] = {}
        k_max = max(ks)
        for k in sorted(ks):
            e = importance_estimate(model, x, k, max_memory, cost, progress, run_pass,
                                    diagnose=k == k_max and k >= MIN_DIAGNOSED_K)
            result["iwae"][str(k)] = e.log_p.mean().item()
        batch, chunk = chunk_sizes(cost, k_max, len(x), pass_budget(max_memory, x.device))
        result["log_likelihood"] = summary(e)
        result["bits_per_dim"] = -result["log_likelihood"]["value"] / (math.prod(model.x_shape) * math.log(2))
        result["diagnostics"] = diagnostics(model, x)
        if y is not None and isinstance(model, Classifier):
            result["classes"] = class_metrics(model, x, y)
        result["decoder_pass"] = {"datapoints": batch, "samples": chunk, "max_memory": max_memory,
                                  "bytes": cost.bytes(batch, chunk), "measured": cost.measured}
    if hmc_samples:
        result["hmc_log_likelihood"] = hmc_log_likelihood(model, x, hmc_samples).summary()
    result["seconds"] = time.perf_counter() - started
    return result


def format_evaluation(r: dict) -> str:
    """The result of ``evaluate`` as a plain-text table, the diagnostics and any warning."""
    rows = [("ELBO (estimator A)", r["elbo_A"]["elbo"])]
    if "elbo_B" in r:
        rows.append(("ELBO (estimator B)", r["elbo_B"]["elbo"]))
    key = "elbo_B" if "elbo_B" in r else "elbo_A"
    rows += [("  reconstruction E[log p(x|z)]", r[key]["log_px_z"]), ("  KL(q(z|x) || p(z))", r[key]["kl"])]
    if "kl_y" in r[key]:
        rows.append(("  KL(q(y|x) || p(y))", r[key]["kl_y"]))
    rows += [(f"IWAE bound, k={k}", v) for k, v in r["iwae"].items()]
    ll = r["log_likelihood"]
    lines = [f"test set: {r['n']} datapoints, nats per datapoint"] + [f"{name:<34}{v:>12.3f}" for name, v in rows]
    lines.append(f"{'log p(x), importance sampled':<34}{ll['value']:>12.3f}  ± {ll['standard_error']:.3f} (k={ll['k']}"
                 + ("; unreliable: see the warning)" if ll.get("reliable") is False else ")"))
    if "khat_share_above_0.7" in ll:
        lines.append(f"{'  s.e. by the delta method':<34}{'':>12}  ± {ll['delta_method_standard_error']:.3f}")
        lines.append(f"{'  ESS, mean and least':<34}{ll['ess_mean']:>12.1f}  {ll['ess_min']:.1f}")
        lines.append(f"{'  Pareto k̂ in (0.5, 0.7], > 0.7':<34}{100 * ll['khat_share_0.5_to_0.7']:>11.1f}%  "
                     f"{100 * ll['khat_share_above_0.7']:.1f}% of the datapoints")
    hmc = r.get("hmc_log_likelihood")
    if hmc:
        lines.append(f"{'log p(x), HMC (K&W 2013 app. D)':<34}{hmc['value']:>12.3f}  ± {hmc['standard_error']:.3f} "
                     f"(L={hmc['samples']}, {hmc['chains']} chains"
                     + (f"; unreliable: Pareto k̂ > 0.7 for {100 * hmc['khat_share_above_0.7']:.1f}%, chains unmixed "
                        f"(R̂ > {MIXED_RHAT}) for {100 * hmc[f'rhat_share_above_{MIXED_RHAT}']:.1f}% of the datapoints)"
                        if not hmc["reliable"] else ")"))
    lines.append(f"{'bits/dim':<34}{r['bits_per_dim']:>12.4f}")
    c = r.get("classes")
    if c:
        lines.append(f"{'accuracy of the classifier q(y|x)':<34}{c['classifier_accuracy']:>12.4f}")
        if "generative_accuracy" in c:
            lines.append(f"{'accuracy of argmax_y p(x,y)':<34}{c['generative_accuracy']:>12.4f}  (S={c['samples']} per class)")
            lines.append(f"{'  agreement with q(y|x)':<34}{c['agreement']:>12.4f}")
    d = r.get("diagnostics")
    if d:
        layers = d.get("active_units_per_layer") or []
        by_layer = f" (per layer {'+'.join(map(str, layers))})" if len(layers) > 1 else ""
        if d["active_units"] is None:
            lines.append(f"active units {ON_SIMPLEX}")
        else:
            lines.append(f"{'active units (Cov_x E[z_d] > ' + str(d['threshold']) + ')':<34}{d['active_units']:>12d}  "
                         f"of {d['latent_dim']}{by_layer}")
        lines += format_dimensions(d)
        if d["warning"]:
            lines.append(f"warning: {d['warning']}")
    if importance_warning(ll):
        lines.append(f"warning: {importance_warning(ll)}")
    if "seconds" in r:
        lines.append(f"evaluated in {r['seconds']:.1f} s, precision {r.get('precision', '32')}"
                     + (", compiled" if r.get("compiled") else ""))
    if r.get("compile"):
        lines.append(f"warning: {r['compile']}")
    return "\n".join(lines)


def format_dimensions(d: dict, limit: int = 32) -> list[str]:
    """One line per latent dimension (KL, activity, active), the ``limit`` with the largest KL where more."""
    kl = d["kl_per_dim"]
    order = list(range(d["latent_dim"]))
    if kl is not None:
        order.sort(key=lambda i: -kl[i])
    shown = sorted(order[:limit])
    title = f"per dimension ({'KL ' + d['kl_method'] if kl is not None else 'no KL per dimension for this model'})"
    if len(shown) < d["latent_dim"]:
        title += f", the {limit} of {d['latent_dim']} with the largest KL"
    lines = [title, f"  {'dim':>5}{'KL (nats)':>12}{'Cov_x E[z_d]':>15}  active"]
    for i in shown:
        a = d["activity"][i]
        verdict = "-" if d["active_units"] is None else "yes" if a > d["threshold"] else "no"
        lines.append(f"  {'z' + str(i + 1):>5}{(kl[i] if kl is not None else float('nan')):>12.3f}{a:>15.4g}  {verdict}")
    return lines
