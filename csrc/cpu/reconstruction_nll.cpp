// CPU kernels of the reconstruction terms: Bernoulli NLL (logits, probabilities),
// Gaussian NLL (fixed or learned log-variance) and squared error. The formulas are
// in csrc/math/; this file binds them to the loss loop.
#include "../math/bernoulli_nll.h"
#include "../math/gaussian_nll.h"
#include "isa_kernels.h"
#include "loss_loop.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

struct BernoulliLogitsOp {
  static constexpr int kInputs = 2;  // logits, target
  static constexpr std::array<bool, 2> kUnitInterval{false, true};
  template <class V> V loss(const V* in) const { return bernoulli_logits_nll(in[0], in[1]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return bernoulli_logits_nll_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct BernoulliProbsOp {
  static constexpr int kInputs = 2;  // probabilities, target
  static constexpr std::array<bool, 2> kUnitInterval{true, true};
  template <class V> V loss(const V* in) const { return bernoulli_probs_nll(in[0], in[1]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return bernoulli_probs_nll_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct GaussianFixedVarOp {
  static constexpr int kInputs = 2;  // mean, target
  static constexpr std::array<bool, 2> kUnitInterval{false, false};
  double inv_std;  // exp(-logvar / 2)
  double half_log_norm;
  template <class V> V loss(const V* in) const {
    return gaussian_nll_fixed_var(in[0], in[1], V(inv_std), V(half_log_norm));
  }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return gaussian_nll_fixed_var_and_grad(in[0], in[1], V(inv_std), V(half_log_norm), grad[0],
                                           grad[1]);
  }
};

struct GaussianLearnedVarOp {
  static constexpr int kInputs = 3;  // mean, target, logvar
  static constexpr std::array<bool, 3> kUnitInterval{false, false, false};
  template <class V> V loss(const V* in) const { return gaussian_nll(in[0], in[1], in[2]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return gaussian_nll_and_grad(in[0], in[1], in[2], grad[0], grad[1], grad[2]);
  }
};

struct SquaredErrorOp {
  static constexpr int kInputs = 2;  // input, target
  static constexpr std::array<bool, 2> kUnitInterval{false, false};
  template <class V> V loss(const V* in) const { return squared_error(in[0], in[1]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return squared_error_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

void reconstruction_nll(c10::ScalarType dtype, Likelihood likelihood, bool learned_logvar,
                        double logvar_value, LossBuffers& buffers) {
  switch (likelihood) {
    case Likelihood::kBernoulliLogits:
      return run_loss(dtype, BernoulliLogitsOp{}, buffers);
    case Likelihood::kBernoulliProbs:
      return run_loss(dtype, BernoulliProbsOp{}, buffers);
    case Likelihood::kGaussian:
      if (learned_logvar) return run_loss(dtype, GaussianLearnedVarOp{}, buffers);
      return run_loss(dtype,
                      GaussianFixedVarOp{std::exp(-0.5 * logvar_value), 0.5 * (logvar_value + kLog2Pi)},
                      buffers);
    case Likelihood::kSquaredError:
      return run_loss(dtype, SquaredErrorOp{}, buffers);
  }
  TORCH_CHECK(false, "vae_kernels: unknown likelihood ", static_cast<int64_t>(likelihood));
}

}  // namespace

void add_reconstruction_kernels(KernelTable& table) {
  table.reconstruction_nll = &reconstruction_nll;
}

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
