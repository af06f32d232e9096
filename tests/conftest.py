"""Shared helpers: dtype tolerances, the backends under test, and the oracle comparison."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk

# Tolerances against the float64 oracle evaluated on the same (rounded) inputs.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=5e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}
ALL_DTYPES = list(TOLERANCES)
REDUCTIONS = ["none", "sum", "mean", "batchmean", "per_sample"]

NATIVE_BACKENDS = [b for b in ("cpu",) if b in vk.available_backends()]
requires_cpu_backend = pytest.mark.skipif(
    "cpu" not in vk.available_backends(), reason="the C++ extension is not built"
)


def assert_close_to_oracle(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype,
                           scale: float = 1.0) -> None:
    """``actual`` (any dtype) matches the float64 ``expected64`` within ``dtype``'s tolerance.

    ``scale`` widens the absolute tolerance for sums over many elements.
    """
    tol = TOLERANCES[dtype]
    # A true value beyond the dtype's range is an overflow (inf), as in torch itself.
    big = expected64.abs() > torch.finfo(dtype).max
    expected64 = torch.where(big, expected64.sign() * float("inf"), expected64)
    torch.testing.assert_close(
        actual.double(), expected64, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=True
    )


def upstream_weights(out: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A non-uniform upstream gradient of ``out``'s shape (so backward is not only 1.0)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5).to(out.dtype)
