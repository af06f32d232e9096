"""The reference VAE models: shapes, the likelihood's output mapping, sampling, rebuilding."""

import pytest
import torch

import vae_kernels as vk
from vae_kernels.app.models import ConvVAE, MLPVAE, build_model


@pytest.fixture(params=["mlp", "conv"])
def model_name(request):
    return request.param


def make(name, **kwargs):
    return MLPVAE(**kwargs) if name == "mlp" else ConvVAE(**kwargs)


def test_mlp_has_the_pytorch_examples_architecture():
    model = MLPVAE()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    # pytorch/examples vae/main.py: fc1 784->400, fc21/fc22 400->20, fc3 20->400, fc4 400->784.
    assert shapes == {
        "fc1.weight": (400, 784),
        "fc1.bias": (400,),
        "fc21.weight": (20, 400),
        "fc21.bias": (20,),
        "fc22.weight": (20, 400),
        "fc22.bias": (20,),
        "fc3.weight": (400, 20),
        "fc3.bias": (400,),
        "fc4.weight": (784, 400),
        "fc4.bias": (784,),
    }


def test_shapes_for_both_models_and_input_layouts(model_name):
    torch.manual_seed(0)
    model = make(model_name, latent_dim=7)
    for x in (torch.rand(5, 784), torch.rand(5, 1, 28, 28)):
        recon, mu, logvar = model(x)
        assert mu.shape == logvar.shape == (5, 7)
        assert recon.shape == model.recon_shape(5)
        assert recon.numel() == x.numel()
        assert torch.isfinite(recon).all()


@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian", "mse"])
def test_decoder_output_matches_the_likelihood(model_name, likelihood):
    torch.manual_seed(0)
    model = make(model_name, likelihood=likelihood)
    z = torch.randn(4, 20) * 3
    logits = model.decode_logits(z)
    out = model.decode(z)
    if likelihood == "bernoulli":
        torch.testing.assert_close(out, logits)  # logits go straight to the fused loss
        torch.testing.assert_close(model.mean_image(out), torch.sigmoid(logits))
    else:
        torch.testing.assert_close(out, torch.sigmoid(logits))
        torch.testing.assert_close(model.mean_image(out), out)


def test_forward_with_eps_is_the_reparameterized_sample(model_name):
    torch.manual_seed(0)
    model = make(model_name)
    x = torch.rand(6, 1, 28, 28)
    eps = torch.randn(6, 20)
    recon, mu, logvar = model(x, eps)
    expected = model.decode(mu + torch.exp(0.5 * logvar) * eps)
    torch.testing.assert_close(recon, expected)


def test_in_kernel_noise_is_seeded_and_fresh():
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    x = torch.rand(8, 784)
    torch.manual_seed(1)
    first, _, _ = model(x)
    torch.manual_seed(1)
    again, _, _ = model(x)
    second, _, _ = model(x)
    torch.testing.assert_close(first, again)  # reproducible under torch.manual_seed
    assert not torch.allclose(first, second)  # and a new draw on the next call


def test_noise_has_the_posterior_spread():
    # z ~ N(mu, exp(logvar)): with the in-kernel sampler, check mean and variance.
    model = MLPVAE(backend="cpu")
    mu = torch.full((20000, 2), 1.5)
    logvar = torch.full((20000, 2), 2.0 * torch.log(torch.tensor(0.5)).item())
    z = model.sample_latent(mu, logvar)
    assert abs(z.mean().item() - 1.5) < 0.02
    assert abs(z.std().item() - 0.5) < 0.02


def test_backend_attribute_selects_the_kernels(monkeypatch):
    calls = []
    original = vk.reparameterize

    def spy(*args, backend="auto", **kwargs):
        calls.append(backend)
        return original(*args, backend=backend, **kwargs)

    monkeypatch.setattr(vk, "reparameterize", spy)
    model = MLPVAE(backend="torch")
    model(torch.rand(2, 784))
    model.backend = "cpu"
    model(torch.rand(2, 784))
    assert calls == ["torch", "cpu"]


def test_build_model_round_trip(model_name):
    torch.manual_seed(0)
    model = make(model_name, latent_dim=5, likelihood="gaussian")
    rebuilt = build_model(model.config())
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())
    z = torch.randn(3, 5)
    torch.testing.assert_close(rebuilt.decode(z), model.decode(z))
    assert rebuilt.likelihood == "gaussian" and rebuilt.latent_dim == 5


