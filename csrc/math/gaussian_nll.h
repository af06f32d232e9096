// Gaussian reconstruction terms per element, with m the predicted mean (the input)
// and x the target.
//
// Full NLL:      nll = 0.5 * ((x - m)^2 * exp(-lv) + lv + log(2*pi))
//                d m = (m - x) * exp(-lv) = -d x,  d lv = 0.5 * (1 - (x - m)^2 * exp(-lv))
//   Evaluated through the standardized residual t = (m - x) * inv_std with
//   inv_std = exp(-lv/2): (x - m)^2 * exp(-lv) = t*t and (m - x) * exp(-lv) = t*inv_std.
//   Never (m - x)^2 times exp(-lv): that overflows to inf * 0 = NaN where the true value
//   is finite (a zero residual at lv = -100 in float32: exp(100) = inf; a residual of
//   1e20 at lv = +100: 1e40 = inf times exp(-100), which flushes to 0).
//   With a fixed lv the caller passes inv_std = exp(-lv/2) and the constant
//   half_log_norm = 0.5 * (lv + log(2*pi)), so no exp runs per element.
// Squared error: se = (m - x)^2,  d m = 2 (m - x) = -d x
#pragma once

#include "primitives.h"

namespace vae_kernels {

constexpr double kLog2Pi = 1.8378770664093453;

template <typename V>
VK_INLINE V gaussian_nll_fixed_var(V mean, V target, V inv_std, V half_log_norm) {
  const V t = (mean - target) * inv_std;
  return V(0.5) * t * t + half_log_norm;
}

template <typename V>
VK_INLINE V gaussian_nll_fixed_var_and_grad(V mean, V target, V inv_std, V half_log_norm, V& d_mean,
                                            V& d_target) {
  const V t = (mean - target) * inv_std;
  d_mean = t * inv_std;
  d_target = V(0) - d_mean;
  return V(0.5) * t * t + half_log_norm;
}

template <typename V>
VK_INLINE V gaussian_nll(V mean, V target, V logvar) {
  const V t = (mean - target) * Math<V>::exp(V(-0.5) * logvar);
  return V(0.5) * (t * t + logvar + V(kLog2Pi));
}

template <typename V>
VK_INLINE V gaussian_nll_and_grad(V mean, V target, V logvar, V& d_mean, V& d_target, V& d_logvar) {
  const V inv_std = Math<V>::exp(V(-0.5) * logvar);
  const V t = (mean - target) * inv_std;
  const V scaled_sq = t * t;
  d_mean = t * inv_std;
  d_target = V(0) - d_mean;
  d_logvar = V(0.5) * (V(1) - scaled_sq);
  return V(0.5) * (scaled_sq + logvar + V(kLog2Pi));
}

template <typename V>
VK_INLINE V squared_error(V input, V target) {
  const V diff = input - target;
  return diff * diff;
}

template <typename V>
VK_INLINE V squared_error_and_grad(V input, V target, V& d_input, V& d_target) {
  const V diff = input - target;
  d_input = V(2) * diff;
  d_target = V(0) - d_input;
  return diff * diff;
}

}  // namespace vae_kernels
