// CUDA kernels of the loss ops: one elementwise pass per loss (every LossKind) that
// writes the elementwise loss and the local gradients it is asked for and sums its
// block's range, and the fixed-order second pass that turns the block sums into per-row
// or total results.
//
// The losses are the Ops of csrc/math/losses.h, shared with the CPU kernels; this file
// runs them in the CUDA loop, as csrc/cpu/loss_loop.h does on the CPU.
#include "../math/losses.h"
#include "common.cuh"

#include <type_traits>

namespace vae_kernels::cuda {
namespace {

// ---------------------------------------------------------------- the loss pass

// The pointers of one loss pass, typed. Passed by value (kernel parameter space).
template <typename T, int N>
struct TypedBuffers {
  const T* in[N];
  DType in_dtype[N];  // read when the inputs' dtypes mix (T is then float)
  local_grad_t<T>* grad[N];
  double grad_scale;
  T* loss;
  double* sums;
  int32_t* out_of_unit_interval;
  int64_t row_len;
  int64_t chunks_per_row;
};

// One element's loss (and local gradients into `grad`), added to `sum`; records which
// [0, 1]-constrained inputs lie outside [0, 1].
template <bool kWithGrad, typename Op, typename A>
__device__ __forceinline__ A loss_element(const Op& op, const A* in, A* grad, A& sum,
                                          bool* outside) {
  A loss;
  if constexpr (kWithGrad) {
    loss = op.loss_and_grad(in, grad);
  } else {
    loss = op.loss(in);
  }
  sum += loss;
  for (int k = 0; k < Op::kInputs; ++k) {
    if (Op::unit_interval(k)) outside[k] = outside[k] || in[k] < A(0) || in[k] > A(1);
  }
  return loss;
}

// Element i of an input of a call whose dtypes mix, as float.
__device__ __forceinline__ float load_as_float(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return to_acc(static_cast<const __half*>(data)[i]);
    case DType::kBFloat16: return to_acc(static_cast<const __nv_bfloat16*>(data)[i]);
    default: return static_cast<const float*>(data)[i];
  }
}

// Block `blockIdx.x` handles chunk (blockIdx.x % chunks_per_row) of row
// (blockIdx.x / chunks_per_row): kLossChunk elements at a fixed position, so its sum
// (slot blockIdx.x) and the order of additions inside it depend only on the shape.
// kMixed: each input in its own dtype (b.in_dtype), through the scalar path.
template <typename T, typename Op, bool kWithGrad, bool kVectorized, bool kMixed = false>
__global__ void __launch_bounds__(kMaxBlockThreads)
    loss_kernel(Op op, TypedBuffers<T, Op::kInputs> b) {
  using A = acc_t<T>;
  using G = local_grad_t<T>;
  constexpr int N = Op::kInputs;
  const int64_t block = blockIdx.x;
  const int64_t row = block / b.chunks_per_row;
  const int64_t row_start = row * b.row_len;
  const int64_t begin = row_start + (block % b.chunks_per_row) * kLossChunk;
  const int64_t end = min(begin + kLossChunk, row_start + b.row_len);
  const int64_t stride = blockDim.x;

  const A grad_scale = static_cast<A>(b.grad_scale);
  A sum(0);
  bool outside[N] = {};
  int64_t scalar_begin = begin;
  if constexpr (kVectorized) {
    // `begin` is 16-byte aligned here (the launcher checks): whole packs, then a tail.
    constexpr int P = kPackSize<T>;
    const int64_t packed_end = begin + (end - begin) / P * P;
    for (int64_t i = begin + threadIdx.x * P; i < packed_end; i += stride * P) {
      Pack<T> in_pack[N];
      for (int k = 0; k < N; ++k) in_pack[k] = load_pack(b.in[k] + i);
      Pack<T> loss_pack;
      G grad_values[N][P];
      for (int j = 0; j < P; ++j) {
        A in[N], grad[N];
        for (int k = 0; k < N; ++k) in[k] = to_acc(in_pack[k].v[j]);
        loss_pack.v[j] = from_acc<T>(loss_element<kWithGrad>(op, in, grad, sum, outside));
        if constexpr (kWithGrad) {
          for (int k = 0; k < N; ++k) grad_values[k][j] = from_acc<G>(grad[k] * grad_scale);
        }
      }
      if (b.loss) store_pack(b.loss + i, loss_pack);
      if constexpr (kWithGrad) {
        for (int k = 0; k < N; ++k) {
          if (b.grad[k]) store_values(b.grad[k] + i, grad_values[k]);
        }
      }
    }
    scalar_begin = packed_end;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += stride) {
    A in[N], grad[N];
    for (int k = 0; k < N; ++k) {
      if constexpr (kMixed) {
        in[k] = load_as_float(b.in[k], b.in_dtype[k], i);
      } else {
        in[k] = to_acc(b.in[k][i]);
      }
    }
    const A loss = loss_element<kWithGrad>(op, in, grad, sum, outside);
    if (b.loss) b.loss[i] = from_acc<T>(loss);
    if constexpr (kWithGrad) {
      for (int k = 0; k < N; ++k) {
        if (b.grad[k]) b.grad[k][i] = from_acc<G>(grad[k] * grad_scale);
      }
    }
  }

  const A block_total = block_sum(sum);
  if (threadIdx.x == 0 && b.sums) b.sums[block] = static_cast<double>(block_total);
  for (int k = 0; k < N; ++k) {
    if (!Op::unit_interval(k)) continue;
    // Every thread reaches this (the condition is uniform); a plain store of 1 by any
    // block is enough, the flag is never cleared here.
    if (__syncthreads_or(outside[k]) && threadIdx.x == 0 && b.out_of_unit_interval) {
      b.out_of_unit_interval[k] = 1;
    }
  }
}

// Threads per block: 256, fewer for short rows (a multiple of 32, so block_sum works).
int loss_block_threads(int64_t row_len, int pack) {
  const int64_t per_block = (row_len < kLossChunk ? row_len : kLossChunk) / pack;
  int threads = kWarpSize;
  while (threads < kMaxBlockThreads && threads < per_block) threads *= 2;
  return threads;
}

template <typename T, typename Op>
cudaError_t run_loss(const Op& op, const LossBuffers& buffers, const DType* input_dtypes,
                     cudaStream_t stream) {
  constexpr int N = Op::kInputs;
  const int64_t chunks_per_row = loss_chunks_per_row(buffers.row_len);
  const int64_t blocks = buffers.rows * chunks_per_row;
  if (buffers.rows <= 0) return cudaSuccess;
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;

  TypedBuffers<T, N> b{};
  bool with_grad = false;
  bool aligned = is_aligned_16(buffers.elementwise_loss);
  for (int k = 0; k < N; ++k) {
    b.in[k] = static_cast<const T*>(buffers.inputs[k]);
    b.grad[k] = static_cast<local_grad_t<T>*>(buffers.grads[k]);
    with_grad = with_grad || b.grad[k] != nullptr;
    aligned = aligned && is_aligned_16(b.in[k]) && is_aligned_16(b.grad[k]);
  }
  b.grad_scale = buffers.grad_scale;
  b.loss = static_cast<T*>(buffers.elementwise_loss);
  b.sums = buffers.sums;
  b.out_of_unit_interval = buffers.out_of_unit_interval;
  b.row_len = buffers.row_len;
  b.chunks_per_row = chunks_per_row;

  // Packed loads need every block to start on a 16-byte boundary.
  constexpr int P = kPackSize<T>;
  const bool vectorized = aligned && (buffers.rows == 1 || buffers.row_len % P == 0);
  const int threads = loss_block_threads(buffers.row_len, vectorized ? P : 1);
  const dim3 grid(static_cast<unsigned int>(blocks));
  if (input_dtypes != nullptr) {
    if constexpr (std::is_same_v<T, float>) {
      for (int k = 0; k < N; ++k) b.in_dtype[k] = input_dtypes[k];
      const int scalar_threads = loss_block_threads(buffers.row_len, 1);
      return with_grad ? launch_kernel(loss_kernel<T, Op, true, false, true>, grid,
                                       scalar_threads, stream, op, b)
                       : launch_kernel(loss_kernel<T, Op, false, false, true>, grid,
                                       scalar_threads, stream, op, b);
    } else {
      return cudaErrorInvalidValue;  // mixed inputs compute in float32
    }
  }
  if (with_grad) {
    return vectorized
               ? launch_kernel(loss_kernel<T, Op, true, true>, grid, threads, stream, op, b)
               : launch_kernel(loss_kernel<T, Op, true, false>, grid, threads, stream, op, b);
  }
  return vectorized
             ? launch_kernel(loss_kernel<T, Op, false, true>, grid, threads, stream, op, b)
             : launch_kernel(loss_kernel<T, Op, false, false>, grid, threads, stream, op, b);
}

template <typename Op>
cudaError_t run_loss(DType dtype, const DType* input_dtypes, const Op& op,
                     const LossBuffers& buffers, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return run_loss<T>(op, buffers, input_dtypes, stream);
  });
}

