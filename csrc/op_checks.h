// Argument checks and shape helpers shared by the torch glue of every C++ backend
// (csrc/cpu/ops_cpu.cpp, csrc/cuda/ops_cuda.cpp). The messages name the op, the
// argument, what was expected and what was given.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <vector>

#include "math/discretized_logistic_mixture.h"
#include "math/losses.h"

namespace vae_kernels {

// The `reduction` argument of the loss ops (csrc/schemas.cpp).
enum Reduction : int64_t { kNone = 0, kPerSample = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kSum,
                    "vae_kernels: reduction must be 0 (none), 1 (per_sample) or 2 (sum), got ",
                    reduction);
}

// `t` must be a floating-point tensor on a `device_type` device.
inline void check_floating(const char* op, const char* name, const at::Tensor& t,
                           c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "vae_kernels.", op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().type() == device_type, "vae_kernels.", op, ": ", name,
                    " must be a ", c10::DeviceTypeName(device_type), " tensor, got one on ",
                    t.device());
}

// Whether the kernels read the inputs of one loss call in different dtypes: the CPU
// kernels do (float32, bfloat16 and float16, computed in float32); the CUDA kernels read
// one dtype.
enum class InputDtypes { kSame, kMixed };

// `t` must be on `ref`'s device with `ref`'s dtype (kMixed: any floating dtype that
// mixes with it, see loss_dtype) and shape (if asked).
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref, bool same_shape = true,
                       InputDtypes dtypes = InputDtypes::kSame) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "vae_kernels.", op, ": ", name,
                    " must be on the device of ", ref_name, " (", ref.device(), "), got ",
                    t.device());
  if (dtypes == InputDtypes::kMixed && t.scalar_type() != ref.scalar_type()) {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kDouble &&
                         ref.scalar_type() != at::kDouble,
                     "vae_kernels.", op, ": ", name, " must have the dtype of ", ref_name, " (",
                     ref.scalar_type(), ") or, as the CPU kernels mix float32, bfloat16 and "
                     "float16, one of those; got ", t.scalar_type(),
                     " (float64 does not mix: cast to it first)");
  } else {
    TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "vae_kernels.", op, ": ", name,
                     " must have the dtype of ", ref_name, " (", ref.scalar_type(), "), got ",
                     t.scalar_type());
  }
  TORCH_CHECK_VALUE(!same_shape || t.sizes() == ref.sizes(), "vae_kernels.", op, ": ", name,
                    " must have the shape of ", ref_name, " ", ref.sizes(), ", got ", t.sizes());
}

// The dtype a loss op computes its outputs in: its inputs' dtype, or float32 where
// they mix (checked by check_like with InputDtypes::kMixed).
inline at::ScalarType loss_dtype(const std::vector<at::Tensor>& inputs) {
  const at::ScalarType first = inputs.front().scalar_type();
  for (const auto& t : inputs) {
    if (t.scalar_type() != first) return at::kFloat;
  }
  return first;
}

// The dtype of a loss op's local-gradient outputs for inputs of dtype `input`: float32
// for float16, whose range (65504) a local gradient can exceed before the upstream
// gradient and 1/divisor bring it back into range; the input's dtype otherwise.
inline at::ScalarType local_grad_dtype(at::ScalarType input) {
  return input == at::kHalf ? at::kFloat : input;
}

// An empty (0,) tensor in the local-gradient dtype: a local gradient not computed.
inline at::Tensor no_local_grad(const at::Tensor& input) {
  return at::empty({0}, input.options().dtype(local_grad_dtype(input.scalar_type())));
}

