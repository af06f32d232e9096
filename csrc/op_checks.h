// Argument checks and shape helpers shared by the torch glue of every C++ backend
// (csrc/cpu/ops_cpu.cpp, csrc/cuda/ops_cuda.cpp). The messages name the op, the
// argument, what was expected and what was given.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <vector>

namespace vae_kernels {

// The `reduction` argument of the loss ops (csrc/schemas.cpp).
enum Reduction : int64_t { kNone = 0, kPerSample = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kSum,
                    "vae_kernels: reduction must be 0 (none), 1 (per_sample) or 2 (sum), got ",
                    reduction);
}

// `t` must be a floating-point tensor on a `device_type` device.
inline void check_floating(const char* op, const char* name, const at::Tensor& t,
                           c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "vae_kernels.", op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().type() == device_type, "vae_kernels.", op, ": ", name,
                    " must be a ", c10::DeviceTypeName(device_type), " tensor, got one on ",
                    t.device());
}

// `t` must be on `ref`'s device with `ref`'s dtype (and shape, if asked).
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref, bool same_shape = true) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "vae_kernels.", op, ": ", name,
                    " must be on the device of ", ref_name, " (", ref.device(), "), got ",
                    t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "vae_kernels.", op, ": ", name,
                   " must have the dtype of ", ref_name, " (", ref.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(!same_shape || t.sizes() == ref.sizes(), "vae_kernels.", op, ": ", name,
                    " must have the shape of ", ref_name, " ", ref.sizes(), ", got ", t.sizes());
}

// Loss ops see a tensor as rows (the batch dimension) of equal length.
inline int64_t batch_rows(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
inline int64_t row_length(const at::Tensor& t) {
  const int64_t rows = batch_rows(t);
  return rows == 0 ? 0 : t.numel() / rows;
}

template <size_t N>
std::vector<bool> mask_vector(const std::array<bool, N>& mask) {
  return std::vector<bool>(mask.begin(), mask.end());
}

}  // namespace vae_kernels
