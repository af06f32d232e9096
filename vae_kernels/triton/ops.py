"""The vae_kernels ops implemented with Triton, in the namespace ``vae_kernels_triton``.

Same op names, argument names and order, and outputs as the C++ schemas
(``csrc/schemas.cpp``: reductions, divisors and grad_mask conventions included). They
are defined with ``torch.library.triton_op`` and launch their kernels through
``torch.library.wrap_triton``, so torch.compile traces into the kernels, and the
fake (shape) implementation is the op body itself. The autograd formulas and the
backend object are the shared ones of ``vae_kernels.op_autograd``.

``triton_op`` infers each schema from the Python annotations, so the Python ``int``
arguments appear as ``SymInt`` and ``bool[N]`` as ``bool[]``; names, order and
outputs are those of the C++ schemas.
"""

from typing import Optional, Sequence

import torch
import triton.language as tl
from torch import Tensor
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.library import triton_op

from ..op_autograd import OpsBackend, register_autocast, register_autograd
from ..schema import (
    BY_KIND,
    REDUCTION_NONE,
    REDUCTION_PER_SAMPLE,
    REDUCTION_SUM,
    Likelihood,
    local_grad_dtype,
    loss_dtype,
)
from . import losses
from .device import unavailable_reason
from .launch import is_interpreted
from .layout import batch_rows
from .losses import elementwise_loss, launch_loss_backward, reduce_loss
from .mixture import launch_mixture_nll
from .sampling import (
    launch_reparameterize,
    launch_reparameterize_backward,
    launch_reparameterize_philox,
)

NAMESPACE = "vae_kernels_triton"


# ------------------------------------------------------------------ argument checks


def _check_device(op: str, name: str, t: Tensor) -> None:
    reason = unavailable_reason(t.device)
    if reason is not None:
        raise RuntimeError(f"{NAMESPACE}.{op}: {name} is on {t.device}: {reason}")


def _check_floating(op: str, name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{NAMESPACE}.{op}: {name} must be a floating-point tensor, got {t.dtype}")
    _check_device(op, name, t)


def _check_like(
    op: str,
    name: str,
    t: Tensor,
    ref_name: str,
    ref: Tensor,
    same_shape: bool = True,
    mixed: bool = False,
) -> None:
    """``t`` must have ``ref``'s device and dtype (``mixed``, the loss ops: or another of
    float32, bfloat16 and float16, each read in its own and computed in float32) and
    shape (if asked)."""
    if t.device != ref.device:
        raise ValueError(
            f"{NAMESPACE}.{op}: {name} must be on the device of {ref_name} ({ref.device}), "
            f"got {t.device}"
        )
    mixes = mixed and t.is_floating_point() and torch.float64 not in (t.dtype, ref.dtype)
    if t.dtype != ref.dtype and not mixes:
        raise TypeError(
            f"{NAMESPACE}.{op}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}"
            + (" (float64 does not mix: cast to it first)" if mixed else "")
        )
    if same_shape and t.shape != ref.shape:
        raise ValueError(
            f"{NAMESPACE}.{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, "
            f"got {tuple(t.shape)}"
        )


def _check_reduction(op: str, reduction: int, allowed=(0, 1, 2)) -> None:
    if reduction not in allowed:
        names = {0: "0 (none)", 1: "1 (per_sample)", 2: "2 (sum)"}
        raise ValueError(
            f"{NAMESPACE}.{op}: reduction must be one of "
            f"{', '.join(names[r] for r in allowed)}, got {reduction}"
        )


def _check_samples(op: str, name: str, t: Tensor, like_name: str, like: Tensor) -> None:
    if t.shape != like.shape and (t.dim() != like.dim() + 1 or t.shape[1:] != like.shape):
        raise ValueError(
            f"{NAMESPACE}.{op}: {name} must have shape {like_name}.shape = {tuple(like.shape)} "
            f"or (num_samples, *{like_name}.shape) = (K, {', '.join(str(s) for s in like.shape)}), "
            f"got {tuple(t.shape)}"
        )


def _check_seed(op: str, seed: Tensor, like: Tensor) -> None:
    if seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError(
            f"{NAMESPACE}.{op}: seed must be an int64 tensor with one element, got "
            f"{seed.dtype} of shape {tuple(seed.shape)}"
        )
    if seed.device != like.device:
        raise ValueError(
            f"{NAMESPACE}.{op}: seed must be on the device of the other tensors ({like.device}), "
            f"got {seed.device}"
        )


def _check_grad_mask(op: str, grad_mask: Sequence[bool], length: int) -> None:
    if len(grad_mask) != length:
        raise ValueError(
            f"{NAMESPACE}.{op}: grad_mask must have {length} entries, got {len(grad_mask)}"
        )


def _raise_if_outside_unit_interval(op: str, loss_pass: losses.LossPass, names) -> None:
    """Raise if an input that must lie in [0, 1] does not (flags written by the kernel).

    Reading the flags is a host sync, so it happens in eager mode only: under
    torch.compile or another tracer the flags are not inspected (as for the reference
    backend's check).
    """
    flags = loss_pass.out_of_range
    if flags is None or torch.compiler.is_compiling() or type(flags) is not torch.Tensor:
        return
    if flags.shape[0] == 0:  # an empty input launched no program
        return
    outside = flags.amax(dim=0).tolist()
    for name, is_outside in zip(names, outside):
        if name is not None and is_outside:
            raise ValueError(
                f"{NAMESPACE}.{op}: {name} must lie in [0, 1], but some values are outside it"
            )


# ------------------------------------------------------------------ sampling


@triton_op(f"{NAMESPACE}::reparameterize", mutates_args=())
def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor, logsigma: bool = False) -> Tensor:
    _check_floating("reparameterize", "mu", mu)
    _check_like("reparameterize", "logvar", logvar, "mu", mu)
    _check_like("reparameterize", "eps", eps, "mu", mu, same_shape=False)
    _check_samples("reparameterize", "eps", eps, "mu", mu)
    return launch_reparameterize(mu, logvar, eps, logsigma)


