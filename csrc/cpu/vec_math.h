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
#include <limits>
#include <type_traits>

#include "../math/primitives.h"

namespace vae_kernels {

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  using Scalar = T;
  static V exp(const V& x) { return x.exp(); }
  static V exp_minus_abs(const V& x) { return (V(T(0)) - x.abs()).exp(); }
  static V log(const V& x) { return x.log(); }
  static V log1p(const V& x) { return x.log1p(); }
  static V log1p_unit(const V& x) { return x.log1p(); }
  static V log_uniform(const V& x) { return x.log(); }
  static V log_unit(const V& x) { return x.log(); }
  static V log1m_unit(const V& p) { return (V(T(0)) - p).log1p(); }
  static V sqrt(const V& x) { return x.sqrt(); }
  static V cos(const V& x) { return x.cos(); }
  static V cos_turn(const V& u) { return (V(T(6.283185307179586f)) * u).cos(); }
  static V sin_turn(const V& u) { return (V(T(6.283185307179586f)) * u).sin(); }
  static V tanh(const V& x) { return x.tanh(); }
  static V abs(const V& x) { return x.abs(); }
  static V sign(const V& x) {  // -1, 0 or 1; NaN stays NaN
    return V::blendv(V::blendv(x * V(T(0)), V(T(-1)), x < V(T(0))), V(T(1)), x > V(T(0)));
  }
  static V maximum(const V& a, const V& b) { return at::vec::maximum(a, b); }
  static V at_least(const V& x, const V& floor) { return at::vec::clamp_min(x, floor); }
  static V where_nonneg(const V& c, const V& a, const V& b) { return V::blendv(b, a, c >= V(T(0))); }
  static V nonneg_indicator(const V& x) { return (x >= V(T(0))) & V(T(1)); }
};

