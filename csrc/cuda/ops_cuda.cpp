// CUDA implementations of the vae_kernels ops (schemas: csrc/schemas.cpp), mirroring
// csrc/cpu/ops_cpu.cpp: argument checks, allocation of outputs and workspaces, the
// torch-free launchers of launchers.h on the current stream, and the reduction pass.
//
// Built only when torch has CUDA and a CUDA toolkit is present (CMakeLists.txt). The
// autograd formulas are registered per op name in vae_kernels/ops.py and hold for
// every dispatch key, so this file registers the CUDA key only.
//
// Host synchronization: none, except the [0, 1] check of Bernoulli targets and
// probabilities and the [-1, 1] check of the mixture likelihood's x, whose flags
// (written by the kernels) are read once, after every kernel of the op is queued; it is
// skipped while a CUDA graph is being captured.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <vector>

#include "../math/sampling.h"
#include "../op_checks.h"
#include "launchers.h"

namespace vae_kernels::cuda {
namespace {

using at::Tensor;

DType dtype_of(const char* op, at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, "vae_kernels.", op,
                   ": expected a float32, float64, float16 or bfloat16 tensor, got ", type);
  return DType::kFloat32;  // not reached
}

DType dtype_of(const char* op, const Tensor& t) { return dtype_of(op, t.scalar_type()); }

constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

void check_floating(const char* op, const char* name, const Tensor& t) {
  vae_kernels::check_floating(op, name, t, kDevice);
  dtype_of(op, t);
}

// The current stream of `t`'s device (the caller holds a CUDAGuard for that device).
cudaStream_t stream_of(const Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

bool capturing_cuda_graph() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// Whether loss `kind` requires any input to lie in [0, 1] (then the kernels set flags
// that the op reads back).
bool has_unit_interval_inputs(int64_t kind) {
  return visit_loss(
      static_cast<LossKind>(kind), 0.0,
      [](const auto& op) {
        bool any = false;
        for (int k = 0; k < op.kInputs; ++k) any = any || op.unit_interval(k);
        return any;
      },
      false);
}

// One loss pass over `inputs` (made contiguous; kept alive here): the elementwise
// loss for reduction none, the local gradients `grad_mask` asks for, and the block
// sums: per row for per_sample, over the whole tensor (one row) for sum.
struct LossCall {
  std::vector<Tensor> inputs;  // contiguous
  at::ScalarType dtype;        // of the outputs: the inputs', float32 where they mix
  std::array<DType, LossBuffers::kMaxInputs> input_dtypes{};
  bool mixed_dtypes = false;
  Tensor elementwise;          // defined for reduction none
  std::vector<Tensor> grads;   // empty tensors where not requested
  Tensor partial_sums;         // float64 block sums, undefined for reduction none
  Tensor unit_interval_flags;  // int32 per input, defined when a [0, 1] check is asked
  int64_t batch = 0;           // rows of the per_sample result
  LossBuffers buffers;

  LossCall(const std::vector<Tensor>& ins, int64_t reduction, int64_t divisor,
           const std::vector<bool>& grad_mask, bool check_unit_interval,
           std::optional<at::ScalarType> out_dtype = {})
      : dtype(out_dtype.value_or(loss_dtype(ins))) {
    const Tensor& first = ins.front();
    buffers.grad_scale = 1.0 / static_cast<double>(divisor);
    for (const auto& t : ins) {
      input_dtypes[inputs.size()] = dtype_of("loss", t);
      mixed_dtypes = mixed_dtypes || t.scalar_type() != dtype;
      inputs.push_back(t.contiguous());
    }
    batch = batch_rows(first);
    if (reduction == kPerSample) {
      buffers.rows = batch;
      buffers.row_len = row_length(first);
    } else {  // the total needs no row structure: one row, spread over many blocks
      buffers.rows = 1;
      buffers.row_len = first.numel();
    }
    for (size_t k = 0; k < inputs.size(); ++k) buffers.inputs[k] = inputs[k].const_data_ptr();
    if (reduction == kNone) {
      elementwise = at::empty_like(inputs.front(), inputs.front().options().dtype(dtype));
      buffers.elementwise_loss = elementwise.data_ptr();
    } else {
      partial_sums = at::empty({partial_count()}, first.options().dtype(at::kDouble));
      buffers.sums = partial_sums.data_ptr<double>();
    }
    const auto grad_options = first.options().dtype(local_grad_dtype(dtype));
    for (size_t k = 0; k < grad_mask.size(); ++k) {
      if (grad_mask[k]) {
        grads.push_back(at::empty_like(inputs[k], grad_options));
        buffers.grads[k] = grads.back().data_ptr();
      } else {
        grads.push_back(at::empty({0}, grad_options));
      }
    }
    if (check_unit_interval) {
      unit_interval_flags =
          at::zeros({LossBuffers::kMaxInputs}, first.options().dtype(at::kInt));
      buffers.out_of_unit_interval = unit_interval_flags.data_ptr<int32_t>();
    }
  }

  int64_t chunks_per_row() const { return loss_chunks_per_row(buffers.row_len); }
  int64_t partial_count() const { return buffers.rows * chunks_per_row(); }

  // Each input in its own dtype where they mix (then computed in float32).
  void launch(LossKind kind, double param, cudaStream_t stream) const {
    const DType* own_dtypes = mixed_dtypes ? input_dtypes.data() : nullptr;
    C10_CUDA_CHECK(
        launch_loss(dtype_of("loss", dtype), own_dtypes, kind, param, buffers, stream));
  }

  // An empty (0,) tensor: a local gradient not computed.
  Tensor no_grad() const {
    return at::empty({0}, inputs.front().options().dtype(local_grad_dtype(dtype)));
  }

  // Reads the flags the kernels wrote: a device-to-host copy that waits for the op's
  // kernels, so call it after every kernel of the op is queued. Inside a CUDA graph
  // capture no copy can run; the check is skipped there.
  void check_unit_interval(const char* op, std::initializer_list<const char*> names) const {
    if (!unit_interval_flags.defined() || capturing_cuda_graph()) return;
    const Tensor flags = unit_interval_flags.cpu();
    const int32_t* outside = flags.const_data_ptr<int32_t>();
    int k = 0;
    for (const char* name : names) {
      TORCH_CHECK_VALUE(name == nullptr || outside[k] == 0, "vae_kernels.", op, ": ", name,
                        " must lie in [0, 1], but some values are outside it");
      ++k;
    }
  }
};

// The reduced loss of one pass for `reduction`, in `options`' dtype: the elementwise
// loss, the per-row sums or their total, each divided by `divisor`.
Tensor reduce(const LossCall& call, int64_t reduction, int64_t divisor,
              const at::TensorOptions& options, DType dtype, cudaStream_t stream) {
  if (reduction == kNone) return call.elementwise;
  const double scale = 1.0 / static_cast<double>(divisor);
  const double* partials = call.partial_sums.const_data_ptr<double>();
  if (reduction == kPerSample) {
    Tensor out = at::empty({call.batch}, options);
    C10_CUDA_CHECK(launch_finish_rows(dtype, partials, call.chunks_per_row(), nullptr, 0, 0.0,
                                      call.batch, scale, out.data_ptr(), nullptr, nullptr,
                                      stream));
    return out;
  }
  Tensor out = at::empty({}, options);
  C10_CUDA_CHECK(launch_finish_total(dtype, partials, call.partial_count(), nullptr, 0, 0.0, scale,
                                     out.data_ptr(), nullptr, nullptr, stream));
  return out;
}

// ------------------------------------------------------------------ sampling

double std_exponent(bool logsigma) {
  return logsigma ? kStdExponentLogSigma : kStdExponentLogVar;
}

Tensor reparameterize(const Tensor& mu, const Tensor& logvar, const Tensor& eps, bool logsigma) {
  check_reparameterize_args(mu, logvar, eps, kDevice);
  const c10::cuda::CUDAGuard guard(mu.device());
  const Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous(), eps_c = eps.contiguous();
  Tensor z = at::empty_like(eps_c);
  C10_CUDA_CHECK(launch_reparameterize(dtype_of("reparameterize", mu), mu_c.const_data_ptr(),
                                       logvar_c.const_data_ptr(), eps_c.const_data_ptr(),
                                       z.data_ptr(), mu.numel(), sample_count(eps, mu),
                                       std_exponent(logsigma), stream_of(mu)));
  return z;
}

std::tuple<Tensor, Tensor> reparameterize_backward(const Tensor& grad_z, const Tensor& logvar,
                                                   const Tensor& eps, bool logsigma) {
  check_reparameterize_backward_args(grad_z, logvar, eps, kDevice);
  const c10::cuda::CUDAGuard guard(logvar.device());
  const Tensor grad_c = grad_z.contiguous(), logvar_c = logvar.contiguous(),
               eps_c = eps.contiguous();
  Tensor grad_mu = at::empty_like(logvar_c), grad_logvar = at::empty_like(logvar_c);
  C10_CUDA_CHECK(launch_reparameterize_backward(
      dtype_of("reparameterize_backward", logvar), grad_c.const_data_ptr(),
      logvar_c.const_data_ptr(), eps_c.const_data_ptr(), grad_mu.data_ptr(),
      grad_logvar.data_ptr(), logvar.numel(), sample_count(eps, logvar), std_exponent(logsigma),
      stream_of(logvar)));
  return {grad_mu, grad_logvar};
}

// The seed as one int64 in `like`'s device memory, read by the kernels: a seed drawn
// on the GPU (vae_kernels.ops draws it with torch.randint on the tensors' device)
// never travels to the host. A CPU seed is copied over.
Tensor seed_on_device(const Tensor& seed, const Tensor& like) {
  return seed.to(like.device(), at::kLong).contiguous();
}

Tensor reparameterize_philox(const Tensor& mu, const Tensor& logvar, const Tensor& seed,
                             std::optional<int64_t> num_samples, bool logsigma) {
  const std::vector<int64_t> shape =
      check_reparameterize_philox_args(mu, logvar, seed, num_samples, kDevice);
  const c10::cuda::CUDAGuard guard(mu.device());
  const Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  const Tensor seed_d = seed_on_device(seed, mu);
  Tensor z = at::empty(shape, mu.options().memory_format(at::MemoryFormat::Contiguous));
  C10_CUDA_CHECK(launch_reparameterize_philox(
      dtype_of("reparameterize_philox", mu), mu_c.const_data_ptr(), logvar_c.const_data_ptr(),
      seed_d.const_data_ptr<int64_t>(), z.data_ptr(), mu.numel(), num_samples.value_or(1),
      std_exponent(logsigma), stream_of(mu)));
  return z;
}

// The noise of the same draw (mean 0, unit scale: exactly eps), then the sample from it.
// The autograd calls it on CPU tensors only (on a GPU, backward regenerates the noise);
// here it completes the op for CUDA tensors.
std::tuple<Tensor, Tensor> reparameterize_philox_with_noise(const Tensor& mu,
                                                            const Tensor& logvar,
                                                            const Tensor& seed,
                                                            std::optional<int64_t> num_samples,
                                                            bool logsigma) {
  const Tensor eps = reparameterize_philox(at::zeros_like(mu), at::zeros_like(logvar), seed,
                                           num_samples, logsigma);
  return {reparameterize(mu, logvar, eps, logsigma), eps};
}

std::tuple<Tensor, Tensor> reparameterize_philox_backward(const Tensor& grad_z,
                                                          const Tensor& logvar,
                                                          const Tensor& seed, bool logsigma) {
  check_reparameterize_philox_backward_args(grad_z, logvar, seed, kDevice);
  const c10::cuda::CUDAGuard guard(logvar.device());
  const Tensor grad_c = grad_z.contiguous(), logvar_c = logvar.contiguous();
  const Tensor seed_d = seed_on_device(seed, logvar);
  Tensor grad_mu = at::empty_like(logvar_c), grad_logvar = at::empty_like(logvar_c);
  C10_CUDA_CHECK(launch_reparameterize_philox_backward(
      dtype_of("reparameterize_philox_backward", logvar), grad_c.const_data_ptr(),
      logvar_c.const_data_ptr(), seed_d.const_data_ptr<int64_t>(), grad_mu.data_ptr(),
      grad_logvar.data_ptr(), logvar.numel(), sample_count(grad_z, logvar), std_exponent(logsigma),
      stream_of(logvar)));
  return {grad_mu, grad_logvar};
}

// ------------------------------------------------------------------ losses

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gaussian_kl(
    const Tensor& mu, const Tensor& logvar, const std::optional<Tensor>& prior_mu,
    const std::optional<Tensor>& prior_logvar, int64_t reduction, int64_t divisor,
    std::array<bool, 4> grad_mask, bool logsigma) {
  const std::vector<Tensor> inputs = gaussian_kl_inputs(mu, logvar, prior_mu, prior_logvar,
                                                        reduction, kDevice, InputDtypes::kMixed);
  const bool with_prior = prior_mu.has_value();
  const c10::cuda::CUDAGuard guard(mu.device());
  const cudaStream_t stream = stream_of(mu);
  std::vector<bool> mask = mask_vector(grad_mask);
  mask.resize(inputs.size());
  const LossCall call(inputs, reduction, divisor, mask, /*check_unit_interval=*/false);
  call.launch(kl_kind(with_prior, logsigma), 0.0, stream);
  const DType dtype = dtype_of("gaussian_kl", call.dtype);
  // Each output its own tensor: outputs must never alias one another.
  return {reduce(call, reduction, divisor, mu.options().dtype(call.dtype), dtype, stream),
          call.grads[0], call.grads[1], with_prior ? call.grads[2] : call.no_grad(),
          with_prior ? call.grads[3] : call.no_grad()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> reconstruction_nll(
    const Tensor& input, const Tensor& target, const std::optional<Tensor>& scale,
    double scale_value, int64_t kind, int64_t reduction, int64_t divisor,
    std::array<bool, 3> grad_mask) {
  const std::vector<Tensor> inputs =
      reconstruction_inputs("reconstruction_nll", input, target, scale, kind, reduction, kDevice,
                            InputDtypes::kMixed);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = stream_of(input);
  std::vector<bool> mask = mask_vector(grad_mask);
  mask.resize(inputs.size());
  const LossCall call(inputs, reduction, divisor, mask, has_unit_interval_inputs(kind));
  call.launch(static_cast<LossKind>(kind), scale_value, stream);
  const DType dtype = dtype_of("reconstruction_nll", call.dtype);
  Tensor loss =
      reduce(call, reduction, divisor, input.options().dtype(call.dtype), dtype, stream);
  call.check_unit_interval("reconstruction_nll", {"input (probabilities)", "target"});
  return {loss, call.grads[0], call.grads[1], scale.has_value() ? call.grads[2] : call.no_grad()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> elbo(
    const Tensor& recon, const Tensor& x, const Tensor& mu, const Tensor& logvar,
    int64_t kind, double beta, int64_t reduction, int64_t divisor, std::array<bool, 4> grad_mask,
    bool logsigma) {
  check_elbo_args(recon, x, mu, logvar, kind, reduction, kDevice, InputDtypes::kMixed);
  const bool check_unit_interval = has_unit_interval_inputs(kind);

  const c10::cuda::CUDAGuard guard(recon.device());
  const cudaStream_t stream = stream_of(recon);
  // One dtype for all outputs: the upstream gradients of the three losses are its.
  const at::ScalarType out_dtype = loss_dtype({recon, x, mu, logvar});
  const DType dtype = dtype_of("elbo", out_dtype);
  const LossCall recon_call({recon, x}, reduction, divisor, {grad_mask[0], grad_mask[1]},
                            check_unit_interval, out_dtype);
  recon_call.launch(static_cast<LossKind>(kind), /*param=*/0.0, stream);
  const LossCall kl_call({mu, logvar}, reduction, divisor, {grad_mask[2], grad_mask[3]}, false,
                         out_dtype);
  kl_call.launch(kl_kind(/*with_prior=*/false, logsigma), 0.0, stream);

  // loss = recon + beta * kl, per row or in total, each divided by `divisor`.
  const auto options = recon.options().dtype(out_dtype);
  const double scale = 1.0 / static_cast<double>(divisor);
  const double* recon_partials = recon_call.partial_sums.const_data_ptr<double>();
  const double* kl_partials = kl_call.partial_sums.const_data_ptr<double>();
  Tensor loss, recon_nll, kl;
  if (reduction == kPerSample) {
    const int64_t rows = recon_call.batch;
    loss = at::empty({rows}, options);
    recon_nll = at::empty({rows}, options);
    kl = at::empty({rows}, options);
    C10_CUDA_CHECK(launch_finish_rows(dtype, recon_partials, recon_call.chunks_per_row(),
                                      kl_partials, kl_call.chunks_per_row(), beta, rows, scale,
                                      loss.data_ptr(), recon_nll.data_ptr(), kl.data_ptr(),
                                      stream));
  } else {
    loss = at::empty({}, options);
    recon_nll = at::empty({}, options);
    kl = at::empty({}, options);
    C10_CUDA_CHECK(launch_finish_total(dtype, recon_partials, recon_call.partial_count(),
                                       kl_partials, kl_call.partial_count(), beta, scale,
                                       loss.data_ptr(), recon_nll.data_ptr(), kl.data_ptr(),
                                       stream));
  }
  recon_call.check_unit_interval("elbo_loss", {"recon (probabilities)", "x"});
  return {loss, recon_nll, kl, recon_call.grads[0], recon_call.grads[1], kl_call.grads[0],
          kl_call.grads[1]};
}

// ------------------------------------------------------------------ the mixture likelihood

std::tuple<Tensor, Tensor> discretized_logistic_mixture_nll(const Tensor& params, const Tensor& x,
                                                            int64_t num_bits, int64_t reduction,
                                                            int64_t divisor,
                                                            std::array<bool, 1> grad_mask) {
  const char* op = "discretized_logistic_mixture_nll";
  MixtureBuffers buffers = mixture_buffers(params, x, num_bits, reduction, kDevice);
  const DType params_dtype = dtype_of(op, params), x_dtype = dtype_of(op, x);
  const c10::cuda::CUDAGuard guard(params.device());
  const cudaStream_t stream = stream_of(params);
  const auto compute_dtype = params.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto loss_dtype = c10::promoteTypes(params.scalar_type(), x.scalar_type());
  const auto contiguous = params.options().memory_format(at::MemoryFormat::Contiguous);

  Tensor pixel_nll, partial_sums;
  const int64_t blocks_per_image = mixture_blocks_per_image(buffers.height * buffers.width);
  if (reduction == kNone) {
    pixel_nll = at::empty({buffers.batch, buffers.height, buffers.width},
                          contiguous.dtype(compute_dtype));
    buffers.pixel_nll = pixel_nll.data_ptr();
  } else {
    partial_sums = at::empty({buffers.batch * blocks_per_image}, contiguous.dtype(at::kDouble));
    buffers.sums = partial_sums.data_ptr<double>();
  }
  Tensor grad = no_local_grad(params), grad_workspace;
  if (grad_mask[0]) {
    grad = at::empty(params.sizes(), contiguous.dtype(local_grad_dtype(params.scalar_type())));
    buffers.grads = grad.data_ptr();
    if (params.scalar_type() == at::kBFloat16) {  // the first pass's values, unrounded
      grad_workspace = at::empty(params.sizes(), contiguous.dtype(at::kFloat));
    }
  }
  buffers.grad_scale = 1.0 / static_cast<double>(divisor);
  const Tensor x_out_of_range = at::zeros({1}, contiguous.dtype(at::kInt));
  buffers.x_out_of_range = x_out_of_range.data_ptr<int32_t>();
  C10_CUDA_CHECK(launch_discretized_logistic_mixture(
      params_dtype, x_dtype, buffers,
      grad_workspace.defined() ? grad_workspace.data_ptr<float>() : nullptr, stream));

  // Per image or in total, divided by `divisor`, in the loss dtype.
  Tensor loss;
  const double scale = 1.0 / static_cast<double>(divisor);
  const DType loss_code = dtype_of(op, loss_dtype);
  if (reduction == kNone) {
    loss = pixel_nll.to(loss_dtype);
  } else if (reduction == kPerSample) {
    loss = at::empty({buffers.batch}, contiguous.dtype(loss_dtype));
    C10_CUDA_CHECK(launch_finish_rows(loss_code, buffers.sums, blocks_per_image, nullptr, 0, 0.0,
                                      buffers.batch, scale, loss.data_ptr(), nullptr, nullptr,
                                      stream));
  } else {
    loss = at::empty({}, contiguous.dtype(loss_dtype));
    C10_CUDA_CHECK(launch_finish_total(loss_code, buffers.sums, partial_sums.numel(), nullptr, 0,
                                       0.0, scale, loss.data_ptr(), nullptr, nullptr, stream));
  }
  // The flag the kernel wrote: a device-to-host copy after every kernel of the op is
  // queued; skipped inside a CUDA graph capture, where no copy can run.
  if (!capturing_cuda_graph()) {
    TORCH_CHECK_VALUE(x_out_of_range.item<int32_t>() == 0, "vae_kernels.", op,
                      ": x must lie in [-1, 1], but some values are outside it");
  }
  return {loss, grad};
}

// out = local_grad * grad_output (per element, per row or one value), in grad_output's
// dtype; `out` may be `local_grad` itself. Dtypes are checked by the caller.
void loss_backward_into(const Tensor& local_grad, const Tensor& grad_output, int64_t reduction,
                        Tensor& out) {
  TORCH_CHECK_VALUE(local_grad.is_contiguous() && out.is_contiguous(),
                    "vae_kernels.loss_backward: local_grad must be contiguous");
  int64_t rows = batch_rows(local_grad), row_len = row_length(local_grad);
  int64_t stride_elem = 0, stride_row = 0;
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad_output.sizes() == local_grad.sizes(),
                      "vae_kernels.loss_backward: grad_output must have shape ",
                      local_grad.sizes(), ", got ", grad_output.sizes());
    // One upstream value per element: no row structure needed.
    rows = 1;
    row_len = local_grad.numel();
    stride_elem = 1;
    stride_row = row_len;
  } else if (reduction == kPerSample) {
    TORCH_CHECK_VALUE(grad_output.numel() == rows,
                      "vae_kernels.loss_backward: grad_output must have ", rows,
                      " elements (one per row), got ", grad_output.sizes());
    stride_row = 1;
  } else {
    TORCH_CHECK_VALUE(grad_output.numel() == 1,
                      "vae_kernels.loss_backward: grad_output must be a scalar, got ",
                      grad_output.sizes());
    rows = 1;
    row_len = local_grad.numel();
  }
  const c10::cuda::CUDAGuard guard(local_grad.device());
  const Tensor upstream_c = grad_output.contiguous();
  C10_CUDA_CHECK(launch_loss_backward(dtype_of("loss_backward", grad_output),
                                      local_grad.const_data_ptr(), upstream_c.const_data_ptr(),
                                      stride_elem, stride_row, out.data_ptr(), rows, row_len,
                                      stream_of(local_grad)));
}

Tensor loss_backward(const Tensor& local_grad, const Tensor& grad_output, int64_t reduction) {
  check_loss_backward_args(local_grad, grad_output, reduction, kDevice);
  const Tensor local_c = local_grad.contiguous();
  Tensor out = at::empty_like(local_c, local_c.options().dtype(grad_output.scalar_type()));
  loss_backward_into(local_c, grad_output, reduction, out);
  return out;
}

void loss_backward_inplace(Tensor& local_grad, const Tensor& grad_output, int64_t reduction) {
  check_loss_backward_args(local_grad, grad_output, reduction, kDevice, /*in_place=*/true);
  loss_backward_into(local_grad, grad_output, reduction, local_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(vae_kernels, CUDA, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_backward", &reparameterize_backward);
  m.impl("reparameterize_philox", &reparameterize_philox);
  m.impl("reparameterize_philox_with_noise", &reparameterize_philox_with_noise);
  m.impl("reparameterize_philox_backward", &reparameterize_philox_backward);
  m.impl("gaussian_kl", &gaussian_kl);
  m.impl("reconstruction_nll", &reconstruction_nll);
  m.impl("elbo", &elbo);
  m.impl("discretized_logistic_mixture_nll", &discretized_logistic_mixture_nll);
  m.impl("loss_backward", &loss_backward);
  m.impl("loss_backward_", &loss_backward_inplace);
}

}  // namespace vae_kernels::cuda
