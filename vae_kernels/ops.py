"""The compiled vae_kernels ops: loading, shape functions, autograd, and the backend
interface that ``vae_kernels.functional`` calls for ``backend="cpu"``.

The op schemas are defined once, in C++ (``csrc/schemas.cpp``); the CPU kernels are
registered there too. This module adds what torch needs around them:

- ``register_fake``: output shapes without running a kernel, for torch.compile.
- ``register_autograd``: each loss op returns, next to the loss, the local gradient
  of each input that requires grad, computed in the same pass as the loss: the
  gradient of the reduced loss for an upstream gradient of 1 (d loss_i / d input_i /
  divisor). Its backward is ``loss_backward`` = local gradient * upstream gradient.
  Local gradients of float16 inputs are float32 (``local_grad_dtype``): one can exceed
  float16's range where the final gradient fits.
  In eager mode that product is written in place into the local-gradient buffer
  (``loss_backward_``), which saves a tensor allocation and a pass, and a CPU upstream
  gradient of exactly 1 (``loss.backward()``) skips the pass altogether; a repeated
  backward recomputes the local gradients. Sampling ops have their own backward ops.
  Backward passes run custom ops without
  autograd formulas of their own, so a double backward raises instead of returning
  a silently wrong second derivative.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

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

# Schema encodings (see csrc/schemas.cpp).
REDUCTION_NONE, REDUCTION_PER_SAMPLE, REDUCTION_SUM = 0, 1, 2
LIKELIHOOD_CODES = {"bernoulli": 0, "bernoulli_probs": 1, "gaussian": 2, "mse": 3}


def local_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a loss op's local-gradient outputs for inputs of ``dtype``: float32
    for float16 (a local gradient can exceed 65504 before the upstream gradient and
    1/divisor bring it back into range, e.g. d KL/d logvar at logvar 12), else ``dtype``."""
    return torch.float32 if dtype == torch.float16 else dtype


def cpu_kernel_isa() -> str:
    """The instruction set the CPU kernels run with: "AVX512", "AVX2" or "DEFAULT"."""
    return torch.ops.vae_kernels.cpu_kernel_isa()


def reduction_args(reduction: str, t: Tensor) -> tuple[int, Union[int, torch.SymInt]]:
    """The ops' (reduction, divisor) encoding of a public ``reduction`` over ``t``."""
    if reduction == "none":
        return REDUCTION_NONE, 1
    if reduction == "per_sample":
        return REDUCTION_PER_SAMPLE, 1
    if reduction == "sum":
        return REDUCTION_SUM, 1
    if reduction == "mean":
        return REDUCTION_SUM, t.numel()
    if reduction == "batchmean":
        return REDUCTION_SUM, t.shape[0]
    raise ValueError(f"unknown reduction {reduction!r}")


_consumable = threading.local()


def _call_discarding_local_grads(op, *args) -> Tensor:
    """Run a loss op for its loss values only, letting its backward reuse the buffers of
    the local-gradient outputs (which no caller sees) for the input gradients."""
    if torch.compiler.is_compiling():
        return op(*args)
    _consumable.active = True
    try:
        return op(*args)
    finally:
        _consumable.active = False


def _needs_grad(t: Optional[Tensor]) -> bool:
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def _draw_seed(generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    # A tensor, not a Python int, so torch.compile traces the draw instead of baking
    # one seed into the graph.
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, generator=generator, device=device)


# ---------------------------------------------------------------- backend interface


