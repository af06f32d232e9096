// CPU implementations of the vae_kernels ops (schemas: csrc/schemas.cpp): argument
// checks, allocation, the call into this CPU's kernel table, and the reduction of the
// kernels' per-row sums.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <optional>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../math/sampling.h"
#include "../op_checks.h"
#include "kernels.h"

namespace vae_kernels::cpu {
namespace {

using at::Tensor;

constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

constexpr size_t kLargeOutputBytes = size_t(8) << 20;

// Large outputs recycle the storage of earlier ones that nothing references any more
// (a training step frees the gradient of the decoder output at the end of backward; the
// next step gets the same memory back). Fresh memory costs a page fault and a zeroing
// per page on first touch: for a 50 MB gradient that is ~2.3 ms, a third of a fused
// ELBO step. At most kCachedStorages storages are kept; a storage is reused only when
// the cache holds its sole reference, so nothing still in use is ever overwritten.
class StorageCache {
 public:
  static constexpr size_t kCachedStorages = 4;

  std::optional<c10::Storage> take(size_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& storage : storages_) {
      if (storage.nbytes() == nbytes && storage.use_count() == 1) return storage;
    }
    return std::nullopt;
  }

  void keep(const c10::Storage& storage) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Replace a storage nobody uses, else the oldest one (it stays alive with its users).
    for (auto& held : storages_) {
      if (held.use_count() == 1) {
        held = storage;
        return;
      }
    }
    if (storages_.size() == kCachedStorages) storages_.erase(storages_.begin());
    storages_.push_back(storage);
  }

 private:
  std::mutex mutex_;
  std::vector<c10::Storage> storages_;
};

StorageCache& storage_cache() {
  static StorageCache cache;
  return cache;
}

// Large fresh buffers are backed by transparent huge pages where the OS offers them on
// request (a fault per 2 MiB instead of per 4 KiB); torch's allocator does the same
// when THP_MEM_ALLOC_ENABLE=1 is set.
void advise_huge_pages(const Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// A new contiguous CPU tensor shaped like `like` (with `like`'s dtype unless another is
// given), for a kernel to fill.
Tensor empty_output(const Tensor& like, std::optional<at::ScalarType> dtype = std::nullopt) {
  const auto options = like.options()
                           .dtype(dtype.value_or(like.scalar_type()))
                           .memory_format(at::MemoryFormat::Contiguous);
  const size_t nbytes = static_cast<size_t>(like.numel()) * options.dtype().itemsize();
  if (nbytes < kLargeOutputBytes) return at::empty(like.sizes(), options);
  if (auto storage = storage_cache().take(nbytes)) {
    return at::empty({0}, options).set_(*storage, 0, like.sizes());
  }
  Tensor out = at::empty(like.sizes(), options);
  advise_huge_pages(out);
  storage_cache().keep(out.storage());
  return out;
}

// Buffers over `inputs` (made contiguous), each read in its own dtype, with the
// elementwise loss and the local gradients that `grad_mask` asks for (scaled by
// 1/divisor) allocated in `dtype` (float32 where the inputs' dtypes mix).
struct LossCall {
  std::vector<Tensor> inputs;  // contiguous
  at::ScalarType dtype;
  std::array<c10::ScalarType, LossBuffers::kMaxInputs> input_dtypes{};
  bool mixed_dtypes = false;
  Tensor elementwise;          // defined for reduction none
  std::vector<Tensor> grads;   // empty tensors where not requested
  std::vector<double> row_sums;
  std::array<int32_t, LossBuffers::kMaxInputs> outside_unit_interval{};
  LossBuffers buffers;

  LossCall(std::vector<Tensor> ins, int64_t reduction, int64_t divisor,
           const std::vector<bool>& grad_mask, std::optional<at::ScalarType> out_dtype = {})
      : dtype(out_dtype.value_or(loss_dtype(ins))) {
    const Tensor& first = ins.front();
    for (auto& t : ins) {
      input_dtypes[inputs.size()] = t.scalar_type();
      mixed_dtypes = mixed_dtypes || t.scalar_type() != dtype;
      inputs.push_back(t.contiguous());
    }
    // Only per_sample needs a sum per row; otherwise the tensor is one long row, whose
    // fixed 4096-element chunks make fewer, fuller kernel calls than short rows do.
    buffers.rows = reduction == kPerSample ? batch_rows(first) : 1;
    buffers.row_len = reduction == kPerSample ? row_length(first) : first.numel();
    row_sums.resize(buffers.rows);
    buffers.sums = row_sums.data();
    buffers.out_of_unit_interval = outside_unit_interval.data();
    buffers.grad_scale = 1.0 / static_cast<double>(divisor);
    for (size_t k = 0; k < inputs.size(); ++k) buffers.inputs[k] = inputs[k].const_data_ptr();
    if (reduction == kNone) {
      elementwise = empty_output(inputs.front(), dtype);
      buffers.elementwise_loss = elementwise.data_ptr();
    }
    const at::ScalarType grad_dtype = local_grad_dtype(dtype);
    for (size_t k = 0; k < grad_mask.size(); ++k) {
      if (grad_mask[k]) {
        grads.push_back(empty_output(inputs[k], grad_dtype));
        buffers.grads[k] = grads.back().data_ptr();
      } else {
        grads.push_back(at::empty({0}, first.options().dtype(grad_dtype)));
      }
    }
  }

  void run(LossKind kind, double param = 0.0) {
    kernels().loss(dtype, mixed_dtypes ? input_dtypes.data() : nullptr, kind, param, buffers);
  }

  void check_unit_interval(const char* op, std::initializer_list<const char*> names) const {
    int k = 0;
    for (const char* name : names) {
      TORCH_CHECK_VALUE(!outside_unit_interval[k], "vae_kernels.", op,
                        ": ", name, " must lie in [0, 1], but some values are outside it");
      ++k;
    }
  }
};

// The reduced tensor for `reduction`, in `like`'s dtype: the elementwise loss, the
// per-row sums or their total, each divided by `divisor`.
Tensor reduce_rows(const std::vector<double>& row_sums, const Tensor& elementwise,
                   int64_t reduction, int64_t divisor, const at::TensorOptions& options) {
  if (reduction == kNone) return elementwise;
  const double scale = 1.0 / static_cast<double>(divisor);
  Tensor out;
  if (reduction == kPerSample) {
    out = at::empty({static_cast<int64_t>(row_sums.size())}, options);
  } else {
    out = at::empty({}, options);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "reduce_rows", [&] {
    auto* data = out.data_ptr<scalar_t>();
    if (reduction == kPerSample) {
      for (size_t r = 0; r < row_sums.size(); ++r) data[r] = static_cast<scalar_t>(row_sums[r] * scale);
    } else {
      double total = 0;
      for (double s : row_sums) total += s;
      data[0] = static_cast<scalar_t>(total * scale);
    }
  });
  return out;
}

// ------------------------------------------------------------------ sampling

// One value seen at every element (every stride 0: an expanded scalar, as the gradient
// of z.sum() arrives), which the kernels read once instead of copying it out.
bool is_broadcast_value(const Tensor& t) {
  if (t.numel() <= 1) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) != 0) return false;
  }
  return true;
}

