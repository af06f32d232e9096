// Each kernel source of this folder adds its entries to its instruction set's table.
#pragma once

#include "kernels.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {

void add_loss_kernels(KernelTable& table);
void add_sampling_kernels(KernelTable& table);
void add_loss_backward_kernels(KernelTable& table);
void add_mixture_kernels(KernelTable& table);

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
