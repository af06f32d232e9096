// The Python module vae_kernels._eager_calls: eager calls of the vae_kernels ops from
// the public API (vae_kernels/op_autograd.py's OpsBackend). Each is the op's own
// dispatcher call (the autograd of csrc/autograd.cpp included), without what torch.ops'
// generic path costs around it at the sizes VAEs train at: matching and boxing the
// arguments against the schema, and a Python tensor for every output. A loss call
// returns only its reduced losses (the local gradients stay with autograd).
//
// A call returns None, and the caller takes torch.ops' path, where a tensor argument
// is a subclass or a __torch_function__ mode is active: torch.ops honours them.
// Under torch.compile the caller never comes here (Dynamo cannot trace this module).
//
// Only this module uses the Python API; libvae_kernels_C.so, which defines and
// implements the ops, loads without Python.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randint.h>

#include "../op_handles.h"

namespace vae_kernels {
namespace {

namespace py = pybind11;
using at::Tensor;

// Whether the call may take its tensor arguments as they are: each a Tensor or a
// Parameter (not a subclass) or None (an absent optional tensor), with no
// __torch_function__ mode active.
bool all_plain(std::initializer_list<py::handle> args) {
  if (at::impl::torch_function_mode_enabled()) return false;
  for (py::handle arg : args) {
    if (!arg.is_none() && !THPVariable_CheckExact(arg.ptr())) return false;
  }
  return true;
}

const Tensor& tensor(py::handle obj) { return THPVariable_Unpack(obj.ptr()); }

std::optional<Tensor> optional_tensor(py::handle obj) {
  return obj.is_none() ? std::nullopt : std::optional<Tensor>(tensor(obj));
}

template <typename... Tensors>
py::object wrap(Tensors&&... tensors) {
  return py::make_tuple(py::cast(std::forward<Tensors>(tensors))...);
}

// The ops' own calls, with their schemas' arguments; tensors are plain.

py::object gaussian_kl(py::handle mu, py::handle logvar, py::handle prior_mu,
                       py::handle prior_logvar, int64_t reduction, int64_t divisor,
                       std::array<bool, 4> grad_mask, bool logsigma) {
  if (!all_plain({mu, logvar, prior_mu, prior_logvar})) return py::none();
  Tensor loss;
  {
    py::gil_scoped_release no_gil;
    loss = std::get<0>(op_handles::gaussian_kl().call(
        tensor(mu), tensor(logvar), optional_tensor(prior_mu), optional_tensor(prior_logvar),
        reduction, divisor, grad_mask, logsigma));
  }
  return wrap(std::move(loss));
}

py::object reconstruction_nll(py::handle input, py::handle target, py::handle scale,
                              double scale_value, int64_t kind, int64_t reduction,
                              int64_t divisor, std::array<bool, 3> grad_mask) {
  if (!all_plain({input, target, scale})) return py::none();
  Tensor loss;
  {
    py::gil_scoped_release no_gil;
    loss = std::get<0>(op_handles::reconstruction_nll().call(
        tensor(input), tensor(target), optional_tensor(scale), scale_value, kind, reduction,
        divisor, grad_mask));
  }
  return wrap(std::move(loss));
}

py::object elbo(py::handle recon, py::handle x, py::handle mu, py::handle logvar, int64_t kind,
                double beta, int64_t reduction, int64_t divisor, std::array<bool, 4> grad_mask,
                bool logsigma) {
  if (!all_plain({recon, x, mu, logvar})) return py::none();
  Tensor loss, recon_nll, kl;
  {
    py::gil_scoped_release no_gil;
    std::tie(loss, recon_nll, kl, std::ignore, std::ignore, std::ignore, std::ignore) =
        op_handles::elbo().call(tensor(recon), tensor(x), tensor(mu), tensor(logvar), kind,
                                beta, reduction, divisor, grad_mask, logsigma);
  }
  return wrap(std::move(loss), std::move(recon_nll), std::move(kl));
}

py::object discretized_logistic_mixture_nll(py::handle params, py::handle x, int64_t num_bits,
                                            int64_t reduction, int64_t divisor,
                                            std::array<bool, 1> grad_mask) {
  if (!all_plain({params, x})) return py::none();
  Tensor loss;
  {
    py::gil_scoped_release no_gil;
    loss = std::get<0>(op_handles::discretized_logistic_mixture_nll().call(
        tensor(params), tensor(x), num_bits, reduction, divisor, grad_mask));
  }
  return wrap(std::move(loss));
}

py::object reparameterize(py::handle mu, py::handle logvar, py::handle eps, bool logsigma) {
  if (!all_plain({mu, logvar, eps})) return py::none();
  Tensor z;
  {
    py::gil_scoped_release no_gil;
    z = op_handles::reparameterize().call(tensor(mu), tensor(logvar), tensor(eps), logsigma);
  }
  return py::cast(std::move(z));
}

// torch.randint(0, 2**62, (1,), generator=generator) on mu's device, as
// vae_kernels/op_autograd.py's _draw_seed draws it (the same generator state gives the
// same seed on every backend). On the CPU, without randint's dispatch and iterator: the
// same draw as ATen's uniform_int_from_to_distribution, random64() under the
// generator's lock, modulo the range.
Tensor draw_seed(const Tensor& mu, std::optional<at::Generator> generator) {
  constexpr uint64_t kSeedRange = uint64_t(1) << 62;
  if (!mu.device().is_cpu()) {
    return at::randint(0, static_cast<int64_t>(kSeedRange), {1}, generator,
                       mu.options().dtype(at::kLong));
  }
  auto* cpu_generator = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  int64_t value;
  {
    std::lock_guard<std::mutex> lock(cpu_generator->mutex_);
    value = at::uniform_int_from_to_distribution<int64_t>(kSeedRange, 0)(cpu_generator);
  }
  Tensor seed = at::empty({1}, at::kLong);
  seed.data_ptr<int64_t>()[0] = value;
  return seed;
}

// In-kernel noise, with the seed of draw_seed.
py::object reparameterize_philox(py::handle mu, py::handle logvar,
                                 std::optional<at::Generator> generator,
                                 std::optional<int64_t> num_samples, bool logsigma) {
  if (!all_plain({mu, logvar})) return py::none();
  Tensor z;
  {
    py::gil_scoped_release no_gil;
    const Tensor& mu_t = tensor(mu);
    z = op_handles::reparameterize_philox().call(mu_t, tensor(logvar), draw_seed(mu_t, generator),
                                                 num_samples, logsigma);
  }
  return py::cast(std::move(z));
}

// ------------------------------------------------------------------ direct calls
//
// The public API's calls as a training step makes them (vae_kernels/functional.py's
// direct path): backend "auto" or "cpu", plain dense CPU tensors of one floating dtype
// (no promotion, no cast), matching shapes, a known reduction. Anything else returns
// None, and the caller takes the checked path, which also names what is wrong. The
// reduction names are encoded as vae_kernels/schema.py's reduction_args encodes them.

bool is_direct_tensor(py::handle obj, at::ScalarType dtype) {
  if (!THPVariable_CheckExact(obj.ptr())) return false;
  const Tensor& t = tensor(obj);
  return t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype;
}

// A str argument's text; empty for anything else (which no valid name is).
std::string_view text(py::handle obj) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_Check(obj.ptr()) ? PyUnicode_AsUTF8AndSize(obj.ptr(), &size) : nullptr;
  if (data == nullptr) {
    PyErr_Clear();
    return {};
  }
  return {data, static_cast<size_t>(size)};
}

bool direct_tensors(py::handle backend, std::initializer_list<py::handle> args) {
  const std::string_view name = text(backend);
  if ((name != "auto" && name != "cpu") || at::impl::torch_function_mode_enabled()) {
    return false;
  }
  const py::handle first = *args.begin();
  if (!THPVariable_CheckExact(first.ptr())) return false;
  const at::ScalarType dtype = tensor(first).scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf &&
      dtype != at::kDouble) {
    return false;
  }
  for (py::handle arg : args) {
    if (!is_direct_tensor(arg, dtype)) return false;
  }
  return true;
}