def test_conv_model_on_other_image_shapes():
    model = ConvVAE(image_shape=(3, 16, 8), latent_dim=4)
    recon, mu, _ = model(torch.rand(2, 3, 16, 8))
    assert recon.shape == (2, 3, 16, 8) and mu.shape == (2, 4)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        MLPVAE(likelihood="poisson")
    with pytest.raises(ValueError, match="latent_dim must be a positive int, got 0"):
        MLPVAE(latent_dim=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE(image_shape=(1, 30, 30))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 784\).*got \(2, 100\)"):
        MLPVAE()(torch.rand(2, 100))
    with pytest.raises(ValueError, match="config\\['model'\\] must be one of"):
        build_model({"model": "transformer"})


# ------------------------------------------------- the Laplace and continuous-Bernoulli likelihoods


def test_likelihoods_are_the_library_table():
    from vae_kernels.app import models
    from vae_kernels.schema import LIKELIHOOD_NAMES

    # The library's elementwise likelihoods, and the app's own mixture, which is not one.
    assert models.ELEMENTWISE_LIKELIHOODS == LIKELIHOOD_NAMES
    assert models.LIKELIHOODS == LIKELIHOOD_NAMES + ("dmol",)
    assert "dmol" not in LIKELIHOOD_NAMES
    assert {"laplace", "continuous_bernoulli"} <= set(models.LIKELIHOODS)
    for likelihood in models.LIKELIHOODS:
        assert MLPVAE(likelihood=likelihood).likelihood == likelihood


