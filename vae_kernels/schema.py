"""The encodings of the ops' arguments (csrc/schemas.cpp) and the table of reconstruction
likelihoods: one place for the public API, every backend and the tests. Importing it
loads no compiled library.

Adding an elementwise likelihood: its formula in ``csrc/math`` (with an Op and a
LossKind in ``csrc/math/losses.h``) and in ``vae_kernels/triton/math.py``, its LossKind
and a row in ``LIKELIHOODS`` below, its float64 reference in
``vae_kernels/reference.py``, and rows in the tests' case tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

# The `reduction` argument of the loss ops.
REDUCTION_NONE, REDUCTION_PER_SAMPLE, REDUCTION_SUM = 0, 1, 2
# The public `scale` names: what the scale argument of the Gaussian ops holds.
SCALES = ("logvar", "logsigma")
# The public `reduction` names (``reduction_args`` encodes them).
REDUCTIONS = ("none", "sum", "mean", "batchmean", "per_sample")
ELBO_REDUCTIONS = ("batchmean", "sum", "per_sample")


class LossKind(enum.IntEnum):
    """The elementwise losses of the kernels: csrc/math/losses.h's ``LossKind`` (new kinds
    are appended), and the ``KIND`` of the Triton loss kernel. The reconstruction_nll and
    elbo ops take a reconstruction kind (a ``kind`` of a ``LIKELIHOODS`` row)."""

    KL_STD_NORMAL = 0  # mu, logvar
    KL_PRIOR = 1  # mu, logvar, prior_mu, prior_logvar
    BERNOULLI_LOGITS = 2  # logits, target
    BERNOULLI_PROBS = 3  # probabilities, target
    GAUSSIAN_FIXED_VAR = 4  # mean, target (the log-variance is a scalar argument)
    GAUSSIAN_LEARNED_VAR = 5  # mean, target, logvar
    SQUARED_ERROR = 6  # input, target
    LAPLACE_FIXED_SCALE = 7  # mean, target (the log-scale is a scalar argument)
    LAPLACE_LEARNED_SCALE = 8  # mean, target, logscale
    CONTINUOUS_BERNOULLI = 9  # logits, target
    KL_STD_NORMAL_LOGSIGMA = 10  # mu, logsigma
    KL_PRIOR_LOGSIGMA = 11  # mu, logsigma, prior_mu, prior_logsigma


def kl_kind(with_prior: bool, logsigma: bool) -> LossKind:
    """The KL kind for a prior (N(0, I) or given) and a scale parameterization (as
    csrc/math/losses.h's kl_kind)."""
    if logsigma:
        return LossKind.KL_PRIOR_LOGSIGMA if with_prior else LossKind.KL_STD_NORMAL_LOGSIGMA
    return LossKind.KL_PRIOR if with_prior else LossKind.KL_STD_NORMAL


@dataclass(frozen=True)
class Likelihood:
    """A reconstruction likelihood: its kernels' LossKinds and how the public API names it."""

    name: str  # elbo_loss(likelihood=name)
    recon: str  # what the reconstruction argument holds
    kind: LossKind  # at a fixed scale (``scale_value``; unit scale in elbo_loss)
    learned_kind: Optional[LossKind] = None  # with a scale tensor (a learned scale)
    scale_name: Optional[str] = None  # the public name of the scale argument
    # Whether the input and the target must lie in [0, 1] (the kernels check in-pass).
    unit_interval: tuple[bool, bool] = (False, False)


LIKELIHOODS = (
    Likelihood("bernoulli", "logits", LossKind.BERNOULLI_LOGITS, unit_interval=(False, True)),
    Likelihood(
        "bernoulli_probs", "probabilities", LossKind.BERNOULLI_PROBS, unit_interval=(True, True)
    ),
    Likelihood(
        "gaussian", "the mean", LossKind.GAUSSIAN_FIXED_VAR, LossKind.GAUSSIAN_LEARNED_VAR, "logvar"
    ),
    Likelihood("mse", "the prediction (squared error)", LossKind.SQUARED_ERROR),
    Likelihood(
        "laplace",
        "the location (L1)",
        LossKind.LAPLACE_FIXED_SCALE,
        LossKind.LAPLACE_LEARNED_SCALE,
        "logscale",
    ),
    Likelihood(
        "continuous_bernoulli", "logits", LossKind.CONTINUOUS_BERNOULLI, unit_interval=(False, True)
    ),
)
LIKELIHOOD_NAMES = tuple(likelihood.name for likelihood in LIKELIHOODS)
BY_NAME = {likelihood.name: likelihood for likelihood in LIKELIHOODS}
# Every reconstruction kind -> its row.
BY_KIND = {
    kind: likelihood
    for likelihood in LIKELIHOODS
    for kind in (likelihood.kind, likelihood.learned_kind)
    if kind is not None
}


def local_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a loss op's local-gradient outputs for inputs of ``dtype``: float32
    for float16 (a local gradient can exceed 65504 before the upstream gradient and
    1/divisor bring it back into range, e.g. d KL/d logvar at logvar 12), else ``dtype``."""
    return torch.float32 if dtype == torch.float16 else dtype


def loss_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype a loss op computes its outputs in (csrc/op_checks.h's loss_dtype): its
    inputs' dtype, or float32 where float32, bfloat16 and float16 inputs mix."""
    dtypes = {t.dtype for t in tensors if t is not None}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def reduction_args(reduction: str, t: Tensor) -> tuple[int, Union[int, torch.SymInt]]:
    """The ops' (reduction, divisor) encoding of a public ``reduction`` over ``t``."""
    if reduction == "none":
        return REDUCTION_NONE, 1
    if reduction == "per_sample":
        return REDUCTION_PER_SAMPLE, 1
    if reduction == "sum":
        return REDUCTION_SUM, 1
    if reduction == "mean":
        return REDUCTION_SUM, t.numel()
    if reduction == "batchmean":
        return REDUCTION_SUM, t.shape[0]
    raise ValueError(f"unknown reduction {reduction!r}")