// float32, the type nearly all training runs in: exp, log1p on [0, 1], the logs of
// [0, 1] and Box-Muller's cos and sin written out inline, because the Sleef calls behind
// Vectorized<float> cost more than the memory traffic of the loss kernels (and than
// torch.randn_like's noise). All are within a few ULP (tests compare them with the
// float64 oracle and with Triton's randn4x stream).
template <>
struct Math<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  using Scalar = float;
  using VInt = at::vec::Vectorized<int32_t>;
  static V log(const V& x) { return x.log(); }
  static V log1p(const V& x) { return x.log1p(); }
  static V sqrt(const V& x) { return x.sqrt(); }
  static V cos(const V& x) { return x.cos(); }
  static V tanh(const V& x) { return x.tanh(); }
  static V abs(const V& x) { return x.abs(); }
  static V sign(const V& x) {  // -1, 0 or 1; NaN stays NaN
    return V::blendv(V::blendv(x * V(0.f), V(-1.f), x < V(0.f)), V(1.f), x > V(0.f));
  }
  static V maximum(const V& a, const V& b) { return at::vec::maximum(a, b); }
  // One max instruction: x86's max returns its second operand when either is NaN.
  static V at_least(const V& x, const V& floor) { return at::vec::clamp_min(x, floor); }
  static V where_nonneg(const V& c, const V& a, const V& b) {
#if defined(CPU_CAPABILITY_AVX512)
    // A compare into a mask register and a blend: V::blendv would turn the mask into a
    // vector and back, three more instructions in every formula's select.
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
#else
    return V::blendv(b, a, c >= V(0.f));
#endif
  }
  // A compare's all-ones lanes masked to the bits of 1.0.
  static V nonneg_indicator(const V& x) { return (x >= V(0.f)) & V(1.f); }

  // Cephes expf: x = n*ln2 + r with |r| <= ln2/2 (ln2 in two parts, Cody-Waite), a
  // degree-6 polynomial for exp(r) (by Estrin's scheme: the loss kernels wait on its
  // chain of dependent steps), and 2^n applied by scalef (AVX512: overflow to inf,
  // denormals and 0 below) or built in the exponent bits. ~1 ULP.
  static V exp(const V& x) { return exp_in_range<true>(x); }
  static V exp_minus_abs(const V& x) { return exp_in_range<false>(x | V(-0.f)); }  // sign bit set

  // kMayOverflow false: x <= 0 or NaN.
  template <bool kMayOverflow>
  static V exp_in_range(const V& x) {
    using at::vec::fmadd;
#if defined(CPU_CAPABILITY_AVX512)
    // x86 min/max keep NaN
    const V clamped = kMayOverflow ? at::vec::clamp(x, V(-104.f), V(89.f))
                                   : at::vec::clamp_min(x, V(-104.f));
    const V n = (clamped * V(1.44269504088896341f)).round();
#else
    // The clamp keeps n in [-126, 127], a normal 2^n. Below -87.34 the result is
    // replaced by 0 at the end, so an x <= 0 needs no clamp.
    const V clamped = kMayOverflow ? at::vec::clamp(x, V(-87.33654f), V(88.37626f)) : x;
    // n = round(x / ln2) by adding 1.5 * 2^23 + 127: the float sum's low mantissa bits
    // then hold n + 127, the exponent field of 2^n, and subtracting the shift gives n.
    // Two instructions instead of a round (two), a conversion and an integer add.
    constexpr float kRoundingShift = 12583039.f;
    const V shifted = fmadd(clamped, V(1.44269504088896341f), V(kRoundingShift));
    const V n = shifted - V(kRoundingShift);
#endif
    V r = fmadd(n, V(-0.693359375f), clamped);
    r = fmadd(n, V(2.12194440e-4f), r);
    const V r2 = r * r;
    const V c12 = fmadd(V(1.6666665459e-1f), r, V(5.0000001201e-1f));
    const V c34 = fmadd(V(8.3334519073e-3f), r, V(4.1665795894e-2f));
    const V c56 = fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
    const V c36 = fmadd(c56, r2, c34);
    const V p = fmadd(fmadd(c36, r2, c12), r2, r + V(1.f));
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_scalef_ps(p, n);
#else
    V y = p * at::vec::cast<float>(at::vec::cast<int32_t>(shifted) << VInt(23));
    if constexpr (kMayOverflow) {
      y = V::blendv(y, V(std::numeric_limits<float>::infinity()), x > V(88.72283f));
    }
    y = V::blendv(y, V(0.f), x < V(-87.33654f));  // results below FLT_MIN flush to zero
#if defined(CPU_CAPABILITY_AVX2)
    return y;  // a NaN passed the clamp (x86 min/max) and made p NaN
#else
    return V::blendv(y, x, x != x);  // NaN in, NaN out
#endif
#endif
  }

  static V log_uniform(const V& x) { return log_of_normal<0>(x); }

  // x * 2^24 is normal for every x in (0, 1], and exactly scaled.
  static V log_unit(const V& x) {
    return log_of_normal<24>(x) + (x - x);  // + NaN for a NaN x, else + 0
  }

  // 1 - p rounds (p < 1/2), but the rounding error t = (1 - q) - p is exact (q = the
  // rounded 1 - p), and log(q + t) = log q + t/q + O(t^2), with 1/q ~ 2 - q for q in
  // [1/2, 1] (t = 0 below): within ~1 ULP where log1p(-p) ~ -p is small. A NaN p makes
  // t NaN.
  static V log1m_unit(const V& p) {
    const V q = V(1.f) - p;
    const V t = (V(1.f) - q) - p;
    return at::vec::fmadd(t, V(2.f) - q, log_of_normal<24>(q));
  }

  // Cephes logf for an x > 0 that is normal once scaled by 2^kScaled (exactly; no
  // special cases): x * 2^kScaled = z * 2^k with z in [sqrt(1/2), sqrt(2)), found by
  // integer arithmetic on the bits (no compare), log(1 + m) for m = z - 1 (exact) by a
  // degree-9 polynomial (by Estrin's scheme: a chain of 4 dependent steps, not 9), and
  // (k - kScaled) * ln2 added in two parts. ~1 ULP.
  template <int kScaled>
  static V log_of_normal(const V& x) {
    using at::vec::fmadd;
    const VInt bits = at::vec::cast<int32_t>(kScaled == 0 ? x : x * V(float(1 << kScaled)));
    const VInt above_sqrt_half = bits - VInt(0x3f3504f3);  // the bits of sqrt(1/2)
    const VInt k = (above_sqrt_half >> VInt(23)) - VInt(kScaled);  // arithmetic shift
    const VInt exponent_bits = above_sqrt_half & VInt(static_cast<int32_t>(0xff800000));
    const V e = at::vec::convert_to_fp_of_same_size<float>(k);
    const V m = at::vec::cast<float>(bits - exponent_bits) - V(1.f);
    const V z = m * m;
    const V z2 = z * z;
    const V p01 = fmadd(V(-2.4999993993e-1f), m, V(3.3333331174e-1f));
    const V p23 = fmadd(V(-1.6668057665e-1f), m, V(2.0000714765e-1f));
    const V p45 = fmadd(V(-1.2420140846e-1f), m, V(1.4249322787e-1f));
    const V p67 = fmadd(V(-1.1514610310e-1f), m, V(1.1676998740e-1f));
    const V p07 = fmadd(fmadd(p67, z, p45), z2, fmadd(p23, z, p01));
    const V p = fmadd(V(7.0376836292e-2f) * z2, z2, p07);
    V y = p * m * z;
    y = fmadd(e, V(-2.12194440e-4f), y);
    y = fmadd(z, V(-0.5f), y);
    return fmadd(e, V(0.693359375f), m + y);
  }

  // Cephes cosf and sinf for u in [0, 1]: theta = 2 pi u (rounded as the scalar path
  // rounds it), theta = q pi/2 + r with |r| <= pi/4 (pi/2 in three parts, exact for
  // q <= 4), and the sine or cosine polynomial of r by quadrant. ~1 ULP. Box-Muller
  // takes both of one u: inlined together, the two share everything but the last step.
  static V cos_turn(const V& u) { return sinusoid_turn<false>(u); }
  static V sin_turn(const V& u) { return sinusoid_turn<true>(u); }

  template <bool kSine>
  static V sinusoid_turn(const V& u) {
    const V theta = V(6.283185307179586f) * u;
    const V q = (theta * V(0.636619772367581343f)).round();
    V r = at::vec::fmadd(q, V(-1.5703125f), theta);
    r = at::vec::fmadd(q, V(-4.837512969970703125e-4f), r);
    r = at::vec::fmadd(q, V(-7.54978995489188216e-8f), r);
    const V z = r * r;
    V s = at::vec::fmadd(V(-1.9515295891e-4f), z, V(8.3321608736e-3f));
    s = at::vec::fmadd(s, z, V(-1.6666654611e-1f));
    s = at::vec::fmadd(s * z, r, r);
    V c = at::vec::fmadd(V(2.443315711809948e-5f), z, V(-1.388731625493765e-3f));
    c = at::vec::fmadd(c, z, V(4.166664568298827e-2f));
    c = at::vec::fmadd(c * z, z, at::vec::fmadd(z, V(-0.5f), V(1.f)));
    // Quadrant 0..3: cos(q pi/2 + r) is cos r, -sin r, -cos r, sin r; sin(q pi/2 + r)
    // is sin r, cos r, -sin r, -cos r.
    const VInt quadrant = at::vec::convert_to_int_of_same_size(q);
    const V odd = at::vec::cast<float>(VInt(0) - (quadrant & VInt(1)));  // all ones if odd
    const VInt negative = kSine ? quadrant & VInt(2) : (quadrant + VInt(1)) & VInt(2);
    const V sign = at::vec::cast<float>(negative << VInt(30));  // the sign bit where negative
    return (kSine ? V::blendv(s, c, odd) : V::blendv(c, s, odd)) ^ sign;
  }

  // log1p(x) = x * Q(x) on [0, 1], Q a degree-9 least-relative-error polynomial
  // (fitted in float64; <= 3.1 ULP in float32 over [0, 1], tiny x included), evaluated
  // by Estrin's scheme: a chain of 4 dependent steps instead of Horner's 10, which the
  // loss kernels' throughput waits on.
  static V log1p_unit(const V& x) {
    using at::vec::fmadd;
    const V x2 = x * x;
    const V x4 = x2 * x2;
    const V q01 = fmadd(V(-0.4999990165233612f), x, V(1.f));
    const V q23 = fmadd(V(-0.24954132735729218f), x, V(0.3332996368408203f));
    const V q45 = fmadd(V(-0.15305589139461517f), x, V(0.19675937294960022f));
    const V q67 = fmadd(V(-0.05695946887135506f), x, V(0.1060364842414856f));
    const V q89 = fmadd(V(-0.003244017483666539f), x, V(0.019851427525281906f));
    const V q03 = fmadd(q23, x2, q01);
    const V q47 = fmadd(q67, x2, q45);
    const V q49 = fmadd(q89, x4, q47);
    return x * fmadd(q49, x4, q03);
  }
};

