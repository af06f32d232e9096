"""The public functional API: argument checks, then one call into the chosen backend.

Every function validates its arguments here, once, with errors that name the
argument, what was expected and what was given; the backends
(``vae_kernels.backends``) receive only valid input. The calls a training step makes at
every step (plain CPU tensors of one dtype) are recognized and run by one C++ call
(``_direct_calls``; under torch.compile, ``_native_cpu_call``'s path) and go straight
to the C++ ops, whose glue checks them again; at MNIST sizes the full checks would cost
as much as the kernel.

Numerics at the extremes (every backend; tests/test_hardening_numerics.py):

- Where the true value (the float64 formula on the same rounded inputs) is finite and
  fits the dtype, the result matches it, also at logits +-1e4, probabilities exactly
  0 or 1, logvar +-100 and mu 1e20; beyond the dtype's range it is +-inf, as in torch.
  float16/bfloat16/float32 compute in float32, so exp(logvar) overflows for
  logvar > 88.72 even where 0.5*exp(logvar) would still fit (as torch's float32 does),
  and sums accumulate in float32 partial sums (per 4096-element chunk) before float64,
  so a sum of terms near float32's maximum can overflow where the mean would fit.
- Probabilities: each log is clamped at -100 and the input gradient is
  ``(p - x) / max(p*(1-p), 1e-12)``, exactly ``F.binary_cross_entropy``; the target's
  gradient is the derivative of that clamped loss (finite at p = 0 and 1, where torch
  returns +-inf).
- Logits +-inf: +inf where the true value is (x < 1 at +inf, as torch; x > 0 at -inf,
  where torch gives NaN), NaN for the 0*inf limits (x = 1 at +inf, x = 0 at -inf);
  gradients stay finite (``sigmoid(l) - x``, ``-l``).
- NaN in an input propagates to every output and gradient that depends on it and to
  nothing else; the [0, 1] range checks let NaN through rather than raise.
- Mixed precision, as torch's own losses: floating arguments of different dtypes promote
  (bfloat16 with float32 gives float32, float32 with float64 gives float64), each
  gradient has its own input's dtype, and under autocast the losses compute and return
  float32 (``reparameterize`` keeps the promoted dtype of its inputs: z feeds the
  decoder). The kernels read each argument in its own dtype (no conversion pass over a
  bfloat16 decoder output); float64 does not mix, and the others are cast to it. Integer, bool and complex tensors raise
  TypeError.
- float16: local gradients are stored in float32 before the upstream gradient and
  the reduction's 1/divisor are applied, so a gradient is finite wherever its final
  value fits float16, even if d loss_i / d input_i alone exceeds 65504.
"""

from __future__ import annotations

import functools
import numbers
from types import ModuleType
from typing import Optional, Union

import torch
from torch import Tensor

from . import backends
from .schema import BY_NAME, ELBO_REDUCTIONS, REDUCTIONS, SCALES
from .schema import LIKELIHOODS as LIKELIHOOD_ROWS
from .schema import LIKELIHOOD_NAMES as LIKELIHOODS

__all__ = [
    "reparameterize",
    "gaussian_kl",
    "bernoulli_nll",
    "gaussian_nll",
    "mse_loss",
    "laplace_nll",
    "continuous_bernoulli_nll",
    "discretized_logistic_mixture_nll",
    "sample_discretized_logistic_mixture",
    "elbo_loss",
]


# ------------------------------------------------------------------ validation


def _check_float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, float16 or "
            f"bfloat16), got dtype {t.dtype}"
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    return t


def _check_same(ref_name: str, ref: Tensor, name: str, t: Tensor, *, shape: bool = True) -> None:
    """``t`` must share ``ref``'s device and (if ``shape``) shape. Floating dtypes may
    differ: they promote (``_compute_dtype``)."""
    if t.device != ref.device:
        raise ValueError(
            f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}"
        )
    if shape and t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name} {tuple(ref.shape)}, "
            f"got {tuple(t.shape)}"
        )


def _compute_dtype(first: Tensor, *others: object, loss: bool = True) -> torch.dtype:
    """The dtype a call computes and returns in, as torch's own losses: its floating
    tensor arguments promote (bfloat16 with float32 gives float32, float32 with float64
    gives float64); under autocast a loss (``loss``) computes and returns float32
    (float64 stays float64)."""
    dtype = first.dtype
    for t in others:
        if isinstance(t, Tensor) and t.dtype is not dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    if loss and dtype is not torch.float64 and _autocast_enabled(first.device.type):
        return torch.float32
    return dtype


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, ...)
        return False


