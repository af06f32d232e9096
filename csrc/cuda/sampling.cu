// CUDA kernels of reparameterized sampling, with caller noise or in-kernel Philox noise
// (the stream of csrc/math/philox.h, Triton's tl.randn4x; regenerated in backward, never
// stored). Formulas: csrc/math/sampling.h, shared with the CPU kernels.
//
// Scalar loads: the latent tensors these run on are small next to the reconstruction,
// and each thread's work is dominated by exp (and Philox) rather than bytes.
#include "../math/philox.h"
#include "../math/sampling.h"
#include "common.cuh"

namespace vae_kernels::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per output element z[k, i] (grid-stride, int64 indices).
template <typename T>
__global__ void reparameterize_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                                      const T* __restrict__ eps, T* __restrict__ z, int64_t numel,
                                      int64_t total, double std_exponent) {
  using A = acc_t<T>;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = index % numel;
    const A std = posterior_std(to_acc(logvar[i]), A(std_exponent));
    z[index] = from_acc<T>(reparameterize_forward(to_acc(mu[i]), std, to_acc(eps[index])));
  }
}

// One thread per latent element i, adding its K samples in order k = 0, 1, ...
template <typename T>
__global__ void reparameterize_backward_kernel(const T* __restrict__ grad_z,
                                               const T* __restrict__ logvar,
                                               const T* __restrict__ eps, T* __restrict__ grad_mu,
                                               T* __restrict__ grad_logvar, int64_t numel,
                                               int64_t num_samples, double std_exponent) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    A sum_grad(0), sum_grad_eps(0);
    for (int64_t k = 0; k < num_samples; ++k) {
      const int64_t index = k * numel + i;
      const A g = to_acc(grad_z[index]);
      sum_grad += g;
      sum_grad_eps += g * to_acc(eps[index]);
    }
    const A std = posterior_std(to_acc(logvar[i]), A(std_exponent));
    grad_mu[i] = from_acc<T>(sum_grad);
    grad_logvar[i] = from_acc<T>(reparameterize_scale_backward(std, sum_grad_eps, A(std_exponent)));
  }
}

template <typename T>
__global__ void reparameterize_philox_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                                             const int64_t* __restrict__ seed_ptr,
                                             T* __restrict__ z, int64_t numel, int64_t total,
                                             double std_exponent) {
  using A = acc_t<T>;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = index % numel;
    const A eps = philox_standard_normal(seed, static_cast<uint64_t>(index));
    const A std = posterior_std(to_acc(logvar[i]), A(std_exponent));
    z[index] = from_acc<T>(reparameterize_forward(to_acc(mu[i]), std, eps));
  }
}

template <typename T>
__global__ void reparameterize_philox_backward_kernel(const T* __restrict__ grad_z,
                                                      const T* __restrict__ logvar,
                                                      const int64_t* __restrict__ seed_ptr,
                                                      T* __restrict__ grad_mu,
                                                      T* __restrict__ grad_logvar, int64_t numel,
                                                      int64_t num_samples, double std_exponent) {
  using A = acc_t<T>;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    A sum_grad(0), sum_grad_eps(0);
    for (int64_t k = 0; k < num_samples; ++k) {
      const int64_t index = k * numel + i;
      const A eps = philox_standard_normal(seed, static_cast<uint64_t>(index));
      const A g = to_acc(grad_z[index]);
      sum_grad += g;
      sum_grad_eps += g * eps;
    }
    const A std = posterior_std(to_acc(logvar[i]), A(std_exponent));
    grad_mu[i] = from_acc<T>(sum_grad);
    grad_logvar[i] = from_acc<T>(reparameterize_scale_backward(std, sum_grad_eps, A(std_exponent)));
  }
}

}  // namespace

cudaError_t launch_reparameterize(DType dtype, const void* mu, const void* logvar, const void* eps,
                                  void* z, int64_t numel, int64_t num_samples,
                                  double std_exponent, cudaStream_t stream) {
  const int64_t total = numel * num_samples;
  if (total <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(reparameterize_kernel<T>, grid_for(total, kThreads), kThreads, stream,
                         static_cast<const T*>(mu), static_cast<const T*>(logvar),
                         static_cast<const T*>(eps), static_cast<T*>(z), numel, total,
                         std_exponent);
  });
}

cudaError_t launch_reparameterize_backward(DType dtype, const void* grad_z, const void* logvar,
                                           const void* eps, void* grad_mu, void* grad_logvar,
                                           int64_t numel, int64_t num_samples,
                                           double std_exponent, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(reparameterize_backward_kernel<T>, grid_for(numel, kThreads), kThreads,
                         stream, static_cast<const T*>(grad_z), static_cast<const T*>(logvar),
                         static_cast<const T*>(eps), static_cast<T*>(grad_mu),
                         static_cast<T*>(grad_logvar), numel, num_samples, std_exponent);
  });
}

cudaError_t launch_reparameterize_philox(DType dtype, const void* mu, const void* logvar,
                                         const int64_t* seed, void* z, int64_t numel,
                                         int64_t num_samples, double std_exponent,
                                         cudaStream_t stream) {
  const int64_t total = numel * num_samples;
  if (total <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(reparameterize_philox_kernel<T>, grid_for(total, kThreads), kThreads,
                         stream, static_cast<const T*>(mu), static_cast<const T*>(logvar), seed,
                         static_cast<T*>(z), numel, total, std_exponent);
  });
}

cudaError_t launch_reparameterize_philox_backward(DType dtype, const void* grad_z,
                                                  const void* logvar, const int64_t* seed,
                                                  void* grad_mu, void* grad_logvar, int64_t numel,
                                                  int64_t num_samples, double std_exponent,
                                         cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(reparameterize_philox_backward_kernel<T>, grid_for(numel, kThreads),
                         kThreads, stream, static_cast<const T*>(grad_z),
                         static_cast<const T*>(logvar), seed, static_cast<T*>(grad_mu),
                         static_cast<T*>(grad_logvar), numel, num_samples, std_exponent);
  });
}

}  // namespace vae_kernels::cuda
