// extern "C" entry points for ctypes (tests/cuda_emulation/emulated.py): every launcher
// of csrc/cuda/launchers.h with plain arguments (a null stream: launches are synchronous
// in the emulation), and the emulated half/bfloat16 conversions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launchers.h"

using namespace vae_kernels::cuda;

extern "C" {

// input_dtypes: one DType code per input where they mix, else null.
int vk_launch_loss(int dtype, const int* input_dtypes, int kind, double param, int64_t rows,
                   int64_t row_len, const void* const* inputs, void* elementwise_loss,
                   void* const* grads, double grad_scale, double* partial_sums,
                   int32_t* out_of_unit_interval) {
  LossBuffers b;
  b.rows = rows;
  b.row_len = row_len;
  for (int k = 0; k < LossBuffers::kMaxInputs; ++k) {
    b.inputs[k] = inputs[k];
    b.grads[k] = grads[k];
  }
  b.elementwise_loss = elementwise_loss;
  b.grad_scale = grad_scale;
  b.sums = partial_sums;
  b.out_of_unit_interval = out_of_unit_interval;
  DType dtypes[LossBuffers::kMaxInputs] = {};
  if (input_dtypes) {
    for (int k = 0; k < LossBuffers::kMaxInputs; ++k) dtypes[k] = DType(input_dtypes[k]);
  }
  return launch_loss(DType(dtype), input_dtypes ? dtypes : nullptr, LossKind(kind), param, b,
                     nullptr);
}

int vk_launch_finish_rows(int dtype, const double* partials_a, int64_t chunks_a,
                          const double* partials_b, int64_t chunks_b, double beta, int64_t rows,
                          double scale, void* out_total, void* out_a, void* out_b) {
  return launch_finish_rows(DType(dtype), partials_a, chunks_a, partials_b, chunks_b, beta, rows,
                            scale, out_total, out_a, out_b, nullptr);
}

int vk_launch_finish_total(int dtype, const double* partials_a, int64_t count_a,
                           const double* partials_b, int64_t count_b, double beta, double scale,
                           void* out_total, void* out_a, void* out_b) {
  return launch_finish_total(DType(dtype), partials_a, count_a, partials_b, count_b, beta, scale,
                             out_total, out_a, out_b, nullptr);
}

int vk_launch_reparameterize(int dtype, const void* mu, const void* logvar, const void* eps,
                             void* z, int64_t numel, int64_t num_samples, double std_exponent) {
  return launch_reparameterize(DType(dtype), mu, logvar, eps, z, numel, num_samples, std_exponent,
                               nullptr);
}

int vk_launch_reparameterize_backward(int dtype, const void* grad_z, const void* logvar,
                                      const void* eps, void* grad_mu, void* grad_logvar,
                                      int64_t numel, int64_t num_samples, double std_exponent) {
  return launch_reparameterize_backward(DType(dtype), grad_z, logvar, eps, grad_mu, grad_logvar,
                                        numel, num_samples, std_exponent, nullptr);
}

int vk_launch_reparameterize_philox(int dtype, const void* mu, const void* logvar,
                                    const int64_t* seed, void* z, int64_t numel,
                                    int64_t num_samples, double std_exponent) {
  return launch_reparameterize_philox(DType(dtype), mu, logvar, seed, z, numel, num_samples,
                                      std_exponent, nullptr);
}

int vk_launch_reparameterize_philox_backward(int dtype, const void* grad_z, const void* logvar,
                                             const int64_t* seed, void* grad_mu,
                                             void* grad_logvar, int64_t numel,
                                             int64_t num_samples, double std_exponent) {
  return launch_reparameterize_philox_backward(DType(dtype), grad_z, logvar, seed, grad_mu,
                                               grad_logvar, numel, num_samples, std_exponent,
                                               nullptr);
}

int vk_launch_loss_backward(int dtype, const void* local_grad, const void* grad_output,
                            int64_t stride_elem, int64_t stride_row, void* out, int64_t rows,
                            int64_t row_len) {
  return launch_loss_backward(DType(dtype), local_grad, grad_output, stride_elem, stride_row, out,
                              rows, row_len, nullptr);
}

// MixtureBuffers from plain arguments; strides (4 each) in elements.
int vk_launch_discretized_logistic_mixture(int params_dtype, int x_dtype, int channels,
                                           int components, int64_t num_bits, int64_t batch,
                                           int64_t height, int64_t width, const void* params,
                                           const int64_t* params_strides, const void* x,
                                           const int64_t* x_strides, void* pixel_nll,
                                           void* grads, double grad_scale, double* sums,
                                           int32_t* x_out_of_range, float* grad_workspace) {
  MixtureBuffers b;
  b.layout.channels = channels;
  b.layout.components = components;
  b.bins = vae_kernels::mixture_bins(num_bits);
  b.batch = batch;
  b.height = height;
  b.width = width;
  b.params = params;
  b.x = x;
  for (int d = 0; d < 4; ++d) {
    b.params_strides[d] = params_strides[d];
    b.x_strides[d] = x_strides[d];
  }
  b.pixel_nll = pixel_nll;
  b.grads = grads;
  b.grad_scale = grad_scale;
  b.sums = sums;
  b.x_out_of_range = x_out_of_range;
  return launch_discretized_logistic_mixture(DType(params_dtype), DType(x_dtype), b,
                                             grad_workspace, nullptr);
}

// The emulation's own conversions, checked against torch's.
void vk_float_to_half(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half_as_ushort(__float2half_rn(in[i]));
}
void vk_half_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half2float(__ushort_as_half(in[i]));
}
void vk_float_to_bfloat16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}
void vk_bfloat16_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}

}  // extern "C"
