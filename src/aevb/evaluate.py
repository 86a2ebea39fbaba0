"""Honest evaluation of a trained model: ELBO by estimators A and B, IWAE bounds, the
importance-sampled log-likelihood with its Monte Carlo standard error, and the diagnostics of
posterior collapse (KL per latent dimension, active units).

The k importance samples of many datapoints go through the decoder as one batched pass, chunked so
that one pass stays under a memory budget; nothing loops over datapoints in Python. The budget is
kept by measuring, not guessing: the peak memory of a small probe pass is measured once per model and
data shape (three probe sizes give the bytes per sample, per datapoint and fixed), and the chunks are
sized from that.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass

import torch
from torch.distributions import (Distribution, Independent, MixtureSameFamily, MultivariateNormal, Normal,
                                 kl_divergence)

from .objectives import bound, log_weights
from .errors import ConfigError

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes for one decoder pass
# On the CPU a pass above this runs slower, not faster: its tensors exceed the allocator's mmap
# threshold, so every pass maps fresh pages and faults them in (measured on the pytorch-examples VAE:
# 120k samples/s at 16-64 MiB, 72k at 512 MiB with a third of the time in the kernel). GPUs keep freed
# memory in PyTorch's caching allocator and get the whole budget.
CPU_PASS_BYTES = 64 * 2**20
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2: a unit is active if Cov_x(E_q[z_d]) > 10^-2


# ---------------------------------------------------------------------------------------------
# the memory budget of one decoder pass


@dataclass
class PassCost:
    """Bytes one importance-sampling pass needs: ``per_sample`` × (datapoints × samples)
    + ``per_datapoint`` × datapoints + ``fixed``. ``measured`` is False where the device gave no
    allocation record and the numbers are the conservative estimate of ``estimated_cost``."""

    per_sample: float
    per_datapoint: float
    fixed: float
    measured: bool

    def bytes(self, batch: int, samples: int) -> float:
        return self.per_sample * batch * samples + self.per_datapoint * batch + self.fixed


def _pass(model, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder pass of importance_sampled: log Σ w and log Σ w² over ``samples`` draws, per datapoint."""
    lw = (model.log_weights(x, samples) if hasattr(model, "log_weights") else log_weights(model, x, samples)).double()
    return torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to the null device for a while: the profiler's C++ library logs a line at
    every start and stop, and reads its log level only when torch is loaded."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above what was allocated before; None
    where this device keeps no record. CUDA: the caching allocator's peak statistics; CPU: the
    allocation and free events of the autograd profiler, summed in time order."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    try:
        with _quiet_stderr(), torch.autograd.profiler.profile(profile_memory=True) as prof:
            out = fn()  # noqa: F841  (held until the events are read, so its frees do not count)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    except (AttributeError, RuntimeError):  # a torch without this record, or a profiler already running
        return None
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


def estimated_cost(model) -> PassCost:
    """A conservative guess where nothing can be measured: 8 decoder outputs per sample, 8 inputs per datapoint."""
    out = 4 * math.prod(model.x_shape) * getattr(getattr(model, "likelihood", None), "n_heads", 1)
    return PassCost(8 * out, 8 * 4 * math.prod(model.x_shape), 0, measured=False)


_COSTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(datapoint shape, dtype, device): PassCost}


@torch.no_grad()
def pass_cost(model, x: torch.Tensor, probe: int = 64) -> PassCost:
    """Measure the memory of one pass at (1 datapoint, probe samples), (1, 2·probe) and (2, probe)
    and solve for the bytes per sample, per datapoint and fixed. Allocation is deterministic, so
    three probes pin the linear model down; a pass of a million samples costs what it predicts.
    Remembered per model and datapoint shape (the weights' values do not change the memory)."""
    key = (tuple(x.shape[1:]), x.dtype, str(x.device), probe)
    try:
        return _COSTS[model][key]
    except (KeyError, TypeError):
        pass
    cost = _measure_cost(model, x, probe)
    try:
        _COSTS.setdefault(model, {})[key] = cost
    except TypeError:  # a model that cannot be weakly referenced is measured every time
        pass
    return cost