// ---------------------------------------------------------------- the second pass

// One thread per row: its slots added in index order.
template <typename T>
__global__ void finish_rows_kernel(const double* partials_a, int64_t chunks_a,
                                   const double* partials_b, int64_t chunks_b, double beta,
                                   int64_t rows, double scale, T* out_total, T* out_a, T* out_b) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    double a = 0, b = 0;
    for (int64_t c = 0; c < chunks_a; ++c) a += partials_a[r * chunks_a + c];
    if (partials_b) {
      for (int64_t c = 0; c < chunks_b; ++c) b += partials_b[r * chunks_b + c];
    }
    if (out_a) out_a[r] = from_double<T>(a * scale);
    if (out_b) out_b[r] = from_double<T>(b * scale);
    if (out_total) out_total[r] = from_double<T>((a + beta * b) * scale);
  }
}

constexpr int kFinishThreads = 512;

// One block: thread t adds slots t, t + 512, ... in order, then a fixed-order block sum.
__device__ double sum_slots(const double* slots, int64_t count) {
  double s = 0;
  if (slots) {
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s += slots[i];
  }
  return block_sum(s);
}

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    finish_total_kernel(const double* partials_a, int64_t count_a, const double* partials_b,
                        int64_t count_b, double beta, double scale, T* out_total, T* out_a,
                        T* out_b) {
  const double a = sum_slots(partials_a, count_a);
  const double b = sum_slots(partials_b, count_b);
  if (threadIdx.x == 0) {
    if (out_a) *out_a = from_double<T>(a * scale);
    if (out_b) *out_b = from_double<T>(b * scale);
    if (out_total) *out_total = from_double<T>((a + beta * b) * scale);
  }
}

}  // namespace