def _cast(dtype: torch.dtype, *tensors):
    """Each tensor in ``dtype`` (a differentiable cast, so each gradient comes back in
    its own input's dtype); None and floats pass through."""
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.dtype != dtype else t for t in tensors)


def _kernel_inputs(impl: object, dtype: torch.dtype, first: Tensor, *others):
    """The tensor arguments of one loss call as backend ``impl`` must receive them to
    compute and return ``dtype`` (``_compute_dtype``). Kernels that read each input in its
    own dtype (float32, bfloat16 and float16 mixed give float32; every backend's) take
    them as they are, with no conversion pass over a large decoder output; under
    autocast their ops' Autocast kernel casts the smallest argument where all share one
    lower precision (``op_autograd.register_autocast``). float64, and the reference, get
    every tensor in ``dtype``."""
    if dtype is not torch.float64 and first.device.type in getattr(impl, "mixed_dtype_devices", ()):
        return (first, *others)
    return _cast(dtype, first, *others)


def _check_broadcastable(name: str, t: Tensor, to_name: str, to: Tensor) -> None:
    try:
        shape = torch.broadcast_shapes(t.shape, to.shape)
    except RuntimeError:
        shape = None
    if shape != to.shape:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} must broadcast to {to_name}'s shape "
            f"{tuple(to.shape)}"
        )


def _check_scale(
    name: str, scale: object, input: Tensor, input_name: str = "input"
) -> Union[float, Tensor]:
    """A likelihood's scale argument: a float (fixed), or a tensor broadcastable to
    ``input`` (learned: it receives gradients, summed over the broadcast dimensions)."""
    if isinstance(scale, Tensor):
        _check_float_tensor(name, scale)
        _check_same(input_name, input, name, scale, shape=False)
        _check_broadcastable(name, scale, input_name, input)
        return scale
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        return float(scale)
    raise TypeError(f"{name} must be a float or a tensor, got {type(scale).__name__}")


def _check_scale_name(scale: object) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _check_reduction(reduction: str, allowed: tuple[str, ...], why: str = "") -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}{why}, got {reduction!r}")


def _check_input_and_target(input_name: str, input: object, target: object, reduction: str) -> None:
    """The arguments every reconstruction loss shares: two floating tensors of one shape
    and device, and an elementwise ``reduction``."""
    _check_float_tensor(input_name, input)
    _check_float_tensor("target", target)
    _check_same(input_name, input, "target", target)
    _check_reduction(reduction, REDUCTIONS)
    _check_batch_dim(input_name, input, reduction)


# The reductions that need no batch dimension.
_SCALAR_OK = ("none", "sum", "mean")


def _check_batch_dim(name: str, t: Tensor, reduction: str) -> None:
    if reduction not in _SCALAR_OK and t.dim() == 0:
        raise ValueError(
            f"reduction={reduction!r} needs a batch dimension, but {name} is a 0-d tensor"
        )


# Exact types: a tensor subclass (and its __torch_function__) takes the checked path.
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_FLOATING = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _native_cpu_call(backend: str, *tensors: Tensor) -> Optional[object]:
    """The C++ CPU backend, when a call's tensors are ones it takes as they are and every
    check of this module would accept: dense CPU tensors of type Tensor or Parameter,
    one floating dtype (no promotion, no cast). None otherwise: the call takes the
    checked path, which also names what is wrong. Shapes and the other arguments are
    the caller's to check. The cheap test first, for the call a training step makes at
    every step, where the checks would cost as much as the kernel."""
    if backend != "auto" and backend != "cpu":
        return None
    for t in tensors:
        if type(t) not in _PLAIN_TYPES:
            return None
    dtype = tensors[0].dtype
    for t in tensors:
        if not t.is_cpu or t.dtype is not dtype or t.layout is not torch.strided:
            return None
    if dtype not in _FLOATING:
        return None
    impl = backends.resolve(backend, tensors[0].device)
    return impl if "cpu" in getattr(impl, "mixed_dtype_devices", ()) else None


@functools.cache
def _eager_calls() -> Optional[ModuleType]:
    from . import ops  # loads the compiled library

    return ops.EAGER_CALLS


