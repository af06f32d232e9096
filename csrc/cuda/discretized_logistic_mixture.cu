// CUDA kernel of the discretized logistic mixture NLL (PixelCNN++'s likelihood; the
// per-pixel math: csrc/math/discretized_logistic_mixture.h, shared with the CPU kernel).
//
// One thread per pixel: it reads the pixel's P parameters wherever they lie (any
// strides, channels_last included) and x in x's own dtype, computes in float32 (float64
// for float64 params), and writes its pixel's NLL and gradient. Block c of image b
// covers pixels [c * kMixturePixelsPerBlock, ...) of that image and writes their sum to
// slot b * blocks_per_image + c; the fixed-order finishing passes of losses.cu add the
// slots, so results are bitwise equal from run to run.
#include <type_traits>

#include "../math/discretized_logistic_mixture.h"
#include "common.cuh"

namespace vae_kernels::cuda {
namespace {

// A pixel's parameter p: params[b, p, h, w], read through params' strides.
template <typename T, typename V>
struct StridedParams {
  const T* pixel;          // params[b, 0, h, w]
  int64_t channel_stride;  // params.stride(1)

  __device__ V operator()(int p) const { return static_cast<V>(to_acc(pixel[p * channel_stride])); }
};

// The pixel's P gradient slots in a contiguous (B, P, H, W) buffer of V: slot p at
// first[p * pixels]. Consecutive threads hold consecutive pixels, so every store and
// load of the two passes is coalesced. Each thread touches only its own pixel's slots.
template <typename V>
struct PixelSlots {
  V* first;        // slot 0 of the pixel
  int64_t pixels;  // H * W: the distance between slots

  __device__ void store(int p, V v) const { first[p * pixels] = v; }
  __device__ V load(int p) const { return first[p * pixels]; }
};

// The pointers and sizes of one launch, typed. Passed by value (kernel parameter space).
template <typename T, typename X, typename G>
struct MixtureArgs {
  MixtureLayout layout;
  MixtureBins bins;
  int64_t height, width, blocks_per_image;
  const T* params;
  int64_t params_strides[4];
  const X* x;
  int64_t x_strides[4];
  acc_t<T>* pixel_nll;  // (B, H, W), or null
  G* grads;             // (B, P, H, W), or null
  // The first pass's per-component values, (B, P, H, W) in the compute type: `grads`
  // itself where G is the compute type, else (bfloat16) a float32 workspace, so no
  // intermediate value is rounded to bfloat16.
  acc_t<T>* scratch;
  double grad_scale;
  double* sums;  // one slot per block, or null
  int32_t* x_out_of_range;
};

template <typename T, typename X, typename G, bool kWithGrad>
__global__ void __launch_bounds__(kMixturePixelsPerBlock)
    mixture_kernel(MixtureArgs<T, X, G> a) {
  using V = acc_t<T>;
  const int64_t pixels = a.height * a.width;
  const int64_t b = blockIdx.x / a.blocks_per_image;
  const int64_t pixel = (blockIdx.x % a.blocks_per_image) * kMixturePixelsPerBlock + threadIdx.x;
  const int P = a.layout.num_params();

  V nll(0);
  bool outside = false;
  if (pixel < pixels) {
    const int64_t h = pixel / a.width, w = pixel % a.width;
    const StridedParams<T, V> params{
        a.params + b * a.params_strides[0] + h * a.params_strides[2] + w * a.params_strides[3],
        a.params_strides[1]};
    const X* x_pixel = a.x + b * a.x_strides[0] + h * a.x_strides[2] + w * a.x_strides[3];
    V x[3] = {};
    for (int c = 0; c < a.layout.channels; ++c) {
      x[c] = static_cast<V>(to_acc(x_pixel[c * a.x_strides[1]]));
      outside = outside || x[c] < V(-1) || x[c] > V(1);  // NaN passes
    }
    const int64_t first_slot = b * P * pixels + pixel;
    PixelSlots<V> slots{kWithGrad ? a.scratch + first_slot : nullptr, pixels};
    nll = mixture_pixel_nll<kWithGrad>(a.layout, a.bins, params, x, slots,
                                       static_cast<V>(a.grad_scale));
    if (a.pixel_nll) a.pixel_nll[b * pixels + pixel] = nll;
    if constexpr (kWithGrad && !std::is_same_v<G, V>) {
      // bfloat16: the finished gradient, rounded once.
      for (int p = 0; p < P; ++p) a.grads[first_slot + p * pixels] = from_acc<G>(slots.load(p));
    }
  }

  // Every thread reaches these (pixels past the image add 0).
  const V block_total = block_sum(nll);
  if (threadIdx.x == 0 && a.sums) a.sums[blockIdx.x] = static_cast<double>(block_total);
  if (__syncthreads_or(outside) && threadIdx.x == 0 && a.x_out_of_range) *a.x_out_of_range = 1;
}

// Threads per block: kMixturePixelsPerBlock, fewer for small images (a multiple of 32,
// so block_sum works). Depends on the shape only, as the order of the sums does.
int mixture_block_threads(int64_t pixels) {
  int threads = kWarpSize;
  while (threads < kMixturePixelsPerBlock && threads < pixels) threads *= 2;
  return threads;
}

template <typename T, typename X>
cudaError_t run_mixture(const MixtureBuffers& buffers, float* grad_workspace,
                        cudaStream_t stream) {
  using V = acc_t<T>;
  using G = local_grad_t<T>;
  if (buffers.batch <= 0) return cudaSuccess;
  const int64_t pixels = buffers.height * buffers.width;
  const int64_t blocks_per_image = mixture_blocks_per_image(pixels);
  const int64_t blocks = buffers.batch * blocks_per_image;
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;

  MixtureArgs<T, X, G> a{};
  a.layout = buffers.layout;
  a.bins = buffers.bins;
  a.height = buffers.height;
  a.width = buffers.width;
  a.blocks_per_image = blocks_per_image;
  a.params = static_cast<const T*>(buffers.params);
  a.x = static_cast<const X*>(buffers.x);
  for (int d = 0; d < 4; ++d) {
    a.params_strides[d] = buffers.params_strides[d];
    a.x_strides[d] = buffers.x_strides[d];
  }
  a.pixel_nll = static_cast<V*>(buffers.pixel_nll);
  a.grads = static_cast<G*>(buffers.grads);
  if constexpr (std::is_same_v<G, V>) {
    a.scratch = a.grads;
  } else {
    static_assert(std::is_same_v<V, float>, "only bfloat16 needs a workspace");
    if (a.grads && !grad_workspace) return cudaErrorInvalidValue;
    a.scratch = grad_workspace;
  }
  a.grad_scale = buffers.grad_scale;
  a.sums = buffers.sums;
  a.x_out_of_range = buffers.x_out_of_range;

  const dim3 grid(static_cast<unsigned int>(blocks));
  const int threads = mixture_block_threads(pixels);
  return a.grads ? launch_kernel(mixture_kernel<T, X, G, true>, grid, threads, stream, a)
                 : launch_kernel(mixture_kernel<T, X, G, false>, grid, threads, stream, a);
}

}  // namespace

cudaError_t launch_discretized_logistic_mixture(DType params_dtype, DType x_dtype,
                                                const MixtureBuffers& buffers,
                                                float* grad_workspace, cudaStream_t stream) {
  return dispatch_dtype(params_dtype, [&](auto params_tag) {
    return dispatch_dtype(x_dtype, [&](auto x_tag) {
      return run_mixture<decltype(params_tag), decltype(x_tag)>(buffers, grad_workspace, stream);
    });
  });
}

}  // namespace vae_kernels::cuda
