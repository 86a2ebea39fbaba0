"""The global parameters θ of the decoder by maximum likelihood, MAP, or full variational Bayes
(Kingma & Welling 2013, section 2.1 and appendix F).

``ml``   θ is a point, the ELBO alone is maximised.
``map``  a prior p(θ) = N(0, s²I) on the decoder's weights and biases; its log-density enters the
         per-datapoint objective as log p(θ)/N, the 1/N share of the dataset bound Σ_i L(x_i) + log p(θ)
         that a minibatch mean estimates. This is not Adam's weight decay: Adam divides every gradient,
         the prior's included, by its running RMS, so an L2 term handed to Adam (or AdamW's decoupled
         decay) is not the gradient of log p(θ)/N and does not define the same optimum scale.
``vb``   a factorised Gaussian q(θ) = Π N(μ_j, σ_j²) over the decoder's linear layers, and the full-VB
         bound (appendix F) per datapoint: mean_i L(x_i; θ ~ q) - KL(q(θ) ‖ p(θ))/N, the KL counted once
         per pass over the data (M/N of it per minibatch of M in the summed bound). θ is drawn by local
         reparameterisation (Kingma, Salimans & Welling 2015): a linear layer's pre-activations are
         Gaussian given its input, b ~ N(μ_W a + μ_b, σ_W² a² + σ_b²), and are sampled directly, once
         per example: the same q(θ) as drawing W, with independent draws per example and a gradient
         variance that falls as 1/M with the batch (drawing one W per minibatch correlates the whole
         batch; flipout decorrelates too but needs two passes). Importance-sampled log-likelihoods of
         a VB model therefore draw a fresh θ for every importance sample and datapoint: the k draws
         average over θ ~ q(θ) as well as z, estimating log ∫ p(x|θ) q(θ) dθ with no extra passes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

THETA = ("ml", "map", "vb")
INIT_LOG_SIGMA = math.log(1e-3)  # q(θ) starts nearly a point, at the ML initialisation, and widens as the data allow


class BayesLinear(nn.Module):
    """A linear layer with a factorised Gaussian q(W, b), sampled by local reparameterisation."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight_mu = nn.Parameter(layer.weight.detach().clone())
        self.bias_mu = nn.Parameter(layer.bias.detach().clone())
        self.weight_log_sigma = nn.Parameter(torch.full_like(layer.weight, INIT_LOG_SIGMA))
        self.bias_log_sigma = nn.Parameter(torch.full_like(layer.bias, INIT_LOG_SIGMA))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        mean = F.linear(a, self.weight_mu, self.bias_mu)
        var = F.linear(a * a, (2 * self.weight_log_sigma).exp(), (2 * self.bias_log_sigma).exp())
        return mean + var.sqrt() * torch.randn_like(mean)

    def kl(self, scale: float) -> torch.Tensor:
        """KL(q(W, b) ‖ N(0, scale² I)) = Σ_j log(s/σ_j) + (σ_j² + μ_j²)/(2s²) - 1/2."""
        total = 0.0
        for mu, log_sigma in ((self.weight_mu, self.weight_log_sigma), (self.bias_mu, self.bias_log_sigma)):
            total = total + (math.log(scale) - log_sigma + ((2 * log_sigma).exp() + mu * mu) / (2 * scale**2) - 0.5).sum()
        return total


def make_bayesian(model) -> None:
    """Replace every nn.Linear of the model's decoder networks by a BayesLinear (in place)."""
    for net in model.theta_networks():
        if any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules()):
            raise ConfigError("--theta vb puts a Gaussian q(θ) on linear layers (local reparameterisation) and this "
                              "decoder has convolutions; use --net mlp, or --theta map")
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, BayesLinear(child))


def theta_penalty(model, theta: str, scale: float, n: int) -> torch.Tensor | None:
    """What the per-datapoint loss adds for θ over n training examples: -log p(θ)/n (map),
    KL(q(θ) ‖ p(θ))/n (vb), nothing (ml: None)."""
    if theta == "ml":
        return None
    params = [p for net in model.theta_networks() for p in net.parameters()]
    if theta == "map":
        log_prior = sum(-0.5 * (p * p).sum() / scale**2 - p.numel() * (math.log(scale) + 0.5 * math.log(2 * math.pi))
                        for p in params)
        return -log_prior / n
    return sum(m.kl(scale) for net in model.theta_networks() for m in net.modules() if isinstance(m, BayesLinear)) / n