def _direct_calls() -> Optional[ModuleType]:
    """The C++ direct path (csrc/python/eager_calls.cpp): the calls a training step
    makes, recognized and run in one call from Python; each returns None where it does
    not apply, and the caller goes on with ``_native_cpu_call``'s path, which torch.compile
    traces. None while torch.compile traces, or where the module was not built."""
    if torch.compiler.is_compiling():
        return None
    return _eager_calls()


# The LossKind of each likelihood at a fixed scale, for the direct path.
_FIXED_SCALE_KINDS = {row.name: int(row.kind) for row in LIKELIHOOD_ROWS}


def _direct_nll(
    likelihood: str, input: Tensor, target: Tensor, scale_value: float, reduction: str, backend: str
) -> Optional[Tensor]:
    direct = _direct_calls()
    if direct is None:
        return None
    return direct.direct_reconstruction_nll(
        input, target, scale_value, _FIXED_SCALE_KINDS[likelihood], reduction, backend
    )


def _native_cpu_pair(backend: str, input: Tensor, target: Tensor, reduction: str) -> Optional[object]:
    """``_native_cpu_call`` for the two tensors of an elementwise loss (a likelihood's
    input and target, the KL's mu and logvar): also one shape and a valid reduction."""
    if reduction not in REDUCTIONS:
        return None
    impl = _native_cpu_call(backend, input, target)
    if impl is None or input.shape != target.shape:
        return None
    return impl if input.dim() > 0 or reduction in _SCALAR_OK else None


# ------------------------------------------------------------------ public API


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    eps: Optional[Tensor] = None,
    *,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    scale: str = "logvar",
    backend: str = "auto",
) -> Tensor:
    """Reparameterized sample ``z = mu + exp(0.5 * logvar) * eps`` from N(mu, exp(logvar)).

    Args:
        mu: posterior mean, any shape, e.g. (B, J).
        logvar: posterior log-variance (log sigma with ``scale="logsigma"``), same shape,
            dtype and device as ``mu``.
        eps: standard-normal noise of shape ``mu.shape`` (or ``(K, *mu.shape)`` with
            ``num_samples=K``). If None, the kernel draws the noise itself from a
            counter-based generator (Philox) seeded from ``generator`` (or the default
            torch generator), so results are reproducible under ``torch.manual_seed``
            and equal on every backend. On the CPU the noise is kept for backward (as
            eager keeps its ``eps``); on a GPU backward regenerates it from the seed.
        num_samples: K, to draw K samples per element; the result has shape
            ``(K, *mu.shape)``. None for a single sample of shape ``mu.shape``.
        generator: torch generator the noise seed is drawn from, when ``eps`` is None.
        scale: ``"logvar"`` (the default) or ``"logsigma"``: ``z = mu + exp(logsigma) * eps``,
            as VDVAE and NVAE parameterize their posteriors; the kernels read log sigma
            as it is, and ``reparameterize(mu, s, scale="logsigma", generator=g)`` equals
            ``reparameterize(mu, 2 * s, generator=g)`` for the same generator state.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    Returns:
        z, differentiable with respect to ``mu`` and ``logvar``.
    """
    if num_samples is None and scale in SCALES:
        if (generator is None or (eps is None and type(generator) is torch.Generator)) and (
            direct := _direct_calls()
        ) is not None:
            z = direct.direct_reparameterize(mu, logvar, eps, generator, scale == "logsigma", backend)
            if z is not None:
                return z
        if eps is None and (generator is None or type(generator) is torch.Generator):
            impl = _native_cpu_call(backend, mu, logvar)
            if impl is not None and mu.shape == logvar.shape:
                return impl.reparameterize(mu, logvar, None, None, generator, scale == "logsigma")
        elif eps is not None and generator is None:
            impl = _native_cpu_call(backend, mu, logvar, eps)
            if impl is not None and mu.shape == logvar.shape == eps.shape:
                return impl.reparameterize(mu, logvar, eps, None, None, scale == "logsigma")
    _check_scale_name(scale)
    _check_float_tensor("mu", mu)
    _check_float_tensor("logvar", logvar)
    _check_same("mu", mu, "logvar", logvar)
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
            raise TypeError(f"num_samples must be an int or None, got {type(num_samples).__name__}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        num_samples = int(num_samples)
    if eps is not None:
        _check_float_tensor("eps", eps)
        _check_same("mu", mu, "eps", eps, shape=False)
        expected = tuple(mu.shape) if num_samples is None else (num_samples, *mu.shape)
        if tuple(eps.shape) != expected:
            raise ValueError(
                f"eps must have shape {expected} (mu's shape"
                f"{'' if num_samples is None else ', after num_samples'}), got {tuple(eps.shape)}"
            )
        if generator is not None:
            raise ValueError("generator is only used when eps is None; pass one or the other")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    mu, logvar, eps = _cast(_compute_dtype(mu, logvar, eps, loss=False), mu, logvar, eps)
    impl = backends.resolve(backend, mu.device)
    return impl.reparameterize(mu, logvar, eps, num_samples, generator, scale == "logsigma")


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    *,
    reduction: str = "batchmean",
    scale: str = "logvar",
    backend: str = "auto",
) -> Tensor:
    """Closed-form KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))).

    The prior is N(0, I) when both prior arguments are None; a missing one of the
    two means 0. Prior tensors broadcast against ``mu`` (e.g. a learned prior of
    shape (J,)) and receive gradients.

    Args:
        mu, logvar: posterior parameters of shape (B, ...).
        prior_mu, prior_logvar: optional prior parameters broadcastable to ``mu``.
        reduction: ``"none"`` (elementwise), ``"sum"``, ``"mean"`` (over all
            elements), ``"batchmean"`` (sum / B) or ``"per_sample"`` (shape (B,)).
        scale: ``"logvar"`` (the default) or ``"logsigma"``: ``logvar`` and
            ``prior_logvar`` hold log sigma. ``gaussian_kl(mu1, s1, mu2, s2,
            scale="logsigma", reduction="none")`` is VDVAE's
            ``gaussian_analytical_kl(mu1, mu2, s1, s2)``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.
    """
    if prior_mu is None and prior_logvar is None and scale in SCALES:
        direct = _direct_calls()
        if direct is not None:
            loss = direct.direct_gaussian_kl(mu, logvar, reduction, scale == "logsigma", backend)
            if loss is not None:
                return loss
        impl = _native_cpu_pair(backend, mu, logvar, reduction)
        if impl is not None:
            return impl.gaussian_kl(mu, logvar, None, None, reduction, scale == "logsigma")
    _check_scale_name(scale)
    _check_float_tensor("mu", mu)
    _check_float_tensor("logvar", logvar)
    _check_same("mu", mu, "logvar", logvar)
    for name, prior in (("prior_mu", prior_mu), ("prior_logvar", prior_logvar)):
        if prior is not None:
            _check_float_tensor(name, prior)
            _check_same("mu", mu, name, prior, shape=False)
            _check_broadcastable(name, prior, "mu", mu)
    _check_reduction(reduction, REDUCTIONS)
    _check_batch_dim("mu", mu, reduction)
    impl = backends.resolve(backend, mu.device)
    mu, logvar, prior_mu, prior_logvar = _kernel_inputs(
        impl, _compute_dtype(mu, logvar, prior_mu, prior_logvar), mu, logvar, prior_mu, prior_logvar
    )
    return impl.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction, scale == "logsigma")


