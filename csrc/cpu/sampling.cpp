// CPU kernels of reparameterized sampling, with caller noise or in-kernel Philox noise
// (written out on request, so that backward reads it instead of regenerating it: on a
// CPU, Philox + Box-Muller costs more than reading eps). Formulas: csrc/math/sampling.h.
#include <cstdint>

#include "../math/philox.h"
#include "../math/sampling.h"
#include "isa_kernels.h"
#include "loss_loop.h"

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

constexpr int64_t kSampleGrain = 8192;
// Draws per thread: a draw costs ~3x a sample from caller noise, so even a batch of
// 2560 latents is worth splitting (measured: 1.2x faster than on one thread, AVX2).
constexpr int64_t kPhiloxGrain = 1024;

template <typename scalar_t>
void reparameterize_typed(const scalar_t* mu, const scalar_t* logvar, const scalar_t* eps,
                          scalar_t* z, int64_t numel, int64_t num_samples, double std_exponent) {
  using Vec = AccVec<scalar_t>;
  const Vec c(static_cast<acc_type_t<scalar_t>>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  // Two vectors a step (load_two/store_two): one float16/bfloat16 conversion per pair,
  // and two independent chains through exp.
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += 2 * W) {
      const int64_t count = std::min(2 * W, end - i);
      Vec m[2], std[2];
      load_two(mu + i, count, m[0], m[1]);
      load_two(logvar + i, count, std[0], std[1]);
      std[0] = posterior_std(std[0], c);
      std[1] = posterior_std(std[1], c);
      for (int64_t k = 0; k < num_samples; ++k) {
        const int64_t at = k * numel + i;
        Vec e[2];
        load_two(eps + at, count, e[0], e[1]);
        store_two(z + at, count, reparameterize_forward(m[0], std[0], e[0]),
                  reparameterize_forward(m[1], std[1], e[1]));
      }
    }
  });
}

template <typename scalar_t>
void reparameterize_backward_typed(const scalar_t* grad_z, int64_t grad_z_stride,
                                   const scalar_t* logvar, const scalar_t* eps, scalar_t* grad_mu,
                                   scalar_t* grad_logvar, int64_t numel, int64_t num_samples,
                                   double std_exponent) {
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  const Vec c(static_cast<acc_t>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += 2 * W) {  // vector pairs: see reparameterize_typed
      const int64_t count = std::min(2 * W, end - i);
      Vec sum_grad[2] = {Vec(acc_t(0)), Vec(acc_t(0))};
      Vec sum_grad_eps[2] = {Vec(acc_t(0)), Vec(acc_t(0))};
      for (int64_t k = 0; k < num_samples; ++k) {  // fixed order over samples
        const int64_t at = k * numel + i;
        Vec g[2], e[2];
        if (grad_z_stride == 0) {
          g[0] = g[1] = Vec(static_cast<acc_t>(grad_z[0]));
        } else {
          load_two(grad_z + at, count, g[0], g[1]);
        }
        load_two(eps + at, count, e[0], e[1]);
        for (int h = 0; h < 2; ++h) {
          sum_grad[h] = sum_grad[h] + g[h];
          sum_grad_eps[h] = sum_grad_eps[h] + g[h] * e[h];
        }
      }
      Vec std[2];
      load_two(logvar + i, count, std[0], std[1]);
      store_two(grad_mu + i, count, sum_grad[0], sum_grad[1]);
      store_two(grad_logvar + i, count,
                reparameterize_scale_backward(posterior_std(std[0], c), sum_grad_eps[0], c),
                reparameterize_scale_backward(posterior_std(std[1], c), sum_grad_eps[1], c));
    }
  });
}

// In-kernel noise, a block of at most kNoiseBlock normals at a time. Normal i is output
// i % 4 of the Philox block of counter i / 4 (csrc/math/philox.h: the cosine and sine
// halves of Box-Muller on words 0 and 1, then on words 2 and 3), so a block of normals
// needs a quarter as many counters, plus one when it starts mid-counter.
constexpr int64_t kNoiseBlock = 256;

using FVec = at::vec::Vectorized<float>;

// Uniforms are laid out in packed vectors of kVecCounters counters, one vector per
// Philox word. Lane 4k + p of a vector holds counter p * kVecCounters / 4 + k: then
// interleaving the four normals of each lane within 128-bit blocks (store_interleaved)
// lists the vector's 4 * kVecCounters normals in stream order.
constexpr int64_t kVecCounters = FVec::size();
static_assert(kVecCounters % 4 == 0, "a vector of uniforms must fill whole 128-bit blocks");

