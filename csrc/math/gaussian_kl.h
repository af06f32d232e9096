// KL(N(mu, exp(logvar)) || prior) per element, with its gradients.
//
// Prior N(0, 1):      kl = 0.5 * (mu^2 + exp(lv) - 1 - lv)
//                     d mu = mu,  d lv = 0.5 * (exp(lv) - 1)
// Prior N(pm, e^plv): kl = 0.5 * (plv - lv + (exp(lv) + (mu - pm)^2) / exp(plv) - 1)
//                     d mu = (mu - pm) / exp(plv) = -d pm
//                     d lv = 0.5 * (exp(lv - plv) - 1)
//                     d plv = 0.5 * (1 - (exp(lv) + (mu - pm)^2) / exp(plv))
//   (mu - pm)^2 / exp(plv) is evaluated as t*t with t = (mu - pm) * exp(-plv/2), and
//   d mu as t * exp(-plv/2): never (mu - pm)^2 * exp(-plv), which gives inf * 0 = NaN
//   where the true value is finite (mu = pm at plv = -100 in float32; mu - pm = 1e20
//   at plv = +100).
#pragma once

#include "primitives.h"

namespace vae_kernels {

template <typename V>
VK_INLINE V gaussian_kl_std_normal(V mu, V logvar) {
  return V(0.5) * (mu * mu + Math<V>::exp(logvar) - V(1) - logvar);
}

template <typename V>
VK_INLINE V gaussian_kl_std_normal_and_grad(V mu, V logvar, V& d_mu, V& d_logvar) {
  const V var = Math<V>::exp(logvar);
  d_mu = mu;
  d_logvar = V(0.5) * (var - V(1));
  return V(0.5) * (mu * mu + var - V(1) - logvar);
}

template <typename V>
VK_INLINE V gaussian_kl(V mu, V logvar, V prior_mu, V prior_logvar) {
  const V t = (mu - prior_mu) * Math<V>::exp(V(-0.5) * prior_logvar);
  const V ratio = Math<V>::exp(logvar - prior_logvar);
  return V(0.5) * (prior_logvar - logvar + ratio + t * t - V(1));
}

template <typename V>
VK_INLINE V gaussian_kl_and_grad(V mu, V logvar, V prior_mu, V prior_logvar, V& d_mu, V& d_logvar,
                                 V& d_prior_mu, V& d_prior_logvar) {
  const V inv_prior_std = Math<V>::exp(V(-0.5) * prior_logvar);
  const V t = (mu - prior_mu) * inv_prior_std;
  const V ratio = Math<V>::exp(logvar - prior_logvar);
  const V scaled_sq = t * t;
  d_mu = t * inv_prior_std;
  d_prior_mu = V(0) - d_mu;
  d_logvar = V(0.5) * (ratio - V(1));
  d_prior_logvar = V(0.5) * (V(1) - ratio - scaled_sq);
  return V(0.5) * (prior_logvar - logvar + ratio + scaled_sq - V(1));
}

}  // namespace vae_kernels
