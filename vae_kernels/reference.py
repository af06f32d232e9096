"""Eager PyTorch implementations of every vae_kernels op.

This module is two things at once: the ``backend="torch"`` implementation, and the
oracle the tests compare every other backend against (run it in float64). It is
written for clarity, with the same formulas as the kernels (``csrc/math/``), and
relies on autograd for its gradients, so it also checks the hand-written backward
passes of the kernels.

The functions at the end (``reparameterize`` ... ``elbo_loss``) are this module's
side of the backend interface that ``vae_kernels.functional`` dispatches to; every
backend module exposes the same six. They take already-validated arguments;
validation lives in ``vae_kernels.functional``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)

# PyTorch's binary_cross_entropy clamps each log term at -100 (aten/src/ATen/native/Loss.cpp).
BCE_LOG_CLAMP = -100.0


def reduce_loss(elementwise: Tensor, reduction: str) -> Tensor:
    """Reduce an elementwise loss of shape (B, ...) the way the public API defines it."""
    if reduction == "none":
        return elementwise
    if reduction == "sum":
        return elementwise.sum()
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "batchmean":
        return elementwise.sum() / elementwise.shape[0]
    if reduction == "per_sample":
        return elementwise.reshape(elementwise.shape[0], -1).sum(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def gaussian_kl_elementwise(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per element.

    With no prior given the prior is N(0, I). A missing prior_mu means 0 and a
    missing prior_logvar means 0 when only the other is given.
    """
    if prior_mu is None and prior_logvar is None:
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)
    prior_mu = torch.zeros_like(mu) if prior_mu is None else prior_mu
    prior_logvar = torch.zeros_like(mu) if prior_logvar is None else prior_logvar
    diff = mu - prior_mu
    return 0.5 * (
        prior_logvar - logvar + (torch.exp(logvar) + diff * diff) * torch.exp(-prior_logvar) - 1.0
    )


def bernoulli_nll_elementwise(input: Tensor, target: Tensor, logits: bool = True) -> Tensor:
    """-log Bernoulli(target | input) per element, input as logits or probabilities."""
    if logits:
        # Stable form: max(l, 0) - l*x + log1p(exp(-|l|)).
        return torch.clamp_min(input, 0) - input * target + torch.log1p(torch.exp(-input.abs()))
    log_p = torch.clamp_min(torch.log(input), BCE_LOG_CLAMP)
    log_1mp = torch.clamp_min(torch.log1p(-input), BCE_LOG_CLAMP)
    return -(target * log_p + (1.0 - target) * log_1mp)


def gaussian_nll_elementwise(
    input: Tensor, target: Tensor, logvar: Union[float, Tensor] = 0.0
) -> Tensor:
    """-log N(target | input, exp(logvar)) per element, including 0.5*log(2*pi)."""
    diff = target - input
    if isinstance(logvar, Tensor):
        return 0.5 * (diff * diff * torch.exp(-logvar) + logvar + LOG_2PI)
    return 0.5 * (diff * diff * math.exp(-logvar) + logvar + LOG_2PI)


def squared_error_elementwise(input: Tensor, target: Tensor) -> Tensor:
    """(input - target)^2 per element: the fixed-variance Gaussian shortcut."""
    diff = input - target
    return diff * diff


def reconstruction_nll_elementwise(recon: Tensor, x: Tensor, likelihood: str) -> Tensor:
    """The per-element reconstruction term of the ELBO for each ``likelihood``."""
    if likelihood == "bernoulli":
        return bernoulli_nll_elementwise(recon, x, logits=True)
    if likelihood == "bernoulli_probs":
        return bernoulli_nll_elementwise(recon, x, logits=False)
    if likelihood == "gaussian":
        return gaussian_nll_elementwise(recon, x, 0.0)
    if likelihood == "mse":
        return squared_error_elementwise(recon, x)
    raise ValueError(f"unknown likelihood {likelihood!r}")


# ---------------------------------------------------------------- backend interface


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    eps: Optional[Tensor],
    num_samples: Optional[int],
    generator: Optional[torch.Generator],
) -> Tensor:
    """z = mu + exp(0.5 * logvar) * eps, with eps ~ N(0, I) from torch.randn if not given."""
    if eps is None:
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    reduction: str,
) -> Tensor:
    return reduce_loss(gaussian_kl_elementwise(mu, logvar, prior_mu, prior_logvar), reduction)


def bernoulli_nll(input: Tensor, target: Tensor, logits: bool, reduction: str) -> Tensor:
    return reduce_loss(bernoulli_nll_elementwise(input, target, logits), reduction)


def gaussian_nll(
    input: Tensor, target: Tensor, logvar: Union[float, Tensor], reduction: str
) -> Tensor:
    return reduce_loss(gaussian_nll_elementwise(input, target, logvar), reduction)


def mse_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return reduce_loss(squared_error_elementwise(input, target), reduction)


def elbo_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    beta: float,
    reduction: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(negative ELBO, reconstruction NLL, KL), each reduced with ``reduction``."""
    recon_nll = reduce_loss(reconstruction_nll_elementwise(recon, x, likelihood), reduction)
    kl = reduce_loss(gaussian_kl_elementwise(mu, logvar), reduction)
    return recon_nll + beta * kl, recon_nll, kl
