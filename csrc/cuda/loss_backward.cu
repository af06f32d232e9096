// The backward pass shared by every loss op on CUDA: the forward already wrote the
// local gradient d loss_i / d input_i / divisor, so backward is local gradient *
// upstream gradient, in one pass (in place when out == local_grad).
// Arithmetic in the order of csrc/cpu/loss_backward.cpp, so both backends round alike.
// The result has the upstream gradient's type T; float16's local gradients are float32.
#include "common.cuh"

namespace vae_kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kLossChunk;  // elements per block

// `local_grad` and `out` may alias (in place): no __restrict__ on them.
template <typename T>
struct BackwardArgs {
  const local_grad_t<T>* local_grad;
  const T* grad_output;
  T* out;
  int64_t stride_elem;  // 1 (per element) or 0 (per row / one value)
  int64_t stride_row;
  int64_t row_len;
  int64_t chunks_per_row;
};

// Block b handles chunk (b % chunks_per_row) of row (b / chunks_per_row).
template <typename T, bool kVectorized>
__global__ void __launch_bounds__(kThreads) loss_backward_kernel(BackwardArgs<T> a) {
  using A = acc_t<T>;
  const int64_t block = blockIdx.x;
  const int64_t row = block / a.chunks_per_row;
  const int64_t row_start = row * a.row_len;
  const int64_t begin = row_start + (block % a.chunks_per_row) * kChunk;
  const int64_t end = min(begin + kChunk, row_start + a.row_len);
  // This row's upstream values: element j of the row reads upstream[j * stride_elem].
  const T* upstream = a.grad_output + row * a.stride_row;
  const bool per_element = a.stride_elem != 0;
  const A row_upstream = per_element ? A(0) : to_acc(*upstream);  // one value for the row
  const int64_t stride = blockDim.x;

  int64_t scalar_begin = begin;
  if constexpr (kVectorized) {
    constexpr int P = kPackSize<T>;
    const int64_t packed_end = begin + (end - begin) / P * P;
    for (int64_t i = begin + threadIdx.x * P; i < packed_end; i += stride * P) {
      local_grad_t<T> local[P];
      load_values(a.local_grad + i, local);
      Pack<T> up;
      if (per_element) up = load_pack(upstream + (i - row_start));
      Pack<T> result;
      for (int j = 0; j < P; ++j) {
        const A g = per_element ? to_acc(up.v[j]) : row_upstream;
        result.v[j] = from_acc<T>(to_acc(local[j]) * g);
      }
      store_pack(a.out + i, result);
    }
    scalar_begin = packed_end;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += stride) {
    const A g = per_element ? to_acc(upstream[(i - row_start) * a.stride_elem]) : row_upstream;
    a.out[i] = from_acc<T>(to_acc(a.local_grad[i]) * g);
  }
}

template <typename T>
cudaError_t run_loss_backward(const local_grad_t<T>* local_grad, const T* grad_output,
                              int64_t stride_elem, int64_t stride_row, T* out, int64_t rows,
                              int64_t row_len, cudaStream_t stream) {
  if (rows <= 0 || row_len <= 0) return cudaSuccess;
  const int64_t chunks_per_row = loss_chunks_per_row(row_len);
  const int64_t blocks = rows * chunks_per_row;
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const BackwardArgs<T> args{local_grad, grad_output, out,           stride_elem,
                             stride_row, row_len,     chunks_per_row};
  constexpr int P = kPackSize<T>;
  // Packed loads need every block's first element (and its upstream) 16-byte aligned;
  // the packed path reads upstream values contiguously, so only for stride_elem 0 or 1.
  const bool aligned = is_aligned_16(local_grad) && is_aligned_16(out) &&
                       (stride_elem == 0 ||
                        (stride_elem == 1 && is_aligned_16(grad_output) &&
                         (rows == 1 || stride_row % P == 0)));
  const dim3 grid(static_cast<unsigned int>(blocks));
  if (aligned && (rows == 1 || row_len % P == 0)) {
    return launch_kernel(loss_backward_kernel<T, true>, grid, kThreads, stream, args);
  }
  return launch_kernel(loss_backward_kernel<T, false>, grid, kThreads, stream, args);
}

}  // namespace

cudaError_t launch_loss_backward(DType dtype, const void* local_grad, const void* grad_output,
                                 int64_t grad_output_stride_elem, int64_t grad_output_stride_row,
                                 void* out, int64_t rows, int64_t row_len, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return run_loss_backward<T>(static_cast<const local_grad_t<T>*>(local_grad),
                                static_cast<const T*>(grad_output), grad_output_stride_elem,
                                grad_output_stride_row, static_cast<T*>(out), rows, row_len,
                                stream);
  });
}

}  // namespace vae_kernels::cuda
