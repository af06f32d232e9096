"""The one definition of the benchmark cases, shared by ``test_bench_ops.py``
(pytest-benchmark) and ``run.py`` (the report command).

A case is (op, size, dtype, mode). For each case every provider runs the same step
on the same inputs:

- ``eager``: the formulas users write in eager PyTorch: pytorch/examples
  ``vae/main.py``'s, latent-diffusion's L1 with a log-scale for the Laplace NLL,
  ``torch.distributions.ContinuousBernoulli`` for the continuous Bernoulli,
- ``compile``: ``torch.compile`` of exactly those eager functions,
- every vae_kernels backend available for the device (``vk.available_backends()``
  minus ``"torch"``, which is the eager reference implementation of the library).

Modes (inputs always require grad, as in training):

- ``forward``: the call alone. Note that the ``cpu`` backend's losses compute their
  local gradients in this pass when inputs require grad, so its forward includes
  that work and its backward is a cheap pass (none on CPU for an upstream gradient
  of exactly 1, as here: the local gradients are the input gradients).
- ``backward``: ``torch.autograd.grad`` of the output; the forward runs before the
  timer starts.
- ``forward_backward``: both, timed together (one training step of the op).

The bytes floor of each (op, mode) is the fewest bytes the step must read and write
(see ``Op.floor_elements``); achieved bandwidth is measured against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import vae_kernels as vk
from vae_kernels import reference

MODES = ("forward", "backward", "forward_backward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


# ----------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """Batch B, data dimension D (pixels per datapoint) and latent dimension J."""

    name: str
    batch: int
    data_dim: int
    latent_dim: int


MNIST = Size("mnist", batch=128, data_dim=784, latent_dim=20)
CIFAR = Size("cifar32", batch=256, data_dim=3 * 32 * 32, latent_dim=128)
CPU_LARGE = Size("celeba64", batch=1024, data_dim=3 * 64 * 64, latent_dim=256)
CPU_LARGE_J512 = Size("celeba64_j512", batch=1024, data_dim=3 * 64 * 64, latent_dim=512)
GPU_LARGE = Size("celeba64_b4096", batch=4096, data_dim=3 * 64 * 64, latent_dim=256)
GPU_LARGE_J512 = Size("celeba64_b4096_j512", batch=4096, data_dim=3 * 64 * 64, latent_dim=512)

SIZES = {
    "cpu": (MNIST, CIFAR, CPU_LARGE, CPU_LARGE_J512),
    "cuda": (MNIST, CIFAR, GPU_LARGE, GPU_LARGE_J512),
}
# Image sizes of the mixture likelihood (C = 3 channels, square images, D = 3*H*W; M = 10
# components): the B=16 3x64x64 and VDVAE's scale, one 3x256x256 image.
RGB64 = Size("rgb64_b16", batch=16, data_dim=3 * 64 * 64, latent_dim=0)
RGB256 = Size("rgb256_b1", batch=1, data_dim=3 * 256 * 256, latent_dim=0)
MIXTURE_SIZES = (RGB64, RGB256)
MIXTURE_COMPONENTS = 10
QUICK_MIXTURE_SIZE = Size("rgb16_b4", batch=4, data_dim=3 * 16 * 16, latent_dim=0)
QUICK_SIZES = (MNIST,)
QUICK_DTYPES = ("float32",)
# The prepared GPU run (run.py --gpu-check, benchmarks/gpu_check.sh): the smallest and
# the headline size, float32, plus bfloat16 for the headline op; sized so that every op
# of both sizes fits a few minutes of a lent GPU, compile warm-ups included.
GPU_CHECK_SIZES = (CPU_LARGE, MNIST)
GPU_CHECK_DTYPES = ("float32",)
GPU_CHECK_EXTRA_GROUPS = (("elbo_bernoulli", "celeba64", "bfloat16"),)  # (op, size, dtype)

# The case the core issue (issue 2) sets a target for; reported on its own.
HEADLINE = dict(op="elbo_bernoulli", size="celeba64", dtype="float32", mode="forward_backward")


# ------------------------------------------------------------------------- ops


@dataclass
class CaseInputs:
    """The tensors of one case: ``args`` for the op, the ones needing grad, and the
    upstream gradient the backward starts from."""

    args: tuple
    grad_inputs: tuple[torch.Tensor, ...]
    grad_output: torch.Tensor


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per op
class Op:
    """One benchmarked op: its eager formula, our call, its inputs and its bytes floor.

    ``floor_elements[mode]`` = (elements of (B, D) tensors, elements of (B, J)
    tensors) the step must move at the least; bytes = that * itemsize. Scalars
    (the loss, its upstream gradient) are left out. ``backward`` is counted as what
    a forward+backward step must move beyond its forward, which is at least the
    gradients it writes.
    """

    name: str
    description: str
    uses_data: bool  # has (B, D) tensors
    uses_latent: bool  # has (B, J) tensors
    eager: Callable
    ours: Callable  # ours(backend) -> function of the same args as eager
    make_args: Callable  # make_args(size, dtype, device, generator) -> CaseInputs
    floor_elements: dict
    deterministic: bool = True  # False: draws its own noise, so values are not compared
    # Relative tolerance per dtype for the eager formula itself (and its compiled form)
    # against its float64 value, where the formula users call is less accurate than the
    # harness's default tolerance in that dtype; our backends keep the default.
    eager_tolerance: Optional[dict] = None
    # Sizes of their own (the mixture's images: full run, quick run), else the device's.
    own_sizes: Optional[tuple[tuple[Size, ...], tuple[Size, ...]]] = None

    def relevant_dims(self, size: Size) -> tuple[int, ...]:
        dims = (size.batch,)
        if self.uses_data:
            dims += (size.data_dim,)
        if self.uses_latent:
            dims += (size.latent_dim,)
        return dims

    def shape_label(self, size: Size) -> str:
        label = f"B={size.batch}"
        if self.uses_data:
            label += f" D={size.data_dim}"
        if self.uses_latent:
            label += f" J={size.latent_dim}"
        return label

    def floor_bytes(self, size: Size, dtype: torch.dtype, mode: str) -> int:
        data_tensors, latent_tensors = self.floor_elements[mode]
        n_data = size.batch * size.data_dim
        n_latent = size.batch * size.latent_dim
        itemsize = torch.empty((), dtype=dtype).element_size()
        return int((data_tensors * n_data + latent_tensors * n_latent) * itemsize)


# -- eager formulas (pytorch/examples vae/main.py; losses divided by B = batchmean,
#    the vk default)


def eager_reparameterize_eps(mu, logvar, eps):
    std = torch.exp(0.5 * logvar)
    return mu + eps * std


def eager_reparameterize_noise(mu, logvar):
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    return mu + eps * std


def eager_gaussian_kl(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def eager_bernoulli_logits(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / logits.shape[0]


def eager_bernoulli_probs(probs, x):
    return F.binary_cross_entropy(probs, x, reduction="sum") / probs.shape[0]


def eager_gaussian_nll(mean, x, logvar):
    # Learned per-pixel variance (a decoder with a mean and a log-variance head).
    nll = 0.5 * ((x - mean).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)
    return nll.sum() / mean.shape[0]


def eager_squared_error(recon, x):
    return F.mse_loss(recon, x, reduction="sum") / recon.shape[0]


def eager_laplace_fixed(loc, x):
    # The L1 reconstruction loss at unit scale, as users write it (F.l1_loss, sum),
    # plus the Laplace normalizer log 2 per element as one scalar (it has no gradient).
    return F.l1_loss(loc, x, reduction="sum") / loc.shape[0] + LOG_2 * loc[0].numel()


def eager_laplace_learned(loc, x, logscale):
    # latent-diffusion's LPIPSWithDiscriminator: |x - x_rec| / exp(logvar) + logvar (its
    # "logvar" is the Laplace log-scale), here with a per-pixel map (a decoder head),
    # summed / B, plus log 2 per element (a scalar: the value of -log Laplace).
    nll = torch.abs(x - loc) / torch.exp(logscale) + logscale
    return nll.sum() / loc.shape[0] + LOG_2 * loc[0].numel()


def eager_continuous_bernoulli(logits, x):
    # What most users call. torch.distributions computes log C from probabilities:
    # sigmoid(l) is clamped to [eps, 1 - eps] of the dtype (so |l| is capped at ~16 in
    # float32, ~4.8 in bfloat16) and a Taylor polynomial replaces log C for
    # sigmoid(l) in (0.499, 0.501). The benchmark's logits (standard normal) stay inside
    # the cap, where it agrees with the exact value that vk computes at every logit.
    log_prob = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    return -log_prob.sum() / logits.shape[0]


def eager_elbo_bernoulli(recon_logits, x, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / recon_logits.shape[0]


# -- inputs


def eager_mixture(params, x):
    """PixelCNN++/VDVAE's discretized_mix_logistic_loss, batchmean."""
    return reference.pixelcnn_discretized_mix_logistic_nll(params, x).sum() / x.shape[0]


