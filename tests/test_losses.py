"""The loss ops (KL, Bernoulli, Gaussian, Laplace and continuous-Bernoulli NLL, squared
error) of the C++ CPU backend
against the float64 oracle (vae_kernels.reference), in value and gradient, for every
dtype, reduction and option; gradcheck in float64; torch's own losses as a second oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vae_kernels as vk
from vae_kernels import reference

from conftest import (
    ALL_DTYPES,
    REDUCTIONS,
    TOLERANCES,
    assert_close_to_oracle,
    requires_cpu_backend,
    upstream_weights,
)

pytestmark = requires_cpu_backend

SHAPES = [(1,), (7, 13), (41, 401, 3), (5, 4, 3, 2), (3, 5000)]  # (3, 5000) spans two chunks


def make_case(op: str, shape, dtype, option, seed=0):
    """Inputs (as float64 leaves and in ``dtype``) and the call for one loss op."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.rand(shape, generator=g, dtype=torch.float64)  # noqa: E731
    randn = lambda: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    if op == "gaussian_kl":
        tensors = {"mu": randn(), "logvar": randn() * 0.7}
        if option.startswith("logsigma"):  # log sigma: half the log-variance's spread
            tensors["logvar"] = tensors["logvar"] * 0.5
        if option in ("prior", "logsigma_prior"):
            tensors["prior_mu"] = randn() * 0.5
            tensors["prior_logvar"] = randn() * 0.5
        elif option == "broadcast_prior":  # a learned prior of shape (last dim,)
            tensors["prior_mu"] = torch.randn(shape[-1:], generator=g, dtype=torch.float64)
            tensors["prior_logvar"] = torch.randn(shape[-1:], generator=g, dtype=torch.float64) * 0.3
        scale = "logsigma" if option.startswith("logsigma") else "logvar"
        call = lambda t, **kw: vk.gaussian_kl(  # noqa: E731
            t["mu"], t["logvar"], t.get("prior_mu"), t.get("prior_logvar"), scale=scale, **kw)
    elif op == "bernoulli_nll":
        if option == "logits":
            tensors = {"input": randn() * 3, "target": rand()}
        else:  # probabilities, away from 0 and 1 so float16 keeps them inside (0, 1)
            tensors = {"input": rand() * 0.9 + 0.05, "target": rand().round()}
        logits = option == "logits"
        call = lambda t, **kw: vk.bernoulli_nll(t["input"], t["target"], logits=logits, **kw)  # noqa: E731
    elif op == "gaussian_nll":
        tensors = {"input": randn(), "target": randn()}
        if option == "learned":
            tensors["logvar"] = randn() * 0.5
        elif option == "broadcast_learned":
            tensors["logvar"] = torch.randn(shape[-1:], generator=g, dtype=torch.float64) * 0.5
        fixed = -0.3 if option == "fixed" else None
        call = lambda t, **kw: vk.gaussian_nll(  # noqa: E731
            t["input"], t["target"], t.get("logvar", fixed), **kw)
    elif op == "mse_loss":
        tensors = {"input": randn(), "target": randn()}
        call = lambda t, **kw: vk.mse_loss(t["input"], t["target"], **kw)  # noqa: E731
    elif op == "laplace_nll":
        tensors = {"input": randn(), "target": randn()}
        if option == "learned":
            tensors["logscale"] = randn() * 0.5
        elif option == "broadcast_learned":  # a learned scalar, as latent diffusion's logvar
            tensors["logscale"] = torch.randn((), generator=g, dtype=torch.float64) * 0.5
        fixed = 0.4 if option == "fixed" else None
        call = lambda t, **kw: vk.laplace_nll(  # noqa: E731
            t["input"], t["target"], t.get("logscale", fixed), **kw)
    elif op == "continuous_bernoulli_nll":
        # Logits on both sides of the series' |l| = 1, targets in [0, 1].
        tensors = {"input": randn() * 3, "target": rand()}
        call = lambda t, **kw: vk.continuous_bernoulli_nll(t["input"], t["target"], **kw)  # noqa: E731
    else:
        raise AssertionError(op)
    return tensors, call


CASES = [
    ("gaussian_kl", "std_normal"),
    ("gaussian_kl", "prior"),
    ("gaussian_kl", "broadcast_prior"),
    ("gaussian_kl", "logsigma_std_normal"),
    ("gaussian_kl", "logsigma_prior"),
    ("bernoulli_nll", "logits"),
    ("bernoulli_nll", "probs"),
    ("gaussian_nll", "fixed"),
    ("gaussian_nll", "learned"),
    ("gaussian_nll", "broadcast_learned"),
    ("mse_loss", "plain"),
    ("laplace_nll", "fixed"),
    ("laplace_nll", "learned"),
    ("laplace_nll", "broadcast_learned"),
    ("continuous_bernoulli_nll", "logits"),
]
CASE_IDS = [f"{op}-{opt}" for op, opt in CASES]