namespace cpu {
namespace CPU_CAPABILITY {

// float16/bfloat16/float32 compute in float32, float64 in float64.
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The element type of local gradients (local_grad_dtype in csrc/op_checks.h).
template <typename scalar_t>
using local_grad_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, float, scalar_t>;

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
  constexpr int64_t W = kVecWidth<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    v.store(ptr, count);
  } else {
    // One vector's conversion (the first W of the 2 * W narrow lanes), stored through a
    // buffer with a copy of constant size when the vector is whole: Vectorized's
    // partial store copies a run-time size, a libc call per vector.
    alignas(64) scalar_t buf[2 * W];
    at::vec::convert<scalar_t>(v).store(buf);
    if (count == W) {
      std::memcpy(ptr, buf, W * sizeof(scalar_t));
    } else {
      std::memcpy(ptr, buf, count * sizeof(scalar_t));
    }
  }
}

// Two vectors from 2 * W elements (float32 for bfloat16/half: one conversion).
template <typename T>
inline void load_pair(const T* ptr, AccVec<T>& low, AccVec<T>& high) {
  if constexpr (std::is_same_v<T, acc_type_t<T>>) {
    low = AccVec<T>::loadu(ptr);
    high = AccVec<T>::loadu(ptr + kVecWidth<T>);
  } else {
    at::vec::load_to_float(ptr, low, high);
  }
}

