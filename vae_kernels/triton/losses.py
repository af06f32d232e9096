"""Triton kernels of the loss ops: one fused elementwise pass, the fixed-order
reduction of its partial sums, and the shared backward pass.

- ``elementwise_loss_kernel`` computes, for one tile, the loss of every element
  (formulas: ``vae_kernels/triton/math.py``), the local gradients
  d loss_i / d input_i / divisor that were asked for, the tile's partial sums, and
  whether inputs that must lie in [0, 1] do. This is the Triton counterpart of
  ``csrc/cpu/loss_loop.h``.
- Partial sums are written to fixed positions: one per (row, column block) when the
  result is per row, one per program when it is a single sum. No atomics.
- ``partials_per_row_kernel`` / ``partials_total_kernel`` then add the partials in a
  fixed order (a sequential loop over blocks, a fixed-shape ``tl.sum`` at the end), so
  two runs give bitwise-equal results.
- ``loss_backward_kernel``: local gradient * upstream gradient, with the upstream
  gradient per element, per row or a scalar.

The launchers take and return torch tensors and launch through
``torch.library.wrap_triton`` (see ``launch.py``), so torch.compile sees the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..schema import (
    REDUCTION_NONE,
    REDUCTION_PER_SAMPLE,
    LossKind,
    local_grad_dtype,
    loss_dtype,
)
from ..schema import kl_kind as schema_kl_kind  # LossKind values; here as KIND constexprs
from .launch import wrap_triton
from .layout import (
    Rows,
    as_rows,
    batch_rows,
    compute_dtype,
    row_length,
    rows_view,
    split_float,
    tile_indices,
    tile_shape,
)
from .math import (
    LOG_2,
    LOG_2PI,
    bernoulli_logits_nll_and_grad,
    bernoulli_probs_nll_and_grad,
    continuous_bernoulli_nll_and_grad,
    gaussian_kl_and_grad,
    gaussian_kl_std_normal_and_grad,
    gaussian_nll_and_grad,
    gaussian_nll_fixed_var_and_grad,
    laplace_nll_and_grad,
    laplace_nll_fixed_scale_and_grad,
    squared_error_and_grad,
    to_compute_dtype,
)

# Which elementwise loss a pass computes (the KIND of elementwise_loss_kernel): the
# LossKind values of vae_kernels.schema, shared with the C++ kernels.
KL_STD_NORMAL = tl.constexpr(int(LossKind.KL_STD_NORMAL))
KL_PRIOR = tl.constexpr(int(LossKind.KL_PRIOR))
BERNOULLI_LOGITS = tl.constexpr(int(LossKind.BERNOULLI_LOGITS))
BERNOULLI_PROBS = tl.constexpr(int(LossKind.BERNOULLI_PROBS))
GAUSSIAN_FIXED_VAR = tl.constexpr(int(LossKind.GAUSSIAN_FIXED_VAR))
GAUSSIAN_LEARNED_VAR = tl.constexpr(int(LossKind.GAUSSIAN_LEARNED_VAR))
SQUARED_ERROR = tl.constexpr(int(LossKind.SQUARED_ERROR))
LAPLACE_FIXED_SCALE = tl.constexpr(int(LossKind.LAPLACE_FIXED_SCALE))
LAPLACE_LEARNED_SCALE = tl.constexpr(int(LossKind.LAPLACE_LEARNED_SCALE))
CONTINUOUS_BERNOULLI = tl.constexpr(int(LossKind.CONTINUOUS_BERNOULLI))
KL_STD_NORMAL_LOGSIGMA = tl.constexpr(int(LossKind.KL_STD_NORMAL_LOGSIGMA))
KL_PRIOR_LOGSIGMA = tl.constexpr(int(LossKind.KL_PRIOR_LOGSIGMA))


def kl_kind(with_prior: bool, logsigma: bool) -> tl.constexpr:
    """The KIND of a KL pass (vae_kernels.schema.kl_kind)."""
    return tl.constexpr(int(schema_kl_kind(with_prior, logsigma)))


# Where a pass writes its partial sums.
PARTIALS_NONE = tl.constexpr(0)  # reduction none: no sums
PARTIALS_PER_ROW = tl.constexpr(1)  # [rows, col_blocks]: one per row of each tile
PARTIALS_PER_PROGRAM = tl.constexpr(2)  # [programs]: one per tile

# Padding lanes load this value: it is valid for every formula (a probability, a
# logit, a log-variance), so padding computes finite numbers that are then masked.
PADDING = tl.constexpr(0.5)


@triton.jit
def _load_input(ptr, stride_row, stride_col, row, col, mask):
    offsets = row[:, None] * stride_row + col[None, :] * stride_col
    return to_compute_dtype(tl.load(ptr + offsets, mask=mask, other=PADDING))


@triton.jit
def _any_outside_unit_interval(x, mask):
    outside = mask & ((x < 0.0) | (x > 1.0))  # NaN compares false: it passes, as on CPU
    return tl.max(tl.max(outside.to(tl.int32), axis=1), axis=0)


@triton.jit
def elementwise_loss_kernel(
    in0_ptr, in0_stride_row, in0_stride_col,
    in1_ptr, in1_stride_row, in1_stride_col,
    in2_ptr, in2_stride_row, in2_stride_col,
    in3_ptr, in3_stride_row, in3_stride_col,
    grad0_ptr, grad1_ptr, grad2_ptr, grad3_ptr,  # contiguous (rows, row_len)
    loss_ptr,  # contiguous (rows, row_len): the elementwise loss
    partials_ptr,  # see PARTIALS
    out_of_range_ptr,  # int32 [programs, 2]: input 0 / input 1 outside [0, 1] in this tile
    rows, row_len, col_blocks,
    divisor,  # the local gradients are divided by it (the reduction's divisor)
    fixed_logvar_hi, fixed_logvar_lo,  # a fixed-scale KIND's log-scale, split in two
    KIND: tl.constexpr,
    NUM_INPUTS: tl.constexpr,
    WRITE_GRAD0: tl.constexpr, WRITE_GRAD1: tl.constexpr,
    WRITE_GRAD2: tl.constexpr, WRITE_GRAD3: tl.constexpr,
    WRITE_LOSS: tl.constexpr,
    PARTIALS: tl.constexpr,
    CHECK_RANGE0: tl.constexpr, CHECK_RANGE1: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    pid, row, col, mask, col_block = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    a = _load_input(in0_ptr, in0_stride_row, in0_stride_col, row, col, mask)
    b = _load_input(in1_ptr, in1_stride_row, in1_stride_col, row, col, mask)
    if NUM_INPUTS > 2:
        c = _load_input(in2_ptr, in2_stride_row, in2_stride_col, row, col, mask)
    else:
        c = a  # not read by this KIND
    if NUM_INPUTS > 3:
        d = _load_input(in3_ptr, in3_stride_row, in3_stride_col, row, col, mask)
    else:
        d = a

    # Gradients of inputs a KIND does not have are never stored (WRITE_GRADk is False).
    grad2 = a
    grad3 = a
    if KIND == KL_STD_NORMAL:
        loss, grad0, grad1 = gaussian_kl_std_normal_and_grad(a, b)
    elif KIND == KL_PRIOR:
        loss, grad0, grad1, grad2, grad3 = gaussian_kl_and_grad(a, b, c, d)
    elif KIND == KL_STD_NORMAL_LOGSIGMA:  # the log-variance formulas at lv = 2 s
        loss, grad0, grad1 = gaussian_kl_std_normal_and_grad(a, 2.0 * b)
        grad1 = 2.0 * grad1
    elif KIND == KL_PRIOR_LOGSIGMA:
        loss, grad0, grad1, grad2, grad3 = gaussian_kl_and_grad(a, 2.0 * b, c, 2.0 * d)
        grad1 = 2.0 * grad1
        grad3 = 2.0 * grad3
    elif KIND == BERNOULLI_LOGITS:
        loss, grad0, grad1 = bernoulli_logits_nll_and_grad(a, b)
    elif KIND == BERNOULLI_PROBS:
        loss, grad0, grad1 = bernoulli_probs_nll_and_grad(a, b)
    elif KIND == GAUSSIAN_FIXED_VAR:
        logvar = tl.cast(fixed_logvar_hi, a.dtype) + tl.cast(fixed_logvar_lo, a.dtype)
        inv_std = tl.exp(-0.5 * logvar)  # once per program, not per element
        half_log_norm = 0.5 * (logvar + LOG_2PI)
        loss, grad0, grad1 = gaussian_nll_fixed_var_and_grad(a, b, inv_std, half_log_norm)
    elif KIND == GAUSSIAN_LEARNED_VAR:
        loss, grad0, grad1, grad2 = gaussian_nll_and_grad(a, b, c)
    elif KIND == LAPLACE_FIXED_SCALE:
        logscale = tl.cast(fixed_logvar_hi, a.dtype) + tl.cast(fixed_logvar_lo, a.dtype)
        half_inv_scale = tl.exp(-0.5 * logscale)  # once per program, not per element
        loss, grad0, grad1 = laplace_nll_fixed_scale_and_grad(
            a, b, half_inv_scale, logscale + LOG_2
        )
    elif KIND == LAPLACE_LEARNED_SCALE:
        loss, grad0, grad1, grad2 = laplace_nll_and_grad(a, b, c)
    elif KIND == CONTINUOUS_BERNOULLI:
        loss, grad0, grad1 = continuous_bernoulli_nll_and_grad(a, b)
    else:
        tl.static_assert(KIND == SQUARED_ERROR)
        loss, grad0, grad1 = squared_error_and_grad(a, b)
    loss = tl.where(mask, loss, 0.0)
    # The reciprocal in the compute dtype (a float argument would be float32), once.
    grad_scale = tl.full([], 1.0, a.dtype) / divisor
    grad0 = grad0 * grad_scale
    grad1 = grad1 * grad_scale
    grad2 = grad2 * grad_scale
    grad3 = grad3 * grad_scale

    out = row[:, None] * row_len + col[None, :]
    if WRITE_GRAD0:
        tl.store(grad0_ptr + out, grad0.to(grad0_ptr.dtype.element_ty), mask=mask)
    if WRITE_GRAD1:
        tl.store(grad1_ptr + out, grad1.to(grad1_ptr.dtype.element_ty), mask=mask)
    if WRITE_GRAD2:
        tl.store(grad2_ptr + out, grad2.to(grad2_ptr.dtype.element_ty), mask=mask)
    if WRITE_GRAD3:
        tl.store(grad3_ptr + out, grad3.to(grad3_ptr.dtype.element_ty), mask=mask)
    if WRITE_LOSS:
        tl.store(loss_ptr + out, loss.to(loss_ptr.dtype.element_ty), mask=mask)
    if PARTIALS == PARTIALS_PER_ROW:
        tl.store(partials_ptr + row * col_blocks + col_block, tl.sum(loss, axis=1), mask=row < rows)
    elif PARTIALS == PARTIALS_PER_PROGRAM:
        tl.store(partials_ptr + pid, tl.sum(tl.sum(loss, axis=1), axis=0))
    if CHECK_RANGE0:
        tl.store(out_of_range_ptr + 2 * pid, _any_outside_unit_interval(a, mask))
    if CHECK_RANGE1:
        tl.store(out_of_range_ptr + 2 * pid + 1, _any_outside_unit_interval(b, mask))


@triton.jit
def _row_sums(
    partials_ptr, cols, row, row_mask, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr
):
    """Sums of rows ``row`` of a [rows, cols] buffer: blocks added in index order."""
    col = tl.arange(0, BLOCK_COLS).to(tl.int64)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=partials_ptr.dtype.element_ty)
    for start in range(0, cols, BLOCK_COLS):
        mask = row_mask[:, None] & ((start + col)[None, :] < cols)
        acc += tl.load(
            partials_ptr + row[:, None] * cols + (start + col)[None, :], mask=mask, other=0
        )
    return tl.sum(acc, axis=1)


@triton.jit
def partials_per_row_kernel(
    first_ptr, first_cols,
    second_ptr, second_cols, second_weight_hi, second_weight_lo,
    total_out_ptr, first_out_ptr, second_out_ptr,
    rows, divisor,
    HAS_SECOND: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    """Per-row results: first / divisor, or with a second term (the elbo's KL),
    total = (first + weight * second) / divisor and both terms / divisor."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    row_mask = row < rows
    first = _row_sums(first_ptr, first_cols, row, row_mask, BLOCK_ROWS, BLOCK_COLS) / divisor
    if HAS_SECOND:
        second = _row_sums(second_ptr, second_cols, row, row_mask, BLOCK_ROWS, BLOCK_COLS) / divisor
        weight = tl.cast(second_weight_hi, first.dtype) + tl.cast(second_weight_lo, first.dtype)
        total = first + weight * second
        tl.store(first_out_ptr + row, first.to(first_out_ptr.dtype.element_ty), mask=row_mask)
        tl.store(second_out_ptr + row, second.to(second_out_ptr.dtype.element_ty), mask=row_mask)
    else:
        total = first
    tl.store(total_out_ptr + row, total.to(total_out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _total(partials_ptr, count, BLOCK: tl.constexpr):
    """Sum of a flat buffer: one program, blocks added in index order."""
    index = tl.arange(0, BLOCK).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=partials_ptr.dtype.element_ty)
    for start in range(0, count, BLOCK):
        acc += tl.load(partials_ptr + start + index, mask=start + index < count, other=0)
    return tl.sum(acc, axis=0)


@triton.jit
def partials_total_kernel(
    first_ptr, first_count,
    second_ptr, second_count, second_weight_hi, second_weight_lo,
    total_out_ptr, first_out_ptr, second_out_ptr,
    divisor,
    HAS_SECOND: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The single-sum counterpart of partials_per_row_kernel (one program)."""
    first = _total(first_ptr, first_count, BLOCK) / divisor
    if HAS_SECOND:
        second = _total(second_ptr, second_count, BLOCK) / divisor
        weight = tl.cast(second_weight_hi, first.dtype) + tl.cast(second_weight_lo, first.dtype)
        total = first + weight * second
        tl.store(first_out_ptr, first.to(first_out_ptr.dtype.element_ty))
        tl.store(second_out_ptr, second.to(second_out_ptr.dtype.element_ty))
    else:
        total = first
    tl.store(total_out_ptr, total.to(total_out_ptr.dtype.element_ty))


# Upstream-gradient layouts of loss_backward_kernel.
UPSTREAM_PER_ELEMENT = tl.constexpr(0)  # reduction none
UPSTREAM_PER_ROW = tl.constexpr(1)  # reduction per_sample
UPSTREAM_SCALAR = tl.constexpr(2)  # reduction sum


@triton.jit
def loss_backward_kernel(
    local_ptr, local_stride_row, local_stride_col,
    upstream_ptr, upstream_stride_row, upstream_stride_col,
    out_ptr, out_stride_row, out_stride_col,  # may be local_ptr itself (in place)
    rows, row_len, col_blocks,
    UPSTREAM: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    _, row, col, mask, _ = tile_indices(col_blocks, rows, row_len, BLOCK_ROWS, BLOCK_COLS)
    local = _load_input(local_ptr, local_stride_row, local_stride_col, row, col, mask)
    if UPSTREAM == UPSTREAM_PER_ELEMENT:
        upstream = _load_input(
            upstream_ptr, upstream_stride_row, upstream_stride_col, row, col, mask
        )
    elif UPSTREAM == UPSTREAM_PER_ROW:
        upstream = to_compute_dtype(
            tl.load(upstream_ptr + row * upstream_stride_row, mask=row < rows)
        )
        upstream = upstream[:, None]
    else:
        upstream = to_compute_dtype(tl.load(upstream_ptr))
    grad = local * upstream
    out = row[:, None] * out_stride_row + col[None, :] * out_stride_col
    tl.store(out_ptr + out, grad.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ launchers


@dataclass
class LossPass:
    """What one elementwise pass produced."""

    elementwise: Optional[Tensor]  # reduction none
    partials: Tensor  # per row: [rows, col_blocks]; per program: [programs]
    grads: list[Tensor]  # requested local gradients, else empty tensors
    out_of_range: Optional[Tensor]  # int32 [programs, 2], when a range check was asked
    dtype: torch.dtype  # of the elementwise loss and the local gradients


def _reduction_partials(reduction: int):
    if reduction == REDUCTION_NONE:
        return PARTIALS_NONE
    return PARTIALS_PER_ROW if reduction == REDUCTION_PER_SAMPLE else PARTIALS_PER_PROGRAM


def no_local_grad(input: Tensor) -> Tensor:
    """An empty (0,) tensor in the local-gradient dtype: a local gradient not computed."""
    return input.new_empty((0,), dtype=local_grad_dtype(input.dtype))


def elementwise_loss(
    kind: tl.constexpr,
    inputs: Sequence[Tensor],
    grad_mask: Sequence[bool],
    reduction: int,
    divisor: int,
    fixed_logvar: float = 0.0,
    check_range: tuple[bool, bool] = (False, False),
    dtype: Optional[torch.dtype] = None,
) -> LossPass:
    """Run ``elementwise_loss_kernel`` over ``inputs`` (same shape and device; each read
    in its own dtype); the local gradients it writes are divided by ``divisor``. The
    elementwise loss and local gradients have ``dtype`` (default: the inputs' dtype,
    float32 where they mix; see schema.loss_dtype)."""
    first = inputs[0]
    dtype = dtype or loss_dtype(*inputs)
    rows, row_len = batch_rows(first), row_length(first)
    tile = tile_shape(rows, row_len)
    views: list[Rows] = [as_rows(t) for t in inputs]
    while len(views) < 4:  # unused input slots: any valid pointer, never read
        views.append(views[0])

    like = torch.empty(first.shape, dtype=dtype, device=first.device)
    grad_dtype = local_grad_dtype(dtype)
    grads = [
        torch.empty_like(like, dtype=grad_dtype) if needed else no_local_grad(like)
        for needed, _ in zip(grad_mask, inputs)
    ]
    grad_ptrs = [g if g.numel() > 0 else like for g in grads]
    grad_ptrs += [like] * (4 - len(grad_ptrs))
    elementwise = torch.empty_like(like) if reduction == REDUCTION_NONE else None

    partials_kind = _reduction_partials(reduction)
    acc_dtype = compute_dtype(dtype)
    # Every slot is written by exactly one program (empty when there are no elements).
    if partials_kind == PARTIALS_PER_ROW:
        partials = torch.empty((rows, tile.col_blocks), dtype=acc_dtype, device=first.device)
    elif partials_kind == PARTIALS_PER_PROGRAM:
        partials = torch.empty((tile.programs,), dtype=acc_dtype, device=first.device)
    else:
        partials = torch.empty((0,), dtype=acc_dtype, device=first.device)
    out_of_range = None
    if any(check_range):
        out_of_range = torch.zeros((tile.programs, 2), dtype=torch.int32, device=first.device)

    if tile.programs > 0 and first.numel() > 0:
        logvar_hi, logvar_lo = split_float(fixed_logvar)
        wrap_triton(elementwise_loss_kernel)[(tile.programs,)](
            views[0].data, views[0].stride_row, views[0].stride_col,
            views[1].data, views[1].stride_row, views[1].stride_col,
            views[2].data, views[2].stride_row, views[2].stride_col,
            views[3].data, views[3].stride_row, views[3].stride_col,
            grad_ptrs[0], grad_ptrs[1], grad_ptrs[2], grad_ptrs[3],
            # Outputs this pass does not write get `like`: a valid pointer, never written.
            like if elementwise is None else elementwise,
            like if partials.numel() == 0 else partials,
            like if out_of_range is None else out_of_range,
            rows, row_len, tile.col_blocks,
            divisor,
            logvar_hi, logvar_lo,
            KIND=kind.value,
            NUM_INPUTS=len(inputs),
            WRITE_GRAD0=grads[0].numel() > 0,
            WRITE_GRAD1=len(grads) > 1 and grads[1].numel() > 0,
            WRITE_GRAD2=len(grads) > 2 and grads[2].numel() > 0,
            WRITE_GRAD3=len(grads) > 3 and grads[3].numel() > 0,
            WRITE_LOSS=elementwise is not None,
            PARTIALS=partials_kind.value,
            CHECK_RANGE0=check_range[0],
            CHECK_RANGE1=check_range[1],
            BLOCK_ROWS=tile.block_rows,
            BLOCK_COLS=tile.block_cols,
            num_warps=tile.num_warps,
        )  # fmt: skip
    return LossPass(elementwise, partials, grads, out_of_range, dtype)


def reduce_loss(
    first: LossPass,
    reduction: int,
    divisor: int,
    like: Tensor,
    second: Optional[LossPass] = None,
    second_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, first term, second term), each reduced and divided by ``divisor``, in
    ``like``'s dtype; total = first + second_weight * second (the elbo). Without a
    second term the two term outputs are empty."""
    if reduction == REDUCTION_NONE:
        assert first.elementwise is not None and second is None
        return first.elementwise, like.new_empty((0,)), like.new_empty((0,))
    rows = batch_rows(like)
    shape = (rows,) if reduction == REDUCTION_PER_SAMPLE else ()
    total = like.new_empty(shape)
    first_out = like.new_empty(shape if second is not None else (0,))
    second_out = like.new_empty(shape if second is not None else (0,))
    # An unused second term still needs a valid pointer (never read).
    second_partials = second.partials if second is not None else first.partials
    weight_hi, weight_lo = split_float(second_weight)
    if reduction == REDUCTION_PER_SAMPLE:
        if rows == 0:
            return total, first_out, second_out
        block_rows = min(triton.next_power_of_2(rows), 64)
        widest = max(first.partials.shape[1], second_partials.shape[1])
        block_cols = min(triton.next_power_of_2(max(1, widest)), 64)
        wrap_triton(partials_per_row_kernel)[(triton.cdiv(rows, block_rows),)](
            first.partials, first.partials.shape[1],
            second_partials, second_partials.shape[1], weight_hi, weight_lo,
            total, first_out if second is not None else total,
            second_out if second is not None else total,
            rows, divisor,
            HAS_SECOND=second is not None,
            BLOCK_ROWS=block_rows,
            BLOCK_COLS=block_cols,
        )  # fmt: skip
    else:
        widest = max(first.partials.numel(), second_partials.numel())
        wrap_triton(partials_total_kernel)[(1,)](
            first.partials, first.partials.numel(),
            second_partials, second_partials.numel(), weight_hi, weight_lo,
            total, first_out if second is not None else total,
            second_out if second is not None else total,
            divisor,
            HAS_SECOND=second is not None,
            BLOCK=min(triton.next_power_of_2(max(1, widest)), 1024),
        )  # fmt: skip
    return total, first_out, second_out


def launch_loss_backward(
    local_grad: Tensor, grad_output: Tensor, reduction: int, in_place: bool = False
) -> Tensor:
    """local_grad * grad_output (per element, per row or scalar), written to a
    new contiguous tensor of grad_output's dtype, or into ``local_grad`` itself with
    ``in_place`` (same dtypes only)."""
    rows, row_len = batch_rows(local_grad), row_length(local_grad)
    if local_grad.numel() == 0:
        return local_grad if in_place else torch.empty_like(local_grad, dtype=grad_output.dtype)
    tile = tile_shape(rows, row_len)
    local = as_rows(local_grad)
    if in_place:
        out = rows_view(local_grad)
        if out is None:
            # No (rows, row_len) view of local_grad exists: compute out of place, then
            # copy into it.
            return local_grad.copy_(launch_loss_backward(local_grad, grad_output, reduction))
    else:
        result = torch.empty(local_grad.shape, dtype=grad_output.dtype, device=local_grad.device)
        out = Rows(result, row_len, 1)  # contiguous: (row, col) is at row * row_len + col
    if reduction == REDUCTION_NONE:
        upstream = as_rows(grad_output)
        upstream_kind, stride_row, stride_col = (
            UPSTREAM_PER_ELEMENT,
            upstream.stride_row,
            upstream.stride_col,
        )
        upstream_data = upstream.data
    elif reduction == REDUCTION_PER_SAMPLE:
        upstream_data = grad_output.reshape(rows)
        upstream_kind, stride_row, stride_col = UPSTREAM_PER_ROW, upstream_data.stride(0), 0
    else:
        upstream_data = grad_output.reshape(())
        upstream_kind, stride_row, stride_col = UPSTREAM_SCALAR, 0, 0
    wrap_triton(loss_backward_kernel)[(tile.programs,)](
        local.data, local.stride_row, local.stride_col,
        upstream_data, stride_row, stride_col,
        out.data, out.stride_row, out.stride_col,
        rows, row_len, tile.col_blocks,
        UPSTREAM=upstream_kind.value,
        BLOCK_ROWS=tile.block_rows,
        BLOCK_COLS=tile.block_cols,
        num_warps=tile.num_warps,
    )  # fmt: skip
    return local_grad if in_place else result