@triton_op(f"{NAMESPACE}::reparameterize_backward", mutates_args=())
def reparameterize_backward(
    grad_z: Tensor, logvar: Tensor, eps: Tensor, logsigma: bool = False
) -> tuple[Tensor, Tensor]:
    _check_floating("reparameterize_backward", "logvar", logvar)
    _check_like("reparameterize_backward", "eps", eps, "logvar", logvar, same_shape=False)
    _check_samples("reparameterize_backward", "eps", eps, "logvar", logvar)
    _check_like("reparameterize_backward", "grad_z", grad_z, "eps", eps)
    return launch_reparameterize_backward(grad_z, logvar, eps, None, logsigma)


@triton_op(f"{NAMESPACE}::reparameterize_philox", mutates_args=())
def reparameterize_philox(
    mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: Optional[int], logsigma: bool = False
) -> Tensor:
    _check_floating("reparameterize_philox", "mu", mu)
    _check_like("reparameterize_philox", "logvar", logvar, "mu", mu)
    _check_seed("reparameterize_philox", seed, mu)
    if num_samples is not None and num_samples < 1:
        raise ValueError(
            f"{NAMESPACE}.reparameterize_philox: num_samples must be >= 1, got {num_samples}"
        )
    return launch_reparameterize_philox(mu, logvar, seed, num_samples, logsigma)


@triton_op(f"{NAMESPACE}::reparameterize_philox_backward", mutates_args=())
def reparameterize_philox_backward(
    grad_z: Tensor, logvar: Tensor, seed: Tensor, logsigma: bool = False
) -> tuple[Tensor, Tensor]:
    _check_floating("reparameterize_philox_backward", "logvar", logvar)
    _check_like("reparameterize_philox_backward", "grad_z", grad_z, "logvar", logvar, False)
    _check_samples("reparameterize_philox_backward", "grad_z", grad_z, "logvar", logvar)
    _check_seed("reparameterize_philox_backward", seed, logvar)
    return launch_reparameterize_backward(grad_z, logvar, None, seed, logsigma)


# ------------------------------------------------------------------ losses


