"""Topic-model statistics of a model whose latent z lies on the simplex (topic proportions θ, as in ProdLDA,
Srivastava & Sutton 2017) and whose data are bags of words: each topic's words, the NPMI coherence of its top
words, and the held-out perplexity."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch.distributions import Multinomial, constraints

from .errors import DataError
from .evaluate import elbo_terms
from .models import DecodesLatent
from .objectives import Estimator

INSTALL = "pip install aevb[topics]"


def check_topic_model(model) -> None:
    """DataError unless ``model`` decodes a point θ of the simplex alone into a distribution over a vocabulary."""
    if not isinstance(model, DecodesLatent) or model.prior().support is not constraints.simplex:
        raise DataError("topics need a model that decodes topic proportions on the simplex: train --model vae with "
                        "--posterior logistic_normal or dirichlet (see configs/prodlda.toml)")
    if len(model.x_shape) != 1:
        raise DataError(f"topics need bags of words (documents × vocabulary), not data of shape {tuple(model.x_shape)}")


@torch.no_grad()
def topic_word_distributions(model) -> torch.Tensor:
    """(K, V): topic k's distribution over the vocabulary, the normalised mean of p(x | θ = e_k), the words of a
    document wholly of topic k (with ProdLDA's decoder, softmax(BN(B e_k)))."""
    check_topic_model(model)
    model.eval()
    p = next(model.parameters())
    mean = model.decode(torch.eye(model.latent_dim, device=p.device, dtype=p.dtype)).mean
    return (mean / mean.sum(-1, keepdim=True)).cpu()


def top_words(distributions: torch.Tensor, n: int = 10) -> list[list[int]]:
    """The ids of the n most probable words of each topic, most probable first."""
    return distributions.topk(min(n, distributions.shape[-1]), -1).indices.tolist()


def npmi(topics: list[list[int]], counts) -> list[float]:
    """The NPMI coherence of each topic (Bouma 2009; Lau et al. 2014, the measure of Srivastava & Sutton 2017):
    the mean over pairs of its words of log(P(w_i, w_j) / (P(w_i) P(w_j))) / -log P(w_i, w_j), with P the share
    of the documents of ``counts`` (documents × vocabulary, dense or scipy.sparse) that hold the words; a pair
    that never co-occurs scores about -1 (gensim adds ε = 1e-12 to P(w_i, w_j): log(ε/(P(w_i) P(w_j))) / -log ε).
    Computed by gensim's topic-coherence pipeline:
    one-one segmentation, boolean-document probabilities, the normalised log-ratio, the mean."""
    try:
        from gensim.matutils import Sparse2Corpus
        from gensim.topic_coherence import direct_confirmation_measure, probability_estimation, segmentation
    except ImportError:
        raise DataError(f"NPMI coherence needs the gensim package; {INSTALL}") from None
    segmented = segmentation.s_one_one([np.asarray(t) for t in topics])
    corpus = Sparse2Corpus(sp.csr_matrix(counts), documents_columns=False)
    accumulator = probability_estimation.p_boolean_document(corpus, segmented)
    return [float(v) for v in direct_confirmation_measure.log_ratio_measure(segmented, accumulator, normalize=True)]


@torch.no_grad()
def perplexity(model, x: torch.Tensor, samples: int = 20, batch_size: int = 1000) -> float:
    """exp(-Σ_d (L_d - log C_d) / Σ_d N_d) over held-out documents x (D, V), L_d the ELBO of document d (estimator
    auto, ``samples`` draws) and C_d = N_d! / Π_w n_dw! its multinomial coefficient: L_d - log C_d bounds the
    log-probability of its sequence of N_d words, so this is an upper bound on the perplexity of Blei et al. 2003
    (Srivastava & Sutton 2017 average the bound per word within each document instead)."""
    check_topic_model(model)
    model.eval()
    if not isinstance(model.decode(torch.full((1, model.latent_dim), 1 / model.latent_dim, device=x.device)),
                      Multinomial):
        raise DataError("perplexity needs the bag-of-words likelihood: train with --likelihood multinomial")
    words = x.sum().item()
    if words == 0:
        raise DataError("the held-out documents hold no word, so there is no perplexity")
    bound = elbo_terms(model, x, Estimator("auto", samples), batch_size)["elbo"] * len(x)
    log_coefficient = (torch.lgamma(x.sum(-1) + 1) - torch.lgamma(x + 1).sum(-1)).double().sum().item()
    return math.exp(-(bound - log_coefficient) / words)


def evaluate_topics(model, x_test: torch.Tensor, corpus, vocabulary: list[str] | None = None, n: int = 10,
                    samples: int = 20) -> dict:
    """The topics (their top ``n`` words and NPMI on the documents of ``corpus``), their mean NPMI, and the
    perplexity of the held-out documents ``x_test``. Words are named by ``vocabulary`` where given."""
    distributions = topic_word_distributions(model)
    if vocabulary is not None and len(vocabulary) != distributions.shape[-1]:
        raise DataError(f"the vocabulary has {len(vocabulary)} words but the model {distributions.shape[-1]} features")
    ids = top_words(distributions, n)
    scores = npmi(ids, corpus)
    name = (lambda i: vocabulary[i]) if vocabulary is not None else (lambda i: f"w{i}")  # noqa: E731
    topics = [{"words": [name(i) for i in t], "ids": t, "npmi": s} for t, s in zip(ids, scores)]
    return {"perplexity": perplexity(model, x_test, samples), "npmi_mean": float(np.mean(scores)), "top": n,
            "test_documents": len(x_test), "test_words": int(x_test.sum().item()),
            "reference_documents": corpus.shape[0], "samples": samples, "topics": topics}


def format_topics(r: dict) -> str:
    """The result of ``evaluate_topics`` as plain text: one line a topic, then the summary."""
    lines = [f"{'topic':>5} {'NPMI':>7}  top {r['top']} words"]
    lines += [f"{k + 1:>5} {t['npmi']:>7.3f}  {' '.join(t['words'])}" for k, t in enumerate(r["topics"])]
    lines.append(f"mean NPMI {r['npmi_mean']:.4f} (document co-occurrence in {r['reference_documents']} documents)")
    lines.append(f"perplexity {r['perplexity']:.1f} on {r['test_documents']} held-out documents ({r['test_words']} "
                 f"words; ELBO with {r['samples']} samples)")
    return "\n".join(lines)
