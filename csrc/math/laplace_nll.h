// Negative Laplace log-likelihood per element, with m the predicted location (the input),
// x the target and s the log-scale (b = exp(s)):
//
//   nll = |x - m| * exp(-s) + s + log 2
//   d m = sign(m - x) * exp(-s) = -d x   (0 at a zero residual, as F.l1_loss)
//   d s = 1 - |x - m| * exp(-s)
//
// |x - m| * exp(-s) is evaluated as (|x - m| * exp(-s/2)) * exp(-s/2): never
// exp(-s) alone, which overflows float32 at s < -88.7 and turns a zero residual into
// 0 * inf = NaN where the true value is finite (as the Gaussian terms do with exp(-lv/2)).
// With a fixed s the caller passes half_inv_scale = exp(-s/2) and log_norm = s + log 2.
// Latent diffusion's L1 with a learned log-variance, |x - m| / exp(lv) + lv, is this
// with s = lv, minus log 2.
#pragma once

#include "primitives.h"

namespace vae_kernels {

template <typename V>
VK_INLINE V laplace_nll_fixed_scale(V mean, V target, V half_inv_scale, V log_norm) {
  const V t = Math<V>::abs(mean - target) * half_inv_scale * half_inv_scale;
  return t + log_norm;
}

template <typename V>
VK_INLINE V laplace_nll_fixed_scale_and_grad(V mean, V target, V half_inv_scale, V log_norm,
                                             V& d_mean, V& d_target) {
  const V residual = mean - target;
  d_mean = Math<V>::sign(residual) * half_inv_scale * half_inv_scale;
  d_target = V(0) - d_mean;
  return Math<V>::abs(residual) * half_inv_scale * half_inv_scale + log_norm;
}

template <typename V>
VK_INLINE V laplace_nll(V mean, V target, V logscale) {
  const V half_inv_scale = Math<V>::exp(V(-0.5) * logscale);
  const V t = Math<V>::abs(mean - target) * half_inv_scale * half_inv_scale;
  return t + logscale + V(kLog2);
}

template <typename V>
VK_INLINE V laplace_nll_and_grad(V mean, V target, V logscale, V& d_mean, V& d_target,
                                 V& d_logscale) {
  const V half_inv_scale = Math<V>::exp(V(-0.5) * logscale);
  const V residual = mean - target;
  const V t = Math<V>::abs(residual) * half_inv_scale * half_inv_scale;
  d_mean = Math<V>::sign(residual) * half_inv_scale * half_inv_scale;
  d_target = V(0) - d_mean;
  d_logscale = V(1) - t;
  return t + logscale + V(kLog2);
}

}  // namespace vae_kernels