def _leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).requires_grad_()


def _latent(size, dtype, device, generator):
    shape = (size.batch, size.latent_dim)
    mu = torch.randn(shape, generator=generator, device=device)
    logvar = 0.5 * torch.randn(shape, generator=generator, device=device)
    return _leaf(mu, dtype), _leaf(logvar, dtype)


def _data(size, dtype, device, generator, kind):
    shape = (size.batch, size.data_dim)
    if kind == "logits":
        recon = torch.randn(shape, generator=generator, device=device)
    elif kind == "probs":
        recon = torch.sigmoid(torch.randn(shape, generator=generator, device=device))
    else:  # a mean
        recon = torch.rand(shape, generator=generator, device=device)
    x = torch.rand(shape, generator=generator, device=device).to(dtype)  # pixels in [0, 1]
    return _leaf(recon, dtype), x


def _scalar_grad(dtype, device):
    return torch.ones((), dtype=dtype, device=device)


def args_reparameterize_eps(size, dtype, device, generator):
    mu, logvar = _latent(size, dtype, device, generator)
    eps = torch.randn(mu.shape, generator=generator, device=device).to(dtype)
    grad_z = torch.randn(mu.shape, generator=generator, device=device).to(dtype)
    return CaseInputs((mu, logvar, eps), (mu, logvar), grad_z)


