// KL(N(mu, exp(logvar)) || prior) per element, with its gradients.
//
// Prior N(0, 1):      kl = 0.5 * (mu^2 + exp(lv) - 1 - lv)
//                     d mu = mu,  d lv = 0.5 * (exp(lv) - 1)
// Prior N(pm, e^plv): kl = 0.5 * (exp(d) - 1 - d + (mu - pm)^2 / exp(plv)),  d = lv - plv
//                     d mu = (mu - pm) / exp(plv) = -d pm
//                     d lv = 0.5 * (exp(d) - 1)
//                     d plv = 0.5 * (1 - exp(d) - (mu - pm)^2 / exp(plv))
//   exp(d) - 1 - d and exp(d) - 1 come from exp_minus_one_minus_x (primitives.h): near
//   the prior (d ~ 0, a collapsed latent dimension) the plain formula keeps only
//   rounding error.
//   (mu - pm)^2 / exp(plv) is evaluated as t*t with t = (mu - pm) * exp(-plv/2), and
//   d mu as t * exp(-plv/2): never (mu - pm)^2 * exp(-plv), which gives inf * 0 = NaN
//   where the true value is finite (mu = pm at plv = -100 in float32; mu - pm = 1e20
//   at plv = +100).
#pragma once

#include "primitives.h"

namespace vae_kernels {

template <typename V>
VK_INLINE V gaussian_kl_std_normal(V mu, V logvar) {
  V var_minus_one;
  return V(0.5) * (mu * mu + exp_minus_one_minus_x(logvar, var_minus_one));
}

template <typename V>
VK_INLINE V gaussian_kl_std_normal_and_grad(V mu, V logvar, V& d_mu, V& d_logvar) {
  V var_minus_one;
  const V var_excess = exp_minus_one_minus_x(logvar, var_minus_one);
  d_mu = mu;
  d_logvar = V(0.5) * var_minus_one;
  return V(0.5) * (mu * mu + var_excess);
}

template <typename V>
VK_INLINE V gaussian_kl(V mu, V logvar, V prior_mu, V prior_logvar) {
  const V t = (mu - prior_mu) * Math<V>::exp(V(-0.5) * prior_logvar);
  V ratio_minus_one;
  return V(0.5) * (exp_minus_one_minus_x(logvar - prior_logvar, ratio_minus_one) + t * t);
}

template <typename V>
VK_INLINE V gaussian_kl_and_grad(V mu, V logvar, V prior_mu, V prior_logvar, V& d_mu, V& d_logvar,
                                 V& d_prior_mu, V& d_prior_logvar) {
  const V inv_prior_std = Math<V>::exp(V(-0.5) * prior_logvar);
  const V t = (mu - prior_mu) * inv_prior_std;
  V ratio_minus_one;
  const V ratio_excess = exp_minus_one_minus_x(logvar - prior_logvar, ratio_minus_one);
  const V scaled_sq = t * t;
  d_mu = t * inv_prior_std;
  d_prior_mu = V(0) - d_mu;
  d_logvar = V(0.5) * ratio_minus_one;
  d_prior_logvar = V(-0.5) * (ratio_minus_one + scaled_sq);
  return V(0.5) * (ratio_excess + scaled_sq);
}

}  // namespace vae_kernels
