// The one loop every CPU loss kernel runs: a vectorized elementwise pass that writes
// the elementwise loss and local gradients it is asked for and sums the loss per row
// in a fixed order.
//
// Determinism: each row is cut into chunks of kChunk elements at fixed positions;
// each chunk is summed by one thread in one order, and the chunk sums are added in
// index order afterwards. Nothing depends on the thread count or on scheduling, so
// results are bitwise equal across runs and torch.set_num_threads settings.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <vector>

#include "kernels.h"
#include "vec_math.h"

namespace vae_kernels::cpu::CPU_CAPABILITY {

constexpr int64_t kChunk = 4096;           // elements per partial sum
constexpr int64_t kGrainElements = 32768;  // least work worth a thread

// `count` elements of a float32, bfloat16 or float16 buffer from element i, as float32:
// the inputs of a call that mixes dtypes, each read in its own.
inline at::vec::Vectorized<float> load_as_float(const void* data, c10::ScalarType dtype,
                                                int64_t i, int64_t count) {
  switch (dtype) {
    case at::kBFloat16: return load_vec(static_cast<const c10::BFloat16*>(data) + i, count);
    case at::kHalf: return load_vec(static_cast<const c10::Half*>(data) + i, count);
    default: return load_vec(static_cast<const float*>(data) + i, count);
  }
}

// Op: one elementwise loss of csrc/math/losses.h. kMixed: the inputs have their own
// dtypes (`input_dtypes`), read as float32; scalar_t (the outputs') is float.

template <typename scalar_t, bool kWithGrad, bool kMixed, typename Op>
double loss_chunk(const Op& op, const LossBuffers& buffers, const c10::ScalarType* input_dtypes,
                  int64_t begin, int64_t end, bool* out_of_unit_interval) {
  static_assert(!kMixed || std::is_same_v<scalar_t, float>, "mixed inputs compute in float32");
  using Vec = AccVec<scalar_t>;
  using acc_t = acc_type_t<scalar_t>;
  constexpr int64_t W = kVecWidth<scalar_t>;
  constexpr int N = Op::kInputs;
  const scalar_t* in_ptr[N];
  local_grad_t<scalar_t>* grad_ptr[N];
  for (int k = 0; k < N; ++k) {
    in_ptr[k] = static_cast<const scalar_t*>(buffers.inputs[k]);
    grad_ptr[k] = static_cast<local_grad_t<scalar_t>*>(buffers.grads[k]);
  }
  const auto load_input = [&](int k, int64_t i, int64_t count) {
    if constexpr (kMixed) {
      return load_as_float(buffers.inputs[k], input_dtypes[k], i, count);
    } else {
      return load_vec(in_ptr[k] + i, count);
    }
  };
  auto* loss_ptr = static_cast<scalar_t*>(buffers.elementwise_loss);

  const Vec grad_scale(static_cast<acc_t>(buffers.grad_scale));
  Vec sum(acc_t(0));
  // The least and greatest value of each [0, 1] input. clamp_max(low, x) keeps `low` where
  // x is NaN (the NaN passes through the check) on every instruction set.
  Vec low[N], high[N];
  for (int k = 0; k < N; ++k) low[k] = high[k] = Vec(acc_t(0));
  // One vector (`count` valid lanes): the loss, added to `sum`, the local gradients
  // into `grad` (scaled) and the [0, 1] checks.
  auto compute = [&](const Vec* in, Vec* grad, int64_t count) {
    Vec loss;
    if constexpr (kWithGrad) {
      loss = op.loss_and_grad(in, grad);
      for (int k = 0; k < N; ++k) grad[k] = grad[k] * grad_scale;
    } else {
      loss = op.loss(in);
    }
    if (count < W) loss = Vec::set(Vec(acc_t(0)), loss, count);  // padding lanes add nothing
    sum = sum + loss;
    for (int k = 0; k < N; ++k) {
      if (Op::unit_interval(k)) {  // zero padding lies inside [0, 1]
        low[k] = at::vec::clamp_max(low[k], in[k]);
        high[k] = at::vec::clamp_min(high[k], in[k]);
      }
    }
    return loss;
  };

  // Two vectors per step: two independent chains of dependent FMAs (each formula is one
  // long chain) for the out-of-order core to overlap, and for bfloat16/half each
  // float -> 16-bit store converts a pair (the costly step). The sum sees the same
  // vectors in the same order as one vector per step would.
  const auto load_input_pair = [&](int k, int64_t i, Vec& lo, Vec& hi) {
    if constexpr (kMixed) {
      lo = load_input(k, i, W);
      hi = load_input(k, i + W, W);
    } else {
      load_pair(in_ptr[k] + i, lo, hi);
    }
  };
  int64_t i = begin;
  for (; i + 2 * W <= end; i += 2 * W) {
    Vec in_lo[N], in_hi[N], grad_lo[N], grad_hi[N];
    for (int k = 0; k < N; ++k) load_input_pair(k, i, in_lo[k], in_hi[k]);
    const Vec loss_lo = compute(in_lo, grad_lo, W);
    const Vec loss_hi = compute(in_hi, grad_hi, W);
    if (loss_ptr) store_pair(loss_ptr + i, loss_lo, loss_hi);
    if constexpr (kWithGrad) {
      for (int k = 0; k < N; ++k) {
        if (grad_ptr[k]) store_pair(grad_ptr[k] + i, grad_lo[k], grad_hi[k]);
      }
    }
  }
  for (; i < end; i += W) {
    const int64_t count = std::min(W, end - i);
    Vec in[N];
    Vec grad[N];
    for (int k = 0; k < N; ++k) in[k] = load_input(k, i, count);
    const Vec loss = compute(in, grad, count);
    if (loss_ptr) store_vec(loss_ptr + i, loss, count);
    if constexpr (kWithGrad) {
      for (int k = 0; k < N; ++k) {
        if (grad_ptr[k]) store_vec(grad_ptr[k] + i, grad[k], count);
      }
    }
  }

  alignas(64) acc_t lanes[W];
  for (int k = 0; k < N; ++k) {
    if (!Op::unit_interval(k)) continue;
    low[k].store(lanes);
    bool outside = std::any_of(lanes, lanes + W, [](acc_t v) { return v < acc_t(0); });
    high[k].store(lanes);
    outside = outside || std::any_of(lanes, lanes + W, [](acc_t v) { return v > acc_t(1); });
    out_of_unit_interval[k] = outside;
  }
  sum.store(lanes);
  double total = 0;
  for (int64_t j = 0; j < W; ++j) total += static_cast<double>(lanes[j]);
  return total;
}

template <typename scalar_t, bool kMixed, typename Op>
void run_loss_typed(const Op& op, LossBuffers& buffers, const c10::ScalarType* input_dtypes) {
  constexpr int N = Op::kInputs;
  bool with_grad = false;
  for (int k = 0; k < N; ++k) with_grad = with_grad || buffers.grads[k] != nullptr;

  const int64_t rows = buffers.rows;
  const int64_t row_len = buffers.row_len;
  const int64_t chunks_per_row = std::max<int64_t>(1, (row_len + kChunk - 1) / kChunk);
  const int64_t tasks = rows * chunks_per_row;
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, std::min(row_len, kChunk)));

  std::vector<double> partial(tasks);
  std::array<std::atomic<bool>, LossBuffers::kMaxInputs> outside{};
  at::parallel_for(0, tasks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks_per_row;
      const int64_t begin = row * row_len + (task % chunks_per_row) * kChunk;
      const int64_t end = std::min(begin + kChunk, (row + 1) * row_len);
      bool chunk_outside[N] = {};
      partial[task] =
          with_grad
              ? loss_chunk<scalar_t, true, kMixed>(op, buffers, input_dtypes, begin, end,
                                                   chunk_outside)
              : loss_chunk<scalar_t, false, kMixed>(op, buffers, input_dtypes, begin, end,
                                                    chunk_outside);
      for (int k = 0; k < N; ++k) {
        if (chunk_outside[k]) outside[k].store(true, std::memory_order_relaxed);
      }
    }
  });

  for (int64_t row = 0; row < rows; ++row) {
    double row_sum = 0;
    for (int64_t c = 0; c < chunks_per_row; ++c) row_sum += partial[row * chunks_per_row + c];
    buffers.sums[row] = row_sum;
  }
  for (int k = 0; k < N; ++k) {
    if (outside[k].load() && buffers.out_of_unit_interval) buffers.out_of_unit_interval[k] = 1;
  }
}

// `input_dtypes`: null when every input has `dtype` (see KernelTable::loss).
template <typename Op>
void run_loss(c10::ScalarType dtype, const c10::ScalarType* input_dtypes, const Op& op,
              LossBuffers& buffers) {
  if (input_dtypes != nullptr) {
    TORCH_CHECK(dtype == at::kFloat, "vae_kernels: mixed-dtype inputs compute in float32");
    run_loss_typed<float, true>(op, buffers, input_dtypes);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "vae_kernels_loss", [&] {
    run_loss_typed<scalar_t, false>(op, buffers, nullptr);
  });
}

}  // namespace vae_kernels::cpu::CPU_CAPABILITY