// Counters a block of normals may span, rounded up to whole calls of the SIMD Philox.
constexpr int64_t kBlockCounters = kNoiseBlock / 4 + 2 * kVecCounters;
using BlockUniforms = float[4][kBlockCounters];  // [Philox word][slot in the packed layout]

constexpr int64_t counter_of_lane(int64_t lane) {
  return (lane % 4) * (kVecCounters / 4) + lane / 4;
}
constexpr int64_t lane_of_counter(int64_t counter) {
  return (counter % (kVecCounters / 4)) * 4 + counter / (kVecCounters / 4);
}

// out[4 * counter_of_lane(l) + w] = n_w[l]: four vectors of normals, one per Philox
// word, as 4 * kVecCounters consecutive normals of the stream.
inline void store_interleaved(const FVec& n0, const FVec& n1, const FVec& n2, const FVec& n3,
                              float* out) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
#define VK_PS(name) _mm512_##name##_ps
#else
#define VK_PS(name) _mm256_##name##_ps
#endif
  // Per 128-bit block: lo01 = n0[0] n1[0] n0[1] n1[1], hi01 = n0[2] n1[2] n0[3] n1[3].
  const auto lo01 = VK_PS(unpacklo)(n0, n1), hi01 = VK_PS(unpackhi)(n0, n1);
  const auto lo23 = VK_PS(unpacklo)(n2, n3), hi23 = VK_PS(unpackhi)(n2, n3);
  VK_PS(storeu)(out, VK_PS(shuffle)(lo01, lo23, 0x44));  // the 4 words of lanes 4k
  VK_PS(storeu)(out + kVecCounters, VK_PS(shuffle)(lo01, lo23, 0xEE));  // lanes 4k + 1
  VK_PS(storeu)(out + 2 * kVecCounters, VK_PS(shuffle)(hi01, hi23, 0x44));
  VK_PS(storeu)(out + 3 * kVecCounters, VK_PS(shuffle)(hi01, hi23, 0xEE));
#undef VK_PS
#else
  alignas(64) float words[4][kVecCounters];
  n0.store(words[0]);
  n1.store(words[1]);
  n2.store(words[2]);
  n3.store(words[3]);
  for (int64_t lane = 0; lane < kVecCounters; ++lane) {
    for (int w = 0; w < 4; ++w) out[4 * counter_of_lane(lane) + w] = words[w][lane];
  }
#endif
}

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// Philox4x32-10 (csrc/math/philox.h) in SIMD registers, bit for bit. One counter per
// 64-bit lane, each word in the lane's low half: vpmuludq multiplies the low halves into
// the full 64-bit product, whose low half is the next round's low product and whose
// high half, moved down by a 64-bit shift, the high product. The lanes' high halves
// carry garbage that nothing reads (vpmuludq reads low halves; the outputs are packed
// from them), so a round costs 2 multiplies, 2 shifts and 4 xors per register of
// counters. (A shift, not a dword shuffle: shuffles share one port with the xors.)
#if defined(CPU_CAPABILITY_AVX512)
using IVec = __m512i;
constexpr int kCounterLanes = 8;
inline IVec broadcast(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline IVec counters(uint64_t first, const int64_t* lanes) {
  return _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(first)), _mm512_load_si512(lanes));
}
inline IVec mul_wide(IVec a, IVec m) { return _mm512_mul_epu32(a, m); }
inline IVec high_half(IVec a) { return _mm512_srli_epi64(a, 32); }
inline IVec xor2(IVec a, IVec b) { return _mm512_xor_si512(a, b); }
// The low halves of a's and b's lanes as 32-bit lanes, in each 128-bit block a0 a1 b0 b1.
inline IVec pack_low_halves(IVec a, IVec b) {
  return _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), 0x88));
}
inline void store_uniform(IVec bits, float* out) {
  const IVec x = _mm512_xor_si512(bits, _mm512_srai_epi32(bits, 31));  // x < 0 ? ~x : x
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_set1_ps(4.6566127342e-10f)));
}
#else
using IVec = __m256i;
constexpr int kCounterLanes = 4;
inline IVec broadcast(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline IVec counters(uint64_t first, const int64_t* lanes) {
  return _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(first)),
                          _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes)));
}
inline IVec mul_wide(IVec a, IVec m) { return _mm256_mul_epu32(a, m); }
inline IVec high_half(IVec a) { return _mm256_srli_epi64(a, 32); }
inline IVec xor2(IVec a, IVec b) { return _mm256_xor_si256(a, b); }
// The low halves of a's and b's lanes as 32-bit lanes, in each 128-bit block a0 a1 b0 b1.
inline IVec pack_low_halves(IVec a, IVec b) {
  return _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), 0x88));
}
inline void store_uniform(IVec bits, float* out) {
  const IVec x = _mm256_xor_si256(bits, _mm256_srai_epi32(bits, 31));  // x < 0 ? ~x : x
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(4.6566127342e-10f)));
}
#endif
static_assert(2 * kCounterLanes == kVecCounters, "two registers of counters pack one vector");