@triton_op(f"{NAMESPACE}::gaussian_kl", mutates_args=())
def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    reduction: int,
    divisor: int,
    grad_mask: list[bool],
    logsigma: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = "gaussian_kl"
    _check_floating(op, "mu", mu)
    _check_like(op, "logvar", logvar, "mu", mu, mixed=True)
    _check_reduction(op, reduction)
    _check_grad_mask(op, grad_mask, 4)
    if (prior_mu is None) != (prior_logvar is None):
        raise ValueError(f"{NAMESPACE}.{op}: pass both prior_mu and prior_logvar or neither")
    if prior_mu is not None and prior_logvar is not None:
        _check_like(op, "prior_mu", prior_mu, "mu", mu, mixed=True)
        _check_like(op, "prior_logvar", prior_logvar, "mu", mu, mixed=True)
        loss_pass = elementwise_loss(
            losses.kl_kind(True, logsigma), [mu, logvar, prior_mu, prior_logvar], grad_mask,
            reduction, divisor,
        )  # fmt: skip
        grads = loss_pass.grads
    else:
        loss_pass = elementwise_loss(
            losses.kl_kind(False, logsigma), [mu, logvar], grad_mask[:2], reduction, divisor
        )
        grads = [*loss_pass.grads, losses.no_local_grad(mu), losses.no_local_grad(mu)]
    loss, _, _ = reduce_loss(loss_pass, reduction, divisor, _rows_like(mu, loss_pass.dtype))
    return loss, grads[0], grads[1], grads[2], grads[3]


