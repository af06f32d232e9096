// The discretized logistic mixture likelihood of PixelCNN++ (Salimans et al., 2017), the
// per-pixel math shared by the CPU kernel (V = a SIMD vector of pixels) and the CUDA
// kernel (V = float or double, one pixel per thread). The float64 oracle is
// vae_kernels/reference.py; the Triton copy is vae_kernels/triton/math.py.
//
// Per pixel, with M components and C = 1 or 3 channels x_c in [-1, 1]:
//   mean_{c,k}: m0; m1 + tanh(a0) x0; m2 + tanh(a1) x0 + tanh(a2) x1 (C = 3)
//   s_{c,k} = max(raw log-scale, -7)   (no gradient where the clamp is active)
//   log p_{c,k} = log P(x_c's bin | logistic(mean, e^s)), the edge bins open-ended
//   NLL = -logsumexp_k(log_softmax(logits)_k + sum_c log p_{c,k})
#pragma once

#include <cstdint>

#include "primitives.h"

namespace vae_kernels {

// Where a pixel's parameters sit among the P channels of params (B, P, H, W), in
// PixelCNN++'s layout (params.permute(0, 2, 3, 1) is its `l`): M logits, then one row
// per colour channel of M means, M raw log-scales and (C = 3) M coupling coefficients.
struct MixtureLayout {
  int channels = 3;    // C
  int components = 1;  // M

  VK_INLINE int row_length() const { return (channels == 3 ? 3 : 2) * components; }
  VK_INLINE int num_params() const { return components + channels * row_length(); }
  VK_INLINE int logit(int k) const { return k; }
  VK_INLINE int mean(int c, int k) const { return components + c * row_length() + k; }
  VK_INLINE int log_scale(int c, int k) const { return mean(c, k) + components; }
  VK_INLINE int coeff(int c, int k) const { return mean(c, k) + 2 * components; }
};

constexpr double kMixtureMinLogScale = -7.0;
constexpr double kMixtureEdge = 0.999;  // x beyond +-0.999: the open-ended edge bins
// Below this bin probability (1e-5) the bin is scored by its mid-point density.
constexpr double kMixtureLogMinBinProbability = -11.512925464970229;  // log(1e-5)

// The bin geometry for data on the 2^bits-level grid of [-1, 1].
struct MixtureBins {
  double half_width;     // 1 / (2^bits - 1)
  double log_half_bins;  // log((2^bits - 1) / 2)
};

inline MixtureBins mixture_bins(int64_t num_bits) {
  const double levels = static_cast<double>((int64_t(1) << num_bits) - 1);
  return {1.0 / levels, std::log(levels / 2.0)};
}

// softplus(y) = log(1 + e^y), and sigmoid(y) in `sig`, from one exp and one log1p.
template <typename V>
VK_INLINE V softplus_and_sigmoid(V y, V& sig) {
  using S = typename Math<V>::Scalar;
  const V e = Math<V>::exp_minus_abs(y);  // in (0, 1]
  sig = sigmoid_from_exp_minus_abs(y, e);
  return Math<V>::maximum(y, V(S(0))) + Math<V>::log1p_unit(e);
}

// log P(bin of x | logistic(mean, e^log_scale)) and its derivatives in the mean and in
// log_scale (already clamped). With plus/minus the standardized bin edges:
//   lowest bin (x < -0.999):  log sigmoid(plus)
//   highest bin (x > 0.999):  log(1 - sigmoid(minus))
//   else log(sigmoid(plus) - sigmoid(minus)) where that exceeds log(1e-5), else the
//   mid-point density mid - s - 2 softplus(mid) - log((2^bits - 1) / 2).
// The difference of sigmoids is never formed: it is
//   sigmoid(plus) sigmoid(-minus) (1 - e^-(plus - minus)),
// whose log is a sum of three accurate terms wherever the bin lies (plus - minus is
// 2 half_width e^-s, computed without cancellation).
template <typename V>
VK_INLINE V logistic_bin_log_prob(V x, V mean, V log_scale, const MixtureBins& bins,
                                  V& d_mean, V& d_log_scale) {
  using M = Math<V>;
  using S = typename M::Scalar;
  const V zero(S(0)), one(S(1));
  const V inv = M::exp(zero - log_scale);
  const V centered = x - mean;
  const V half_width(static_cast<S>(bins.half_width));
  const V plus = inv * (centered + half_width);
  const V minus = inv * (centered - half_width);
  const V width = V(static_cast<S>(2 * bins.half_width)) * inv;

  V sig_neg_plus, sig_minus;
  const V softplus_neg_plus = softplus_and_sigmoid(zero - plus, sig_neg_plus);
  const V softplus_minus = softplus_and_sigmoid(minus, sig_minus);

  // Interior bin: log(sigmoid(plus)) + log(sigmoid(-minus)) + log(1 - e^-width).
  V exp_neg_width_minus_one;  // e^-width - 1, accurate for small widths
  exp_minus_one_minus_x(zero - width, exp_neg_width_minus_one);
  const V neg_expm1 = zero - exp_neg_width_minus_one;  // 1 - e^-width, in (0, 1]
  const V log_delta = M::log(neg_expm1) - softplus_neg_plus - softplus_minus;
  // d/dplus = sigmoid(-plus) + 1/(e^width - 1), d/dminus = -sigmoid(minus) - 1/(e^width - 1)
  const V width_term = width * (one - neg_expm1) / neg_expm1;  // width / (e^width - 1)
  const V delta_d_mean = zero - inv * (sig_neg_plus - sig_minus);
  const V delta_d_log_scale = zero - (plus * sig_neg_plus - minus * sig_minus + width_term);

  // Mid-point density, for bins too improbable for the difference above.
  const V mid = inv * centered;
  V sig_mid;
  const V softplus_mid = softplus_and_sigmoid(mid, sig_mid);
  const V mid_log_prob = mid - log_scale - V(S(2)) * softplus_mid -
                         V(static_cast<S>(bins.log_half_bins));
  const V mid_slope = one - V(S(2)) * sig_mid;  // d/dmid
  const V mid_d_mean = zero - inv * mid_slope;
  const V mid_d_log_scale = zero - mid * mid_slope - one;

  // Interior: the difference where log_delta > log(1e-5), else the mid-point density.
  const V improbable = V(static_cast<S>(kMixtureLogMinBinProbability)) - log_delta;
  V log_prob = M::where_nonneg(improbable, mid_log_prob, log_delta);
  d_mean = M::where_nonneg(improbable, mid_d_mean, delta_d_mean);
  d_log_scale = M::where_nonneg(improbable, mid_d_log_scale, delta_d_log_scale);

  // Highest bin (x > 0.999): log(1 - sigmoid(minus)) = -softplus(minus).
  const V below_high = V(static_cast<S>(kMixtureEdge)) - x;
  log_prob = M::where_nonneg(below_high, log_prob, zero - softplus_minus);
  d_mean = M::where_nonneg(below_high, d_mean, inv * sig_minus);
  d_log_scale = M::where_nonneg(below_high, d_log_scale, minus * sig_minus);

  // Lowest bin (x < -0.999): log sigmoid(plus) = -softplus(-plus).
  const V above_low = x + V(static_cast<S>(kMixtureEdge));
  log_prob = M::where_nonneg(above_low, log_prob, zero - softplus_neg_plus);
  d_mean = M::where_nonneg(above_low, d_mean, zero - inv * sig_neg_plus);
  d_log_scale = M::where_nonneg(above_low, d_log_scale, zero - plus * sig_neg_plus);
  return log_prob;
}

// A running logsumexp: add(v) accumulates e^v as sum * e^max, with one exp per value.
template <typename V>
struct RunningLogSumExp {
  V max;
  V sum;

