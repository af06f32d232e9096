// The autograd of the C++ ops (schemas: csrc/schemas.cpp), registered for the Autograd
// key: an eager call from Python is one dispatcher call, and its backward runs no Python.
// The Triton ops have the same rules in Python (vae_kernels/op_autograd.py).
//
// Losses. A loss op returns its reduced losses and, computed in the same pass, the
// local gradient of each input that grad_mask names: d reduced loss / d input for an
// upstream gradient of 1. Backward multiplies them by the upstream gradient
// (loss_backward), out of place; for an upstream gradient of exactly 1 on the CPU (the
// usual loss.backward()) the local gradient is the input's gradient, with no pass. The
// node lets go of its local gradients in backward (a repeated backward, with
// retain_graph=True, recomputes them from the saved inputs), so they live no longer
// than the gradients they become.
//
// Sampling. reparameterize and reparameterize_philox have backward ops of their own. On
// the CPU, in-kernel noise is kept for backward (reparameterize_philox_with_noise).
//
// No second derivatives: a backward with create_graph=True raises.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <functional>
#include <optional>
#include <vector>

#include "op_handles.h"

namespace vae_kernels {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kReductionNone = 0, kReductionPerSample = 1;

// Fake and functional tensors (torch.compile's tracing) carry the Python or Functionalize
// key: no values to read.
bool is_traced(const Tensor& t) {
  return t.defined() && t.key_set().has_any(c10::DispatchKeySet{
                            c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
}

void refuse_double_backward() {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "vae_kernels: backward with create_graph=True (a second derivative, e.g. a "
              "gradient penalty) is not supported by the fused kernels; use backend='torch'");
}

// Whether the upstream gradient is exactly 1 (the usual loss.backward()): read only for
// a CPU scalar, so the check never synchronizes a device, and read from its memory, as
// a dispatched item() would cost more than the rest of a small backward.
bool is_one(const Tensor& upstream) {
  if (upstream.numel() != 1 || !upstream.device().is_cpu() || is_traced(upstream)) return false;
  const void* data = upstream.const_data_ptr();
  switch (upstream.scalar_type()) {
    case at::kFloat: return *static_cast<const float*>(data) == 1.0f;
    case at::kDouble: return *static_cast<const double*>(data) == 1.0;
    case at::kHalf: return static_cast<float>(*static_cast<const at::Half*>(data)) == 1.0f;
    case at::kBFloat16: return static_cast<float>(*static_cast<const at::BFloat16*>(data)) == 1.0f;
    default: return false;
  }
}

std::optional<Tensor> optional(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// An IValue holding any C++ object, for AutogradContext::saved_data.
template <typename T>
struct Held : torch::CustomClassHolder {
  explicit Held(T v) : value(std::move(v)) {}
  T value;
};

template <typename T>
c10::IValue hold(T value) {
  return c10::IValue::make_capsule(c10::make_intrusive<Held<T>>(std::move(value)));
}

template <typename T>
const T& held(const c10::IValue& v) {
  return static_cast<Held<T>*>(v.toCapsule().get())->value;
}

// ------------------------------------------------------------------ losses

// One call of a loss op: how to run it (below autograd) on its inputs, and how its
// outputs and upstream gradients map to the inputs' gradients.
struct LossCall {
  // Runs the op on `inputs` (absent optional inputs undefined): all its outputs.
  std::function<variable_list(const std::vector<Tensor>& inputs)> run;
  int reduced_outputs = 1;  // the reduced losses come first, then one local gradient per input
  int64_t reduction = 0;
  // The elbo: inputs 0-1 (recon term) take d loss + d recon_nll, inputs 2-3 (KL term)
  // beta * d loss + d kl.
  std::optional<double> elbo_beta;
  // The mixture likelihood: the loss is per pixel (B, H, W) for a (B, P, H, W) local
  // gradient, so the upstream gradient is broadcast over P.
  bool per_pixel = false;
};

Tensor add_defined(const Tensor& a, const Tensor& b) {
  return !a.defined() ? b : (!b.defined() ? a : a.add(b));
}

// The upstream gradient of input k's term.
Tensor term_upstream(const LossCall& call, const variable_list& grad_outputs, int k) {
  if (!call.elbo_beta) return grad_outputs[0];
  const Tensor& loss = grad_outputs[0];
  if (k < 2) return add_defined(loss, grad_outputs[1]);
  const double beta = *call.elbo_beta;
  return add_defined(loss.defined() && beta != 1.0 ? loss.mul(beta) : loss, grad_outputs[2]);
}

// local * upstream. An upstream gradient of exactly 1 (loss.backward() on a CPU scalar)
// needs no pass: the local gradient is the input's gradient, where their dtypes agree
// (not float16's float32 local gradients).
Tensor chain(const LossCall& call, const Tensor& local, const Tensor& upstream) {
  if (!is_traced(local) && is_one(upstream) && local.scalar_type() == upstream.scalar_type()) {
    return local;
  }
  if (call.per_pixel) {
    if (call.reduction == kReductionNone) return local.mul(upstream.unsqueeze(1));
    if (call.reduction == kReductionPerSample) return local.mul(upstream.view({-1, 1, 1, 1}));
    return local.mul(upstream);
  }
  return op_handles::loss_backward().call(local, upstream, call.reduction);
}

struct LossFunction : public torch::autograd::Function<LossFunction> {
  // Up to four tensor inputs (an absent one: nullopt, which makes no input edge).
  static variable_list forward(AutogradContext* ctx, const Tensor& a,
                               const std::optional<Tensor>& b, const std::optional<Tensor>& c,
                               const std::optional<Tensor>& d, LossCall call) {
    const std::vector<Tensor> inputs{a, b.value_or(Tensor()), c.value_or(Tensor()),
                                     d.value_or(Tensor())};
    variable_list outputs;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      outputs = call.run(inputs);
    }
    const std::vector<Tensor> local(outputs.begin() + call.reduced_outputs, outputs.end());
    ctx->mark_non_differentiable(local);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(inputs);
    ctx->saved_data["local_grads"] = local;
    ctx->saved_data["call"] = hold(std::move(call));
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward();
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing here is differentiated again
    variable_list grads(5);  // a, b, c, d, call
    const LossCall& call = held<LossCall>(ctx->saved_data["call"]);
    grad_outputs.resize(call.reduced_outputs);
    bool any_upstream = false;
    for (const auto& g : grad_outputs) any_upstream = any_upstream || g.defined();
    if (!any_upstream) return grads;

    const std::vector<Tensor> inputs = ctx->get_saved_variables();
    std::vector<Tensor> local;
    auto& kept = ctx->saved_data["local_grads"];
    if (kept.isTensorList()) {
      local = kept.toTensorVector();
      kept = c10::IValue();  // consumed: a repeated backward recomputes them
    } else {
      const variable_list outputs = call.run(inputs);
      local.assign(outputs.begin() + call.reduced_outputs, outputs.end());
    }


    int edge = 0;
    for (int k = 0; k < 4; ++k) {
      if (!inputs[k].defined()) continue;  // an absent input has no edge
      if (!ctx->needs_input_grad(edge++)) continue;
      const Tensor upstream = term_upstream(call, grad_outputs, k);
      if (!upstream.defined()) continue;
      TORCH_CHECK(k < static_cast<int>(local.size()) &&
                      local[k].sym_sizes().equals(inputs[k].sym_sizes()),
                  "vae_kernels: an input needs a gradient that the forward pass was not asked "
                  "to compute (grad_mask); call the public vae_kernels functions, not the raw op");
      grads[k] = chain(call, local[k], upstream);
    }
    return grads;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gaussian_kl_autograd(
    const Tensor& mu, const Tensor& logvar, const std::optional<Tensor>& prior_mu,
    const std::optional<Tensor>& prior_logvar, int64_t reduction, c10::SymInt divisor,
    std::array<bool, 4> grad_mask, bool logsigma) {
  LossCall call;
  call.reduction = reduction;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, g0, g1, g2, g3] =
        op_handles::gaussian_kl().call(in[0], in[1], optional(in[2]), optional(in[3]),
                                       reduction, divisor, grad_mask, logsigma);
    return variable_list{loss, g0, g1, g2, g3};
  };
  const auto out = LossFunction::apply(mu, logvar, prior_mu, prior_logvar, std::move(call));
  return {out[0], out[1], out[2], out[3], out[4]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> reconstruction_nll_autograd(
    const Tensor& input, const Tensor& target, const std::optional<Tensor>& scale,
    double scale_value, int64_t kind, int64_t reduction, c10::SymInt divisor,
    std::array<bool, 3> grad_mask) {
  LossCall call;
  call.reduction = reduction;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, g0, g1, g2] = op_handles::reconstruction_nll().call(
        in[0], in[1], optional(in[2]), scale_value, kind, reduction, divisor, grad_mask);
    return variable_list{loss, g0, g1, g2};
  };
  const auto out = LossFunction::apply(input, target, scale, std::nullopt, std::move(call));
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> elbo_autograd(
    const Tensor& recon, const Tensor& x, const Tensor& mu, const Tensor& logvar, int64_t kind,
    double beta, int64_t reduction, c10::SymInt divisor, std::array<bool, 4> grad_mask,
    bool logsigma) {
  LossCall call;
  call.reduction = reduction;
  call.reduced_outputs = 3;
  call.elbo_beta = beta;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, recon_nll, kl, g0, g1, g2, g3] = op_handles::elbo().call(
        in[0], in[1], in[2], in[3], kind, beta, reduction, divisor, grad_mask, logsigma);
    return variable_list{loss, recon_nll, kl, g0, g1, g2, g3};
  };
  const auto out = LossFunction::apply(recon, x, mu, logvar, std::move(call));
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6]};
}

