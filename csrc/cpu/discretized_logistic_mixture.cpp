// CPU kernel of the discretized logistic mixture NLL (the math:
// csrc/math/discretized_logistic_mixture.h). The SIMD lanes are consecutive pixels of
// one image; a pixel's P parameters are read from params wherever they are (any
// strides, channels_last included) and its gradient is written in the same pass.
//
// Determinism: each image is cut into chunks of kPixelChunk pixels at fixed positions;
// each chunk is summed by one thread in one order and the chunk sums are added in index
// order, so the sums do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../math/discretized_logistic_mixture.h"
#include "isa_kernels.h"
#include "vec_math.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {
namespace {

constexpr int64_t kPixelChunk = 256;  // pixels per partial sum (~P * 40 flops each)

// Where the lanes' pixels lie in an (H, W) plane with strides (stride_h, stride_w).
template <int64_t W>
struct LaneOffsets {
  int64_t offset[W];
  int64_t count;
  bool consecutive;  // offset[j] = offset[0] + j: one vector load

  LaneOffsets(int64_t first_pixel, int64_t count_, int64_t width, int64_t stride_h,
              int64_t stride_w)
      : count(count_) {
    int64_t h = first_pixel / width, w = first_pixel % width;
    for (int64_t j = 0; j < W; ++j) {
      offset[j] = j < count ? h * stride_h + w * stride_w : 0;
      if (++w == width) w = 0, ++h;
    }
    consecutive = true;
    for (int64_t j = 1; j < count; ++j) consecutive = consecutive && offset[j] == offset[0] + j;
  }

  template <typename T>
  at::vec::Vectorized<acc_type_t<T>> load(const T* plane) const {
    if (consecutive) return load_vec(plane + offset[0], count);
    T gathered[W] = {};
    for (int64_t j = 0; j < count; ++j) gathered[j] = plane[offset[j]];
    return load_vec(gathered, count);
  }
};

// The channels of x at the lanes' pixels, read in x's own dtype.
template <typename Vec, int64_t W>
void load_x(const MixtureBuffers& buffers, c10::ScalarType x_dtype, int64_t b,
            const LaneOffsets<W>& lanes, int channels, Vec* x) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "mixture_x", [&] {
    using acc_t = typename Vec::value_type;
    const auto* base = static_cast<const scalar_t*>(buffers.x) + b * buffers.x_strides[0];
    for (int c = 0; c < channels; ++c) {
      const scalar_t* plane = base + c * buffers.x_strides[1];
      acc_t values[W] = {};
      for (int64_t j = 0; j < lanes.count; ++j) values[j] = static_cast<acc_t>(plane[lanes.offset[j]]);
      x[c] = Vec::loadu(values);
    }
  });
}

// The first pass's per-component values and the gradient, for the current lanes.
template <typename Vec>
struct ScratchGrads {
  Vec* slots;
  void store(int p, const Vec& v) { slots[p] = v; }
  Vec load(int p) const { return slots[p]; }
};