class OpsBackend:
    """The backend interface over the ops of one namespace.

    ``OpsBackend("vae_kernels")`` runs the C++ ops (CPU kernels, and CUDA kernels where
    built); a Triton backend defines the same ops, with the same arguments, in its own
    namespace and reuses this class and ``register_autograd``.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    def reparameterize(
        self,
        mu: Tensor,
        logvar: Tensor,
        eps: Optional[Tensor],
        num_samples: Optional[int],
        generator: Optional[torch.Generator],
    ) -> Tensor:
        if eps is None:
            seed = _draw_seed(generator, mu.device)
            z = self.ops.reparameterize_philox(mu, logvar, seed, num_samples or 1)
        else:
            samples = eps if num_samples is not None else eps.unsqueeze(0)
            z = self.ops.reparameterize(mu, logvar, samples)
        return z if num_samples is not None else z.squeeze(0)

    def gaussian_kl(
        self,
        mu: Tensor,
        logvar: Tensor,
        prior_mu: Optional[Tensor],
        prior_logvar: Optional[Tensor],
        reduction: str,
    ) -> Tensor:
        mode, divisor = reduction_args(reduction, mu)
        if prior_mu is None and prior_logvar is None:
            priors: list[Optional[Tensor]] = [None, None]
        else:
            # A prior broadcast against mu: expand (a view); autograd sums its gradient back.
            priors = [
                (mu.new_zeros(()) if p is None else p).expand_as(mu)
                for p in (prior_mu, prior_logvar)
            ]
        mask = [_needs_grad(t) for t in (mu, logvar, prior_mu, prior_logvar)]
        return _call_discarding_local_grads(
            self.ops.gaussian_kl, mu, logvar, *priors, mode, divisor, mask
        )[0]

    def bernoulli_nll(self, input: Tensor, target: Tensor, logits: bool, reduction: str) -> Tensor:
        mode, divisor = reduction_args(reduction, input)
        mask = [_needs_grad(input), _needs_grad(target)]
        return _call_discarding_local_grads(
            self.ops.bernoulli_nll, input, target, logits, mode, divisor, mask
        )[0]

    def gaussian_nll(
        self, input: Tensor, target: Tensor, logvar: Union[float, Tensor], reduction: str
    ) -> Tensor:
        mode, divisor = reduction_args(reduction, input)
        if isinstance(logvar, Tensor):
            logvar_tensor: Optional[Tensor] = logvar.expand_as(input)
            logvar_value = 0.0
        else:
            logvar_tensor, logvar_value = None, float(logvar)
        mask = [_needs_grad(input), _needs_grad(target), _needs_grad(logvar_tensor)]
        return _call_discarding_local_grads(
            self.ops.gaussian_nll, input, target, logvar_tensor, logvar_value, mode, divisor, mask
        )[0]

    def mse_loss(self, input: Tensor, target: Tensor, reduction: str) -> Tensor:
        mode, divisor = reduction_args(reduction, input)
        mask = [_needs_grad(input), _needs_grad(target)]
        return _call_discarding_local_grads(
            self.ops.squared_error, input, target, mode, divisor, mask
        )[0]

    def elbo_loss(
        self,
        recon: Tensor,
        x: Tensor,
        mu: Tensor,
        logvar: Tensor,
        likelihood: str,
        beta: float,
        reduction: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        mode, divisor = reduction_args(reduction, recon)
        mask = [_needs_grad(t) for t in (recon, x, mu, logvar)]
        loss, recon_nll, kl, *_ = _call_discarding_local_grads(
            self.ops.elbo, recon, x, mu, logvar, LIKELIHOOD_CODES[likelihood], beta, mode,
            divisor, mask,
        )
        return loss, recon_nll, kl


# One set of ops for both devices: the dispatcher picks the CPU or the CUDA kernels.
cpu = cuda = OpsBackend("vae_kernels")


def has_cuda_kernels() -> bool:
    """Whether the compiled library has CUDA kernels (built against a CUDA torch)."""
    return LIBRARY_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "vae_kernels::elbo", "CUDA"
    )


# ---------------------------------------------------------------- registrations


def _reduced_like(t: Tensor, reduction: int) -> Tensor:
    if reduction == REDUCTION_NONE:
        return t.new_empty(t.shape)
    if reduction == REDUCTION_PER_SAMPLE:
        return t.new_empty((t.shape[0] if t.dim() > 0 else 1,))
    return t.new_empty(())


def _save_loss_context(ctx, op, inputs, output, n_reduced: int, reduction_index: int) -> None:
    """Keep what a loss op's backward needs.

    The local gradients (the outputs after the ``n_reduced`` loss values) are ordinary
    saved tensors, except in eager calls from the public API, which discard them. There
    they are kept as attributes instead, because backward consumes them: it writes the
    input gradient into the same buffer (``loss_backward_``). A repeated eager backward
    (``retain_graph=True``) finds them consumed and recomputes them from the saved inputs.
    """
    ctx.set_materialize_grads(False)  # unused outputs get None, not a tensor of zeros
    local_grads = output[n_reduced:]
    ctx.mark_non_differentiable(*local_grads)
    ctx.reduction = inputs[reduction_index]
    # Local gradient k belongs to input k; one that was not computed is an empty (0,) tensor.
    ctx.input_shapes = [
        inputs[k].shape if isinstance(inputs[k], Tensor) else None for k in range(len(local_grads))
    ]
    # Only when the caller discards the local-gradient outputs (the public API does), and
    # never while tracing (torch.compile, AOTAutograd), which runs on tensor subclasses.
    ctx.consumes_local_grads = getattr(_consumable, "active", False) and all(
        type(t) is Tensor for t in output
    )
    if not ctx.consumes_local_grads:
        ctx.save_for_backward(*local_grads)
        return
    ctx.local_grads = list(local_grads)
    ctx.op, ctx.n_reduced = op, n_reduced
    ctx.tensor_positions = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
    ctx.other_args = [None if isinstance(a, Tensor) else a for a in inputs]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_positions))


def _take_local_grads(ctx) -> tuple[list[Tensor], bool]:
    """The local gradients for this backward, and whether it may overwrite them."""
    if not ctx.consumes_local_grads:
        return list(ctx.saved_tensors), False  # traced graphs stay functional
    local_grads, ctx.local_grads = ctx.local_grads, None
    if local_grads is None:  # a repeated backward: recompute what the first one consumed
        args = list(ctx.other_args)
        for position, tensor in zip(ctx.tensor_positions, ctx.saved_tensors):
            args[position] = tensor
        with torch.no_grad():
            local_grads = list(ctx.op(*args)[ctx.n_reduced:])
    return local_grads, True


def _chain(
    ctx,
    needs_grad: Sequence[bool],
    local_grads: Sequence[Tensor],
    input_shapes: Sequence[Optional[torch.Size]],
    upstream: Optional[Tensor],
    in_place: bool,
) -> list[Optional[Tensor]]:
    """The input gradients: local gradient * upstream where needed, else None."""
    # In place, an upstream gradient of exactly 1 (a CPU scalar, so reading it does not
    # synchronize a device) leaves the local gradients as they are: they are the answer.
    upstream_is_one = (
        in_place
        and upstream is not None
        and upstream.numel() == 1
        and upstream.device.type == "cpu"
        and upstream.item() == 1
    )
    grads: list[Optional[Tensor]] = []
    for needed, local, shape in zip(needs_grad, local_grads, input_shapes):
        if not needed or upstream is None:
            grads.append(None)
        elif local.shape != shape:
            raise RuntimeError(
                "vae_kernels: an input needs a gradient that the forward pass was not asked "
                "to compute (grad_mask); call the public vae_kernels functions, not the raw op"
            )
        elif in_place and local.dtype == upstream.dtype:  # not float16's float32 buffers
            if not upstream_is_one:
                ctx.ops.loss_backward_(local, upstream, ctx.reduction)
            grads.append(local)
        else:
            grads.append(ctx.ops.loss_backward(local, upstream, ctx.reduction))
    return grads


def _register_fakes() -> None:
    """Output shapes of the C++ ops, for torch.compile (triton_op ops trace themselves)."""
    lib = "vae_kernels::"
    same = lambda t: t.new_empty(t.shape)  # noqa: E731

    torch.library.register_fake(lib + "reparameterize")(lambda mu, logvar, eps: same(eps))
    torch.library.register_fake(lib + "reparameterize_backward")(
        lambda grad_z, logvar, eps: (same(logvar), same(logvar))
    )
    torch.library.register_fake(lib + "reparameterize_philox")(
        lambda mu, logvar, seed, num_samples: mu.new_empty((num_samples, *mu.shape))
    )
    torch.library.register_fake(lib + "reparameterize_philox_backward")(
        lambda grad_z, logvar, seed: (same(logvar), same(logvar))
    )
    torch.library.register_fake(lib + "loss_backward")(
        lambda local_grad, grad_output, reduction: local_grad.new_empty(
            local_grad.shape, dtype=grad_output.dtype
        )
    )
    torch.library.register_fake(lib + "loss_backward_")(
        lambda local_grad, grad_output, reduction: None
    )

    def local_grads(tensors, grad_mask, like):
        dtype = local_grad_dtype(like.dtype)
        return tuple(
            like.new_empty(t.shape if (t is not None and needed) else (0,), dtype=dtype)
            for t, needed in zip(tensors, grad_mask)
        )

    @torch.library.register_fake(lib + "gaussian_kl")
    def _(mu, logvar, prior_mu, prior_logvar, reduction, divisor, grad_mask):
        tensors = (mu, logvar, prior_mu, prior_logvar)
        return _reduced_like(mu, reduction), *local_grads(tensors, grad_mask, mu)

    @torch.library.register_fake(lib + "bernoulli_nll")
    def _(input, target, logits, reduction, divisor, grad_mask):
        return _reduced_like(input, reduction), *local_grads((input, target), grad_mask, input)

    @torch.library.register_fake(lib + "gaussian_nll")
    def _(input, target, logvar, logvar_value, reduction, divisor, grad_mask):
        tensors = (input, target, logvar)
        return _reduced_like(input, reduction), *local_grads(tensors, grad_mask, input)

    @torch.library.register_fake(lib + "squared_error")
    def _(input, target, reduction, divisor, grad_mask):
        return _reduced_like(input, reduction), *local_grads((input, target), grad_mask, input)

    @torch.library.register_fake(lib + "elbo")
    def _(recon, x, mu, logvar, likelihood, beta, reduction, divisor, grad_mask):
        reduced = _reduced_like(recon, reduction)
        tensors = (recon, x, mu, logvar)
        return reduced, same(reduced), same(reduced), *local_grads(tensors, grad_mask, recon)


def register_autograd(namespace: str) -> None:
    """Register the autograd formulas of the ops of ``namespace`` (see the module doc)."""
    lib = namespace + "::"
    ops = getattr(torch.ops, namespace)

    # -- sampling: backward ops of their own
    def reparameterize_setup(ctx, inputs, output):
        _, logvar, eps = inputs
        ctx.save_for_backward(logvar, eps)

    def reparameterize_backward(ctx, grad_z):
        logvar, eps = ctx.saved_tensors
        grad_mu, grad_logvar = ops.reparameterize_backward(grad_z, logvar, eps)
        # Noise that itself requires grad (rare): dz/deps = std.
        grad_eps = grad_z * torch.exp(0.5 * logvar) if ctx.needs_input_grad[2] else None
        return grad_mu, grad_logvar, grad_eps

    torch.library.register_autograd(
        lib + "reparameterize", reparameterize_backward, setup_context=reparameterize_setup
    )

    def philox_setup(ctx, inputs, output):
        _, logvar, seed, _ = inputs
        ctx.save_for_backward(logvar, seed)

    def philox_backward(ctx, grad_z):
        logvar, seed = ctx.saved_tensors
        grad_mu, grad_logvar = ops.reparameterize_philox_backward(grad_z, logvar, seed)
        return grad_mu, grad_logvar, None, None

    torch.library.register_autograd(
        lib + "reparameterize_philox", philox_backward, setup_context=philox_setup
    )

    # -- losses: outputs are (loss, local gradients...); backward = loss_backward
    def register_loss(name: str, reduction_index: int, n_inputs: int, n_args: int) -> None:
        def setup(ctx, inputs, output):
            ctx.ops = ops
            _save_loss_context(ctx, getattr(ops, name), inputs, output, 1, reduction_index)

        def backward(ctx, grad_loss, *_):
            if grad_loss is None:
                return (None,) * n_args
            local_grads, in_place = _take_local_grads(ctx)
            needs = ctx.needs_input_grad[:n_inputs]
            grads = _chain(ctx, needs, local_grads, ctx.input_shapes, grad_loss, in_place)
            return (*grads, *([None] * (n_args - n_inputs)))

        torch.library.register_autograd(lib + name, backward, setup_context=setup)

    register_loss("gaussian_kl", reduction_index=4, n_inputs=4, n_args=7)
    register_loss("bernoulli_nll", reduction_index=3, n_inputs=2, n_args=6)
    register_loss("gaussian_nll", reduction_index=4, n_inputs=3, n_args=7)
    register_loss("squared_error", reduction_index=2, n_inputs=2, n_args=5)

    # -- elbo: loss = recon_nll + beta * kl, each reduced the same way
    def elbo_setup(ctx, inputs, output):
        ctx.ops = ops
        _save_loss_context(ctx, ops.elbo, inputs, output, 3, reduction_index=6)
        ctx.beta = inputs[5]

    def elbo_backward(ctx, grad_loss, grad_recon_nll, grad_kl, *_):
        def add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
            return b if a is None else (a if b is None else a + b)

        # The recon term's gradients scale with recon_upstream, the KL term's with kl_upstream.
        recon_upstream = add(grad_loss, grad_recon_nll)
        kl_upstream = add(None if grad_loss is None else grad_loss * ctx.beta, grad_kl)
        if recon_upstream is None and kl_upstream is None:
            return (None,) * 9
        local_grads, in_place = _take_local_grads(ctx)
        needs = ctx.needs_input_grad
        shapes = ctx.input_shapes
        recon_grads = _chain(ctx, needs[:2], local_grads[:2], shapes[:2], recon_upstream, in_place)
        kl_grads = _chain(ctx, needs[2:4], local_grads[2:], shapes[2:], kl_upstream, in_place)
        return (*recon_grads, *kl_grads, None, None, None, None, None)

    torch.library.register_autograd(lib + "elbo", elbo_backward, setup_context=elbo_setup)


if LIBRARY_ERROR is None:
    _register_fakes()
    register_autograd("vae_kernels")
