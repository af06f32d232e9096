"""Numerical extremes: every op at the edges of its inputs' ranges, against the float64
oracle (vae_kernels.reference on the same rounded inputs) and against PyTorch's own
functions where the true value is infinite or undefined.

The behaviour these tests pin down (also in the vae_kernels.functional docstring):

- Where the float64 oracle is finite and inside the dtype's range, value and gradient
  match it within the dtype's tolerance: logits at +-1e4, probabilities exactly 0 and 1,
  logvar at +-100 (where exp(logvar) alone overflows float32), a zero residual at
  logvar -100, mu at 1e20 against a prior of logvar +100, float16/bfloat16 values near
  their range limits.
- Where the true value is beyond the dtype's range the result is +-inf (as in torch).
- Probabilities: each log is clamped at -100 and the input gradient is
  (p - x) / max(p(1-p), 1e-12), exactly F.binary_cross_entropy; the target gradient is
  the derivative of that clamped loss, max(log(1-p), -100) - max(log p, -100) (+-100 at
  p = 0 or 1, where torch's unclamped formula gives +-inf).
- Logits +inf: the loss is +inf for x < 1 and NaN for x = 1, as in
  F.binary_cross_entropy_with_logits; logits -inf: +inf for x > 0 (torch: NaN) and NaN
  for x = 0. Gradients at +-inf are finite (sigmoid(l) - x; -l for the target).
- NaN in any input propagates to exactly the outputs and gradients that depend on it
  (the [0, 1] range check lets NaN through rather than raising).
- float32 intermediates: exp(logvar) overflows for logvar > 88.72 even where
  0.5*exp(logvar) would fit, and float32 partial sums of terms near float32's maximum
  overflow where a mean would fit; torch's float32 formulas overflow the same way.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vae_kernels as vk
from vae_kernels.schema import LossKind as K

from conftest import TOLERANCES, assert_close_to_oracle

INF, NAN = float("inf"), float("nan")
BACKENDS = [b for b in ("cpu", "torch") if b in vk.available_backends()]
requires_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")


def _run(call, tensors: dict, dtype, backend, reduction="none", grads=None, upstream=None):
    """Value and gradients of ``call`` on ``tensors`` rounded to ``dtype`` (and, for the
    oracle, then converted to float64)."""
    grads = list(tensors) if grads is None else grads
    leaves = {k: v.to(dtype).requires_grad_(k in grads) for k, v in tensors.items()}
    out = call(**leaves, reduction=reduction, backend=backend)
    up = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    gs = torch.autograd.grad(out, [leaves[k] for k in grads], up)
    return out.detach(), dict(zip(grads, gs))


def check_against_oracle(call, tensors, dtype, backend, reduction="none", grads=None):
    out, gs = _run(call, tensors, dtype, backend, reduction, grads)
    rounded = {k: v.to(dtype).double() for k, v in tensors.items()}
    up = torch.ones_like(out)
    out64, gs64 = _run(call, rounded, torch.float64, "torch", reduction, grads, up)
    assert out.dtype == dtype
    assert_close_to_oracle(out, out64, dtype)
    for name in gs:
        assert_close_to_oracle(gs[name], gs64[name], dtype)


def _kl(mu, logvar, prior_mu=None, prior_logvar=None, **kw):
    return vk.gaussian_kl(mu, logvar, prior_mu, prior_logvar, **kw)


def _bce_logits(input, target, **kw):
    return vk.bernoulli_nll(input, target, **kw)


def _bce_probs(input, target, **kw):
    return vk.bernoulli_nll(input, target, logits=False, **kw)


def _gnll(input, target, logvar=None, **kw):
    return vk.gaussian_nll(input, target, 0.0 if logvar is None else logvar, **kw)


def _gnll_fixed(value):
    def call(input, target, **kw):
        return vk.gaussian_nll(input, target, value, **kw)

    return call


def _laplace(input, target, logscale=None, **kw):
    return vk.laplace_nll(input, target, 0.0 if logscale is None else logscale, **kw)


def _laplace_fixed(value):
    def call(input, target, **kw):
        return vk.laplace_nll(input, target, value, **kw)

    return call


def _cb(input, target, **kw):
    return vk.continuous_bernoulli_nll(input, target, **kw)


def _kl_logsigma(mu, logvar, prior_mu=None, prior_logvar=None, **kw):
    return vk.gaussian_kl(mu, logvar, prior_mu, prior_logvar, scale="logsigma", **kw)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Extremes whose true value is finite, or beyond the dtype's range (then inf).
WIDE_CASES = {
    "kl_std_normal": (_kl, {
        "mu": t(0, 0, 1e20, -1e20, 3, 0, 1e-30, 0),
        "logvar": t(100, -100, 0, 0, 80, -80, 0, 88.0)}),
    "kl_prior": (_kl, {
        "mu": t(0, 1e20, 0, 1e20, 5, 0, 3),
        "logvar": t(-100, 0, 100, 0, -100, 50, 1e-4),
        "prior_mu": t(0, 0, 0, 1e20, 5, 1e-20, 3),
        "prior_logvar": t(-100, 100, 100, 0, -100, -50, -100)}),
    "bce_logits": (_bce_logits, {
        "input": t(-1e4, -1e4, 1e4, 1e4, -100, 100, 0, 0, -87.5, 88.5, 1e4, -1e4),
        "target": t(0, 1, 0, 1, 0, 1, 0.5, 0, 0.25, 0.75, 0.5, 0.5)}),
    "bce_probs": (_bce_probs, {  # gradients at p = 0, 1: second oracle below
        "input": t(1e-30, 1 - 1e-7, 0.5, 1e-10, 0.999, 3e-38, 1 - 2**-24),
        "target": t(1, 0, 0.5, 1, 0, 0, 1)}),
    "gaussian_nll_learned": (_gnll, {
        "input": t(0, 1, 1e20, 0, 1e-3, -1e15, 1e30),
        "target": t(0, 1, 0, 0, 0, 1e15, 1e30),
        "logvar": t(-100, -100, 100, 100, -60, 60, 0)}),
    "gaussian_nll_fixed_minus100": (_gnll_fixed(-100.0), {
        "input": t(0, 1, 1e-30, -2e-25), "target": t(0, 1, 0, 0)}),
    "gaussian_nll_fixed_plus100": (_gnll_fixed(100.0), {
        "input": t(0, 1e20, -1e25, 3e18), "target": t(0, 0, 0, -3e18)}),
    "mse": (vk.mse_loss, {"input": t(1e20, 1e19, -1e-30, 3e38), "target": t(0, -1e19, 1e-30, 0)}),
    # A zero residual at log-scale -100 (e^100 overflows float32): 0, not 0 * inf.
    "laplace_learned": (_laplace, {
        "input": t(0, 1, 1e20, 0, 1e-3, -1e15, 1e30),
        "target": t(0, 1, 0, 0, 0, 1e15, 1e30),
        "logscale": t(-100, -100, 80, 100, -40, 60, 0)}),
    "laplace_fixed_minus100": (_laplace_fixed(-100.0), {
        "input": t(0, 1, 1e-30, -2e-25), "target": t(0, 1, 0, 0)}),
    "laplace_fixed_plus100": (_laplace_fixed(100.0), {
        "input": t(0, 1e20, -1e25, 3e37), "target": t(0, 0, 0, -3e37)}),
    "continuous_bernoulli": (_cb, {
        "input": t(0, 1e-30, -1e-6, 1.0, -1.0, 36, -80, 1e4, -1e4, 88.5, 3e38, -3e38),
        "target": t(0.5, 0, 1, 0.3, 0.7, 0, 1, 0.25, 0.75, 1, 0.5, 0.5)}),
    "kl_std_normal_logsigma": (_kl_logsigma, {
        "mu": t(0, 0, 1e20, -1e20, 3, 0, 1e-30, 0),
        "logvar": t(50, -50, 0, 0, 40, -40, 0, 44.0)}),
    "kl_prior_logsigma": (_kl_logsigma, {
        "mu": t(0, 1e20, 0, 1e20, 5, 0, 3),
        "logvar": t(-50, 0, 50, 0, -50, 25, 5e-5),
        "prior_mu": t(0, 0, 0, 1e20, 5, 1e-20, 3),
        "prior_logvar": t(-50, 50, 50, 0, -50, -25, -50)}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "per_sample"])
@pytest.mark.parametrize("case", list(WIDE_CASES))
def test_extremes_match_float64_oracle(case, reduction, dtype, backend):
    call, tensors = WIDE_CASES[case]
    if backend == "torch" and dtype == torch.bfloat16:
        pytest.skip("eager torch rounds every intermediate to bfloat16")
    # As a batch of one row, so per_sample sums the extremes together.
    tensors = {k: v.unsqueeze(0) for k, v in tensors.items()}
    check_against_oracle(call, tensors, dtype, backend, reduction)


# float16 near its range limits (max 65504, smallest subnormal 6e-8).
HALF_CASES = {
    "kl_std_normal": (_kl, {"mu": t(60000, -250, 1e-4, 0, 300), "logvar": t(11, -17, 0, 10.5, 0)}),
    "kl_prior": (_kl, {"mu": t(200, 0, 1), "logvar": t(5, -10, 0),
                       "prior_mu": t(-200, 0, 1), "prior_logvar": t(10, -10, -10)}),
    "bce_logits": (_bce_logits, {"input": t(65504, -65504, 60000, -11, 11, 0),
                                 "target": t(0, 1, 1, 0, 1, 0.5)}),
    "bce_probs": (_bce_probs, {"input": t(6e-8, 1 - 2**-11, 0.5, 2**-14),
                               "target": t(1, 0, 1, 0)}),
    "gaussian_nll_learned": (_gnll, {"input": t(1e-3, 100, 0, 3), "target": t(0, -100, 0, 3),
                                     "logvar": t(-11, 10, -15, 0)}),
    "mse": (vk.mse_loss, {"input": t(180, -250, 6e-8), "target": t(-1, 0, 0)}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("case", list(HALF_CASES))
def test_float16_near_range_limits(case, reduction, backend):
    call, tensors = HALF_CASES[case]
    dtype = torch.float16
    if backend == "torch":
        dtype = torch.float32  # the same inputs; eager float16 rounds every intermediate
    check_against_oracle(call, {k: v.unsqueeze(0) for k, v in tensors.items()}, dtype,
                         backend, reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_logit_gradient_is_exact_at_the_extremes(backend, dtype):
    """d/dl = sigmoid(l) - x exactly: -x at l = -1e4 (not 0/0), 1 - x at +1e4, and
    0.5 - x at l = 0 exactly (where max(l, 0) + log1p(exp(-|l|)) differentiated by
    autograd gives 1 - x: a bug the reference backend had)."""
    l = torch.tensor([[-1e4, -1e4, 1e4, 1e4, 0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0]], dtype=dtype, requires_grad=True)
    out = vk.bernoulli_nll(l, x, reduction="sum", backend=backend)
    out.backward()
    assert torch.equal(l.grad, torch.tensor([[0.0, -1.0, 1.0, 0.0, 0.0, 0.5, -0.5]], dtype=dtype))
    assert torch.equal(x.grad, -l.detach())
    assert out.item() == pytest.approx(1e4 + 1e4 + 3 * math.log(2), rel=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_infinite_logits_follow_pytorch(backend, dtype):
    l = torch.tensor([INF, INF, INF, -INF, -INF, -INF], dtype=dtype)
    x = torch.tensor([0.0, 0.5, 1.0, 0.0, 0.5, 1.0], dtype=dtype)
    ll, xx = l.clone().requires_grad_(), x.clone().requires_grad_()
    ours = vk.bernoulli_nll(ll, xx, reduction="none", backend=backend)
    ours.sum().backward()
    tl, tx = l.clone().requires_grad_(), x.clone().requires_grad_()
    theirs = F.binary_cross_entropy_with_logits(tl, tx, reduction="none")
    theirs.sum().backward()
    # +inf: the same as torch (inf, inf, NaN for 0 * inf).
    torch.testing.assert_close(ours[:3].detach(), theirs[:3].detach(), equal_nan=True)
    # -inf: the true value +inf for x > 0 where torch gives NaN; NaN (0 * inf) for x = 0.
    assert ours[3].isnan() and ours[4] == INF and ours[5] == INF
    # Gradients are finite and equal torch's: sigmoid(l) - x and -l.
    torch.testing.assert_close(ll.grad, tl.grad)
    torch.testing.assert_close(xx.grad, tx.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_probabilities_exactly_zero_and_one_match_binary_cross_entropy(backend, dtype):
    p = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1e-45 if dtype == torch.float32 else 1e-300],
                     dtype=dtype)
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.3, 1.0], dtype=dtype)
    a, xa = p.clone().requires_grad_(), x.clone().requires_grad_()
    ours = vk.bernoulli_nll(a, xa, logits=False, reduction="none", backend=backend)
    ours.sum().backward()
    b = p.clone().requires_grad_()
    theirs = F.binary_cross_entropy(b, x, reduction="none")
    theirs.sum().backward()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)  # +-1e12, never NaN
    log_p = torch.log(p.double()).clamp_min(-100)
    log_1mp = torch.log1p(-p.double()).clamp_min(-100)
    torch.testing.assert_close(xa.grad.double(), log_1mp - log_p, rtol=1e-6, atol=1e-6)
    assert xa.grad.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_probability_logs_are_accurate_across_the_unit_interval(backend):
    # log p and log(1 - p) over all of [0, 1] in float32: subnormal p, p within ulps of
    # 0 and 1, p where 1 - p rounds (the CPU kernels evaluate both logs inline, with
    # log(1 - p) corrected for that rounding), against float64 on the same inputs.
    g = torch.Generator().manual_seed(5)
    tiny = torch.logspace(-45, -1, 2000, dtype=torch.float64)
    p = torch.cat([tiny, 1 - tiny, torch.rand(4000, generator=g, dtype=torch.float64),
                   torch.tensor([0.0, 1.0, 0.5])]).float()
    p = p[(p >= 0) & (p <= 1)]
    x = torch.rand(p.shape, generator=g)
    x[::3], x[1::3] = 0.0, 1.0  # the loss is one log alone, at its own relative accuracy
    x.requires_grad_()
    ours = vk.bernoulli_nll(p, x, logits=False, reduction="none", backend=backend)
    ours.sum().backward()
    log_p = torch.log(p.double()).clamp_min(-100)
    log_1mp = torch.log1p(-p.double()).clamp_min(-100)
    expected = -(x.detach().double() * log_p + (1 - x.detach().double()) * log_1mp)
    # atol: float32's subnormal results (p < 1e-38 with x = 0), which eager flushes.
    torch.testing.assert_close(ours.detach().double(), expected, rtol=2e-6, atol=1e-37)
    # The target gradient log(1 - p) - log p cancels near p = 1/2: error relative to
    # the terms' sizes.
    scale = log_p.abs() + log_1mp.abs()
    assert ((x.grad.double() - (log_1mp - log_p)).abs() <= 2e-6 * scale + 1e-30).all()


def _nan_cases():
    shape = (3, 5)
    g = torch.Generator().manual_seed(0)
    r = lambda: torch.rand(shape, generator=g, dtype=torch.float64)  # noqa: E731
    n = lambda: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        "kl_std_normal": (_kl, {"mu": n(), "logvar": n()}),
        "kl_prior": (_kl, {"mu": n(), "logvar": n(), "prior_mu": n(), "prior_logvar": n()}),
        "bce_logits": (_bce_logits, {"input": n() * 5, "target": r()}),
        "bce_probs": (_bce_probs, {"input": r(), "target": r()}),
        "gaussian_nll_learned": (_gnll, {"input": n(), "target": n(), "logvar": n()}),
        "mse": (vk.mse_loss, {"input": n(), "target": n()}),
        "laplace_learned": (_laplace, {"input": n(), "target": n(), "logscale": n()}),
        "continuous_bernoulli": (_cb, {"input": n() * 3, "target": r()}),
        "kl_prior_logsigma": (_kl_logsigma, {"mu": n(), "logvar": n(), "prior_mu": n(),
                                             "prior_logvar": n()}),
    }


NAN_CASES = _nan_cases()
NAN_PARAMS = [(c, name) for c, (_, ts) in NAN_CASES.items() for name in ts]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,nan_input", NAN_PARAMS, ids=[f"{c}-{n}" for c, n in NAN_PARAMS])
def test_nan_propagates_to_exactly_what_depends_on_it(case, nan_input, dtype, backend):
    call, tensors = NAN_CASES[case]
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors[nan_input][1, 3] = NAN
    per_element, gs = _run(call, tensors, dtype, backend, "none")
    nan_at = torch.zeros(3, 5, dtype=torch.bool)
    nan_at[1, 3] = True
    assert torch.equal(per_element.isnan(), nan_at)
    per_row, _ = _run(call, tensors, dtype, backend, "per_sample")
    assert torch.equal(per_row.isnan(), torch.tensor([False, True, False]))
    total, _ = _run(call, tensors, dtype, backend, "batchmean")
    assert total.isnan()
    # Gradients: NaN exactly where the float64 oracle's are (a gradient that does not
    # depend on the NaN input, like d/dtarget = -logits, stays finite), never elsewhere.
    rounded = {k: v.to(dtype).double() for k, v in tensors.items()}
    _, gs64 = _run(call, rounded, torch.float64, "torch", "none")
    for name, grad in gs.items():
        assert not grad[~nan_at].isnan().any(), name
        assert torch.equal(grad.isnan(), gs64[name].isnan()), name
    assert any(grad[1, 3].isnan() for grad in gs.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_through_elbo_and_sampling(backend):
    recon, x = torch.zeros(2, 4), torch.full((2, 4), 0.5)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    mu[1, 2] = NAN
    per_row = vk.elbo_loss(recon, x, mu, logvar, reduction="per_sample", backend=backend)
    assert torch.equal(per_row.isnan(), torch.tensor([False, True]))
    z = vk.reparameterize(mu, logvar, torch.ones(2, 3), backend=backend)
    assert torch.equal(z.isnan(), mu.isnan())
    x[0, 0] = NAN  # a NaN target passes the [0, 1] check and propagates
    per_row = vk.elbo_loss(recon, x, torch.zeros(2, 3), logvar, reduction="per_sample",
                           backend=backend)
    assert torch.equal(per_row.isnan(), torch.tensor([True, False]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_reparameterize_at_extremes(backend, dtype):
    if backend == "torch" and dtype == torch.bfloat16:
        pytest.skip("eager torch rounds every intermediate to bfloat16")
    mu = t(0, 1e20, 0, -3, 1e-30, 0)
    logvar = t(100, 0, -100, 80, -100, 170)
    eps = torch.stack([t(1, 1, -1, 0.5, 1, -2), t(-3, 0, 2, 1, 0, 0.25)])

    def call(mu, logvar, eps, reduction, backend):
        return vk.reparameterize(mu, logvar, eps, num_samples=2, backend=backend)

    check_against_oracle(call, {"mu": mu, "logvar": logvar, "eps": eps}, dtype, backend,
                         grads=["mu", "logvar"])


@requires_cpu
def test_float32_exp_overflow_window_matches_torch():
    """Documented limit: exp(logvar) overflows float32 for logvar > 88.72 though
    0.5*exp(logvar) would fit up to 89.4; torch's float32 formula does the same."""
    mu = torch.zeros(1, 3)
    logvar = torch.tensor([[88.7, 88.8, 89.3]], requires_grad=True)
    ours = vk.gaussian_kl(mu, logvar, reduction="none", backend="cpu")
    torch_fp32 = 0.5 * (mu * mu + torch.exp(logvar) - 1 - logvar)
    assert torch.equal(ours.isinf(), torch_fp32.isinf())
    assert ours[0, 0].isfinite() and ours[0, 1:].isinf().all()