double std_exponent(bool logsigma) {
  return logsigma ? kStdExponentLogSigma : kStdExponentLogVar;
}

Tensor reparameterize(const Tensor& mu, const Tensor& logvar, const Tensor& eps, bool logsigma) {
  check_reparameterize_args(mu, logvar, eps, kDevice);
  const Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous(), eps_c = eps.contiguous();
  Tensor z = empty_output(eps_c);
  kernels().reparameterize(mu.scalar_type(), mu_c.const_data_ptr(), logvar_c.const_data_ptr(),
                           eps_c.const_data_ptr(), z.data_ptr(), mu.numel(), sample_count(eps, mu),
                           std_exponent(logsigma));
  return z;
}

std::tuple<Tensor, Tensor> reparameterize_backward(const Tensor& grad_z, const Tensor& logvar,
                                                   const Tensor& eps, bool logsigma) {
  check_reparameterize_backward_args(grad_z, logvar, eps, kDevice);
  const bool grad_is_broadcast = is_broadcast_value(grad_z);
  const Tensor grad_c = grad_is_broadcast ? grad_z : grad_z.contiguous(),
               logvar_c = logvar.contiguous(), eps_c = eps.contiguous();
  Tensor grad_mu = at::empty_like(logvar_c), grad_logvar = at::empty_like(logvar_c);
  kernels().reparameterize_backward(logvar.scalar_type(), grad_c.const_data_ptr(),
                                    grad_is_broadcast ? 0 : 1,
                                    logvar_c.const_data_ptr(), eps_c.const_data_ptr(),
                                    grad_mu.data_ptr(), grad_logvar.data_ptr(), logvar.numel(),
                                    sample_count(eps, logvar), std_exponent(logsigma));
  return {grad_mu, grad_logvar};
}

// Read from memory: a CPU int64 with one element (checked); a dispatched item() would
// cost more than a small draw.
uint64_t read_seed(const Tensor& seed) {
  return static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
}

