"""Reference VAE models: the pytorch/examples MLP VAE and a small convolutional VAE.

Both models share one interface, used by training and evaluation:

- ``encode(x) -> (mu, logvar)``, the parameters of q(z|x) = N(mu, exp(logvar));
- ``decode(z) -> recon``, the decoder output in the parameterization the likelihood
  expects (logits for ``"bernoulli"`` and ``"continuous_bernoulli"``, probabilities for
  ``"bernoulli_probs"``, the mean in [0, 1] for ``"gaussian"`` and ``"mse"``, the
  location in [0, 1] for ``"laplace"``; each at unit scale where it has one; for
  ``"dmol"`` the discretized logistic mixture's parameters, (B, P, H, W) in PixelCNN++'s
  layout, P = 3M for one channel and 10M for three);
- ``mean_image(recon)``, the picture of a decoder output in [0, 1] (see its docstring);
- ``data_image(x)``, the picture of the data the model sees, in [0, 1];
- ``forward(x, eps=None) -> (recon, mu, logvar)``, with z drawn by
  ``vk.reparameterize`` (noise generated in-kernel unless ``eps`` is given).

``recon`` has shape ``model.recon_shape(batch)``; losses compare it with
``x.reshape(model.target_shape(batch))`` (for the elementwise likelihoods the same
shape as ``recon``; for ``"dmol"`` the images (B, C, H, W)).

The ``"dmol"`` model's data is the 8-bit pixels on the 256-level grid of [-1, 1]
(``data.to_centered_grid``), not intensities in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

import vae_kernels as vk
from vae_kernels.schema import LIKELIHOOD_NAMES

MODEL_NAMES = ("mlp", "conv")
# The library's elementwise likelihoods (vk.elbo_loss takes them by name), all of which
# the models can train with.
ELEMENTWISE_LIKELIHOODS = LIKELIHOOD_NAMES
# PixelCNN++'s discretized logistic mixture of 8-bit pixels on [-1, 1]: not elementwise
# (a pixel's M components share its logits), so not in the library's table; its NLL is
# vk.discretized_logistic_mixture_nll.
MIXTURE_LIKELIHOODS = ("dmol",)
LIKELIHOODS = ELEMENTWISE_LIKELIHOODS + MIXTURE_LIKELIHOODS
# Chosen by measurement (README, the reference VAE): after 3 epochs 10 components were
# 0.007 bits/dim ahead of 5 (test -ELBO), less than the test figure's epoch-to-epoch
# swings, and their larger last layer made each step about 18 % slower.
DEFAULT_MIXTURE_COMPONENTS = 5
# The decoder's logits go to the loss as they are for these; the others get a sigmoid.
LOGIT_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
MNIST_SHAPE = (1, 28, 28)

__all__ = [
    "MLPVAE",
    "ConvVAE",
    "build_model",
    "continuous_bernoulli_mean",
    "discretized_logistic_mixture_mean",
    "mixture_params_per_component",
    "MODEL_NAMES",
    "LIKELIHOODS",
    "ELEMENTWISE_LIKELIHOODS",
    "MIXTURE_LIKELIHOODS",
]


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def continuous_bernoulli_mean(logits: Tensor) -> Tensor:
    """The mean of the continuous Bernoulli with logits l (Loaiza-Ganem & Cunningham, 2019).

    With lambda = sigmoid(l) it is ``lambda/(2 lambda - 1) + 1/(2 atanh(1 - 2 lambda))``,
    0/0 at l = 0, where the mean is 1/2. In the logits it is ``1/2 + (coth(l/2) - 2/l)/2``
    (as atanh(1 - 2 sigmoid(l)) = -l/2): computed so beyond |l| = 0.5, and inside, where
    the two terms cancel, by the series ``1/2 + l/12 - l^3/720 + l^5/30240`` (its error
    is below 1e-8 there). It is not sigmoid(l): at l = -2.2 (lambda = 0.1) it is 0.33.
    """
    small = logits.abs() < 0.5
    safe = torch.where(small, torch.ones_like(logits), logits)  # no 1/0 in the unused branch
    far = 0.5 + 0.5 * (1.0 / torch.tanh(0.5 * safe) - 2.0 / safe)
    l2 = logits * logits
    near = 0.5 + logits * (1.0 / 12.0 + l2 * (-1.0 / 720.0 + l2 / 30240.0))
    return torch.where(small, near, far)


def mixture_params_per_component(channels: int) -> int:
    """Parameters per mixture component and pixel in PixelCNN++'s layout: a logit, then
    per channel a mean and a log-scale, and for RGB three coupling coefficients."""
    if channels == 1:
        return 3
    if channels == 3:
        return 10
    raise ValueError(
        f"likelihood='dmol' models 1 (grey) or 3 (RGB) channels, got images with {channels}"
    )


def discretized_logistic_mixture_mean(params: Tensor) -> Tensor:
    """The expected pixel of a one-channel discretized logistic mixture, (B, 1, H, W) in [-1, 1].

    ``params`` (B, 3M, H, W): M logits, M means m, M raw log-scales (clamped at -7, as
    the likelihood does). Each component is a logistic with its edge bins open-ended,
    i.e. clamped to [-1, 1], whose mean is exactly
    ``-1 + s (softplus((m + 1)/s) - softplus((m - 1)/s))``; the binning to the 256 levels
    moves it by less than half a level. The mixture mean weights these by softmax(logits).
    """
    if params.dim() != 4 or params.shape[1] % 3:
        raise ValueError(
            f"params must have shape (B, 3M, H, W) for one channel, got {tuple(params.shape)}"
        )
    logits, means, log_scales = params.chunk(3, dim=1)
    scales = torch.exp(log_scales.clamp_min(-7.0))
    softplus = torch.nn.functional.softplus
    component_means = -1.0 + scales * (
        softplus((means + 1.0) / scales) - softplus((means - 1.0) / scales)
    )
    weights = torch.softmax(logits, dim=1)
    return (weights * component_means).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class VAEBase(nn.Module):
    """What both models share: the likelihood's output mapping and the sampling step."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: str,
        backend: str,
        mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
    ):
        super().__init__()
        _check_likelihood(likelihood)
        if len(image_shape) != 3 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape
        ):
            raise ValueError(
                f"image_shape must be three positive ints (channels, height, width), got {image_shape!r}"
            )
        self.image_shape = tuple(image_shape)
        self.latent_dim = _check_positive_int("latent_dim", latent_dim)
        self.likelihood = likelihood
        # Not a parameter or buffer: which kernels run is a runtime choice, not model state.
        self.backend = backend
        # M, for the mixture likelihood only (None otherwise: the others ignore it).
        self.mixture_components: Optional[int] = None
        # Decoder output channels per pixel: the image's own, or the mixture's P.
        self.decoder_channels = self.image_shape[0]
        if likelihood in MIXTURE_LIKELIHOODS:
            self.mixture_components = _check_positive_int("mixture_components", mixture_components)
            per_component = mixture_params_per_component(self.image_shape[0])
            self.decoder_channels = per_component * self.mixture_components

    @property
    def input_dim(self) -> int:
        return math.prod(self.image_shape)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the model with ``build_model``."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def recon_shape(self, batch: int) -> tuple[int, ...]:
        raise NotImplementedError

    def target_shape(self, batch: int) -> tuple[int, ...]:
        """The shape of the data the loss compares with ``decode``'s output: that output's
        own for the elementwise likelihoods, the images (B, C, H, W) for the mixture."""
        if self.likelihood in MIXTURE_LIKELIHOODS:
            return (batch, *self.image_shape)
        return self.recon_shape(batch)

    def _config_extras(self) -> dict[str, Any]:
        # Only the mixture has M, so other models' configs (and checkpoints) keep their keys.
        if self.likelihood in MIXTURE_LIKELIHOODS:
            return {"mixture_components": self.mixture_components}
        return {}

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output in the likelihood's parameterization, for z of shape (B, latent_dim)."""
        logits = self.decode_logits(z)
        if self.likelihood in LOGIT_LIKELIHOODS:
            return logits  # the fused kernels take logits: stable, no probability clamp
        if self.likelihood in MIXTURE_LIKELIHOODS:
            # The mixture's raw parameters, as PixelCNN++'s decoder emits them.
            return logits.reshape(z.shape[0], self.decoder_channels, *self.image_shape[1:])
        # Probabilities for bernoulli_probs (as pytorch/examples), a mean (gaussian, mse)
        # or a location (laplace) in [0, 1] otherwise.
        return torch.sigmoid(logits)

    def mean_image(self, recon: Tensor) -> Tensor:
        """The picture of ``decode``'s output, in [0, 1] (for plots).

        The decoder's expected image for ``bernoulli`` (sigmoid of the logits),
        ``bernoulli_probs``, ``gaussian`` and ``mse`` (the output itself), and
        ``continuous_bernoulli`` (the distribution's mean, ``continuous_bernoulli_mean``,
        not sigmoid(l)); for ``laplace``, its location (the median) clamped to [0, 1].
        For ``dmol``, one channel: the mixture's expected pixel
        (``discretized_logistic_mixture_mean``) mapped from [-1, 1] to [0, 1]; RGB (whose
        channels are coupled): a sample of the mixture (torch's global generator).
        """
        if self.likelihood in MIXTURE_LIKELIHOODS:
            if self.image_shape[0] == 1:
                pixels = discretized_logistic_mixture_mean(recon)
            else:
                pixels = vk.sample_discretized_logistic_mixture(recon, channels=self.image_shape[0])
            return (pixels + 1.0) / 2.0
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_mean(recon)
        if self.likelihood == "laplace":
            return recon.clamp(0.0, 1.0)
        return recon

    def data_image(self, x: Tensor) -> Tensor:
        """The picture of data the model sees, in [0, 1]: the mixture's data lies on
        [-1, 1], the other likelihoods' on [0, 1] already."""
        if self.likelihood in MIXTURE_LIKELIHOODS:
            return (x + 1.0) / 2.0
        return x

    def sample_latent(
        self,
        mu: Tensor,
        logvar: Tensor,
        eps: Optional[Tensor] = None,
        num_samples: Optional[int] = None,
    ) -> Tensor:
        """z ~ q(z|x) by ``vk.reparameterize``: in-kernel Philox noise unless ``eps`` is given."""
        return vk.reparameterize(mu, logvar, eps, num_samples=num_samples, backend=self.backend)

    def forward(self, x: Tensor, eps: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """One pass x -> q(z|x) -> z -> p(x|z): returns ``(recon, mu, logvar)``.

        z is sampled in training and in evaluation alike: the negative ELBO is an
        expectation over q(z|x), and a sample is what makes the reported test ELBO an
        unbiased estimate of it. ``eps`` (shape of ``mu``) fixes the noise, e.g. to
        compare backends, which draw different noise for the same seed.
        """
        mu, logvar = self.encode(x)
        z = self.sample_latent(mu, logvar, eps)
        return self.decode(z), mu, logvar

    def _check_input(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.input_dim:
            raise ValueError(
                f"x must have shape (B, {self.input_dim}) or (B, *{self.image_shape}), "
                f"got {tuple(x.shape)}"
            )
        return x


class MLPVAE(VAEBase):
    """The pytorch/examples ``vae/main.py`` model: 784-400-(20, 20) / 20-400-784, ReLU.

    The decoder ends in logits (the examples apply a sigmoid; ``likelihood="bernoulli_probs"``
    keeps that, ``"bernoulli"`` hands the logits to the fused loss instead).
    """

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dim: int = 400,
        likelihood: str = "bernoulli",
        image_shape: tuple[int, ...] = MNIST_SHAPE,
        backend: str = "auto",
        mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
    ) -> None:
        super().__init__(image_shape, latent_dim, likelihood, backend, mixture_components)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        # Layer names follow pytorch/examples, so its state dicts load.
        self.fc1 = nn.Linear(self.input_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, latent_dim)
        self.fc22 = nn.Linear(hidden_dim, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden_dim)
        # One output per pixel, or the mixture's P per pixel (channel-major, as decode reads).
        pixels = math.prod(self.image_shape[1:])
        self.fc4 = nn.Linear(hidden_dim, self.decoder_channels * pixels)

    def config(self) -> dict[str, Any]:
        return {
            "model": "mlp",
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "image_shape": list(self.image_shape),
            **self._config_extras(),
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.fc1(self._check_input(x).reshape(x.shape[0], self.input_dim)))
        return self.fc21(h), self.fc22(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.fc4(torch.relu(self.fc3(z)))

    def recon_shape(self, batch: int) -> tuple[int, ...]:
        if self.likelihood in MIXTURE_LIKELIHOODS:
            return (batch, self.decoder_channels, *self.image_shape[1:])
        return (batch, self.input_dim)


class ConvVAE(VAEBase):
    """A small convolutional VAE: two stride-2 convolutions down, two transposed up.

    Height and width must be divisible by 4 (28 x 28 MNIST -> 14 -> 7 and back).
    """

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dim: int = 256,
        likelihood: str = "bernoulli",
        image_shape: tuple[int, ...] = MNIST_SHAPE,
        backend: str = "auto",
        channels: tuple[int, int] = (32, 64),
        mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
    ) -> None:
        super().__init__(image_shape, latent_dim, likelihood, backend, mixture_components)
        in_channels, height, width = self.image_shape
        if height % 4 or width % 4:
            raise ValueError(
                f"ConvVAE needs height and width divisible by 4, got image_shape {self.image_shape}"
            )
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.channels = (int(channels[0]), int(channels[1]))
        c1, c2 = self.channels
        self.feature_shape = (c2, height // 4, width // 4)
        features = math.prod(self.feature_shape)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(features, hidden_dim),
            nn.ReLU(),
        )
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder_input = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, features),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            # The image's channels, or the mixture's P parameters per pixel.
            nn.ConvTranspose2d(c1, self.decoder_channels, kernel_size=4, stride=2, padding=1),
        )

    def config(self) -> dict[str, Any]:
        return {
            "model": "conv",
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "image_shape": list(self.image_shape),
            "channels": list(self.channels),
            **self._config_extras(),
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(self._check_input(x).reshape(x.shape[0], *self.image_shape))
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        h = self.decoder_input(z).reshape(z.shape[0], *self.feature_shape)
        return self.decoder(h)

    def recon_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.decoder_channels, *self.image_shape[1:])


def build_model(config: dict[str, Any], backend: str = "auto") -> VAEBase:
    """A model from its ``config()`` dict (as stored in checkpoints).

    ``config["model"]`` is ``"mlp"`` or ``"conv"``; the other keys are the model's
    constructor arguments. ``hidden_dim`` defaults to 400 (mlp) / 256 (conv);
    ``mixture_components`` (``likelihood="dmol"`` only) to ``DEFAULT_MIXTURE_COMPONENTS``.
    """
    config = dict(config)
    name = config.pop("model", None)
    if name not in MODEL_NAMES:
        raise ValueError(f"config['model'] must be one of {MODEL_NAMES}, got {name!r}")
    if "image_shape" in config:
        config["image_shape"] = tuple(int(s) for s in config["image_shape"])
    if name == "mlp":
        return MLPVAE(backend=backend, **config)
    if "channels" in config:
        config["channels"] = tuple(config["channels"])
    return ConvVAE(backend=backend, **config)