@pytest.mark.parametrize("likelihood", ["laplace", "continuous_bernoulli"])
def test_decoder_output_of_the_new_likelihoods(model_name, likelihood):
    torch.manual_seed(0)
    model = make(model_name, likelihood=likelihood)
    z = torch.randn(4, 20) * 3
    logits = model.decode_logits(z)
    out = model.decode(z)
    image = model.mean_image(out)
    if likelihood == "continuous_bernoulli":
        torch.testing.assert_close(out, logits)  # logits, as for the Bernoulli
        # The distribution's mean, not sigmoid(l):
        # lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)).
        lam = torch.sigmoid(logits.double())
        expected = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
        far = logits.abs() > 0.05  # the formula is 0/0 at l = 0
        torch.testing.assert_close(image.double()[far], expected[far], rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(out, torch.sigmoid(logits))  # the location, in [0, 1]
        torch.testing.assert_close(image, out)
    assert image.shape == out.shape and image.min() >= 0 and image.max() <= 1


def test_continuous_bernoulli_mean_is_smooth_through_zero_and_saturates():
    from vae_kernels.app.models import continuous_bernoulli_mean

    logits = torch.tensor([-1e6, -80.0, -2.2, -0.5001, -0.4999, 0.0, 0.4999, 0.5001, 80.0, 1e6])
    mean = continuous_bernoulli_mean(logits)
    assert torch.isfinite(mean).all() and float(mean[5]) == 0.5
    assert torch.all(mean[1:] >= mean[:-1])  # increasing in the logit
    # Either side of the series' edge at |l| = 0.5 meets: the exact value 0.5 + 0.0416...
    assert abs(float(mean[7] - mean[6])) < 1e-4 and abs(float(mean[4] - mean[3])) < 1e-4
    assert abs(float(mean[2]) - 0.3299) < 1e-3  # lambda = 0.1: the mean is not 0.1
    assert float(mean[0]) < 1e-5 and float(mean[-1]) > 1 - 1e-5
    # Symmetric: mean(-l) = 1 - mean(l).
    torch.testing.assert_close(continuous_bernoulli_mean(-logits), 1 - mean)


def test_laplace_picture_clamps_the_location():
    model = MLPVAE(likelihood="laplace")
    location = torch.tensor([[-0.5, 0.25, 1.5]])
    torch.testing.assert_close(model.mean_image(location), torch.tensor([[0.0, 0.25, 1.0]]))


# ------------------------------------------------- the discretized logistic mixture (dmol)


def test_dmol_decoder_emits_the_mixture_parameters(model_name):
    torch.manual_seed(0)
    model = make(model_name, likelihood="dmol", mixture_components=4, latent_dim=6)
    assert model.recon_shape(3) == (3, 12, 28, 28)  # P = 3M for one channel
    assert model.target_shape(3) == (3, 1, 28, 28)  # the loss compares with the images
    x = torch.rand(3, 1, 28, 28) * 2 - 1  # the mixture's data lies on [-1, 1]
    params, mu, _ = model(x)
    assert params.shape == (3, 12, 28, 28) and mu.shape == (3, 6)
    z = torch.randn(3, 6)
    # The raw parameters, no sigmoid: the means and log-scales take any sign.
    torch.testing.assert_close(model.decode(z).flatten(1), model.decode_logits(z).flatten(1))
    # The library scores them: a finite per-image NLL.
    grid = torch.round((x + 1) * 127.5) / 127.5 - 1
    nll = vk.discretized_logistic_mixture_nll(params, grid, reduction="per_sample")
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    image = model.mean_image(params)
    assert image.shape == (3, 1, 28, 28) and image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(model.data_image(torch.tensor([-1.0, 0.0, 1.0])),
                               torch.tensor([0.0, 0.5, 1.0]))  # fmt: skip
    config = model.config()
    assert config["likelihood"] == "dmol" and config["mixture_components"] == 4
    rebuilt = build_model(config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.decode(z), model.decode(z))
    # The other likelihoods' configs (and checkpoints) keep their keys: no M.
    assert "mixture_components" not in make(model_name, mixture_components=4).config()


def test_dmol_rgb_and_unsupported_channels():
    model = ConvVAE(likelihood="dmol", image_shape=(3, 8, 8), latent_dim=4, mixture_components=2)
    params, _, _ = model(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert params.shape == (2, 20, 8, 8)  # P = 10M for RGB (the channels coupled)
    torch.manual_seed(0)
    image = model.mean_image(params)  # a sample: the coupled channels have no simple mean
    assert image.shape == (2, 3, 8, 8) and image.min() >= 0 and image.max() <= 1
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels, got images with 2"):
        ConvVAE(likelihood="dmol", image_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="mixture_components must be a positive int, got 0"):
        MLPVAE(likelihood="dmol", mixture_components=0)


def test_mixture_mean_is_the_expected_pixel():
    """Against the expectation over the 256 levels with the likelihood's own bin
    probabilities (edge bins open-ended), in float64: within half a level (1/255)."""
    from vae_kernels.app.models import discretized_logistic_mixture_mean

    generator = torch.Generator().manual_seed(0)
    m, pixels = 3, 200
    logits = torch.randn(1, m, pixels, 1, generator=generator, dtype=torch.float64) * 2
    means = torch.rand(1, m, pixels, 1, generator=generator, dtype=torch.float64) * 3 - 1.5
    log_scales = torch.rand(1, m, pixels, 1, generator=generator, dtype=torch.float64) * 7 - 8
    params = torch.cat([logits, means, log_scales], dim=1)  # scales exp(-8..-1), -8 clamped to -7
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64).view(256, 1, 1, 1)
    scales = torch.exp(log_scales.clamp_min(-7))
    upper = torch.sigmoid((levels + 1 / 255 - means) / scales)
    lower = torch.sigmoid((levels - 1 / 255 - means) / scales)
    upper[-1], lower[0] = 1.0, 0.0  # the edge bins take the tails
    bins = upper - lower  # (256, 1, M, P, 1) per component
    expected = (torch.softmax(logits, 1) * (levels * bins).sum(0)).sum(1, keepdim=True)
    mean = discretized_logistic_mixture_mean(params)
    assert mean.shape == (1, 1, pixels, 1)
    torch.testing.assert_close(mean, expected, rtol=0, atol=1 / 255)
    # A wrong formula (e.g. the unclamped location) is far off where the means leave [-1, 1].
    naive = (torch.softmax(logits, 1) * means).sum(1, keepdim=True)
    assert float((naive - expected).abs().max()) > 0.1
    # Sharp components sit on their (clamped) means.
    sharp = torch.cat([torch.zeros(1, 1, 3, 1), torch.tensor([-2.0, 0.3, 5.0]).view(1, 1, 3, 1),
                       torch.full((1, 1, 3, 1), -7.0)], dim=1)  # fmt: skip
    torch.testing.assert_close(discretized_logistic_mixture_mean(sharp).flatten(),
                               torch.tensor([-1.0, 0.3, 1.0]))  # fmt: skip
