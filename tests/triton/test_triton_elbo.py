"""The one-call Triton ELBO (reconstruction pass + KL pass + one fixed-order reduction
of both) against the float64 oracle, every likelihood and reduction, and gradcheck."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk

from triton_testing import (
    INTERPRETER_DTYPES,
    assert_close_to_oracle,
    rand,
    randn,
    requires_triton,
    upstream_weights,
)

pytestmark = requires_triton

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "gaussian", "mse", "laplace", "continuous_bernoulli"]
ELBO_REDUCTIONS = ["sum", "batchmean", "per_sample"]
# (recon shape, latent shape): tiny, and one whose recon rows cross a column block.
ELBO_SHAPES = [((3, 7), (3, 2)), ((2, 3, 4), (2, 5)), ((2, 300), (2, 20))]


def _inputs(likelihood, recon_shape, latent_shape, dtype):
    if likelihood == "bernoulli_probs":
        recon = rand(recon_shape, dtype, 1, 0.05, 0.95)
    else:
        recon = randn(recon_shape, dtype, 1, 2.0)
    x = rand(recon_shape, dtype, 2)
    return [recon, x, randn(latent_shape, dtype, 3), randn(latent_shape, dtype, 4, 0.5)]


def _elbo(backend, likelihood, reduction, recon, x, mu, logvar):
    return vk.elbo_loss(recon, x, mu, logvar, likelihood=likelihood, beta=0.7,
                        reduction=reduction, return_components=True, backend=backend)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ELBO_REDUCTIONS)
@pytest.mark.parametrize("shapes", ELBO_SHAPES, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_and_gradients_match_oracle(likelihood, shapes, reduction, dtype):
    tensors = _inputs(likelihood, *shapes, dtype)
    leaves = [t.detach().requires_grad_() for t in tensors]
    oracle_leaves = [t.detach().double().requires_grad_() for t in tensors]
    outputs = _elbo("triton", likelihood, reduction, *leaves)
    expected = _elbo("torch", likelihood, reduction, *oracle_leaves)
    scale = float(tensors[0].numel())
    for output, expected_output in zip(outputs, expected):  # loss, recon_nll, kl
        assert_close_to_oracle(output, expected_output, dtype, scale)

    # Different upstream gradients for the loss and each component.
    weights = [upstream_weights(o.shape, dtype, seed=10 + i) for i, o in enumerate(outputs)]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights)), leaves)
    expected_grads = torch.autograd.grad(
        sum((o * w.double()).sum() for o, w in zip(expected, weights)), oracle_leaves
    )
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close_to_oracle(grad, expected_grad, dtype, scale)


@pytest.mark.parametrize("reduction", ELBO_REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck_elbo(likelihood, reduction):
    leaves = [t.requires_grad_() for t in _inputs(likelihood, (3, 4), (3, 2), torch.float64)]

    def elbo(*xs):
        loss, recon_nll, kl = _elbo("triton", likelihood, reduction, *xs)
        weights = upstream_weights(loss.shape, torch.float64)
        return (loss * weights).sum() + 0.3 * recon_nll.sum() - 0.2 * kl.sum()

    assert torch.autograd.gradcheck(elbo, leaves, fast_mode=reduction != "per_sample")


@pytest.mark.filterwarnings("ignore:.*encountered in log:RuntimeWarning")  # numpy, in the interpreter
def test_elbo_rejects_targets_outside_unit_interval():
    recon, x, mu, logvar = _inputs("bernoulli", (3, 7), (3, 2), torch.float32)
    with pytest.raises(ValueError, match="x must lie in \\[0, 1\\]"):
        vk.elbo_loss(recon, x + 1.0, mu, logvar, backend="triton")
    with pytest.raises(ValueError, match="recon \\(probabilities\\) must lie in \\[0, 1\\]"):
        vk.elbo_loss(recon.abs() + 1.0, x, mu, logvar, likelihood="bernoulli_probs", backend="triton")
    # Gaussian and squared-error targets are unbounded.
    vk.elbo_loss(recon, x + 1.0, mu, logvar, likelihood="gaussian", backend="triton")
