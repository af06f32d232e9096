// Negative Bernoulli log-likelihood (binary cross-entropy) per element.
//
// From logits l:        nll = max(l, 0) - l*x + log1p(exp(-|l|))
//                       d l = sigmoid(l) - x,  d x = -l
//   One e = exp(-|l|) in (0, 1] serves both the loss and the sigmoid, (1 or e) / (1 + e)
//   by the sign of l. max(l, 0) - l*x is evaluated as l * ([l >= 0] - x), that is
//   l*(1 - x) for l >= 0 and l*(-x) below: equal for finite l, and at
//   l = +inf the loss is +inf for x < 1 (as in F.binary_cross_entropy_with_logits), not
//   inf - inf = NaN; at l = -inf it is +inf for x > 0. NaN remains only for the
//   0 * inf limits (l = +inf with x = 1, l = -inf with x = 0), as in PyTorch.
// From probabilities p: nll = -(x * max(log p, -100) + (1 - x) * max(log(1 - p), -100))
//                       d p = (p - x) / max(p * (1 - p), 1e-12)
//                       d x = max(log(1 - p), -100) - max(log p, -100)
//   The -100 clamp and the 1e-12 floor are PyTorch's (aten/src/ATen/native/Loss.cpp),
//   so the result equals F.binary_cross_entropy in value and gradient.
#pragma once

#include "primitives.h"

namespace vae_kernels {

constexpr double kBceLogClamp = -100.0;
// PyTorch's EPSILON is applied as a float even in float64 (1e-12f = 9.9999999600e-13),
// so the float64 gradient at p < 1e-12 equals torch's only with the same constant.
constexpr double kBceGradEpsilon = static_cast<double>(1e-12f);

template <typename V>
VK_INLINE V bernoulli_logits_linear_part(V logits, V target) {  // max(l, 0) - l*x
  return logits * (Math<V>::nonneg_indicator(logits) - target);
}

template <typename V>
VK_INLINE V bernoulli_logits_nll(V logits, V target) {
  const V e = Math<V>::exp_minus_abs(logits);
  return bernoulli_logits_linear_part(logits, target) + Math<V>::log1p_unit(e);
}

template <typename V>
VK_INLINE V bernoulli_logits_nll_and_grad(V logits, V target, V& d_logits, V& d_target) {
  const V e = Math<V>::exp_minus_abs(logits);
  d_logits = sigmoid_from_exp_minus_abs(logits, e) - target;
  d_target = V(0) - logits;
  return bernoulli_logits_linear_part(logits, target) + Math<V>::log1p_unit(e);
}

template <typename V>
VK_INLINE V bernoulli_probs_nll(V probs, V target) {
  const V log_p = Math<V>::at_least(Math<V>::log_unit(probs), V(kBceLogClamp));
  const V log_1mp = Math<V>::at_least(Math<V>::log1m_unit(probs), V(kBceLogClamp));
  return V(0) - (target * log_p + (V(1) - target) * log_1mp);
}

template <typename V>
VK_INLINE V bernoulli_probs_nll_and_grad(V probs, V target, V& d_probs, V& d_target) {
  const V log_p = Math<V>::at_least(Math<V>::log_unit(probs), V(kBceLogClamp));
  const V log_1mp = Math<V>::at_least(Math<V>::log1m_unit(probs), V(kBceLogClamp));
  d_probs = (probs - target) / Math<V>::at_least((V(1) - probs) * probs, V(kBceGradEpsilon));
  d_target = log_1mp - log_p;
  return V(0) - (target * log_p + (V(1) - target) * log_1mp);
}

}  // namespace vae_kernels
