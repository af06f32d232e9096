// Reparameterized sampling: z = mu + std * eps with std = exp(c * s), where the scale
// argument s is a log-variance (c = 1/2) or a log-sigma (c = 1, as VDVAE and NVAE
// parameterize it): c is `std_exponent`, and the kernels read s as it is, with no
// conversion pass.
//
// Backward over K samples z_k = mu + std * eps_k:
//   d mu = sum_k g_k
//   d s  = c * std * sum_k g_k * eps_k
#pragma once

#include "primitives.h"

namespace vae_kernels {

constexpr double kStdExponentLogVar = 0.5;
constexpr double kStdExponentLogSigma = 1.0;

template <typename V>
VK_INLINE V posterior_std(V log_scale, V std_exponent) {
  return Math<V>::exp(std_exponent * log_scale);
}

template <typename V>
VK_INLINE V reparameterize_forward(V mu, V std, V eps) {
  return mu + std * eps;
}

// d s from `sum_grad_eps` = sum_k g_k * eps_k; d mu is the plain sum of g_k.
template <typename V>
VK_INLINE V reparameterize_scale_backward(V std, V sum_grad_eps, V std_exponent) {
  return std_exponent * std * sum_grad_eps;
}

}  // namespace vae_kernels
