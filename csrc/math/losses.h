// The elementwise losses, each bound once to its inputs for every C++ backend: the CPU
// loss loop (csrc/cpu/loss_loop.h) and the CUDA loss kernel (csrc/cuda/losses.cu) both
// run the Op that visit_loss picks for a LossKind. The formulas are in this folder.
//
// An Op describes one elementwise loss:
//   static constexpr int kInputs;
//   static constexpr bool kReconstruction: a likelihood (input, target[, scale]), which
//     the reconstruction_nll and elbo ops take; else a KL term
//   static constexpr bool unit_interval(int k): whether input k must lie in [0, 1]
//   template <class V> V loss(const V* in) const;
//   template <class V> V loss_and_grad(const V* in, V* grad) const;
// V is a scalar (float, double) or a SIMD vector (csrc/cpu/vec_math.h).
#pragma once

#include <cstdint>

#include "bernoulli_nll.h"
#include "continuous_bernoulli_nll.h"
#include "gaussian_kl.h"
#include "gaussian_nll.h"
#include "laplace_nll.h"

namespace vae_kernels {

// The inputs of each loss, in order (the order of LossBuffers::inputs and ::grads).
// The reconstruction_nll and elbo ops take a kind by this value (vae_kernels/schema.py
// mirrors it); new kinds are appended.
enum class LossKind : int32_t {
  kKLStdNormal = 0,          // mu, logvar
  kKLPrior = 1,              // mu, logvar, prior_mu, prior_logvar
  kBernoulliLogits = 2,      // logits, target
  kBernoulliProbs = 3,       // probabilities, target
  kGaussianFixedVar = 4,     // mean, target (log-variance: the `param` of visit_loss)
  kGaussianLearnedVar = 5,   // mean, target, logvar
  kSquaredError = 6,         // input, target
  kLaplaceFixedScale = 7,    // mean, target (log-scale: the `param` of visit_loss)
  kLaplaceLearnedScale = 8,  // mean, target, logscale
  kContinuousBernoulli = 9,  // logits, target
  kKLStdNormalLogSigma = 10,  // mu, logsigma
  kKLPriorLogSigma = 11,      // mu, logsigma, prior_mu, prior_logsigma
  kNumKinds = 12,
};

struct BernoulliLogitsOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int k) { return k == 1; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return bernoulli_logits_nll(in[0], in[1]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return bernoulli_logits_nll_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct BernoulliProbsOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return true; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return bernoulli_probs_nll(in[0], in[1]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return bernoulli_probs_nll_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct GaussianFixedVarOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  // exp(-logvar / 2) and the constant term, once per call in float64, so no exp runs
  // per element.
  double inv_std;
  double half_log_norm;
  static GaussianFixedVarOp with_logvar(double logvar) {
    return {std::exp(-0.5 * logvar), 0.5 * (logvar + kLog2Pi)};
  }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_nll_fixed_var(in[0], in[1], V(inv_std), V(half_log_norm));
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return gaussian_nll_fixed_var_and_grad(in[0], in[1], V(inv_std), V(half_log_norm), grad[0],
                                           grad[1]);
  }
};

struct GaussianLearnedVarOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 3;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_nll(in[0], in[1], in[2]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return gaussian_nll_and_grad(in[0], in[1], in[2], grad[0], grad[1], grad[2]);
  }
};

struct SquaredErrorOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const { return squared_error(in[0], in[1]); }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return squared_error_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct KLStdNormalOp {
  static constexpr bool kReconstruction = false;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_kl_std_normal(in[0], in[1]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return gaussian_kl_std_normal_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct KLPriorOp {
  static constexpr bool kReconstruction = false;
  static constexpr int kInputs = 4;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_kl(in[0], in[1], in[2], in[3]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return gaussian_kl_and_grad(in[0], in[1], in[2], in[3], grad[0], grad[1], grad[2], grad[3]);
  }
};

struct LaplaceFixedScaleOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  double half_inv_scale;  // exp(-logscale / 2), once per call in float64
  double log_norm;        // logscale + log 2
  static LaplaceFixedScaleOp with_logscale(double logscale) {
    return {std::exp(-0.5 * logscale), logscale + kLog2};
  }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return laplace_nll_fixed_scale(in[0], in[1], V(half_inv_scale), V(log_norm));
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return laplace_nll_fixed_scale_and_grad(in[0], in[1], V(half_inv_scale), V(log_norm),
                                            grad[0], grad[1]);
  }
};

struct LaplaceLearnedScaleOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 3;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return laplace_nll(in[0], in[1], in[2]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return laplace_nll_and_grad(in[0], in[1], in[2], grad[0], grad[1], grad[2]);
  }
};