def kl_near_the_prior(backend: str, dtype: torch.dtype, with_prior: bool, device="cpu"):
    """The KL, d logvar and d prior_logvar where logvar - prior_logvar = d is tiny (a
    collapsed latent dimension), against exact values (mpmath). The KL per element is
    then ~d^2/4, and the plain exp(d) - 1 - d leaves only rounding error: 8 % of the
    value at |d| ~ 1e-3 in float32 and 8 times the value at 1e-4; d logvar =
    0.5 (exp(d) - 1) is off by ~6e-8 / |d| of itself. Asserts both relative to their
    own size, from |d| = 1e-7 to past the kernels' series/exp switch at |d| = 1."""
    mpmath = pytest.importorskip("mpmath")
    magnitudes = torch.cat([torch.logspace(-7, 0.5, 61, dtype=torch.float64),
                            torch.tensor([0.999, 1.0, 1.001], dtype=torch.float64)])
    d = torch.cat([-magnitudes, magnitudes]).reshape(2, -1)
    prior_lv = torch.full_like(d, 0.3 if with_prior else 0.0).to(dtype)
    lv = (prior_lv.double() + d).to(dtype)
    d = lv.double() - prior_lv.double()  # exact: what the kernels see after rounding
    mu = torch.zeros_like(lv)
    leaves = [lv.to(device).requires_grad_()]
    if with_prior:
        leaves.append(prior_lv.to(device).requires_grad_())
        out = vk.gaussian_kl(mu.to(device), leaves[0], torch.zeros_like(leaves[1]), leaves[1],
                             reduction="none", backend=backend)
    else:
        out = vk.gaussian_kl(mu.to(device), leaves[0], reduction="none", backend=backend)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))

    def exact(f):
        return torch.tensor([float(f(mpmath.mpf(v))) for v in d.flatten().tolist()],
                            dtype=torch.float64).reshape(d.shape)

    with mpmath.workdps(40):
        kl = exact(lambda x: (mpmath.expm1(x) - x) / 2)
        d_logvar = exact(lambda x: mpmath.expm1(x) / 2)
    rtol = {torch.float32: 1e-6, torch.float64: 1e-13}[dtype]  # a few ulp
    torch.testing.assert_close(out.detach().cpu().double(), kl, rtol=rtol, atol=0)
    torch.testing.assert_close(grads[0].cpu().double(), d_logvar, rtol=rtol, atol=0)
    if with_prior:
        torch.testing.assert_close(grads[1].cpu().double(), -d_logvar, rtol=rtol, atol=0)


