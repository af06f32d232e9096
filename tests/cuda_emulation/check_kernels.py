"""The CUDA kernels of csrc/cuda, compiled with g++ against the host emulation of the CUDA
model (include/) and run on the CPU: every launcher of launchers.h, in every dtype, on the
layouts the glue (csrc/cuda/ops_cuda.cpp) uses, against the float64 oracle
(vae_kernels.reference); bitwise determinism; the in-kernel Philox draws against the CPU
backend's; and self-tests of the emulation (its primitives, and a planted missing
__syncthreads that must be caught).

Not collected by the suite's own run (the name is not test_*): tests/test_cuda_emulation.py
builds the libraries and runs this module in a subprocess with AddressSanitizer and
UBSan loaded, and reports its results. By hand:

    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
    VK_EMULATION_LIB=<built .so> python -m pytest tests/cuda_emulation/check_kernels.py

A new kernel is tested by a row in a table: a LossKind by a LossCase in LOSSES (the test
fails while a LossKind of launchers.h has none); a new launcher by a wrapper function
(wrapper.cpp), its ctypes signature (emulated.py) and a test here.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import vae_kernels as vk
from vae_kernels import reference

from conftest import TOLERANCES, assert_close_to_oracle

from . import emulated
from .emulated import KERNEL_CHUNK, LOSS_KINDS, local_grad_dtype, loss_chunks_per_row

LIB = os.environ.get("VK_EMULATION_LIB")
PLANTED_LIB = os.environ.get("VK_EMULATION_PLANTED_LIB")  # built without block_sum's first barrier
REPORT = os.environ.get("VK_EMULATION_REPORT")  # a JSON file for measured figures

pytestmark = pytest.mark.skipif(not LIB, reason="VK_EMULATION_LIB is not set: run "
                                "tests/test_cuda_emulation.py, which builds the library")

DTYPES = list(TOLERANCES)
NAN = float("nan")


@pytest.fixture(scope="module")
def kernels() -> emulated.Kernels:
    return emulated.Kernels(LIB)


def report(key: str, value) -> None:
    """Records a measured figure for the outer test to show."""
    if not REPORT:
        return
    data = {}
    if os.path.exists(REPORT):
        with open(REPORT) as f:
            data = json.load(f)
    data[key] = value
    with open(REPORT, "w") as f:
        json.dump(data, f, indent=1)


def buffer(values, dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
    """A contiguous tensor that starts `offset` elements into its own allocation (offset 1:
    not 16-byte aligned, so the kernels take their scalar path); filled with `values`, or
    with NaN (an int: the length) so unwritten outputs show. Its end is the allocation's
    end, where AddressSanitizer catches an overrun."""
    n = values if isinstance(values, int) else values.numel()
    base = torch.full((n + offset,), NAN, dtype=dtype)
    view = base[offset:]
    if not isinstance(values, int):
        view.copy_(values.flatten())
    return view


class Draw:
    """Seeded float64 draws of `n` elements."""

    def __init__(self, n: int, seed: int):
        self.n, self.g = n, torch.Generator().manual_seed(seed)

    def randn(self, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(self.n, generator=self.g, dtype=torch.float64) * scale

    def rand(self) -> torch.Tensor:
        return torch.rand(self.n, generator=self.g, dtype=torch.float64)


# ---------------------------------------------------------------- the loss kinds


@dataclass(frozen=True)
class LossCase:
    kind: str  # the LossKind enumerator of csrc/math/losses.h
    inputs: Callable[[Draw], list]  # float64 inputs, in the kernel's order
    oracle: Callable[..., torch.Tensor]  # elementwise loss from float64 inputs
    unit_interval: tuple = ()  # the inputs flagged when outside [0, 1]
    logvar_value: float = 0.0  # a fixed-scale kind's scale


LOSSES = [
    LossCase("kBernoulliLogits", lambda d: [d.randn(3), d.rand()],
             lambda l, x: reference.bernoulli_nll_elementwise(l, x, logits=True), (1,)),
    LossCase("kBernoulliProbs", lambda d: [d.rand() * 0.9 + 0.05, d.rand().round()],
             lambda p, x: reference.bernoulli_nll_elementwise(p, x, logits=False), (0, 1)),
    LossCase("kGaussianFixedVar", lambda d: [d.randn(), d.randn()],
             lambda m, x: reference.gaussian_nll_elementwise(m, x, -0.3), logvar_value=-0.3),
    LossCase("kGaussianLearnedVar", lambda d: [d.randn(), d.randn(), d.randn(0.5)],
             reference.gaussian_nll_elementwise),
    LossCase("kSquaredError", lambda d: [d.randn(), d.randn()],
             reference.squared_error_elementwise),
    LossCase("kKLStdNormal", lambda d: [d.randn(), d.randn(0.7)],
             reference.gaussian_kl_elementwise),
    LossCase("kKLPrior", lambda d: [d.randn(), d.randn(0.7), d.randn(0.5), d.randn(0.5)],
             reference.gaussian_kl_elementwise),
    LossCase("kLaplaceFixedScale", lambda d: [d.randn(), d.randn()],
             lambda m, x: reference.laplace_nll_elementwise(m, x, 0.4), logvar_value=0.4),
    LossCase("kLaplaceLearnedScale", lambda d: [d.randn(), d.randn(), d.randn(0.5)],
             reference.laplace_nll_elementwise),
    LossCase("kContinuousBernoulli", lambda d: [d.randn(3), d.rand()],
             reference.continuous_bernoulli_nll_elementwise, (1,)),
    LossCase("kKLStdNormalLogSigma", lambda d: [d.randn(), d.randn(0.35)],
             lambda m, s: reference.gaussian_kl_elementwise(m, s, logsigma=True)),
    LossCase("kKLPriorLogSigma",
             lambda d: [d.randn(), d.randn(0.35), d.randn(0.5), d.randn(0.25)],
             lambda m, s, pm, ps: reference.gaussian_kl_elementwise(m, s, pm, ps, logsigma=True)),
]
LOSS_BY_KIND = {c.kind: c for c in LOSSES}


@dataclass(frozen=True)
class Layout:
    """One way the glue calls launch_loss: reduction "none" (the elementwise loss; rows = 1),
    "per_sample" (a row per datapoint, then launch_finish_rows) or "total" (sum, mean,
    batchmean: one row, then launch_finish_total), divided by `divisor`."""

    name: str
    batch: int
    row: int
    reduction: str
    grads: str = "all"  # local gradients asked for: "all", "first" (input 0's only) or "none"
    offset: int = 0  # 1: every buffer misaligned (scalar path)
    divisor: int = 1
    repeat: bool = False  # run twice: the results must be bitwise equal


C = KERNEL_CHUNK
LAYOUTS = [
    Layout("none", 4, 37, "none"),  # one block, packed with a tail
    Layout("none-misaligned", 4, 37, "none", offset=1),  # scalar path
    Layout("rows-chunked", 2, C + 8, "per_sample", repeat=True),  # packed; 2 chunks per row
    Layout("rows-chunked-odd-nograd", 2, C + 5, "per_sample", grads="none", divisor=2),  # scalar:
    # the second row starts off a 16-byte boundary
    Layout("rows-short", 7, 3, "per_sample", grads="first"),  # 32-thread blocks, 3 busy threads
    Layout("total", 3, 2731, "total", grads="first", divisor=3, repeat=True),  # 8193: 2 chunks
    Layout("total-misaligned-nograd", 3, 2731, "total", grads="none", offset=1,
           divisor=8193),  # mean
    Layout("empty-none", 0, 6, "none"),
    Layout("empty-rows", 0, 6, "per_sample"),
    Layout("empty-total", 0, 6, "total"),
    Layout("zero-length-rows", 3, 0, "per_sample"),
]


def run_loss(kernels, case: LossCase, dtype, layout: Layout, inputs64: list) -> dict:
    """launch_loss (and the finishing pass) as the glue calls them; every output."""
    n = layout.batch * layout.row
    ins = [buffer(x.to(dtype), dtype, layout.offset) for x in inputs64]
    per_row = layout.reduction == "per_sample"
    rows, row_len = (layout.batch, layout.row) if per_row else (1, n)
    chunks = loss_chunks_per_row(row_len)
    none = layout.reduction == "none"
    elementwise = buffer(n, dtype, layout.offset) if none else None
    asked = {"all": len(ins), "first": 1, "none": 0}[layout.grads]
    grads = [buffer(n, local_grad_dtype(dtype), layout.offset) if k < asked else None
             for k in range(len(ins))]
    partials = None if none else torch.full((rows * chunks,), NAN, dtype=torch.float64)
    flags = torch.zeros(4, dtype=torch.int32)
    kernels.loss(dtype, case.kind, ins, rows=rows, row_len=row_len, logvar_value=case.logvar_value,
                 elementwise=elementwise, grads=grads, grad_scale=1.0 / layout.divisor,
                 partial_sums=partials, flags=flags)
    if per_row:
        loss = buffer(layout.batch, dtype)
        kernels.finish_rows(dtype, partials, chunks, None, 0, 0.0, rows, 1.0 / layout.divisor,
                            out_total=loss)
    elif layout.reduction == "total":
        loss = buffer(1, dtype)
        kernels.finish_total(dtype, partials, rows * chunks, None, 0, 0.0, 1.0 / layout.divisor,
                             out_total=loss)
    else:
        loss = elementwise
    return {"loss": loss, "partials": partials, "flags": flags, "grads": grads}


def loss_oracle(case: LossCase, rounded: list, layout: Layout):
    """The float64 loss reduced as `layout` and its local gradients (divided by divisor)."""
    leaves = [x.clone().requires_grad_() for x in rounded]
    elementwise = case.oracle(*leaves)
    grads = torch.autograd.grad(elementwise.sum(), leaves)
    loss = elementwise.detach()
    if layout.reduction == "per_sample":
        loss = loss.view(layout.batch, layout.row).sum(1)
    elif layout.reduction == "total":
        loss = loss.sum().reshape(1)
    return loss / layout.divisor, [g / layout.divisor for g in grads]


def test_every_loss_kind_has_a_case():
    assert sorted(LOSS_BY_KIND) == sorted(LOSS_KINDS), "add a LossCase for each LossKind"


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOSSES, ids=lambda case: case.kind)
def test_loss(kernels, case, dtype, layout):
    n = layout.batch * layout.row
    inputs64 = case.inputs(Draw(n, seed=LOSS_KINDS[case.kind]))
    got = run_loss(kernels, case, dtype, layout, inputs64)
    rounded = [x.to(dtype).double() for x in inputs64]  # the oracle sees the rounded inputs
    loss64, grads64 = loss_oracle(case, rounded, layout)

    if got["partials"] is not None:
        assert not got["partials"].isnan().any(), "a block did not write its partial sum"
    summed = {"none": 1, "per_sample": layout.row, "total": n}[layout.reduction]
    assert_close_to_oracle(got["loss"], loss64, dtype, scale=max(1.0, summed / layout.divisor))
    for k, (grad, grad64) in enumerate(zip(got["grads"], grads64)):
        if grad is None:
            continue
        scale = max(1.0, grad64.abs().max().item()) if n else 1.0
        try:
            assert_close_to_oracle(grad, grad64, dtype, scale=scale)
        except AssertionError as e:
            raise AssertionError(f"local gradient of input {k}: {e}") from None
    assert got["flags"].tolist() == [0, 0, 0, 0], "in-range inputs flagged outside [0, 1]"
    if layout.repeat:
        again = run_loss(kernels, case, dtype, layout, inputs64)
        for name in ("loss", "partials"):
            assert torch.equal(got[name], again[name]), f"{name} differ between two runs"
        for grad, grad_again in zip(got["grads"], again["grads"]):
            assert grad is None or torch.equal(grad, grad_again)


MIXED_DTYPES = [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("dtypes", MIXED_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.kind)
def test_loss_reads_mixed_dtypes_as_they_are(kernels, case, dtypes):
    """Inputs of different dtypes (the first in dtypes[0], the others in dtypes[1]), read
    each in its own: bitwise the float32 kernel's results on the inputs converted to
    float32 first (its scalar path, which has the same summation order)."""
    batch, row = 3, 2731  # 8193 elements: two chunks
    n = batch * row
    inputs64 = case.inputs(Draw(n, seed=LOSS_KINDS[case.kind] + 100))
    in_dtypes = [dtypes[0]] + [dtypes[1]] * (len(inputs64) - 1)
    mixed = [x.to(d) for x, d in zip(inputs64, in_dtypes)]
    as_float = [buffer(x.float(), torch.float32, offset=1) for x in mixed]  # scalar path

    def call(ins, input_dtypes):
        elementwise = torch.full((n,), NAN)
        grads = [torch.full((n,), NAN) for _ in ins]
        partials = torch.full((loss_chunks_per_row(n),), NAN, dtype=torch.float64)
        kernels.loss(torch.float32, case.kind, ins, rows=1, row_len=n,
                     logvar_value=case.logvar_value, elementwise=elementwise, grads=grads,
                     grad_scale=0.5, partial_sums=partials, flags=torch.zeros(4, dtype=torch.int32),
                     input_dtypes=input_dtypes)
        return elementwise, grads, partials

    got = call(mixed, in_dtypes)
    expected = call(as_float, None)
    assert torch.equal(got[0], expected[0]), "elementwise loss"
    for k, (g, e) in enumerate(zip(got[1], expected[1])):
        assert torch.equal(g, e), f"local gradient of input {k}"
    assert torch.equal(got[2], expected[2]), "partial sums"


@pytest.mark.parametrize("kind,bad", [("kBernoulliLogits", 1), ("kBernoulliProbs", 0),
                                      ("kBernoulliProbs", 1)])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_out_of_unit_interval_flags(kernels, kind, bad, offset):
    """One value outside [0, 1] flags its input, NaN does not, nor do unconstrained logits."""
    case = LOSS_BY_KIND[kind]
    layout = Layout("total", 3, 5461, "total", grads="none", offset=offset)  # 2 blocks
    inputs = case.inputs(Draw(3 * 5461, seed=5))
    inputs[bad][12000] = 1.5 if bad == 1 else -0.25
    inputs[1 - bad][17] = -5.0 if kind == "kBernoulliLogits" and bad == 1 else NAN
    flags = run_loss(kernels, case, torch.float32, layout, inputs)["flags"]
    assert flags.tolist() == [int(k == bad) for k in range(4)]


# ---------------------------------------------------------------- the finishing passes


def sequential_sum(values) -> float:
    return functools.reduce(lambda s, v: s + v, values, 0.0)


def stored(values: list, dtype) -> torch.Tensor:
    """float64 results stored in `dtype` as the kernels do: via float32 for 16-bit types."""
    t = torch.tensor(values, dtype=torch.float64)
    return t if dtype == torch.float64 else t.float().to(dtype)


@pytest.mark.parametrize("with_b", [False, True], ids=["a", "a+b"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finish_rows(kernels, dtype, with_b):
    """Slots added in index order in float64: bitwise equal to the same sums in Python."""
    rows, chunks_a, chunks_b, beta, scale = 300, 3, 2, 0.7, 1 / 7  # 2 blocks of 256 threads
    g = torch.Generator().manual_seed(3)
    a = torch.randn(rows * chunks_a, generator=g, dtype=torch.float64) * 100
    b = torch.randn(rows * chunks_b, generator=g, dtype=torch.float64) if with_b else None
    outs = [buffer(rows, dtype) for _ in range(3)] if with_b else [buffer(rows, dtype), None, None]
    kernels.finish_rows(dtype, a, chunks_a, b, chunks_b if with_b else 0, beta, rows, scale, *outs)
    sums_a = [sequential_sum(a[r * chunks_a:(r + 1) * chunks_a].tolist()) for r in range(rows)]
    sums_b = ([sequential_sum(b[r * chunks_b:(r + 1) * chunks_b].tolist()) for r in range(rows)]
              if with_b else [0.0] * rows)
    totals = [(x + beta * y) * scale for x, y in zip(sums_a, sums_b)]
    assert torch.equal(outs[0], stored(totals, dtype))
    if with_b:
        assert torch.equal(outs[1], stored([x * scale for x in sums_a], dtype))
        assert torch.equal(outs[2], stored([y * scale for y in sums_b], dtype))


@pytest.mark.parametrize("count_a,count_b", [(5000, 37), (1, 0), (0, 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finish_total(kernels, dtype, count_a, count_b):
    beta, scale = 0.7, 1 / 3
    g = torch.Generator().manual_seed(4)
    a = torch.randn(count_a, generator=g, dtype=torch.float64) * 100
    b = torch.randn(count_b, generator=g, dtype=torch.float64) if count_b else None
    outs = [buffer(1, dtype) for _ in range(3)]
    kernels.finish_total(dtype, a, count_a, b, count_b, beta, scale, *outs)
    sum_a, sum_b = math.fsum(a.tolist()), math.fsum(b.tolist()) if count_b else 0.0
    for out, value, summed in [(outs[0], (sum_a + beta * sum_b) * scale, count_a + count_b),
                               (outs[1], sum_a * scale, count_a),
                               (outs[2], sum_b * scale, count_b)]:
        assert_close_to_oracle(out, torch.tensor([value], dtype=torch.float64), dtype,
                               scale=max(1, summed))
    again = [buffer(1, dtype) for _ in range(3)]
    kernels.finish_total(dtype, a, count_a, b, count_b, beta, scale, *again)
    assert all(torch.equal(x, y) for x, y in zip(outs, again)), "two runs differ"


# ---------------------------------------------------------------- sampling

SAMPLE_SHAPES = [(1000, 3), (257, 1), (1, 2), (0, 2)]  # (numel, num_samples)


def philox_eps(kernels, seed: int, numel: int, num_samples: int) -> torch.Tensor:
    """The emulated kernel's float32 draws: z of mu = 0, logvar = 0 is eps itself."""
    zeros = torch.zeros(numel)
    z = buffer(numel * num_samples, torch.float32)
    kernels.reparameterize_philox(torch.float32, zeros, zeros, torch.tensor([seed]), z, numel,
                                  num_samples)
    return z.view(num_samples, numel)


