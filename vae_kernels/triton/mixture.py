"""Triton kernel of the discretized logistic mixture NLL (PixelCNN++'s likelihood).

The per-pixel math is ``csrc/math/discretized_logistic_mixture.h`` (its Triton copy:
``logistic_bin_log_prob`` and friends in ``math.py``). ``mixture_nll_kernel``:

- One program per block of PIXELS_PER_PROGRAM consecutive pixels (row-major in
  (H, W)) of one image. params (B, P, H, W) and x (B, C, H, W) are read through their
  strides (channels_last and sliced tensors without a copy), each in its own dtype,
  and computed in float32 (float64 for float64 params).
- First pass over the M components (M is a runtime value; the C = 1 or 3 channels are
  unrolled): each component's log-weight logit_k + sum_c log p_{c,k}, into running
  logsumexps of the log-weights and of the logits; NLL = logsumexp(logits) -
  logsumexp(log-weights).
- Second pass, with a gradient only: the same per-component values are recomputed
  (the C++ kernels keep them in a scratch buffer; recomputing needs none and works for
  any gradient dtype), and turned into the gradient once the posterior over the
  components is known; each gradient element is written once.
- The block's NLL sum goes to partials[b, block]; ``losses.reduce_loss`` then adds them
  in a fixed order per image or in total, so results are bitwise reproducible. No
  atomics.
- x outside [-1, 1] (NaN passes) sets the program's flag in ``out_of_range``; the op
  raises after the launch.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..op_autograd import mixture_outputs_like
from ..schema import REDUCTION_NONE
from .launch import wrap_triton
from .layout import compute_dtype, split_float
from .losses import LossPass, reduce_loss
from .math import (
    MIXTURE_MIN_LOG_SCALE,
    logistic_bin_log_prob,
    maximum,
    running_logsumexp_add,
    tanh,
    to_compute_dtype,
)

# Pixels per program: a rule, not autotuned, so the partial sums (and the reduced
# results) do not change from run to run. 128 pixels, 4 warps: one pixel per thread.
PIXELS_PER_PROGRAM = 128
NUM_WARPS = 4


@triton.jit
def _load_param(params_ptr, stride_p, p, pixel_offsets, mask):
    """Parameter p of the block's pixels (params_ptr: the image's first element)."""
    value = tl.load(params_ptr + p * stride_p + pixel_offsets, mask=mask, other=0.0)
    return to_compute_dtype(value)


@triton.jit
def _channel(params_ptr, stride_p, pixel_offsets, mask, mean_index, components, x, mean_shift,
             half_width, log_half_bins):  # fmt: skip
    """One channel of one component: (log p, d log p / d mean, d log p / d raw log-scale).
    The log-scale (at mean_index + M) is clamped at -7, and its gradient is zero where
    the clamp is active (raw < -7), as torch.clamp's."""
    mean = _load_param(params_ptr, stride_p, mean_index, pixel_offsets, mask) + mean_shift
    raw_log_scale = _load_param(params_ptr, stride_p, mean_index + components, pixel_offsets, mask)
    log_scale = maximum(raw_log_scale, MIXTURE_MIN_LOG_SCALE)
    log_prob, d_mean, d_log_scale = logistic_bin_log_prob(
        x, mean, log_scale, half_width, log_half_bins
    )
    d_log_scale = tl.where(raw_log_scale - MIXTURE_MIN_LOG_SCALE >= 0.0, d_log_scale, 0.0)
    return log_prob, d_mean, d_log_scale


