// The backward pass shared by every loss op: the forward already wrote the local
// gradient, d loss_i / d input_i / divisor (csrc/math/ holds the formulas), so backward
// is the chain rule, local gradient * upstream gradient, in one pass. The result has the
// upstream gradient's dtype; float16's local gradients are float32.
#include "isa_kernels.h"
#include "loss_loop.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void loss_backward_typed(const local_grad_t<scalar_t>* local_grad, const scalar_t* grad_output,
                         int64_t grad_output_stride_elem, int64_t grad_output_stride_row,
                         scalar_t* out, int64_t rows, int64_t row_len) {
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  constexpr int64_t W = kVecWidth<scalar_t>;
  const int64_t chunks_per_row = std::max<int64_t>(1, (row_len + kChunk - 1) / kChunk);
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, std::min(row_len, kChunk)));
  at::parallel_for(0, rows * chunks_per_row, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks_per_row;
      const int64_t row_start = row * row_len;
      const int64_t begin = row_start + (task % chunks_per_row) * kChunk;
      const int64_t end = std::min(begin + kChunk, row_start + row_len);
      const scalar_t* upstream = grad_output + row * grad_output_stride_row;
      if (grad_output_stride_elem == 0) {  // one upstream value for the whole row
        const Vec factor(static_cast<acc_t>(*upstream));
        int64_t i = begin;
        if constexpr (at::vec::is_reduced_floating_point_v<scalar_t>) {
          for (; i + 2 * W <= end; i += 2 * W) {  // vector pairs: see store_pair
            Vec low, high;
            load_pair(local_grad + i, low, high);
            store_pair(out + i, low * factor, high * factor);
          }
        }
        for (; i < end; i += W) {
          const int64_t count = std::min(W, end - i);
          store_vec(out + i, load_vec(local_grad + i, count) * factor, count);
        }
      } else {
        for (int64_t i = begin; i < end; i += W) {
          const int64_t count = std::min(W, end - i);
          const auto g = load_vec(upstream + (i - row_start), count);
          store_vec(out + i, load_vec(local_grad + i, count) * g, count);
        }
      }
    }
  });
}

void loss_backward(c10::ScalarType dtype, const void* local_grad, const void* grad_output,
                   int64_t grad_output_stride_elem, int64_t grad_output_stride_row, void* out,
                   int64_t rows, int64_t row_len) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "vae_kernels_loss_backward", [&] {
    loss_backward_typed<scalar_t>(static_cast<const local_grad_t<scalar_t>*>(local_grad),
                                  static_cast<const scalar_t*>(grad_output),
                                  grad_output_stride_elem, grad_output_stride_row,
                                  static_cast<scalar_t*>(out), rows, row_len);
  });
}

}  // namespace

void add_loss_backward_kernels(KernelTable& table) { table.loss_backward = &loss_backward; }

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
