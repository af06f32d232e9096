"""The backend object that ``vae_kernels.functional`` calls (``OpsBackend``, over the
C++ ops of ``vae_kernels.ops`` or the Triton ops of ``vae_kernels.triton.ops``), and the
autograd of the Triton ops. Importing it loads no library.

The C++ ops have their autograd in C++ (csrc/autograd.cpp), registered for the Autograd
key, so an eager call is one dispatcher call. The Triton ops have the same rules here:

- ``register_autograd``: each loss op returns, next to the loss, the local gradient
  of each input that requires grad, computed in the same pass as the loss: the
  gradient of the reduced loss for an upstream gradient of 1 (d loss_i / d input_i /
  divisor). Its backward is ``loss_backward`` = local gradient * upstream gradient.
  Local gradients of float16 inputs are float32 (``local_grad_dtype``): one can exceed
  float16's range where the final gradient fits. This registration serves
  torch.compile and direct calls of the ops; its graphs stay functional.
- ``EagerLoss`` (``EagerSample`` for sampling): the autograd of the public API's eager
  calls of the Triton ops, with the same gradient rule (``loss_input_grads``,
  ``sample_input_grads``) and less per-call overhead (the op runs below autograd). The
  local gradients stay inside: backward writes the input gradients into their buffers
  (``loss_backward_``), which saves a tensor allocation and a pass, and a CPU upstream
  gradient of exactly 1 (``loss.backward()``) needs no pass at all. A repeated backward
  recomputes them.
- Sampling ops have their own backward ops. There are no second derivatives: an
  eager backward with create_graph=True raises instead of returning gradients whose
  own graph is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .schema import (
    BY_NAME,
    REDUCTION_NONE,
    REDUCTION_PER_SAMPLE,
    local_grad_dtype,
    reduction_args,
)

_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def _runs_eagerly(args) -> bool:
    """Whether a call may take the eager path (EagerLoss, EagerSample): not while
    torch.compile or another tracer (a dispatch mode, tensor subclasses) runs, where the
    registered autograd keeps the graph functional."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return all(type(a) in _PLAIN_TENSOR_TYPES for a in args if isinstance(a, Tensor))


