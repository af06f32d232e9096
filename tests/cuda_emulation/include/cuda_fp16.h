// Stand-in for the CUDA toolkit's cuda_fp16.h (tests only): __half as the bits of an
// IEEE binary16, converted from float with round to nearest even (subnormals, overflow
// to infinity) exactly as the GPU's cvt.rn.f16.f32 and torch's .half() do. NaN becomes a
// quiet NaN (torch's 0x7e00 with the sign; the GPU's canonical NaN is 0x7fff).
#pragma once

#include <cstdint>
#include <cstring>

namespace cuda_emulation {

inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (halfway past 65504): infinity
  if (x >= 0x38800000u) {  // a normal half: rebias the exponent, round 23 -> 10 mantissa bits
    const uint32_t rebiased = x - 0x38000000u;
    return sign | static_cast<uint16_t>((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13);
  }
  // A subnormal half (or zero): the value in units of 2^-24, rounded to nearest even.
  const int exponent = static_cast<int>(x >> 23);  // biased; the value is m * 2^(exponent-150)
  if (exponent < 102) return sign;                  // below 2^-25: rounds to zero
  const uint32_t mantissa = (x & 0x7fffffu) | 0x800000u;
  const int shift = 126 - exponent;  // 14 .. 24
  const uint32_t quotient = mantissa >> shift, rest = mantissa & ((1u << shift) - 1u);
  const uint32_t half_unit = 1u << (shift - 1);
  const bool up = rest > half_unit || (rest == half_unit && (quotient & 1u));
  return sign | static_cast<uint16_t>(quotient + (up ? 1u : 0u));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // infinity, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace cuda_emulation

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(cuda_emulation::float_to_half_bits(f)) {}
  operator float() const { return cuda_emulation::half_bits_to_float(__x); }
};

inline __half __ushort_as_half(unsigned short bits) {
  __half h;
  h.__x = bits;
  return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __float2half_rn(float f) {
  return __ushort_as_half(cuda_emulation::float_to_half_bits(f));
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return cuda_emulation::half_bits_to_float(h.__x); }