@triton.jit
def _component(params_ptr, stride_p, pixel_offsets, mask, k, components, x0, x1, x2,
               half_width, log_half_bins, CHANNELS: tl.constexpr):  # fmt: skip
    """Component k at the block's pixels: (logit, log-weight = logit + sum_c log p_c,
    d log p_c / d mean_c and d log p_c / d s_c for c = 0, 1, 2, and 1 - tanh^2 of the
    three coefficients). For C = 1, the values of channels 1 and 2 and of the
    coefficients are zeros, never used.

    PixelCNN++'s layout (MixtureLayout): M logits, then per channel c a row of M means,
    M raw log-scales and (C = 3) M coefficients: mean(c, k) = M + c * row + k.
    """
    logit = _load_param(params_ptr, stride_p, k, pixel_offsets, mask)
    zero = tl.zeros_like(logit)
    if CHANNELS == 3:
        row = 3 * components
        mean0 = components + k
        mean1 = mean0 + row
        mean2 = mean1 + row
        # coeff(c, k) = mean(c, k) + 2M
        tanh0 = tanh(_load_param(params_ptr, stride_p, mean0 + 2 * components, pixel_offsets, mask))
        tanh1 = tanh(_load_param(params_ptr, stride_p, mean1 + 2 * components, pixel_offsets, mask))
        tanh2 = tanh(_load_param(params_ptr, stride_p, mean2 + 2 * components, pixel_offsets, mask))
        log_prob0, d_mean0, d_log_scale0 = _channel(
            params_ptr, stride_p, pixel_offsets, mask, mean0, components, x0, zero,
            half_width, log_half_bins,
        )  # fmt: skip
        # mean1 += tanh(a0) x0; mean2 += tanh(a1) x0 + tanh(a2) x1
        log_prob1, d_mean1, d_log_scale1 = _channel(
            params_ptr, stride_p, pixel_offsets, mask, mean1, components, x1, tanh0 * x0,
            half_width, log_half_bins,
        )  # fmt: skip
        log_prob2, d_mean2, d_log_scale2 = _channel(
            params_ptr, stride_p, pixel_offsets, mask, mean2, components, x2,
            tanh1 * x0 + tanh2 * x1, half_width, log_half_bins,
        )  # fmt: skip
        log_prob_sum = log_prob0 + log_prob1 + log_prob2
        dtanh0 = 1.0 - tanh0 * tanh0
        dtanh1 = 1.0 - tanh1 * tanh1
        dtanh2 = 1.0 - tanh2 * tanh2
    else:
        tl.static_assert(CHANNELS == 1)
        log_prob_sum, d_mean0, d_log_scale0 = _channel(
            params_ptr, stride_p, pixel_offsets, mask, components + k, components, x0, zero,
            half_width, log_half_bins,
        )  # fmt: skip
        d_mean1, d_log_scale1, d_mean2, d_log_scale2 = zero, zero, zero, zero
        dtanh0, dtanh1, dtanh2 = zero, zero, zero
    log_weight = logit + log_prob_sum  # + log_softmax's constant
    return (logit, log_weight, d_mean0, d_mean1, d_mean2, d_log_scale0, d_log_scale1,
            d_log_scale2, dtanh0, dtanh1, dtanh2)  # fmt: skip


@triton.jit
def _load_x(x_ptr, stride_c, c, pixel_offsets, mask, like):
    """Channel c of x at the block's pixels, read in x's dtype, computed in like's."""
    return tl.load(x_ptr + c * stride_c + pixel_offsets, mask=mask, other=0.0).to(like.dtype)


@triton.jit
def _outside_signed_unit_interval(x, mask):
    """1 if some x lies outside [-1, 1] (NaN compares false: it passes, as on CPU)."""
    return tl.max((mask & ((x < -1.0) | (x > 1.0))).to(tl.int32), axis=0)