struct Reduction {
  int64_t mode, divisor;
};

// (reduction, divisor) of a public reduction over `t`; nullopt for a name the call
// does not know or a reduction over batches of a 0-dim tensor.
std::optional<Reduction> reduction_args(py::handle name, const Tensor& t, bool elbo) {
  const std::string_view reduction = text(name);
  constexpr int64_t kNone = 0, kPerSample = 1, kSum = 2;
  const bool batched = t.dim() > 0;
  if (reduction == "batchmean" && batched) return Reduction{kSum, t.size(0)};
  if (reduction == "sum") return Reduction{kSum, 1};
  if (reduction == "per_sample" && batched) return Reduction{kPerSample, 1};
  if (elbo) return std::nullopt;
  if (reduction == "mean") return Reduction{kSum, t.numel()};
  if (reduction == "none") return Reduction{kNone, 1};
  return std::nullopt;
}

// A loss call's loss: the first of its reduced outputs, or None.
py::object loss_of(const py::object& reduced) {
  return reduced.is_none() ? reduced
                           : py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(reduced.ptr(), 0));
}

bool needs_grad(py::handle t) { return at::GradMode::is_enabled() && tensor(t).requires_grad(); }

py::object direct_gaussian_kl(py::handle mu, py::handle logvar, py::handle reduction,
                              bool logsigma, py::handle backend) {
  if (!direct_tensors(backend, {mu, logvar}) || !tensor(mu).sizes().equals(tensor(logvar).sizes())) {
    return py::none();
  }
  const auto args = reduction_args(reduction, tensor(mu), false);
  if (!args) return py::none();
  return loss_of(gaussian_kl(mu, logvar, py::none(), py::none(), args->mode, args->divisor,
                             {needs_grad(mu), needs_grad(logvar), false, false}, logsigma));
}

