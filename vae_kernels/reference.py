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


# ------------------------------------------------- discretized logistic mixture

MIXTURE_MIN_LOG_SCALE = -7.0
MIXTURE_EDGE = 0.999
MIXTURE_MIN_BIN_PROBABILITY = 1e-5


def mixture_components(params: Tensor, channels: int) -> int:
    """M, the number of mixture components in ``params`` (B, P, H, W): P = 10M for 3
    channels, 3M for 1."""
    per_component = 10 if channels == 3 else 3
    return params.shape[1] // per_component


def split_mixture_params(params: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logits, means, raw log-scales, raw coefficients) of PixelCNN++'s layout:
    ``params.permute(0, 2, 3, 1)`` is its ``l``; logits (B, H, W, M), the others
    (B, H, W, C, M) (coefficients: C = 3 only, else an empty tensor)."""
    m = mixture_components(params, channels)
    l = params.permute(0, 2, 3, 1)
    logits = l[..., :m]
    rows = l[..., m:].reshape(*l.shape[:3], channels, (l.shape[-1] - m) // channels)
    coeffs = rows[..., 2 * m : 3 * m] if channels == 3 else rows[..., :0]
    return logits, rows[..., :m], rows[..., m : 2 * m], coeffs


def _coupled_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
    """PixelCNN++'s autoregressive RGB means: mu1 = m1 + tanh(a0) x0,
    mu2 = m2 + tanh(a1) x0 + tanh(a2) x1. ``x``: (B, H, W, C, 1)."""
    if means.shape[-2] != 3:
        return means
    t = torch.tanh(coeffs)
    return torch.stack(
        (
            means[..., 0, :],
            means[..., 1, :] + t[..., 0, :] * x[..., 0, :],
            means[..., 2, :] + t[..., 1, :] * x[..., 0, :] + t[..., 2, :] * x[..., 1, :],
        ),
        dim=-2,
    )


def _softplus(t: Tensor) -> Tensor:
    """log(1 + e^t) at every t (F.softplus returns t itself beyond t = 20, 2e-9 off)."""
    return torch.logaddexp(t, torch.zeros_like(t))


def logistic_bin_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, num_bits: int) -> Tensor:
    """log P(the 2^bits-level bin of ``x`` | logistic(mean, e^log_scale)), the edge bins
    open-ended; improbable interior bins (below 1e-5) by their mid-point density.
    The difference of sigmoids is computed as
    ``log sigmoid(plus) + log sigmoid(-minus) + log(1 - e^-(plus - minus))``,
    without cancellation wherever the bin lies (csrc/math/discretized_logistic_mixture.h)."""
    levels = 2**num_bits - 1
    half_width = 1.0 / levels
    inv = torch.exp(-log_scale)
    centered = x - mean
    plus = inv * (centered + half_width)
    minus = inv * (centered - half_width)
    width = 2.0 * half_width * inv
    log_cdf_plus = -_softplus(-plus)
    log_one_minus_cdf_minus = -_softplus(minus)
    log_delta = log_cdf_plus + log_one_minus_cdf_minus + torch.log(-torch.expm1(-width))
    mid = inv * centered
    log_pdf_mid = mid - log_scale - 2.0 * _softplus(mid) - math.log(levels / 2.0)
    interior = torch.where(
        log_delta > math.log(MIXTURE_MIN_BIN_PROBABILITY), log_delta, log_pdf_mid
    )
    return torch.where(
        x < -MIXTURE_EDGE,
        log_cdf_plus,
        torch.where(x > MIXTURE_EDGE, log_one_minus_cdf_minus, interior),
    )


def discretized_logistic_mixture_nll_pixelwise(params: Tensor, x: Tensor, num_bits: int = 8) -> Tensor:
    """The NLL of each pixel, (B, H, W): ``-logsumexp_k(log_softmax(logits)_k +
    sum_c log p_{c,k})`` (PixelCNN++, Salimans et al., 2017), with ``x`` (B, C, H, W)
    in [-1, 1] and ``params`` (B, P, H, W) in PixelCNN++'s layout."""
    channels = x.shape[1]
    logits, means, raw_log_scales, coeffs = split_mixture_params(params, channels)
    xs = x.permute(0, 2, 3, 1).unsqueeze(-1)  # (B, H, W, C, 1)
    log_scales = torch.clamp(raw_log_scales, min=MIXTURE_MIN_LOG_SCALE)
    mu = _coupled_means(means, coeffs, xs)
    log_probs = logistic_bin_log_prob(xs, mu, log_scales, num_bits).sum(dim=-2)
    return -torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_probs, dim=-1)