def _rows_like(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A tensor with ``t``'s batch rows and device, of ``dtype``: what reduce_loss
    shapes and types its outputs by."""
    return t.new_empty(t.shape[:1], dtype=dtype)


def _check_kind(op: str, kind: int, with_scale: bool, scale_allowed: bool = True) -> Likelihood:
    """The likelihood row of reconstruction ``kind``, which must (not) take a scale
    tensor as ``with_scale`` says."""
    row = BY_KIND.get(kind)
    if row is None or (not scale_allowed and kind == row.learned_kind):
        which = "" if scale_allowed else " without a learned scale"
        raise ValueError(
            f"{NAMESPACE}.{op}: kind must be a reconstruction LossKind{which}, got {kind}"
        )
    if with_scale != (kind == row.learned_kind):
        needs = "takes no scale tensor" if with_scale else "needs a scale tensor"
        raise ValueError(f"{NAMESPACE}.{op}: kind {kind} {needs}")
    return row


@triton_op(f"{NAMESPACE}::reconstruction_nll", mutates_args=())
def reconstruction_nll(
    input: Tensor,
    target: Tensor,
    scale: Optional[Tensor],
    scale_value: float,
    kind: int,
    reduction: int,
    divisor: int,
    grad_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    op = "reconstruction_nll"
    _check_floating(op, "input", input)
    _check_like(op, "target", target, "input", input, mixed=True)
    _check_reduction(op, reduction)
    _check_grad_mask(op, grad_mask, 3)
    row = _check_kind(op, kind, with_scale=scale is not None)
    if scale is not None:
        _check_like(op, "scale", scale, "input", input, mixed=True)
        inputs, mask = [input, target, scale], grad_mask
    else:
        inputs, mask = [input, target], grad_mask[:2]
    loss_pass = elementwise_loss(
        tl.constexpr(kind), inputs, mask, reduction, divisor, fixed_logvar=scale_value,
        check_range=row.unit_interval,
    )  # fmt: skip
    _raise_if_outside_unit_interval(op, loss_pass, ("input (probabilities)", "target"))
    grads = [*loss_pass.grads, losses.no_local_grad(input)][:3]
    loss, _, _ = reduce_loss(loss_pass, reduction, divisor, _rows_like(input, loss_pass.dtype))
    return loss, grads[0], grads[1], grads[2]


@triton_op(f"{NAMESPACE}::elbo", mutates_args=())
def elbo(
    recon: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    kind: int,
    beta: float,
    reduction: int,
    divisor: int,
    grad_mask: list[bool],
    logsigma: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = "elbo"
    _check_floating(op, "recon", recon)
    _check_like(op, "x", x, "recon", recon, mixed=True)
    _check_like(op, "mu", mu, "recon", recon, same_shape=False, mixed=True)
    _check_like(op, "logvar", logvar, "mu", mu, mixed=True)
    _check_like(op, "logvar", logvar, "recon", recon, same_shape=False, mixed=True)
    dtype = loss_dtype(recon, x, mu, logvar)  # the three losses' upstream gradients have it
    _check_reduction(op, reduction, allowed=(1, 2))
    _check_grad_mask(op, grad_mask, 4)
    row = _check_kind(op, kind, with_scale=False, scale_allowed=False)
    if recon.dim() == 0 or mu.dim() == 0 or recon.shape[0] != mu.shape[0]:
        raise ValueError(
            f"{NAMESPACE}.{op}: recon {tuple(recon.shape)} and mu {tuple(mu.shape)} must share "
            "their first (batch) dimension"
        )
    recon_pass = elementwise_loss(
        tl.constexpr(kind), [recon, x], grad_mask[:2], reduction, divisor,
        check_range=row.unit_interval, dtype=dtype,
    )  # fmt: skip
    _raise_if_outside_unit_interval("elbo_loss", recon_pass, ("recon (probabilities)", "x"))
    kl_pass = elementwise_loss(
        losses.kl_kind(False, logsigma), [mu, logvar], grad_mask[2:], reduction, divisor,
        dtype=dtype,
    )  # fmt: skip
    loss, recon_nll, kl = reduce_loss(
        recon_pass, reduction, divisor, _rows_like(recon, dtype), second=kl_pass,
        second_weight=beta,
    )  # fmt: skip
    return loss, recon_nll, kl, *recon_pass.grads, *kl_pass.grads


def _check_loss_backward_args(
    op: str, local_grad: Tensor, grad_output: Tensor, reduction: int, in_place: bool = False
):
    """The result has grad_output's dtype; local_grad has the matching local-gradient
    dtype (float32 for float16). In place, local_grad is also the result, so both dtypes
    must be that one: float16 cannot go in place."""
    _check_floating(op, "grad_output", grad_output)
    _check_floating(op, "local_grad", local_grad)
    if local_grad.device != grad_output.device:
        raise ValueError(
            f"{NAMESPACE}.{op}: local_grad must be on the device of grad_output "
            f"({grad_output.device}), got {local_grad.device}"
        )
    expected = local_grad_dtype(grad_output.dtype)
    if local_grad.dtype != expected:
        raise TypeError(
            f"{NAMESPACE}.{op}: local_grad must have dtype {expected} for a grad_output of "
            f"dtype {grad_output.dtype}, got {local_grad.dtype}"
        )
    if in_place and expected != grad_output.dtype:
        raise TypeError(
            f"{NAMESPACE}.{op}: cannot write a result of grad_output's dtype "
            f"{grad_output.dtype} in place of a local_grad of dtype {expected}; use "
            "loss_backward (out of place)"
        )
    _check_reduction(op, reduction)
    rows = batch_rows(local_grad)
    if reduction == REDUCTION_NONE and grad_output.shape != local_grad.shape:
        raise ValueError(
            f"{NAMESPACE}.{op}: grad_output must have shape {tuple(local_grad.shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    if reduction == REDUCTION_PER_SAMPLE and grad_output.numel() != rows:
        raise ValueError(
            f"{NAMESPACE}.{op}: grad_output must have {rows} elements (one per row), "
            f"got shape {tuple(grad_output.shape)}"
        )
    if reduction == REDUCTION_SUM and grad_output.numel() != 1:
        raise ValueError(
            f"{NAMESPACE}.{op}: grad_output must be a scalar, got shape {tuple(grad_output.shape)}"
        )


@triton_op(f"{NAMESPACE}::loss_backward", mutates_args=())
def loss_backward(local_grad: Tensor, grad_output: Tensor, reduction: int) -> Tensor:
    _check_loss_backward_args("loss_backward", local_grad, grad_output, reduction)
    return launch_loss_backward(local_grad, grad_output, reduction)


@triton_op(f"{NAMESPACE}::loss_backward_", mutates_args={"local_grad"})
def loss_backward_(local_grad: Tensor, grad_output: Tensor, reduction: int) -> None:
    """loss_backward written in place into ``local_grad`` (the forward's buffer)."""
    _check_loss_backward_args("loss_backward_", local_grad, grad_output, reduction, in_place=True)
    launch_loss_backward(local_grad, grad_output, reduction, in_place=True)


# ------------------------------------------------------------------ the mixture likelihood


def _check_mixture_args(params: Tensor, x: Tensor, num_bits: int, reduction: int) -> None:
    """The C++ op's checks (check_mixture_args in csrc/op_checks.h)."""
    op = "discretized_logistic_mixture_nll"
    _check_floating(op, "params", params)
    _check_floating(op, "x", x)
    if x.device != params.device:
        raise ValueError(
            f"{NAMESPACE}.{op}: x must be on the device of params ({params.device}), "
            f"got {x.device}"
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"{NAMESPACE}.{op}: x must have shape (B, C, H, W) with C = 1 or 3, "
            f"got {tuple(x.shape)}"
        )
    b, channels, h, w = x.shape
    if params.dim() != 4 or (params.shape[0], params.shape[2], params.shape[3]) != (b, h, w):
        raise ValueError(
            f"{NAMESPACE}.{op}: params must have shape ({b}, P, {h}, {w}) to match x "
            f"{tuple(x.shape)}, got {tuple(params.shape)}"
        )
    per_component = 10 if channels == 3 else 3
    if params.shape[1] == 0 or params.shape[1] % per_component != 0:
        raise ValueError(
            f"{NAMESPACE}.{op}: params must have a multiple of {per_component} channels "
            f"({per_component} per mixture component for C = {channels}), got {params.shape[1]}"
        )
    if not 1 <= num_bits <= 16:
        raise ValueError(f"{NAMESPACE}.{op}: num_bits must be in [1, 16], got {num_bits}")
    _check_reduction(op, reduction)


def _raise_if_x_outside_signed_unit_interval(out_of_range: Optional[Tensor]) -> None:
    """Raise if some x lies outside [-1, 1] (flags written by the kernel, one per
    program). As ``_raise_if_outside_unit_interval``: a host sync, so eager mode only."""
    if (
        out_of_range is None  # nothing launched: no pixel
        or torch.compiler.is_compiling()
        or type(out_of_range) is not torch.Tensor
    ):
        return
    if out_of_range.amax().item():
        raise ValueError(
            f"{NAMESPACE}.discretized_logistic_mixture_nll: x must lie in [-1, 1], but some "
            "values are outside it"
        )


@triton_op(f"{NAMESPACE}::discretized_logistic_mixture_nll", mutates_args=())
def discretized_logistic_mixture_nll(
    params: Tensor,
    x: Tensor,
    num_bits: int,
    reduction: int,
    divisor: int,
    grad_mask: list[bool],
) -> tuple[Tensor, Tensor]:
    _check_mixture_args(params, x, num_bits, reduction)
    _check_grad_mask("discretized_logistic_mixture_nll", grad_mask, 1)
    loss, grad, out_of_range = launch_mixture_nll(
        params, x, num_bits, reduction, divisor, grad_mask
    )
    _raise_if_x_outside_signed_unit_interval(out_of_range)
    return loss, grad


def _keep_opaque(mode, op, types, args, kwargs):
    # What triton_op's own rule does for torch.export: run the op as one opaque op.
    return mode.__torch_dispatch__(op, types, args, kwargs)


ALL_OPS = (
    reparameterize,
    reparameterize_backward,
    reparameterize_philox,
    reparameterize_philox_backward,
    gaussian_kl,
    reconstruction_nll,
    elbo,
    discretized_logistic_mixture_nll,
    loss_backward,
    loss_backward_,
)

if is_interpreted(losses.elementwise_loss_kernel):
    # Interpreted kernels cannot be traced (see launch.py): torch.compile keeps each op
    # as one opaque call instead of decomposing it into its kernels, as on a GPU.
    for _op in ALL_OPS:
        _op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)

# The loss kernels read each input in its own dtype (float32, bfloat16, float16).
MIXED_DTYPE_DEVICES = ("cuda", "cpu")
register_autograd(NAMESPACE)
register_autocast(NAMESPACE, mixed_dtype_devices=MIXED_DTYPE_DEVICES)

backend = OpsBackend(NAMESPACE, mixed_dtype_devices=MIXED_DTYPE_DEVICES)
