// CPU kernels of reparameterized sampling, with caller noise or in-kernel Philox noise
// (written out on request, so that backward reads it instead of regenerating it: on a
// CPU, Philox + Box-Muller costs more than reading eps). Formulas: csrc/math/sampling.h.
#include "../math/philox.h"
#include "../math/sampling.h"
#include "isa_kernels.h"
#include "loss_loop.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

constexpr int64_t kSampleGrain = 8192;

template <typename scalar_t>
void reparameterize_typed(const scalar_t* mu, const scalar_t* logvar, const scalar_t* eps,
                          scalar_t* z, int64_t numel, int64_t num_samples, double std_exponent) {
  using Vec = AccVec<scalar_t>;
  const Vec c(static_cast<acc_type_t<scalar_t>>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += W) {
      const int64_t count = std::min(W, end - i);
      const auto m = load_vec(mu + i, count);
      const auto std = posterior_std(load_vec(logvar + i, count), c);
      for (int64_t k = 0; k < num_samples; ++k) {
        const int64_t at = k * numel + i;
        store_vec(z + at, reparameterize_forward(m, std, load_vec(eps + at, count)), count);
      }
    }
  });
}

template <typename scalar_t>
void reparameterize_backward_typed(const scalar_t* grad_z, const scalar_t* logvar,
                                   const scalar_t* eps, scalar_t* grad_mu, scalar_t* grad_logvar,
                                   int64_t numel, int64_t num_samples, double std_exponent) {
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  const Vec c(static_cast<acc_t>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += W) {
      const int64_t count = std::min(W, end - i);
      Vec sum_grad(acc_t(0)), sum_grad_eps(acc_t(0));
      for (int64_t k = 0; k < num_samples; ++k) {  // fixed order over samples
        const int64_t at = k * numel + i;
        const auto g = load_vec(grad_z + at, count);
        sum_grad = sum_grad + g;
        sum_grad_eps = sum_grad_eps + g * load_vec(eps + at, count);
      }
      const auto std = posterior_std(load_vec(logvar + i, count), c);
      store_vec(grad_mu + i, sum_grad, count);
      store_vec(grad_logvar + i, reparameterize_scale_backward(std, sum_grad_eps, c), count);
    }
  });
}

constexpr int64_t kNoiseBlock = 256;

// eps[j] = philox_standard_normal(seed, first + j) for j < count <= kNoiseBlock: the
// integer Philox rounds in a plain loop the compiler vectorizes, Box-Muller in SIMD.
template <typename acc_t>
void philox_normal_block(uint64_t seed, uint64_t first, int64_t count, acc_t* eps) {
  using FVec = at::vec::Vectorized<float>;
  alignas(64) float u1[kNoiseBlock], u2[kNoiseBlock];
  for (int64_t j = 0; j < count; ++j) philox_uniform_pair(seed, first + j, u1[j], u2[j]);
  for (int64_t j = 0; j < count; j += FVec::size()) {
    const int64_t n = std::min<int64_t>(FVec::size(), count - j);
    const FVec normal = box_muller(FVec::loadu(u1 + j, n), FVec::loadu(u2 + j, n));
    if constexpr (std::is_same_v<acc_t, float>) {
      normal.store(eps + j, n);
    } else {
      alignas(64) float lanes[FVec::size()];
      normal.store(lanes);
      for (int64_t l = 0; l < n; ++l) eps[j + l] = lanes[l];
    }
  }
}

template <typename scalar_t>
void reparameterize_philox_typed(const scalar_t* mu, const scalar_t* logvar, uint64_t seed,
                                 scalar_t* z, scalar_t* eps_out, int64_t numel,
                                 int64_t num_samples, double std_exponent) {
  using acc_t = acc_type_t<scalar_t>;
  const AccVec<scalar_t> c(static_cast<acc_t>(std_exponent));
  constexpr int64_t W = kVecWidth<scalar_t>;
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
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
  at::parallel_for(0, numel, kSampleGrain, [&](int64_t begin, int64_t end) {
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

void reparameterize_backward(c10::ScalarType dtype, const void* grad_z, const void* logvar,
                             const void* eps, void* grad_mu, void* grad_logvar, int64_t numel,
                             int64_t num_samples, double std_exponent) {
  VK_DISPATCH_FLOATING(dtype, [&] {
    reparameterize_backward_typed(
        static_cast<const scalar_t*>(grad_z), static_cast<const scalar_t*>(logvar),
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
