"""Triton kernels of reparameterized sampling, z_k = mu + exp(0.5 logvar) * eps_k for
K samples (mu + exp(logsigma) * eps_k with LOGSIGMA), with the caller's noise or
in-kernel Philox noise.

In-kernel noise is ``philox_standard_normal(seed, k * numel + i)`` (output i % 4 of
``tl.randn4x(seed, i // 4)``) with the seed loaded from the op's int64 seed tensor (no
host sync): bit-for-bit the generator of ``csrc/math/philox.h``,
so the Triton and C++ backends draw the same eps for the same seed tensor. The
backward kernel regenerates eps from (seed, index) instead of storing it.

Each program owns one tile of mu's (rows, row_len) view and loops over the K samples,
so mu and std are loaded once per tile, and the backward's sums over samples run in
a fixed order (k = 0, 1, ...), without atomics.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import wrap_triton
from .layout import (
    as_rows,
    as_sample_rows,
    batch_rows,
    row_length,
    sample_count,
    tile_indices,
    tile_shape,
)
from .math import (
    philox_standard_normal,
    posterior_std,
    reparameterize_forward,
    reparameterize_scale_backward,
    to_compute_dtype,
)


@triton.jit
def _load_tile(ptr, stride_row, stride_col, row, col, mask):
    offsets = row[:, None] * stride_row + col[None, :] * stride_col
    return to_compute_dtype(tl.load(ptr + offsets, mask=mask, other=0.0))


@triton.jit
def reparameterize_kernel(
    mu_ptr, mu_stride_row, mu_stride_col,
    logvar_ptr, logvar_stride_row, logvar_stride_col,
    eps_ptr, eps_stride_sample, eps_stride_row, eps_stride_col,
    z_ptr,  # contiguous (K, rows, row_len)
    rows, row_len, col_blocks, numel, num_samples,
    LOGSIGMA: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    _, row, col, mask, _ = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    mu = _load_tile(mu_ptr, mu_stride_row, mu_stride_col, row, col, mask)
    logvar = _load_tile(logvar_ptr, logvar_stride_row, logvar_stride_col, row, col, mask)
    std = posterior_std(logvar, LOGSIGMA)
    # Pointers advance by one sample per iteration: 64-bit pointer arithmetic, so
    # k * numel never overflows a 32-bit integer.
    eps_ptrs = eps_ptr + row[:, None] * eps_stride_row + col[None, :] * eps_stride_col
    z_ptrs = z_ptr + row[:, None] * row_len + col[None, :]
    for _ in range(num_samples):
        eps = to_compute_dtype(tl.load(eps_ptrs, mask=mask, other=0.0))
        z = reparameterize_forward(mu, std, eps)
        tl.store(z_ptrs, z.to(z_ptr.dtype.element_ty), mask=mask)
        eps_ptrs += eps_stride_sample
        z_ptrs += numel


@triton.jit
def reparameterize_backward_kernel(
    grad_z_ptr, grad_z_stride_sample, grad_z_stride_row, grad_z_stride_col,
    logvar_ptr, logvar_stride_row, logvar_stride_col,
    eps_ptr, eps_stride_sample, eps_stride_row, eps_stride_col,
    grad_mu_ptr, grad_logvar_ptr,  # contiguous (rows, row_len)
    rows, row_len, col_blocks, num_samples,
    LOGSIGMA: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    _, row, col, mask, _ = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    logvar = _load_tile(logvar_ptr, logvar_stride_row, logvar_stride_col, row, col, mask)
    grad_ptrs = grad_z_ptr + row[:, None] * grad_z_stride_row + col[None, :] * grad_z_stride_col
    eps_ptrs = eps_ptr + row[:, None] * eps_stride_row + col[None, :] * eps_stride_col
    sum_grad = tl.zeros_like(logvar)
    sum_grad_eps = tl.zeros_like(logvar)
    for _ in range(num_samples):  # fixed order over samples
        grad = to_compute_dtype(tl.load(grad_ptrs, mask=mask, other=0.0))
        eps = to_compute_dtype(tl.load(eps_ptrs, mask=mask, other=0.0))
        sum_grad += grad
        sum_grad_eps += grad * eps
        grad_ptrs += grad_z_stride_sample
        eps_ptrs += eps_stride_sample
    out = row[:, None] * row_len + col[None, :]
    tl.store(grad_mu_ptr + out, sum_grad.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    grad_logvar = reparameterize_scale_backward(
        posterior_std(logvar, LOGSIGMA), sum_grad_eps, LOGSIGMA
    )
    tl.store(grad_logvar_ptr + out, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


@triton.jit
def reparameterize_philox_kernel(
    mu_ptr, mu_stride_row, mu_stride_col,
    logvar_ptr, logvar_stride_row, logvar_stride_col,
    seed_ptr,  # int64 [1]
    z_ptr,  # contiguous (K, rows, row_len)
    rows, row_len, col_blocks, numel, num_samples,
    LOGSIGMA: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    _, row, col, mask, _ = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    mu = _load_tile(mu_ptr, mu_stride_row, mu_stride_col, row, col, mask)
    logvar = _load_tile(logvar_ptr, logvar_stride_row, logvar_stride_col, row, col, mask)
    std = posterior_std(logvar, LOGSIGMA)
    seed = tl.load(seed_ptr)
    # index = k * numel + i: both the Philox counter and z's (contiguous) offset.
    index = row[:, None] * row_len + col[None, :]
    for _ in range(num_samples):
        eps = philox_standard_normal(seed, index).to(mu.dtype)
        tl.store(
            z_ptr + index,
            reparameterize_forward(mu, std, eps).to(z_ptr.dtype.element_ty),
            mask=mask,
        )
        index += numel


@triton.jit
def reparameterize_philox_backward_kernel(
    grad_z_ptr, grad_z_stride_sample, grad_z_stride_row, grad_z_stride_col,
    logvar_ptr, logvar_stride_row, logvar_stride_col,
    seed_ptr,
    grad_mu_ptr, grad_logvar_ptr,  # contiguous (rows, row_len)
    rows, row_len, col_blocks, numel, num_samples,
    LOGSIGMA: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    _, row, col, mask, _ = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    logvar = _load_tile(logvar_ptr, logvar_stride_row, logvar_stride_col, row, col, mask)
    seed = tl.load(seed_ptr)
    index = row[:, None] * row_len + col[None, :]  # the forward's Philox counter
    grad_ptrs = grad_z_ptr + row[:, None] * grad_z_stride_row + col[None, :] * grad_z_stride_col
    sum_grad = tl.zeros_like(logvar)
    sum_grad_eps = tl.zeros_like(logvar)
    for _ in range(num_samples):  # fixed order over samples
        eps = philox_standard_normal(seed, index).to(logvar.dtype)  # regenerated, never stored
        grad = to_compute_dtype(tl.load(grad_ptrs, mask=mask, other=0.0))
        sum_grad += grad
        sum_grad_eps += grad * eps
        index += numel
        grad_ptrs += grad_z_stride_sample
    out = row[:, None] * row_len + col[None, :]
    tl.store(grad_mu_ptr + out, sum_grad.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    grad_logvar = reparameterize_scale_backward(
        posterior_std(logvar, LOGSIGMA), sum_grad_eps, LOGSIGMA
    )
    tl.store(grad_logvar_ptr + out, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ launchers


def _contiguous_empty(t: Tensor, shape=None) -> Tensor:
    return torch.empty(t.shape if shape is None else shape, dtype=t.dtype, device=t.device)


def launch_reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor, logsigma: bool) -> Tensor:
    rows, row_len = batch_rows(mu), row_length(mu)
    z = _contiguous_empty(eps)
    if z.numel() == 0:
        return z
    tile = tile_shape(rows, row_len)
    mu_rows, logvar_rows, eps_rows = as_rows(mu), as_rows(logvar), as_sample_rows(eps, mu)
    wrap_triton(reparameterize_kernel)[(tile.programs,)](
        mu_rows.data, mu_rows.stride_row, mu_rows.stride_col,
        logvar_rows.data, logvar_rows.stride_row, logvar_rows.stride_col,
        eps_rows.data, eps_rows.stride_sample, eps_rows.stride_row, eps_rows.stride_col,
        z,
        rows, row_len, tile.col_blocks, mu.numel(), sample_count(eps, mu),
        LOGSIGMA=logsigma, BLOCK_ROWS=tile.block_rows, BLOCK_COLS=tile.block_cols, num_warps=tile.num_warps,
    )  # fmt: skip
    return z


def launch_reparameterize_backward(
    grad_z: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor], logsigma: bool
) -> tuple[Tensor, Tensor]:
    """(d mu, d logvar) from the caller's ``eps``, or from Philox noise of ``seed``."""
    rows, row_len = batch_rows(logvar), row_length(logvar)
    grad_mu, grad_logvar = _contiguous_empty(logvar), _contiguous_empty(logvar)
    if logvar.numel() == 0:
        return grad_mu, grad_logvar
    tile = tile_shape(rows, row_len)
    grad_rows, logvar_rows = as_sample_rows(grad_z, logvar), as_rows(logvar)
    if eps is not None:
        eps_rows = as_sample_rows(eps, logvar)
        wrap_triton(reparameterize_backward_kernel)[(tile.programs,)](
            grad_rows.data, grad_rows.stride_sample, grad_rows.stride_row, grad_rows.stride_col,
            logvar_rows.data, logvar_rows.stride_row, logvar_rows.stride_col,
            eps_rows.data, eps_rows.stride_sample, eps_rows.stride_row, eps_rows.stride_col,
            grad_mu, grad_logvar,
            rows, row_len, tile.col_blocks, sample_count(grad_z, logvar),
            LOGSIGMA=logsigma, BLOCK_ROWS=tile.block_rows, BLOCK_COLS=tile.block_cols, num_warps=tile.num_warps,
        )  # fmt: skip
    else:
        wrap_triton(reparameterize_philox_backward_kernel)[(tile.programs,)](
            grad_rows.data, grad_rows.stride_sample, grad_rows.stride_row, grad_rows.stride_col,
            logvar_rows.data, logvar_rows.stride_row, logvar_rows.stride_col,
            seed,
            grad_mu, grad_logvar,
            rows, row_len, tile.col_blocks, logvar.numel(), sample_count(grad_z, logvar),
            LOGSIGMA=logsigma, BLOCK_ROWS=tile.block_rows, BLOCK_COLS=tile.block_cols, num_warps=tile.num_warps,
        )  # fmt: skip
    return grad_mu, grad_logvar


def launch_reparameterize_philox(
    mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: Optional[int], logsigma: bool
) -> Tensor:
    rows, row_len = batch_rows(mu), row_length(mu)
    z = _contiguous_empty(mu, mu.shape if num_samples is None else (num_samples, *mu.shape))
    if z.numel() == 0:
        return z
    tile = tile_shape(rows, row_len)
    mu_rows, logvar_rows = as_rows(mu), as_rows(logvar)
    wrap_triton(reparameterize_philox_kernel)[(tile.programs,)](
        mu_rows.data, mu_rows.stride_row, mu_rows.stride_col,
        logvar_rows.data, logvar_rows.stride_row, logvar_rows.stride_col,
        seed,
        z,
        rows, row_len, tile.col_blocks, mu.numel(), num_samples or 1,
        LOGSIGMA=logsigma, BLOCK_ROWS=tile.block_rows, BLOCK_COLS=tile.block_cols, num_warps=tile.num_warps,
    )  # fmt: skip
    return z