@triton.jit
def mixture_nll_kernel(
    params_ptr, params_stride_b, params_stride_p, params_stride_h, params_stride_w,
    x_ptr, x_stride_b, x_stride_c, x_stride_h, x_stride_w,
    grad_ptr,  # contiguous (B, P, H, W), when WITH_GRAD
    pixel_nll_ptr,  # contiguous (B, H, W), when WRITE_PIXEL_NLL
    partials_ptr,  # [B, blocks_per_image]: the NLL summed over each block
    out_of_range_ptr,  # int32 [programs]: some x of the block lies outside [-1, 1]
    components, height, width, blocks_per_image,
    levels,  # 2^num_bits - 1
    log_half_bins_hi, log_half_bins_lo,  # log(levels / 2), split in two float32
    divisor,  # the gradient is divided by it
    CHANNELS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    WRITE_PIXEL_NLL: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)  # int64 before any multiply: no 2^31 overflow
    image = pid // blocks_per_image
    block = pid % blocks_per_image
    pixels = height * width
    pixel = block * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = pixel < pixels
    h = pixel // width
    w = pixel % width
    params_image = params_ptr + image * params_stride_b
    param_offsets = h * params_stride_h + w * params_stride_w
    x_image = x_ptr + image * x_stride_b
    x_offsets = h * x_stride_h + w * x_stride_w

    # The compute dtype is params' (float64 stays, the rest compute in float32); x is
    # read in its own dtype and converted to it.
    like = _load_param(params_image, params_stride_p, 0, param_offsets, mask)
    x0 = _load_x(x_image, x_stride_c, 0, x_offsets, mask, like)
    outside = _outside_signed_unit_interval(x0, mask)
    if CHANNELS == 3:
        x1 = _load_x(x_image, x_stride_c, 1, x_offsets, mask, like)
        x2 = _load_x(x_image, x_stride_c, 2, x_offsets, mask, like)
        outside = tl.maximum(outside, _outside_signed_unit_interval(x1, mask))
        outside = tl.maximum(outside, _outside_signed_unit_interval(x2, mask))
    else:
        x1 = x0  # not read for C = 1
        x2 = x0
    tl.store(out_of_range_ptr + pid, outside)

    half_width = tl.full([], 1.0, like.dtype) / levels
    log_half_bins = tl.cast(log_half_bins_hi, like.dtype) + tl.cast(log_half_bins_lo, like.dtype)

    # First pass: running logsumexps of the log-weights and of the logits, started at
    # component 0 (as RunningLogSumExp's constructor).
    logit, log_weight, _, _, _, _, _, _, _, _, _ = _component(
        params_image, params_stride_p, param_offsets, mask, 0, components, x0, x1, x2,
        half_width, log_half_bins, CHANNELS,
    )  # fmt: skip
    weights_max = log_weight
    weights_sum = tl.full(log_weight.shape, 1.0, log_weight.dtype)
    logits_max = logit
    logits_sum = tl.full(logit.shape, 1.0, logit.dtype)
    for k in range(1, components):
        logit, log_weight, _, _, _, _, _, _, _, _, _ = _component(
            params_image, params_stride_p, param_offsets, mask, k, components, x0, x1, x2,
            half_width, log_half_bins, CHANNELS,
        )  # fmt: skip
        weights_max, weights_sum = running_logsumexp_add(weights_max, weights_sum, log_weight)
        logits_max, logits_sum = running_logsumexp_add(logits_max, logits_sum, logit)
    log_normalizer = logits_max + tl.log(logits_sum)
    log_likelihood_unnormalized = weights_max + tl.log(weights_sum)
    nll = tl.where(mask, log_normalizer - log_likelihood_unnormalized, 0.0)

    if WRITE_PIXEL_NLL:
        out = pixel_nll_ptr + image * pixels + pixel
        tl.store(out, nll.to(pixel_nll_ptr.dtype.element_ty), mask=mask)
    tl.store(partials_ptr + pid, tl.sum(nll, axis=0))  # pid = image * blocks + block

    if WITH_GRAD:
        # The reciprocal in the compute dtype (a float argument would be float32), once.
        grad_scale = tl.full([], 1.0, like.dtype) / divisor
        if CHANNELS == 3:
            num_params = 10 * components
        else:
            num_params = 3 * components
        grad_image = grad_ptr + image * num_params * pixels + pixel
        grad_ty = grad_ptr.dtype.element_ty
        for k in range(0, components):
            (logit, log_weight, d_mean0, d_mean1, d_mean2, d_log_scale0, d_log_scale1,
             d_log_scale2, dtanh0, dtanh1, dtanh2) = _component(
                params_image, params_stride_p, param_offsets, mask, k, components, x0, x1, x2,
                half_width, log_half_bins, CHANNELS,
            )  # fmt: skip
            posterior = tl.exp(log_weight - log_likelihood_unnormalized)
            prior = tl.exp(logit - log_normalizer)
            d_logit = (prior - posterior) * grad_scale
            tl.store(grad_image + k * pixels, d_logit.to(grad_ty), mask=mask)
            # d NLL / d log p_{c,k} = -posterior_k
            upstream = 0.0 - posterior * grad_scale
            d_mean0 = d_mean0 * upstream
            mean0 = components + k
            tl.store(grad_image + mean0 * pixels, d_mean0.to(grad_ty), mask=mask)
            tl.store(grad_image + (mean0 + components) * pixels,
                     (d_log_scale0 * upstream).to(grad_ty), mask=mask)  # fmt: skip
            if CHANNELS == 3:
                row = 3 * components
                mean1 = mean0 + row
                mean2 = mean1 + row
                d_mean1 = d_mean1 * upstream
                d_mean2 = d_mean2 * upstream
                tl.store(grad_image + mean1 * pixels, d_mean1.to(grad_ty), mask=mask)
                tl.store(grad_image + (mean1 + components) * pixels,
                         (d_log_scale1 * upstream).to(grad_ty), mask=mask)  # fmt: skip
                tl.store(grad_image + mean2 * pixels, d_mean2.to(grad_ty), mask=mask)
                tl.store(grad_image + (mean2 + components) * pixels,
                         (d_log_scale2 * upstream).to(grad_ty), mask=mask)  # fmt: skip
                # mean1 += tanh(a0) x0; mean2 += tanh(a1) x0 + tanh(a2) x1
                tl.store(grad_image + (mean0 + 2 * components) * pixels,
                         (d_mean1 * x0 * dtanh0).to(grad_ty), mask=mask)  # fmt: skip
                tl.store(grad_image + (mean1 + 2 * components) * pixels,
                         (d_mean2 * x0 * dtanh1).to(grad_ty), mask=mask)  # fmt: skip
                tl.store(grad_image + (mean2 + 2 * components) * pixels,
                         (d_mean2 * x1 * dtanh2).to(grad_ty), mask=mask)  # fmt: skip


