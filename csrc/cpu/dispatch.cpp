// Picks the kernel table for the running CPU, the way ATen picks its own kernels
// (at::get_cpu_capability honours the ATEN_CPU_CAPABILITY environment variable).
#include <ATen/Version.h>

#include "kernels.h"

namespace vae_kernels::cpu {

const KernelTable& kernels() {
  static const KernelTable& table = []() -> const KernelTable& {
    const std::string capability = at::get_cpu_capability();
#if defined(VK_HAVE_AVX512)
    if (capability == "AVX512") return AVX512::kernel_table();
#endif
#if defined(VK_HAVE_AVX2)
    if (capability == "AVX512" || capability == "AVX2") return AVX2::kernel_table();
#endif
    return DEFAULT::kernel_table();
  }();
  return table;
}

}  // namespace vae_kernels::cpu