def pixelcnn_discretized_mix_logistic_nll(params: Tensor, x: Tensor, num_bits: int = 8) -> Tensor:
    """The per-pixel NLL (B, H, W) computed as PixelCNN++ and VDVAE write it
    (``discretized_mix_logistic_loss``): sigmoids subtracted directly, cdf_delta clamped
    at 1e-12. The eager baseline of the benchmarks, and a second, independent oracle."""
    channels = x.shape[1]
    levels = 2**num_bits - 1
    logits, means, raw_log_scales, coeffs = split_mixture_params(params, channels)
    xs = x.permute(0, 2, 3, 1).unsqueeze(-1)
    log_scales = torch.clamp(raw_log_scales, min=MIXTURE_MIN_LOG_SCALE)
    mu = _coupled_means(means, coeffs, xs)
    centered_x = xs - mu
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / levels)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / levels)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_probs = torch.where(
        xs < -0.999,
        log_cdf_plus,
        torch.where(
            xs > 0.999,
            log_one_minus_cdf_min,
            torch.where(
                cdf_delta > 1e-5,
                torch.log(torch.clamp(cdf_delta, min=1e-12)),
                log_pdf_mid - math.log(levels / 2.0),
            ),
        ),
    )
    log_probs = log_probs.sum(dim=-2) + torch.log_softmax(logits, dim=-1)
    return -torch.logsumexp(log_probs, dim=-1)


def reduce_pixel_nll(pixel_nll: Tensor, channels: int, reduction: str) -> Tensor:
    """A per-pixel NLL (B, H, W) reduced as ``discretized_logistic_mixture_nll`` defines
    it; "mean" is nats per dimension: the sum over B * C * H * W."""
    if reduction == "mean":
        return pixel_nll.sum() / (pixel_nll.numel() * channels)
    return reduce_loss(pixel_nll, reduction)


def sample_discretized_logistic_mixture(
    params: Tensor, channels: int, num_bits: int = 8, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Images (B, C, H, W) on the 2^num_bits-level grid of [-1, 1] drawn from the
    mixture: a Gumbel-max choice of the component per pixel, then per channel a logistic
    sample, rounded to its bin and clamped to [-1, 1] (the edge bins are open-ended),
    the RGB channels coupled through the binned values as in the likelihood (PixelCNN++'s
    ``sample_from_discretized_mix_logistic`` couples the unrounded ones). Uniforms come
    from ``torch.rand`` with ``generator``, so a seeded generator reproduces the images."""
    levels = 2**num_bits - 1
    logits, means, raw_log_scales, coeffs = split_mixture_params(params, channels)
    tiny = 1e-5  # keeps log(u) and log(1 - u) finite, as PixelCNN++
    u = torch.rand(logits.shape, generator=generator, dtype=params.dtype, device=params.device)
    gumbel = -torch.log(-torch.log(u * (1 - 2 * tiny) + tiny))
    choice = torch.argmax(logits + gumbel, dim=-1)  # (B, H, W)
    pick = lambda t: torch.gather(  # noqa: E731  (component `choice` of t: (B, H, W, C))
        t, -1, choice[..., None, None].expand(*t.shape[:-1], 1)
    ).squeeze(-1)
    mean = pick(means)
    log_scale = torch.clamp(pick(raw_log_scales), min=MIXTURE_MIN_LOG_SCALE)
    v = torch.rand(mean.shape, generator=generator, dtype=params.dtype, device=params.device)
    v = v * (1 - 2 * tiny) + tiny
    noise = torch.exp(log_scale) * (torch.log(v) - torch.log1p(-v))
    to_bin = lambda t: torch.clamp(  # noqa: E731
        torch.round((t + 1) * (levels / 2)) * (2 / levels) - 1, -1.0, 1.0
    )
    xs = [to_bin(mean[..., 0] + noise[..., 0])]
    if channels == 3:
        t = torch.tanh(pick(coeffs))
        xs.append(to_bin(mean[..., 1] + t[..., 0] * xs[0] + noise[..., 1]))
        xs.append(to_bin(mean[..., 2] + t[..., 1] * xs[0] + t[..., 2] * xs[1] + noise[..., 2]))
    return torch.stack(xs, dim=1)


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


def discretized_logistic_mixture_nll(
    params: Tensor, x: Tensor, num_bits: int, reduction: str
) -> Tensor:
    return reduce_pixel_nll(
        discretized_logistic_mixture_nll_pixelwise(params, x, num_bits), x.shape[1], reduction
    )