def bernoulli_nll(
    input: Tensor,
    target: Tensor,
    *,
    logits: bool = True,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Negative Bernoulli log-likelihood (binary cross-entropy) of ``target``.

    Args:
        input: logits (``logits=True``, stable form) or probabilities in [0, 1]
            (``logits=False``; each log is clamped at -100 exactly as
            ``F.binary_cross_entropy`` does, so the two agree for every reduction).
        target: same shape, values in [0, 1] (soft targets allowed).
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"`` or ``"per_sample"``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    Values outside [0, 1] (probabilities or targets) raise ValueError; the C++
    kernels check this inside the same pass that computes the loss.
    """
    if type(logits) is bool:
        likelihood = "bernoulli" if logits else "bernoulli_probs"
        loss = _direct_nll(likelihood, input, target, 0.0, reduction, backend)
        if loss is not None:
            return loss
    impl = _native_cpu_pair(backend, input, target, reduction) if type(logits) is bool else None
    if impl is not None:
        return impl.bernoulli_nll(input, target, logits, reduction)
    _check_input_and_target("input", input, target, reduction)
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be a bool, got {type(logits).__name__}")
    impl = backends.resolve(backend, input.device)
    input, target = _kernel_inputs(impl, _compute_dtype(input, target), input, target)
    if impl is backends.reference:
        _check_unit_interval("target", target)
        if not logits:
            _check_unit_interval("input", input, " (probabilities, since logits=False)")
    return impl.bernoulli_nll(input, target, logits, reduction)


def _check_unit_interval(name: str, t: Tensor, what: str = "") -> None:
    # The C++ kernels check this inside their own pass; the reference pays a pass (and a
    # host sync) here, skipped under torch.compile where it would break the graph.
    if torch.compiler.is_compiling():
        return
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"{name}{what} must lie in [0, 1]; found values outside it")


def gaussian_nll(
    input: Tensor,
    target: Tensor,
    logvar: Union[float, Tensor] = 0.0,
    *,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Negative Gaussian log-density ``0.5*((target-input)^2 * exp(-logvar) + logvar + log(2*pi))``.

    Args:
        input: the predicted mean.
        target: the data, same shape.
        logvar: the log-variance: a float (fixed variance), or a tensor broadcastable
            to ``input`` (learned variance; it receives gradients).
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"`` or ``"per_sample"``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.
    """
    return _likelihood_with_scale("gaussian", input, target, logvar, reduction, backend)


def mse_loss(
    input: Tensor,
    target: Tensor,
    *,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Squared error ``(input - target)^2``; equal to ``F.mse_loss`` for the same reduction.

    Args:
        input, target: tensors of the same shape.
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"`` or ``"per_sample"``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.
    """
    loss = _direct_nll("mse", input, target, 0.0, reduction, backend)
    if loss is not None:
        return loss
    impl = _native_cpu_pair(backend, input, target, reduction)
    if impl is not None:
        return impl.mse_loss(input, target, reduction)
    _check_input_and_target("input", input, target, reduction)
    impl = backends.resolve(backend, input.device)
    input, target = _kernel_inputs(impl, _compute_dtype(input, target), input, target)
    return impl.mse_loss(input, target, reduction)


def laplace_nll(
    input: Tensor,
    target: Tensor,
    logscale: Union[float, Tensor] = 0.0,
    *,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Negative Laplace log-density ``|target - input| * exp(-logscale) + logscale + log 2``.

    The L1 reconstruction loss with a scale: latent-diffusion's
    ``|x - x_rec| / exp(logvar) + logvar`` (``LPIPSWithDiscriminator``, before its
    perceptual term) is ``laplace_nll(x_rec, x, logvar, reduction="batchmean")`` minus
    ``log 2`` times the elements per image.

    Args:
        input: the predicted location.
        target: the data, same shape.
        logscale: log b: a float (fixed scale), or a tensor broadcastable to ``input``
            (a learned scalar or a per-pixel map; it receives gradients, summed over
            the broadcast dimensions).
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"`` or ``"per_sample"``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    The gradient at a zero residual is 0, as ``F.l1_loss``'s.
    """
    return _likelihood_with_scale("laplace", input, target, logscale, reduction, backend)


def _likelihood_with_scale(
    likelihood: str,
    input: Tensor,
    target: Tensor,
    scale: Union[float, Tensor],
    reduction: str,
    backend: str,
) -> Tensor:
    """A ``LIKELIHOODS`` row with a scale argument (named by the row), checked and run."""
    if type(scale) in (float, int):
        loss = _direct_nll(likelihood, input, target, float(scale), reduction, backend)
        if loss is not None:
            return loss
    impl = _native_cpu_pair(backend, input, target, reduction) if type(scale) in (float, int) else None
    if impl is not None:
        return impl.reconstruction_nll(likelihood, input, target, float(scale), reduction)
    _check_input_and_target("input", input, target, reduction)
    scale = _check_scale(BY_NAME[likelihood].scale_name, scale, input)
    impl = backends.resolve(backend, input.device)
    input, target, scale = _kernel_inputs(
        impl, _compute_dtype(input, target, scale), input, target, scale
    )
    return impl.reconstruction_nll(likelihood, input, target, scale, reduction)


def continuous_bernoulli_nll(
    logits: Tensor,
    target: Tensor,
    *,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Negative continuous-Bernoulli log-density (Loaiza-Ganem & Cunningham, 2019) of
    ``target`` in [0, 1]: ``BCE-with-logits(logits, target) - log C(logits)`` with the
    normalizer ``log C(l) = log(l / tanh(l / 2))``.

    Computed from the logits at every value: a series near 0 (where the formula is 0/0)
    and ``log|l| - log1p(-e^-|l|) + log1p(e^-|l|)`` beyond, so it stays exact far out
    (``torch.distributions.ContinuousBernoulli`` clamps probabilities and is off by
    0.8 nats at logit 80). The gradient in the logits is
    ``sigmoid(l) - target - (1/l - 1/sinh(l))``.

    Args:
        logits: the decoder's logits.
        target: the data in [0, 1], same shape; values outside raise ValueError.
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"`` or ``"per_sample"``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.
    """
    loss = _direct_nll("continuous_bernoulli", logits, target, 0.0, reduction, backend)
    if loss is not None:
        return loss
    impl = _native_cpu_pair(backend, logits, target, reduction)
    if impl is not None:
        return impl.reconstruction_nll("continuous_bernoulli", logits, target, 0.0, reduction)
    _check_input_and_target("logits", logits, target, reduction)
    impl = backends.resolve(backend, logits.device)
    logits, target = _kernel_inputs(impl, _compute_dtype(logits, target), logits, target)
    if impl is backends.reference:
        _check_unit_interval("target", target)
    return impl.reconstruction_nll("continuous_bernoulli", logits, target, 0.0, reduction)


def _check_mixture_params(params: object, channels: Optional[int]) -> tuple[Tensor, int]:
    """params (B, P, H, W) of a discretized logistic mixture over ``channels`` colour
    channels (inferred from P when None); returns it and C."""
    _check_float_tensor("params", params)
    if params.dim() != 4:
        raise ValueError(
            f"params must have shape (B, P, H, W), got {params.dim()} dims {tuple(params.shape)}"
        )
    p = params.shape[1]
    if channels is None:
        fits = [c for c in (3, 1) if p > 0 and p % (10 if c == 3 else 3) == 0]
        if len(fits) != 1:
            raise ValueError(
                f"params has P = {p} channels, which "
                + ("fits both C = 3 (10M) and C = 1 (3M)" if fits else "is neither 10M nor 3M")
                + "; pass channels=3 or channels=1"
            )
        channels = fits[0]
    per_component = 10 if channels == 3 else 3
    if p == 0 or p % per_component != 0:
        raise ValueError(
            f"params must have P = {per_component}M channels for C = {channels} "
            f"(M mixture components), got P = {p}"
        )
    return params, channels


def _check_num_bits(num_bits: object) -> int:
    if isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral):
        raise TypeError(f"num_bits must be an int, got {type(num_bits).__name__}")
    if not 1 <= num_bits <= 16:
        raise ValueError(f"num_bits must be in [1, 16], got {num_bits}")
    return int(num_bits)


def discretized_logistic_mixture_nll(
    params: Tensor,
    x: Tensor,
    *,
    num_bits: int = 8,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Negative log-likelihood of ``x`` under PixelCNN++'s discretized logistic mixture
    (Salimans et al., 2017), as VDVAE, NVAE and Efficient-VDVAE score their images.

    Per pixel, with M components, the RGB channels coupled autoregressively
    (``mu1 = m1 + tanh(a0) x0``, ``mu2 = m2 + tanh(a1) x0 + tanh(a2) x1``) and log-scales
    clamped at -7: ``-logsumexp_k(log_softmax(logits)_k + sum_c log P(bin of x_c))``,
    the edge bins open-ended. The bin probability is computed as
    ``sigmoid(plus) sigmoid(-minus) (1 - e^-(plus - minus))`` in log space, so it does
    not cancel where PixelCNN++'s ``sigmoid(plus) - sigmoid(minus)`` does.

    One fused pass computes the loss and, when ``params`` requires grad, its gradient
    (the backward is one multiply by the upstream gradient): no (B, H, W, C, M)
    temporaries, extra memory O(params).

    Args:
        params: (B, P, H, W), a decoder's 1x1 convolution output in PixelCNN++'s layout
            (``params.permute(0, 2, 3, 1)`` is its ``l``): M logits, then per colour
            channel M means, M raw log-scales and (C = 3) M coupling coefficients.
            P = 10M for C = 3, 3M for C = 1. Strided and channels_last tensors are read
            without a copy.
        x: the data (B, C, H, W), C = 1 or 3, on the 2^num_bits-level grid of [-1, 1];
            values outside [-1, 1] raise ValueError. ``x`` is data: it gets no gradient,
            and an ``x`` that requires grad raises ValueError (detach it).
        num_bits: bits per channel of the data (8: 256 levels).
        reduction: ``"none"`` (per pixel, (B, H, W)), ``"per_sample"`` ((B,)), ``"sum"``,
            ``"batchmean"`` (sum / B) or ``"mean"`` (sum / (B*C*H*W): nats per dimension,
            as VDVAE and PixelCNN++ report it; divide by log 2 for bits per dimension).
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    Mixed precision as torch's losses: computed in float32 (float64 kept), each input
    read in its own dtype, the loss in the promoted dtype of params and x, float32 under
    autocast; params' gradient has params' dtype.
    """
    _check_float_tensor("x", x)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    params, _ = _check_mixture_params(params, x.shape[1])
    _check_same("x", x, "params", params, shape=False)
    b, _, h, w = x.shape
    if (params.shape[0], params.shape[2], params.shape[3]) != (b, h, w):
        raise ValueError(
            f"params must have shape ({b}, P, {h}, {w}) to match x {tuple(x.shape)}, "
            f"got {tuple(params.shape)}"
        )
    num_bits = _check_num_bits(num_bits)
    _check_reduction(reduction, REDUCTIONS)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "x requires grad, but the mixture likelihood treats x as data and has no "
            "gradient in it; pass x.detach()"
        )
    dtype = _compute_dtype(params, x)
    if dtype == torch.float64:
        params, x = _cast(dtype, params, x)
    elif x.dtype != dtype:  # float32 under autocast: x (C values a pixel, not P) carries it
        x = x.to(dtype)
    impl = backends.resolve(backend, params.device)
    if impl is backends.reference:
        _check_in_range("x", x, -1.0, 1.0)
        params = params.to(dtype)
    return impl.discretized_logistic_mixture_nll(params, x, num_bits, reduction)


def _check_in_range(name: str, t: Tensor, low: float, high: float) -> None:
    # As _check_unit_interval: the kernels check inside their own pass.
    if torch.compiler.is_compiling():
        return
    if bool(((t < low) | (t > high)).any()):
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}]; found values outside it")


