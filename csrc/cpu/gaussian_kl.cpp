// CPU kernel of the closed-form Gaussian KL (to N(0, I) or to a diagonal Gaussian
// prior). The formulas and their gradients are in csrc/math/gaussian_kl.h.
#include "../math/gaussian_kl.h"
#include "isa_kernels.h"
#include "loss_loop.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

struct KLStdNormalOp {
  static constexpr int kInputs = 2;  // mu, logvar
  static constexpr std::array<bool, 2> kUnitInterval{false, false};
  template <class V> V loss(const V* in) const { return gaussian_kl_std_normal(in[0], in[1]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return gaussian_kl_std_normal_and_grad(in[0], in[1], grad[0], grad[1]);
  }
};

struct KLPriorOp {
  static constexpr int kInputs = 4;  // mu, logvar, prior_mu, prior_logvar
  static constexpr std::array<bool, 4> kUnitInterval{false, false, false, false};
  template <class V> V loss(const V* in) const { return gaussian_kl(in[0], in[1], in[2], in[3]); }
  template <class V> V loss_and_grad(const V* in, V* grad) const {
    return gaussian_kl_and_grad(in[0], in[1], in[2], in[3], grad[0], grad[1], grad[2], grad[3]);
  }
};

void gaussian_kl_kernel(c10::ScalarType dtype, bool with_prior, LossBuffers& buffers) {
  if (with_prior) {
    run_loss(dtype, KLPriorOp{}, buffers);
  } else {
    run_loss(dtype, KLStdNormalOp{}, buffers);
  }
}

}  // namespace

void add_gaussian_kl_kernels(KernelTable& table) { table.gaussian_kl = &gaussian_kl_kernel; }

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
