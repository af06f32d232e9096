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
// Each call's backward is a node of its own (LossBackward, SampleBackward), holding
// what it needs as members: less per call than torch::autograd::Function's context.
//
// No second derivatives: a backward with create_graph=True raises.
#include <ATen/FuncTorchTLS.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <array>
#include <functional>
#include <optional>
#include <vector>

#include "op_handles.h"

namespace vae_kernels {
namespace {

using at::Tensor;
using torch::autograd::SavedVariable;
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
  const char* backward_name = "";  // the node's name (grad_fn)
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

// Under torch.func transforms a hand-written node would be silently wrong: refuse, as
// torch::autograd::Function does.
void refuse_functorch() {
  if (const auto& functorch_tls = at::functorch::functorchTLSAccessor()) {
    functorch_tls->checkSupportsCppAutogradFunction();
  }
}

// The backward node of one loss op call: an input edge per given input (up to four;
// an absent optional input has none), a gradient input per reduced output.
struct LossBackward : public torch::autograd::Node {
  LossCall call;
  std::array<SavedVariable, 4> inputs;  // undefined where absent
  std::vector<Tensor> local;            // the forward's local gradients, until consumed

  std::string name() const override { return call.backward_name; }

  void release_variables() override {
    for (auto& input : inputs) input.reset_data();
    local.clear();
  }

  variable_list apply(variable_list&& grad_outputs) override {
    refuse_double_backward();
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing here is differentiated again
    variable_list grads(num_outputs());
    bool any_upstream = false;
    for (const auto& g : grad_outputs) any_upstream = any_upstream || g.defined();
    if (!any_upstream) return grads;

    std::vector<Tensor> in(4);
    for (int k = 0; k < 4; ++k) in[k] = inputs[k].unpack();
    std::vector<Tensor> local_grads;
    if (!local.empty()) {
      local_grads = std::move(local);  // consumed: a repeated backward recomputes them
      local.clear();
    } else {
      const variable_list outputs = call.run(in);
      local_grads.assign(outputs.begin() + call.reduced_outputs, outputs.end());
    }

    int edge = 0;
    for (int k = 0; k < 4; ++k) {
      if (!in[k].defined()) continue;  // an absent input has no edge
      const int e = edge++;
      if (!should_compute_output(e)) continue;
      const Tensor upstream = term_upstream(call, grad_outputs, k);
      if (!upstream.defined()) continue;
      TORCH_CHECK(k < static_cast<int>(local_grads.size()) &&
                      local_grads[k].sym_sizes().equals(in[k].sym_sizes()),
                  "vae_kernels: an input needs a gradient that the forward pass was not asked "
                  "to compute (grad_mask); call the public vae_kernels functions, not the raw op");
      grads[e] = chain(call, local_grads[k], upstream);
    }
    return grads;
  }
};

// Runs a loss op below autograd on `inputs` (undefined: absent) and, where a gradient
// can flow, makes its reduced outputs the outputs of a LossBackward node.
variable_list run_loss(LossCall call, const std::vector<Tensor>& inputs) {
  refuse_functorch();
  variable_list outputs;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    outputs = call.run(inputs);
  }
  variable_list given;
  for (const auto& t : inputs) {
    if (t.defined()) given.push_back(t);
  }
  if (!torch::autograd::compute_requires_grad(given)) return outputs;
  auto node = c10::make_intrusive<LossBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(given));
  for (int k = 0; k < 4; ++k) {
    if (inputs[k].defined()) node->inputs[k] = SavedVariable(inputs[k], /*is_output=*/false);
  }
  node->local.assign(outputs.begin() + call.reduced_outputs, outputs.end());
  const int reduced = call.reduced_outputs;
  node->call = std::move(call);
  for (int i = 0; i < reduced; ++i) torch::autograd::set_history(outputs[i], node);
  return outputs;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gaussian_kl_autograd(
    const Tensor& mu, const Tensor& logvar, const std::optional<Tensor>& prior_mu,
    const std::optional<Tensor>& prior_logvar, int64_t reduction, c10::SymInt divisor,
    std::array<bool, 4> grad_mask, bool logsigma) {
  LossCall call;
  call.backward_name = "GaussianKlBackward";
  call.reduction = reduction;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, g0, g1, g2, g3] =
        op_handles::gaussian_kl().call(in[0], in[1], optional(in[2]), optional(in[3]),
                                       reduction, divisor, grad_mask, logsigma);
    return variable_list{loss, g0, g1, g2, g3};
  };
  const auto out = run_loss(std::move(call), {mu, logvar, prior_mu.value_or(Tensor()),
                                              prior_logvar.value_or(Tensor())});
  return {out[0], out[1], out[2], out[3], out[4]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> reconstruction_nll_autograd(
    const Tensor& input, const Tensor& target, const std::optional<Tensor>& scale,
    double scale_value, int64_t kind, int64_t reduction, c10::SymInt divisor,
    std::array<bool, 3> grad_mask) {
  LossCall call;
  call.backward_name = "ReconstructionNllBackward";
  call.reduction = reduction;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, g0, g1, g2] = op_handles::reconstruction_nll().call(
        in[0], in[1], optional(in[2]), scale_value, kind, reduction, divisor, grad_mask);
    return variable_list{loss, g0, g1, g2};
  };
  const auto out = run_loss(std::move(call), {input, target, scale.value_or(Tensor()), Tensor()});
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> elbo_autograd(
    const Tensor& recon, const Tensor& x, const Tensor& mu, const Tensor& logvar, int64_t kind,
    double beta, int64_t reduction, c10::SymInt divisor, std::array<bool, 4> grad_mask,
    bool logsigma) {
  LossCall call;
  call.backward_name = "ElboBackward";
  call.reduction = reduction;
  call.reduced_outputs = 3;
  call.elbo_beta = beta;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, recon_nll, kl, g0, g1, g2, g3] = op_handles::elbo().call(
        in[0], in[1], in[2], in[3], kind, beta, reduction, divisor, grad_mask, logsigma);
    return variable_list{loss, recon_nll, kl, g0, g1, g2, g3};
  };
  const auto out = run_loss(std::move(call), {recon, x, mu, logvar});
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6]};
}