  VK_INLINE explicit RunningLogSumExp(V first) : max(first), sum(V(typename Math<V>::Scalar(1))) {}

  VK_INLINE void add(V v) {
    using S = typename Math<V>::Scalar;
    const V above = v - max;
    const V e = Math<V>::exp_minus_abs(above);
    sum = Math<V>::where_nonneg(above, sum * e + V(S(1)), sum + e);
    max = Math<V>::maximum(max, v);
  }

  VK_INLINE V value() const { return max + Math<V>::log(sum); }
};

// The NLL of one pixel (of V's lanes of pixels) and, with kWithGrad, its gradient in
// every parameter times grad_scale.
//
//   params(p) -> V: the pixel's parameter p (PixelCNN++'s layout, MixtureLayout).
//   x[c]: the pixel's channels.
//   grads.store(p, V) / grads.load(p) -> V: the pixel's gradient slots, one per
//     parameter. The first pass keeps its per-component values there (the component's
//     log-weight in the logit slot, d log p / d mean and d log p / d s in the mean and
//     log-scale slots, 1 - tanh^2 in the coefficient slots); the second pass turns
//     them into the gradient, once the posterior over components is known.
template <bool kWithGrad, typename V, typename Params, typename Grads>
VK_INLINE V mixture_pixel_nll(const MixtureLayout& layout, const MixtureBins& bins,
                              const Params& params, const V* x, Grads& grads, V grad_scale) {
  using M = Math<V>;
  using S = typename M::Scalar;
  const V one(S(1)), min_log_scale(static_cast<S>(kMixtureMinLogScale));
  const int C = layout.channels;
  const int K = layout.components;

  V log_weight_first(S(0)), logit_first(S(0));
  RunningLogSumExp<V> weights(log_weight_first), logits(logit_first);
  for (int k = 0; k < K; ++k) {
    V tanh_coeff[3];
    if (C == 3) {
      for (int c = 0; c < 3; ++c) {
        tanh_coeff[c] = M::tanh(params(layout.coeff(c, k)));
        if constexpr (kWithGrad) grads.store(layout.coeff(c, k), one - tanh_coeff[c] * tanh_coeff[c]);
      }
    }
    V log_prob_sum(S(0));
    for (int c = 0; c < C; ++c) {
      V mean = params(layout.mean(c, k));
      if (C == 3 && c == 1) mean = mean + tanh_coeff[0] * x[0];
      if (C == 3 && c == 2) mean = mean + tanh_coeff[1] * x[0] + tanh_coeff[2] * x[1];
      const V raw_log_scale = params(layout.log_scale(c, k));
      const V log_scale = M::maximum(raw_log_scale, min_log_scale);
      V d_mean, d_log_scale;
      log_prob_sum = log_prob_sum + logistic_bin_log_prob(x[c], mean, log_scale, bins, d_mean,
                                                          d_log_scale);
      if constexpr (kWithGrad) {
        grads.store(layout.mean(c, k), d_mean);
        // The clamp passes the gradient where raw >= -7, as torch.clamp's does.
        grads.store(layout.log_scale(c, k),
                    M::where_nonneg(raw_log_scale - min_log_scale, d_log_scale, V(S(0))));
      }
    }
    const V logit = params(layout.logit(k));
    const V log_weight = logit + log_prob_sum;  // + log_softmax's constant
    if constexpr (kWithGrad) grads.store(layout.logit(k), log_weight);
    if (k == 0) {
      weights = RunningLogSumExp<V>(log_weight);
      logits = RunningLogSumExp<V>(logit);
    } else {
      weights.add(log_weight);
      logits.add(logit);
    }
  }
  const V log_normalizer = logits.value();
  const V log_likelihood_unnormalized = weights.value();
  const V nll = log_normalizer - log_likelihood_unnormalized;

  if constexpr (kWithGrad) {
    for (int k = 0; k < K; ++k) {
      const V posterior = M::exp(grads.load(layout.logit(k)) - log_likelihood_unnormalized);
      const V prior = M::exp(params(layout.logit(k)) - log_normalizer);
      grads.store(layout.logit(k), (prior - posterior) * grad_scale);
      // d NLL / d log p_{c,k} = -posterior_k
      const V upstream = V(S(0)) - posterior * grad_scale;
      V d_mean[3];
      for (int c = 0; c < C; ++c) {
        d_mean[c] = grads.load(layout.mean(c, k)) * upstream;
        grads.store(layout.mean(c, k), d_mean[c]);
        grads.store(layout.log_scale(c, k), grads.load(layout.log_scale(c, k)) * upstream);
      }
      if (C == 3) {
        // mean1 += tanh(a0) x0; mean2 += tanh(a1) x0 + tanh(a2) x1
        grads.store(layout.coeff(0, k), d_mean[1] * x[0] * grads.load(layout.coeff(0, k)));
        grads.store(layout.coeff(1, k), d_mean[2] * x[0] * grads.load(layout.coeff(1, k)));
        grads.store(layout.coeff(2, k), d_mean[2] * x[1] * grads.load(layout.coeff(2, k)));
      }
    }
  }
  return nll;
}

// The CPU and CUDA kernels' buffers for one call. Strides are in elements.
struct MixtureBuffers {
  MixtureLayout layout;
  MixtureBins bins;
  int64_t batch = 0, height = 0, width = 0;
  const void* params = nullptr;  // (B, P, H, W), any strides
  int64_t params_strides[4] = {};
  const void* x = nullptr;  // (B, C, H, W), any strides, its own dtype
  int64_t x_strides[4] = {};
  // The NLL per pixel, (B, H, W) contiguous, in the compute type (float, or double
  // for float64 params); null where not needed.
  void* pixel_nll = nullptr;
  // grad_scale * d NLL / d params, (B, P, H, W) contiguous, of the local-gradient dtype
  // (float32 for float16 params, else params' dtype); null without gradient.
  void* grads = nullptr;
  double grad_scale = 1.0;
  // The NLL summed per sample in a fixed order (on the CPU; see the CUDA launcher).
  double* sums = nullptr;
  // Set to 1 when some x lies outside [-1, 1] (NaN passes).
  int32_t* x_out_of_range = nullptr;
};

}  // namespace vae_kernels
