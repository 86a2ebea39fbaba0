"""Encoder and decoder bodies: pure nn, shapes in, tensors out.

An encoder maps x of shape (N, *x_shape) to (N, n_out), optionally conditioned on a vector c
(the one-hot label of M2); a decoder maps z of shape (..., d) to (..., *out_shape), so L samples
per datapoint (or K enumerated classes) go through in one batched pass.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("softplus")(nn.Softplus)
ACTIVATIONS.register("elu")(nn.ELU)
ACTIVATIONS.register("leaky_relu")(nn.LeakyReLU)

NETS: Registry = Registry("net")


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with the activation between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """features(x) → the head's first linear layer → the rest of the head. A condition c enters as
    a second linear term of that first layer, W [f(x); c] = W_x f(x) + W_c c, so that the features
    and W_x f(x) are computed once when c enumerates K values: c of shape (K, 1, cond_dim) gives
    an output of shape (K, N, n_out)."""

    def __init__(self, features: nn.Module, head: nn.Sequential, cond_dim: int = 0):
        super().__init__()
        self.features, self.first, self.rest = features, head[0], head[1:]
        self.cond = nn.Linear(cond_dim, self.first.out_features, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a = self.first(self.features(x))
        if c is not None:
            a = a + self.cond(c)
        return self.rest(a)


class Decoder(nn.Module):
    """Applies a body to z with any leading sample dimensions and reshapes to ``out_shape``."""

    def __init__(self, body: nn.Module, out_shape: tuple[int, ...]):
        super().__init__()
        self.body = body
        self.out_shape = tuple(out_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        return self.body(z.reshape(-1, z.shape[-1])).reshape(*lead, *self.out_shape)


@NETS.register("mlp")
def mlp_nets(x_shape, n_out, latent_dim, out_shape, *, hidden, activation, cond_dim=0, **_):
    """MLP encoder x → hidden → n_out and decoder z → reversed hidden → out_shape."""
    encoder = Encoder(nn.Flatten(), mlp([math.prod(x_shape), *hidden, n_out], activation), cond_dim)
    decoder = Decoder(mlp([latent_dim, *reversed(hidden), math.prod(out_shape)], activation), out_shape)
    return encoder, decoder


@NETS.register("conv")
def conv_nets(x_shape, n_out, latent_dim, out_shape, *, hidden, activation, conv_channels, cond_dim=0, **_):
    """Strided 4×4 convolutions, each halving height and width (28 → 14 → 7 for 1×28×28 with two
    layers, 32 → 16 → 8 → 4 for 3×32×32 with three), then the MLP ``hidden`` layers; the decoder
    mirrors it with transposed convolutions."""
    if len(x_shape) != 3:
        raise ConfigError(f"--net conv needs images of shape (C, H, W), got data of shape {tuple(x_shape)}; use --net mlp")
    c, h, w = x_shape
    n = len(conv_channels)
    if h % 2**n or w % 2**n:
        raise ConfigError(
            f"--net conv with {n} conv layers needs height and width divisible by {2**n}, got {h}×{w}; "
            "set --conv-channels to fewer layers"
        )
    act = ACTIVATIONS[activation]
    chans = [c, *conv_channels]
    convs = []
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        convs += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]
    flat = chans[-1] * (h // 2**n) * (w // 2**n)
    encoder = Encoder(nn.Sequential(*convs, nn.Flatten()), mlp([flat, *hidden, n_out], activation), cond_dim)

    out_c = out_shape[0]
    deconvs: list[nn.Module] = [mlp([latent_dim, *reversed(hidden), flat], activation), act(),
                                nn.Unflatten(1, (chans[-1], h // 2**n, w // 2**n))]
    rev = [*reversed(conv_channels), out_c]
    for i, (c_in, c_out) in enumerate(zip(rev[:-1], rev[1:])):
        deconvs.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
        if i < len(rev) - 2:
            deconvs.append(act())
    return encoder, Decoder(nn.Sequential(*deconvs), out_shape)


@NETS.register("prodlda")
def prodlda_nets(x_shape, n_out, latent_dim, out_shape, *, hidden, activation, cond_dim=0, **_):
    """ProdLDA's networks (Srivastava & Sutton 2017): the MLP encoder with batch normalisation of its output
    (the posterior's parameters), and a linear decoder θ → BN(Bθ), no hidden layer: with a softmax likelihood
    (multinomial) the word distribution softmax(BN(Bθ)) is a product of experts, one per topic, each row of B a
    topic's log-weights over the vocabulary. Batch norm (learned scale and shift; the paper's code learns the
    shift alone) keeps the topics from collapsing early in training; the paper's dropout is left out."""
    features = math.prod(x_shape)
    encoder = Encoder(nn.Flatten(), nn.Sequential(*mlp([features, *hidden, n_out], activation), nn.BatchNorm1d(n_out)),
                      cond_dim)
    decoder = Decoder(nn.Sequential(nn.Linear(latent_dim, math.prod(out_shape), bias=False),
                                    nn.BatchNorm1d(math.prod(out_shape))), out_shape)
    return encoder, decoder


def init_normal_(module: nn.Module, std: float) -> None:
    """Draw every weight and bias from N(0, std²), the initialisation of Kingma & Welling 2013."""
    for p in module.parameters():
        nn.init.normal_(p, 0.0, std)