def _grad_mask(*tensors: Optional[Tensor]) -> list[bool]:
    """Which of ``tensors`` (None: absent) need a gradient: the ops' ``grad_mask``."""
    if not torch.is_grad_enabled():
        return [False] * len(tensors)
    return [t is not None and t.requires_grad for t in tensors]


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

    ``mixed_dtype_devices``: the device types whose loss kernels read each input in its
    own dtype (float32, bfloat16, float16 mixed, computed and returned in float32), so
    that ``vae_kernels.functional`` need not cast a large argument first.
    """

    def __init__(
        self,
        namespace: str,
        mixed_dtype_devices: tuple[str, ...] = (),
        cpp_autograd: bool = False,
        eager_calls: Optional[ModuleType] = None,
    ) -> None:
        self.namespace = namespace
        self.mixed_dtype_devices = mixed_dtype_devices
        # Ops with their autograd in C++ (csrc/autograd.cpp): called directly, eagerly too.
        self.cpp_autograd_ops = frozenset(CPP_AUTOGRAD_OPS if cpp_autograd else ())
        # Their eager calls without torch.ops' generic path (csrc/python/eager_calls.cpp).
        self.eager_calls = eager_calls
        self._overloads: dict[str, torch._ops.OpOverload] = {}

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    def _overload(self, name: str) -> torch._ops.OpOverload:
        # Looked up once: torch.ops attribute access costs microseconds a call.
        if name not in self._overloads:
            self._overloads[name] = getattr(self.ops, name).default
        return self._overloads[name]

    def _loss(self, name: str, *args) -> tuple[Tensor, ...]:
        """The outputs of loss op ``name``, its reduced losses first (the local gradients
        after them, if any, are not the caller's to use)."""
        if name in self.cpp_autograd_ops:
            if self._eager_calls_apply():
                reduced = getattr(self.eager_calls, name)(*args)
                if reduced is not None:
                    return reduced
            return self._overload(name)(*args)
        spec = _loss_spec(self.namespace, name)
        if _runs_eagerly(args):
            return EagerLoss.apply(spec, *args)
        return spec.op(*args)

    def reparameterize(
        self,
        mu: Tensor,
        logvar: Tensor,
        eps: Optional[Tensor],
        num_samples: Optional[int],
        generator: Optional[torch.Generator],
        logsigma: bool = False,
    ) -> Tensor:
        if eps is None:
            if self._eager_calls_apply():
                z = self.eager_calls.reparameterize_philox(mu, logvar, generator, num_samples, logsigma)
                if z is not None:
                    return z
            seed = _draw_seed(generator, mu.device)
            return self._sample("reparameterize_philox", mu, logvar, seed, num_samples, logsigma)
        return self._sample("reparameterize", mu, logvar, eps, logsigma)

    def _sample(self, name: str, *args) -> Tensor:
        if name not in self.cpp_autograd_ops:
            if _runs_eagerly(args):
                return EagerSample.apply(self.ops, name, *args)
        elif self._eager_calls_apply():
            z = getattr(self.eager_calls, name)(*args)
            if z is not None:
                return z
        return self._overload(name)(*args)

    def _eager_calls_apply(self) -> bool:
        """Whether a call may take ``eager_calls``, which returns None where it cannot
        take the call's arguments as they are; never while torch.compile traces."""
        return self.eager_calls is not None and not torch.compiler.is_compiling()

    def gaussian_kl(
        self,
        mu: Tensor,
        logvar: Tensor,
        prior_mu: Optional[Tensor],
        prior_logvar: Optional[Tensor],
        reduction: str,
        logsigma: bool = False,
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
        mask = _grad_mask(mu, logvar, prior_mu, prior_logvar)
        return self._loss("gaussian_kl", mu, logvar, *priors, mode, divisor, mask, logsigma)[0]

    def reconstruction_nll(
        self,
        likelihood: str,
        input: Tensor,
        target: Tensor,
        scale: Union[float, Tensor],
        reduction: str,
    ) -> Tensor:
        """The negative log-likelihood of ``LIKELIHOODS`` row ``likelihood``, with a fixed
        (float) or learned (tensor, broadcast to ``input``) scale where it has one."""
        row = BY_NAME[likelihood]
        mode, divisor = reduction_args(reduction, input)
        if isinstance(scale, Tensor):
            scale_tensor: Optional[Tensor] = scale.expand_as(input)
            scale_value, kind = 0.0, row.learned_kind
        else:
            scale_tensor, scale_value, kind = None, float(scale), row.kind
        mask = _grad_mask(input, target, scale_tensor)
        return self._loss(
            "reconstruction_nll", input, target, scale_tensor, scale_value, int(kind), mode,
            divisor, mask,
        )[0]  # fmt: skip

    def discretized_logistic_mixture_nll(
        self, params: Tensor, x: Tensor, num_bits: int, reduction: str
    ) -> Tensor:
        mode, divisor = reduction_args(reduction, x)  # "mean": per dimension of x
        mask = _grad_mask(params)
        return self._loss(
            "discretized_logistic_mixture_nll", params, x, num_bits, mode, divisor, mask
        )[0]

    def bernoulli_nll(self, input: Tensor, target: Tensor, logits: bool, reduction: str) -> Tensor:
        likelihood = "bernoulli" if logits else "bernoulli_probs"
        return self.reconstruction_nll(likelihood, input, target, 0.0, reduction)

    def gaussian_nll(
        self, input: Tensor, target: Tensor, logvar: Union[float, Tensor], reduction: str
    ) -> Tensor:
        return self.reconstruction_nll("gaussian", input, target, logvar, reduction)

    def mse_loss(self, input: Tensor, target: Tensor, reduction: str) -> Tensor:
        return self.reconstruction_nll("mse", input, target, 0.0, reduction)

    def elbo_loss(
        self,
        recon: Tensor,
        x: Tensor,
        mu: Tensor,
        logvar: Tensor,
        likelihood: str,
        beta: float,
        reduction: str,
        logsigma: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        mode, divisor = reduction_args(reduction, recon)
        mask = _grad_mask(recon, x, mu, logvar)
        kind = int(BY_NAME[likelihood].kind)
        loss, recon_nll, kl = self._loss(
            "elbo", recon, x, mu, logvar, kind, beta, mode, divisor, mask, logsigma
        )[:3]
        return loss, recon_nll, kl


def samples_shape(mu: Tensor, num_samples: Optional[int]) -> tuple:
    """The shape of a sampling op's z: mu's for one sample (num_samples None), else
    (num_samples, *mu.shape)."""
    return tuple(mu.shape) if num_samples is None else (num_samples, *mu.shape)


def reduced_like(t: Tensor, reduction: int) -> Tensor:
    if reduction == REDUCTION_NONE:
        return t.new_empty(t.shape)
    if reduction == REDUCTION_PER_SAMPLE:
        return t.new_empty((t.shape[0] if t.dim() > 0 else 1,))
    return t.new_empty(())


def mixture_outputs_like(
    params: Tensor, x: Tensor, reduction: int, grad_mask: Sequence[bool]
) -> tuple[Tensor, Tensor]:
    """New (uninitialized) outputs of discretized_logistic_mixture_nll: the loss (per
    pixel, per sample or total) in the promoted dtype of params and x, and params' local
    gradient (empty unless asked for)."""
    b, _, h, w = x.shape
    shape = {REDUCTION_NONE: (b, h, w), REDUCTION_PER_SAMPLE: (b,)}.get(reduction, ())
    loss = params.new_empty(shape, dtype=torch.promote_types(params.dtype, x.dtype))
    grad_shape = params.shape if grad_mask[0] else (0,)
    grad = params.new_empty(grad_shape, dtype=local_grad_dtype(params.dtype))
    return loss, grad


# The loss ops' arguments (csrc/schemas.cpp): the differentiable tensors come first, in
# the order of their local-gradient outputs; then the options, with `reduction` at the
# index below. The elbo has 3 reduced outputs (loss, recon_nll, kl) and `beta` at index 5.
_LOSS_LAYOUT = {  # name: (differentiable inputs, reduced outputs, reduction index)
    "gaussian_kl": (4, 1, 4),
    "reconstruction_nll": (3, 1, 5),
    "elbo": (4, 3, 6),
    "discretized_logistic_mixture_nll": (1, 1, 3),
}
# The mixture's loss is per pixel (B, H, W) while its local gradient is params'
# (B, P, H, W): its upstream gradient is broadcast over P (``_mixture_grad``).
_PER_PIXEL_LOSSES = ("discretized_logistic_mixture_nll",)

# The ops whose autograd csrc/autograd.cpp registers for the C++ namespace; the Triton
# namespace registers the same formulas in Python (register_autograd).
CPP_AUTOGRAD_OPS = (*_LOSS_LAYOUT, "reparameterize", "reparameterize_philox")


@dataclass(frozen=True)
class LossSpec:
    """One loss op of one namespace, and where its arguments and outputs are."""

    namespace: str
    name: str

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    @property
    def op(self):
        return getattr(self.ops, self.name).default

    @property
    def n_inputs(self) -> int:
        return _LOSS_LAYOUT[self.name][0]

    @property
    def n_reduced(self) -> int:
        return _LOSS_LAYOUT[self.name][1]

    def reduction(self, args) -> int:
        return args[_LOSS_LAYOUT[self.name][2]]

    def beta(self, args) -> Optional[float]:
        return args[5] if self.name == "elbo" else None


_LOSS_SPECS: dict[tuple[str, str], LossSpec] = {}


def _loss_spec(namespace: str, name: str) -> LossSpec:
    key = (namespace, name)
    if key not in _LOSS_SPECS:
        _LOSS_SPECS[key] = LossSpec(namespace, name)
    return _LOSS_SPECS[key]


def input_shapes_and_options(args: Sequence) -> tuple[list, list]:
    """What a loss op's backward needs of its arguments: the tensors' shapes (None for
    the other arguments) and the other arguments (None for the tensors)."""
    shapes = [a.shape if isinstance(a, Tensor) else None for a in args]
    options = [None if isinstance(a, Tensor) else a for a in args]
    return shapes, options


def loss_input_grads(
    spec: LossSpec,
    shapes: Sequence[Optional[torch.Size]],
    options: Sequence,
    needs_grad: Sequence[bool],
    grad_outputs: Sequence[Optional[Tensor]],
    local_grads: Sequence[Tensor],
    in_place: bool,
) -> list[Optional[Tensor]]:
    """The gradients of a loss op's differentiable inputs (None where not needed), from
    its local gradients and the upstream gradients of its reduced outputs (``shapes``
    and ``options``: see ``input_shapes_and_options``). For the elbo, the recon term's
    gradients scale with d loss + d recon_nll and the KL term's with
    beta * d loss + d kl."""
    chain = lambda k, upstream: _chain(  # noqa: E731  (inputs k of the term)
        spec.ops, spec.reduction(options), [needs_grad[i] for i in k],
        [local_grads[i] for i in k], [shapes[i] for i in k], upstream, in_place,
        per_pixel=spec.name in _PER_PIXEL_LOSSES,
    )  # fmt: skip
    beta = spec.beta(options)
    if beta is None:
        return chain(range(spec.n_inputs), grad_outputs[0])
    grad_loss, grad_recon_nll, grad_kl = grad_outputs[:3]
    recon_upstream = _add(grad_loss, grad_recon_nll)
    kl_upstream = _add(grad_loss if grad_loss is None or beta == 1 else grad_loss * beta, grad_kl)
    return chain(range(2), recon_upstream) + chain(range(2, 4), kl_upstream)


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else (a if b is None else a + b)


def _chain(
    ops,
    reduction: int,
    needs_grad: Sequence[bool],
    local_grads: Sequence[Tensor],
    input_shapes: Sequence[Optional[torch.Size]],
    upstream: Optional[Tensor],
    in_place: bool,
    per_pixel: bool = False,
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
        elif per_pixel:
            grads.append(_mixture_grad(local, upstream, reduction, in_place, upstream_is_one))
        elif in_place and local.dtype == upstream.dtype:  # not float16's float32 buffers
            if not upstream_is_one:
                ops.loss_backward_(local, upstream, reduction)
            grads.append(local)
        else:
            grads.append(ops.loss_backward(local, upstream, reduction))
    return grads


def _mixture_grad(
    local: Tensor, upstream: Tensor, reduction: int, in_place: bool, upstream_is_one: bool
) -> Tensor:
    """params' gradient: its local gradient (B, P, H, W) times the upstream gradient of
    the per-pixel (B, H, W), per-sample (B,) or total loss, broadcast over P. The
    engine casts it to params' dtype where the loss's differs (a float32 x)."""
    if reduction == REDUCTION_NONE:
        upstream = upstream.unsqueeze(1)
    elif reduction == REDUCTION_PER_SAMPLE:
        upstream = upstream.view(-1, 1, 1, 1)
    if not in_place:
        return local * upstream
    return local if upstream_is_one else local.mul_(upstream)


class EagerLoss(torch.autograd.Function):
    """Autograd of a loss op called eagerly from the public API (see the module doc).

    ``EagerLoss.apply(spec, *args)`` returns the op's reduced outputs. The forward runs
    the op below autograd; its local-gradient outputs never leave this function, so
    backward may overwrite them with the input gradients. A repeated backward
    (``retain_graph=True``) finds them consumed and recomputes them from the saved
    inputs.
    """

    @staticmethod
    def forward(ctx, spec: LossSpec, *args):
        outputs = _run_below_autograd(spec, args)
        ctx.set_materialize_grads(False)  # unused outputs get None, not a tensor of zeros
        ctx.spec, ctx.local_grads = spec, list(outputs[spec.n_reduced :])
        ctx.shapes, ctx.options = input_shapes_and_options(args)
        ctx.save_for_backward(*(a for a in args if isinstance(a, Tensor)))
        return tuple(outputs[: spec.n_reduced])

    @staticmethod
    def backward(ctx, *grad_outputs):
        _refuse_double_backward()
        spec: LossSpec = ctx.spec
        n_args = len(ctx.options)
        if all(g is None for g in grad_outputs):
            return (None,) * (1 + n_args)
        local_grads, ctx.local_grads = ctx.local_grads, None
        if local_grads is None:  # a repeated backward: recompute what the first consumed
            saved = iter(ctx.saved_tensors)
            args = [next(saved) if shape is not None else option
                    for shape, option in zip(ctx.shapes, ctx.options)]  # fmt: skip
            local_grads = list(_run_below_autograd(spec, args)[spec.n_reduced :])
        needs = ctx.needs_input_grad[1 : 1 + spec.n_inputs]
        grads = loss_input_grads(
            spec, ctx.shapes, ctx.options, needs, grad_outputs, local_grads, in_place=True
        )
        return (None, *grads, *([None] * (n_args - spec.n_inputs)))


def sample_input_grads(
    ops,
    name: str,
    grad_z: Tensor,
    logvar: Tensor,
    noise: Tensor,
    needs_noise_grad: bool,
    logsigma: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(grad_mu, grad of the scale, grad of the noise) of ``reparameterize`` (noise = eps)
    or ``reparameterize_philox`` (noise = the seed: no gradient)."""
    if name == "reparameterize_philox":
        return (*ops.reparameterize_philox_backward(grad_z, logvar, noise, logsigma), None)
    grad_mu, grad_logvar = ops.reparameterize_backward(grad_z, logvar, noise, logsigma)
    # Noise that itself requires grad (rare): dz/deps = std.
    std = torch.exp(logvar if logsigma else 0.5 * logvar)
    grad_eps = grad_z * std if needs_noise_grad else None
    return grad_mu, grad_logvar, grad_eps


class EagerSample(torch.autograd.Function):
    """Autograd of a sampling op called eagerly from the public API:
    ``EagerSample.apply(ops, name, mu, logvar, noise, *options)`` runs the op below
    autograd, with less per-call overhead than the registered autograd. The last
    option is the op's ``logsigma``."""

    @staticmethod
    def forward(ctx, ops, name: str, mu: Tensor, logvar: Tensor, noise: Tensor, *options):
        with torch._C._AutoDispatchBelowAutograd():
            z = getattr(ops, name)(mu, logvar, noise, *options)
        ctx.ops, ctx.name, ctx.options = ops, name, options
        ctx.save_for_backward(logvar, noise)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        _refuse_double_backward()
        logvar, noise = ctx.saved_tensors
        needs_noise_grad = ctx.needs_input_grad[4]
        grads = sample_input_grads(
            ctx.ops, ctx.name, grad_z, logvar, noise, needs_noise_grad, ctx.options[-1]
        )
        return (None, None, *grads, *([None] * len(ctx.options)))


def _refuse_double_backward() -> None:
    # Grad mode is on in a backward pass only under create_graph=True: the caller wants
    # the gradient's own graph, which these hand-written backward passes do not build.
    if torch.is_grad_enabled():
        raise RuntimeError(
            "vae_kernels: backward with create_graph=True (a second derivative, e.g. a "
            "gradient penalty) is not supported by the fused kernels; use backend='torch'"
        )


def _run_below_autograd(spec: LossSpec, args) -> tuple[Tensor, ...]:
    with torch._C._AutoDispatchBelowAutograd():
        return spec.op(*args)




def register_autograd(namespace: str) -> None:
    """Register the autograd formulas of the ops of ``namespace`` (see the module doc):
    those of the Triton ops; the C++ ops have theirs in csrc/autograd.cpp."""
    lib = namespace + "::"
    ops = getattr(torch.ops, namespace)

    # -- sampling: backward ops of their own (sample_input_grads)
    def sample_setup(ctx, inputs, output):
        _, logvar, noise, *options = inputs
        ctx.save_for_backward(logvar, noise)
        ctx.logsigma = options[-1]

    def register_sample(name: str) -> None:
        def backward(ctx, grad_z):
            logvar, noise = ctx.saved_tensors
            grads = sample_input_grads(
                ops, name, grad_z, logvar, noise, ctx.needs_input_grad[2], ctx.logsigma
            )
            return (*grads, *([None] * (len(ctx.needs_input_grad) - 3)))

        torch.library.register_autograd(lib + name, backward, setup_context=sample_setup)

    register_sample("reparameterize")
    register_sample("reparameterize_philox")

    # -- losses: outputs are (reduced losses..., local gradients...); backward =
    # loss_backward, out of place (graphs stay functional). EagerLoss is the eager path.
    def register_loss(name: str) -> None:
        spec = LossSpec(namespace, name)

        def setup(ctx, inputs, output):
            ctx.set_materialize_grads(False)  # unused outputs get None, not zeros
            local_grads = output[spec.n_reduced :]
            ctx.mark_non_differentiable(*local_grads)
            ctx.save_for_backward(*local_grads)
            ctx.shapes, ctx.options = input_shapes_and_options(inputs)

        def backward(ctx, *grad_outputs):
            grad_outputs = grad_outputs[: spec.n_reduced]
            n_args = len(ctx.options)
            if all(g is None for g in grad_outputs):
                return (None,) * n_args
            needs = ctx.needs_input_grad[: spec.n_inputs]
            grads = loss_input_grads(
                spec,
                ctx.shapes,
                ctx.options,
                needs,
                grad_outputs,
                ctx.saved_tensors,
                in_place=False,
            )
            return (*grads, *([None] * (n_args - spec.n_inputs)))

        torch.library.register_autograd(lib + name, backward, setup_context=setup)

    for name in _LOSS_LAYOUT:
        register_loss(name)


# Registrations made here stay alive with the module.
_AUTOCAST_LIBRARIES: list = []


def _smallest_to_float32(args: Sequence) -> list:
    """``args`` with the smallest floating tensor cast to float32 when every floating
    tensor shares one lower precision: kernels that read each input in its own dtype
    then compute and return float32, with no conversion pass over the larger ones."""
    floating = [a for a in args if isinstance(a, Tensor) and a.is_floating_point()]
    if len({t.dtype for t in floating}) != 1 or floating[0].dtype in (torch.float32, torch.float64):
        return list(args)
    smallest = min(reversed(floating), key=lambda t: t.numel())  # ties: the last (a target)
    return [a.to(torch.float32) if a is smallest else a for a in args]


def register_autocast(namespace: str, mixed_dtype_devices: tuple[str, ...] = ()) -> None:
    """Under autocast the loss ops compute and return float32, as torch's own losses do;
    float64 stays. On ``mixed_dtype_devices`` (kernels reading each input in its own
    dtype) only the smallest input is cast, where all share one lower precision;
    elsewhere every lower-precision floating input is cast to float32. The sampling
    ops keep their inputs' dtype: z feeds the decoder. The mixture likelihood is not
    cast (its params are the largest tensor of a step): its loss has the promoted dtype
    of params and x, and ``vae_kernels.functional`` passes a float32 x under autocast."""
    library = torch.library.Library(namespace, "IMPL")
    _AUTOCAST_LIBRARIES.append(library)
    for name in _LOSS_LAYOUT:
        if name in _PER_PIXEL_LOSSES:
            continue
        for device_type in ("cpu", "cuda"):
            if not torch._C._is_autocast_available(device_type):
                continue
            if device_type not in mixed_dtype_devices:
                torch.library.register_autocast(f"{namespace}::{name}", device_type, torch.float32)
                continue
            _register_smallest_to_float32(library, namespace, name, device_type)


def _register_smallest_to_float32(library, namespace: str, name: str, device_type: str) -> None:
    op = getattr(getattr(torch.ops, namespace), name).default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def autocast_kernel(*args):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*_smallest_to_float32(args))

    # The Python-dispatcher kernel (tracing, torch.compile) and the dispatcher's own.
    op.py_impl(key)(autocast_kernel)
    library.impl(name, lambda _keyset, *args: autocast_kernel(*args), key_name, with_keyset=True)