@requires_cpu
@pytest.mark.parametrize("with_prior", [False, True], ids=["standard-normal", "learned-prior"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kl_near_the_prior_is_accurate_relative_to_its_size(dtype, with_prior):
    kl_near_the_prior("cpu", dtype, with_prior)


# float16 local gradients are float32 (ops.local_grad_dtype): each case has a local
# gradient beyond float16's 65504 and a final gradient inside it.
FLOAT16_BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(
        b not in vk.available_backends() or (b != "cpu" and not torch.cuda.is_available()),
        reason=f"backend {b!r} cannot run float16 here"))
    for b in ("cpu", "cuda", "triton")
]


def _float16_local_overflow_cases():
    def kl(t, backend):  # d/d logvar = 0.5 (exp(12) - 1) = 81376.9, batchmean over 4
        return vk.gaussian_kl(t["mu"], t["logvar"], reduction="batchmean", backend=backend)

    def kl_scaled_sum(t, backend):  # the same local gradient, times an upstream 1/4
        return 0.25 * vk.gaussian_kl(t["mu"], t["logvar"], reduction="sum", backend=backend)

    def elbo(t, backend):  # the KL term's local gradients inside the fused elbo
        return vk.elbo_loss(t["recon"], t["x"], t["mu"], t["logvar"], likelihood="gaussian",
                            reduction="batchmean", backend=backend)

    def learned_var(t, backend):  # d/d input = (input - x) exp(-logvar) = 2 exp(11) = 119748
        return vk.gaussian_nll(t["input"], t["x"], logvar=t["nll_logvar"], reduction="mean",
                               backend=backend)

    latent = {"mu": torch.zeros(4, 1), "logvar": torch.full((4, 1), 12.0)}
    recon = {"recon": torch.linspace(-1, 1, 8).reshape(4, 2), "x": torch.zeros(4, 2)}
    nll = {"input": torch.full((2, 2), 2.0), "x": torch.zeros(2, 2),
           "nll_logvar": torch.full((2, 2), -11.0)}
    return [
        pytest.param(kl, latent, id="kl-batchmean"),
        pytest.param(kl_scaled_sum, latent, id="kl-sum-times-upstream"),
        pytest.param(elbo, {**recon, **latent}, id="elbo-batchmean"),
        pytest.param(learned_var, nll, id="gaussian-nll-learned-var-mean"),
    ]


