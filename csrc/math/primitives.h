// Elementary functions for the per-element math in this folder.
//
// The formulas in csrc/math/*.h are templates over a value type V: a scalar
// (float, double: CPU tails, CUDA threads) or a SIMD vector (at::vec::Vectorized,
// specialised in csrc/cpu/vec_math.h). They call Math<V>::exp(x) and friends, so a
// new value type only needs a new Math<> specialisation; the formulas stay written once.
#pragma once

#include <cmath>

// The formulas are always inlined into the kernels' loops: a call per element (or per
// vector, whose arguments then pass through memory) costs more than the formula.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define VK_HOST_DEVICE __host__ __device__
#define VK_INLINE VK_HOST_DEVICE __forceinline__
#else
#define VK_HOST_DEVICE
#define VK_INLINE inline __attribute__((always_inline))
#endif

namespace vae_kernels {

constexpr double kLog2 = 0.6931471805599453;

template <typename V>
struct Math;  // Scalar, exp, exp_minus_abs, log, log1p, log1p_unit, log_uniform, log_unit,
              // log1m_unit, sqrt, cos, cos_turn, sin_turn, tanh, abs, sign, maximum, at_least,
              // where_nonneg, nonneg_indicator

template <typename T>
struct ScalarMath {
  using Scalar = T;
  static VK_INLINE T exp(T x) { return ::exp(x); }
  // e^-|x|, in (0, 1]: the softplus and sigmoid term of logit likelihoods. SIMD float
  // has no overflow to handle there.
  static VK_INLINE T exp_minus_abs(T x) { return exp(T(0) - abs(x)); }
  static VK_INLINE T log(T x) { return ::log(x); }
  static VK_INLINE T log1p(T x) { return ::log1p(x); }
  // log1p for x in [0, 1] only; SIMD types evaluate a short polynomial there.
  static VK_INLINE T log1p_unit(T x) { return log1p(x); }
  // log for x in [1e-7, 1] only (Box-Muller's uniforms); SIMD float evaluates it inline.
  static VK_INLINE T log_uniform(T x) { return log(x); }
  // log x and log(1 - x) for x in [0, 1] only (the Bernoulli NLL from probabilities);
  // SIMD float evaluates them inline, and its log_unit(0) is finite, below -103.9 (the
  // log of the least subnormal) instead of -inf.
  static VK_INLINE T log_unit(T x) { return log(x); }
  static VK_INLINE T log1m_unit(T x) { return log1p(-x); }
  static VK_INLINE T sqrt(T x) { return ::sqrt(x); }
  static VK_INLINE T cos(T x) { return ::cos(x); }
  // cos(2 pi u) and sin(2 pi u) for u in [0, 1] only, the angle rounded to T first;
  // SIMD float evaluates them inline.
  static VK_INLINE T cos_turn(T u) { return cos(T(6.283185307179586f) * u); }
  static VK_INLINE T sin_turn(T u) { return ::sin(T(6.283185307179586f) * u); }
  static VK_INLINE T tanh(T x) { return ::tanh(x); }
  static VK_INLINE T abs(T x) { return ::fabs(x); }
  // -1, 0 or 1; NaN stays NaN.
  static VK_INLINE T sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x * T(0)); }
  // NaN-propagating, like at::vec::maximum and torch.maximum.
  static VK_INLINE T maximum(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
  // max(x, floor) for a floor that is not NaN; a NaN x stays NaN (cheaper than maximum).
  static VK_INLINE T at_least(T x, T floor) { return x < floor ? floor : x; }
  // c >= 0 ? a : b
  static VK_INLINE T where_nonneg(T c, T a, T b) { return c >= T(0) ? a : b; }
  // 1 where x >= 0, else 0 (NaN: 0).
  static VK_INLINE T nonneg_indicator(T x) { return x >= T(0) ? T(1) : T(0); }
};

template <>
struct Math<float> : ScalarMath<float> {
  static VK_INLINE float exp(float x) { return ::expf(x); }
  static VK_INLINE float exp_minus_abs(float x) { return ::expf(-::fabsf(x)); }
  static VK_INLINE float log(float x) { return ::logf(x); }
  static VK_INLINE float log1p(float x) { return ::log1pf(x); }
  static VK_INLINE float log1p_unit(float x) { return ::log1pf(x); }
  static VK_INLINE float log_uniform(float x) { return ::logf(x); }
  static VK_INLINE float log_unit(float x) { return ::logf(x); }
  static VK_INLINE float log1m_unit(float x) { return ::log1pf(-x); }
  static VK_INLINE float sqrt(float x) { return ::sqrtf(x); }
  static VK_INLINE float cos(float x) { return ::cosf(x); }
  static VK_INLINE float cos_turn(float u) { return ::cosf(6.283185307179586f * u); }
  static VK_INLINE float sin_turn(float u) { return ::sinf(6.283185307179586f * u); }
  static VK_INLINE float tanh(float x) { return ::tanhf(x); }
  static VK_INLINE float abs(float x) { return ::fabsf(x); }
};
template <>
struct Math<double> : ScalarMath<double> {};

// sigmoid(x) from e = exp(-|x|): (1 or e) / (1 + e) by the sign of x, one division.
template <typename V>
VK_INLINE V sigmoid_from_exp_minus_abs(V x, V e) {
  using S = typename Math<V>::Scalar;
  return Math<V>::where_nonneg(x, V(S(1)), e) / (V(S(1)) + e);
}

VK_HOST_DEVICE constexpr double inverse_factorial(int k) {
  return k <= 1 ? 1.0 : inverse_factorial(k - 1) / k;
}

// sum over k = First..Last of x^(k - First) / k!, by Horner. The coefficients are
// template constants: a constexpr call with a loop's k is not always folded, and a call
// per term in a kernel's inner loop costs more than the rest of the formula.
template <int First, int Last, typename V>
VK_INLINE V inverse_factorial_series(V x) {
  constexpr typename Math<V>::Scalar coefficient(inverse_factorial(First));
  if constexpr (First == Last) {
    return V(coefficient);
  } else {
    return inverse_factorial_series<First + 1, Last>(x) * x + V(coefficient);
  }
}

// e^x - 1 - x, returned, and e^x - 1 in `exp_minus_one`, each accurate relative to its
// own size: e^lv - 1 - lv is the Gaussian KL's variance term, ~lv^2/2 near the prior,
// where exp(lv) - 1 - lv in float32 leaves only rounding error (KL per element wrong
// by ~6e-8: 8 % of the value at |lv| ~ 1e-3, 8 times it at 1e-4). For |x| <= 1 it is
// the Taylor series x^2 * (1/2! + x/3! + ... + x^(n-2)/n!), truncated below an ulp
// (n = 11 for float, 18 for double); beyond, exp(x) - 1 - x loses at most a few ulp.
// Only exp and arithmetic, so every value type of Math<> gets it.
template <typename V>
VK_INLINE V exp_minus_one_minus_x(V x, V& exp_minus_one) {
  using S = typename Math<V>::Scalar;
  constexpr int kLastTerm = sizeof(S) == sizeof(double) ? 18 : 11;
  const V series = inverse_factorial_series<2, kLastTerm>(x) * x * x;
  const V exp_x = Math<V>::exp(x);
  const V series_holds = V(S(1)) - Math<V>::abs(x);  // >= 0 where |x| <= 1; NaN takes exp
  exp_minus_one = Math<V>::where_nonneg(series_holds, series + x, exp_x - V(S(1)));
  return Math<V>::where_nonneg(series_holds, series, exp_x - V(S(1)) - x);
}

}  // namespace vae_kernels