// The ten round keys of a seed, broadcast to the lanes once per block of draws.
struct PhiloxRoundKeys {
  IVec k0[10], k1[10];
  explicit PhiloxRoundKeys(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      k0[round] = broadcast(a);
      k1[round] = broadcast(b);
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
  }
};

// Registers of counters computed together: a round is a chain of dependent steps
// (multiply, shift, xor), and four independent chains keep the ports busy.
constexpr int kPhiloxChains = 4;
constexpr int64_t kPhiloxCounters = kPhiloxChains * kCounterLanes;

// The counter of each lane of chain `chain`: pack_low_halves of chains 2p and 2p + 1
// gives packed vector p, whose lane l must hold counter p * kVecCounters +
// counter_of_lane(l).
struct LaneCounters {
  alignas(64) int64_t of[kPhiloxChains][kCounterLanes];
  constexpr LaneCounters() : of{} {
    for (int chain = 0; chain < kPhiloxChains; ++chain) {
      for (int lane = 0; lane < kCounterLanes; ++lane) {
        const int packed_lane = (lane / 2) * 4 + (chain % 2) * 2 + lane % 2;
        of[chain][lane] = (chain / 2) * kVecCounters + counter_of_lane(packed_lane);
      }
    }
  }
};
constexpr LaneCounters kLaneCounters;

// The uniforms of the kPhiloxCounters counters from block counter `first` (relative to
// `first_counter`), in the packed layout: word w at uniforms[w][first ... first +
// kPhiloxCounters).
inline void philox_uniform_lanes(const PhiloxRoundKeys& keys, uint64_t first_counter,
                                 int64_t first, BlockUniforms& uniforms) {
  const IVec m0 = broadcast(0xCD9E8D57u), m1 = broadcast(0xD2511F53u);
  IVec c0[kPhiloxChains], c1[kPhiloxChains], c2[kPhiloxChains], c3[kPhiloxChains];
  for (int g = 0; g < kPhiloxChains; ++g) {
    // Round 0 (c2 = c3 = 0: the products of c2 vanish) and round 1 (c1 = 0).
    const IVec counter = counters(first_counter + first, kLaneCounters.of[g]);  // low half c0, high half c1
    const IVec p1 = mul_wide(counter, m1);
    const IVec r0_c0 = xor2(high_half(counter), keys.k0[0]);
    const IVec r0_c2 = xor2(high_half(p1), keys.k1[0]);
    const IVec q0 = mul_wide(r0_c2, m0), q1 = mul_wide(r0_c0, m1);
    c0[g] = xor2(high_half(q0), keys.k0[1]);
    c2[g] = xor2(xor2(high_half(q1), p1), keys.k1[1]);
    c1[g] = q0;
    c3[g] = q1;
  }
  for (int round = 2; round < 10; ++round) {
    for (int g = 0; g < kPhiloxChains; ++g) {
      const IVec p0 = mul_wide(c2[g], m0), p1 = mul_wide(c0[g], m1);
      c0[g] = xor2(xor2(high_half(p0), c1[g]), keys.k0[round]);
      c2[g] = xor2(xor2(high_half(p1), c3[g]), keys.k1[round]);
      c1[g] = p0;
      c3[g] = p1;
    }
  }
  for (int g = 0; g < kPhiloxChains; g += 2) {
    const int64_t at = first + (g / 2) * kVecCounters;
    store_uniform(pack_low_halves(c0[g], c0[g + 1]), uniforms[0] + at);
    store_uniform(pack_low_halves(c1[g], c1[g + 1]), uniforms[1] + at);
    store_uniform(pack_low_halves(c2[g], c2[g + 1]), uniforms[2] + at);
    store_uniform(pack_low_halves(c3[g], c3[g + 1]), uniforms[3] + at);
  }
}
#endif