std::tuple<Tensor, Tensor> discretized_logistic_mixture_nll_autograd(
    const Tensor& params, const Tensor& x, int64_t num_bits, int64_t reduction,
    c10::SymInt divisor, std::array<bool, 1> grad_mask) {
  LossCall call;
  call.reduction = reduction;
  call.per_pixel = true;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, grad] = op_handles::discretized_logistic_mixture_nll().call(
        in[0], in[1], num_bits, reduction, divisor, grad_mask);
    return variable_list{loss, grad};
  };
  const auto out = LossFunction::apply(params, x, std::nullopt, std::nullopt, std::move(call));
  return {out[0], out[1]};
}

// ------------------------------------------------------------------ sampling

struct SampleCall {
  bool philox = false;  // noise: the seed (no gradient) instead of eps
  bool logsigma = false;
  bool differentiable = false;  // a backward can follow: mu or logvar requires grad
};

// In-kernel noise on the CPU is kept for backward, where reading eps costs less than
// regenerating it (Philox + Box-Muller); on a GPU, where arithmetic is cheap and memory
// is not, backward regenerates it from the seed.
bool keeps_noise(const Tensor& mu) { return mu.device().is_cpu(); }

bool differentiable(const Tensor& mu, const Tensor& logvar) {
  return at::GradMode::is_enabled() && (mu.requires_grad() || logvar.requires_grad());
}

