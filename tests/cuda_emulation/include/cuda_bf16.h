// Stand-in for the CUDA toolkit's cuda_bf16.h (tests only): __nv_bfloat16 as the upper
// 16 bits of a float, converted from float with round to nearest even exactly as the
// GPU's cvt.rn.bf16.f32 and torch's .bfloat16() do. NaN becomes a quiet NaN (torch's
// 0x7fc0; the GPU's canonical NaN is 0x7fff).
#pragma once

#include <cstdint>
#include <cstring>

namespace cuda_emulation {

inline uint16_t float_to_bfloat16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bfloat16_bits_to_float(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

}  // namespace cuda_emulation

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(cuda_emulation::float_to_bfloat16_bits(f)) {}
  operator float() const { return cuda_emulation::bfloat16_bits_to_float(__x); }
};

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
  __nv_bfloat16 b;
  b.__x = bits;
  return b;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __ushort_as_bfloat16(cuda_emulation::float_to_bfloat16_bits(f));
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) {
  return cuda_emulation::bfloat16_bits_to_float(b.__x);
}
