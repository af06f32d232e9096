// Gaussian reconstruction terms per element, with m the predicted mean (the input)
// and x the target.
//
// Full NLL:      nll = 0.5 * ((x - m)^2 * exp(-lv) + lv + log(2*pi))
//                d m = (m - x) * exp(-lv) = -d x,  d lv = 0.5 * (1 - (x - m)^2 * exp(-lv))
//   With a fixed lv the caller passes inv_var = exp(-lv) and the constant
//   half_log_norm = 0.5 * (lv + log(2*pi)), so no exp runs per element.
// Squared error: se = (m - x)^2,  d m = 2 (m - x) = -d x
#pragma once

#include "primitives.h"

namespace vae_kernels {

constexpr double kLog2Pi = 1.8378770664093453;

template <typename V>
VK_INLINE V gaussian_nll_fixed_var(V mean, V target, V inv_var, V half_log_norm) {
  const V diff = mean - target;
  return V(0.5) * diff * diff * inv_var + half_log_norm;
}

template <typename V>
VK_INLINE V gaussian_nll_fixed_var_and_grad(V mean, V target, V inv_var, V half_log_norm, V& d_mean,
                                            V& d_target) {
  const V diff = mean - target;
  d_mean = diff * inv_var;
  d_target = V(0) - d_mean;
  return V(0.5) * diff * diff * inv_var + half_log_norm;
}

template <typename V>
VK_INLINE V gaussian_nll(V mean, V target, V logvar) {
  const V diff = mean - target;
  return V(0.5) * (diff * diff * Math<V>::exp(V(0) - logvar) + logvar + V(kLog2Pi));
}

template <typename V>
VK_INLINE V gaussian_nll_and_grad(V mean, V target, V logvar, V& d_mean, V& d_target, V& d_logvar) {
  const V diff = mean - target;
  const V inv_var = Math<V>::exp(V(0) - logvar);
  const V scaled_sq = diff * diff * inv_var;
  d_mean = diff * inv_var;
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
