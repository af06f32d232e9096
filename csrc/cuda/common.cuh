// Device helpers shared by the CUDA kernels: element types, float32/float64 compute
// types, 16-byte packed loads and stores, a fixed-order block sum, the dtype switch, and
// the kernel launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "launchers.h"

namespace vae_kernels::cuda {

// float16/bfloat16/float32 compute in float32; float64 stays float64 (so gradcheck
// tests the real kernel).
template <typename T> struct AccTypeOf { using type = float; };
template <> struct AccTypeOf<double> { using type = double; };
template <typename T> using acc_t = typename AccTypeOf<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> to_acc(T x) { return x; }
template <> __device__ __forceinline__ float to_acc<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// The element type of local gradients: float32 for float16 (see launchers.h).
template <typename T> struct LocalGradOf { using type = T; };
template <> struct LocalGradOf<__half> { using type = float; };
template <typename T> using local_grad_t = typename LocalGradOf<T>::type;

// Round to nearest even, as torch's own conversions do.
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A float64 result (a reduced loss) stored in T as the CPU kernels do: via float32
// for the 16-bit types.
template <typename T> __device__ __forceinline__ T from_double(double x) {
  return from_acc<T>(static_cast<acc_t<T>>(x));
}

// 16 bytes of T: one vectorized load or store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};
template <typename T> constexpr int kPackSize = Pack<T>::kSize;

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& pack) {
  *reinterpret_cast<Pack<T>*>(p) = pack;
}

// P consecutive values of G as whole 16-byte packs (P * sizeof(G) a multiple of 16):
// how a kernel packed by its input type T moves local gradients of another width.
template <typename G, int P> __device__ __forceinline__ void store_values(G* p, const G (&v)[P]) {
  constexpr int Q = kPackSize<G>;
  static_assert(P % Q == 0, "whole packs only");
  for (int q = 0; q < P / Q; ++q) {
    Pack<G> pack;
    for (int j = 0; j < Q; ++j) pack.v[j] = v[q * Q + j];
    store_pack(p + q * Q, pack);
  }
}
template <typename G, int P> __device__ __forceinline__ void load_values(const G* p, G (&v)[P]) {
  constexpr int Q = kPackSize<G>;
  static_assert(P % Q == 0, "whole packs only");
  for (int q = 0; q < P / Q; ++q) {
    const Pack<G> pack = load_pack(p + q * Q);
    for (int j = 0; j < Q; ++j) v[q * Q + j] = pack.v[j];
  }
}

inline bool is_aligned_16(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 256;

// The sum of `v` over the block, valid in thread 0. blockDim.x must be a multiple of 32
// and at most 1024. The order of additions depends only on blockDim.x: a warp
// butterfly, then the warp sums added by warp 0 in the same way. Every thread calls it.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kWarpSize];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  if (warp == 0) {
    v = lane < warps ? warp_sums[lane] : A(0);
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset);
    }
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

// Blocks for a grid-stride loop over n items (the results never depend on it).
inline unsigned int grid_for(int64_t n, int threads) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// Runs `kernel` on `grid` blocks of `block` threads on `stream` and returns the launch's
// error (clearing it, as cudaGetLastError after a launch does). Through cudaLaunchKernelEx,
// the runtime's C++ launch call, not `<<<...>>>`: the same sources then compile with nvcc
// and with plain g++ against the host emulation of the CUDA model in the test suite
// (tests/cuda_emulation), which runs them on the CPU.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();
  return launched != cudaSuccess ? launched : last;
}

// Calls f(T{}) with T the C++ type of `dtype`; an unknown dtype returns
// cudaErrorInvalidValue (the glue only passes the four floating types).
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace vae_kernels::cuda