struct SampleFunction : public torch::autograd::Function<SampleFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                        const Tensor& noise, std::optional<int64_t> num_samples, SampleCall call) {
    // In-kernel noise kept for a backward that can follow, else regenerated there.
    const bool keep_noise = call.philox && call.differentiable && keeps_noise(mu);
    Tensor z, kept_noise = noise;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      if (!call.philox) {
        z = op_handles::reparameterize().call(mu, logvar, noise, call.logsigma);
      } else if (keep_noise) {
        std::tie(z, kept_noise) = op_handles::reparameterize_philox_with_noise().call(
            mu, logvar, noise, num_samples, call.logsigma);
      } else {
        z = op_handles::reparameterize_philox().call(mu, logvar, noise, num_samples, call.logsigma);
      }
    }
    ctx->save_for_backward({logvar, kept_noise});
    // Backward from the kept eps; the seed input still gets no gradient.
    ctx->saved_data["call"] = hold(call);
    ctx->saved_data["regenerate"] = call.philox && !keep_noise;
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward();
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing here is differentiated again
    variable_list grads(5);  // mu, logvar, noise, num_samples, call
    const Tensor& grad_z = grad_outputs[0];
    if (!grad_z.defined()) return grads;
    const SampleCall& call = held<SampleCall>(ctx->saved_data["call"]);
    const auto saved = ctx->get_saved_variables();
    const Tensor &logvar = saved[0], &noise = saved[1];  // noise: eps, or the seed
    std::tie(grads[0], grads[1]) =
        ctx->saved_data["regenerate"].toBool()
            ? op_handles::reparameterize_philox_backward().call(grad_z, logvar, noise, call.logsigma)
            : op_handles::reparameterize_backward().call(grad_z, logvar, noise, call.logsigma);
    if (!call.philox && ctx->needs_input_grad(2)) {  // eps that itself requires grad: dz/deps = std
      grads[2] = grad_z.mul((call.logsigma ? logvar : logvar.mul(0.5)).exp());
    }
    return grads;
  }
};

Tensor reparameterize_autograd(const Tensor& mu, const Tensor& logvar, const Tensor& eps,
                               bool logsigma) {
  return SampleFunction::apply(mu, logvar, eps, std::optional<int64_t>(), SampleCall{false, logsigma});
}

Tensor reparameterize_philox_autograd(const Tensor& mu, const Tensor& logvar, const Tensor& seed,
                                      std::optional<int64_t> num_samples, bool logsigma) {
  return SampleFunction::apply(mu, logvar, seed, num_samples,
                               SampleCall{true, logsigma, differentiable(mu, logvar)});
}

}  // namespace

TORCH_LIBRARY_IMPL(vae_kernels, Autograd, m) {
  m.impl("gaussian_kl", &gaussian_kl_autograd);
  m.impl("reconstruction_nll", &reconstruction_nll_autograd);
  m.impl("elbo", &elbo_autograd);
  m.impl("discretized_logistic_mixture_nll", &discretized_logistic_mixture_nll_autograd);
  m.impl("reparameterize", &reparameterize_autograd);
  m.impl("reparameterize_philox", &reparameterize_philox_autograd);
}

}  // namespace vae_kernels