// A likelihood at a fixed scale (`kind`: a LossKind of vae_kernels/schema.py).
py::object direct_reconstruction_nll(py::handle input, py::handle target, double scale_value,
                                     int64_t kind, py::handle reduction,
                                     py::handle backend) {
  if (!direct_tensors(backend, {input, target}) ||
      !tensor(input).sizes().equals(tensor(target).sizes())) {
    return py::none();
  }
  const auto args = reduction_args(reduction, tensor(input), false);
  if (!args) return py::none();
  return loss_of(reconstruction_nll(input, target, py::none(), scale_value, kind, args->mode,
                                    args->divisor, {needs_grad(input), needs_grad(target), false}));
}

// (loss, recon_nll, kl).
py::object direct_elbo(py::handle recon, py::handle x, py::handle mu, py::handle logvar,
                       int64_t kind, double beta, py::handle reduction, bool logsigma,
                       py::handle backend) {
  if (!direct_tensors(backend, {recon, x, mu, logvar})) return py::none();
  const Tensor &r = tensor(recon), &m = tensor(mu);
  if (!r.sizes().equals(tensor(x).sizes()) || !m.sizes().equals(tensor(logvar).sizes()) ||
      r.dim() == 0 || m.dim() == 0 || r.size(0) != m.size(0)) {
    return py::none();
  }
  const auto args = reduction_args(reduction, r, true);
  if (!args) return py::none();
  return elbo(recon, x, mu, logvar, kind, beta, args->mode, args->divisor,
              {needs_grad(recon), needs_grad(x), needs_grad(mu), needs_grad(logvar)}, logsigma);
}

// In-kernel noise (`eps` None, drawn from `generator`) or the given eps.
py::object direct_reparameterize(py::handle mu, py::handle logvar, py::handle eps,
                                 std::optional<at::Generator> generator, bool logsigma,
                                 py::handle backend) {
  const bool given_noise = !eps.is_none();
  if (!(given_noise ? direct_tensors(backend, {mu, logvar, eps})
                    : direct_tensors(backend, {mu, logvar}))) {
    return py::none();
  }
  const auto sizes = tensor(mu).sizes();
  if (!sizes.equals(tensor(logvar).sizes()) ||
      (given_noise && !sizes.equals(tensor(eps).sizes()))) {
    return py::none();
  }
  return given_noise ? reparameterize(mu, logvar, eps, logsigma)
                     : reparameterize_philox(mu, logvar, std::move(generator), std::nullopt,
                                             logsigma);
}

// Turns a c10::Error into the Python exception torch.ops would raise (ValueError for
// TORCH_CHECK_VALUE, ...).
template <auto Function>
struct Translated;

template <typename Result, typename... Args, Result (*Function)(Args...)>
struct Translated<Function> {
  static Result call(Args... args) {
    HANDLE_TH_ERRORS
    return Function(std::forward<Args>(args)...);
    END_HANDLE_TH_ERRORS_PYBIND
  }
};

}  // namespace
}  // namespace vae_kernels

PYBIND11_MODULE(_eager_calls, m) {
  using namespace vae_kernels;
  m.doc() = "Eager calls of the vae_kernels ops (see csrc/python/eager_calls.cpp)";
  m.def("gaussian_kl", &Translated<gaussian_kl>::call);
  m.def("reconstruction_nll", &Translated<reconstruction_nll>::call);
  m.def("elbo", &Translated<elbo>::call);
  m.def("discretized_logistic_mixture_nll", &Translated<discretized_logistic_mixture_nll>::call);
  m.def("reparameterize", &Translated<reparameterize>::call);
  m.def("reparameterize_philox", &Translated<reparameterize_philox>::call);
  m.def("direct_gaussian_kl", &Translated<direct_gaussian_kl>::call);
  m.def("direct_reconstruction_nll", &Translated<direct_reconstruction_nll>::call);
  m.def("direct_elbo", &Translated<direct_elbo>::call);
  m.def("direct_reparameterize", &Translated<direct_reparameterize>::call);
}