cudaError_t launch_loss(DType dtype, const DType* input_dtypes, LossKind kind, double param,
                        const LossBuffers& buffers, cudaStream_t stream) {
  return visit_loss(
      kind, param,
      [&](const auto& op) { return run_loss(dtype, input_dtypes, op, buffers, stream); },
      cudaErrorInvalidValue);
}

cudaError_t launch_finish_rows(DType dtype, const double* partials_a, int64_t chunks_a,
                               const double* partials_b, int64_t chunks_b, double beta,
                               int64_t rows, double scale, void* out_total, void* out_a,
                               void* out_b, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(finish_rows_kernel<T>, grid_for(rows, kThreads), kThreads, stream,
                         partials_a, chunks_a, partials_b, chunks_b, beta, rows, scale,
                         static_cast<T*>(out_total), static_cast<T*>(out_a),
                         static_cast<T*>(out_b));
  });
}

cudaError_t launch_finish_total(DType dtype, const double* partials_a, int64_t count_a,
                                const double* partials_b, int64_t count_b, double beta,
                                double scale, void* out_total, void* out_a, void* out_b,
                                cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(finish_total_kernel<T>, 1, kFinishThreads, stream, partials_a, count_a,
                         partials_b, count_b, beta, scale, static_cast<T*>(out_total),
                         static_cast<T*>(out_a), static_cast<T*>(out_b));
  });
}

}  // namespace vae_kernels::cuda
