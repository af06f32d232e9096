"""How the Triton kernels see a tensor and cut it into tiles.

Every kernel views a tensor of shape (B, ...) as a 2-D (rows, row_len) matrix with
rows = B (the batch dimension; 1 for a 0-d tensor) and row_len = numel / B, addressed
through a row stride and a column stride. ``Tensor.reshape`` gives that view without a
copy whenever the strides allow it (contiguous tensors, transposed 2-D tensors,
broadcast views such as an expanded prior or an expanded upstream gradient) and
copies only when no such view exists (e.g. a permuted 3-D tensor).

A program works on one tile of BLOCK_ROWS x BLOCK_COLS elements; the tile shape is
chosen by ``tile_shape`` (a rule, not autotuning, so the per-program partial sums and
therefore the reduced results are bitwise reproducible run to run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy
import torch
import triton
import triton.language as tl
from torch import Tensor


def batch_rows(t: Tensor) -> int:
    """B: the first dimension, or 1 for a 0-d tensor (as the C++ kernels define it)."""
    return 1 if t.dim() == 0 else t.shape[0]


def row_length(t: Tensor) -> int:
    rows = batch_rows(t)
    return 0 if rows == 0 else t.numel() // rows


@dataclass
class Rows:
    """A tensor viewed as (rows, row_len) with element strides (a view where possible)."""

    data: Tensor
    stride_row: int
    stride_col: int


def as_rows(t: Tensor) -> Rows:
    """``t`` as (rows, row_len): a view where the strides allow, else a contiguous copy."""
    view = t.reshape(batch_rows(t), row_length(t))
    return Rows(view, view.stride(0), view.stride(1))


def rows_view(t: Tensor) -> Optional[Rows]:
    """``t`` as (rows, row_len) sharing its memory (for in-place writes), or None."""
    try:
        view = t.view(batch_rows(t), row_length(t))
    except RuntimeError:  # the strides admit no such view
        return None
    return Rows(view, view.stride(0), view.stride(1))


@dataclass
class SampleRows:
    """A (K, *shape) tensor viewed as (K, rows, row_len) with element strides."""

    data: Tensor
    stride_sample: int
    stride_row: int
    stride_col: int


def sample_count(t: Tensor, like: Tensor) -> int:
    """K of samples ``t`` of shape like.shape (one sample) or (K, *like.shape)."""
    return 1 if t.dim() == like.dim() else t.shape[0]


def as_sample_rows(t: Tensor, like: Tensor) -> SampleRows:
    """``t`` of shape like.shape or (K, *like.shape) as (K, rows, row_len) of ``like``."""
    view = t.reshape(sample_count(t, like), batch_rows(like), row_length(like))
    return SampleRows(view, view.stride(0), view.stride(1), view.stride(2))


# Tile rule: aim for at least ~512 programs (enough to fill a GPU) with tiles of
# 256 to 4096 elements; a tile is as wide as the row (up to the tile size), and
# short rows are stacked so that a program still gets a full tile.
MIN_TILE = 256
MAX_TILE = 4096
TARGET_PROGRAMS = 512


@dataclass(frozen=True)
class TileShape:
    block_rows: int
    block_cols: int
    row_blocks: int
    col_blocks: int
    num_warps: int

    @property
    def programs(self) -> int:
        return self.row_blocks * self.col_blocks


def tile_shape(rows: int, row_len: int) -> TileShape:
    # Block sizes are compile-time constants: under torch.compile with dynamic shapes
    # this specializes the tile (not the sizes passed to the kernel) on the shape.
    rows, row_len = int(rows), int(row_len)
    numel = rows * row_len
    tile = min(max(triton.next_power_of_2(max(1, numel // TARGET_PROGRAMS)), MIN_TILE), MAX_TILE)
    block_cols = min(triton.next_power_of_2(max(1, row_len)), tile)
    block_rows = min(triton.next_power_of_2(max(1, rows)), tile // block_cols)
    # One warp per 256 elements of a tile, 1 to 8 warps: 8 to 16 elements per thread.
    num_warps = min(max((block_rows * block_cols) // 256, 1), 8)
    return TileShape(
        block_rows=block_rows,
        block_cols=block_cols,
        row_blocks=triton.cdiv(rows, block_rows),
        col_blocks=triton.cdiv(row_len, block_cols),
        num_warps=num_warps,
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute and accumulate in: float64 stays, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_float(value: float) -> tuple[float, float]:
    """``value`` as hi + lo, two float32 numbers (Triton passes Python floats as float32).

    A kernel that computes in float64 adds them back (``hi + lo`` carries ~48 bits of
    ``value``); a float32 kernel gets ``hi``, the correctly rounded float32 value.
    """
    hi = float(numpy.float32(value))
    lo = float(numpy.float32(value - hi))
    return hi, lo


# ------------------------------------------------------------------ device side


@triton.jit
def tile_indices(col_blocks, rows, row_len, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """This program's tile: its id, int64 row indices [R] and column indices [C], the
    in-bounds mask [R, C] and its column-block index (programs run row block major)."""
    pid = tl.program_id(0).to(tl.int64)  # int64 before any multiply: no 2^31 overflow
    row_block = pid // col_blocks
    col_block = pid % col_blocks
    row = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    col = col_block * BLOCK_COLS + tl.arange(0, BLOCK_COLS).to(tl.int64)
    mask = (row[:, None] < rows) & (col[None, :] < row_len)
    return pid, row, col, mask, col_block
