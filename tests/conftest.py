"""Shared helpers: dtype tolerances, the backends under test, and the oracle comparison."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
import torch

import vae_kernels as vk


def _inductor_cache_for_this_build() -> str:
    """An inductor cache directory of this build's own: torch.compile's on-disk cache
    does not key on a custom op's schema or meaning, so a graph compiled against an
    earlier build of the ops (another argument order, another kind numbering) would be
    reused and give wrong numbers. Nor does it key on ATEN_CPU_CAPABILITY: code compiled
    for one instruction set fails to build under another, so each gets its own too."""
    package = Path(vk.__file__).parent
    digest = hashlib.sha256(os.environ.get("ATEN_CPU_CAPABILITY", "").encode())
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".so") and path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return os.path.join(tempfile.gettempdir(), f"vk_inductor_{digest.hexdigest()[:16]}")


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_for_this_build())

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