// eps[j] = philox_standard_normal(seed, first + j) for j < count <= kNoiseBlock: the
// integer Philox rounds in SIMD lanes (AVX2/AVX512; a plain loop elsewhere and for the
// last counters), Box-Muller in SIMD for every normal, whichever loop drew its bits
// (so values do not depend on where a thread's range starts).
template <typename acc_t>
void philox_normal_block(uint64_t seed, uint64_t first, int64_t count, acc_t* eps) {
  const uint64_t first_counter = first / 4;
  const int64_t skip = static_cast<int64_t>(first % 4);
  const int64_t num_counters = (skip + count + 3) / 4;
  const int64_t vectors = (num_counters + kVecCounters - 1) / kVecCounters;
  alignas(64) BlockUniforms uniforms;
  int64_t c = 0;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  const PhiloxRoundKeys keys(seed);
  for (; c + kPhiloxCounters <= num_counters; c += kPhiloxCounters) {
    philox_uniform_lanes(keys, first_counter, c, uniforms);
  }
#endif
  for (auto& word : uniforms) std::fill(word + c, word + vectors * kVecCounters, 0.5f);
  for (; c < num_counters; ++c) {
    const int64_t at = (c / kVecCounters) * kVecCounters + lane_of_counter(c % kVecCounters);
    uint32_t w0, w1, w2, w3;
    philox4x32_10(seed, first_counter + c, w0, w1, w2, w3);
    uniforms[0][at] = uint32_to_uniform(w0);
    uniforms[1][at] = uint32_to_uniform(w1);
    uniforms[2][at] = uint32_to_uniform(w2);
    uniforms[3][at] = uint32_to_uniform(w3);
  }
  alignas(64) float normals[4 * kBlockCounters];
  for (int64_t v = 0; v < vectors; ++v) {
    const int64_t at = v * kVecCounters;
    const FVec radius01 = box_muller_radius(FVec::loadu(uniforms[0] + at));
    const FVec radius23 = box_muller_radius(FVec::loadu(uniforms[2] + at));
    const FVec u1 = FVec::loadu(uniforms[1] + at), u3 = FVec::loadu(uniforms[3] + at);
    store_interleaved(radius01 * Math<FVec>::cos_turn(u1), radius01 * Math<FVec>::sin_turn(u1),
                      radius23 * Math<FVec>::cos_turn(u3), radius23 * Math<FVec>::sin_turn(u3),
                      normals + 4 * at);
  }
  std::copy(normals + skip, normals + skip + count, eps);
}

template <typename scalar_t>
void reparameterize_philox_typed(const scalar_t* mu, const scalar_t* logvar, uint64_t seed,
                                 scalar_t* z, scalar_t* eps_out, int64_t numel,
                                 int64_t num_samples, double std_exponent) {
  using acc_t = acc_type_t<scalar_t>;
  const AccVec<scalar_t> c(static_cast<acc_t>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, std::max<int64_t>(1, kPhiloxGrain / num_samples), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t eps[kNoiseBlock];
    for (int64_t block = begin; block < end; block += kNoiseBlock) {
      const int64_t count = std::min(kNoiseBlock, end - block);
      for (int64_t k = 0; k < num_samples; ++k) {
        philox_normal_block(seed, static_cast<uint64_t>(k * numel + block), count, eps);
        for (int64_t j = 0; j < count; j += W) {
          const int64_t n = std::min(W, count - j), i = block + j;
          const auto std = posterior_std(load_vec(logvar + i, n), c);
          const auto noise = load_vec(eps + j, n);
          store_vec(z + k * numel + i, reparameterize_forward(load_vec(mu + i, n), std, noise), n);
          if (eps_out) store_vec(eps_out + k * numel + i, noise, n);
        }
      }
    }
  });
}

