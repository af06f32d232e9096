"""vae_kernels: fused kernels with hand-written backward passes for training VAEs.

>>> import vae_kernels as vk
>>> z = vk.reparameterize(mu, logvar)                       # in-kernel Philox noise
>>> loss = vk.elbo_loss(decoder(z), x, mu, logvar)          # negative ELBO, nats / datapoint
"""

from .backends import available_backends
from .functional import (
    bernoulli_nll,
    continuous_bernoulli_nll,
    discretized_logistic_mixture_nll,
    elbo_loss,
    gaussian_kl,
    gaussian_nll,
    laplace_nll,
    mse_loss,
    reparameterize,
    sample_discretized_logistic_mixture,
)
from .modules import (
    BernoulliNLLLoss,
    ContinuousBernoulliNLLLoss,
    DiscretizedLogisticMixtureNLLLoss,
    ELBOLoss,
    GaussianKLLoss,
    GaussianNLLLoss,
    LaplaceNLLLoss,
)

__version__ = "0.1.0"

__all__ = [
    "reparameterize",
    "gaussian_kl",
    "bernoulli_nll",
    "gaussian_nll",
    "mse_loss",
    "laplace_nll",
    "continuous_bernoulli_nll",
    "discretized_logistic_mixture_nll",
    "sample_discretized_logistic_mixture",
    "elbo_loss",
    "ELBOLoss",
    "GaussianKLLoss",
    "BernoulliNLLLoss",
    "GaussianNLLLoss",
    "LaplaceNLLLoss",
    "ContinuousBernoulliNLLLoss",
    "DiscretizedLogisticMixtureNLLLoss",
    "available_backends",
    "__version__",
]