struct ContinuousBernoulliOp {
  static constexpr bool kReconstruction = true;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int k) { return k == 1; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return continuous_bernoulli_nll(in[0], in[1]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    return continuous_bernoulli_nll_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

// The KL terms with scales given as log sigma (VDVAE's gaussian_analytical_kl): the
// log-variance formulas at lv = 2 s, computed in registers (2 s is exact), and
// d s = 2 d lv.
struct KLStdNormalLogSigmaOp {
  static constexpr bool kReconstruction = false;
  static constexpr int kInputs = 2;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_kl_std_normal(in[0], V(2) * in[1]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    const V kl = gaussian_kl_std_normal_and_grad(in[0], V(2) * in[1], grad[0], grad[1]);
    grad[1] = V(2) * grad[1];
    return kl;
  }
};

struct KLPriorLogSigmaOp {
  static constexpr bool kReconstruction = false;
  static constexpr int kInputs = 4;
  static constexpr VK_HOST_DEVICE bool unit_interval(int) { return false; }
  template <class V> VK_HOST_DEVICE V loss(const V* in) const {
    return gaussian_kl(in[0], V(2) * in[1], in[2], V(2) * in[3]);
  }
  template <class V> VK_HOST_DEVICE V loss_and_grad(const V* in, V* grad) const {
    const V kl = gaussian_kl_and_grad(in[0], V(2) * in[1], in[2], V(2) * in[3], grad[0], grad[1],
                                      grad[2], grad[3]);
    grad[1] = V(2) * grad[1];
    grad[3] = V(2) * grad[3];
    return kl;
  }
};

// Returns f(op) for the Op of `kind` (host code: the kernels receive the op), or
// `unknown` for a value outside LossKind. `param` is a fixed-scale kind's scale (the
// log-variance of kGaussianFixedVar, the log-scale of kLaplaceFixedScale).
template <class R, class F>
R visit_loss(LossKind kind, double param, F&& f, R unknown) {
  switch (kind) {
    case LossKind::kBernoulliLogits: return f(BernoulliLogitsOp{});
    case LossKind::kBernoulliProbs: return f(BernoulliProbsOp{});
    case LossKind::kGaussianFixedVar: return f(GaussianFixedVarOp::with_logvar(param));
    case LossKind::kGaussianLearnedVar: return f(GaussianLearnedVarOp{});
    case LossKind::kSquaredError: return f(SquaredErrorOp{});
    case LossKind::kKLStdNormal: return f(KLStdNormalOp{});
    case LossKind::kKLPrior: return f(KLPriorOp{});
    case LossKind::kLaplaceFixedScale: return f(LaplaceFixedScaleOp::with_logscale(param));
    case LossKind::kLaplaceLearnedScale: return f(LaplaceLearnedScaleOp{});
    case LossKind::kContinuousBernoulli: return f(ContinuousBernoulliOp{});
    case LossKind::kKLStdNormalLogSigma: return f(KLStdNormalLogSigmaOp{});
    case LossKind::kKLPriorLogSigma: return f(KLPriorLogSigmaOp{});
    case LossKind::kNumKinds: break;
  }
  return unknown;
}

// The KL kind for a prior (N(0, I) or given) and a scale parameterization.
inline LossKind kl_kind(bool with_prior, bool logsigma) {
  if (logsigma) return with_prior ? LossKind::kKLPriorLogSigma : LossKind::kKLStdNormalLogSigma;
  return with_prior ? LossKind::kKLPrior : LossKind::kKLStdNormal;
}

// The number of inputs of a reconstruction kind (2, or 3 with a learned scale), or 0
// for any other value.
inline int reconstruction_input_count(int64_t kind) {
  if (kind < 0 || kind >= static_cast<int64_t>(LossKind::kNumKinds)) return 0;
  return visit_loss(
      static_cast<LossKind>(kind), 0.0,
      [](const auto& op) { return op.kReconstruction ? op.kInputs : 0; }, 0);
}

// An elementwise loss over `rows` rows of `row_len` contiguous elements (numel
// rows * row_len), as both backends' kernels take it. Null outputs are not written.
struct LossBuffers {
  static constexpr int kMaxInputs = 4;
  int64_t rows = 0;
  int64_t row_len = 0;
  const void* inputs[kMaxInputs] = {};
  void* elementwise_loss = nullptr;
  // grad_scale * d loss_i / d inputs[k]_i (local gradients): float32 for float16
  // inputs, whose range a local gradient can exceed; else of the inputs' dtype.
  void* grads[kMaxInputs] = {};
  double grad_scale = 1.0;  // 1 / the reduction's divisor
  // The loss summed in a fixed order: on the CPU one sum per row; on CUDA one per block
  // of kLossChunk elements (csrc/cuda/launchers.h), added by a second pass. May be null
  // on CUDA, where no sum is needed.
  double* sums = nullptr;
  // One flag per input, set to 1 when an input the loss requires to lie in [0, 1]
  // (Bernoulli targets and probabilities) has a value outside it (NaN is not flagged).
  // Only ever set: the caller zeroes them. On CUDA they live in device memory.
  int32_t* out_of_unit_interval = nullptr;
};

}  // namespace vae_kernels
