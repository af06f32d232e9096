// Counter-based standard-normal noise: Philox4x32-10 + Box-Muller, bit-for-bit the
// algorithm of Triton's tl.randn4x: normal i of the stream keyed by `seed` is output
// i % 4 of tl.randn4x(seed, i / 4). One Philox block (four 32-bit words) gives two
// uniform pairs, and each pair both halves of Box-Muller (r cos(theta), r sin(theta)),
// so four normals cost one Philox evaluation (tl.randn spends one on each).
// Stateless: the backward pass can regenerate eps from (seed, index).
#pragma once

#include <cstdint>

#include "primitives.h"

namespace vae_kernels {

VK_INLINE uint32_t mulhi_u32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32 with 10 rounds: the output block (c0, c1, c2, c3) of `counter`.
VK_INLINE void philox4x32_10(uint64_t seed, uint64_t counter, uint32_t& out0, uint32_t& out1,
                             uint32_t& out2, uint32_t& out3) {
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
  out2 = c2;
  out3 = c3;
}

// Triton's uint_to_uniform_float for 32-bit words: a float in [0, 1).
VK_INLINE float uint32_to_uniform(uint32_t bits) {
  int32_t x = static_cast<int32_t>(bits);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Box-Muller's radius sqrt(-2 log u1) for the first uniform of a pair, floored at 1e-7
// first (as Triton does, so the log is finite).
template <typename V>
VK_INLINE V box_muller_radius(V u1) {
  return Math<V>::sqrt(V(-2.0f) * Math<V>::log_uniform(Math<V>::at_least(u1, V(1.0e-7f))));
}

// The standard normal number at position `index` of the stream keyed by `seed`: word
// pair (index % 4) / 2 of the block of counter index / 4, the cosine half for an even
// index and the sine half for an odd one.
VK_INLINE float philox_standard_normal(uint64_t seed, uint64_t index) {
  uint32_t w0, w1, w2, w3;
  philox4x32_10(seed, index >> 2, w0, w1, w2, w3);
  const bool second_pair = (index & 2) != 0;
  const float radius = box_muller_radius(uint32_to_uniform(second_pair ? w2 : w0));
  const float u2 = uint32_to_uniform(second_pair ? w3 : w1);
  return radius * ((index & 1) ? Math<float>::sin_turn(u2) : Math<float>::cos_turn(u2));
}

}  // namespace vae_kernels
