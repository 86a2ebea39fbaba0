"""Reparameterisable families that torch.distributions lacks, each a small extension of it.

Every family here has ``has_rsample = True``: a sample is a differentiable function
g(ε, λ) of parameter-free noise ε (Kingma & Welling 2013, section 2.4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform, constraints


class Logistic(TransformedDistribution):
    """Logistic(loc, scale) by the inverse CDF: z = loc + scale · logit(u), u ~ U(0, 1).

    ``log_prob`` is the closed form -t - log s - 2 softplus(-t), t = (z - loc)/s, which stays
    finite in the tails where the uniform base would round to 0 or 1.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        eps = torch.finfo(self.loc.dtype).eps
        base = Uniform(torch.full_like(self.loc, eps), torch.full_like(self.loc, 1 - eps), validate_args=False)
        transforms = [SigmoidTransform().inv, AffineTransform(self.loc, self.scale)]
        super().__init__(base, transforms, validate_args=validate_args)

    def log_prob(self, value):
        t = (value - self.loc) / self.scale
        return -t - self.scale.log() - 2 * F.softplus(-t)

    def cdf(self, value):
        return torch.sigmoid((value - self.loc) / self.scale)

    def icdf(self, value):
        return self.loc + self.scale * torch.logit(value)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return self.scale.pow(2) * torch.pi**2 / 3

    def entropy(self):
        return self.scale.log() + 2