def sample_discretized_logistic_mixture(
    params: Tensor,
    *,
    num_bits: int = 8,
    generator: Optional[torch.Generator] = None,
    channels: Optional[int] = None,
) -> Tensor:
    """Images (B, C, H, W) on the 2^num_bits-level grid of [-1, 1] drawn from the
    discretized logistic mixture of ``params`` (the layout of
    :func:`discretized_logistic_mixture_nll`), for generating from a decoder.

    Per pixel: a Gumbel-max choice of the component, then per channel a logistic sample
    with the component's mean and scale, rounded to its bin and clamped to [-1, 1] (the
    open-ended edge bins), the RGB channels coupled through the sampled (binned) values
    as in the likelihood. Uniforms come from ``torch.rand`` with ``generator``: a seeded
    generator gives the same images. Not differentiable.

    Args:
        params: (B, P, H, W).
        num_bits: bits per channel of the grid.
        generator: the random source (default: torch's global generator).
        channels: C; inferred from P (10M: 3, 3M: 1) unless P fits both (P = 30, 60,
            ...), where it must be given.
    """
    params, channels = _check_mixture_params(params, channels)
    num_bits = _check_num_bits(num_bits)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    with torch.no_grad():
        return backends.reference.sample_discretized_logistic_mixture(
            params, channels, num_bits, generator
        )