# ------------------------------------------------------------------ launcher


def launch_mixture_nll(
    params: Tensor,
    x: Tensor,
    num_bits: int,
    reduction: int,
    divisor: int,
    grad_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(loss, params' local gradient, out-of-range flags) of the checked arguments of
    discretized_logistic_mixture_nll. The loss is per pixel (not divided), per image or
    total (divided by ``divisor``); the gradient is d loss / d params for an upstream
    gradient of 1, divided by ``divisor``; the flags (int32, one per program; None when
    nothing was launched) say where some x lies outside [-1, 1]."""
    batch, channels, height, width = x.shape
    components = params.shape[1] // (10 if channels == 3 else 3)
    pixels = height * width
    blocks_per_image = triton.cdiv(pixels, PIXELS_PER_PROGRAM)
    programs = batch * blocks_per_image
    loss, grad = mixture_outputs_like(params, x, reduction, grad_mask)
    pixel_nll = loss if reduction == REDUCTION_NONE else None
    partials = torch.empty(
        (batch, blocks_per_image), dtype=compute_dtype(params.dtype), device=params.device
    )
    out_of_range = None
    if programs > 0:
        out_of_range = torch.empty((programs,), dtype=torch.int32, device=params.device)
        levels = (1 << num_bits) - 1
        log_half_bins_hi, log_half_bins_lo = split_float(math.log(levels / 2.0))
        wrap_triton(mixture_nll_kernel)[(programs,)](
            params, *params.stride(),
            x, *x.stride(),
            # Outputs this call does not write get `partials`: a valid pointer, never written.
            grad if grad.numel() > 0 else partials,
            pixel_nll if pixel_nll is not None else partials,
            partials,
            out_of_range,
            components, height, width, blocks_per_image,
            levels,
            log_half_bins_hi, log_half_bins_lo,
            divisor,
            CHANNELS=channels,
            WITH_GRAD=grad.numel() > 0,
            WRITE_PIXEL_NLL=pixel_nll is not None,
            BLOCK=PIXELS_PER_PROGRAM,
            num_warps=NUM_WARPS,
        )  # fmt: skip
    if reduction != REDUCTION_NONE:
        # The fixed-order sums of the partials, per image or in total, / divisor.
        loss_pass = LossPass(None, partials, [], None, loss.dtype)
        loss, _, _ = reduce_loss(loss_pass, reduction, divisor, loss)
    return loss, grad, out_of_range
