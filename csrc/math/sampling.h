// Reparameterized sampling: z = mu + std * eps with std = exp(0.5 * logvar).
//
// Backward over K samples z_k = mu + std * eps_k:
//   d mu     = sum_k g_k
//   d logvar = 0.5 * std * sum_k g_k * eps_k
#pragma once

#include "primitives.h"

namespace vae_kernels {

template <typename V>
VK_INLINE V posterior_std(V logvar) {
  return Math<V>::exp(V(0.5) * logvar);
}

template <typename V>
VK_INLINE V reparameterize_forward(V mu, V std, V eps) {
  return mu + std * eps;
}

// `sum_grad_eps` is sum_k g_k * eps_k; d mu is the plain sum of g_k.
template <typename V>
VK_INLINE V reparameterize_logvar_backward(V std, V sum_grad_eps) {
  return V(0.5) * std * sum_grad_eps;
}

}  // namespace vae_kernels
