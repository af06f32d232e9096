"""The Triton loss kernels (KL, Bernoulli, Gaussian, squared error) against the
float64 oracle (vae_kernels.reference), in float32 and float64, for every reduction,
with their hand-written backward passes checked by gradcheck in float64.

On a machine without a GPU these run through the Triton interpreter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vae_kernels as vk
from vae_kernels.schema import LossKind as K

from triton_testing import (
    DEVICE,
    INTERPRETER_DTYPES,
    REDUCTIONS,
    SHAPES,
    SMALL_SHAPES,
    TOLERANCES,
    assert_close_to_oracle,
    rand,
    randn,
    requires_triton,
    upstream_weights,
    weighted_sum,
)

pytestmark = requires_triton


def _loss_case(name, shape, dtype):
    """(loss(backend, reduction, *tensors), tensors): every tensor is differentiable."""
    row_shape = shape[1:]
    if name == "kl":
        return (lambda b, r, mu, lv: vk.gaussian_kl(mu, lv, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2)])
    if name == "kl_prior":
        return (lambda b, r, mu, lv, pm, plv: vk.gaussian_kl(mu, lv, pm, plv, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn(shape, dtype, 3),
                 randn(shape, dtype, 4, 0.5)])
    if name == "kl_broadcast_prior":  # a learned prior of shape (J,), broadcast over the batch
        return (lambda b, r, mu, lv, pm, plv: vk.gaussian_kl(mu, lv, pm, plv, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn(row_shape, dtype, 3),
                 randn(row_shape, dtype, 4, 0.5)])
    if name == "bernoulli_logits":
        return (lambda b, r, l, x: vk.bernoulli_nll(l, x, reduction=r, backend=b),
                [randn(shape, dtype, 1, 3.0), rand(shape, dtype, 2)])
    if name == "bernoulli_probs":
        return (lambda b, r, p, x: vk.bernoulli_nll(p, x, logits=False, reduction=r, backend=b),
                [rand(shape, dtype, 1, 0.05, 0.95), rand(shape, dtype, 2)])
    if name == "gaussian_fixed":
        return (lambda b, r, m, x: vk.gaussian_nll(m, x, 0.3, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2)])
    if name == "gaussian_learned":
        return (lambda b, r, m, x, lv: vk.gaussian_nll(m, x, lv, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn(shape, dtype, 3, 0.5)])
    if name == "gaussian_broadcast_logvar":  # one learned log-variance per feature
        return (lambda b, r, m, x, lv: vk.gaussian_nll(m, x, lv, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn(row_shape, dtype, 3, 0.5)])
    if name == "mse":
        return (lambda b, r, m, x: vk.mse_loss(m, x, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2)])
    if name == "laplace_fixed":
        return (lambda b, r, m, x: vk.laplace_nll(m, x, 0.4, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2)])
    if name == "laplace_learned":
        return (lambda b, r, m, x, s: vk.laplace_nll(m, x, s, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn(shape, dtype, 3, 0.5)])
    if name == "laplace_scalar_logscale":  # latent diffusion's learned scalar
        return (lambda b, r, m, x, s: vk.laplace_nll(m, x, s, reduction=r, backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2), randn((), dtype, 3, 0.5)])
    if name == "kl_logsigma":
        return (lambda b, r, mu, s: vk.gaussian_kl(mu, s, reduction=r, scale="logsigma", backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2, 0.5)])
    if name == "kl_prior_logsigma":
        return (lambda b, r, mu, s, pm, ps: vk.gaussian_kl(mu, s, pm, ps, reduction=r,
                                                          scale="logsigma", backend=b),
                [randn(shape, dtype, 1), randn(shape, dtype, 2, 0.5), randn(shape, dtype, 3),
                 randn(shape, dtype, 4, 0.25)])
    if name == "continuous_bernoulli":
        return (lambda b, r, l, x: vk.continuous_bernoulli_nll(l, x, reduction=r, backend=b),
                [randn(shape, dtype, 1, 3.0), rand(shape, dtype, 2)])
    raise ValueError(name)


LOSSES = ["kl", "kl_prior", "kl_broadcast_prior", "bernoulli_logits", "bernoulli_probs",
          "gaussian_fixed", "gaussian_learned", "gaussian_broadcast_logvar", "mse",
          "laplace_fixed", "laplace_learned", "laplace_scalar_logscale", "continuous_bernoulli",
          "kl_logsigma", "kl_prior_logsigma"]


def _leaves(tensors, dtype=None):
    return [t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def _sum_scale(reduction, shape):
    """Widening of the absolute tolerance for results that are sums of many terms."""
    return float(math.prod(shape)) if reduction in ("sum", "per_sample") else 1.0


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_and_gradients_match_oracle(name, shape, reduction, dtype):
    loss_fn, tensors = _loss_case(name, shape, dtype)
    leaves, oracle_leaves = _leaves(tensors), _leaves(tensors, torch.float64)

    loss = loss_fn("triton", reduction, *leaves)
    expected = loss_fn("torch", reduction, *oracle_leaves)
    assert loss.shape == expected.shape
    assert_close_to_oracle(loss, expected, dtype, _sum_scale(reduction, shape))

    weights = upstream_weights(loss.shape, dtype)
    grads = torch.autograd.grad((loss * weights).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * weights.double()).sum(), oracle_leaves)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.shape == expected_grad.shape
        # Broadcast inputs (a prior, a log-variance) sum their gradient over the batch.
        assert_close_to_oracle(grad, expected_grad, dtype, _sum_scale("sum", shape[:1]))


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_elementwise(name):
    """Full Jacobian of reduction="none" under a non-uniform upstream gradient: every
    local gradient of every input."""
    loss_fn, tensors = _loss_case(name, (3, 5), torch.float64)
    assert torch.autograd.gradcheck(
        lambda *xs: weighted_sum(loss_fn("triton", "none", *xs)), _leaves(tensors)
    )


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "per_sample"])
@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_reductions(name, reduction):
    """The reduced forms (per-row and scalar upstream gradients, divisors); fast mode
    (a random projection of the Jacobian) keeps the interpreter affordable."""
    loss_fn, tensors = _loss_case(name, (2, 3, 7), torch.float64)
    assert torch.autograd.gradcheck(
        lambda *xs: weighted_sum(loss_fn("triton", reduction, *xs)), _leaves(tensors),
        fast_mode=True,
    )


@pytest.mark.parametrize("name", ["kl_prior", "bernoulli_probs", "gaussian_learned"])
def test_gradcheck_across_blocks(name):
    """A shape whose tiles cross a column-block boundary, per-row reduction."""
    loss_fn, tensors = _loss_case(name, (2, 300), torch.float64)
    assert torch.autograd.gradcheck(
        lambda *xs: weighted_sum(loss_fn("triton", "per_sample", *xs)), _leaves(tensors),
        fast_mode=True,
    )


@pytest.mark.filterwarnings("ignore:.*encountered in log:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
def test_bernoulli_probs_matches_binary_cross_entropy_at_0_and_1(dtype):
    """PyTorch's -100 log clamp and 1e-12 gradient floor, at p exactly 0 and 1."""
    probs = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.3], [1e-30, 1.0 - 1e-7, 0.5, 0.999, 0.0]],
                         dtype=dtype, device=DEVICE, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.5, 1.0, 0.25]],
                          dtype=dtype, device=DEVICE, requires_grad=True)
    loss = vk.bernoulli_nll(probs, target, logits=False, reduction="none", backend="triton")
    expected = F.binary_cross_entropy(probs, target, reduction="none")
    torch.testing.assert_close(loss, expected, **TOLERANCES[dtype])
    weights = upstream_weights(loss.shape, dtype)
    grad_probs, grad_target = torch.autograd.grad((loss * weights).sum(), (probs, target))
    expected_grad_probs, = torch.autograd.grad((expected * weights).sum(), probs)
    # PyTorch floors p (1 - p) at the float 1e-12 in every dtype, the contract at the
    # double 1e-12 (relative difference 4e-9, visible in float64 where p is 0 or 1).
    torch.testing.assert_close(grad_probs, expected_grad_probs, rtol=max(TOLERANCES[dtype]["rtol"], 1e-8), atol=0.0)
    # d target: the contract's clamped logs (csrc/math/bernoulli_nll.h); PyTorch's own
    # target gradient, -logit(p), is infinite at p = 0 and 1.
    p = probs.detach().double()
    clamped = torch.clamp_min(torch.log1p(-p), -100) - torch.clamp_min(torch.log(p), -100)
    assert torch.isfinite(grad_target).all()
    assert_close_to_oracle(grad_target, clamped * weights.double(), dtype, scale=100.0)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
