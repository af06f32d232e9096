"""The cost of one call at the sizes most VAEs train at: forward+backward of each public
op against eager PyTorch and torch.compile of the same formula, with ``torch.add`` (one
dispatcher call, and its backward) as the floor of what any op costs from Python.

Each step is the op on leaves that require grad, then ``.backward()`` of its (summed)
output, as a training step runs it; gradients accumulate into ``.grad`` as in training.
Providers are interleaved round by round and the median [p20, p80] over rounds is
reported; each round times a loop of calls.

    python benchmarks/bench_per_call.py   # writes benchmarks/results/cpu-amd-epyc/per_call_<isa>.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import vae_kernels as vk
from vae_kernels import ops

from bench_training import cpu_model_name, quantile

RESULTS_DIR = Path(__file__).parent / "results" / "cpu-amd-epyc"


def eager_gaussian_kl(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def eager_reparameterize(mu, logvar):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def eager_elbo(recon, x, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    return (bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / recon.shape[0]


def add_floor(a, b):
    return torch.add(a, b)


@dataclass
class Case:
    name: str
    shape_label: str
    make_inputs: Callable[[], tuple]
    eager: Callable
    ours: Callable


def _leaves(*shapes):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=g).requires_grad_() for s in shapes)


def _elbo_inputs(batch, dim, latent):
    g = torch.Generator().manual_seed(0)
    recon, mu, logvar = _leaves((batch, dim), (batch, latent), (batch, latent))
    return recon, torch.rand(batch, dim, generator=g).round(), mu, logvar


SD = (32, 4, 64, 64)  # Stable Diffusion's VAE latents at 512x512
CASES = [
    Case("gaussian_kl", "1 element", lambda: _leaves((1, 1), (1, 1)), eager_gaussian_kl, vk.gaussian_kl),
    Case("gaussian_kl", "B=128 J=20", lambda: _leaves((128, 20), (128, 20)), eager_gaussian_kl, vk.gaussian_kl),
    Case("gaussian_kl", "(32, 4, 64, 64)", lambda: _leaves(SD, SD), eager_gaussian_kl, vk.gaussian_kl),
    Case("reparameterize (in-kernel noise)", "1 element", lambda: _leaves((1, 1), (1, 1)),
         eager_reparameterize, vk.reparameterize),
    Case("reparameterize (in-kernel noise)", "B=128 J=20", lambda: _leaves((128, 20), (128, 20)),
         eager_reparameterize, vk.reparameterize),
    Case("reparameterize (in-kernel noise)", "(32, 4, 64, 64)", lambda: _leaves(SD, SD),
         eager_reparameterize, vk.reparameterize),
    Case("elbo_loss (Bernoulli logits)", "1 element", lambda: _elbo_inputs(1, 1, 1), eager_elbo,
         vk.elbo_loss),
    Case("elbo_loss (Bernoulli logits)", "B=128 D=784 J=20", lambda: _elbo_inputs(128, 784, 20),
         eager_elbo, vk.elbo_loss),
]


def step(fn: Callable, args: tuple) -> None:
    out = fn(*args)
    (out if out.dim() == 0 else out.sum()).backward()


def time_case(case: Case, rounds: int, target_s: float) -> dict:
    args = case.make_inputs()
    floor_args = (args[0], args[0])  # the first leaf, of the case's data size
    compiled = torch.compile(case.eager)
    providers = {
        "torch.add": (add_floor, floor_args),
        "eager": (case.eager, args),
        "compile": (compiled, args),
        "vae_kernels": (case.ours, args),
    }
    for fn, a in providers.values():  # warm-up (and compile)
        for _ in range(3):
            step(fn, a)
    # Calls per round: about target_s of the slowest provider.
    per_call = max(_loop_seconds(fn, a, 3) / 3 for fn, a in providers.values())
    calls = max(1, int(target_s / max(per_call, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in providers}
    for r in range(rounds):
        order = list(providers) if r % 2 == 0 else list(reversed(providers))
        for name in order:
            fn, a = providers[name]
            times[name].append(_loop_seconds(fn, a, calls) / calls)
    row = {"op": case.name, "shape": case.shape_label, "calls_per_round": calls}
    for name, values in times.items():
        row[name] = {
            "median_us": statistics.median(values) * 1e6,
            "p20_us": quantile(values, 0.2) * 1e6,
            "p80_us": quantile(values, 0.8) * 1e6,
        }
    ours = row["vae_kernels"]["median_us"]
    row["x_eager"] = row["eager"]["median_us"] / ours
    row["x_compile"] = row["compile"]["median_us"] / ours
    return row


def _loop_seconds(fn: Callable, args: tuple, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step(fn, args)
    return time.perf_counter() - start


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Per-call cost: forward+backward of one call",
        "",
        f"- {meta['date']}; {meta['cpu']}, CPU kernels ISA {meta['isa']}, {meta['threads']} threads; "
        f"torch {meta['torch']}",
        f"- command: `{meta['command']}`; medians [p20, p80] of {meta['rounds']} interleaved "
        "rounds, each a loop of calls of ~0.1 s",
        "- each step: the op on leaves that require grad, then `.backward()` of its sum; "
        "`torch.add` (of the first leaf to itself) is the floor of one dispatcher call and its backward",
        "",
        "| op | shape | torch.add µs | eager µs | compile µs | vae_kernels µs | x eager | x compile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cell = lambda name: (  # noqa: E731
            f"{row[name]['median_us']:.1f} [{row[name]['p20_us']:.1f}, {row[name]['p80_us']:.1f}]"
        )
        lines.append(
            f"| {row['op']} | {row['shape']} | {cell('torch.add')} | {cell('eager')} | "
            f"{cell('compile')} | {cell('vae_kernels')} | {row['x_eager']:.2f} | {row['x_compile']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rows = []
    for case in CASES:
        rows.append(time_case(case, args.rounds, target_s=0.1))
        r = rows[-1]
        print(f"{r['op']:34s} {r['shape']:18s} ours {r['vae_kernels']['median_us']:9.1f} us  "
              f"x eager {r['x_eager']:.2f}  x compile {r['x_compile']:.2f}", flush=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model_name(),
        "isa": ops.cpu_kernel_isa(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "command": "python benchmarks/bench_per_call.py"
        + (f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
           if "ATEN_CPU_CAPABILITY" in os.environ else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{meta['isa'].lower()}"  # the instruction set the kernels ran with
    (args.out / f"per_call{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / f"per_call{suffix}.md").write_text(markdown(rows, meta))
    print(f"written to {args.out}/per_call{suffix}.md")


if __name__ == "__main__":
    main()
