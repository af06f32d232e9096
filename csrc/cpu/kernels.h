// The CPU kernels' interface: raw pointers and sizes, one table per instruction set.
//
// Every kernel source in this folder is compiled once per instruction set (DEFAULT,
// AVX2, AVX512; see CMakeLists.txt) into its own namespace, and dispatch.cpp picks
// the table for the running CPU. The torch-facing glue (ops_cpu.cpp) allocates
// tensors, checks arguments and turns per-row sums into the requested reduction.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace vae_kernels::cpu {

// Reconstruction likelihoods; the values are the `likelihood` argument of the elbo op.
enum class Likelihood : int64_t {
  kBernoulliLogits = 0,
  kBernoulliProbs = 1,
  kGaussian = 2,  // fixed log-variance `logvar_value`, or learned: a third input
  kSquaredError = 3,
};

// An elementwise loss over `rows` rows of `row_len` contiguous elements (all
// buffers of the same dtype and numel). Null outputs are not computed.
struct LossBuffers {
  static constexpr int kMaxInputs = 4;
  int64_t rows = 0;
  int64_t row_len = 0;
  const void* inputs[kMaxInputs] = {};
  void* elementwise_loss = nullptr;
  // grad_scale * d loss_i / d inputs[k]_i (local gradients), float32 for float16
  // inputs (local_grad_dtype in csrc/op_checks.h), else of the inputs' dtype.
  void* grads[kMaxInputs] = {};
  double grad_scale = 1.0;  // 1 / the reduction's divisor
  // Results: the per-row sums (length `rows`, summed in a fixed order, so bitwise
  // independent of the thread count), and which inputs had values outside [0, 1]
  // (only inputs the loss requires to lie there are checked).
  double* row_sums = nullptr;
  bool out_of_unit_interval[kMaxInputs] = {};
};

struct KernelTable {
  const char* name;
  // inputs: input, target[, logvar]; grads in the same order.
  void (*reconstruction_nll)(c10::ScalarType dtype, Likelihood likelihood, bool learned_logvar,
                             double logvar_value, LossBuffers& buffers);
  // inputs: mu, logvar[, prior_mu, prior_logvar]; grads in the same order.
  void (*gaussian_kl)(c10::ScalarType dtype, bool with_prior, LossBuffers& buffers);
  // z[k, i] = mu[i] + exp(0.5 logvar[i]) * eps[k, i] for k < num_samples, i < numel.
  void (*reparameterize)(c10::ScalarType dtype, const void* mu, const void* logvar,
                         const void* eps, void* z, int64_t numel, int64_t num_samples);
  void (*reparameterize_backward)(c10::ScalarType dtype, const void* grad_z, const void* logvar,
                                  const void* eps, void* grad_mu, void* grad_logvar, int64_t numel,
                                  int64_t num_samples);
  // The same, with eps[k, i] = philox_standard_normal(seed, k * numel + i).
  void (*reparameterize_philox)(c10::ScalarType dtype, const void* mu, const void* logvar,
                                uint64_t seed, void* z, int64_t numel, int64_t num_samples);
  void (*reparameterize_philox_backward)(c10::ScalarType dtype, const void* grad_z,
                                         const void* logvar, uint64_t seed, void* grad_mu,
                                         void* grad_logvar, int64_t numel, int64_t num_samples);
  // out[r, j] = local_grad[r, j] * grad_output[r or j or 0], where grad_output has one
  // value per element, per row, or a single value. `dtype` is that of grad_output and
  // out; local_grad has the local-gradient dtype (float32 for float16).
  void (*loss_backward)(c10::ScalarType dtype, const void* local_grad, const void* grad_output,
                        int64_t grad_output_stride_elem, int64_t grad_output_stride_row,
                        void* out, int64_t rows, int64_t row_len);
};

namespace DEFAULT { const KernelTable& kernel_table(); }
namespace AVX2 { const KernelTable& kernel_table(); }
namespace AVX512 { const KernelTable& kernel_table(); }

// The table for this CPU (honours ATEN_CPU_CAPABILITY, as ATen's own kernels do).
const KernelTable& kernels();

}  // namespace vae_kernels::cpu
