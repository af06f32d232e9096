// This instruction set's kernel table (the file is compiled once per instruction set).
#include "isa_kernels.h"

#define VK_STRINGIFY_(x) #x
#define VK_STRINGIFY(x) VK_STRINGIFY_(x)

namespace vae_kernels::cpu::CPU_CAPABILITY {

const KernelTable& kernel_table() {
  static const KernelTable table = [] {
    KernelTable t{};
    t.name = VK_STRINGIFY(CPU_CAPABILITY);
    add_loss_kernels(t);
    add_sampling_kernels(t);
    add_loss_backward_kernels(t);
    add_mixture_kernels(t);
    return t;
  }();
  return table;
}

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
