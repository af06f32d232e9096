// Typed handles of the vae_kernels ops (schemas: csrc/schemas.cpp) for C++ that calls
// them through the dispatcher: the autograd (autograd.cpp) and the eager calls from
// Python (python/eager_calls.cpp). Each is looked up once.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

namespace vae_kernels::op_handles {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using TensorPair = std::tuple<Tensor, Tensor>;

#define VK_OP_HANDLE(name, ...)                                                          \
  inline const c10::TypedOperatorHandle<__VA_ARGS__>& name() {                           \
    static const auto handle = c10::Dispatcher::singleton()                              \
                                   .findSchemaOrThrow("vae_kernels::" #name, "")         \
                                   .typed<__VA_ARGS__>();                                \
    return handle;                                                                       \
  }

VK_OP_HANDLE(reparameterize, Tensor(const Tensor&, const Tensor&, const Tensor&, bool))
VK_OP_HANDLE(reparameterize_backward,
             TensorPair(const Tensor&, const Tensor&, const Tensor&, bool))
VK_OP_HANDLE(reparameterize_philox,
             Tensor(const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>, bool))
VK_OP_HANDLE(reparameterize_philox_with_noise,
             TensorPair(const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>,
                        bool))
VK_OP_HANDLE(reparameterize_philox_backward,
             TensorPair(const Tensor&, const Tensor&, const Tensor&, bool))
VK_OP_HANDLE(gaussian_kl,
             std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
                 const Tensor&, const Tensor&, const OptionalTensor&, const OptionalTensor&,
                 int64_t, c10::SymInt, std::array<bool, 4>, bool))
VK_OP_HANDLE(reconstruction_nll,
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                        const OptionalTensor&, double, int64_t,
                                                        int64_t, c10::SymInt,
                                                        std::array<bool, 3>))
VK_OP_HANDLE(elbo,
             std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                 const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, double,
                 int64_t, c10::SymInt, std::array<bool, 4>, bool))
VK_OP_HANDLE(discretized_logistic_mixture_nll,
             TensorPair(const Tensor&, const Tensor&, int64_t, int64_t, c10::SymInt,
                        std::array<bool, 1>))
VK_OP_HANDLE(loss_backward, Tensor(const Tensor&, const Tensor&, int64_t))

#undef VK_OP_HANDLE

}  // namespace vae_kernels::op_handles