def _value_and_grads(call, tensors, dtype, reduction, backend, grad_names):
    """Loss and gradients (w.r.t. grad_names) with a non-uniform upstream gradient."""
    leaves = {k: v.detach().to(dtype).requires_grad_(k in grad_names) for k, v in tensors.items()}
    out = call(leaves, reduction=reduction, backend=backend)
    weights = upstream_weights(out)
    grads = torch.autograd.grad((out * weights).sum(), [leaves[k] for k in grad_names])
    return out, grads, leaves


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_matches_float64_oracle(op, option, dtype, reduction):
    shape = (41, 401, 3)
    tensors, call = make_case(op, shape, dtype, option)
    grad_names = [k for k in tensors if not (op == "bernoulli_nll" and k == "target")]
    out, grads, leaves = _value_and_grads(call, tensors, dtype, reduction, "cpu", grad_names)
    # The oracle sees the same rounded inputs, in float64.
    rounded = {k: v.detach().double() for k, v in leaves.items()}
    out64, grads64, _ = _value_and_grads(call, rounded, torch.float64, reduction, "torch", grad_names)
    assert out.dtype == dtype and out.shape == out64.shape
    n_summed = 1 if reduction == "none" else math.prod(shape) / (shape[0] if reduction == "per_sample" else 1)
    assert_close_to_oracle(out, out64, dtype, scale=n_summed if reduction in ("sum", "per_sample") else 1)
    for name, grad, grad64 in zip(grad_names, grads, grads64):
        assert grad.dtype == dtype and grad.shape == leaves[name].shape, name
        assert_close_to_oracle(grad, grad64, dtype, scale=max(1, grad64.abs().max().item()))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_odd_shapes(op, option, shape):
    tensors, call = make_case(op, shape, torch.float32, option, seed=1)
    for reduction in ("none", "per_sample", "batchmean"):
        out = call({k: v.float() for k, v in tensors.items()}, reduction=reduction, backend="cpu")
        expected = call(tensors, reduction=reduction, backend="torch")
        assert_close_to_oracle(out, expected, torch.float32, scale=100)