def elbo_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    likelihood: str = "bernoulli",
    beta: float = 1.0,
    recon_scale: Union[float, Tensor, None] = None,
    reduction: str = "batchmean",
    return_components: bool = False,
    scale: str = "logvar",
    backend: str = "auto",
) -> Union[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The negative ELBO ``recon_nll + beta * KL(N(mu, exp(logvar)) || N(0, I))`` in one call.

    Args:
        recon: decoder output of shape (B, ...): logits for ``likelihood="bernoulli"``
            and ``"continuous_bernoulli"``, probabilities for ``"bernoulli_probs"``, the
            mean for ``"gaussian"`` (full NLL) and ``"mse"`` (squared error), the
            location for ``"laplace"`` (L1).
        x: the data, same shape as ``recon``.
        mu, logvar: posterior parameters of shape (B, ...), same B.
        likelihood: ``"bernoulli"``, ``"bernoulli_probs"``, ``"gaussian"``, ``"mse"``,
            ``"laplace"`` or ``"continuous_bernoulli"``.
        beta: weight of the KL term (beta-VAE), >= 0.
        recon_scale: the scale of a ``"gaussian"`` (its log-variance) or ``"laplace"``
            (its log-scale, log b) likelihood: a float (fixed), or a tensor broadcastable
            to ``recon`` (learned: an ``nn.Parameter`` scalar as in latent diffusion, a
            per-pixel map or a decoder output; it receives gradients). None: unit scale
            (0), computed with the ELBO in one fused op.
        reduction: ``"batchmean"`` (sum / B: nats per datapoint), ``"sum"`` or
            ``"per_sample"`` (shape (B,)).
        return_components: also return the reconstruction NLL and the KL, reduced
            the same way (computed in the same pass).
        scale: ``"logvar"`` (the default) or ``"logsigma"``: the posterior's ``logvar``
            holds log sigma (see :func:`gaussian_kl`).
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    ``elbo_loss(recon, x, mu, logvar, likelihood="bernoulli_probs", reduction="sum")``
    is the ``loss_function`` of pytorch/examples ``vae/main.py``.
    """
    if (
        recon_scale is None
        and likelihood in LIKELIHOODS
        and type(beta) in (float, int)
        and beta >= 0
        and reduction in ELBO_REDUCTIONS
        and scale in SCALES
    ):
        direct = _direct_calls()
        if direct is not None:
            components = direct.direct_elbo(
                recon, x, mu, logvar, _FIXED_SCALE_KINDS[likelihood], float(beta), reduction,
                scale == "logsigma", backend,
            )  # fmt: skip
            if components is not None:
                return components if return_components else components[0]
        impl = _native_cpu_call(backend, recon, x, mu, logvar)
        if (
            impl is not None
            and x.shape == recon.shape
            and mu.shape == logvar.shape
            and recon.dim() > 0
            and mu.dim() > 0
            and recon.shape[0] == mu.shape[0]
        ):
            loss, recon_nll, kl = impl.elbo_loss(
                recon, x, mu, logvar, likelihood, float(beta), reduction, scale == "logsigma"
            )
            return (loss, recon_nll, kl) if return_components else loss
    _check_scale_name(scale)
    for name, t in (("recon", recon), ("x", x), ("mu", mu), ("logvar", logvar)):
        _check_float_tensor(name, t)
    if x.shape != recon.shape and x.numel() == recon.numel():
        raise ValueError(
            f"x must have the same shape as recon {tuple(recon.shape)}, got "
            f"{tuple(x.shape)}; reshape it, e.g. x.view_as(recon)"
        )
    _check_same("recon", recon, "x", x)
    _check_same("recon", recon, "mu", mu, shape=False)
    _check_same("mu", mu, "logvar", logvar)
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    row = BY_NAME[likelihood]
    if recon_scale is not None:
        if row.scale_name is None:
            with_scale = tuple(r.name for r in BY_NAME.values() if r.scale_name is not None)
            raise ValueError(
                f"recon_scale applies to the likelihoods with a scale {with_scale}, "
                f"not {likelihood!r}"
            )
        recon_scale = _check_scale("recon_scale", recon_scale, recon, "recon")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a float, got {type(beta).__name__}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    _check_reduction(
        reduction,
        ELBO_REDUCTIONS,
        " (the ELBO is a sum over each datapoint's dimensions, so only reductions "
        "over the batch apply)",
    )
    if recon.dim() == 0 or mu.dim() == 0:
        raise ValueError("recon and mu need a batch dimension; got a 0-d tensor")
    if recon.shape[0] != mu.shape[0]:
        raise ValueError(
            f"recon and mu must have the same batch size, got {recon.shape[0]} and {mu.shape[0]}"
        )
    dtype = _compute_dtype(recon, x, mu, logvar, recon_scale)
    impl = backends.resolve(backend, recon.device)
    if recon_scale is None:  # one fused op over the four
        recon, x, mu, logvar = _kernel_inputs(impl, dtype, recon, x, mu, logvar)
    else:  # two ops, each computing in dtype
        recon, x, recon_scale = _kernel_inputs(impl, dtype, recon, x, recon_scale)
        mu, logvar = _kernel_inputs(impl, dtype, mu, logvar)
    if impl is backends.reference:
        if row.unit_interval[1]:
            _check_unit_interval("x", x)
        if row.unit_interval[0]:
            _check_unit_interval("recon", recon, " (probabilities)")
    if recon_scale is None:
        loss, recon_nll, kl = impl.elbo_loss(
            recon, x, mu, logvar, likelihood, float(beta), reduction, scale == "logsigma"
        )
    else:  # a scale: the likelihood's op with its scale, then the KL
        recon_nll = impl.reconstruction_nll(likelihood, recon, x, recon_scale, reduction)
        kl = impl.gaussian_kl(mu, logvar, None, None, reduction, scale == "logsigma")
        loss = recon_nll + float(beta) * kl
    if return_components:
        return loss, recon_nll, kl
    return loss
