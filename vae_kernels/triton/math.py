"""The per-element math of every Triton kernel, as ``@triton.jit`` helpers.

A port of ``csrc/math/*.h`` (the C++ kernels' formulas): same formulas, same clamps,
same order of operations where it matters. Every kernel in this package calls these
helpers, so each formula is written once on the Triton side too.

Rules that let every kernel also run in the Triton interpreter (TRITON_INTERPRET=1):

- Only ``tl.exp`` / ``tl.log`` / arithmetic: no ``libdevice`` / extern calls.
- Arguments are float32 or float64 (kernels cast float16 / bfloat16 loads to float32
  first); Python float constants take the argument's dtype, so float64 stays float64.
"""

import triton
import triton.language as tl

# Schema constants (csrc/math/*.h); tl.constexpr, as Triton requires of globals.
LOG_2PI = tl.constexpr(1.8378770664093453)  # log(2*pi)
LOG_2 = tl.constexpr(0.6931471805599453)
BCE_LOG_CLAMP = tl.constexpr(-100.0)  # PyTorch's binary_cross_entropy clamps each log at -100
BCE_GRAD_EPSILON = tl.constexpr(
    9.999999960041972e-13
)  # float(1e-12): torch's EPSILON is a float  # ... and floors p*(1-p) at 1e-12 in its gradient