@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_non_contiguous_inputs(op, option):
    tensors, call = make_case(op, (13, 21), torch.float64, option, seed=2)
    # Each 2-D input as the transpose of a contiguous leaf: same values, strided layout.
    leaves = {k: (v.t().contiguous() if v.dim() == 2 else v.clone()).requires_grad_()
              for k, v in tensors.items()}
    strided = {k: v.t() if v.dim() == 2 else v for k, v in leaves.items()}
    assert not any(v.is_contiguous() for v in strided.values() if v.dim() == 2)
    out = call(strided, reduction="per_sample", backend="cpu")
    oracle_leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    expected = call(oracle_leaves, reduction="per_sample", backend="torch")
    torch.testing.assert_close(out, expected)
    weights = upstream_weights(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for k, v in leaves.items():
        oracle_grad = oracle_leaves[k].grad
        torch.testing.assert_close(v.grad, oracle_grad.t() if v.dim() == 2 else oracle_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_gradcheck(op, option, reduction):
    tensors, call = make_case(op, (3, 5), torch.float64, option, seed=3)
    names = list(tensors)
    leaves = [tensors[k].clone().requires_grad_() for k in names]
    weights = None

    def fn(*values):
        nonlocal weights
        out = call(dict(zip(names, values)), reduction=reduction, backend="cpu")
        if weights is None:
            weights = upstream_weights(out, seed=4)
        return out * weights  # a non-uniform upstream gradient reaches the op

    if op == "bernoulli_nll" and option == "probs":
        # Targets as soft labels away from 0/1 so the finite differences stay inside [0, 1].
        leaves[1] = (leaves[1].detach() * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(fn, leaves)


def test_bernoulli_probs_equals_torch_binary_cross_entropy():
    g = torch.Generator().manual_seed(5)
    p = torch.rand(64, 784, generator=g).clamp(1e-6, 1 - 1e-6)
    p[0, :5] = torch.tensor([0.0, 1.0, 0.0, 1.0, 1e-30])  # exercises the -100 clamp
    x = torch.rand(64, 784, generator=g).round()
    for reduction in ("none", "sum", "mean"):
        a = p.clone().requires_grad_()
        b = p.clone().requires_grad_()
        ours = vk.bernoulli_nll(a, x, logits=False, reduction=reduction)
        theirs = F.binary_cross_entropy(b, x, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_bernoulli_logits_equals_torch_bce_with_logits():
    g = torch.Generator().manual_seed(6)
    l = torch.randn(32, 100, generator=g) * 20
    x = torch.rand(32, 100, generator=g)
    for reduction in ("none", "sum", "mean"):
        ours = vk.bernoulli_nll(l, x, reduction=reduction)
        theirs = F.binary_cross_entropy_with_logits(l, x, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_mse_loss_equals_torch_mse_loss():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, 16, 33, generator=g)
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(vk.mse_loss(a, b, reduction=reduction),
                                   F.mse_loss(a, b, reduction=reduction))


def test_gaussian_nll_equals_torch_distributions():
    g = torch.Generator().manual_seed(8)
    m, x = torch.randn(2, 10, 7, generator=g, dtype=torch.float64)
    logvar = torch.randn(7, generator=g, dtype=torch.float64)
    expected = -torch.distributions.Normal(m, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(vk.gaussian_nll(m, x, logvar, reduction="none"), expected)
    expected_fixed = -torch.distributions.Normal(m, math.exp(0.5 * 1.5)).log_prob(x)
    torch.testing.assert_close(vk.gaussian_nll(m, x, 1.5, reduction="none"), expected_fixed)


def test_gaussian_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(9)
    mu, lv, pm, plv = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    p = torch.distributions.Normal(pm, torch.exp(0.5 * plv))
    torch.testing.assert_close(vk.gaussian_kl(mu, lv, pm, plv, reduction="none"),
                               torch.distributions.kl_divergence(q, p))
    std = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(vk.gaussian_kl(mu, lv, reduction="per_sample"),
                               torch.distributions.kl_divergence(q, std).sum(1))
    # Only one prior argument: the other one means 0.
    torch.testing.assert_close(vk.gaussian_kl(mu, lv, prior_mu=pm, reduction="none"),
                               reference.gaussian_kl_elementwise(mu, lv, pm, torch.zeros_like(mu)))


def test_target_gradients():
    """Targets that require grad get their true gradient (d/dx), for every loss."""
    g = torch.Generator().manual_seed(10)
    for op, option in [c for c in CASES if c[0] != "gaussian_kl"]:
        tensors, call = make_case(op, (4, 6), torch.float64, option, seed=11)
        for k, v in tensors.items():
            v.requires_grad_(k == "target")
        if op in ("bernoulli_nll", "continuous_bernoulli_nll"):  # stay inside [0, 1]
            tensors["target"] = (tensors["target"].detach() * 0.8 + 0.1).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda t: call({**tensors, "target": t}, reduction="sum", backend="cpu"),
            (tensors["target"],)), (op, option)
    del g


def test_empty_batch_follows_torch():
    empty = torch.empty(0, 5)
    assert vk.mse_loss(empty, empty, reduction="sum").item() == 0.0
    assert vk.mse_loss(empty, empty, reduction="per_sample").shape == (0,)
    assert math.isnan(vk.mse_loss(empty, empty, reduction="mean").item())
    assert math.isnan(F.mse_loss(empty, empty, reduction="mean").item())


def test_float32_sum_accuracy_over_large_tensor():
    """Fixed-order chunked sums stay float64-accurate where a naive float32 sum drifts."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(64, 200_000, generator=g)
    ours = vk.mse_loss(x, torch.zeros_like(x), reduction="sum")
    exact = (x.double() ** 2).sum()
    assert abs(ours.double() - exact) / exact < 1e-6


def test_reductions_are_consistent():
    g = torch.Generator().manual_seed(13)
    l = torch.randn(9, 3, 11, generator=g, dtype=torch.float64)
    x = torch.rand(9, 3, 11, generator=g, dtype=torch.float64)
    none = vk.bernoulli_nll(l, x, reduction="none")
    torch.testing.assert_close(vk.bernoulli_nll(l, x, reduction="sum"), none.sum())
    torch.testing.assert_close(vk.bernoulli_nll(l, x, reduction="mean"), none.mean())
    torch.testing.assert_close(vk.bernoulli_nll(l, x, reduction="batchmean"), none.sum() / 9)
    torch.testing.assert_close(vk.bernoulli_nll(l, x, reduction="per_sample"), none.sum((1, 2)))
    assert TOLERANCES  # the tolerance table is shared with the oracle tests


# ------------------------------------------------------------------ Laplace, continuous Bernoulli

BACKENDS_HERE = [b for b in ("cpu", "triton", "torch") if b in vk.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_laplace_equals_torch_distributions_and_l1(backend):
    g = torch.Generator().manual_seed(12)
    m, x = torch.randn(2, 6, 9, generator=g, dtype=torch.float64)
    s = torch.randn(9, generator=g, dtype=torch.float64) * 0.5
    expected = -torch.distributions.Laplace(m, torch.exp(s)).log_prob(x)
    torch.testing.assert_close(vk.laplace_nll(m, x, s, reduction="none", backend=backend), expected)
    # At unit scale it is the L1 loss plus log 2 per element.
    torch.testing.assert_close(
        vk.laplace_nll(m, x, reduction="sum", backend=backend),
        F.l1_loss(m, x, reduction="sum") + math.log(2) * m.numel(),
    )


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_laplace_gradient_at_a_zero_residual_is_zero_as_l1_loss(backend):
    m = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.5, 0.0, 2.0]], dtype=torch.float64)
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    grad_m, grad_s = torch.autograd.grad(vk.laplace_nll(m, x, s, backend=backend), (m, s))
    b_inv = math.exp(-0.3)
    torch.testing.assert_close(grad_m, torch.tensor([[0.0, -b_inv, 0.0]], dtype=torch.float64))
    # d/ds of (|r| e^-s + s), summed over the 3 elements of the one datapoint.
    torch.testing.assert_close(grad_s, torch.tensor(3 - 1.0 * b_inv, dtype=torch.float64))
    m32 = m.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(vk.laplace_nll(m32, x.float(), backend=backend), m32)
    (expected,) = torch.autograd.grad(F.l1_loss(m32, x.float(), reduction="sum"), m32)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_latent_diffusion_nll_is_laplace_minus_log2(backend):
    """latent-diffusion's LPIPSWithDiscriminator: nll = |x - x_rec| / exp(logvar) + logvar,
    summed and divided by the batch (its weighted_nll_loss without weights)."""
    g = torch.Generator().manual_seed(13)
    x, x_rec = torch.randn(2, 4, 3, 8, 8, generator=g)
    logvar = torch.nn.Parameter(torch.tensor(0.2))
    theirs = torch.sum(torch.abs(x.contiguous() - x_rec.contiguous()) / torch.exp(logvar) + logvar)
    theirs = theirs / x.shape[0]
    ours = vk.laplace_nll(x_rec, x, logvar, backend=backend) - math.log(2) * x[0].numel()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    (ours_grad,) = torch.autograd.grad(ours, logvar)
    (their_grad,) = torch.autograd.grad(theirs, logvar)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-4)


def _continuous_bernoulli_exact(logit: float, target: float) -> float:
    """-log CB(target; sigmoid(logit)) with 60 digits (mpmath)."""
    import mpmath

    with mpmath.workdps(60):
        l, t = mpmath.mpf(logit), mpmath.mpf(target)
        log_c = mpmath.log(2) if logit == 0 else mpmath.log(l / mpmath.tanh(l / 2))
        softplus = lambda z: mpmath.log1p(mpmath.exp(z))  # noqa: E731
        return float(t * softplus(-l) + (1 - t) * softplus(l) - log_c)


CB_LOGITS = [0.0, 1e-7, -1e-4, 1e-2, 0.5, -0.999, 1.0, 1.001, 3.0, -20.0, 36.0, 80.0, -1e3, 1e4, -1e4]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_continuous_bernoulli_is_accurate_at_every_logit(backend, dtype):
    """Against exact values, near 0 (where log C is 0/0) and out to |logit| = 1e4 (where
    torch.distributions, which clamps probabilities, is off by nats)."""
    logits = torch.tensor(CB_LOGITS, dtype=dtype)
    for target in (0.0, 0.3, 1.0):
        x = torch.full_like(logits, target)
        ours = vk.continuous_bernoulli_nll(logits[:, None], x[:, None], reduction="none",
                                           backend=backend)[:, 0]
        exact = torch.tensor([_continuous_bernoulli_exact(float(l), target) for l in logits],
                             dtype=torch.float64)
        rtol, atol = (4e-7, 1e-7) if dtype == torch.float32 else (1e-13, 1e-15)
        torch.testing.assert_close(ours.double(), exact, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_continuous_bernoulli_gradient_and_torch_distributions(backend):
    g = torch.Generator().manual_seed(14)
    l = (torch.randn(5, 40, generator=g, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(5, 40, generator=g, dtype=torch.float64)
    ours = vk.continuous_bernoulli_nll(l, x, reduction="none", backend=backend)
    # torch's distribution is exact for moderate logits (outside its Taylor window).
    theirs = -torch.distributions.ContinuousBernoulli(logits=l.detach()).log_prob(x)
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(ours.sum(), l)
    lv = l.detach()
    expected = torch.sigmoid(lv) - x - (1 / lv - 1 / torch.sinh(lv))
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_continuous_bernoulli_targets_must_lie_in_unit_interval(backend):
    l = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        vk.continuous_bernoulli_nll(l, torch.full((2, 3), 1.5), backend=backend)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        vk.elbo_loss(l, torch.full((2, 3), -0.5), l, l, likelihood="continuous_bernoulli",
                     backend=backend)


# ------------------------------------------------------------------ scales as log sigma


def _vdvae_gaussian_analytical_kl(mu1, mu2, logsigma1, logsigma2):
    # openai/vdvae vae_helpers.py, as written there.
    return -0.5 + logsigma2 - logsigma1 + 0.5 * (logsigma1.exp() ** 2 + (mu1 - mu2) ** 2) / (
        logsigma2.exp() ** 2
    )


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_logsigma_kl_equals_vdvae_gaussian_analytical_kl(backend, dtype):
    g = torch.Generator().manual_seed(15)
    mu1, mu2 = torch.randn(2, 8, 16, 4, 4, generator=g, dtype=dtype)
    s1, s2 = (torch.randn(2, 8, 16, 4, 4, generator=g, dtype=dtype) * 0.5).unbind(0)
    leaves = [t.clone().requires_grad_() for t in (mu1, s1, mu2, s2)]
    ours = vk.gaussian_kl(leaves[0], leaves[1], leaves[2], leaves[3], scale="logsigma",
                          reduction="none", backend=backend)
    theirs = _vdvae_gaussian_analytical_kl(*(t.double() for t in (mu1, mu2, s1, s2)))
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(ours.double(), theirs, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    weights = upstream_weights(ours)
    grads = torch.autograd.grad((ours * weights).sum(), leaves)
    ref = [t.double().requires_grad_() for t in (mu1, s1, mu2, s2)]
    ref_out = _vdvae_gaussian_analytical_kl(ref[0], ref[2], ref[1], ref[3])
    expected = torch.autograd.grad((ref_out * weights.double()).sum(), ref)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.double(), want, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("num_samples", [None, 3])
def test_logsigma_sample_equals_the_logvar_sample_of_twice_it(backend, num_samples):
    g = torch.Generator().manual_seed(16)
    mu, s = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (mu, s)]
    z = vk.reparameterize(leaves[0], leaves[1], scale="logsigma", num_samples=num_samples,
                          generator=torch.Generator().manual_seed(3), backend=backend)
    z_lv = vk.reparameterize(mu, 2 * s, num_samples=num_samples,
                             generator=torch.Generator().manual_seed(3), backend=backend)
    torch.testing.assert_close(z, z_lv, rtol=1e-14, atol=1e-14)
    weights = upstream_weights(z)
    grad_mu, grad_s = torch.autograd.grad((z * weights).sum(), leaves)
    std = torch.exp(s)
    eps = (z_lv - mu) / std
    torch.testing.assert_close(grad_mu, weights.sum(0) if num_samples else weights)
    expected = (weights * eps * std).sum(0) if num_samples else weights * eps * std
    torch.testing.assert_close(grad_s, expected)
    # And with the caller's noise.
    e = torch.randn(mu.shape, generator=g, dtype=torch.float64)
    z_e = vk.reparameterize(mu, s, e, scale="logsigma", backend=backend)
    torch.testing.assert_close(z_e, mu + torch.exp(s) * e)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_logsigma_elbo_and_unknown_scales(backend):
    g = torch.Generator().manual_seed(17)
    recon, x = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.rand(4, 9, generator=g, dtype=torch.float64)
    mu, s = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    ours = vk.elbo_loss(recon, x, mu, s, scale="logsigma", return_components=True, backend=backend)
    expected = vk.elbo_loss(recon, x, mu, 2 * s, return_components=True, backend="torch")
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)
    for call in (lambda: vk.gaussian_kl(mu, s, scale="log_sigma", backend=backend),
                 lambda: vk.reparameterize(mu, s, scale="sigma", backend=backend),
                 lambda: vk.elbo_loss(recon, x, mu, s, scale=None, backend=backend)):
        with pytest.raises(ValueError, match="scale must be one of \\('logvar', 'logsigma'\\)"):
            call()
