// SIMD side of csrc/math: Math<Vectorized<T>> for the formulas, and loads/stores that
// widen float16/bfloat16 to float32 (the compute type) and narrow them back.
// Compiled once per instruction set (see CMakeLists.txt); CPU_CAPABILITY picks the
// at::vec implementation (AVX512, AVX2 or the portable DEFAULT).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>

#include "../math/primitives.h"

namespace vae_kernels {

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V exp(const V& x) { return x.exp(); }
  static V log(const V& x) { return x.log(); }
  static V log1p(const V& x) { return x.log1p(); }
  static V abs(const V& x) { return x.abs(); }
  static V maximum(const V& a, const V& b) { return at::vec::maximum(a, b); }
  static V where_nonneg(const V& c, const V& a, const V& b) { return V::blendv(b, a, c >= V(T(0))); }
};

namespace cpu {
namespace CPU_CAPABILITY {

// float16/bfloat16/float32 compute in float32, float64 in float64.
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
using AccVec = at::vec::Vectorized<acc_type_t<scalar_t>>;

template <typename scalar_t>
constexpr int64_t kVecWidth = AccVec<scalar_t>::size();

// Loads `count` (<= kVecWidth) elements, zero-filling the rest of the vector.
template <typename scalar_t>
inline AccVec<scalar_t> load_vec(const scalar_t* ptr, int64_t count) {
  constexpr int64_t W = kVecWidth<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    return count == W ? AccVec<scalar_t>::loadu(ptr) : AccVec<scalar_t>::loadu(ptr, count);
  } else {
    at::vec::Vectorized<float> out;
    if (count == W) {
      at::vec::load_to_float(ptr, out);
    } else {
      scalar_t buf[W] = {};
      std::memcpy(buf, ptr, count * sizeof(scalar_t));
      at::vec::load_to_float(buf, out);
    }
    return out;
  }
}

template <typename scalar_t>
inline void store_vec(scalar_t* ptr, const AccVec<scalar_t>& v, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    v.store(ptr, count);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(ptr, count);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace vae_kernels
