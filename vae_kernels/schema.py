"""The encodings of the ops' arguments (csrc/schemas.cpp) and the table of reconstruction
likelihoods: one place for the public API, every backend and the tests. Importing it
loads no compiled library.

Adding an elementwise likelihood to ``elbo_loss``: its formula in ``csrc/math`` (bound
to its inputs in ``csrc/math/losses.h``) and in ``vae_kernels/triton/math.py``, a row
in ``LIKELIHOODS`` below (its LossKind appended to ``kElboLikelihoods`` in the same
order), its float64 reference in ``vae_kernels/reference.py``, and rows in the tests'
case tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

# The `reduction` argument of the loss ops.
REDUCTION_NONE, REDUCTION_PER_SAMPLE, REDUCTION_SUM = 0, 1, 2
# The public `reduction` names (``reduction_args`` encodes them).
REDUCTIONS = ("none", "sum", "mean", "batchmean", "per_sample")
ELBO_REDUCTIONS = ("batchmean", "sum", "per_sample")


class LossKind(enum.IntEnum):
    """The elementwise losses of the kernels: csrc/math/losses.h's ``LossKind``, and the
    ``KIND`` of the Triton loss kernel."""

    BERNOULLI_LOGITS = 0  # logits, target
    BERNOULLI_PROBS = 1  # probabilities, target
    GAUSSIAN_FIXED_VAR = 2  # mean, target (the log-variance is a scalar argument)
    GAUSSIAN_LEARNED_VAR = 3  # mean, target, logvar
    SQUARED_ERROR = 4  # input, target
    KL_STD_NORMAL = 5  # mu, logvar
    KL_PRIOR = 6  # mu, logvar, prior_mu, prior_logvar


@dataclass(frozen=True)
class Likelihood:
    """A reconstruction likelihood of ``elbo_loss``."""

    name: str  # elbo_loss(likelihood=name)
    recon: str  # what elbo_loss's ``recon`` holds
    kind: LossKind  # the kernels' elementwise loss (at unit scale)


# The elbo op's `likelihood` argument is the row's index (csrc/math/losses.h's
# kElboLikelihoods lists the same kinds in the same order).
LIKELIHOODS = (
    Likelihood("bernoulli", "logits", LossKind.BERNOULLI_LOGITS),
    Likelihood("bernoulli_probs", "probabilities", LossKind.BERNOULLI_PROBS),
    Likelihood("gaussian", "the mean (unit variance)", LossKind.GAUSSIAN_FIXED_VAR),
    Likelihood("mse", "the prediction (squared error)", LossKind.SQUARED_ERROR),
)
LIKELIHOOD_NAMES = tuple(likelihood.name for likelihood in LIKELIHOODS)
LIKELIHOOD_CODES = {likelihood.name: code for code, likelihood in enumerate(LIKELIHOODS)}


def local_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a loss op's local-gradient outputs for inputs of ``dtype``: float32
    for float16 (a local gradient can exceed 65504 before the upstream gradient and
    1/divisor bring it back into range, e.g. d KL/d logvar at logvar 12), else ``dtype``."""
    return torch.float32 if dtype == torch.float16 else dtype


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