template <typename scalar_t, bool kWithGrad>
double mixture_chunk(const MixtureBuffers& buffers, c10::ScalarType x_dtype, int64_t b,
                     int64_t begin, int64_t end, std::vector<AccVec<scalar_t>>& scratch,
                     bool* x_out_of_range) {
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  using grad_t = local_grad_t<scalar_t>;
  constexpr int64_t W = kVecWidth<scalar_t>;
  const MixtureLayout& layout = buffers.layout;
  const int P = layout.num_params();
  const int64_t pixels = buffers.height * buffers.width;
  const auto* params = static_cast<const scalar_t*>(buffers.params) + b * buffers.params_strides[0];
  auto* pixel_nll = static_cast<acc_t*>(buffers.pixel_nll);
  auto* grads = static_cast<grad_t*>(buffers.grads);
  const Vec grad_scale(static_cast<acc_t>(buffers.grad_scale));
  ScratchGrads<Vec> scratch_grads{scratch.data()};

  Vec sum(acc_t(0));
  Vec outside(acc_t(0));
  for (int64_t i = begin; i < end; i += W) {
    const int64_t count = std::min(W, end - i);
    const LaneOffsets<W> param_lanes(i, count, buffers.width, buffers.params_strides[2],
                                     buffers.params_strides[3]);
    const LaneOffsets<W> x_lanes(i, count, buffers.width, buffers.x_strides[2],
                                 buffers.x_strides[3]);
    Vec x[3];
    load_x(buffers, x_dtype, b, x_lanes, layout.channels, x);
    for (int c = 0; c < layout.channels; ++c) {
      outside = outside | (x[c] < Vec(acc_t(-1))) | (x[c] > Vec(acc_t(1)));
    }
    const auto read_param = [&](int p) {
      return param_lanes.load(params + p * buffers.params_strides[1]);
    };
    Vec nll = mixture_pixel_nll<kWithGrad>(layout, buffers.bins, read_param, x, scratch_grads,
                                           grad_scale);
    if (count < W) nll = Vec::set(Vec(acc_t(0)), nll, count);  // padding lanes add nothing
    sum = sum + nll;
    if (pixel_nll) store_vec(pixel_nll + b * pixels + i, nll, count);
    if constexpr (kWithGrad) {
      grad_t* out = grads + b * P * pixels + i;
      for (int p = 0; p < P; ++p) store_vec(out + p * pixels, scratch[p], count);
    }
  }

  alignas(64) acc_t lanes[W];
  outside.store(lanes);  // a set lane is all ones (a NaN), an unset one +0.0
  *x_out_of_range = std::any_of(lanes, lanes + W, [](acc_t v) { return v != acc_t(0); });
  sum.store(lanes);
  double total = 0;
  for (int64_t j = 0; j < W; ++j) total += static_cast<double>(lanes[j]);
  return total;
}

template <typename scalar_t>
void mixture_typed(c10::ScalarType x_dtype, const MixtureBuffers& buffers) {
  const int64_t pixels = buffers.height * buffers.width;
  const int64_t chunks_per_image = std::max<int64_t>(1, (pixels + kPixelChunk - 1) / kPixelChunk);
  const int64_t tasks = buffers.batch * chunks_per_image;
  std::vector<double> partial(tasks, 0.0);
  std::atomic<bool> outside{false};
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    std::vector<AccVec<scalar_t>> scratch(buffers.layout.num_params());
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / chunks_per_image;
      const int64_t begin = (task % chunks_per_image) * kPixelChunk;
      const int64_t end = std::min(begin + kPixelChunk, pixels);
      bool chunk_outside = false;
      partial[task] = buffers.grads
          ? mixture_chunk<scalar_t, true>(buffers, x_dtype, b, begin, end, scratch, &chunk_outside)
          : mixture_chunk<scalar_t, false>(buffers, x_dtype, b, begin, end, scratch, &chunk_outside);
      if (chunk_outside) outside.store(true, std::memory_order_relaxed);
    }
  });
  for (int64_t b = 0; b < buffers.batch; ++b) {
    double image_sum = 0;
    for (int64_t c = 0; c < chunks_per_image; ++c) image_sum += partial[b * chunks_per_image + c];
    if (buffers.sums) buffers.sums[b] = image_sum;
  }
  if (outside.load() && buffers.x_out_of_range) *buffers.x_out_of_range = 1;
}

void discretized_logistic_mixture_kernel(c10::ScalarType params_dtype, c10::ScalarType x_dtype,
                                         const MixtureBuffers& buffers) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params_dtype, "vae_kernels_mixture",
                                  [&] { mixture_typed<scalar_t>(x_dtype, buffers); });
}

}  // namespace

void add_mixture_kernels(KernelTable& table) {
  table.discretized_logistic_mixture = &discretized_logistic_mixture_kernel;
}

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
