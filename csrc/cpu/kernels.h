// The CPU kernels' interface: raw pointers and sizes, one table per instruction set.
//
// Every kernel source in this folder is compiled once per instruction set (DEFAULT,
// AVX2, AVX512; see CMakeLists.txt) into its own namespace, and dispatch.cpp picks
// the table for the running CPU. The torch-facing glue (ops_cpu.cpp) allocates
// tensors, checks arguments and turns per-row sums into the requested reduction. The
// losses' buffers (LossBuffers) and kinds are those of csrc/math/losses.h.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../math/discretized_logistic_mixture.h"
#include "../math/losses.h"

namespace vae_kernels::cpu {

struct KernelTable {
  const char* name;
  // The elementwise loss `kind` (csrc/math/losses.h; `param`: see visit_loss), with the
  // per-row sums in buffers.sums. `dtype`: that of the outputs (the elementwise loss;
  // the local gradients: local_grad_dtype of it) and of every input, unless
  // `input_dtypes` (one per input) is given: then inputs are read in their own dtypes
  // (float32, bfloat16, float16) and `dtype` must be float32.
  void (*loss)(c10::ScalarType dtype, const c10::ScalarType* input_dtypes, LossKind kind,
               double param, LossBuffers& buffers);
  // z[k, i] = mu[i] + exp(std_exponent * s[i]) * eps[k, i] for k < num_samples, i < numel;
  // s is a log-variance (std_exponent 1/2) or a log-sigma (1): csrc/math/sampling.h.
  void (*reparameterize)(c10::ScalarType dtype, const void* mu, const void* logvar,
                         const void* eps, void* z, int64_t numel, int64_t num_samples,
                         double std_exponent);
  // grad_z_stride: 1, or 0 for one value broadcast to every element (the gradient of a
  // sum, z.sum().backward(), read without materializing it).
  void (*reparameterize_backward)(c10::ScalarType dtype, const void* grad_z,
                                  int64_t grad_z_stride, const void* logvar, const void* eps,
                                  void* grad_mu, void* grad_logvar, int64_t numel,
                                  int64_t num_samples, double std_exponent);
  // The same, with eps[k, i] = philox_standard_normal(seed, k * numel + i), also
  // written to `eps` unless it is null.
  void (*reparameterize_philox)(c10::ScalarType dtype, const void* mu, const void* logvar,
                                uint64_t seed, void* z, void* eps, int64_t numel,
                                int64_t num_samples, double std_exponent);
  void (*reparameterize_philox_backward)(c10::ScalarType dtype, const void* grad_z,
                                         const void* logvar, uint64_t seed, void* grad_mu,
                                         void* grad_logvar, int64_t numel, int64_t num_samples,
                                         double std_exponent);
  // out[r, j] = local_grad[r, j] * grad_output[r or j or 0], where grad_output has one
  // value per element, per row, or a single value. `dtype` is that of grad_output and
  // out; local_grad has the local-gradient dtype (float32 for float16).
  void (*loss_backward)(c10::ScalarType dtype, const void* local_grad, const void* grad_output,
                        int64_t grad_output_stride_elem, int64_t grad_output_stride_row,
                        void* out, int64_t rows, int64_t row_len);
  // The discretized logistic mixture NLL per pixel and per sample, and its gradient in
  // params where buffers.grads is set (csrc/math/discretized_logistic_mixture.h). x is
  // read in x_dtype, params in params_dtype; both compute in params' compute type.
  void (*discretized_logistic_mixture)(c10::ScalarType params_dtype, c10::ScalarType x_dtype,
                                       const MixtureBuffers& buffers);
};

namespace DEFAULT { const KernelTable& kernel_table(); }
namespace AVX2 { const KernelTable& kernel_table(); }
namespace AVX512 { const KernelTable& kernel_table(); }

// The table for this CPU (honours ATEN_CPU_CAPABILITY, as ATen's own kernels do).
const KernelTable& kernels();

}  // namespace vae_kernels::cpu
