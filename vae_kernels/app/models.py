"""Reference VAE models: the pytorch/examples MLP VAE and a small convolutional VAE.

Both models share one interface, used by training and evaluation:

- ``encode(x) -> (mu, logvar)``, the parameters of q(z|x) = N(mu, exp(logvar));
- ``decode(z) -> recon``, the decoder output in the parameterization the likelihood
  expects (logits for ``"bernoulli"`` and ``"continuous_bernoulli"``, probabilities for
  ``"bernoulli_probs"``, the mean in [0, 1] for ``"gaussian"`` and ``"mse"``, the
  location in [0, 1] for ``"laplace"``; each at unit scale where it has one);
- ``mean_image(recon)``, the picture of a decoder output in [0, 1] (see its docstring);
- ``forward(x, eps=None) -> (recon, mu, logvar)``, with z drawn by
  ``vk.reparameterize`` (noise generated in-kernel unless ``eps`` is given).

``recon`` has shape ``model.recon_shape(batch)``; losses compare it with
``x.view_as(recon)``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

import vae_kernels as vk
from vae_kernels.schema import LIKELIHOOD_NAMES

MODEL_NAMES = ("mlp", "conv")
# The library's likelihoods, all of which the models can train with.
LIKELIHOODS = LIKELIHOOD_NAMES
# The decoder's logits go to the loss as they are for these; the others get a sigmoid.
LOGIT_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
MNIST_SHAPE = (1, 28, 28)

__all__ = [
    "MLPVAE",
    "ConvVAE",
    "build_model",
    "continuous_bernoulli_mean",
    "MODEL_NAMES",
    "LIKELIHOODS",
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


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class VAEBase(nn.Module):
    """What both models share: the likelihood's output mapping and the sampling step."""

    def __init__(
        self, image_shape: tuple[int, ...], latent_dim: int, likelihood: str, backend: str
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

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output in the likelihood's parameterization, for z of shape (B, latent_dim)."""
        logits = self.decode_logits(z)
        if self.likelihood in LOGIT_LIKELIHOODS:
            return logits  # the fused kernels take logits: stable, no probability clamp
        # Probabilities for bernoulli_probs (as pytorch/examples), a mean (gaussian, mse)
        # or a location (laplace) in [0, 1] otherwise.
        return torch.sigmoid(logits)

    def mean_image(self, recon: Tensor) -> Tensor:
        """The picture of ``decode``'s output, in [0, 1] (for plots).

        The decoder's expected image for ``bernoulli`` (sigmoid of the logits),
        ``bernoulli_probs``, ``gaussian`` and ``mse`` (the output itself), and
        ``continuous_bernoulli`` (the distribution's mean, ``continuous_bernoulli_mean``,
        not sigmoid(l)); for ``laplace``, its location (the median) clamped to [0, 1].
        """
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_mean(recon)
        if self.likelihood == "laplace":
            return recon.clamp(0.0, 1.0)
        return recon

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
    ) -> None:
        super().__init__(image_shape, latent_dim, likelihood, backend)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        # Layer names follow pytorch/examples, so its state dicts load.
        self.fc1 = nn.Linear(self.input_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, latent_dim)
        self.fc22 = nn.Linear(hidden_dim, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, self.input_dim)

    def config(self) -> dict[str, Any]:
        return {
            "model": "mlp",
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "image_shape": list(self.image_shape),
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.fc1(self._check_input(x).reshape(x.shape[0], self.input_dim)))
        return self.fc21(h), self.fc22(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.fc4(torch.relu(self.fc3(z)))

    def recon_shape(self, batch: int) -> tuple[int, ...]:
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
    ) -> None:
        super().__init__(image_shape, latent_dim, likelihood, backend)
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
            nn.ConvTranspose2d(c1, in_channels, kernel_size=4, stride=2, padding=1),
        )

    def config(self) -> dict[str, Any]:
        return {
            "model": "conv",
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "image_shape": list(self.image_shape),
            "channels": list(self.channels),
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(self._check_input(x).reshape(x.shape[0], *self.image_shape))
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        h = self.decoder_input(z).reshape(z.shape[0], *self.feature_shape)
        return self.decoder(h)

    def recon_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.image_shape)


def build_model(config: dict[str, Any], backend: str = "auto") -> VAEBase:
    """A model from its ``config()`` dict (as stored in checkpoints).

    ``config["model"]`` is ``"mlp"`` or ``"conv"``; the other keys are the model's
    constructor arguments. ``hidden_dim`` defaults to 400 (mlp) / 256 (conv).
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
