"""In-kernel noise against ``torch.randn_like``: the forward of
``reparameterize_philox`` (Philox4x32-10 + Box-Muller, then ``mu + exp(0.5 logvar) * eps``)
with mu = logvar = 0, against ``torch.randn_like(mu)`` alone, on 1 and 2 threads.

The in-kernel draw does more than ``randn_like`` (it also computes and writes z), so a
ratio above 1 means the noise is cheaper than torch's. In one process, the two
alternate three times, 11 timed rounds each; medians.

    python benchmarks/bench_noise.py            # prints a markdown table
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_noise.py
"""

from __future__ import annotations

import datetime
import statistics
import time
from typing import Callable

import torch

from vae_kernels import ops

from bench_training import cpu_model_name

SIZES = (2560, 262144, 1 << 20)  # B=128 J=20; 1024x256; 1M


def _median_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    op = torch.ops.vae_kernels.reparameterize_philox.default
    seed = torch.tensor([1234], dtype=torch.int64)
    print(f"- {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
          f"{cpu_model_name()}, CPU kernels ISA {ops.cpu_kernel_isa()}; torch {torch.__version__}")
    print("- command: `python benchmarks/bench_noise.py`; 3 alternations of 11 rounds, medians\n")
    print("| threads | elements | in-kernel draw + z µs | randn_like µs | x randn_like |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for numel in SIZES:
            mu = torch.zeros(numel)
            logvar = torch.zeros(numel)
            ours = lambda: op(mu, logvar, seed, None, False)  # noqa: E731
            eager = lambda: torch.randn_like(mu)  # noqa: E731
            calls = max(5, int(1e5 // (numel + 50)))
            for fn in (ours, eager):
                for _ in range(10):
                    fn()
            pairs = [(_median_us(ours, calls, 11), _median_us(eager, calls, 11)) for _ in range(3)]
            ours_us = statistics.median(p[0] for p in pairs)
            eager_us = statistics.median(p[1] for p in pairs)
            print(f"| {threads} | {numel} | {ours_us:.1f} | {eager_us:.1f} | {eager_us / ours_us:.2f} |")


if __name__ == "__main__":
    main()
