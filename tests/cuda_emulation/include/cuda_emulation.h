// A host emulation of the CUDA programming model, for tests only: with this folder first
// on the include path, `g++ -x c++` compiles the unchanged csrc/cuda/*.cu sources, and
// their kernels run on the CPU (device memory is host memory: kernels take host pointers).
//
// Execution model (tests/cuda_emulation/runtime.cpp):
// - Every thread of a block is its own host thread (a persistent pool, thread i being
//   linear thread index i of every block), so the threads of a block really run
//   concurrently, and a missing __syncthreads or a data race shows up as a wrong result.
// - __syncthreads (and _or/_and/_count) is a real barrier over the block's threads;
//   warp shuffles and votes publish each lane's value in a per-warp slot and wait at a
//   barrier over the warp's lanes. A barrier some thread never reaches (a divergent
//   __syncthreads) aborts with a message after CUDA_EMULATION_TIMEOUT seconds (60);
//   threads meeting at different kinds of barrier (__syncthreads vs the end of the
//   block, i.e. some threads returned early) abort at once.
// - The blocks of a grid run one after another, so `__shared__` is plain `static`
//   storage shared by every block (it is not reset between blocks: stale values from
//   the previous block, not zeros, are what a read-before-write sees).
// - A launch returns when its grid has finished (launches are synchronous; streams are
//   ignored). One grid runs at a time.
// - CUDA_EMULATION_JITTER=1 makes threads yield or sleep at random before barriers and
//   runs blocks in reverse order, to shake out order dependences.
// Not emulated: dynamic shared memory (extern __shared__), atomics, shuffles or votes
// over a subset of a warp's lanes (the mask must name exactly the warp's lanes),
// cooperative groups, memory other than host memory, __CUDA_ARCH__-specific code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time (see above)

// ---------------------------------------------------------------- types
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
struct cudaLaunchAttribute;
struct cudaLaunchConfig_t {  // the fields of the CUDA runtime's, in its order
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};

// ---------------------------------------------------------------- built-in variables
// Set per host thread by the runtime before it runs a block.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------- the runtime
namespace cuda_emulation {

// Prints "cuda-emulation error: <message>" with the calling thread's block and thread, aborts.
[[noreturn]] void fail(const char* format, ...) __attribute__((format(printf, 1, 2)));
// A barrier over the block's threads; returns how many passed a nonzero `vote`.
int sync_block(int vote);
// Publishes this lane's `bits`, waits for every lane of the warp (`mask` must name
// exactly the warp's lanes) and returns lane `src`'s bits, or this lane's for src < 0.
uint64_t warp_exchange(unsigned int mask, uint64_t bits, int src);
// The same, returning the bit mask of lanes that published a nonzero `vote`.
unsigned int warp_ballot(unsigned int mask, int vote);
int lane_id();

using Body = void (*)(const void* context);
// Runs body(context) in every thread of every block of the configured grid; returns
// when the grid has finished.
cudaError_t launch(const cudaLaunchConfig_t& config, Body body, const void* context);

template <typename T>
T shuffle(unsigned int mask, T value, int src) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline int check_width(int width) {
  if (width < 1 || width > warpSize || (width & (width - 1)) != 0) {
    fail("shuffle width %d is not a power of 2 in [1, 32]", width);
  }
  return width;
}

}  // namespace cuda_emulation

// ---------------------------------------------------------------- intrinsics
inline void __syncthreads() { cuda_emulation::sync_block(0); }
inline int __syncthreads_count(int predicate) { return cuda_emulation::sync_block(predicate); }
inline int __syncthreads_or(int predicate) { return cuda_emulation::sync_block(predicate) != 0; }
inline int __syncthreads_and(int predicate) { return cuda_emulation::sync_block(!predicate) == 0; }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { cuda_emulation::warp_ballot(mask, 0); }

// Lane l of a `width`-lane segment reads: __shfl_sync lane srcLane of its segment;
// _up lane l - delta, _down lane l + delta (its own value where that leaves the segment);
// _xor lane l ^ laneMask (its own value where that lies in a later segment).
template <typename T>
T __shfl_sync(unsigned int mask, T var, int srcLane, int width = warpSize) {
  const int lane = cuda_emulation::lane_id(), w = cuda_emulation::check_width(width);
  return cuda_emulation::shuffle(mask, var, lane / w * w + (srcLane & (w - 1)));
}
template <typename T>
T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  const int lane = cuda_emulation::lane_id(), w = cuda_emulation::check_width(width);
  const bool inside = static_cast<unsigned int>(lane % w) >= delta;
  return cuda_emulation::shuffle(mask, var, inside ? lane - static_cast<int>(delta) : -1);
}
template <typename T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  const int lane = cuda_emulation::lane_id(), w = cuda_emulation::check_width(width);
  const bool inside = lane % w + delta < static_cast<unsigned int>(w);
  return cuda_emulation::shuffle(mask, var, inside ? lane + static_cast<int>(delta) : -1);
}
template <typename T>
T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize) {
  const int lane = cuda_emulation::lane_id(), w = cuda_emulation::check_width(width);
  const int src = (lane ^ laneMask) & (warpSize - 1);
  return cuda_emulation::shuffle(mask, var, src < (lane / w + 1) * w ? src : -1);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  return cuda_emulation::warp_ballot(mask, predicate);
}
inline int __any_sync(unsigned int mask, int predicate) {
  return cuda_emulation::warp_ballot(mask, predicate) != 0;
}
inline int __all_sync(unsigned int mask, int predicate) {
  return cuda_emulation::warp_ballot(mask, !predicate) == 0;
}

// Device min/max of the integer and floating types (CUDA's overloads).
#define CUDA_EMULATION_MIN_MAX(T)                    \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
CUDA_EMULATION_MIN_MAX(int)
CUDA_EMULATION_MIN_MAX(unsigned int)
CUDA_EMULATION_MIN_MAX(long)
CUDA_EMULATION_MIN_MAX(unsigned long)
CUDA_EMULATION_MIN_MAX(long long)
CUDA_EMULATION_MIN_MAX(unsigned long long)
#undef CUDA_EMULATION_MIN_MAX
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline double min(double a, double b) { return __builtin_fmin(a, b); }
inline double max(double a, double b) { return __builtin_fmax(a, b); }

// ---------------------------------------------------------------- runtime API
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

// The CUDA runtime's C++ launch call: the arguments are converted to the kernel's
// parameter types and copied once (the kernel's parameter space), then every thread
// of the grid calls the kernel with them.
template <typename... ExpTypes, typename... ActTypes>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(ExpTypes...),
                               ActTypes&&... args) {
  static_assert(sizeof...(ExpTypes) == sizeof...(ActTypes), "wrong number of kernel arguments");
  struct Launch {
    void (*kernel)(ExpTypes...);
    std::tuple<std::decay_t<ExpTypes>...> params;
  };
  using Params = std::tuple<std::decay_t<ExpTypes>...>;
  const Launch launch{kernel, Params(std::forward<ActTypes>(args)...)};
  return cuda_emulation::launch(
      *config,
      [](const void* context) {
        const Launch& l = *static_cast<const Launch*>(context);
        std::apply(l.kernel, l.params);
      },
      &launch);
}