std::tuple<Tensor, Tensor> discretized_logistic_mixture_nll_autograd(
    const Tensor& params, const Tensor& x, int64_t num_bits, int64_t reduction,
    c10::SymInt divisor, std::array<bool, 1> grad_mask) {
  LossCall call;
  call.backward_name = "DiscretizedLogisticMixtureNllBackward";
  call.reduction = reduction;
  call.per_pixel = true;
  call.run = [=](const std::vector<Tensor>& in) {
    auto [loss, grad] = op_handles::discretized_logistic_mixture_nll().call(
        in[0], in[1], num_bits, reduction, divisor, grad_mask);
    return variable_list{loss, grad};
  };
  const auto out = run_loss(std::move(call), {params, x, Tensor(), Tensor()});
  return {out[0], out[1]};
}

// ------------------------------------------------------------------ sampling

struct SampleCall {
  bool philox = false;  // noise: the seed (no gradient) instead of eps
  bool logsigma = false;
};

// In-kernel noise on the CPU is kept for backward, where reading eps costs less than
// regenerating it (Philox + Box-Muller); on a GPU, where arithmetic is cheap and memory
// is not, backward regenerates it from the seed.
bool keeps_noise(const Tensor& mu) { return mu.device().is_cpu(); }

// The backward node of one sampling call: input edges mu, logvar and the noise (eps,
// which may itself require grad, or the seed, which never does).
struct SampleBackward : public torch::autograd::Node {
  SampleCall call;
  bool regenerate = false;  // from the seed; else from eps (given, or kept by the forward)
  SavedVariable logvar, noise;

  std::string name() const override { return "ReparameterizeBackward"; }

  void release_variables() override {
    logvar.reset_data();
    noise.reset_data();
  }

  variable_list apply(variable_list&& grad_outputs) override {
    refuse_double_backward();
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing here is differentiated again
    variable_list grads(3);
    const Tensor& grad_z = grad_outputs[0];
    if (!grad_z.defined()) return grads;
    const Tensor logvar_t = logvar.unpack(), noise_t = noise.unpack();
    std::tie(grads[0], grads[1]) =
        regenerate
            ? op_handles::reparameterize_philox_backward().call(grad_z, logvar_t, noise_t,
                                                                call.logsigma)
            : op_handles::reparameterize_backward().call(grad_z, logvar_t, noise_t, call.logsigma);
    if (!call.philox && should_compute_output(2)) {  // eps requires grad: dz/deps = std
      grads[2] = grad_z.mul((call.logsigma ? logvar_t : logvar_t.mul(0.5)).exp());
    }
    return grads;
  }
};

// `noise`: eps, or the seed of in-kernel noise.
Tensor run_sample(const Tensor& mu, const Tensor& logvar, const Tensor& noise,
                  std::optional<int64_t> num_samples, SampleCall call) {
  refuse_functorch();
  const bool differentiable = torch::autograd::compute_requires_grad(mu, logvar, noise);
  // In-kernel noise kept for a backward that can follow, else regenerated there.
  const bool keep_noise = call.philox && differentiable && keeps_noise(mu);
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
  if (!differentiable) return z;
  auto node = c10::make_intrusive<SampleBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(mu, logvar, noise));
  node->call = call;
  node->regenerate = call.philox && !keep_noise;
  node->logvar = SavedVariable(logvar, /*is_output=*/false);
  node->noise = SavedVariable(kept_noise, /*is_output=*/false);
  torch::autograd::set_history(z, node);
  return z;
}

Tensor reparameterize_autograd(const Tensor& mu, const Tensor& logvar, const Tensor& eps,
                               bool logsigma) {
  return run_sample(mu, logvar, eps, std::nullopt, SampleCall{false, logsigma});
}

Tensor reparameterize_philox_autograd(const Tensor& mu, const Tensor& logvar, const Tensor& seed,
                                      std::optional<int64_t> num_samples, bool logsigma) {
  return run_sample(mu, logvar, seed, num_samples, SampleCall{true, logsigma});
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