// Two vectors stored as 2 * W elements. For bfloat16/half the float rounding is the
// costly step, and converting a pair at once halves it.
template <typename T>
inline void store_pair(T* ptr, const AccVec<T>& low, const AccVec<T>& high) {
  if constexpr (std::is_same_v<T, acc_type_t<T>>) {
    low.store(ptr);
    high.store(ptr + kVecWidth<T>);
  } else {
    at::vec::convert_from_float<T>(low, high).store(ptr);
  }
}

// `count` <= 2 * W elements as two vectors (zeros past count): a whole pair through
// load_pair/store_pair (one conversion for float16/bfloat16), a tail vector by vector.
template <typename T>
inline void load_two(const T* ptr, int64_t count, AccVec<T>& low, AccVec<T>& high) {
  constexpr int64_t W = kVecWidth<T>;
  if (count == 2 * W) {
    load_pair(ptr, low, high);
  } else {
    low = load_vec(ptr, std::min(W, count));
    high = count > W ? load_vec(ptr + W, count - W) : AccVec<T>(0);
  }
}

template <typename T>
inline void store_two(T* ptr, int64_t count, const AccVec<T>& low, const AccVec<T>& high) {
  constexpr int64_t W = kVecWidth<T>;
  if (count == 2 * W) {
    store_pair(ptr, low, high);
  } else {
    store_vec(ptr, low, std::min(W, count));
    if (count > W) store_vec(ptr + W, high, count - W);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace vae_kernels