@triton.jit
def maximum(a, b):
    """NaN-propagating maximum, like torch.maximum and the C++ kernels' Math<V>::maximum."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def to_compute_dtype(x):
    """float64 stays float64; float32 / float16 / bfloat16 compute in float32."""
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


@triton.jit
def log1p(u):
    """log(1 + u) without libdevice, accurate for small |u| (Goldberg's trick).

    ``w = 1 + u`` rounds; ``w - 1`` is exactly the u that was added, so
    ``log(w) * u / (w - 1)`` corrects the rounding error of w to first order
    (relative error a few ulp). When ``w == 1`` (|u| below half an ulp of 1),
    log1p(u) = u to working precision. u = -1 gives -inf, as log1p does.
    """
    w = 1.0 + u
    w_minus_one = w - 1.0
    tiny = w_minus_one == 0.0
    # The where() inside keeps the unselected lane free of 0/0.
    return tl.where(tiny, u, tl.log(w) * (u / tl.where(tiny, 1.0, w_minus_one)))


# ------------------------------------------------------------------ sampling


@triton.jit
def posterior_std(log_scale, LOGSIGMA: tl.constexpr):
    """exp(s / 2) of a log-variance s, or exp(s) of a log-sigma (csrc/math/sampling.h)."""
    if LOGSIGMA:
        return tl.exp(log_scale)
    return tl.exp(0.5 * log_scale)


@triton.jit
def reparameterize_forward(mu, std, eps):
    return mu + std * eps


@triton.jit
def reparameterize_scale_backward(std, sum_grad_eps, LOGSIGMA: tl.constexpr):
    """d s = c * std * sum_k g_k * eps_k, c = 1/2 for a log-variance and 1 for a
    log-sigma (d mu is the plain sum of g_k)."""
    if LOGSIGMA:
        return std * sum_grad_eps
    return 0.5 * std * sum_grad_eps


@triton.jit
def philox_standard_normal(seed, index):
    """Normal ``index`` of the noise stream keyed by ``seed`` (csrc/math/philox.h): output
    index % 4 of ``tl.randn4x(seed, index // 4)``, with only that output's half of
    Box-Muller evaluated."""
    u0, u1, u2, u3 = tl.rand4x(seed, index >> 2)
    second_pair = (index & 2) != 0
    radius = tl.sqrt(-2.0 * tl.log(tl.maximum(1.0e-7, tl.where(second_pair, u2, u0))))
    theta = 6.283185307179586 * tl.where(second_pair, u3, u1)
    return radius * tl.where((index & 1) != 0, tl.sin(theta), tl.cos(theta))


# ------------------------------------------------------------------ Gaussian KL


@triton.jit
def exp_series_nested(x, LAST_TERM: tl.constexpr):
    """1 + x/3 * (1 + x/4 * (... (1 + x/LAST_TERM))), so that x^2/2 times it is the
    Taylor series of e^x - 1 - x."""
    nested = x * 0.0 + 1.0
    for k in tl.static_range(LAST_TERM, 2, -1):
        nested = 1.0 + x * nested / k
    return nested


@triton.jit
def exp_minus_one_minus_x(x):
    """(e^x - 1 - x, e^x - 1), each accurate relative to its own size, as
    csrc/math/primitives.h: the Taylor series on |x| <= 1 (through x^11/11! in float32,
    x^18/18! in float64), exp(x) - 1 - x beyond. Near the prior (lv ~ 0) the plain
    exp(lv) - 1 - lv of the KL keeps only rounding error."""
    if x.dtype == tl.float64:
        nested = exp_series_nested(x, 18)
    else:
        nested = exp_series_nested(x, 11)
    series = 0.5 * x * x * nested
    exp_x = tl.exp(x)
    series_holds = tl.abs(x) <= 1.0  # False for NaN, which then takes exp(x)
    excess = tl.where(series_holds, series, exp_x - 1.0 - x)
    exp_minus_one = tl.where(series_holds, series + x, exp_x - 1.0)
    return excess, exp_minus_one


@triton.jit
def gaussian_kl_std_normal_and_grad(mu, logvar):
    """KL(N(mu, e^lv) || N(0, 1)) = 0.5 (mu^2 + e^lv - 1 - lv); returns (kl, d mu, d lv)."""
    var_excess, var_minus_one = exp_minus_one_minus_x(logvar)
    d_mu = mu
    d_logvar = 0.5 * var_minus_one
    kl = 0.5 * (mu * mu + var_excess)
    return kl, d_mu, d_logvar


@triton.jit
def gaussian_kl_and_grad(mu, logvar, prior_mu, prior_logvar):
    """KL(N(mu, e^lv) || N(pm, e^plv)); returns (kl, d mu, d lv, d pm, d plv).

    With d = lv - plv: kl = 0.5 (e^d - 1 - d + (mu - pm)^2 / e^plv). (mu - pm)^2 / e^plv
    is t*t with the standardized t = (mu - pm) e^(-plv/2), never (mu - pm)^2 * e^-plv,
    which overflows to inf * 0 = NaN where the true value is finite.
    """
    inv_prior_std = tl.exp(-0.5 * prior_logvar)
    t = (mu - prior_mu) * inv_prior_std
    ratio_excess, ratio_minus_one = exp_minus_one_minus_x(logvar - prior_logvar)
    scaled_sq = t * t
    d_mu = t * inv_prior_std
    d_prior_mu = 0.0 - d_mu
    d_logvar = 0.5 * ratio_minus_one
    d_prior_logvar = -0.5 * (ratio_minus_one + scaled_sq)
    kl = 0.5 * (ratio_excess + scaled_sq)
    return kl, d_mu, d_logvar, d_prior_mu, d_prior_logvar


# ------------------------------------------------------------------ Bernoulli NLL


@triton.jit
def bernoulli_logits_nll_and_grad(logits, target):
    """max(l, 0) - l x + log1p(exp(-|l|)); returns (nll, d l = sigmoid(l) - x, d x = -l).

    One exp(-|l|) in (0, 1] serves both the loss and the sigmoid.
    """
    e = tl.exp(0.0 - tl.abs(logits))
    inv = 1.0 / (1.0 + e)
    sigmoid = tl.where(logits >= 0.0, inv, e * inv)
    d_logits = sigmoid - target
    d_target = 0.0 - logits
    # max(l, 0) - l x as l (1 - x) for l >= 0 and -(l x) below: equal for finite l, and
    # +inf rather than inf - inf = NaN at l = +-inf (as in PyTorch).
    linear_part = tl.where(logits >= 0.0, logits * (1.0 - target), 0.0 - logits * target)
    nll = linear_part + log1p(e)
    return nll, d_logits, d_target


@triton.jit
def bernoulli_probs_nll_and_grad(probs, target):
    """-(x max(log p, -100) + (1 - x) max(log(1 - p), -100)), as F.binary_cross_entropy.

    Returns (nll, d p = (p - x) / max(p (1 - p), 1e-12), d x = log(1-p) - log p, clamped).
    """
    log_p = maximum(tl.log(probs), BCE_LOG_CLAMP)
    log_1mp = maximum(log1p(0.0 - probs), BCE_LOG_CLAMP)
    d_probs = (probs - target) / maximum((1.0 - probs) * probs, BCE_GRAD_EPSILON)
    d_target = log_1mp - log_p
    nll = 0.0 - (target * log_p + (1.0 - target) * log_1mp)
    return nll, d_probs, d_target


# ------------------------------------------------------------------ Gaussian NLL


@triton.jit
def gaussian_nll_fixed_var_and_grad(mean, target, inv_std, half_log_norm):
    """0.5 t^2 + 0.5 (lv + log 2 pi) with t = (m - x) e^(-lv/2), lv fixed; returns
    (nll, d m = t e^(-lv/2), d x = -d m). The standardized residual t avoids the
    inf * 0 = NaN of (m - x)^2 * e^-lv at extreme lv."""
    t = (mean - target) * inv_std
    d_mean = t * inv_std
    d_target = 0.0 - d_mean
    nll = 0.5 * t * t + half_log_norm
    return nll, d_mean, d_target


@triton.jit
def gaussian_nll_and_grad(mean, target, logvar):
    """0.5 (t^2 + lv + log 2 pi), t = (m - x) e^(-lv/2); returns (nll, d m, d x, d lv)."""
    inv_std = tl.exp(-0.5 * logvar)
    t = (mean - target) * inv_std
    scaled_sq = t * t
    d_mean = t * inv_std
    d_target = 0.0 - d_mean
    d_logvar = 0.5 * (1.0 - scaled_sq)
    nll = 0.5 * (scaled_sq + logvar + LOG_2PI)
    return nll, d_mean, d_target, d_logvar


@triton.jit
def squared_error_and_grad(input, target):
    """(m - x)^2; returns (se, d m = 2 (m - x), d x = -d m)."""
    diff = input - target
    d_input = 2.0 * diff
    d_target = 0.0 - d_input
    return diff * diff, d_input, d_target


@triton.jit
def sign(x):
    """-1, 0 or 1; NaN stays NaN (as Math<V>::sign)."""
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, x * 0.0))


# ------------------------------------------------------------------ Laplace NLL


@triton.jit
def laplace_nll_fixed_scale_and_grad(mean, target, half_inv_scale, log_norm):
    """|m - x| e^-s + s + log 2 with s fixed (half_inv_scale = e^(-s/2), log_norm =
    s + log 2); returns (nll, d m = sign(m - x) e^-s, d x = -d m). e^-s is applied as
    two factors e^(-s/2), as csrc/math/laplace_nll.h."""
    residual = mean - target
    d_mean = sign(residual) * half_inv_scale * half_inv_scale
    nll = tl.abs(residual) * half_inv_scale * half_inv_scale + log_norm
    return nll, d_mean, 0.0 - d_mean


@triton.jit
def laplace_nll_and_grad(mean, target, logscale):
    """|m - x| e^-s + s + log 2; returns (nll, d m, d x, d s = 1 - |m - x| e^-s)."""
    half_inv_scale = tl.exp(-0.5 * logscale)
    residual = mean - target
    t = tl.abs(residual) * half_inv_scale * half_inv_scale
    d_mean = sign(residual) * half_inv_scale * half_inv_scale
    nll = t + logscale + LOG_2
    return nll, d_mean, 0.0 - d_mean, 1.0 - t


# ------------------------------------------------------------------ continuous Bernoulli

# c_n of log C(l) = log 2 + sum_n c_n l^(2n) (csrc/math/continuous_bernoulli_nll.h).
CB_SERIES = (
    8.3333333333333333e-02, -4.8611111111111111e-03, 3.4171075837742504e-04,
    -2.6248346560846561e-05, 2.1336045641601197e-06, -1.8027895356488831e-07,
    1.5659479531834029e-08, -1.3883706783700259e-09, 1.2504263775315482e-10,
    -1.1402553853609106e-11, 1.0502918900453167e-12, -9.7548766787216445e-14,
    9.1234679589585563e-15, -8.5837196979419134e-16, 8.1173179946081066e-17,
    -7.7105275105257792e-18,
)  # fmt: skip


@triton.jit
def _cb_series(l2, TERMS: tl.constexpr):
    """(sum_n c_n l2^n, sum_n 2n c_n l2^(n-1)) for n = 1..TERMS, by Horner."""
    value = l2 * 0.0
    slope = l2 * 0.0
    for i in tl.static_range(TERMS):
        n: tl.constexpr = TERMS - i
        value = value * l2 + CB_SERIES[n - 1]
        slope = slope * l2 + 2.0 * n * CB_SERIES[n - 1]
    return value * l2, slope


@triton.jit
def continuous_bernoulli_log_norm(logits):
    """(log C(l) - log 2, d log C / dl = 1/l - 1/sinh l): the series on |l| <= 1 (8 terms
    in float32, 16 in float64), log|l| - log1p(-e) + log1p(e) with e = e^-|l| beyond."""
    if logits.dtype == tl.float64:
        value, slope = _cb_series(logits * logits, 16)
    else:
        value, slope = _cb_series(logits * logits, 8)
    slope = slope * logits
    a = tl.abs(logits)
    e = tl.exp(0.0 - a)
    far_value = tl.log(a) - log1p(0.0 - e) + log1p(e) - LOG_2
    far_slope = 1.0 / logits - sign(logits) * (2.0 * e / (1.0 - e * e))
    series_holds = a <= 1.0  # False for NaN, which then takes the far branch
    return tl.where(series_holds, value, far_value), tl.where(series_holds, slope, far_slope)


@triton.jit
def continuous_bernoulli_nll_and_grad(logits, target):
    """BCE-with-logits(l, x) - log C(l); returns (nll, d l, d x = -l). Both terms are
    ~log 2 near l = 0, so each is taken minus log 2 (the BCE's through an accurate
    e^-|l| - 1) before the difference, as csrc/math/continuous_bernoulli_nll.h."""
    log_norm, d_log_norm = continuous_bernoulli_log_norm(logits)
    _, d_logits, d_target = bernoulli_logits_nll_and_grad(logits, target)
    _, e_minus_one = exp_minus_one_minus_x(0.0 - tl.abs(logits))
    linear_part = tl.where(logits >= 0.0, logits * (1.0 - target), 0.0 - logits * target)
    bce_minus_log2 = linear_part + log1p(0.5 * e_minus_one)
    return bce_minus_log2 - log_norm, d_logits - d_log_norm, d_target


# ------------------------------------------------------------------ discretized logistic mixture

# csrc/math/discretized_logistic_mixture.h
MIXTURE_MIN_LOG_SCALE = tl.constexpr(-7.0)
MIXTURE_EDGE = tl.constexpr(0.999)  # x beyond +-0.999: the open-ended edge bins
# Below this bin probability (1e-5) the bin is scored by its mid-point density.
MIXTURE_LOG_MIN_BIN_PROBABILITY = tl.constexpr(-11.512925464970229)  # log(1e-5)


@triton.jit
def tanh(y):
    """tanh without libdevice: sign(y) (1 - e^-2|y|) / (1 + e^-2|y|), with e^-2|y| - 1
    from exp_minus_one_minus_x, so that small |y| keep their relative accuracy (a plain
    1 - exp(-2|y|) would cancel). +-inf give +-1, NaN stays NaN."""
    _, exp_minus_one = exp_minus_one_minus_x(-2.0 * tl.abs(y))  # in [-1, 0]
    magnitude = (0.0 - exp_minus_one) / (2.0 + exp_minus_one)
    return tl.where(y < 0.0, 0.0 - magnitude, magnitude)


@triton.jit
def softplus_and_sigmoid(y):
    """(softplus(y) = log(1 + e^y), sigmoid(y)) from one exp and one log1p."""
    e = tl.exp(0.0 - tl.abs(y))  # in (0, 1]
    inv_one_plus_e = 1.0 / (1.0 + e)
    sig = tl.where(y >= 0.0, inv_one_plus_e, e * inv_one_plus_e)
    return maximum(y, 0.0) + log1p(e), sig


@triton.jit
def logistic_bin_log_prob(x, mean, log_scale, half_width, log_half_bins):
    """log P(bin of x | logistic(mean, e^log_scale)) and its derivatives in the mean and
    in log_scale (already clamped): returns (log_prob, d mean, d log_scale).

    half_width = 1 / (2^bits - 1), log_half_bins = log((2^bits - 1) / 2). With plus and
    minus the standardized bin edges:
      lowest bin (x < -0.999):  log sigmoid(plus)
      highest bin (x > 0.999):  log(1 - sigmoid(minus))
      else log(sigmoid(plus) - sigmoid(minus)) where that exceeds log(1e-5), else the
      mid-point density mid - s - 2 softplus(mid) - log_half_bins.
    The difference of sigmoids is never formed: its log is
    log sigmoid(plus) + log sigmoid(-minus) + log(1 - e^-(plus - minus)), three accurate
    terms wherever the bin lies (csrc/math/discretized_logistic_mixture.h, branch for
    branch).
    """
    inv = tl.exp(0.0 - log_scale)
    centered = x - mean
    plus = inv * (centered + half_width)
    minus = inv * (centered - half_width)
    width = (2.0 * half_width) * inv

    softplus_neg_plus, sig_neg_plus = softplus_and_sigmoid(0.0 - plus)
    softplus_minus, sig_minus = softplus_and_sigmoid(minus)

    # Interior bin: log(sigmoid(plus)) + log(sigmoid(-minus)) + log(1 - e^-width).
    _, exp_neg_width_minus_one = exp_minus_one_minus_x(0.0 - width)  # accurate for small widths
    neg_expm1 = 0.0 - exp_neg_width_minus_one  # 1 - e^-width, in (0, 1]
    log_delta = tl.log(neg_expm1) - softplus_neg_plus - softplus_minus
    # d/dplus = sigmoid(-plus) + 1/(e^width - 1), d/dminus = -sigmoid(minus) - 1/(e^width - 1)
    width_term = width * (1.0 - neg_expm1) / neg_expm1  # width / (e^width - 1)
    delta_d_mean = 0.0 - inv * (sig_neg_plus - sig_minus)
    delta_d_log_scale = 0.0 - (plus * sig_neg_plus - minus * sig_minus + width_term)

    # Mid-point density, for bins too improbable for the difference above.
    mid = inv * centered
    softplus_mid, sig_mid = softplus_and_sigmoid(mid)
    mid_log_prob = mid - log_scale - 2.0 * softplus_mid - log_half_bins
    mid_slope = 1.0 - 2.0 * sig_mid  # d/dmid
    mid_d_mean = 0.0 - inv * mid_slope
    mid_d_log_scale = 0.0 - mid * mid_slope - 1.0

    # Interior: the difference where log_delta > log(1e-5), else the mid-point density.
    improbable = (MIXTURE_LOG_MIN_BIN_PROBABILITY - log_delta) >= 0.0
    log_prob = tl.where(improbable, mid_log_prob, log_delta)
    d_mean = tl.where(improbable, mid_d_mean, delta_d_mean)
    d_log_scale = tl.where(improbable, mid_d_log_scale, delta_d_log_scale)

    # Highest bin (x > 0.999): log(1 - sigmoid(minus)) = -softplus(minus).
    not_highest = (MIXTURE_EDGE - x) >= 0.0
    log_prob = tl.where(not_highest, log_prob, 0.0 - softplus_minus)
    d_mean = tl.where(not_highest, d_mean, inv * sig_minus)
    d_log_scale = tl.where(not_highest, d_log_scale, minus * sig_minus)

    # Lowest bin (x < -0.999): log sigmoid(plus) = -softplus(-plus).
    not_lowest = (x + MIXTURE_EDGE) >= 0.0
    log_prob = tl.where(not_lowest, log_prob, 0.0 - softplus_neg_plus)
    d_mean = tl.where(not_lowest, d_mean, 0.0 - inv * sig_neg_plus)
    d_log_scale = tl.where(not_lowest, d_log_scale, 0.0 - plus * sig_neg_plus)
    return log_prob, d_mean, d_log_scale


@triton.jit
def running_logsumexp_add(running_max, running_sum, v):
    """Add v to a running logsumexp kept as sum * e^max, with one exp per value (as
    RunningLogSumExp::add). Start from (first value, 1); the result is max + log(sum)."""
    above = v - running_max
    e = tl.exp(0.0 - tl.abs(above))
    running_sum = tl.where(above >= 0.0, running_sum * e + 1.0, running_sum + e)
    return maximum(running_max, v), running_sum
