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
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)

# PyTorch's binary_cross_entropy clamps each log term at -100 (aten/src/ATen/native/Loss.cpp).
BCE_LOG_CLAMP = -100.0
# ... and floors p*(1-p) at EPSILON = 1e-12 in its gradient, a float constant even in
# float64 (so 1e-12 rounded to float32).
BCE_GRAD_EPSILON = 9.999999960041972e-13


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
        # flatten, not reshape(B, -1): that is ambiguous (an error) for an empty batch.
        return elementwise.flatten(1).sum(dim=1) if elementwise.dim() > 1 else elementwise
    raise ValueError(f"unknown reduction {reduction!r}")


def gaussian_kl_elementwise(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    logsigma: bool = False,
) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per element.

    With no prior given the prior is N(0, I). A missing prior_mu means 0 and a
    missing prior_logvar means 0 when only the other is given. With ``logsigma`` the
    scale arguments hold log sigma (the log-variance is twice it).
    """
    if logsigma:
        twice = lambda s: None if s is None else 2.0 * s  # noqa: E731
        return gaussian_kl_elementwise(mu, twice(logvar), prior_mu, twice(prior_logvar))
    # exp(lv) - 1 - lv as expm1(lv) - lv: the plain form keeps only rounding error near
    # the prior (lv ~ 0), where the kernels are accurate (csrc/math/gaussian_kl.h).
    if prior_mu is None and prior_logvar is None:
        return 0.5 * (mu * mu + (torch.expm1(logvar) - logvar))
    prior_mu = torch.zeros_like(mu) if prior_mu is None else prior_mu
    prior_logvar = torch.zeros_like(mu) if prior_logvar is None else prior_logvar
    # (mu - pm)^2 / exp(plv) as t*t with t = (mu - pm) * exp(-plv/2), as the kernels do:
    # never inf * 0 where the true value is finite.
    t = (mu - prior_mu) * torch.exp(-0.5 * prior_logvar)
    log_ratio = logvar - prior_logvar
    return 0.5 * ((torch.expm1(log_ratio) - log_ratio) + t * t)


def bernoulli_nll_elementwise(input: Tensor, target: Tensor, logits: bool = True) -> Tensor:
    """-log Bernoulli(target | input) per element, input as logits or probabilities.

    From logits l: ``softplus(l) - l*x``, written as ``(1-x)*softplus(l) + x*softplus(-l)``
    with ``softplus(l) = -logsigmoid(-l)``: a sum of two non-negative terms (no
    cancellation), autograd gives exactly ``sigmoid(l) - x`` everywhere (``max(l, 0) +
    log1p(exp(-|l|))`` gets the subgradients of max and abs at l = 0, so 1 - x instead
    of 0.5 - x), and at l = +-inf the value is +inf where the true value is (NaN only
    for the limits 0 * inf: l = +inf with x = 1, l = -inf with x = 0).

    From probabilities: as ``F.binary_cross_entropy``, each log clamped at -100 and the
    gradient ``(p - x) / max(p*(1-p), 1e-12)`` (finite at p = 0 and 1, where autograd
    through the clamped logs gives 0 * inf = NaN); the target's gradient is the
    derivative of that clamped loss, ``max(log(1-p), -100) - max(log p, -100)`` (torch's
    own is the unclamped ``log(1-p) - log(p)``, +-inf at p = 0 or 1). NaN propagates.
    """
    if logits:
        return -(1.0 - target) * F.logsigmoid(-input) - target * F.logsigmoid(input)
    p, x = input.detach(), target.detach()
    log_p = torch.clamp_min(torch.log(p), BCE_LOG_CLAMP)
    log_1mp = torch.clamp_min(torch.log1p(-p), BCE_LOG_CLAMP)
    loss = -(x * log_p + (1.0 - x) * log_1mp)
    if not torch.is_grad_enabled() or not (input.requires_grad or target.requires_grad):
        return loss
    # The gradients written out (F.binary_cross_entropy itself refuses NaN, which must
    # propagate here); each term adds zero to the value and its gradient to the graph.
    wide = torch.promote_types(p.dtype, torch.float32)  # 1e-12 underflows in float16
    d_input = (p - x).to(wide) / torch.clamp_min((p * (1.0 - p)).to(wide), BCE_GRAD_EPSILON)
    d_target = log_1mp - log_p
    return loss + (input - p) * d_input.to(p.dtype) + (target - x) * d_target


def gaussian_nll_elementwise(
    input: Tensor, target: Tensor, logvar: Union[float, Tensor] = 0.0
) -> Tensor:
    """-log N(target | input, exp(logvar)) per element, including 0.5*log(2*pi).

    The squared residual over the variance is t*t with t = (target - input) *
    exp(-logvar/2), as in the kernels: never (target - input)^2 * exp(-logvar), which is
    inf * 0 = NaN where the true value is finite (a zero residual at a very negative
    logvar, a huge residual at a large one).
    """
    if isinstance(logvar, Tensor):
        t = (target - input) * torch.exp(-0.5 * logvar)
        return 0.5 * (t * t + logvar + LOG_2PI)
    t = (target - input) * math.exp(-0.5 * logvar)
    return 0.5 * (t * t + logvar + LOG_2PI)


def squared_error_elementwise(input: Tensor, target: Tensor) -> Tensor:
    """(input - target)^2 per element: the fixed-variance Gaussian shortcut."""
    diff = input - target
    return diff * diff


def _abs_with_sign_gradient(r: Tensor) -> Tensor:
    """|r| whose gradient is sign(r): 0 at r = 0 (as F.l1_loss), NaN at NaN (torch.sign
    gives 0 there, which would hide a NaN from the gradient)."""
    sign = torch.where(torch.isnan(r), r, torch.sign(r)).detach()
    return r * sign


def laplace_nll_elementwise(
    input: Tensor, target: Tensor, logscale: Union[float, Tensor] = 0.0
) -> Tensor:
    """-log Laplace(target | input, exp(logscale)) per element: |x - m| e^-s + s + log 2.

    e^-s is applied as two factors e^(-s/2), as in the kernels (csrc/math/laplace_nll.h),
    so a zero residual at a very negative log-scale is not inf * 0.
    """
    half = torch.exp(-0.5 * logscale) if isinstance(logscale, Tensor) else math.exp(-0.5 * logscale)
    # |r e^(-s/2)| e^(-s/2): the gradient's sign(r) meets one factor before the other, so a
    # zero residual gets 0, not 0 * e^-s = 0 * inf.
    return _abs_with_sign_gradient((target - input) * half) * half + logscale + LOG_2


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(l) = log(l / tanh(l / 2)) of the continuous Bernoulli, at every logit: the
    series log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720 near 0 (the formula is 0/0 at 0),
    the formula elsewhere (float64: tanh(l/2) rounds to 1 beyond |l| ~ 38, where
    log C = log|l| to within 1e-16)."""
    a = logits.abs()
    small = a < 1e-2
    # Each branch sees safe values where it is not used: no 0/0, no inf * 0 in gradients.
    a_safe = torch.where(small, torch.ones_like(a), a)
    l_small = torch.where(small, logits, torch.zeros_like(logits))
    l2 = l_small * l_small
    series = LOG_2 + l2 * (1.0 / 12.0 + l2 * (-7.0 / 1440.0 + l2 * (31.0 / 90720.0)))
    return torch.where(small, series, torch.log(a_safe / torch.tanh(0.5 * a_safe)))


