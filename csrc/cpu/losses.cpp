// CPU kernel of every elementwise loss: the Op that csrc/math/losses.h defines for a
// LossKind, run by the loss loop.
#include "../math/losses.h"
#include "isa_kernels.h"
#include "loss_loop.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

void loss_kernel(c10::ScalarType dtype, const c10::ScalarType* input_dtypes, LossKind kind,
                 double param, LossBuffers& buffers) {
  const bool known = visit_loss(
      kind, param,
      [&](const auto& op) { return run_loss(dtype, input_dtypes, op, buffers), true; }, false);
  TORCH_CHECK(known, "vae_kernels: unknown loss kind ", static_cast<int>(kind));
}

}  // namespace

void add_loss_kernels(KernelTable& table) { table.loss = &loss_kernel; }

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
