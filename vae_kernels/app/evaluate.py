"""Evaluate a trained VAE: ``python -m vae_kernels evaluate CHECKPOINT`` (or its run directory).

Reports, per test image and averaged with standard errors:

- the negative ELBO ``E_q[-log p(x|z)] + KL(q(z|x) || p(z))`` (analytic KL, the
  reconstruction term averaged over ``--elbo-samples`` draws), from ``vk.elbo_loss``
  (for the mixture ``vk.discretized_logistic_mixture_nll`` and ``vk.gaussian_kl``);
- an importance-sampled estimate of log p(x) with K samples from q(z|x) (Burda et al.
  2016): ``log (1/K) sum_k p(x, z_k) / q(z_k|x)``, a lower bound that tightens to
  log p(x) as K grows, its log-weights computed by the fused kernels;
- the gap ``log p(x) - ELBO``, which is ``KL(q(z|x) || p(z|x))`` in the ELBO derivation
  (up to the estimate's own bias, which shrinks with K);
- the negative ELBO and -log p(x) per dimension (pixel and channel), in nats and in bits
  (nats / ln 2): the unit of the discretized logistic mixture's results (``dmol``).

``--limit N`` evaluates a fixed subset of N test images, stratified by label where the
data has labels, and writes its own ``evaluation-limitN.json`` (the full evaluation's
``evaluation.json`` is left alone).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from . import data as data_module
from .models import VAEBase, build_model
from .train import (
    BACKENDS,
    NATS_DECIMALS,
    PER_DIM_DECIMALS,
    checkpoint_file,
    elbo_components,
    fixed_test_images,
    load_checkpoint,
    log_importance_weights,
    per_dimension,
    progress_bar,
    resolve_device,
    round_floats,
)

DEFAULT_K = 5000

__all__ = [
    "elbo_per_image",
    "log_px_per_image",
    "summarize",
    "per_dimension_summary",
    "evaluate_checkpoint",
    "default_output",
    "add_arguments",
    "run",
    "main",
]


@torch.no_grad()
def elbo_per_image(
    model: VAEBase, images: Tensor, batch_size: int = 500, num_samples: int = 1
) -> dict[str, Tensor]:
    """Per-image ELBO (not negated), reconstruction log-likelihood and KL, shape (N,) each.

    The reconstruction term is averaged over ``num_samples`` draws of z; the KL is analytic.
    """
    model.eval()
    device = next(model.parameters()).device
    elbo, log_lik, kl = [], [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        recon_sum = torch.zeros(x.shape[0], dtype=torch.float64)
        kl_batch = None
        for _ in range(num_samples):
            recon, mu, logvar = model(x)
            _, recon_nll, kl_value = elbo_components(
                model, recon, x, mu, logvar, reduction="per_sample"
            )
            recon_sum += recon_nll.double().cpu()
            kl_batch = kl_value.double().cpu()
        recon_mean = recon_sum / num_samples
        log_lik.append(-recon_mean)
        kl.append(kl_batch)
        elbo.append(-recon_mean - kl_batch)
    return {"elbo": torch.cat(elbo), "log_lik": torch.cat(log_lik), "kl": torch.cat(kl)}


@torch.no_grad()
def log_px_per_image(
    model: VAEBase,
    images: Tensor,
    num_samples: int = DEFAULT_K,
    max_rows: int = 20000,
    progress: bool = False,
) -> Tensor:
    """Importance-sampled log p(x) per image with ``num_samples`` samples (shape (N,), float64).

    ``log p(x) ~= logsumexp_k(log w_k) - log K``, w_k = p(x|z_k) p(z_k) / q(z_k|x). The
    K samples are drawn in chunks so at most ``max_rows`` decoder rows (images x samples)
    are in memory at once; the log-sum-exp is accumulated across chunks. A row counts
    as the size of an image: a decoder emitting P values per pixel (the mixture's
    parameters) for C channels counts as P/C rows, so its memory stays the same.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    model.eval()
    device = next(model.parameters()).device
    values_per_row = math.prod(model.recon_shape(1))
    max_rows = max(1, max_rows * model.input_dim // values_per_row)
    images_per_batch = max(1, min(images.shape[0], max_rows // min(num_samples, max_rows)))
    samples_per_chunk = max(1, min(num_samples, max_rows // images_per_batch))
    results = []
    bar = progress_bar(images.shape[0], f"log p(x), K={num_samples}", progress, unit="image")
    for start in range(0, images.shape[0], images_per_batch):
        x = images[start : start + images_per_batch].to(device)
        running = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
        remaining = num_samples
        while remaining > 0:
            k = min(samples_per_chunk, remaining)
            log_px_given_z, log_pz, log_qz = log_importance_weights(model, x, k)
            log_w = (log_px_given_z + log_pz - log_qz).double().cpu()
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
            remaining -= k
        results.append(running - math.log(num_samples))
        bar.update(x.shape[0])
    bar.close()
    return torch.cat(results)


def summarize(values: Tensor) -> dict[str, float]:
    """Mean and standard error of the mean of per-image values."""
    values = values.double()
    n = values.numel()
    std = float(values.std(unbiased=True)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "stderr": std / math.sqrt(n), "n": n}


def per_dimension_summary(stats: dict[str, float], dimensions: int) -> dict[str, Any]:
    """A summary in nats per image (``summarize``'s mean and standard error) as nats and
    bits per dimension: ``{"nats_per_dim": {...}, "bits_per_dim": {...}}``."""
    mean = per_dimension(stats["mean"], dimensions)
    stderr = per_dimension(stats["stderr"], dimensions)
    return {unit: {"mean": mean[unit], "stderr": stderr[unit], "n": stats["n"]} for unit in mean}


def evaluate_checkpoint(
    checkpoint: str | Path,
    k: int = DEFAULT_K,
    data: Optional[str] = None,
    limit: Optional[int] = None,
    elbo_samples: int = 10,
    max_rows: int = 20000,
    backend: str = "auto",
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Test-set ELBO, log p(x) estimate with ``k`` samples and their gap, in nats per image.

    ``checkpoint`` is a checkpoint file or the run directory holding ``checkpoint.pt``.
    The test set is the one the run trained against (from the checkpoint's ``--data``,
    unless ``data`` overrides it), binarized with the same fixed seed for Bernoulli
    models; ``limit`` keeps a fixed subset of ``limit`` test images, stratified by label
    where the data has labels (a random one otherwise), never simply the first ones.
    """
    checkpoint = checkpoint_file(checkpoint)
    state = load_checkpoint(checkpoint)
    resolved = resolve_device(device)
    model = build_model(state["model_config"], backend=backend).to(resolved)
    model.load_state_dict(state["model_state"])
    data_path = data if data is not None else state["train_config"].get("data")
    dataset = data_module.load_dataset(data_path)
    if tuple(dataset.image_shape) != tuple(model.image_shape):
        raise data_module.DataError(
            f"the data's images have shape {tuple(dataset.image_shape)}, but the checkpoint's "
            f"model expects {tuple(model.image_shape)}"
        )
    images = fixed_test_images(dataset, model.likelihood)
    total_images = images.shape[0]
    subset = None
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if limit < total_images:
            labels = dataset.test_labels
            images = images[data_module.subset_indices(total_images, limit, labels)]
            how = "stratified by label" if labels is not None else "random"
            subset = f"{limit} of {total_images} test images, {how} (fixed)"
    torch.manual_seed(seed)
    started = time.perf_counter()
    elbo = elbo_per_image(model, images, num_samples=elbo_samples)
    log_px = log_px_per_image(model, images, k, max_rows=max_rows, progress=progress)
    seconds = time.perf_counter() - started
    neg_elbo = summarize(-elbo["elbo"])
    neg_log_px = summarize(-log_px)
    return {
        "checkpoint": str(checkpoint),
        "data": dataset.source,
        "likelihood": model.likelihood,
        "test_images": images.shape[0],
        "subset": subset,
        "k": k,
        "elbo_samples": elbo_samples,
        "dimensions": model.input_dim,
        "elbo": summarize(elbo["elbo"]),
        "neg_elbo": neg_elbo,
        "recon_log_lik": summarize(elbo["log_lik"]),
        "kl": summarize(elbo["kl"]),
        "log_px": summarize(log_px),
        "gap": summarize(log_px - elbo["elbo"]),
        # The two NLLs (-ELBO, an upper bound, and -log p(x)'s estimate) per dimension.
        "neg_elbo_per_dim": per_dimension_summary(neg_elbo, model.input_dim),
        "neg_log_px_per_dim": per_dimension_summary(neg_log_px, model.input_dim),
        "seconds": seconds,
    }


def format_report(result: dict[str, Any]) -> str:
    def line(label: str, stats: dict[str, float]) -> str:
        return f"  {label:<34} {stats['mean']:10.3f} +- {stats['stderr']:.3f}"

    def per_dim_line(label: str, stats: dict[str, dict[str, float]]) -> str:
        bits, nats = stats["bits_per_dim"], stats["nats_per_dim"]
        return (
            f"  {label:<34} {bits['mean']:10.4f} +- {bits['stderr']:.4f} bits/dim "
            f"({nats['mean']:.4f} +- {nats['stderr']:.4f} nats/dim)"
        )

    images = result["subset"] or f"{result['test_images']} test images"
    return "\n".join(
        [
            f"{result['checkpoint']}: {images} ({result['data']})",
            "  nats per image, mean +- standard error over images",
            line("ELBO", result["elbo"]),
            line("  reconstruction log p(x|z)", result["recon_log_lik"]),
            line("  KL(q(z|x) || p(z))", result["kl"]),
            line(f"log p(x), importance-sampled K={result['k']}", result["log_px"]),
            line("gap log p(x) - ELBO", result["gap"]),
            f"  per dimension ({result['dimensions']} per image), bits = nats / ln 2",
            per_dim_line("-ELBO", result["neg_elbo_per_dim"]),
            per_dim_line(f"-log p(x), K={result['k']}", result["neg_log_px_per_dim"]),
            f"  ({result['seconds']:.1f} s)",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` subcommand's options."""
    parser.add_argument(
        "checkpoint",
        help="checkpoint.pt written by `vae-kernels train`, or the run directory holding it",
    )
    parser.add_argument(
        "--k",
        type=int,
        default=DEFAULT_K,
        help="importance samples per image (default %(default)s)",
    )
    parser.add_argument(
        "--data", default=None, help="evaluate on this data instead of the checkpoint's"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="a fixed subset of N test images, stratified by label (a quick check; written "
        "to its own evaluation-limitN.json)",
    )
    parser.add_argument(
        "--elbo-samples",
        type=int,
        default=10,
        help="draws of z averaged in the ELBO's reconstruction term (default %(default)s)",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=20000,
        help="most decoder rows (images x samples) in memory at once, a row the size of an "
        "image (a mixture's P parameters per pixel count as P/C rows; default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="loss kernels: cpu (fused C++), torch (eager reference), auto (default: the "
        "fastest for the device)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda if present)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampled z (ELBO draws and importance samples; default %(default)s)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="write the results as JSON here (default: evaluation.json beside the checkpoint; "
        "evaluation-kK-limitN.json for a non-default --k or a --limit)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``evaluate`` subcommand."""
    for name in ("k", "elbo_samples", "max_rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    checkpoint = checkpoint_file(args.checkpoint)
    result = evaluate_checkpoint(
        checkpoint,
        k=args.k,
        data=args.data,
        limit=args.limit,
        elbo_samples=args.elbo_samples,
        max_rows=args.max_rows,
        backend=args.backend,
        device=args.device,
        seed=args.seed,
        progress=True,  # shown on a terminal only
    )
    print(format_report(result))
    output = Path(args.output) if args.output else default_output(checkpoint, args.k, args.limit)
    rounded = round_floats(result, NATS_DECIMALS)
    for name in ("neg_elbo_per_dim", "neg_log_px_per_dim"):
        rounded[name] = round_floats(result[name], PER_DIM_DECIMALS)
    with open(output, "w") as f:
        json.dump(rounded, f, indent=2)
    print(f"wrote {output}")
    return 0


def default_output(checkpoint: Path, k: int, limit: Optional[int]) -> Path:
    """``evaluation.json`` beside the checkpoint for the full, default evaluation; a quick
    one (``--limit``, another ``--k``) gets its own name and never overwrites it."""
    suffix = (f"-k{k}" if k != DEFAULT_K else "") + (f"-limit{limit}" if limit else "")
    return checkpoint.with_name(f"evaluation{suffix}.json")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vae-kernels evaluate", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
