"""Triton reparameterized sampling: caller noise against the oracle, in-kernel Philox
noise against the C++ kernels (same seed tensor, same z), K samples, and the
hand-written backward passes (Philox noise regenerated, never stored) by gradcheck."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk

from triton_testing import (
    DEVICE,
    INTERPRETER_DTYPES,
    SHAPES,
    TOLERANCES,
    assert_close_to_oracle,
    randn,
    requires_triton,
    upstream_weights,
    weighted_sum,
)

pytestmark = requires_triton

requires_cpu_backend = pytest.mark.skipif(
    "cpu" not in vk.available_backends(), reason="the C++ extension is not built"
)


@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reparameterize_with_noise_matches_oracle(shape, dtype, num_samples):
    mu = randn(shape, dtype, 1).requires_grad_()
    logvar = randn(shape, dtype, 2).requires_grad_()
    eps = randn(shape if num_samples is None else (num_samples, *shape), dtype, 3)
    z = vk.reparameterize(mu, logvar, eps, num_samples=num_samples, backend="triton")
    mu64, logvar64 = (t.detach().double().requires_grad_() for t in (mu, logvar))
    expected = vk.reparameterize(mu64, logvar64, eps.double(), num_samples=num_samples, backend="torch")
    assert_close_to_oracle(z, expected, dtype)

    weights = upstream_weights(z.shape, dtype)
    grads = torch.autograd.grad((z * weights).sum(), (mu, logvar))
    expected_grads = torch.autograd.grad((expected * weights.double()).sum(), (mu64, logvar64))
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close_to_oracle(grad, expected_grad, dtype, scale=num_samples or 1)


@requires_cpu_backend
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5), (2, 300)], ids=str)
def test_philox_noise_equals_cpu_kernels(shape, dtype, num_samples):
    """philox_standard_normal (vae_kernels/triton/math.py) and csrc/math/philox.h: the same eps for the same
    seed tensor (to float32 rounding of the Box-Muller transcendental functions)."""
    mu, logvar = randn(shape, dtype, 1), randn(shape, dtype, 2)
    seed = torch.tensor([0x1234_5678_9ABC_DEF], dtype=torch.int64)  # both 32-bit halves used
    z = torch.ops.vae_kernels_triton.reparameterize_philox(mu, logvar, seed.to(DEVICE), num_samples)
    z_cpu = torch.ops.vae_kernels.reparameterize_philox(mu.cpu(), logvar.cpu(), seed, num_samples)
    std = torch.exp(0.5 * logvar.cpu().double())
    torch.testing.assert_close((z.cpu().double() - mu.cpu().double()) / std,
                               (z_cpu.double() - mu.cpu().double()) / std, rtol=1e-5, atol=2e-6)

    grad_z = randn(z.shape, dtype, 4)
    grads = torch.ops.vae_kernels_triton.reparameterize_philox_backward(grad_z, logvar, seed.to(DEVICE))
    grads_cpu = torch.ops.vae_kernels.reparameterize_philox_backward(grad_z.cpu(), logvar.cpu(), seed)
    for grad, grad_cpu in zip(grads, grads_cpu):
        torch.testing.assert_close(grad.cpu(), grad_cpu, rtol=1e-5, atol=2e-5)


def test_philox_backward_regenerates_the_forward_noise():
    """d logvar = 0.5 * sum_k g_k * (z_k - mu) and d mu = sum_k g_k, with the z_k of
    the forward: the backward's regenerated eps is the forward's."""
    mu = randn((70, 5), torch.float64, 1).requires_grad_()
    logvar = randn((70, 5), torch.float64, 2).requires_grad_()
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    z = vk.reparameterize(mu, logvar, num_samples=3, generator=gen, backend="triton")
    grad_z = upstream_weights(z.shape, torch.float64)
    grad_mu, grad_logvar = torch.autograd.grad(z, (mu, logvar), grad_z)
    torch.testing.assert_close(grad_mu, grad_z.sum(0), **TOLERANCES[torch.float64])
    expected = 0.5 * (grad_z * (z.detach() - mu.detach())).sum(0)
    torch.testing.assert_close(grad_logvar, expected, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("eps_given", [False, True])
def test_logsigma_sample_and_gradients(eps_given):
    """scale="logsigma": z = mu + exp(s) eps, read as it is by the kernels; equal to the
    log-variance sample of 2 s under the same generator state; d s = sum_k g_k (z_k - mu)."""
    mu = randn((70, 5), torch.float64, 1).requires_grad_()
    s = randn((70, 5), torch.float64, 2, 0.5).requires_grad_()
    eps = randn((3, 70, 5), torch.float64, 3) if eps_given else None
    z = vk.reparameterize(mu, s, eps, num_samples=3, scale="logsigma", backend="triton",
                          generator=None if eps_given else torch.Generator(device=DEVICE).manual_seed(5))
    z_lv = vk.reparameterize(mu.detach(), 2 * s.detach(), eps, num_samples=3, backend="triton",
                             generator=None if eps_given else torch.Generator(device=DEVICE).manual_seed(5))
    torch.testing.assert_close(z.detach(), z_lv, **TOLERANCES[torch.float64])
    grad_z = upstream_weights(z.shape, torch.float64)
    grad_mu, grad_s = torch.autograd.grad(z, (mu, s), grad_z)
    torch.testing.assert_close(grad_mu, grad_z.sum(0), **TOLERANCES[torch.float64])
    expected = (grad_z * (z.detach() - mu.detach())).sum(0)
    torch.testing.assert_close(grad_s, expected, **TOLERANCES[torch.float64])


def test_philox_reproducible_under_manual_seed_and_distinct_per_sample():
    mu = torch.zeros(64, 64, device=DEVICE)
    logvar = torch.zeros(64, 64, device=DEVICE)
    torch.manual_seed(0)
    first = vk.reparameterize(mu, logvar, num_samples=2, backend="triton")
    torch.manual_seed(0)
    again = vk.reparameterize(mu, logvar, num_samples=2, backend="triton")
    torch.manual_seed(1)
    other = vk.reparameterize(mu, logvar, num_samples=2, backend="triton")
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first[0] != first[1]).float().mean() > 0.99  # each sample has its own noise
    # Standard normal (8192 draws): mean and variance within ~5 standard errors.
    eps = first.flatten().double()
    assert abs(eps.mean().item()) < 5 / 8192**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / 8192) ** 0.5


def test_gradcheck_with_noise():
    mu = randn((3, 5), torch.float64, 1).requires_grad_()
    logvar = randn((3, 5), torch.float64, 2).requires_grad_()
    eps = randn((2, 3, 5), torch.float64, 3)
    assert torch.autograd.gradcheck(
        lambda m, lv: weighted_sum(vk.reparameterize(m, lv, eps, num_samples=2, backend="triton")),
        (mu, logvar),
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7)], ids=str)
def test_gradcheck_philox(shape):
    mu = randn(shape, torch.float64, 1).requires_grad_()
    logvar = randn(shape, torch.float64, 2).requires_grad_()
    gen = torch.Generator(device=DEVICE)

    def sample(m, lv):
        gen.manual_seed(11)  # the same noise at every evaluation
        return weighted_sum(vk.reparameterize(m, lv, num_samples=2, generator=gen, backend="triton"))

    assert torch.autograd.gradcheck(sample, (mu, logvar))