template <typename scalar_t>
void reparameterize_philox_backward_typed(const scalar_t* grad_z, const scalar_t* logvar,
                                          uint64_t seed, scalar_t* grad_mu,
                                          scalar_t* grad_logvar, int64_t numel,
                                          int64_t num_samples, double std_exponent) {
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  const Vec c(static_cast<acc_t>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, std::max<int64_t>(1, kPhiloxGrain / num_samples), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t eps[kNoiseBlock];
    alignas(64) acc_t sum_grad[kNoiseBlock], sum_grad_eps[kNoiseBlock];
    for (int64_t block = begin; block < end; block += kNoiseBlock) {
      const int64_t count = std::min(kNoiseBlock, end - block);
      std::fill(sum_grad, sum_grad + count, acc_t(0));
      std::fill(sum_grad_eps, sum_grad_eps + count, acc_t(0));
      for (int64_t k = 0; k < num_samples; ++k) {  // fixed order over samples
        philox_normal_block(seed, static_cast<uint64_t>(k * numel + block), count, eps);
        for (int64_t j = 0; j < count; j += W) {
          const int64_t n = std::min(W, count - j);
          const auto g = load_vec(grad_z + k * numel + block + j, n);
          (Vec::loadu(sum_grad + j, n) + g).store(sum_grad + j, n);
          (Vec::loadu(sum_grad_eps + j, n) + g * Vec::loadu(eps + j, n)).store(sum_grad_eps + j, n);
        }
      }
      for (int64_t j = 0; j < count; j += W) {
        const int64_t n = std::min(W, count - j), i = block + j;
        const auto std = posterior_std(load_vec(logvar + i, n), c);
        store_vec(grad_mu + i, Vec::loadu(sum_grad + j, n), n);
        store_vec(grad_logvar + i, reparameterize_scale_backward(std, Vec::loadu(sum_grad_eps + j, n), c), n);
      }
    }
  });
}

#define VK_DISPATCH_FLOATING(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "vae_kernels_sample", __VA_ARGS__)

void reparameterize(c10::ScalarType dtype, const void* mu, const void* logvar, const void* eps,
                    void* z, int64_t numel, int64_t num_samples, double std_exponent) {
  VK_DISPATCH_FLOATING(dtype, [&] {
    reparameterize_typed(static_cast<const scalar_t*>(mu), static_cast<const scalar_t*>(logvar),
                         static_cast<const scalar_t*>(eps), static_cast<scalar_t*>(z), numel,
                         num_samples, std_exponent);
  });
}

void reparameterize_backward(c10::ScalarType dtype, const void* grad_z, int64_t grad_z_stride,
                             const void* logvar, const void* eps, void* grad_mu,
                             void* grad_logvar, int64_t numel, int64_t num_samples,
                             double std_exponent) {
  VK_DISPATCH_FLOATING(dtype, [&] {
    reparameterize_backward_typed(
        static_cast<const scalar_t*>(grad_z), grad_z_stride, static_cast<const scalar_t*>(logvar),
        static_cast<const scalar_t*>(eps), static_cast<scalar_t*>(grad_mu),
        static_cast<scalar_t*>(grad_logvar), numel, num_samples, std_exponent);
  });
}

void reparameterize_philox(c10::ScalarType dtype, const void* mu, const void* logvar,
                           uint64_t seed, void* z, void* eps, int64_t numel, int64_t num_samples,
                           double std_exponent) {
  VK_DISPATCH_FLOATING(dtype, [&] {
    reparameterize_philox_typed(static_cast<const scalar_t*>(mu),
                                static_cast<const scalar_t*>(logvar), seed,
                                static_cast<scalar_t*>(z), static_cast<scalar_t*>(eps), numel,
                                num_samples, std_exponent);
  });
}

void reparameterize_philox_backward(c10::ScalarType dtype, const void* grad_z, const void* logvar,
                                    uint64_t seed, void* grad_mu, void* grad_logvar, int64_t numel,
                                    int64_t num_samples, double std_exponent) {
  VK_DISPATCH_FLOATING(dtype, [&] {
    reparameterize_philox_backward_typed(
        static_cast<const scalar_t*>(grad_z), static_cast<const scalar_t*>(logvar), seed,
        static_cast<scalar_t*>(grad_mu), static_cast<scalar_t*>(grad_logvar), numel, num_samples,
        std_exponent);
  });
}

}  // namespace

void add_sampling_kernels(KernelTable& table) {
  table.reparameterize = &reparameterize;
  table.reparameterize_backward = &reparameterize_backward;
  table.reparameterize_philox = &reparameterize_philox;
  table.reparameterize_philox_backward = &reparameterize_philox_backward;
}

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
