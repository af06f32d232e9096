"""Peak memory of one forward+backward of the discretized logistic mixture NLL at
B=16, 3x64x64, M=10, float32, measured as the process's peak resident memory above what
the inputs already use (each provider in its own process, so one's freed memory cannot
hide another's). The benchmark suite's allocator-event count cannot see the CPU
backend's gradient buffer when it reuses a cached storage; this measures the memory.

    python benchmarks/mixture_peak_rss.py          # runs eager and vae_kernels
"""

from __future__ import annotations

import resource
import subprocess
import sys

B, H, W, M = 16, 64, 64, 10


def measure(provider: str) -> None:
    import torch

    import vae_kernels as vk
    from vae_kernels import reference

    torch.manual_seed(0)
    params = torch.randn(B, 10 * M, H, W).requires_grad_()
    x = torch.randint(0, 256, (B, 3, H, W)) * (2 / 255) - 1
    before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    if provider == "eager":
        loss = reference.pixelcnn_discretized_mix_logistic_nll(params, x).sum() / B
    else:
        loss = vk.discretized_logistic_mixture_nll(params, x)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{provider}: peak resident memory above the inputs {(peak - before) / 1e6:.1f} MB "
          f"(params {params.numel() * 4 / 1e6:.1f} MB; its .grad is part of both)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1])
    else:
        for provider in ("eager", "vae_kernels"):
            subprocess.run([sys.executable, __file__, provider], check=True)