// Loss ops see a tensor as rows (the batch dimension) of equal length.
inline int64_t batch_rows(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
inline int64_t row_length(const at::Tensor& t) {
  const int64_t rows = batch_rows(t);
  return rows == 0 ? 0 : t.numel() / rows;
}

// ---------------------------------------------------------- loss ops

// mu, logvar[, prior_mu, prior_logvar] of gaussian_kl, checked, in kernel order.
inline std::vector<at::Tensor> gaussian_kl_inputs(const at::Tensor& mu, const at::Tensor& logvar,
                                                  const std::optional<at::Tensor>& prior_mu,
                                                  const std::optional<at::Tensor>& prior_logvar,
                                                  int64_t reduction, c10::DeviceType device,
                                                  InputDtypes dtypes = InputDtypes::kSame) {
  check_floating("gaussian_kl", "mu", mu, device);
  check_like("gaussian_kl", "logvar", logvar, "mu", mu, true, dtypes);
  check_reduction(reduction);
  TORCH_CHECK_VALUE(prior_mu.has_value() == prior_logvar.has_value(),
                    "vae_kernels.gaussian_kl: pass both prior_mu and prior_logvar or neither");
  std::vector<at::Tensor> inputs{mu, logvar};
  if (prior_mu.has_value()) {
    check_like("gaussian_kl", "prior_mu", *prior_mu, "mu", mu, true, dtypes);
    check_like("gaussian_kl", "prior_logvar", *prior_logvar, "mu", mu, true, dtypes);
    inputs.push_back(*prior_mu);
    inputs.push_back(*prior_logvar);
  }
  return inputs;
}

// A reconstruction kind's inputs: input, target[, scale], checked, in kernel order.
inline std::vector<at::Tensor> reconstruction_inputs(const char* op, const at::Tensor& input,
                                                     const at::Tensor& target,
                                                     const std::optional<at::Tensor>& scale,
                                                     int64_t kind, int64_t reduction,
                                                     c10::DeviceType device,
                                                     InputDtypes dtypes = InputDtypes::kSame) {
  check_floating(op, "input", input, device);
  check_like(op, "target", target, "input", input, true, dtypes);
  check_reduction(reduction);
  const int expected_inputs = reconstruction_input_count(kind);
  TORCH_CHECK_VALUE(expected_inputs != 0, "vae_kernels.", op,
                    ": kind must be a reconstruction LossKind, got ", kind);
  TORCH_CHECK_VALUE(scale.has_value() == (expected_inputs == 3), "vae_kernels.", op,
                    ": kind ", kind, scale.has_value() ? " takes no scale tensor"
                                                       : " needs a scale tensor");
  std::vector<at::Tensor> inputs{input, target};
  if (scale.has_value()) {
    check_like(op, "scale", *scale, "input", input, true, dtypes);
    inputs.push_back(*scale);
  }
  return inputs;
}

// ---------------------------------------------------------- sampling ops

// Samples of a sampling op (eps, z, grad_z) have the per-sample shape `like` (one sample)
// or (K, *like.shape) (K samples): the layout in memory is the same for K = 1.
inline bool is_samples_shape(const at::Tensor& samples, const at::Tensor& like) {
  return samples.sizes() == like.sizes() ||
         (samples.dim() == like.dim() + 1 && samples.sizes().slice(1) == like.sizes());
}

inline int64_t sample_count(const at::Tensor& samples, const at::Tensor& like) {
  return samples.dim() == like.dim() ? 1 : samples.size(0);
}

inline void check_samples_shape(const char* op, const char* name, const at::Tensor& samples,
                                const char* like_name, const at::Tensor& like) {
  TORCH_CHECK_VALUE(is_samples_shape(samples, like), "vae_kernels.", op, ": ", name,
                    " must have shape ", like_name, ".shape = ", like.sizes(),
                    " or (num_samples, *", like_name, ".shape) = (K, ", like.sizes(), "), got ",
                    samples.sizes());
}

inline void check_reparameterize_args(const at::Tensor& mu, const at::Tensor& logvar,
                                      const at::Tensor& eps, c10::DeviceType device) {
  check_floating("reparameterize", "mu", mu, device);
  check_like("reparameterize", "logvar", logvar, "mu", mu);
  check_like("reparameterize", "eps", eps, "mu", mu, /*same_shape=*/false);
  check_samples_shape("reparameterize", "eps", eps, "mu", mu);
}

inline void check_reparameterize_backward_args(const at::Tensor& grad_z, const at::Tensor& logvar,
                                               const at::Tensor& eps, c10::DeviceType device) {
  check_floating("reparameterize_backward", "eps", eps, device);
  check_like("reparameterize_backward", "grad_z", grad_z, "eps", eps);
  check_like("reparameterize_backward", "logvar", logvar, "eps", eps, /*same_shape=*/false);
  check_samples_shape("reparameterize_backward", "eps", eps, "logvar", logvar);
}

inline void check_seed(const char* op, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, "vae_kernels.", op,
                    ": seed must be an int64 tensor with one element, got ", seed.scalar_type(),
                    " of shape ", seed.sizes());
}