// z, and eps where `keep_noise` (else an empty tensor).
std::tuple<Tensor, Tensor> sample_philox(const Tensor& mu, const Tensor& logvar,
                                         const Tensor& seed, std::optional<int64_t> num_samples,
                                         bool logsigma, bool keep_noise) {
  const std::vector<int64_t> shape =
      check_reparameterize_philox_args(mu, logvar, seed, num_samples, kDevice);
  const Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  Tensor z = at::empty(shape, mu.options());
  Tensor eps = at::empty(keep_noise ? shape : std::vector<int64_t>{0}, mu.options());
  kernels().reparameterize_philox(mu.scalar_type(), mu_c.const_data_ptr(),
                                  logvar_c.const_data_ptr(), read_seed(seed), z.data_ptr(),
                                  keep_noise ? eps.data_ptr() : nullptr, mu.numel(),
                                  num_samples.value_or(1),
                                  std_exponent(logsigma));
  return {z, eps};
}

Tensor reparameterize_philox(const Tensor& mu, const Tensor& logvar, const Tensor& seed,
                             std::optional<int64_t> num_samples, bool logsigma) {
  return std::get<0>(sample_philox(mu, logvar, seed, num_samples, logsigma, false));
}

std::tuple<Tensor, Tensor> reparameterize_philox_with_noise(const Tensor& mu,
                                                            const Tensor& logvar,
                                                            const Tensor& seed,
                                                            std::optional<int64_t> num_samples,
                                                            bool logsigma) {
  return sample_philox(mu, logvar, seed, num_samples, logsigma, true);
}