def args_reparameterize_noise(size, dtype, device, generator):
    mu, logvar = _latent(size, dtype, device, generator)
    grad_z = torch.randn(mu.shape, generator=generator, device=device).to(dtype)
    return CaseInputs((mu, logvar), (mu, logvar), grad_z)


def args_gaussian_kl(size, dtype, device, generator):
    mu, logvar = _latent(size, dtype, device, generator)
    return CaseInputs((mu, logvar), (mu, logvar), _scalar_grad(dtype, device))


def args_bernoulli_logits(size, dtype, device, generator):
    logits, x = _data(size, dtype, device, generator, "logits")
    return CaseInputs((logits, x), (logits,), _scalar_grad(dtype, device))


def args_bernoulli_probs(size, dtype, device, generator):
    probs, x = _data(size, dtype, device, generator, "probs")
    return CaseInputs((probs, x), (probs,), _scalar_grad(dtype, device))


def args_gaussian_nll(size, dtype, device, generator):
    mean, x = _data(size, dtype, device, generator, "mean")
    logvar = 0.5 * torch.randn(mean.shape, generator=generator, device=device)
    logvar = _leaf(logvar, dtype)
    return CaseInputs((mean, x, logvar), (mean, logvar), _scalar_grad(dtype, device))


def args_squared_error(size, dtype, device, generator):
    recon, x = _data(size, dtype, device, generator, "mean")
    return CaseInputs((recon, x), (recon,), _scalar_grad(dtype, device))


def args_laplace_fixed(size, dtype, device, generator):
    loc, x = _data(size, dtype, device, generator, "mean")
    return CaseInputs((loc, x), (loc,), _scalar_grad(dtype, device))


def args_laplace_learned(size, dtype, device, generator):
    loc, x = _data(size, dtype, device, generator, "mean")
    logscale = _leaf(0.5 * torch.randn(loc.shape, generator=generator, device=device) - 1.0, dtype)
    return CaseInputs((loc, x, logscale), (loc, logscale), _scalar_grad(dtype, device))


def args_continuous_bernoulli(size, dtype, device, generator):
    logits, x = _data(size, dtype, device, generator, "logits")
    return CaseInputs((logits, x), (logits,), _scalar_grad(dtype, device))


