// Elementary functions for the per-element math in this folder.
//
// The formulas in csrc/math/*.h are templates over a value type V: a scalar
// (float, double: CPU tails, CUDA threads) or a SIMD vector (at::vec::Vectorized,
// specialised in csrc/cpu/vec_math.h). They call Math<V>::exp(x) and friends, so a
// new value type only needs a new Math<> specialisation; the formulas stay written once.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VK_HOST_DEVICE __host__ __device__
#else
#define VK_HOST_DEVICE
#endif
#define VK_INLINE VK_HOST_DEVICE inline

namespace vae_kernels {

template <typename V>
struct Math;  // exp, log, log1p, log1p_unit, sqrt, cos, abs, maximum, where_nonneg

template <typename T>
struct ScalarMath {
  static VK_INLINE T exp(T x) { return ::exp(x); }
  static VK_INLINE T log(T x) { return ::log(x); }
  static VK_INLINE T log1p(T x) { return ::log1p(x); }
  // log1p for x in [0, 1] only; SIMD types evaluate a short polynomial there.
  static VK_INLINE T log1p_unit(T x) { return log1p(x); }
  static VK_INLINE T sqrt(T x) { return ::sqrt(x); }
  static VK_INLINE T cos(T x) { return ::cos(x); }
  static VK_INLINE T abs(T x) { return ::fabs(x); }
  // NaN-propagating, like at::vec::maximum and torch.maximum.
  static VK_INLINE T maximum(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
  // c >= 0 ? a : b
  static VK_INLINE T where_nonneg(T c, T a, T b) { return c >= T(0) ? a : b; }
};

template <>
struct Math<float> : ScalarMath<float> {
  static VK_INLINE float exp(float x) { return ::expf(x); }
  static VK_INLINE float log(float x) { return ::logf(x); }
  static VK_INLINE float log1p(float x) { return ::log1pf(x); }
  static VK_INLINE float log1p_unit(float x) { return ::log1pf(x); }
  static VK_INLINE float sqrt(float x) { return ::sqrtf(x); }
  static VK_INLINE float cos(float x) { return ::cosf(x); }
  static VK_INLINE float abs(float x) { return ::fabsf(x); }
};
template <>
struct Math<double> : ScalarMath<double> {};

}  // namespace vae_kernels
