"""nn.Module wrappers of the functional API, for code that builds its loss as a module."""

from __future__ import annotations

from typing import Union

from torch import Tensor, nn

from . import functional as F


class ELBOLoss(nn.Module):
    """The negative ELBO as a module: ``ELBOLoss(...)(recon, x, mu, logvar)``.

    See :func:`vae_kernels.elbo_loss` for the arguments; they are fixed at construction.
    ``recon_scale`` is a fixed float here; a learned scale (a tensor) is passed at call
    time: ``loss(recon, x, mu, logvar, recon_scale=self.logvar)``.
    """

    def __init__(
        self,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        reduction: str = "batchmean",
        return_components: bool = False,
        backend: str = "auto",
        recon_scale: Union[float, None] = None,
        scale: str = "logvar",
    ) -> None:
        super().__init__()
        if likelihood not in F.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {F.LIKELIHOODS}, got {likelihood!r}")
        if reduction not in F.ELBO_REDUCTIONS:
            raise ValueError(f"reduction must be one of {F.ELBO_REDUCTIONS}, got {reduction!r}")
        self.likelihood = likelihood
        self.beta = beta
        self.reduction = reduction
        self.return_components = return_components
        self.backend = backend
        self.recon_scale = recon_scale
        self.scale = scale

    def forward(
        self,
        recon: Tensor,
        x: Tensor,
        mu: Tensor,
        logvar: Tensor,
        recon_scale: Union[Tensor, float, None] = None,
    ) -> Union[Tensor, tuple[Tensor, Tensor, Tensor]]:
        return F.elbo_loss(
            recon,
            x,
            mu,
            logvar,
            likelihood=self.likelihood,
            beta=self.beta,
            recon_scale=self.recon_scale if recon_scale is None else recon_scale,
            scale=self.scale,
            reduction=self.reduction,
            return_components=self.return_components,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, beta={self.beta}, reduction={self.reduction!r}"


class GaussianKLLoss(nn.Module):
    """KL(N(mu, exp(logvar)) || prior), the prior N(0, I) or given at call time; see
    :func:`vae_kernels.gaussian_kl` (``scale="logsigma"``: the scales are log sigma)."""

    def __init__(
        self, reduction: str = "batchmean", backend: str = "auto", scale: str = "logvar"
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.backend = backend
        self.scale = scale

    def forward(
        self,
        mu: Tensor,
        logvar: Tensor,
        prior_mu: Union[Tensor, None] = None,
        prior_logvar: Union[Tensor, None] = None,
    ) -> Tensor:
        return F.gaussian_kl(
            mu, logvar, prior_mu, prior_logvar, reduction=self.reduction, scale=self.scale,
            backend=self.backend,
        )  # fmt: skip


class BernoulliNLLLoss(nn.Module):
    """Binary cross-entropy, see :func:`vae_kernels.bernoulli_nll`."""

    def __init__(
        self, logits: bool = True, reduction: str = "batchmean", backend: str = "auto"
    ) -> None:
        super().__init__()
        self.logits = logits
        self.reduction = reduction
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.bernoulli_nll(
            input, target, logits=self.logits, reduction=self.reduction, backend=self.backend
        )


class GaussianNLLLoss(nn.Module):
    """Gaussian negative log-density with a fixed float log-variance, or a learned one
    passed at call time; see :func:`vae_kernels.gaussian_nll`."""

    def __init__(
        self, logvar: float = 0.0, reduction: str = "batchmean", backend: str = "auto"
    ) -> None:
        super().__init__()
        self.logvar = logvar
        self.reduction = reduction
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor, logvar: Union[Tensor, None] = None) -> Tensor:
        return F.gaussian_nll(
            input,
            target,
            self.logvar if logvar is None else logvar,
            reduction=self.reduction,
            backend=self.backend,
        )


class LaplaceNLLLoss(nn.Module):
    """Laplace negative log-density (L1 with a scale) with a fixed float log-scale, or a
    learned one passed at call time; see :func:`vae_kernels.laplace_nll`."""

    def __init__(
        self, logscale: float = 0.0, reduction: str = "batchmean", backend: str = "auto"
    ) -> None:
        super().__init__()
        self.logscale = logscale
        self.reduction = reduction
        self.backend = backend

    def forward(
        self, input: Tensor, target: Tensor, logscale: Union[Tensor, None] = None
    ) -> Tensor:
        return F.laplace_nll(
            input,
            target,
            self.logscale if logscale is None else logscale,
            reduction=self.reduction,
            backend=self.backend,
        )


class ContinuousBernoulliNLLLoss(nn.Module):
    """Continuous-Bernoulli negative log-density from logits, see
    :func:`vae_kernels.continuous_bernoulli_nll`."""

    def __init__(self, reduction: str = "batchmean", backend: str = "auto") -> None:
        super().__init__()
        self.reduction = reduction
        self.backend = backend

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.continuous_bernoulli_nll(
            logits, target, reduction=self.reduction, backend=self.backend
        )


class DiscretizedLogisticMixtureNLLLoss(nn.Module):
    """PixelCNN++'s discretized logistic mixture NLL of images x (B, C, H, W) in [-1, 1]
    given a decoder's params (B, P, H, W); see
    :func:`vae_kernels.discretized_logistic_mixture_nll`."""

    def __init__(
        self, num_bits: int = 8, reduction: str = "batchmean", backend: str = "auto"
    ) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.reduction = reduction
        self.backend = backend

    def forward(self, params: Tensor, x: Tensor) -> Tensor:
        return F.discretized_logistic_mixture_nll(
            params, x, num_bits=self.num_bits, reduction=self.reduction, backend=self.backend
        )
