// Negative continuous-Bernoulli log-likelihood per element (Loaiza-Ganem & Cunningham,
// 2019), from logits l, for a target x in [0, 1]:
//
//   nll = BCE-with-logits(l, x) - log C(l),   log C(l) = log(l / tanh(l / 2))
//   (both terms ~log 2 near l = 0: each is computed minus log 2, then subtracted)
//   d l = sigmoid(l) - x - (1/l - 1/sinh(l)),  d x = -l
//
// log C is even in l and smooth at 0, where the formula is 0/0:
// - |l| <= 1: the series log 2 + sum_n c_n l^(2n), c_n = (4^n - 2) B_2n / (2n (2n)!)
//   (B: Bernoulli numbers; from log cosh(u) - log(sinh(u)/u), u = l/2), and its
//   derivative sum_n 2n c_n l^(2n-1) = 1/l - 1/sinh(l). Terms fall ~10x per order at
//   |l| = 1 (the radius is pi); 8 terms reach float32's precision, 16 float64's.
// - |l| > 1: with e = exp(-|l|) in (0, 0.37), tanh(|l|/2) = (1 - e) / (1 + e), so
//   log C = log|l| - log1p(-e) + log1p(e) (~ log|l| far out, no overflow at any l), and
//   1/sinh(l) = sign(l) * 2e / (1 - e^2).
// No probability is ever formed, so there is no clamp: torch.distributions'
// ContinuousBernoulli clamps probabilities and is off beyond |l| ~ 36.
#pragma once

#include "bernoulli_nll.h"
#include "primitives.h"

namespace vae_kernels {

// c_n for n = 1..16 (exact rationals evaluated in float64). A function, not an array:
// a namespace-scope array is not readable from CUDA device code.
VK_HOST_DEVICE constexpr double continuous_bernoulli_series(int n) {
  switch (n) {
    case 1: return 8.3333333333333333e-02;
    case 2: return -4.8611111111111111e-03;
    case 3: return 3.4171075837742504e-04;
    case 4: return -2.6248346560846561e-05;
    case 5: return 2.1336045641601197e-06;
    case 6: return -1.8027895356488831e-07;
    case 7: return 1.5659479531834029e-08;
    case 8: return -1.3883706783700259e-09;
    case 9: return 1.2504263775315482e-10;
    case 10: return -1.1402553853609106e-11;
    case 11: return 1.0502918900453167e-12;
    case 12: return -9.7548766787216445e-14;
    case 13: return 9.1234679589585563e-15;
    case 14: return -8.5837196979419134e-16;
    case 15: return 8.1173179946081066e-17;
    default: return -7.7105275105257792e-18;  // 16
  }
}

// log C(l) - log 2 and its derivative d log C / dl.
template <typename V>
VK_INLINE V continuous_bernoulli_log_norm(V logits, V& d_logits) {
  using S = typename Math<V>::Scalar;
  constexpr int kTerms = sizeof(S) == sizeof(double) ? 16 : 8;
  const V l2 = logits * logits;
  // Series in l^2 (Horner): value sum c_n l^2n, derivative sum 2n c_n l^(2n-1).
  V value = V(S(continuous_bernoulli_series(kTerms)));
  V slope = V(S(2 * kTerms * continuous_bernoulli_series(kTerms)));
  for (int n = kTerms - 1; n >= 1; --n) {
    value = value * l2 + V(S(continuous_bernoulli_series(n)));
    slope = slope * l2 + V(S(2 * n * continuous_bernoulli_series(n)));
  }
  value = value * l2;
  slope = slope * logits;
  // Far from 0.
  const V a = Math<V>::abs(logits);
  const V e = Math<V>::exp_minus_abs(logits);
  const V far_value =
      Math<V>::log(a) - Math<V>::log1m_unit(e) + Math<V>::log1p_unit(e) - V(S(kLog2));
  const V far_slope =
      V(S(1)) / logits - Math<V>::sign(logits) * (V(S(2)) * e / (V(S(1)) - e * e));
  const V series_holds = V(S(1)) - a;  // >= 0 where |l| <= 1; NaN takes the far branch
  d_logits = Math<V>::where_nonneg(series_holds, slope, far_slope);
  return Math<V>::where_nonneg(series_holds, value, far_value);
}

// BCE-with-logits minus log 2, (max(l, 0) - l x) + log((1 + e^-|l|) / 2), evaluated
// with an accurate e^-|l| - 1: near l = 0 the BCE and log C are both ~log 2 and the NLL
// is their small difference, which subtracting the two in float32 would round away.
template <typename V>
VK_INLINE V bernoulli_logits_nll_minus_log2(V logits, V target) {
  using S = typename Math<V>::Scalar;
  V e_minus_one;
  exp_minus_one_minus_x(V(0) - Math<V>::abs(logits), e_minus_one);
  // log((1 + e) / 2) = log(1 - (1 - e) / 2), with (1 - e) / 2 in [0, 1/2).
  return bernoulli_logits_linear_part(logits, target) +
         Math<V>::log1m_unit(e_minus_one * V(S(-0.5)));
}

template <typename V>
VK_INLINE V continuous_bernoulli_nll(V logits, V target) {
  V d_log_norm;
  const V log_norm = continuous_bernoulli_log_norm(logits, d_log_norm);
  return bernoulli_logits_nll_minus_log2(logits, target) - log_norm;
}

template <typename V>
VK_INLINE V continuous_bernoulli_nll_and_grad(V logits, V target, V& d_logits, V& d_target) {
  V d_log_norm;
  const V log_norm = continuous_bernoulli_log_norm(logits, d_log_norm);
  bernoulli_logits_nll_and_grad(logits, target, d_logits, d_target);
  d_logits = d_logits - d_log_norm;
  return bernoulli_logits_nll_minus_log2(logits, target) - log_norm;
}

}  // namespace vae_kernels
