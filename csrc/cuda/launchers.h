// The CUDA kernels' interface: raw pointers, sizes and a cudaStream_t, no torch.
//
// The *.cu files in this folder include only this header, csrc/math/ and the CUDA
// toolkit, so they compile with nvcc on a machine whose torch has no CUDA
// (tests/test_cuda_build.py does exactly that). The torch glue (ops_cuda.cpp) checks
// arguments, allocates tensors and workspaces, and calls these launchers on the
// current stream. Every launcher returns the launch's cudaError_t; none synchronizes.
//
// Reductions never use float atomics: each block of a loss pass writes the sum of its
// fixed range of elements to its own slot of a partial-sums buffer, and a second
// launch (launch_finish_rows / launch_finish_total) adds the slots in a fixed order.
// Results are bitwise equal from run to run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../math/discretized_logistic_mixture.h"
#include "../math/losses.h"

namespace vae_kernels::cuda {

// The element type of every tensor of one call (kernels load it, compute in float32,
// or float64 for kFloat64, and store it back).
enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// The losses (LossKind) and their buffers (LossBuffers) are csrc/math/losses.h's, shared
// with the CPU kernels. Here LossBuffers::sums receives one sum per block:
// rows * loss_chunks_per_row(row_len) slots, slot [r * chunks + c] = the sum over chunk c
// of row r (null when no sum is needed), and the out_of_unit_interval flags are int32s
// in device memory.
using ::vae_kernels::LossBuffers;
using ::vae_kernels::LossKind;

// Elements summed by one block of a loss pass (one slot of LossBuffers::sums).
constexpr int64_t kLossChunk = 8192;

// Blocks (and partial sums) per row of `row_len` elements: at least 1, so an empty
// row still gets a slot holding 0.
inline int64_t loss_chunks_per_row(int64_t row_len) {
  return row_len <= kLossChunk ? 1 : (row_len + kLossChunk - 1) / kLossChunk;
}

// `param` is a fixed-scale kind's scale (see visit_loss; ignored otherwise). `dtype` is
// that of the outputs (the elementwise loss; local gradients: local_grad_t of it) and of
// every input, unless `input_dtypes` (one per input) is given: then each input is read in
// its own dtype (float32, bfloat16, float16) and `dtype` must be kFloat32.
cudaError_t launch_loss(DType dtype, const DType* input_dtypes, LossKind kind, double param,
                        const LossBuffers& buffers, cudaStream_t stream);

// Per-row results from the partial sums of one or two loss passes with `rows` rows
// (a: chunks_a slots per row; b: chunks_b slots per row, or null):
//   out_a[r] = A_r * scale,  out_b[r] = B_r * scale,  out_total[r] = (A_r + beta*B_r) * scale
// where A_r, B_r are the row's slots added in index order in float64. Null outputs
// are skipped. Outputs have `dtype`.
cudaError_t launch_finish_rows(DType dtype, const double* partials_a, int64_t chunks_a,
                               const double* partials_b, int64_t chunks_b, double beta,
                               int64_t rows, double scale, void* out_total, void* out_a,
                               void* out_b, cudaStream_t stream);

// The same for totals: A = the sum of all `count_a` slots (B likewise; b may be null),
// added in a fixed order in float64; each output is a single element.
cudaError_t launch_finish_total(DType dtype, const double* partials_a, int64_t count_a,
                                const double* partials_b, int64_t count_b, double beta,
                                double scale, void* out_total, void* out_a, void* out_b,
                                cudaStream_t stream);

// z[k, i] = mu[i] + exp(std_exponent * s[i]) * eps[k, i] for k < num_samples, i < numel,
// with s a log-variance (std_exponent 1/2) or a log-sigma (1): csrc/math/sampling.h.
cudaError_t launch_reparameterize(DType dtype, const void* mu, const void* logvar, const void* eps,
                                  void* z, int64_t numel, int64_t num_samples,
                                  double std_exponent, cudaStream_t stream);
// grad_mu[i] = sum_k grad_z[k, i], grad_logvar[i] = std_exponent std_i sum_k grad_z[k, i] eps[k, i]
// (k in order).
cudaError_t launch_reparameterize_backward(DType dtype, const void* grad_z, const void* logvar,
                                           const void* eps, void* grad_mu, void* grad_logvar,
                                           int64_t numel, int64_t num_samples,
                                           double std_exponent, cudaStream_t stream);
// The same with eps[k, i] = philox_standard_normal(*seed, k * numel + i); `seed` points
// to one int64 in device memory (read by the kernels: no host synchronization).
cudaError_t launch_reparameterize_philox(DType dtype, const void* mu, const void* logvar,
                                         const int64_t* seed, void* z, int64_t numel,
                                         int64_t num_samples, double std_exponent,
                                         cudaStream_t stream);
cudaError_t launch_reparameterize_philox_backward(DType dtype, const void* grad_z,
                                                  const void* logvar, const int64_t* seed,
                                                  void* grad_mu, void* grad_logvar, int64_t numel,
                                                  int64_t num_samples, double std_exponent,
                                                  cudaStream_t stream);

// The discretized logistic mixture NLL (csrc/math/discretized_logistic_mixture.h), one
// thread per pixel; params in `params_dtype`, x in `x_dtype`. MixtureBuffers is the one
// of the CPU kernel, and here: `sums` receives one sum per block,
// batch * mixture_blocks_per_image(height * width) slots, slot [b * blocks + c] = the
// NLL summed over block c's pixels of image b (null when no sum is needed; finish them
// with launch_finish_rows / launch_finish_total); `x_out_of_range` is an int32 in device
// memory, set to 1 and never cleared. `grad_workspace`: float32 scratch of the gradient's
// shape, (B, P, H, W) contiguous, required when a bfloat16 gradient is asked for (the
// first pass's values are kept there, unrounded), ignored otherwise.
using ::vae_kernels::MixtureBuffers;

// Pixels of one image per block (one thread each): one slot of MixtureBuffers::sums.
constexpr int kMixturePixelsPerBlock = 128;

// Blocks (and sums) per image of `pixels` pixels: at least 1, so an empty image still
// gets a slot holding 0.
inline int64_t mixture_blocks_per_image(int64_t pixels) {
  return pixels <= kMixturePixelsPerBlock
             ? 1
             : (pixels + kMixturePixelsPerBlock - 1) / kMixturePixelsPerBlock;
}

cudaError_t launch_discretized_logistic_mixture(DType params_dtype, DType x_dtype,
                                                const MixtureBuffers& buffers,
                                                float* grad_workspace, cudaStream_t stream);

// out[r, j] = local_grad[r, j] * grad_output[r * stride_row + j * stride_elem] over
// `rows` rows of `row_len` elements: stride_elem = 1 (one upstream value per element;
// then stride_row = row_len), or 0 (one per row: stride_row = 1; or a single value:
// stride_row = 0). `dtype` is that of grad_output and out; local_grad is float32 for
// kFloat16 (see LossBuffers::grads). `out` may be `local_grad` itself (in place).
cudaError_t launch_loss_backward(DType dtype, const void* local_grad, const void* grad_output,
                                 int64_t grad_output_stride_elem, int64_t grad_output_stride_row,
                                 void* out, int64_t rows, int64_t row_len, cudaStream_t stream);

}  // namespace vae_kernels::cuda