def sampling_oracle(mu, logvar, eps, grad_z, logsigma=False):
    """z and the gradients of <z, grad_z> in mu and the scale, in float64."""
    leaves = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    z = reference.reparameterize(*leaves, eps, None, None, logsigma)
    return z.detach(), torch.autograd.grad(z, leaves, grad_z)


@pytest.mark.parametrize("scale", ["logvar", "logsigma"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", ["caller", "philox"])
def test_reparameterize(kernels, noise, dtype, shape, offset, scale):
    c = 1.0 if scale == "logsigma" else 0.5
    numel, k = shape
    d, dk = Draw(numel, seed=6), Draw(numel * k, seed=7)
    mu, logvar, grad_z = d.randn().to(dtype), d.randn(0.5).to(dtype), dk.randn().to(dtype)
    seed = torch.tensor([0x5EED_1234_5678 + numel])
    if noise == "caller":
        eps = dk.randn().to(dtype)
        eps64 = eps.double().view(k, numel)
    else:
        eps64 = philox_eps(kernels, int(seed), numel, k).double()
    bufs = [buffer(x, dtype, offset) for x in (mu, logvar, grad_z)]
    e = buffer(eps, dtype, offset) if noise == "caller" else None

    def launch():
        z, grad_mu, grad_logvar = (buffer(n, dtype, offset) for n in (numel * k, numel, numel))
        if noise == "caller":
            kernels.reparameterize(dtype, bufs[0], bufs[1], e, z, numel, k, c)
            kernels.reparameterize_backward(dtype, bufs[2], bufs[1], e, grad_mu, grad_logvar,
                                            numel, k, c)
        else:
            kernels.reparameterize_philox(dtype, bufs[0], bufs[1], seed, z, numel, k, c)
            kernels.reparameterize_philox_backward(dtype, bufs[2], bufs[1], seed, grad_mu,
                                                   grad_logvar, numel, k, c)
        return z, grad_mu, grad_logvar

    z, grad_mu, grad_logvar = launch()
    assert all(torch.equal(x, y) for x, y in zip((z, grad_mu, grad_logvar), launch()))
    z64, (grad_mu64, grad_logvar64) = sampling_oracle(mu.double(), logvar.double(), eps64,
                                                      grad_z.double().view(k, numel),
                                                      scale == "logsigma")
    assert_close_to_oracle(z.view(k, numel), z64, dtype)
    assert_close_to_oracle(grad_mu, grad_mu64, dtype, scale=k)
    assert_close_to_oracle(grad_logvar, grad_logvar64, dtype, scale=k)


def float32_ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units in the last place (float32 bit patterns on one ordered line)."""
    def ordered(x):
        i = x.contiguous().view(torch.int32).long()
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)
    return (ordered(a) - ordered(b)).abs()


def test_philox_draws_match_the_cpu_backend(kernels):
    """Same Philox bits and Box-Muller as the CPU kernel; the float values differ only by
    the libm: glibc's logf/cosf/sqrtf here (as CUDA's), Sleef's vectorized ones on the CPU."""
    if "cpu" not in vk.available_backends():
        pytest.skip("the C++ CPU backend is not built")
    n, ulps = 1 << 15, []
    for seed in (0x1234_5678_9ABC, 2**62 + 12345):
        emulated_eps = philox_eps(kernels, seed, n, 2)
        zeros = torch.zeros(n)
        cpu_eps = torch.ops.vae_kernels.reparameterize_philox(zeros, zeros, torch.tensor([seed]), 2)
        ulps.append(float32_ulp_distance(emulated_eps, cpu_eps).flatten())
    ulp = torch.cat(ulps)
    histogram = {int(k): int(v) for k, v in zip(*ulp.unique(return_counts=True))}
    differing, worst = int((ulp > 0).sum()), int(ulp.max())
    report("philox", {"draws": ulp.numel(), "differing": differing, "max_ulp": worst,
                      "ulp_histogram": histogram})
    assert worst <= 4, f"draws {worst} ulp apart; histogram {histogram}"
    assert differing <= 0.35 * ulp.numel(), f"{differing} of {ulp.numel()} differ: {histogram}"


# ---------------------------------------------------------------- loss_backward


@dataclass(frozen=True)
class BackwardLayout:
    """The glue's three upstream layouts: "element" (one value per element; rows = 1),
    "row" (one per row) and "scalar" (one value)."""

    name: str
    batch: int
    row: int
    upstream: str
    offset: int = 0
    in_place: bool = False  # out = local_grad (not for float16, whose local gradient is float32)


BACKWARD_LAYOUTS = [
    BackwardLayout("element", 3, 2 * C + 8, "element"),  # one row of 7 chunks, packed
    BackwardLayout("element-misaligned-inplace", 4, 37, "element", offset=1, in_place=True),
    BackwardLayout("row", 3, 2 * C + 8, "row"),
    BackwardLayout("row-odd-inplace", 3, 2 * C + 5, "row", in_place=True),  # scalar path
    BackwardLayout("row-misaligned", 5, 40, "row", offset=1),
    BackwardLayout("scalar-inplace", 5, 3277, "scalar", in_place=True),
    BackwardLayout("scalar-misaligned", 5, 3277, "scalar", offset=1),
    BackwardLayout("empty", 0, 5, "element"),
    BackwardLayout("zero-length-rows", 3, 0, "row"),
]


@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_loss_backward(kernels, dtype, layout):
    """out = local_grad * upstream: one product, rounded once to float32 (exact for the
    operands' widths) then to the dtype, so equal bit for bit to the float64 product
    stored in the dtype."""
    b, r = layout.batch, layout.row
    n = b * r
    if layout.upstream == "element":
        rows, row_len, stride_elem, stride_row, n_up = 1, n, 1, n, n
    elif layout.upstream == "row":
        rows, row_len, stride_elem, stride_row, n_up = b, r, 0, 1, b
    else:
        rows, row_len, stride_elem, stride_row, n_up = 1, n, 0, 0, 1
    local = Draw(n, seed=8).randn().to(local_grad_dtype(dtype))
    upstream = Draw(n_up, seed=9).randn().to(dtype)
    local_buf = buffer(local, local_grad_dtype(dtype), layout.offset)
    upstream_buf = buffer(upstream, dtype, layout.offset)
    in_place = layout.in_place and dtype != torch.float16
    out = local_buf if in_place else buffer(n, dtype, layout.offset)
    kernels.loss_backward(dtype, local_buf, upstream_buf, stride_elem, stride_row, out, rows,
                          row_len)
    if layout.upstream == "element":
        expected = local.double() * upstream.double()
    else:
        expected = (local.double().view(b, r) * upstream.double().view(-1, 1)).flatten()
    assert torch.equal(out, expected.to(dtype))


# ---------------------------------------------------------------- the mixture likelihood

MIXTURE_BLOCK = 128  # kMixturePixelsPerBlock: pixels per block and per partial sum
assert f"kMixturePixelsPerBlock = {MIXTURE_BLOCK};" in emulated.LAUNCHERS_H.read_text()


def mixture_blocks_per_image(pixels: int) -> int:
    return max(1, -(-pixels // MIXTURE_BLOCK))


@dataclass(frozen=True)
class MixtureCall:
    """One call of launch_discretized_logistic_mixture as the glue makes it: params
    (B, P, H, W) in `params_layout` ("contiguous", "channels_last" or "sliced": a view
    with a storage offset and no unit stride), x contiguous or channels_last, the pixel
    NLL for reduction "none", else the block sums finished per image ("per_sample") or in
    total, divided by `divisor`."""

    name: str
    shape: tuple  # (B, C, H, W, M)
    params_layout: str
    reduction: str
    divisor: int = 1
    grads: bool = True
    x_channels_last: bool = False
    num_bits: int = 8
    repeat: bool = False  # run twice: the results must be bitwise equal


MIXTURE_CALLS = [
    MixtureCall("c3m3-none", (2, 3, 5, 7, 3), "contiguous", "none"),  # 35 pixels: 64 threads
    MixtureCall("c1m3-rows-channels-last", (2, 1, 13, 11, 3), "channels_last", "per_sample",
                  divisor=3, repeat=True),  # 143 pixels: 2 blocks per image, the second a tail
    MixtureCall("c3m1-total-sliced", (2, 3, 12, 12, 1), "sliced", "total", divisor=7,
                  x_channels_last=True, num_bits=5, repeat=True),  # 144 pixels, 4 blocks
    MixtureCall("c1m1-total-nograd", (3, 1, 2, 2, 1), "contiguous", "total", grads=False),
    MixtureCall("c3m3-rows-sliced-nograd", (2, 3, 4, 9, 3), "sliced", "per_sample",
                  grads=False, x_channels_last=True),
    MixtureCall("c1m3-none-sliced", (1, 1, 3, 50, 3), "sliced", "none", divisor=2),
    MixtureCall("empty-batch", (0, 3, 2, 2, 2), "contiguous", "total"),
    MixtureCall("empty-images", (2, 1, 0, 3, 2), "contiguous", "per_sample"),
]


def mixture_inputs(shape, num_bits: int, seed: int):
    """float64 params (logits, means near the data, log-scales in about [-5, 0.5], one
    clamped below -7, coupling coefficients) and x on the 2^bits-level grid of [-1, 1]
    with both edge levels present."""
    b, c, h, w, m = shape
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(b, (10 if c == 3 else 3) * m, h, w, generator=g, dtype=torch.float64)
    rows = params[:, m:].view(b, c, (3 if c == 3 else 2) * m, h, w)  # no -1: b or h may be 0
    rows[:, :, :m] *= 0.6  # means
    rows[:, :, m:2 * m] = rows[:, :, m:2 * m] * 1.2 - 2.5  # log-scales
    levels = 2**num_bits - 1
    x = torch.randint(0, levels + 1, (b, c, h, w), generator=g) * (2.0 / levels) - 1.0
    if b * h * w >= 3:
        x.view(b, c, h * w)[0, :, 0] = -1.0  # the open-ended edge bins
        x.view(b, c, h * w)[0, :, 1] = 1.0
        params[0, 2 * m].view(h * w)[2] = -9.0  # a clamped log-scale (channel 0, component 0)
    return params, x.to(torch.float64)


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t (B, P, H, W) with the same values in memory layout `layout` (see MixtureCall),
    read by the kernel in place."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        b, p, h, w = t.shape
        big = torch.full((b, p + 1, h, 2 * w), NAN, dtype=t.dtype)
        view = big[:, 1:, :, ::2]
        view.copy_(t)
        return view
    return t.contiguous()


def run_mixture(kernels, call: MixtureCall, params: torch.Tensor, x: torch.Tensor) -> dict:
    """launch_discretized_logistic_mixture (and the finishing pass) as the glue calls them."""
    b, _, h, w, _ = call.shape
    pixels = h * w
    compute = torch.float64 if params.dtype == torch.float64 else torch.float32
    loss_dtype = torch.promote_types(params.dtype, x.dtype)
    none = call.reduction == "none"
    pixel_nll = buffer(b * pixels, compute) if none else None
    blocks = mixture_blocks_per_image(pixels)
    sums = None if none else buffer(b * blocks, torch.float64)
    grads = workspace = None
    if call.grads:
        grads = buffer(params.numel(), local_grad_dtype(params.dtype))
        if params.dtype == torch.bfloat16:
            workspace = buffer(params.numel(), torch.float32)
    flag = torch.zeros(1, dtype=torch.int32)
    kernels.discretized_logistic_mixture(params, x, num_bits=call.num_bits,
                                         pixel_nll=pixel_nll, grads=grads,
                                         grad_scale=1.0 / call.divisor, sums=sums, flag=flag,
                                         grad_workspace=workspace)
    scale = 1.0 / call.divisor
    if call.reduction == "per_sample":
        loss = buffer(b, loss_dtype)
        kernels.finish_rows(loss_dtype, sums, blocks, None, 0, 0.0, b, scale, out_total=loss)
    elif call.reduction == "total":
        loss = buffer(1, loss_dtype)
        kernels.finish_total(loss_dtype, sums, b * blocks, None, 0, 0.0, scale, out_total=loss)
    else:
        loss = pixel_nll.view(b, h, w)
    return {"loss": loss, "sums": sums, "grads": grads, "flag": int(flag)}


def mixture_oracle(params64: torch.Tensor, x64: torch.Tensor, call: MixtureCall):
    """The float64 loss reduced as `call` (the reduced ones divided by divisor, not the
    per-pixel NLL) and d(loss)/d(params) of each image's own loss divided by divisor: the
    kernel's local gradient (grad_scale is 1/divisor for every reduction)."""
    b, _, h, w, _ = call.shape
    if b * h * w == 0:  # no pixel (the reference, reshaping with -1, would raise here: an
        # exception aborts under the preloaded ASan runtime)
        pixel_nll, grad = torch.zeros(b, h, w, dtype=torch.float64), torch.zeros_like(params64)
    else:
        leaf = params64.detach().clone().requires_grad_()
        pixel_nll = reference.discretized_logistic_mixture_nll_pixelwise(leaf, x64,
                                                                         call.num_bits)
        (grad,) = torch.autograd.grad(pixel_nll.sum(), leaf)
    loss = pixel_nll.detach()
    if call.reduction == "per_sample":
        loss = loss.flatten(1).sum(1)
    elif call.reduction == "total":
        loss = loss.sum().reshape(1)
    if call.reduction != "none":
        loss = loss / call.divisor
    return loss, grad / call.divisor


@pytest.mark.parametrize("call", MIXTURE_CALLS, ids=lambda call: call.name)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixture(kernels, dtype, x_dtype, call):
    params64, x64 = mixture_inputs(call.shape, call.num_bits, seed=MIXTURE_CALLS.index(call))
    params = laid_out(params64.to(dtype), call.params_layout)
    x = x64.to(x_dtype)
    if call.x_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = run_mixture(kernels, call, params, x)
    # the oracle sees the rounded inputs; the kernel computes in float32 unless params
    # are float64 (x too: float64 x is read into float32)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    loss64, grad64 = mixture_oracle(params64.to(dtype).double(), x64.to(x_dtype).to(compute)
                                    .double(), call)

    b, _, h, w, m = call.shape
    if got["sums"] is not None:
        assert not got["sums"].isnan().any(), "a block did not write its partial sum"
        if h * w == 0:
            assert torch.equal(got["sums"], torch.zeros_like(got["sums"]))
    assert got["loss"].dtype == (compute if call.reduction == "none"
                                 else torch.promote_types(dtype, x_dtype))
    # gradients are sums over components of terms up to e^-s ~ 1e3: a few ulp of those
    tol = ({"rtol": 1e-9, "atol": 1e-10} if compute == torch.float64
           else {"rtol": 2e-5, "atol": 2e-5})
    summed = {"none": 1, "per_sample": h * w, "total": b * h * w}[call.reduction]
    torch.testing.assert_close(got["loss"].double().view(loss64.shape), loss64, rtol=tol["rtol"],
                               atol=tol["atol"] * max(1.0, summed / call.divisor))
    if call.grads:
        if dtype == torch.bfloat16:  # rounded once, from float32
            tol = {"rtol": 2**-8, "atol": tol["atol"]}
        grad = got["grads"].view(params.shape)
        torch.testing.assert_close(grad.double(), grad64, **tol)
        if b * h * w >= 3:  # mixture_inputs clamped this log-scale: no gradient
            assert grad[0, 2 * m].flatten()[2] == 0
    assert got["flag"] == 0, "x in [-1, 1] flagged outside"
    if call.repeat:
        again = run_mixture(kernels, call, params, x)
        for name in ("loss", "sums", "grads"):
            if got[name] is not None:
                assert torch.equal(got[name], again[name]), f"{name} differ between two runs"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mixture_16bit_params_match_the_float32_kernel(kernels, dtype):
    """16-bit params are widened to float32 and nothing in between is rounded: the NLL
    equals the float32 kernel's on the same values bit for bit, and the gradient is that
    kernel's gradient rounded once (bfloat16: no first-pass value went through bfloat16)."""
    call = MixtureCall("c3m3", (2, 3, 5, 7, 3), "channels_last", "none", divisor=3)
    params64, x64 = mixture_inputs(call.shape, 8, seed=11)
    params = laid_out(params64.to(dtype), "channels_last")
    x = x64.float()
    narrow = run_mixture(kernels, call, params, x)
    wide = run_mixture(kernels, call, laid_out(params.float(), "contiguous"), x)
    assert torch.equal(narrow["loss"], wide["loss"])
    assert torch.equal(narrow["grads"], wide["grads"].to(local_grad_dtype(dtype)))


def test_mixture_bfloat16_gradient_needs_the_workspace(kernels):
    call = MixtureCall("c1m1", (1, 1, 2, 2, 1), "contiguous", "none")
    params64, x64 = mixture_inputs(call.shape, 8, seed=12)
    params = params64.bfloat16()
    grads = buffer(params.numel(), torch.bfloat16)
    with pytest.raises(emulated.LaunchError, match="cudaError_t 1"):  # cudaErrorInvalidValue
        kernels.discretized_logistic_mixture(params, x64.float(), num_bits=8,
                                             pixel_nll=buffer(4, torch.float32), grads=grads)


@pytest.mark.parametrize("bad", [1.5, -1.0001, None], ids=["above", "below", "nan-only"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float64], ids=str)
def test_mixture_flags_x_outside_minus_one_to_one(kernels, x_dtype, bad):
    """One value outside [-1, 1], in the second block of the second image, sets the flag;
    NaN does not."""
    call = MixtureCall("c3m1", (2, 3, 13, 11, 1), "contiguous", "per_sample", grads=False)
    params64, x64 = mixture_inputs(call.shape, 8, seed=13)
    x64[0, 1, 4, 5] = NAN
    if bad is not None:
        x64[1, 2, 12, 10] = bad  # pixel 142: the tail block
    got = run_mixture(kernels, call, params64.float(), x64.to(x_dtype))
    assert got["flag"] == int(bad is not None)


# ---------------------------------------------------------------- the emulation itself


def test_builtin_indices(kernels):
    grid, block = (3, 2, 2), (4, 3, 2)
    out = torch.full((12 * 24 * 12,), -1, dtype=torch.int32)
    assert kernels.lib.vk_selftest_indices(u3(grid), u3(block), out.data_ptr()) == 0
    rows = out.view(12, 24, 12).tolist()
    for bz in range(2):
        for by in range(2):
            for bx in range(3):
                for tz in range(2):
                    for ty in range(3):
                        for tx in range(4):
                            block_index, thread = bx + 3 * (by + 2 * bz), tx + 4 * (ty + 3 * tz)
                            expected = [tx, ty, tz, bx, by, bz, *block, *grid]
                            assert rows[block_index][thread] == expected


def u3(values):
    return (ctypes.c_uint * 3)(*values)


@pytest.mark.parametrize("blocks,threads", [(5, 256), (2, 1024), (3, 7)])
def test_shared_memory_and_syncthreads(kernels, blocks, threads):
    values = torch.arange(blocks * threads, dtype=torch.int32)
    out = torch.full_like(values, -1)
    assert kernels.lib.vk_selftest_reverse(blocks, threads, values.data_ptr(), out.data_ptr()) == 0
    assert torch.equal(out.view(blocks, threads), values.view(blocks, threads).flip(1))


WARP_PROBES = 52  # rows written by warp_kernel (selftest.cu)


def expected_warp_probes(block: int, n: int) -> list:
    """What warp_kernel's probes must return, by the CUDA programming guide's definitions:
    lane l of a `width`-lane segment starting at lane s reads lane s + (src % width)
    (__shfl_sync); l - delta / l + delta if that stays in the segment, else keeps its own
    value (_up / _down); l ^ mask unless that lies in a later segment (_xor)."""

    def read(t: int, lane) -> int:  # thread t's result when it reads `lane` of its warp
        return 1000 * block + (t - t % 32 + lane if lane is not None else t)

    rows = []
    for w in (1, 2, 4, 8, 16, 32):
        lanes = [(t, t % 32, t % 32 // w * w) for t in range(n)]  # (thread, lane, segment)
        rows.append([read(t, s + (3 & (w - 1))) for t, l, s in lanes])
        for delta in (1, 5):
            rows.append([read(t, l - delta if l - s >= delta else None) for t, l, s in lanes])
        for delta in (1, 6):
            rows.append([read(t, l + delta if l - s + delta < w else None) for t, l, s in lanes])
        for mask in (1, 20):
            rows.append([read(t, l ^ mask if l ^ mask < s + w else None) for t, l, s in lanes])
    rows.append([4 * read(t, t % 32 + 16 if t % 32 < 16 else None) + 1 for t in range(n)])
    rows.append([read(t, t % 32 ^ 31) + 7 for t in range(n)])
    ballots = [sum(1 << lane for lane in range(32) if (t - t % 32 + lane) % 3 == 0)
               for t in range(n)]
    rows.append([b - (1 << 32) if b >= 1 << 31 else b for b in ballots])  # as int32
    rows.append([int(t - t % 32 <= 37 < t - t % 32 + 32) for t in range(n)])  # __any_sync
    rows.append([0] * n)  # __all_sync(t % 32 != 31): lane 31 votes no
    rows.append([sum(t % 3 == 0 for t in range(n))] * n)  # __syncthreads_count
    rows.append([1] * n)  # __syncthreads_or(t == n - 1)
    rows.append([0] * n)  # __syncthreads_and(t % 2 == 0)
    rows.append([1] * n)  # __syncthreads_and(t < n)
    rows.append([WARP_PROBES] * n)
    return rows


def test_warp_shuffles_and_votes(kernels):
    grid, block = (2, 1, 1), (32, 2, 2)  # 128 threads: 4 warps across threadIdx.y and .z
    n = 128
    out = torch.full((2 * WARP_PROBES * n,), -1, dtype=torch.int32)
    assert kernels.lib.vk_selftest_warp(u3(grid), u3(block), out.data_ptr(),
                                        WARP_PROBES) == 0
    got = out.view(2, WARP_PROBES, n).tolist()
    for b in range(2):
        expected = expected_warp_probes(b, n)
        for k in range(WARP_PROBES):
            assert got[b][k] == expected[k], f"block {b}, probe {k}"


def test_launch_configuration_errors(kernels):
    out = torch.full((16,), -1, dtype=torch.int32)
    kernels.lib.vk_selftest_launch_errors(out.data_ptr())
    invalid = 9  # cudaErrorInvalidConfiguration
    assert out.tolist() == [invalid, invalid, 0] * 4 + [invalid, invalid, 0, 0]


@pytest.mark.parametrize("narrow", [torch.float16, torch.bfloat16], ids=str)
def test_half_and_bfloat16_conversions_match_torch(kernels, narrow):
    """Every 16-bit pattern to float, and float to 16 bits (round to nearest even) at every
    tie between neighbouring 16-bit values, one float ulp either side, and random floats."""
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(narrow)
    widened = kernels.convert(every, torch.float32)
    nan = every.isnan()
    assert torch.equal(widened.isnan(), nan)
    assert torch.equal(widened[~nan], every[~nan].float())

    finite = every[every.isfinite()].float().sort().values.unique()
    ties = ((finite[:-1].double() + finite[1:].double()) / 2).float()  # exact in float32
    probes = torch.cat([ties, torch.nextafter(ties, torch.tensor(math.inf)),
                        torch.nextafter(ties, torch.tensor(-math.inf)), finite,
                        torch.tensor([math.inf, -math.inf, NAN, 65520.0, 65519.99, 3.4e38, 1e-45]),
                        torch.randint(-(1 << 31), 1 << 31, (1 << 18,), dtype=torch.int64,
                                      generator=torch.Generator().manual_seed(0))
                        .to(torch.int32).view(torch.float32)])
    narrowed = kernels.convert(probes, narrow)
    nan = probes.isnan()
    assert torch.equal(narrowed.isnan(), nan)
    assert torch.equal(narrowed[~nan].view(torch.int16), probes[~nan].to(narrow).view(torch.int16))


@pytest.mark.skipif(not PLANTED_LIB, reason="VK_EMULATION_PLANTED_LIB is not set")
def test_a_missing_syncthreads_is_caught(kernels):
    """block_sum without its first __syncthreads: warp 0 may add the warp sums before the
    other warps wrote them. The emulation must turn that race into wrong row sums.

    The planted library runs with scheduling jitter (random yields before barriers), so
    the warps of each block finish their shuffles in a random order and warp 0 reads
    early in about 7 blocks of 8, independently (the natural schedule of a loaded 2-core
    machine gave 0 to 8 wrong rows of 8 per launch). 5 launches: 40 chances."""
    os.environ["CUDA_EMULATION_JITTER"] = "1"  # read once, when the library loads
    try:
        planted = emulated.Kernels(PLANTED_LIB)
    finally:
        del os.environ["CUDA_EMULATION_JITTER"]
    case, layout = LOSS_BY_KIND["kKLStdNormal"], Layout("rows", 8, C, "per_sample", grads="none")
    inputs = case.inputs(Draw(8 * C, seed=10))  # 8 rows, one block of 8 warps each
    expected, _ = loss_oracle(case, [x.float().double() for x in inputs], layout)
    tol = TOLERANCES[torch.float32]

    def wrong_rows(k) -> int:
        loss = run_loss(k, case, torch.float32, layout, inputs)["loss"].double()
        ok = (loss - expected).abs() <= tol["atol"] * C + tol["rtol"] * expected.abs()
        return int((~ok).sum())

    assert wrong_rows(kernels) == 0  # the real block_sum
    tries = [wrong_rows(planted) for _ in range(5)]
    report("planted_missing_syncthreads", {"launches": len(tries), "blocks_per_launch": 8,
                                           "wrong_rows_per_launch": tries})
    assert sum(tries) > 0, "the race went unnoticed in 5 launches of 8 blocks"
