"""Inverse problems with a trained model as the prior: a clean image x seen only through a known
operator and noise, y = A(x) + ε, ε ~ N(0, s²I). Denoising is A = identity; super-resolution is A =
average pooling by the factor.

The stated noise model takes the decoder's mean as the clean image: y | z ~ N(A(E[x|z]), s²I), so
p(z|y) ∝ p(y|z) p(z), and the estimate is the posterior mean of the clean image,

    E[E[x|z] | y] ≈ Σ_k w_k E[x|z_k] / Σ_k w_k,   w_k = p(y|z_k) p(z_k) / q(z_k|x̃),  z_k ~ q(z|x̃),

self-normalised importance sampling with the encoder at a guess x̃ as proposal, the k draws streamed
in chunks (running log-sum-exp). The encoder never saw corrupted images, so the first guess is a
classical answer (the median-filtered noisy image; the low-resolution image upsampled), and the
proposal is then refined: each further pass puts the encoder at the previous pass's estimate (the
proposal moves toward the posterior; the target does not change). On the pytorch-examples model,
σ = 0.3, 100 test images: 18.4, 19.2, 19.4 dB after one, two and three passes (17.9 dB after three
from the clipped noisy image).
For a linear-Gaussian model this is W E[z|y] + b in closed form, which the tests check.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import DataError
from .conditional import self_normalised_mean


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def pooling(factor: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A(x): the mean of each factor × factor block of images (..., C, H, W)."""
    def pool(x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        return F.avg_pool2d(x.reshape(-1, *x.shape[-3:]), factor).reshape(*lead, x.shape[-3],
                                                                          x.shape[-2] // factor, x.shape[-1] // factor)
    return pool


def check_factor(factor: int, x_shape: tuple[int, ...]) -> None:
    if len(x_shape) != 3:
        raise DataError(f"super-resolution applies to images (C, H, W); this run's data have shape {tuple(x_shape)}")
    if factor < 2 or x_shape[1] % factor or x_shape[2] % factor:
        raise DataError(f"--factor {factor} must be at least 2 and divide the image size {x_shape[1]}×{x_shape[2]}; "
                        f"use one of: {', '.join(str(f) for f in range(2, min(x_shape[1:]) + 1) if not x_shape[1] % f and not x_shape[2] % f)}")


def posterior_mean(model, y: torch.Tensor, guess: torch.Tensor, operator: Callable = identity, noise: float = 0.1,
                   samples: int = 2000, chunk: int = 500) -> torch.Tensor:
    """E[E[x|z] | y] under y | z ~ N(operator(E[x|z]), noise² I) by self-normalised importance sampling
    with proposal q(z | guess); y (N, ...) as the operator gives it, guess (N, *x_shape)."""
    model.eval()

    def log_lik(p):  # constants cancel in the self-normalised weights
        return -0.5 * ((y - operator(p.mean)) / noise).pow(2).flatten(2).sum(-1)

    return self_normalised_mean(model, model.encode(guess), log_lik, samples, chunk).to(guess.dtype)


def refined(model, y: torch.Tensor, guess: torch.Tensor, operator: Callable, noise: float, samples: int,
            passes: int) -> torch.Tensor:
    """``passes`` posterior-mean passes, each with the encoder at the previous estimate."""
    for _ in range(passes):
        guess = posterior_mean(model, y, guess, operator, noise, samples)
    return guess


def denoise(model, noisy: torch.Tensor, sd: float, samples: int = 2000, passes: int = 3) -> torch.Tensor:
    """The clean image's posterior mean given ``noisy`` = x + N(0, sd²), images (N, C, H, W); the
    first proposal at the 3 × 3 median filter of the noisy image."""
    from scipy import ndimage

    if not 0 < sd <= 1:
        raise DataError(f"the Gaussian noise level must be in (0, 1], got {sd}")
    median = ndimage.median_filter(noisy.cpu().numpy(), size=(1, 1, 3, 3))
    guess = torch.from_numpy(median).to(noisy.device, noisy.dtype).clamp(0, 1)
    return refined(model, noisy, guess, identity, sd, samples, passes)


def superresolve(model, low: torch.Tensor, factor: int, noise: float = 0.05, samples: int = 2000,
                 passes: int = 3) -> torch.Tensor:
    """The high-resolution image's posterior mean given ``low`` = the factor × factor block means of
    it, up to N(0, noise²) (the model's own misfit); the first proposal at the nearest-neighbour
    upsampling of ``low``."""
    guess = F.interpolate(low, scale_factor=factor, mode="nearest")
    return refined(model, low, guess, pooling(factor), noise, samples, passes)
