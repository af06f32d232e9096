"""The compiled vae_kernels library (the C++ CPU kernels, and the CUDA kernels where
built): loading it, the shapes of its ops for torch.compile (``register_fake``), their
Autocast rule, and the backend objects ``cpu`` and ``cuda``. Their autograd is C++
(``csrc/autograd.cpp``).

The op schemas are defined once, in C++ (``csrc/schemas.cpp``), with the kernels'
registrations.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from .op_autograd import (
    OpsBackend,
    mixture_outputs_like,
    reduced_like,
    register_autocast,
    samples_shape,
)
from .schema import local_grad_dtype, loss_dtype

LIBRARY_PATH = Path(__file__).with_name("libvae_kernels_C.so")


def _load_library() -> Optional[str]:
    """Load the compiled library; return why it could not be loaded, or None."""
    if not LIBRARY_PATH.exists():
        return f"{LIBRARY_PATH} does not exist (the C++ extension was not built)"
    try:
        torch.ops.load_library(str(LIBRARY_PATH))
    except (OSError, RuntimeError) as error:
        return f"loading {LIBRARY_PATH} failed: {error}"
    return None


LIBRARY_ERROR: Optional[str] = _load_library()


def _load_eager_calls() -> Optional[ModuleType]:
    """The module of the public API's eager calls of the ops (csrc/python/eager_calls.cpp),
    or None where it was not built: the calls then take torch.ops' path."""
    if LIBRARY_ERROR is not None:
        return None
    try:
        from . import _eager_calls
    except ImportError:
        return None
    return _eager_calls


EAGER_CALLS: Optional[ModuleType] = _load_eager_calls()


def cpu_kernel_isa() -> str:
    """The instruction set the CPU kernels run with: "AVX512", "AVX2" or "DEFAULT"."""
    return torch.ops.vae_kernels.cpu_kernel_isa()


# One set of ops for both devices: the dispatcher picks the CPU or the CUDA kernels.
cpu = cuda = OpsBackend(
    "vae_kernels", mixed_dtype_devices=("cpu", "cuda"), cpp_autograd=True, eager_calls=EAGER_CALLS
)


def has_cuda_kernels() -> bool:
    """Whether the compiled library has CUDA kernels (built against a CUDA torch)."""
    return LIBRARY_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "vae_kernels::elbo", "CUDA"
    )


# ---------------------------------------------------------------- registrations


def _register_fakes() -> None:
    """Output shapes of the C++ ops, for torch.compile (triton_op ops trace themselves)."""
    lib = "vae_kernels::"
    same = lambda t: t.new_empty(t.shape)  # noqa: E731

    torch.library.register_fake(lib + "reparameterize")(
        lambda mu, logvar, eps, logsigma=False: same(eps)
    )
    torch.library.register_fake(lib + "reparameterize_backward")(
        lambda grad_z, logvar, eps, logsigma=False: (same(logvar), same(logvar))
    )
    torch.library.register_fake(lib + "reparameterize_philox")(
        lambda mu, logvar, seed, num_samples, logsigma=False: mu.new_empty(
            samples_shape(mu, num_samples)
        )
    )
    torch.library.register_fake(lib + "reparameterize_philox_with_noise")(
        lambda mu, logvar, seed, num_samples, logsigma=False: (
            mu.new_empty(samples_shape(mu, num_samples)),
            mu.new_empty(samples_shape(mu, num_samples)),
        )
    )
    torch.library.register_fake(lib + "reparameterize_philox_backward")(
        lambda grad_z, logvar, seed, logsigma=False: (same(logvar), same(logvar))
    )
    torch.library.register_fake(lib + "loss_backward")(
        lambda local_grad, grad_output, reduction: local_grad.new_empty(
            local_grad.shape, dtype=grad_output.dtype
        )
    )
    torch.library.register_fake(lib + "loss_backward_")(
        lambda local_grad, grad_output, reduction: None
    )

    def local_grads(tensors, grad_mask, like, dtype):
        grad_dtype = local_grad_dtype(dtype)
        return tuple(
            like.new_empty(t.shape if (t is not None and needed) else (0,), dtype=grad_dtype)
            for t, needed in zip(tensors, grad_mask)
        )

    @torch.library.register_fake(lib + "gaussian_kl")
    def _(mu, logvar, prior_mu, prior_logvar, reduction, divisor, grad_mask, logsigma=False):
        tensors = (mu, logvar, prior_mu, prior_logvar)
        dtype = loss_dtype(*tensors)
        reduced = reduced_like(mu, reduction).to(dtype)
        return reduced, *local_grads(tensors, grad_mask, mu, dtype)

    @torch.library.register_fake(lib + "reconstruction_nll")
    def _(input, target, scale, scale_value, kind, reduction, divisor, grad_mask):
        tensors = (input, target, scale)
        dtype = loss_dtype(*tensors)
        reduced = reduced_like(input, reduction).to(dtype)
        return reduced, *local_grads(tensors, grad_mask, input, dtype)

    @torch.library.register_fake(lib + "elbo")
    def _(recon, x, mu, logvar, kind, beta, reduction, divisor, grad_mask, logsigma=False):
        tensors = (recon, x, mu, logvar)
        dtype = loss_dtype(*tensors)
        reduced = reduced_like(recon, reduction).to(dtype)
        return reduced, same(reduced), same(reduced), *local_grads(tensors, grad_mask, recon, dtype)

    @torch.library.register_fake(lib + "discretized_logistic_mixture_nll")
    def _(params, x, num_bits, reduction, divisor, grad_mask):
        return mixture_outputs_like(params, x, reduction, grad_mask)


# The autograd of these ops is registered in C++ (csrc/autograd.cpp).
if LIBRARY_ERROR is None:
    _register_fakes()
    register_autocast("vae_kernels", mixed_dtype_devices=cpu.mixed_dtype_devices)
