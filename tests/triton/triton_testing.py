"""Shared helpers of the Triton tests: where the kernels run, tolerances, inputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _kernels_unavailable_reason():
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if HAS_CUDA:
        return None
    from vae_kernels.triton.device import INTERPRETER_HOWTO, triton_imported_for_interpreter

    if not triton_imported_for_interpreter():
        return "no GPU, and triton was not imported for the interpreter: " + INTERPRETER_HOWTO
    return None  # conftest.py sets TRITON_INTERPRET=1 for each test


KERNELS_UNAVAILABLE = _kernels_unavailable_reason()
KERNELS_RUN_IN_PROCESS = KERNELS_UNAVAILABLE is None

requires_triton = pytest.mark.skipif(
    not KERNELS_RUN_IN_PROCESS,
    reason=f"the Triton kernels cannot run in this process: {KERNELS_UNAVAILABLE}",
)
gpu_only = pytest.mark.skipif(
    not (HAS_CUDA and TRITON_INSTALLED), reason="needs a CUDA GPU (and triton)"
)

# Against the float64 oracle evaluated on the same (rounded) inputs.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=5e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}
# The dtypes the interpreter computes in; half precision runs on the GPU only.
INTERPRETER_DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["none", "sum", "mean", "batchmean", "per_sample"]
# Tiny shapes, plus shapes whose tiles cross a block boundary: (70, 5) needs 3 row
# blocks, (2, 300) 2 column blocks, the second one partly masked (see layout.tile_shape).
SHAPES = [(3, 5), (2, 3, 7), (70, 5), (2, 300)]
SMALL_SHAPES = [(3, 5), (2, 3, 7)]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed, scale=1.0) -> torch.Tensor:
    t = torch.randn(shape, generator=generator(seed), dtype=torch.float64) * scale
    return t.to(dtype).to(DEVICE)


def rand(shape, dtype, seed, low=0.0, high=1.0) -> torch.Tensor:
    t = low + (high - low) * torch.rand(shape, generator=generator(seed), dtype=torch.float64)
    return t.to(dtype).to(DEVICE)


def upstream_weights(shape, dtype, seed=99) -> torch.Tensor:
    """A non-uniform upstream gradient (so backward is not only tested with 1.0)."""
    return rand(shape, dtype, seed, 0.5, 1.5)


def assert_close_to_oracle(actual: torch.Tensor, expected64: torch.Tensor, dtype, scale=1.0):
    """``actual`` matches the float64 oracle within ``dtype``'s tolerance (``scale``
    widens the absolute tolerance for sums over many elements)."""
    tol = TOLERANCES[dtype]
    assert actual.dtype == dtype, f"result dtype {actual.dtype}, expected {dtype}"
    torch.testing.assert_close(
        actual.double(), expected64.double(), rtol=tol["rtol"], atol=tol["atol"] * scale
    )


def weighted_sum(out: torch.Tensor, seed=7) -> torch.Tensor:
    """A scalar whose gradient wrt ``out`` is non-uniform: (out * w).sum()."""
    return (out * upstream_weights(out.shape, out.dtype, seed)).sum()