// The shape of z: mu's for num_samples None (one sample), else (num_samples, *mu.shape).
inline std::vector<int64_t> check_reparameterize_philox_args(
    const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& seed,
    std::optional<int64_t> num_samples, c10::DeviceType device) {
  check_floating("reparameterize_philox", "mu", mu, device);
  check_like("reparameterize_philox", "logvar", logvar, "mu", mu);
  TORCH_CHECK_VALUE(!num_samples || *num_samples >= 1,
                    "vae_kernels.reparameterize_philox: num_samples must be >= 1, got ",
                    num_samples.value_or(0));
  check_seed("reparameterize_philox", seed);
  std::vector<int64_t> shape(mu.sizes().begin(), mu.sizes().end());
  if (num_samples) shape.insert(shape.begin(), *num_samples);
  return shape;
}

inline void check_reparameterize_philox_backward_args(const at::Tensor& grad_z,
                                                      const at::Tensor& logvar,
                                                      const at::Tensor& seed,
                                                      c10::DeviceType device) {
  check_floating("reparameterize_philox_backward", "logvar", logvar, device);
  check_like("reparameterize_philox_backward", "grad_z", grad_z, "logvar", logvar, false);
  check_samples_shape("reparameterize_philox_backward", "grad_z", grad_z, "logvar", logvar);
  check_seed("reparameterize_philox_backward", seed);
}

// ---------------------------------------------------------- the elbo

inline void check_elbo_args(const at::Tensor& recon, const at::Tensor& x, const at::Tensor& mu,
                            const at::Tensor& logvar, int64_t kind, int64_t reduction,
                            c10::DeviceType device, InputDtypes dtypes = InputDtypes::kSame) {
  check_floating("elbo", "recon", recon, device);
  check_like("elbo", "x", x, "recon", recon, true, dtypes);
  check_like("elbo", "mu", mu, "recon", recon, /*same_shape=*/false, dtypes);
  check_like("elbo", "logvar", logvar, "mu", mu, true, dtypes);
  check_like("elbo", "logvar", logvar, "recon", recon, /*same_shape=*/false, dtypes);
  TORCH_CHECK_VALUE(reduction == kPerSample || reduction == kSum,
                    "vae_kernels.elbo: reduction must be 1 (per_sample) or 2 (sum), got ",
                    reduction);
  TORCH_CHECK_VALUE(reconstruction_input_count(kind) == 2,
                    "vae_kernels.elbo: kind must be a reconstruction LossKind without a learned "
                    "scale, got ", kind);
  TORCH_CHECK_VALUE(recon.dim() > 0 && mu.dim() > 0 && recon.size(0) == mu.size(0),
                    "vae_kernels.elbo: recon ", recon.sizes(), " and mu ", mu.sizes(),
                    " must share their first (batch) dimension");
}

// ---------------------------------------------------------- the mixture likelihood