def test_bernoulli_logits_stable_at_large_logits(dtype):
    """log1p(exp(-|l|)) for |l| up to 100: finite, and accurate where exp(-|l|) is far
    below the rounding of 1 + u (the kernels' log1p, written without libdevice)."""
    logits = torch.tensor([[-100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0]], dtype=dtype, device=DEVICE)
    target = torch.tensor([[0.0, 0.0, 0.3, 0.5, 1.0, 1.0, 1.0]], dtype=dtype, device=DEVICE)
    loss = vk.bernoulli_nll(logits, target, reduction="none", backend="triton")
    # The oracle's log1p (F.binary_cross_entropy_with_logits computes log(1 + u), which
    # rounds to 0 at l = -100 and is off by 1% at l = -30 in float64).
    expected = vk.bernoulli_nll(logits.double(), target.double(), reduction="none", backend="torch")
    assert torch.isfinite(loss).all()
    # Entries like log1p(exp(-30)) ~ 9.4e-14 are checked relative to their own size
    # (below the smallest normal number a GPU may flush to zero).
    torch.testing.assert_close(loss.double(), expected, rtol=TOLERANCES[dtype]["rtol"],
                               atol=torch.finfo(dtype).tiny)


def test_log1p_matches_torch_log1p():
    """The Goldberg log1p in vae_kernels/triton/math.py, through the Bernoulli-probs loss
    term log1p(-p) for p from 1e-300 to 1 - 1e-16 in float64."""
    p = torch.tensor([[1e-300, 1e-20, 1e-12, 1e-8, 1e-3, 0.1, 0.5, 0.9, 1 - 1e-8, 1 - 1e-16]],
                     dtype=torch.float64, device=DEVICE)
    target = torch.zeros_like(p)  # loss = -log1p(-p)
    loss = vk.bernoulli_nll(p, target, logits=False, reduction="none", backend="triton")
    torch.testing.assert_close(loss, -torch.log1p(-p), rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("layout", ["transposed", "strided_slice", "permuted_3d", "expanded"])
def test_non_contiguous_inputs(layout):
    base = randn((6, 8), torch.float64, 1)
    other = randn((6, 8), torch.float64, 2)
    if layout == "transposed":  # strides (1, 6): a (rows, row_len) view, no copy
        mean, target = base.t(), other.t()
    elif layout == "strided_slice":  # strides (8, 2)
        mean, target = base[:, ::2], other[:, ::2]
    elif layout == "permuted_3d":  # no (rows, row_len) view exists: copied
        mean = base.reshape(2, 3, 8).permute(1, 0, 2)
        target = other.reshape(2, 3, 8).permute(1, 0, 2)
    else:  # stride 0 in the batch dimension
        mean, target = base[:1].expand(6, 8), other
    assert not mean.is_contiguous()
    for reduction in ("none", "per_sample", "sum"):
        loss = vk.gaussian_nll(mean, target, 0.1, reduction=reduction, backend="triton")
        expected = vk.gaussian_nll(mean, target, 0.1, reduction=reduction, backend="torch")
        torch.testing.assert_close(loss, expected, **TOLERANCES[torch.float64])


def test_only_requested_gradients_are_computed():
    """Inputs that do not require grad get None; the forward computes no local gradient
    for them (grad_mask), and the loss is the same either way."""
    logits = randn((3, 5), torch.float64, 1).requires_grad_()
    target = rand((3, 5), torch.float64, 2)
    loss = vk.bernoulli_nll(logits, target, reduction="sum", backend="triton")
    grad_logits, = torch.autograd.grad(loss, logits)
    expected = torch.sigmoid(logits.detach()) - target
    torch.testing.assert_close(grad_logits, expected, **TOLERANCES[torch.float64])
    ops = torch.ops.vae_kernels_triton
    _, local_logits, local_target, local_scale = ops.reconstruction_nll(
        logits.detach(), target, None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [True, False, False]
    )
    assert local_target.numel() == 0 and local_scale.numel() == 0
    torch.testing.assert_close(local_logits, expected, **TOLERANCES[torch.float64])


@pytest.mark.filterwarnings("ignore:.*encountered in log:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("logits", [True, False])
def test_bernoulli_rejects_values_outside_unit_interval(logits):
    good = rand((3, 5), torch.float32, 1, 0.1, 0.9)
    bad = good.clone()
    bad[1, 2] = 1.5
    with pytest.raises(ValueError, match="target must lie in \\[0, 1\\]"):
        vk.bernoulli_nll(good, bad, logits=logits, backend="triton")
    if not logits:
        with pytest.raises(ValueError, match="input \\(probabilities\\) must lie"):
            vk.bernoulli_nll(-bad, good, logits=False, backend="triton")
    else:  # logits may be anything
        vk.bernoulli_nll(bad * 10 - 5, good, logits=True, backend="triton")


def test_empty_batch():
    mu = torch.empty((0, 4), dtype=torch.float64, device=DEVICE)
    assert vk.gaussian_kl(mu, mu, reduction="per_sample", backend="triton").shape == (0,)
    assert vk.gaussian_kl(mu, mu, reduction="sum", backend="triton").item() == 0.0
    assert vk.gaussian_kl(mu, mu, reduction="none", backend="triton").shape == (0, 4)


@pytest.mark.skipif("cpu" not in vk.available_backends(), reason="the C++ extension is not built")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf arithmetic, in the interpreter
def test_extreme_values_match_the_cpu_kernels():
    """The contract's stable forms (csrc/math): +inf, not NaN, for logits at +-inf;
    the standardized residual in the Gaussian NLL and the prior KL (no inf * 0)."""
    inf = float("inf")
    logits = torch.tensor([[inf, -inf, inf, -inf, 3.0]])
    target = torch.tensor([[0.5, 0.5, 1.0, 0.0, 0.2]])
    mean, data = torch.tensor([[1.0, 1e20, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    logvar = torch.tensor([[-100.0, 100.0, 0.0]])

    def cases(backend, device):
        lg, tg, m, x, lv = (t.to(device) for t in (logits, target, mean, data, logvar))
        return [
            vk.bernoulli_nll(lg, tg, reduction="none", backend=backend),
            vk.gaussian_nll(m, x, lv, reduction="none", backend=backend),
            vk.gaussian_nll(m, x, -100.0, reduction="none", backend=backend),
            vk.gaussian_kl(m, lv, x, lv, reduction="none", backend=backend),
        ]

    ours, theirs = cases("triton", DEVICE), cases("cpu", "cpu")
    for result, expected in zip(ours, theirs):
        torch.testing.assert_close(result.cpu(), expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isinf(ours[0][0, :2]).all()