@pytest.mark.parametrize("backend", FLOAT16_BACKENDS)
@pytest.mark.parametrize("call,tensors", _float16_local_overflow_cases())
def test_float16_gradient_finite_when_only_the_local_gradient_overflows(call, tensors, backend):
    device = "cpu" if backend == "cpu" else "cuda"
    ours = {k: v.to(device, torch.float16).requires_grad_() for k, v in tensors.items()}
    call(ours, backend).backward()
    oracle = {k: v.double().requires_grad_() for k, v in tensors.items()}
    call(oracle, "torch").backward()
    for name in tensors:
        true = oracle[name].grad
        assert true.abs().max() < 65504  # the case is meant to fit float16
        got = ours[name].grad
        assert got.dtype == torch.float16 and got.isfinite().all(), (name, got)
        torch.testing.assert_close(got.double().cpu(), true, **TOLERANCES[torch.float16])


@requires_cpu
@pytest.mark.parametrize("op", ["gaussian_kl", "reconstruction_nll"])
def test_float16_local_gradients_are_float32_and_the_others_keep_their_dtype(op):
    """The raw op's local-gradient outputs: float32 for float16 inputs (see above),
    the input dtype otherwise; loss_backward returns the upstream gradient's dtype."""
    for dtype, local_dtype in [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                               (torch.float32, torch.float32), (torch.float64, torch.float64)]:
        a, b = torch.rand(3, 4, dtype=dtype), torch.rand(3, 4, dtype=dtype)
        raw = getattr(torch.ops.vae_kernels, op)
        if op == "gaussian_kl":
            outputs = raw(a, b, None, None, 2, 1, [True, True, False, False])
        else:
            outputs = raw(a, b, a, 0.0, K.GAUSSIAN_LEARNED_VAR, 2, 1, [True, True, True])
        assert outputs[0].dtype == dtype
        assert [g.dtype for g in outputs[1:]] == [local_dtype] * (len(outputs) - 1), dtype
        grad = torch.ops.vae_kernels.loss_backward(outputs[1], torch.ones((), dtype=dtype), 2)
        assert grad.dtype == dtype