def args_mixture(size, dtype, device, generator):
    """params (B, 10M, H, W) as a decoder emits them and 8-bit images x (B, 3, H, W)."""
    side = math.isqrt(size.data_dim // 3)
    m = MIXTURE_COMPONENTS
    params = torch.randn((size.batch, 10 * m, side, side), generator=generator, device=device)
    levels = torch.randint(0, 256, (size.batch, 3, side, side), generator=generator, device=device)
    x = (levels * (2.0 / 255) - 1).to(dtype)
    params = _leaf(params, dtype)
    return CaseInputs((params, x), (params,), _scalar_grad(dtype, device))


def args_elbo_bernoulli(size, dtype, device, generator):
    recon, x = _data(size, dtype, device, generator, "logits")
    mu, logvar = _latent(size, dtype, device, generator)
    return CaseInputs((recon, x, mu, logvar), (recon, mu, logvar), _scalar_grad(dtype, device))


OPS = (
    Op(
        "reparameterize_eps",
        "z = mu + exp(0.5*logvar)*eps, eps from the caller",
        uses_data=False,
        uses_latent=True,
        eager=eager_reparameterize_eps,
        ours=lambda b: lambda mu, logvar, eps: vk.reparameterize(mu, logvar, eps, backend=b),
        make_args=args_reparameterize_eps,
        # fwd: read mu, logvar, eps, write z. bwd: read grad_z, logvar, eps, write
        # grad_logvar (grad_mu is grad_z itself).
        floor_elements={"forward": (0, 4), "backward": (0, 4), "forward_backward": (0, 8)},
    ),
    Op(
        "reparameterize_noise",
        "z = mu + exp(0.5*logvar)*eps, eps drawn inside the op (eager: randn_like)",
        uses_data=False,
        uses_latent=True,
        eager=eager_reparameterize_noise,
        ours=lambda b: lambda mu, logvar: vk.reparameterize(mu, logvar, backend=b),
        make_args=args_reparameterize_noise,
        # eps is generated, never stored: fwd reads mu, logvar, writes z; bwd reads
        # grad_z, logvar, writes grad_logvar.
        floor_elements={"forward": (0, 3), "backward": (0, 3), "forward_backward": (0, 6)},
        deterministic=False,
    ),
    Op(
        "gaussian_kl",
        "KL(N(mu, exp(logvar)) || N(0, I)), batchmean",
        uses_data=False,
        uses_latent=True,
        eager=eager_gaussian_kl,
        ours=lambda b: lambda mu, logvar: vk.gaussian_kl(mu, logvar, backend=b),
        make_args=args_gaussian_kl,
        # read mu, logvar; fwd+bwd also writes grad_mu, grad_logvar.
        floor_elements={"forward": (0, 2), "backward": (0, 2), "forward_backward": (0, 4)},
    ),
    Op(
        "bernoulli_logits",
        "binary cross-entropy with logits, batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_bernoulli_logits,
        ours=lambda b: lambda logits, x: vk.bernoulli_nll(logits, x, backend=b),
        make_args=args_bernoulli_logits,
        # read logits, x; fwd+bwd also writes grad_logits.
        floor_elements={"forward": (2, 0), "backward": (1, 0), "forward_backward": (3, 0)},
    ),
    Op(
        "bernoulli_probs",
        "binary cross-entropy with probabilities (logs clamped at -100), batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_bernoulli_probs,
        ours=lambda b: lambda probs, x: vk.bernoulli_nll(probs, x, logits=False, backend=b),
        make_args=args_bernoulli_probs,
        floor_elements={"forward": (2, 0), "backward": (1, 0), "forward_backward": (3, 0)},
    ),
    Op(
        "gaussian_nll",
        "Gaussian NLL with a learned per-pixel log-variance, batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_gaussian_nll,
        ours=lambda b: lambda mean, x, logvar: vk.gaussian_nll(mean, x, logvar, backend=b),
        make_args=args_gaussian_nll,
        # read mean, x, logvar; fwd+bwd also writes grad_mean, grad_logvar.
        floor_elements={"forward": (3, 0), "backward": (2, 0), "forward_backward": (5, 0)},
    ),
    Op(
        "squared_error",
        "sum of squared errors (F.mse_loss sum), batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_squared_error,
        ours=lambda b: lambda recon, x: vk.mse_loss(recon, x, backend=b),
        make_args=args_squared_error,
        floor_elements={"forward": (2, 0), "backward": (1, 0), "forward_backward": (3, 0)},
    ),
    Op(
        "laplace_nll",
        "Laplace NLL at unit scale (L1 + log 2 per element), batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_laplace_fixed,
        ours=lambda b: lambda loc, x: vk.laplace_nll(loc, x, backend=b),
        make_args=args_laplace_fixed,
        # read loc, x; fwd+bwd also writes grad_loc.
        floor_elements={"forward": (2, 0), "backward": (1, 0), "forward_backward": (3, 0)},
    ),
    Op(
        "laplace_nll_learned",
        "Laplace NLL with a learned per-pixel log-scale (latent-diffusion's L1), batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_laplace_learned,
        ours=lambda b: lambda loc, x, logscale: vk.laplace_nll(loc, x, logscale, backend=b),
        make_args=args_laplace_learned,
        # read loc, x, logscale; fwd+bwd also writes grad_loc, grad_logscale.
        floor_elements={"forward": (3, 0), "backward": (2, 0), "forward_backward": (5, 0)},
    ),
    Op(
        "continuous_bernoulli_nll",
        "continuous-Bernoulli NLL from logits (eager: torch.distributions), batchmean",
        uses_data=True,
        uses_latent=False,
        eager=eager_continuous_bernoulli,
        ours=lambda b: lambda logits, x: vk.continuous_bernoulli_nll(logits, x, backend=b),
        make_args=args_continuous_bernoulli,
        # read logits, x; fwd+bwd also writes grad_logits.
        floor_elements={"forward": (2, 0), "backward": (1, 0), "forward_backward": (3, 0)},
        # torch.distributions' gradient in the logits, against its float64 value, at the
        # MNIST and B=1024 sizes: off by 0.45 % of the largest gradient in float32 (just
        # outside its Taylor band, |l| ~ 0.006) and by 35 % in bfloat16; vk's by 2e-7
        # and 0.27 %.
        eager_tolerance={torch.float32: 1e-2, torch.bfloat16: 0.5},
    ),
    Op(
        "discretized_logistic_mixture",
        "PixelCNN++ discretized logistic mixture NLL, M=10, RGB coupled, batchmean "
        "(eager: VDVAE's discretized_mix_logistic_loss)",
        uses_data=True,
        uses_latent=False,
        eager=eager_mixture,
        ours=lambda b: lambda params, x: vk.discretized_logistic_mixture_nll(params, x, backend=b),
        make_args=args_mixture,
        # read params (10M/3 = 33.3 per data element) and x; fwd+bwd also writes grad_params.
        floor_elements={
            "forward": (10 * MIXTURE_COMPONENTS / 3 + 1, 0),
            "backward": (10 * MIXTURE_COMPONENTS / 3, 0),
            "forward_backward": (20 * MIXTURE_COMPONENTS / 3 + 1, 0),
        },
        # sigmoid(plus) - sigmoid(minus) cancels: the eager float32 gradient is off its
        # float64 value by ~6e-4 of the largest (vk's: within the default 1e-4). In
        # bfloat16 the eager formula and its compiled form lose the bin probabilities
        # (gradients off by up to 8x the largest); vk computes in float32.
        eager_tolerance={torch.float32: 1e-2, torch.bfloat16: 10.0},
        own_sizes=(MIXTURE_SIZES, (QUICK_MIXTURE_SIZE,)),
    ),
    Op(
        "elbo_bernoulli",
        "whole negative ELBO: BCE with logits + KL, batchmean (vk.elbo_loss)",
        uses_data=True,
        uses_latent=True,
        eager=eager_elbo_bernoulli,
        ours=lambda b: lambda recon, x, mu, logvar: vk.elbo_loss(recon, x, mu, logvar, backend=b),
        make_args=args_elbo_bernoulli,
        floor_elements={"forward": (2, 2), "backward": (1, 2), "forward_backward": (3, 4)},
    ),
)
OPS_BY_NAME = {op.name: op for op in OPS}


# ------------------------------------------------------------------- providers

# The device each vae_kernels backend runs on; a backend not listed here (added
# after this file) is tried on every device.
BACKEND_DEVICE = {"cpu": "cpu", "triton": "cuda", "cuda": "cuda"}


def providers_for(device: str) -> list[str]:
    """``eager``, ``compile`` and each vae_kernels backend that runs on ``device``."""
    backends = [
        name
        for name in vk.available_backends()
        if name != "torch" and BACKEND_DEVICE.get(name, device) == device
    ]
    return ["eager", "compile", *backends]


def provider_function(provider: str, op: Op) -> Callable:
    """The uncompiled function a provider runs (``compile`` wraps ``op.eager``)."""
    if provider in ("eager", "compile"):
        return op.eager
    return op.ours(provider)


# ------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    op: Op
    size: Size
    dtype_name: str
    mode: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def id(self) -> str:
        return f"{self.op.name}-{self.size.name}-{self.dtype_name}-{self.mode}"

    @property
    def is_headline(self) -> bool:
        return (self.op.name, self.size.name, self.dtype_name, self.mode) == (
            HEADLINE["op"],
            HEADLINE["size"],
            HEADLINE["dtype"],
            HEADLINE["mode"],
        )

    def floor_bytes(self) -> int:
        return self.op.floor_bytes(self.size, self.dtype, self.mode)


def sizes_for(op: Op, device: str, quick: bool, gpu_check: bool = False) -> list[Size]:
    """The sizes of ``op``, dropping sizes that differ only in dims the op does not use
    (e.g. the J=512 size for a reconstruction loss)."""
    sizes, seen = [], set()
    if op.own_sizes is not None:
        return list(op.own_sizes[1] if quick else op.own_sizes[0])
    if quick:
        candidates = QUICK_SIZES
    elif gpu_check:
        candidates = GPU_CHECK_SIZES
    else:
        candidates = SIZES[device]
    for size in candidates:
        dims = op.relevant_dims(size)
        if dims not in seen:
            seen.add(dims)
            sizes.append(size)
    return sizes


def all_cases(
    device: str = "cpu",
    quick: bool = False,
    ops: Optional[list[str]] = None,
    sizes: Optional[list[str]] = None,
    dtypes: Optional[list[str]] = None,
    modes: Optional[list[str]] = None,
    gpu_check: bool = False,
):
    """Every case (or those with the given names), grouped so that a group (op, size,
    dtype) shares inputs and compiled code.

    ``gpu_check``: the set of the prepared GPU run (``GPU_CHECK_*``; with ``quick``, the
    quick set), in ``gpu_check_priority`` order.
    """
    cases = []
    for op in OPS:
        if quick:
            dtype_names = QUICK_DTYPES
        elif gpu_check:
            extra = [d for o, _, d in GPU_CHECK_EXTRA_GROUPS if o == op.name]
            dtype_names = tuple(dict.fromkeys([*GPU_CHECK_DTYPES, *extra]))
        else:
            dtype_names = tuple(DTYPES)
        for dtype_name in dtype_names:
            for size in sizes_for(op, device, quick, gpu_check):
                if (
                    gpu_check
                    and not quick
                    and dtype_name not in GPU_CHECK_DTYPES
                    and (op.name, size.name, dtype_name) not in GPU_CHECK_EXTRA_GROUPS
                ):
                    continue
                for mode in MODES:
                    chosen = [(ops, op.name), (sizes, size.name), (dtypes, dtype_name), (modes, mode)]
                    if all(names is None or name in names for names, name in chosen):
                        cases.append(Case(op, size, dtype_name, mode))
    if gpu_check:
        cases.sort(key=gpu_check_priority)  # stable: modes keep their order
    return cases


def gpu_check_priority(case: Case) -> tuple:
    """Order of the prepared GPU run, which may stop early at its time budget: the
    headline group first, then the largest size, then the rest; extra dtypes last."""
    headline_group = (case.op.name, case.size.name, case.dtype_name) == (
        HEADLINE["op"],
        HEADLINE["size"],
        HEADLINE["dtype"],
    )
    return (
        not headline_group,
        case.dtype_name not in GPU_CHECK_DTYPES,
        -case.size.batch * (case.size.data_dim + case.size.latent_dim),
    )


# --------------------------------------------------------------------- steps


def make_step(fn: Callable, inputs: CaseInputs, mode: str) -> tuple[Callable, Callable]:
    """(prepare, run) for one step: ``run(prepare())`` is the timed part."""
    args, wrt, grad_output = inputs.args, inputs.grad_inputs, inputs.grad_output
    if mode == "forward":
        return (lambda: None), (lambda _: fn(*args))
    if mode == "backward":
        return (lambda: fn(*args)), (lambda out: torch.autograd.grad(out, wrt, grad_output))
    if mode == "forward_backward":
        return (lambda: None), (lambda _: torch.autograd.grad(fn(*args), wrt, grad_output))
    raise ValueError(f"unknown mode {mode!r}")