std::tuple<Tensor, Tensor> reparameterize_philox_backward(const Tensor& grad_z,
                                                          const Tensor& logvar,
                                                          const Tensor& seed, bool logsigma) {
  check_reparameterize_philox_backward_args(grad_z, logvar, seed, kDevice);
  const Tensor grad_c = grad_z.contiguous(), logvar_c = logvar.contiguous();
  Tensor grad_mu = at::empty_like(logvar_c), grad_logvar = at::empty_like(logvar_c);
  kernels().reparameterize_philox_backward(
      logvar.scalar_type(), grad_c.const_data_ptr(), logvar_c.const_data_ptr(),
      read_seed(seed), grad_mu.data_ptr(),
      grad_logvar.data_ptr(), logvar.numel(), sample_count(grad_z, logvar),
      std_exponent(logsigma));
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
  std::vector<bool> mask = mask_vector(grad_mask);
  mask.resize(inputs.size());
  LossCall call(inputs, reduction, divisor, mask);
  call.run(kl_kind(with_prior, logsigma));
  const auto options = mu.options().dtype(call.dtype);
  // Each output its own tensor: outputs must never alias one another.
  const auto no_grad = [&] { return at::empty({0}, options.dtype(local_grad_dtype(call.dtype))); };
  return {reduce_rows(call.row_sums, call.elementwise, reduction, divisor, options),
          call.grads[0], call.grads[1],
          with_prior ? call.grads[2] : no_grad(),
          with_prior ? call.grads[3] : no_grad()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> reconstruction_nll(
    const Tensor& input, const Tensor& target, const std::optional<Tensor>& scale,
    double scale_value, int64_t kind, int64_t reduction, int64_t divisor,
    std::array<bool, 3> grad_mask) {
  const std::vector<Tensor> inputs =
      reconstruction_inputs("reconstruction_nll", input, target, scale, kind, reduction, kDevice,
                            InputDtypes::kMixed);
  std::vector<bool> mask = mask_vector(grad_mask);
  mask.resize(inputs.size());
  LossCall call(inputs, reduction, divisor, mask);
  call.run(static_cast<LossKind>(kind), scale_value);
  call.check_unit_interval("reconstruction_nll", {"input (probabilities)", "target"});
  const auto options = input.options().dtype(call.dtype);
  return {reduce_rows(call.row_sums, call.elementwise, reduction, divisor, options),
          call.grads[0], call.grads[1],
          scale.has_value() ? call.grads[2]
                            : at::empty({0}, options.dtype(local_grad_dtype(call.dtype)))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> elbo(
    const Tensor& recon, const Tensor& x, const Tensor& mu, const Tensor& logvar,
    int64_t kind, double beta, int64_t reduction, int64_t divisor, std::array<bool, 4> grad_mask,
    bool logsigma) {
  check_elbo_args(recon, x, mu, logvar, kind, reduction, kDevice, InputDtypes::kMixed);
  // One dtype for all outputs: the upstream gradients of the three losses are its.
  const at::ScalarType dtype = loss_dtype({recon, x, mu, logvar});
  LossCall recon_call({recon, x}, reduction, divisor, {grad_mask[0], grad_mask[1]}, dtype);
  recon_call.run(static_cast<LossKind>(kind));
  recon_call.check_unit_interval("elbo_loss", {"recon (probabilities)", "x"});
  LossCall kl_call({mu, logvar}, reduction, divisor, {grad_mask[2], grad_mask[3]}, dtype);
  kl_call.run(kl_kind(/*with_prior=*/false, logsigma));

  std::vector<double> loss_rows(recon_call.row_sums.size());
  for (size_t r = 0; r < loss_rows.size(); ++r) {
    loss_rows[r] = recon_call.row_sums[r] + beta * kl_call.row_sums[r];
  }
  const auto options = recon.options().dtype(dtype);
  return {reduce_rows(loss_rows, Tensor(), reduction, divisor, options),
          reduce_rows(recon_call.row_sums, Tensor(), reduction, divisor, options),
          reduce_rows(kl_call.row_sums, Tensor(), reduction, divisor, options),
          recon_call.grads[0], recon_call.grads[1], kl_call.grads[0], kl_call.grads[1]};
}

std::tuple<Tensor, Tensor> discretized_logistic_mixture_nll(const Tensor& params, const Tensor& x,
                                                            int64_t num_bits, int64_t reduction,
                                                            int64_t divisor,
                                                            std::array<bool, 1> grad_mask) {
  MixtureBuffers buffers = mixture_buffers(params, x, num_bits, reduction, kDevice);
  const auto compute_dtype = params.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto loss_options = params.options().dtype(c10::promoteTypes(params.scalar_type(),
                                                                     x.scalar_type()));
  Tensor pixel_nll;
  if (reduction == kNone) {
    pixel_nll = at::empty({buffers.batch, buffers.height, buffers.width},
                          params.options().dtype(compute_dtype));
    buffers.pixel_nll = pixel_nll.data_ptr();
  }
  Tensor grad = no_local_grad(params);
  if (grad_mask[0]) {
    grad = empty_output(params, local_grad_dtype(params.scalar_type()));
    buffers.grads = grad.data_ptr();
  }
  buffers.grad_scale = 1.0 / static_cast<double>(divisor);
  std::vector<double> sums(buffers.batch);
  buffers.sums = sums.data();
  int32_t x_out_of_range = 0;
  buffers.x_out_of_range = &x_out_of_range;
  kernels().discretized_logistic_mixture(params.scalar_type(), x.scalar_type(), buffers);
  TORCH_CHECK_VALUE(!x_out_of_range,
                    "vae_kernels.discretized_logistic_mixture_nll: x must lie in [-1, 1], but "
                    "some values are outside it");
  if (reduction == kNone) return {pixel_nll.to(loss_options.dtype()), grad};
  return {reduce_rows(sums, Tensor(), reduction, divisor, loss_options), grad};
}

// out = local_grad * grad_output (per element, per row or one value), in grad_output's
// dtype; `out` may be `local_grad` itself. Dtypes are checked by the caller.
void loss_backward_into(const Tensor& local_grad, const Tensor& grad_output, int64_t reduction,
                        Tensor& out) {
  TORCH_CHECK_VALUE(local_grad.is_contiguous() && out.is_contiguous(),
                    "vae_kernels.loss_backward: local_grad must be contiguous");
  const int64_t rows = batch_rows(local_grad), row_len = row_length(local_grad);
  int64_t stride_elem = 0, stride_row = 0;
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad_output.sizes() == local_grad.sizes(),
                      "vae_kernels.loss_backward: grad_output must have shape ",
                      local_grad.sizes(), ", got ", grad_output.sizes());
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
  }
  const Tensor upstream_c = grad_output.contiguous();
  kernels().loss_backward(grad_output.scalar_type(), local_grad.const_data_ptr(),
                          upstream_c.const_data_ptr(), stride_elem, stride_row, out.data_ptr(),
                          rows, row_len);
}

Tensor loss_backward(const Tensor& local_grad, const Tensor& grad_output, int64_t reduction) {
  check_loss_backward_args(local_grad, grad_output, reduction, kDevice);
  const Tensor local_c = local_grad.contiguous();
  Tensor out = empty_output(local_c, grad_output.scalar_type());
  loss_backward_into(local_c, grad_output, reduction, out);
  return out;
}

void loss_backward_inplace(Tensor& local_grad, const Tensor& grad_output, int64_t reduction) {
  check_loss_backward_args(local_grad, grad_output, reduction, kDevice, /*in_place=*/true);
  loss_backward_into(local_grad, grad_output, reduction, local_grad);
}

std::string cpu_kernel_isa() { return kernels().name; }

}  // namespace

TORCH_LIBRARY_IMPL(vae_kernels, CPU, m) {
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

// Which instruction set the CPU kernels run with (informational; no tensors involved).
TORCH_LIBRARY_FRAGMENT(vae_kernels, m) { m.def("cpu_kernel_isa() -> str", &cpu_kernel_isa); }

}  // namespace vae_kernels::cpu
