"""The fused ops as drop-ins for diffusers' ``AutoencoderKL`` posterior (README, "diffusers").

diffusers' ``DiagonalGaussianDistribution`` (src/diffusers/models/autoencoders/vae.py)
chunks the encoder's moments (B, 2C, H, W) into mean and logvar views along dim 1,
clamps logvar to [-30, 20], and computes::

    sample(generator) = mean + exp(0.5 * logvar) * randn(mean.shape, generator, dtype)
    kl()              = 0.5 * sum_{C,H,W} (mean^2 + exp(logvar) - 1 - logvar)
    kl(other)         = 0.5 * sum_{C,H,W} ((mean - m2)^2 / v2 + exp(logvar) / v2 - 1 - logvar + lv2)

The README's replacement is ``vk.reparameterize(mean, logvar, eps=...)`` and
``vk.gaussian_kl(mean, logvar[, other.mean, other.logvar], reduction="per_sample")``
on the same clamped views. Each test runs against diffusers' class when diffusers is
installed (it is not a dependency), and always against ``RestatedDiagonalGaussian``
below, written from the formulas above, so the drop-in claim is tested in CI too.
"""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk

try:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
except ImportError:  # diffusers is optional
    DiagonalGaussianDistribution = None


class RestatedDiagonalGaussian:
    """diffusers' posterior formulas, re-stated (no diffusers needed)."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape,
            generator=generator,
            device=self.parameters.device,
            dtype=self.parameters.dtype,
        )
        return self.mean + self.std * noise

    def kl(self, other: "RestatedDiagonalGaussian | None" = None) -> torch.Tensor:
        if other is None:
            terms = self.mean**2 + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean) ** 2 / other.var
                + self.var / other.var
                - 1.0
                - self.logvar
                + other.logvar
            )
        return 0.5 * torch.sum(terms, dim=[1, 2, 3])


IMPLEMENTATIONS = [
    pytest.param(RestatedDiagonalGaussian, id="restated"),
    pytest.param(
        DiagonalGaussianDistribution,
        id="diffusers",
        marks=pytest.mark.skipif(
            DiagonalGaussianDistribution is None, reason="diffusers is not installed"
        ),
    ),
]
BACKENDS = [b for b in ("cpu", "torch") if b in vk.available_backends()]
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
}


def fused_posterior(parameters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the README shows: diffusers' views and clamp, then the fused ops."""
    mean, logvar = torch.chunk(parameters, 2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def moments(seed: int, dtype: torch.dtype, channels_last: bool, shape=(3, 8, 5, 6)) -> torch.Tensor:
    """A random encoder output (B, 2C, H, W) whose logvar half reaches past both clamps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    c = shape[1] // 2
    x[:, c:] *= 2.0
    x[0, c, 0, :3] = torch.tensor([-35.0, 22.0, 19.5])  # clamped below, above, and not
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def weights(n: int, dtype: torch.dtype, seed: int = 7) -> torch.Tensor:
    """A non-uniform upstream gradient, so backward is not tested with 1.0 only."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).to(dtype)


def value_and_grads(out: torch.Tensor, inputs: list[torch.Tensor]):
    upstream = weights(out.numel(), out.dtype).view_as(out)
    grads = torch.autograd.grad(out, inputs, upstream)
    return out.detach(), grads


def assert_same(expected, actual, dtype) -> None:
    (value, grads), (fused_value, fused_grads) = expected, actual
    torch.testing.assert_close(fused_value, value, **TOLERANCES[dtype])
    for grad, fused_grad in zip(grads, fused_grads):
        torch.testing.assert_close(fused_grad, grad, **TOLERANCES[dtype])


@pytest.mark.parametrize("Distribution", IMPLEMENTATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_kl_to_the_standard_normal(Distribution, backend, dtype, channels_last):
    params = moments(0, dtype, channels_last)
    expected = value_and_grads(Distribution(params).kl(), [params])
    mean, logvar = fused_posterior(params)
    fused = vk.gaussian_kl(mean, logvar, reduction="per_sample", backend=backend)
    assert fused.shape == (params.shape[0],)
    assert_same(expected, value_and_grads(fused, [params]), dtype)


@pytest.mark.parametrize("Distribution", IMPLEMENTATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_kl_between_two_posteriors(Distribution, backend, dtype, channels_last):
    params, other_params = moments(1, dtype, channels_last), moments(2, dtype, channels_last)
    expected = value_and_grads(
        Distribution(params).kl(Distribution(other_params)), [params, other_params]
    )
    mean, logvar = fused_posterior(params)
    other_mean, other_logvar = fused_posterior(other_params)
    fused = vk.gaussian_kl(
        mean, logvar, other_mean, other_logvar, reduction="per_sample", backend=backend
    )
    assert_same(expected, value_and_grads(fused, [params, other_params]), dtype)


@pytest.mark.parametrize("Distribution", IMPLEMENTATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_sample_with_a_generator(Distribution, backend, dtype, channels_last):
    params = moments(3, dtype, channels_last)
    posterior = Distribution(params)
    expected = posterior.sample(generator=torch.Generator().manual_seed(42))
    upstream = weights(expected.numel(), dtype).view_as(expected)
    expected_grad = torch.autograd.grad(expected, params, upstream)

    mean, logvar = fused_posterior(params)
    # The same draw as diffusers' randn_tensor on CPU: a contiguous tensor of mean's shape.
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(42), dtype=dtype)
    fused = vk.reparameterize(mean, logvar, eps=eps, backend=backend)
    fused_grad = torch.autograd.grad(fused, params, upstream)
    torch.testing.assert_close(fused, expected.detach(), **TOLERANCES[dtype])
    torch.testing.assert_close(fused_grad[0], expected_grad[0], **TOLERANCES[dtype])


@pytest.mark.parametrize("Distribution", IMPLEMENTATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_latent_diffusion_kl_term(Distribution, backend):
    """latent-diffusion's LPIPSWithDiscriminator: kl_loss = sum(posterior.kl()) / B."""
    params = moments(4, torch.float64, channels_last=True)
    kl = Distribution(params).kl()
    expected = value_and_grads(torch.sum(kl) / kl.shape[0], [params])
    mean, logvar = fused_posterior(params)
    fused = vk.gaussian_kl(mean, logvar, reduction="batchmean", backend=backend)
    assert_same(expected, value_and_grads(fused, [params]), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_kernel_noise_is_a_posterior_sample(backend):
    """Without eps (the fast path in training) the sample has the posterior's moments."""
    params = moments(5, torch.float64, channels_last=True, shape=(64, 8, 16, 16)).detach()
    params[:, 4:] = params[:, 4:].clamp(-2.0, 2.0)
    mean, logvar = fused_posterior(params)
    torch.manual_seed(0)
    z = vk.reparameterize(mean, logvar, backend=backend)
    standardized = (z - mean) / torch.exp(0.5 * logvar)
    n = standardized.numel()
    assert abs(float(standardized.mean())) < 4 / n**0.5
    assert abs(float(standardized.var()) - 1.0) < 4 * (2 / n) ** 0.5
