// Kernels that exercise the emulated CUDA primitives themselves (tests/cuda_emulation,
// checked in check_kernels.py): built-in indices, __shared__ with __syncthreads, the
// shuffles at every width, votes, and launch-configuration errors.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

__device__ int linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ int threads_per_block() { return blockDim.x * blockDim.y * blockDim.z; }
__device__ int linear_block() {
  return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

// 12 int32 per thread: threadIdx, blockIdx, blockDim, gridDim.
__global__ void indices_kernel(int32_t* out) {
  int32_t* o = out + 12 * (linear_block() * threads_per_block() + linear_thread());
  const unsigned int v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y,
                              blockIdx.z,  blockDim.x,  blockDim.y,  blockDim.z, gridDim.x,
                              gridDim.y,   gridDim.z};
  for (int i = 0; i < 12; ++i) o[i] = static_cast<int32_t>(v[i]);
}

// Each block reverses its slice of `in` through shared memory.
__global__ void reverse_kernel(const int32_t* in, int32_t* out) {
  __shared__ int32_t tile[1024];
  const int t = linear_thread(), n = threads_per_block(), base = linear_block() * n;
  tile[t] = in[base + t];
  __syncthreads();
  out[base + t] = tile[n - 1 - t];
}

// Row k of the block's output holds the k-th probe of every thread (check_kernels.py
// knows them; `rows` is their number).
__global__ void warp_kernel(int32_t* out, int rows) {
  const int t = linear_thread(), n = threads_per_block();
  int32_t* o = out + linear_block() * rows * n + t;
  const int value = 1000 * linear_block() + t;
  const unsigned int all = 0xffffffffu;
  int k = 0;
  for (int width = 1; width <= 32; width *= 2) {
    o[n * k++] = __shfl_sync(all, value, 3, width);
    o[n * k++] = __shfl_up_sync(all, value, 1, width);
    o[n * k++] = __shfl_up_sync(all, value, 5, width);
    o[n * k++] = __shfl_down_sync(all, value, 1, width);
    o[n * k++] = __shfl_down_sync(all, value, 6, width);
    o[n * k++] = __shfl_xor_sync(all, value, 1, width);
    o[n * k++] = __shfl_xor_sync(all, value, 20, width);
  }
  const double d = __shfl_down_sync(all, value + 0.25, 16);  // 8-byte values
  o[n * k++] = static_cast<int>(4 * d);
  const int64_t big = __shfl_xor_sync(all, (int64_t(value) << 33) | 7, 31);
  o[n * k++] = static_cast<int>(big >> 33) + static_cast<int>(big & 0xff);
  o[n * k++] = static_cast<int32_t>(__ballot_sync(all, t % 3 == 0));
  o[n * k++] = __any_sync(all, t == 37);
  o[n * k++] = __all_sync(all, t % 32 != 31);
  o[n * k++] = __syncthreads_count(t % 3 == 0);
  o[n * k++] = __syncthreads_or(t == n - 1);
  o[n * k++] = __syncthreads_and(t % 2 == 0);
  o[n * k++] = __syncthreads_and(t < n);
  __syncwarp();
  o[n * k] = k + 1;  // the number of rows written, for the caller to check
}

// Barriers not every thread reaches: the emulation must abort with a message.
__global__ void early_return_kernel(int32_t* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void divergent_shuffle_kernel(int32_t* out) {
  int v = threadIdx.x;
  if (threadIdx.x == 0) v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  cudaLaunchConfig_t config{grid, block, 0, nullptr, nullptr, 0};
  return cudaLaunchKernelEx(&config, kernel, args...);
}

}  // namespace

extern "C" {

int vk_selftest_indices(const unsigned int* grid, const unsigned int* block, int32_t* out) {
  return launch(indices_kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),
                out);
}

int vk_selftest_reverse(int blocks, int threads, const int32_t* in, int32_t* out) {
  return launch(reverse_kernel, blocks, threads, in, out);
}

int vk_selftest_warp(const unsigned int* grid, const unsigned int* block, int32_t* out, int rows) {
  return launch(warp_kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),
                out, rows);
}

// Aborts the process (run it in a throwaway one): 0 a __syncthreads after an early return,
// 1 a shuffle only lane 0 reaches (a deadlock, reported after CUDA_EMULATION_TIMEOUT).
int vk_selftest_divergent(int which) {
  int32_t out[64];
  return launch(which ? divergent_shuffle_kernel : early_return_kernel, 1, 64, out);
}

// The error codes of launches with invalid configurations, each followed by
// cudaGetLastError() twice (the error, then cleared), then a valid launch.
void vk_selftest_launch_errors(int32_t* out) {
  int32_t* dummy = nullptr;
  int k = 0;
  for (const dim3& block : {dim3(1025), dim3(32, 33), dim3(1, 1, 65), dim3(0)}) {
    out[k++] = launch(indices_kernel, 1, block, dummy);
    out[k++] = cudaGetLastError();
    out[k++] = cudaGetLastError();
  }
  out[k++] = launch(indices_kernel, dim3(1, 0), 32, dummy);
  out[k++] = cudaGetLastError();
  int32_t sink[12];
  out[k++] = launch(indices_kernel, 1, 1, sink);
  out[k++] = cudaGetLastError();
}

}  // extern "C"
