// Counter-based standard-normal noise: Philox4x32-10 + Box-Muller, bit-for-bit the
// algorithm of Triton's tl.randn(seed, offset) (triton/language/random.py), so every
// backend that draws in-kernel noise draws the same eps for the same (seed, index).
// Stateless: the backward pass regenerates eps from (seed, index) instead of storing it.
#pragma once

#include <cstdint>

#include "primitives.h"

namespace vae_kernels {

VK_INLINE uint32_t mulhi_u32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32 with 10 rounds; returns the first two words of the output block.
VK_INLINE void philox4x32_10(uint64_t seed, uint64_t counter, uint32_t& out0, uint32_t& out1) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t prev_c0 = c0, prev_c2 = c2;
    c0 = mulhi_u32(0xCD9E8D57u, prev_c2) ^ c1 ^ k0;
    c2 = mulhi_u32(0xD2511F53u, prev_c0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * prev_c2;
    c3 = 0xD2511F53u * prev_c0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out0 = c0;
  out1 = c1;
}

// Triton's uint_to_uniform_float for 32-bit words: a float in [0, 1).
VK_INLINE float uint32_to_uniform(uint32_t bits) {
  int32_t x = static_cast<int32_t>(bits);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// The two uniforms of position `index` of the stream keyed by `seed` (u1 floored at
// 1e-7, as Triton does, so log(u1) is finite).
VK_INLINE void philox_uniform_pair(uint64_t seed, uint64_t index, float& u1, float& u2) {
  uint32_t bits0, bits1;
  philox4x32_10(seed, index, bits0, bits1);
  u1 = Math<float>::maximum(1.0e-7f, uint32_to_uniform(bits0));
  u2 = uint32_to_uniform(bits1);
}

// Box-Muller (the cosine half, as tl.randn): a standard normal from two uniforms.
template <typename V>
VK_INLINE V box_muller(V u1, V u2) {
  return Math<V>::sqrt(V(-2.0f) * Math<V>::log_uniform(u1)) * Math<V>::cos_turn(u2);
}

// The standard normal number at position `index` of the stream keyed by `seed`.
VK_INLINE float philox_standard_normal(uint64_t seed, uint64_t index) {
  float u1, u2;
  philox_uniform_pair(seed, index, u1, u2);
  return box_muller(u1, u2);
}

}  // namespace vae_kernels
