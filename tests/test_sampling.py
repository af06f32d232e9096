"""reparameterize: caller noise and in-kernel Philox noise (pinned to Triton's tl.randn4x
stream), K samples, reproducibility, statistics, and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vae_kernels as vk

from conftest import ALL_DTYPES, assert_close_to_oracle, requires_cpu_backend, upstream_weights

pytestmark = requires_cpu_backend


def triton_randn4x(seed: int, index: np.ndarray, exact: bool = False) -> np.ndarray:
    """Normal ``index`` of the stream: output index % 4 of tl.randn4x(seed, index // 4) of
    triton/language/random.py, in numpy (the stream's spec). ``exact``: Box-Muller of the
    same float32 uniforms and angle in float64."""
    mask = np.uint64(0xFFFFFFFF)
    counter = index.astype(np.uint64) >> np.uint64(2)
    c0 = counter & mask
    c1 = (counter >> np.uint64(32)) & mask
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64((seed >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        p0, p2 = c0, c2
        c0 = (((np.uint64(0xCD9E8D57) * p2) >> np.uint64(32)) ^ c1 ^ k0) & mask
        c2 = (((np.uint64(0xD2511F53) * p0) >> np.uint64(32)) ^ c3 ^ k1) & mask
        c1 = (np.uint64(0xCD9E8D57) * p2) & mask
        c3 = (np.uint64(0xD2511F53) * p0) & mask
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask

    def uniform(bits):
        x = bits.astype(np.uint32).view(np.int32)
        x = np.where(x < 0, ~x, x)
        return x.astype(np.float32) * np.float32(4.6566127342e-10)

    second_pair = (index & 2) != 0
    sine = (index & 1) != 0
    u1 = np.maximum(np.float32(1e-7), uniform(np.where(second_pair, c2, c0)))
    theta = np.float32(6.283185307179586) * uniform(np.where(second_pair, c3, c1))
    if exact:
        u1, theta = u1.astype(np.float64), theta.astype(np.float64)
        return np.sqrt(-2.0 * np.log(u1)) * np.where(sine, np.sin(theta), np.cos(theta))
    return np.sqrt(np.float32(-2.0) * np.log(u1)) * np.where(sine, np.sin(theta), np.cos(theta))


@pytest.mark.parametrize("shape, num_samples", [((3, 1000), 2), ((7, 37), 3), ((2, 1, 4099), 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_philox_noise_is_tritons_randn4x_stream(shape, num_samples, threads):
    # Odd sizes start samples and threads' ranges in mid-counter (index % 4 != 0), and
    # leave counters to the scalar Philox loop.
    seed = 0x1234_5678_9ABC
    mu = torch.zeros(shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z = torch.ops.vae_kernels.reparameterize_philox(
            mu, torch.zeros_like(mu), torch.tensor([seed]), num_samples
        )
    finally:
        torch.set_num_threads(previous)
    expected = triton_randn4x(seed, np.arange(z.numel(), dtype=np.int64)).reshape(z.shape)
    np.testing.assert_allclose(z.numpy(), expected, rtol=2e-6, atol=2e-6)


def test_in_kernel_noise_is_within_a_few_ulp_of_exact_box_muller():
    # The CPU kernels evaluate Box-Muller's log and cos inline (csrc/cpu/vec_math.h):
    # against float64 on the same uniforms, every draw is within 4 float32 ulp of its
    # size, or of the angle's rounding near a zero of the cosine.
    seed, n = 2**62 + 987, 1 << 18
    z = torch.ops.vae_kernels.reparameterize_philox(
        torch.zeros(n), torch.zeros(n), torch.tensor([seed]), None
    ).double().numpy()
    exact = triton_randn4x(seed, np.arange(n, dtype=np.int64), exact=True)
    radius = np.abs(exact) + 6e-7 * np.sqrt(-2 * np.log(np.float64(1e-7)))
    assert np.all(np.abs(z - exact) <= 4 * np.spacing(radius.astype(np.float32)))


def test_one_sample_has_mus_shape_and_the_first_of_k_samples_values():
    # num_samples=None (philox) and eps of mu's shape give one sample without a sample
    # dimension: no view op on the way, and the same values as K = 1.
    ops = torch.ops.vae_kernels
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    seed = torch.tensor([77])
    one = ops.reparameterize_philox(mu, logvar, seed, None)
    assert one.shape == mu.shape
    torch.testing.assert_close(one, ops.reparameterize_philox(mu, logvar, seed, 1)[0], rtol=0, atol=0)
    z, eps = ops.reparameterize_philox_with_noise(mu, logvar, seed, None)
    assert z.shape == eps.shape == mu.shape
    torch.testing.assert_close(ops.reparameterize(mu, logvar, eps), z, rtol=0, atol=0)
    grad_z = torch.randn(4, 6)
    for single, batched in [
        (ops.reparameterize_backward(grad_z, logvar, eps), ops.reparameterize_backward(grad_z[None], logvar, eps[None])),
        (ops.reparameterize_philox_backward(grad_z, logvar, seed), ops.reparameterize_philox_backward(grad_z[None], logvar, seed)),
    ]:
        for a, b in zip(single, batched):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The public call builds no view node for one sample.
    z = vk.reparameterize(mu.requires_grad_(), logvar.requires_grad_())
    assert type(z.grad_fn).__name__ != "SqueezeBackward1" and z.grad_fn.next_functions[0][0] is not None
    assert {type(f).__name__ for f, _ in z.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}


@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_backward_reads_a_broadcast_upstream_as_the_materialized_one(num_samples, dtype):
    # z.sum().backward() hands the backward an expanded scalar (stride 0).
    ops = torch.ops.vae_kernels
    logvar = torch.randn(5, 7, dtype=dtype)
    eps = torch.randn((5, 7) if num_samples is None else (num_samples, 5, 7), dtype=dtype)
    broadcast = torch.tensor(0.75, dtype=dtype).expand(eps.shape)
    for a, b in zip(ops.reparameterize_backward(broadcast, logvar, eps),
                    ops.reparameterize_backward(broadcast.contiguous(), logvar, eps)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_in_kernel_noise_is_standard_normal():
    torch.manual_seed(0)
    z = vk.reparameterize(torch.zeros(400, 500), torch.zeros(400, 500))
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1) < 0.01
    # Tail mass and the quantiles of a standard normal.
    assert abs((z.abs() > 1.96).float().mean().item() - 0.05) < 0.003
    q = torch.quantile(z.flatten()[:100000], torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(q, torch.tensor([-1.2816, 0.0, 1.2816]), atol=0.03, rtol=0)
    # Neighbouring elements are uncorrelated.
    flat = z.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01


def test_noise_scale_and_shift():
    torch.manual_seed(1)
    mu = torch.full((200, 300), 2.0)
    logvar = torch.full((200, 300), math.log(9.0))
    z = vk.reparameterize(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.03 and abs(z.std().item() - 3.0) < 0.03


def test_reproducible_under_manual_seed_and_generator():
    mu, lv = torch.randn(2, 16, 8)
    torch.manual_seed(5)
    a = vk.reparameterize(mu, lv)
    torch.manual_seed(5)
    b = vk.reparameterize(mu, lv)
    c = vk.reparameterize(mu, lv)
    assert torch.equal(a, b) and not torch.equal(b, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(vk.reparameterize(mu, lv, generator=g1), vk.reparameterize(mu, lv, generator=g2))


def test_num_samples_shape_and_independence():
    torch.manual_seed(2)
    mu, lv = torch.zeros(4, 3), torch.zeros(4, 3)
    z = vk.reparameterize(mu, lv, num_samples=5)
    assert z.shape == (5, 4, 3)
    assert len({tuple(s.flatten().tolist()) for s in z}) == 5
    eps = torch.randn(5, 4, 3)
    torch.testing.assert_close(vk.reparameterize(mu + 1, lv, eps, num_samples=5), eps + 1)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("num_samples", [None, 3])
def test_caller_eps_matches_oracle(dtype, num_samples):
    g = torch.Generator().manual_seed(3)
    shape = (37, 11)
    mu, lv = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(2))
    eps = torch.randn(((num_samples,) if num_samples else ()) + shape, generator=g).to(dtype)
    z = vk.reparameterize(mu, lv, eps, num_samples=num_samples, backend="cpu")
    mu64, lv64 = (t.detach().double().requires_grad_() for t in (mu, lv))
    z64 = vk.reparameterize(mu64, lv64, eps.double(), num_samples=num_samples, backend="torch")
    assert z.dtype == dtype and z.shape == z64.shape
    assert_close_to_oracle(z, z64.detach(), dtype, scale=10)
    w = upstream_weights(z)
    grads = torch.autograd.grad((z * w).sum(), (mu, lv))
    grads64 = torch.autograd.grad((z64 * w.double()).sum(), (mu64, lv64))
    for got, want in zip(grads, grads64):
        assert_close_to_oracle(got, want, dtype, scale=10)


@pytest.mark.parametrize("num_samples", [None, 1, 4])
def test_gradcheck_caller_eps(num_samples):
    g = torch.Generator().manual_seed(4)
    mu, lv = (torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    eps = torch.randn(((num_samples,) if num_samples else ()) + (3, 5), generator=g,
                      dtype=torch.float64).requires_grad_()
    w = upstream_weights(eps)
    assert torch.autograd.gradcheck(
        lambda m, l, e: vk.reparameterize(m, l, e, num_samples=num_samples, backend="cpu") * w,
        (mu, lv, eps))


@pytest.mark.parametrize("num_samples", [None, 1, 4])
def test_gradcheck_in_kernel_noise_regenerated_in_backward(num_samples):
    g = torch.Generator().manual_seed(5)
    mu, lv = (torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    # Each call draws the same seed from a fresh generator, so the function is deterministic.
    fn = lambda m, l: vk.reparameterize(  # noqa: E731
        m, l, num_samples=num_samples, generator=torch.Generator().manual_seed(6), backend="cpu")
    w = upstream_weights(fn(mu, lv))
    assert torch.autograd.gradcheck(lambda m, l: fn(m, l) * w, (mu, lv))


def test_backward_uses_the_forward_noise():
    """d z / d logvar = 0.5 * (z - mu): backward regenerated exactly the forward's eps."""
    torch.manual_seed(7)
    mu = torch.randn(50, 20, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(50, 20, dtype=torch.float64, requires_grad=True)
    z = vk.reparameterize(mu, lv)
    z.sum().backward()
    torch.testing.assert_close(lv.grad, 0.5 * (z - mu).detach())
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