def continuous_bernoulli_nll_elementwise(logits: Tensor, target: Tensor) -> Tensor:
    """-log ContinuousBernoulli(target | sigmoid(logits)) per element: BCE-with-logits
    minus log C(l). No probability is formed, so nothing is clamped."""
    return bernoulli_nll_elementwise(logits, target, logits=True) - continuous_bernoulli_log_norm(
        logits
    )


def reconstruction_nll_elementwise(
    recon: Tensor, x: Tensor, likelihood: str, scale: Union[float, Tensor] = 0.0
) -> Tensor:
    """The per-element reconstruction term of the ELBO for each ``likelihood``, with its
    scale (the log-variance of "gaussian", the log-scale of "laplace"; ignored by the
    others)."""
    if likelihood == "bernoulli":
        return bernoulli_nll_elementwise(recon, x, logits=True)
    if likelihood == "bernoulli_probs":
        return bernoulli_nll_elementwise(recon, x, logits=False)
    if likelihood == "gaussian":
        return gaussian_nll_elementwise(recon, x, scale)
    if likelihood == "mse":
        return squared_error_elementwise(recon, x)
    if likelihood == "laplace":
        return laplace_nll_elementwise(recon, x, scale)
    if likelihood == "continuous_bernoulli":
        return continuous_bernoulli_nll_elementwise(recon, x)
    raise ValueError(f"unknown likelihood {likelihood!r}")


# ---------------------------------------------------------------- backend interface


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    eps: Optional[Tensor],
    num_samples: Optional[int],
    generator: Optional[torch.Generator],
    logsigma: bool = False,
) -> Tensor:
    """z = mu + exp(0.5 * logvar) * eps (``logsigma``: mu + exp(logvar) * eps, the second
    argument holding log sigma), with eps ~ N(0, I) from torch.randn if not given."""
    if eps is None:
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(logvar if logsigma else 0.5 * logvar) * eps


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    reduction: str,
    logsigma: bool = False,
) -> Tensor:
    return reduce_loss(
        gaussian_kl_elementwise(mu, logvar, prior_mu, prior_logvar, logsigma), reduction
    )


def bernoulli_nll(input: Tensor, target: Tensor, logits: bool, reduction: str) -> Tensor:
    return reduce_loss(bernoulli_nll_elementwise(input, target, logits), reduction)


def gaussian_nll(
    input: Tensor, target: Tensor, logvar: Union[float, Tensor], reduction: str
) -> Tensor:
    return reduce_loss(gaussian_nll_elementwise(input, target, logvar), reduction)


def mse_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return reduce_loss(squared_error_elementwise(input, target), reduction)


def reconstruction_nll(
    likelihood: str, input: Tensor, target: Tensor, scale: Union[float, Tensor], reduction: str
) -> Tensor:
    """The negative log-likelihood of a ``vae_kernels.schema.LIKELIHOODS`` row, with its
    scale (ignored by likelihoods without one)."""
    return reduce_loss(reconstruction_nll_elementwise(input, target, likelihood, scale), reduction)


def elbo_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    beta: float,
    reduction: str,
    logsigma: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(negative ELBO, reconstruction NLL, KL), each reduced with ``reduction``."""
    recon_nll = reduce_loss(reconstruction_nll_elementwise(recon, x, likelihood), reduction)
    kl = reduce_loss(gaussian_kl_elementwise(mu, logvar, logsigma=logsigma), reduction)
    return recon_nll + beta * kl, recon_nll, kl