def _measure_cost(model, x: torch.Tensor, probe: int) -> PassCost:
    model.eval()
    x2 = x[:2] if len(x) >= 2 else x[:1].repeat(2, *[1] * (x.dim() - 1))
    p11, p12, p21 = (peak_bytes(lambda: _pass(model, xp, s), x.device)
                     for xp, s in ((x2[:1], probe), (x2[:1], 2 * probe), (x2, probe)))
    if None in (p11, p12, p21) or p12 <= p11:
        return estimated_cost(model)
    per_sample = (p12 - p11) / probe
    per_datapoint = max(0.0, p21 - p11 - per_sample * probe)
    fixed = max(0.0, p11 - per_sample * probe - per_datapoint)
    return PassCost(per_sample, per_datapoint, fixed, measured=True)


def pass_budget(max_memory: int, device) -> int:
    """The bytes one pass may use: max_memory, and on the CPU at most CPU_PASS_BYTES (faster there)."""
    return min(max_memory, CPU_PASS_BYTES) if torch.device(device).type == "cpu" else max_memory


def chunk_sizes(cost: PassCost, k: int, n: int, max_memory: int) -> tuple[int, int]:
    """(datapoints per pass, samples per pass) with cost.bytes(datapoints, samples) ≤ max_memory:
    all k samples of as many datapoints as fit, or, where one datapoint's k samples do not fit,
    as many samples of one datapoint as fit."""
    room = max_memory - cost.fixed
    if room < cost.per_sample + cost.per_datapoint:
        need = cost.per_sample + cost.per_datapoint + cost.fixed
        raise ConfigError(f"--max-memory {max_memory / 2**20:.3g} MiB is below what one decoder pass of a single "
                          f"sample needs ({need / 2**20:.3g} MiB); raise it")
    batch = int(room // (cost.per_sample * k + cost.per_datapoint))
    if batch >= 1:
        return min(batch, n), k
    return 1, min(k, int((room - cost.per_datapoint) // cost.per_sample))


@torch.no_grad()
def importance_sampled(model, x: torch.Tensor, k: int, max_memory: int = DEFAULT_MAX_MEMORY,
                       cost: PassCost | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p̂(x) = log 1/k Σ_j p(x, z_j)/q(z_j|x), z_j ~ q(z|x) (Burda et al. 2015, eq. 8), and its
    delta-method standard error sqrt(Var(w)/k)/E[w], per datapoint: two float64 tensors of shape (N,).

    Streams over chunks of samples with running log-sum-exps of w and w², so memory does not grow
    with k; one pass (datapoints × samples through the decoder) stays within ``max_memory`` bytes
    (and within CPU_PASS_BYTES on the CPU, where larger passes are slower).
    ``cost`` is ``pass_cost(model, x)``, measured here when not given; ``progress`` shows a bar.
    """
    from tqdm.auto import tqdm

    model.eval()
    cost = cost or pass_cost(model, x)
    batch, chunk = chunk_sizes(cost, k, len(x), pass_budget(max_memory, x.device))
    log_p, se = [], []
    bar = tqdm(total=len(x), desc=f"importance sampling, k={k}", unit="datapoint", disable=not progress,
               leave=False, mininterval=1.0)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        lse1 = torch.full((len(xb),), -math.inf, device=x.device, dtype=torch.float64)
        lse2 = lse1.clone()
        for start in range(0, k, chunk):
            s1, s2 = _pass(model, xb, min(chunk, k - start))
            lse1, lse2 = torch.logaddexp(lse1, s1), torch.logaddexp(lse2, s2)
        log_mean_w = lse1 - math.log(k)
        rel_var = torch.expm1(lse2 - math.log(k) - 2 * log_mean_w).clamp(min=0)  # Var(w)/E[w]²
        log_p.append(log_mean_w)
        se.append((rel_var / k).sqrt())
        bar.update(len(xb))
    bar.close()
    return torch.cat(log_p), torch.cat(se)


# ---------------------------------------------------------------------------------------------
# the ELBO


@torch.no_grad()
def elbo_terms(model, x: torch.Tensor, estimator: str, samples: int = 1, batch_size: int = 1000) -> dict[str, float]:
    """Means over x of the ELBO, its reconstruction term and its KL under one registered estimator."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        t = bound(model, x[i:i + batch_size], estimator, samples)
        sums += torch.stack([t.elbo.sum(), t.log_px_z.sum(), t.kl.sum()]).double()
    elbo, rec, kl = (sums / len(x)).tolist()
    return {"elbo": elbo, "log_px_z": rec, "kl": kl}


# ---------------------------------------------------------------------------------------------
# diagnostics: KL per dimension, active units, collapse


def marginals(d: Distribution) -> Distribution | None:
    """The one-dimensional marginals of a distribution over R^D as one distribution with batch
    shape (..., D) and event shape (): the base of ``Independent(·, 1)``, N(μ_d, Σ_dd) of a
    multivariate normal; None where this has no closed form (mixtures: see marginal_log_prob)."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    if isinstance(d, MultivariateNormal):
        return Normal(d.loc, d.variance.sqrt(), validate_args=False)
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
    if hasattr(model, "embed"):
        return model.embed(x, batch_size)
    return torch.cat([model.encode(x[i:i + batch_size]).mean for i in range(0, len(x), batch_size)])


def activity_of(means: torch.Tensor) -> torch.Tensor:
    """A_d = Cov_x(E_q[z_d|x]) from posterior means of shape (N, latent_dim): the variance over the
    data of each (Burda et al. 2015, section 5.2), shape (latent_dim,), float64."""
    means = means.double()
    return means.var(0, unbiased=False) if len(means) > 1 else torch.zeros(means.shape[1], dtype=torch.float64)


@torch.no_grad()
def activity(model, x: torch.Tensor) -> torch.Tensor:
    """A_d of ``model``'s posterior means of ``x`` (``activity_of``)."""
    return activity_of(posterior_means(model, x))


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
    """KL per dimension, the activity of each dimension, the active-unit count and the collapse warning."""
    a = activity(model, x)
    active = int((a > threshold).sum())
    kl = kl_per_dimension(model, x)
    return {"latent_dim": len(a), "active_units": active, "threshold": threshold, "activity": a.tolist(),
            "kl_per_dim": None if kl is None else kl["kl"],
            "kl_per_dim_standard_error": None if kl is None else kl["standard_error"],
            "kl_method": None if kl is None else kl["method"],
            "warning": collapse_warning(active, len(a))}


@torch.no_grad()
def class_metrics(model, x: torch.Tensor, y: torch.Tensor, samples: int = 50, batch_size: int = 100) -> dict:
    """For a semi-supervised model with labelled test data: the accuracy of its classifier q(y|x),
    and for a model with a generative class (M2) the accuracy of argmax_y p(x, y), the class its
    generative model gives x (importance-sampled, ``samples`` draws per class), with the agreement
    of the two. A classifier far better than its generative model says the labels, not the
    unlabelled bound, taught it: the generative class y is not the label."""
    from .models import predict

    y, predicted = y.cpu(), predict(model, x).cpu()
    out = {"classifier_accuracy": (predicted == y).double().mean().item()}
    if hasattr(model, "class_log_joint"):
        joint = torch.cat([model.class_log_joint(x[i:i + batch_size], samples).argmax(-1)
                           for i in range(0, len(x), batch_size)]).cpu()
        out |= {"generative_accuracy": (joint == y).double().mean().item(),
                "agreement": (joint == predicted).double().mean().item(), "samples": samples}
    return out


# ---------------------------------------------------------------------------------------------
# everything together


def evaluate(model, x: torch.Tensor, ks=(1, 5, 50, 5000), samples: int = 1,
             max_memory: int = DEFAULT_MAX_MEMORY, progress: bool = False, y: torch.Tensor | None = None) -> dict:
    """Test-set ELBO (A, and B where a closed-form KL exists), the IWAE bound for every k, the IS
    log-likelihood at the largest k with its standard error, in nats per datapoint and bits/dim,
    the diagnostics (KL per dimension, active units, a collapse warning) and, for a
    semi-supervised model given the labels ``y``, its class metrics."""
    from .models import is_semi_supervised

    started = time.perf_counter()
    result = {"n": len(x), "elbo_A": elbo_terms(model, x, "A", samples)}
    if model.has_analytic_kl():
        result["elbo_B"] = elbo_terms(model, x, "B", samples)
    cost = pass_cost(model, x)
    result["iwae"] = {}
    for k in sorted(ks):
        log_p, se = importance_sampled(model, x, k, max_memory, cost, progress)
        result["iwae"][str(k)] = log_p.mean().item()
    k_max = max(ks)
    batch, chunk = chunk_sizes(cost, k_max, len(x), pass_budget(max_memory, x.device))
    result["log_likelihood"] = {"k": k_max, "value": log_p.mean().item(),
                                "standard_error": (se.pow(2).sum().sqrt() / len(x)).item()}
    result["bits_per_dim"] = -result["log_likelihood"]["value"] / (math.prod(model.x_shape) * math.log(2))
    result["diagnostics"] = diagnostics(model, x)
    if y is not None and is_semi_supervised(model):
        result["classes"] = class_metrics(model, x, y)
    result["decoder_pass"] = {"datapoints": batch, "samples": chunk, "max_memory": max_memory,
                              "bytes": cost.bytes(batch, chunk), "measured": cost.measured}
    result["seconds"] = time.perf_counter() - started
    return result


def format_evaluation(r: dict) -> str:
    """The result of ``evaluate`` as a plain-text table, the diagnostics and any warning."""
    rows = [("ELBO (estimator A)", r["elbo_A"]["elbo"])]
    if "elbo_B" in r:
        rows.append(("ELBO (estimator B)", r["elbo_B"]["elbo"]))
    key = "elbo_B" if "elbo_B" in r else "elbo_A"
    rows += [("  reconstruction E[log p(x|z)]", r[key]["log_px_z"]), ("  KL(q(z|x) || p(z))", r[key]["kl"])]
    rows += [(f"IWAE bound, k={k}", v) for k, v in r["iwae"].items()]
    ll = r["log_likelihood"]
    lines = [f"test set: {r['n']} datapoints, nats per datapoint"] + [f"{name:<34}{v:>12.3f}" for name, v in rows]
    lines.append(f"{'log p(x), importance sampled':<34}{ll['value']:>12.3f}  ± {ll['standard_error']:.3f} (k={ll['k']})")
    lines.append(f"{'bits/dim':<34}{r['bits_per_dim']:>12.4f}")
    c = r.get("classes")
    if c:
        lines.append(f"{'accuracy of the classifier q(y|x)':<34}{c['classifier_accuracy']:>12.4f}")
        if "generative_accuracy" in c:
            lines.append(f"{'accuracy of argmax_y p(x,y)':<34}{c['generative_accuracy']:>12.4f}  (S={c['samples']} per class)")
            lines.append(f"{'  agreement with q(y|x)':<34}{c['agreement']:>12.4f}")
    d = r.get("diagnostics")
    if d:
        lines.append(f"{'active units (Cov_x E[z_d] > ' + str(d['threshold']) + ')':<34}{d['active_units']:>12d}  of {d['latent_dim']}")
        lines += format_dimensions(d)
        if d["warning"]:
            lines.append(f"warning: {d['warning']}")
    if "seconds" in r:
        lines.append(f"evaluated in {r['seconds']:.1f} s")
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
        lines.append(f"  {'z' + str(i + 1):>5}{(kl[i] if kl is not None else float('nan')):>12.3f}{a:>15.4g}  "
                     f"{'yes' if a > d['threshold'] else 'no'}")
    return lines