// params (B, P, H, W) and x (B, C, H, W) of discretized_logistic_mixture_nll; their layout.
inline MixtureLayout check_mixture_args(const at::Tensor& params, const at::Tensor& x,
                                        int64_t num_bits, int64_t reduction,
                                        c10::DeviceType device) {
  const char* op = "discretized_logistic_mixture_nll";
  check_floating(op, "params", params, device);
  check_floating(op, "x", x, device);
  TORCH_CHECK_VALUE(x.device() == params.device(), "vae_kernels.", op,
                    ": x must be on the device of params (", params.device(), "), got ",
                    x.device());
  TORCH_CHECK_VALUE(x.dim() == 4 && (x.size(1) == 1 || x.size(1) == 3), "vae_kernels.", op,
                    ": x must have shape (B, C, H, W) with C = 1 or 3, got ", x.sizes());
  TORCH_CHECK_VALUE(params.dim() == 4 && params.size(0) == x.size(0) &&
                        params.size(2) == x.size(2) && params.size(3) == x.size(3),
                    "vae_kernels.", op, ": params must have shape (", x.size(0), ", P, ",
                    x.size(2), ", ", x.size(3), ") to match x ", x.sizes(), ", got ",
                    params.sizes());
  MixtureLayout layout;
  layout.channels = static_cast<int>(x.size(1));
  const int64_t per_component = layout.channels == 3 ? 10 : 3;
  TORCH_CHECK_VALUE(params.size(1) > 0 && params.size(1) % per_component == 0, "vae_kernels.",
                    op, ": params must have a multiple of ", per_component,
                    " channels (", per_component, " per mixture component for C = ",
                    layout.channels, "), got ", params.size(1));
  layout.components = static_cast<int>(params.size(1) / per_component);
  TORCH_CHECK_VALUE(num_bits >= 1 && num_bits <= 16, "vae_kernels.", op,
                    ": num_bits must be in [1, 16], got ", num_bits);
  check_reduction(reduction);
  return layout;
}

// The kernels' buffers for one mixture call, outputs not yet attached: the checked
// layout, the bins, the geometry, and params and x where they are (read through their
// strides, without a copy: channels_last params included).
inline MixtureBuffers mixture_buffers(const at::Tensor& params, const at::Tensor& x,
                                      int64_t num_bits, int64_t reduction,
                                      c10::DeviceType device) {
  MixtureBuffers buffers;
  buffers.layout = check_mixture_args(params, x, num_bits, reduction, device);
  buffers.bins = mixture_bins(num_bits);
  buffers.batch = x.size(0);
  buffers.height = x.size(2);
  buffers.width = x.size(3);
  buffers.params = params.const_data_ptr();
  buffers.x = x.const_data_ptr();
  for (int d = 0; d < 4; ++d) {
    buffers.params_strides[d] = params.stride(d);
    buffers.x_strides[d] = x.stride(d);
  }
  return buffers;
}

// loss_backward's result has grad_output's dtype; the kernels read local_grad in the
// matching local-gradient dtype (the same, or float32 for float16). In place, local_grad
// is also the result, so both dtypes must be that one: float16 cannot go in place.
inline void check_loss_backward_args(const at::Tensor& local_grad, const at::Tensor& grad_output,
                                     int64_t reduction, c10::DeviceType device,
                                     bool in_place = false) {
  const char* op = in_place ? "loss_backward_" : "loss_backward";
  check_floating(op, "grad_output", grad_output, device);
  check_floating(op, "local_grad", local_grad, device);
  TORCH_CHECK_VALUE(local_grad.device() == grad_output.device(), "vae_kernels.", op,
                    ": local_grad must be on the device of grad_output (", grad_output.device(),
                    "), got ", local_grad.device());
  const at::ScalarType read = local_grad_dtype(grad_output.scalar_type());
  TORCH_CHECK_TYPE(local_grad.scalar_type() == read, "vae_kernels.", op,
                   ": local_grad must have dtype ", read, " for a grad_output of dtype ",
                   grad_output.scalar_type(), ", got ", local_grad.scalar_type());
  TORCH_CHECK_TYPE(!in_place || read == grad_output.scalar_type(), "vae_kernels.", op,
                   ": cannot write a result of grad_output's dtype ", grad_output.scalar_type(),
                   " in place of a local_grad of dtype ", read,
                   "; use loss_backward (out of place)");
  check_reduction(reduction);
}

template <size_t N>
std::vector<bool> mask_vector(const std::array<bool, N>& mask) {
  return std::vector<bool>(mask.begin(), mask.end());
}

}  // namespace vae_kernels
