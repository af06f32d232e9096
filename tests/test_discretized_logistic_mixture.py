"""discretized_logistic_mixture_nll (PixelCNN++'s likelihood) on the C++ CPU backend and
the torch reference: value and gradient against the float64 oracle and PixelCNN++'s own
eager formula, accuracy where that formula cancels, layouts, dtypes, determinism,
errors, torch.compile and opcheck; and the sampler. The Triton kernel has its own tests
(tests/triton/test_triton_mixture.py), the CUDA kernel runs in the CUDA emulation."""

from __future__ import annotations

import math

import pytest
import torch

import vae_kernels as vk
from vae_kernels import reference

from conftest import REDUCTIONS, NATIVE_BACKENDS, TOLERANCES, requires_cpu_backend, upstream_weights

pytestmark = requires_cpu_backend

BACKENDS = NATIVE_BACKENDS + ["torch"]


def grid_data(shape, num_bits=8, seed=0, dtype=torch.float64) -> torch.Tensor:
    """x on the 2^bits-level grid of [-1, 1], edge levels included."""
    g = torch.Generator().manual_seed(seed)
    levels = 2**num_bits - 1
    return (torch.randint(0, levels + 1, shape, generator=g) * (2.0 / levels) - 1.0).to(dtype)


def mixture_params(b, c, h, w, m, seed=0, spread=1.0) -> torch.Tensor:
    """float64 params: logits, means near the data, log-scales in about [-5, 0.5],
    coefficients in about [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    per = 10 if c == 3 else 3
    p = torch.randn(b, per * m, h, w, generator=g, dtype=torch.float64)
    rows = p[:, m:].view(b, c, -1, h, w)
    rows[:, :, :m] *= 0.6 * spread  # means
    rows[:, :, m : 2 * m] = rows[:, :, m : 2 * m] * 1.2 - 2.5  # log-scales
    return p


def oracle(params64, x64, num_bits=8, reduction="none"):
    params64 = params64.detach().clone().requires_grad_()
    loss = reference.discretized_logistic_mixture_nll(params64, x64, num_bits, reduction)
    return loss, params64


CASES = [  # (B, C, H, W, M)
    (2, 3, 5, 7, 4),  # 35 pixels: SIMD tails
    (1, 3, 1, 1, 1),
    (3, 1, 4, 9, 3),
    (2, 1, 17, 19, 1),  # 323 pixels: two 256-pixel chunks
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_match_the_oracle(backend, case, reduction, dtype):
    b, c, h, w, m = case
    params64 = mixture_params(b, c, h, w, m)
    x64 = grid_data((b, c, h, w))
    expected, leaf64 = oracle(params64, x64, reduction=reduction)
    weights = upstream_weights(expected)
    (expected * weights).sum().backward()

    params = params64.to(dtype).requires_grad_()
    loss = vk.discretized_logistic_mixture_nll(
        params, x64.to(dtype), reduction=reduction, backend=backend
    )
    assert loss.dtype == dtype and loss.shape == expected.shape
    (loss * weights.to(dtype)).sum().backward()
    tol = TOLERANCES[dtype] if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    pixels = b * h * w
    torch.testing.assert_close(
        loss.double(), expected.detach(), rtol=tol["rtol"], atol=tol["atol"] * pixels
    )
    torch.testing.assert_close(params.grad.double(), leaf64.grad, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_pixelcnn_eager_formula(backend):
    """PixelCNN++/VDVAE's own formula (float64) agrees where it does not cancel."""
    params64 = mixture_params(4, 3, 6, 6, 10, seed=3)
    x64 = grid_data((4, 3, 6, 6), seed=3)
    ours = vk.discretized_logistic_mixture_nll(params64, x64, reduction="none", backend=backend)
    theirs = reference.pixelcnn_discretized_mix_logistic_nll(params64, x64)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_float32_at_least_as_accurate_as_eager_float32(backend):
    """Bins far in a logistic's tail at a small scale: sigmoid(plus) - sigmoid(minus)
    cancels in float32 (both near 1); the stable form does not."""
    b, c, h, w, m = 1, 1, 16, 16, 2
    params64 = mixture_params(b, c, h, w, m, seed=5)
    rows = params64[:, m:].view(b, 1, 2 * m, h, w)
    x64 = grid_data((b, c, h, w), seed=5)
    # means 4-12 scales below x: bin probabilities 1e-2 .. 1e-5, sigmoids near 1
    rows[:, 0, m : 2 * m] = -3.0
    offsets = torch.linspace(4, 12, h * w, dtype=torch.float64).view(1, h, w) * math.exp(-3.0)
    rows[:, 0, :m] = (x64[:, 0] - offsets).unsqueeze(1)
    x64 = x64.clamp(-0.99, 0.99)  # interior bins
    expected = reference.discretized_logistic_mixture_nll_pixelwise(params64, x64)
    ours = vk.discretized_logistic_mixture_nll(
        params64.float(), x64.float(), reduction="none", backend=backend
    )
    eager = reference.pixelcnn_discretized_mix_logistic_nll(params64.float(), x64.float())
    ours_error = (ours.double() - expected).abs().max().item()
    eager_error = (eager.double() - expected).abs().max().item()
    assert ours_error <= eager_error, (ours_error, eager_error)
    assert ours_error < 1e-4, ours_error


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_bins_and_clamped_log_scales(backend):
    """x = -1 and x = 1 take the open-ended edge bins; a raw log-scale below -7 is
    clamped, and its gradient is zero."""
    b, c, h, w, m = 1, 3, 2, 4, 2
    params64 = mixture_params(b, c, h, w, m, seed=7)
    x64 = grid_data((b, c, h, w), seed=7)
    x64[0, :, 0, :2] = -1.0
    x64[0, :, 1, :2] = 1.0
    rows = params64[:, m:].view(b, c, 3 * m, h, w)
    rows[:, 1, m] = -9.0  # clamped: log-scale of channel 1, component 0
    expected, leaf64 = oracle(params64, x64)
    expected.sum().backward()
    params = params64.clone().requires_grad_()
    loss = vk.discretized_logistic_mixture_nll(params, x64, reduction="none", backend=backend)
    loss.sum().backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(params.grad, leaf64.grad, rtol=1e-10, atol=1e-12)
    clamped = params.grad[:, m : 10 * m].view(b, c, 3 * m, h, w)[:, 1, m]
    assert torch.all(clamped == 0)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_gradcheck(backend):
    params = mixture_params(1, 3, 2, 3, 2, seed=11).requires_grad_()
    x = grid_data((1, 3, 2, 3), seed=11)
    f = lambda p: vk.discretized_logistic_mixture_nll(p, x, reduction="per_sample", backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (params,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_strided_params_read_without_copy_give_the_same_bits(backend, layout):
    b, c, h, w, m = 2, 3, 5, 6, 3
    params64 = mixture_params(b, c, h, w, m, seed=13).float()
    x = grid_data((b, c, h, w), seed=13, dtype=torch.float32)
    if layout == "channels_last":
        strided = params64.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other channel of a wider output
        wide = torch.zeros(b, 2 * params64.shape[1], h, w)
        wide[:, ::2] = params64
        strided = wide[:, ::2]
    else:  # (B, P, W, H) transposed
        strided = params64.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    dense = params64.clone().requires_grad_()
    strided = strided.requires_grad_() if strided.is_leaf else strided.detach().requires_grad_()
    for reduction in ("none", "sum"):
        a = vk.discretized_logistic_mixture_nll(dense, x, reduction=reduction, backend=backend)
        s = vk.discretized_logistic_mixture_nll(strided, x, reduction=reduction, backend=backend)
        assert torch.equal(a, s)
    ga, = torch.autograd.grad(a, dense)
    gs, = torch.autograd.grad(s, strided)
    assert torch.equal(ga, gs)
    # x strided too (channels_last)
    xs = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(
        vk.discretized_logistic_mixture_nll(dense, xs, reduction="sum", backend=backend), a
    )


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_bitwise_deterministic_across_runs_and_thread_counts(backend):
    params = mixture_params(3, 3, 20, 20, 5, seed=17).float().requires_grad_()
    x = grid_data((3, 3, 20, 20), seed=17, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            loss = vk.discretized_logistic_mixture_nll(params, x, reduction="sum", backend=backend)
            grad, = torch.autograd.grad(loss, params)
            results.append((loss, grad))
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize(
    "params_dtype, x_dtype, loss_dtype",
    [
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16, torch.float16),
        (torch.float32, torch.float64, torch.float64),
        (torch.float32, torch.bfloat16, torch.float32),
    ],
)
def test_mixed_precision_dtypes(backend, params_dtype, x_dtype, loss_dtype):
    """The loss has the promoted dtype, params' gradient params' dtype; values match the
    float64 oracle on the rounded inputs (computed in float32)."""
    b, c, h, w, m = 2, 3, 4, 5, 3
    params64 = mixture_params(b, c, h, w, m, seed=19).to(params_dtype).double()
    x64 = grid_data((b, c, h, w), num_bits=5, seed=19).to(x_dtype).double()  # as rounded
    params = params64.to(params_dtype).requires_grad_()
    loss = vk.discretized_logistic_mixture_nll(
        params, x64.to(x_dtype), num_bits=5, reduction="none", backend=backend
    )
    assert loss.dtype == loss_dtype
    loss.sum().backward()
    assert params.grad.dtype == params_dtype
    expected, leaf64 = oracle(params64, x64, num_bits=5)
    expected.sum().backward()
    tol = TOLERANCES[loss_dtype] if loss_dtype != torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=tol["rtol"], atol=tol["atol"] * 10)
    gtol = TOLERANCES[params_dtype]
    torch.testing.assert_close(params.grad.double(), leaf64.grad, rtol=gtol["rtol"], atol=gtol["atol"] * 10)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_autocast_returns_float32(backend):
    params = mixture_params(2, 1, 6, 6, 2, seed=23).bfloat16().requires_grad_()
    x = grid_data((2, 1, 6, 6), seed=23, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vk.discretized_logistic_mixture_nll(params, x, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert params.grad.dtype == torch.bfloat16
    expected = reference.discretized_logistic_mixture_nll(params.double(), x.double(), 8, "batchmean")
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    params = mixture_params(2, 3, 4, 4, 2, seed=29).float().requires_grad_()
    x = grid_data((2, 3, 4, 4), seed=29, dtype=torch.float32)
    f = lambda p, x: vk.discretized_logistic_mixture_nll(p, x, reduction="mean", backend=backend)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True)
    loss_c = compiled(params, x)
    grad_c, = torch.autograd.grad(loss_c, params)
    loss_e = f(params, x)
    grad_e, = torch.autograd.grad(loss_e, params)
    assert torch.equal(loss_c, loss_e)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction):
    params = mixture_params(2, 3, 3, 4, 2, seed=31).float()
    x = grid_data((2, 3, 3, 4), seed=31, dtype=torch.float32)
    op = torch.ops.vae_kernels.discretized_logistic_mixture_nll
    torch.library.opcheck(op, (params, x, 8, reduction, 2, [True]))
    torch.library.opcheck(op, (params.requires_grad_(), x, 8, reduction, 1, [True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_argument_errors_name_the_argument(backend):
    params = mixture_params(2, 3, 4, 4, 2)
    x = grid_data((2, 3, 4, 4))
    nll = lambda p, x, **kw: vk.discretized_logistic_mixture_nll(p, x, backend=backend, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        nll(params, x * 1.01)
    with pytest.raises(ValueError, match="P = 10M channels"):
        nll(params[:, :19], x)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        nll(params, x[:, :2])
    with pytest.raises(ValueError, match=r"params must have shape \(2, P, 4, 4\)"):
        nll(params[:, :, :3], x)
    with pytest.raises(TypeError, match="params must be a floating-point tensor"):
        nll(params.long(), x)
    with pytest.raises(ValueError, match="x requires grad"):
        nll(params, x.clone().requires_grad_())
    with pytest.raises(ValueError, match="num_bits must be in"):
        nll(params, x, num_bits=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        nll(params, x, reduction="max")


def test_module_matches_functional():
    params = mixture_params(2, 1, 5, 5, 3, seed=37)
    x = grid_data((2, 1, 5, 5), seed=37)
    module = vk.DiscretizedLogisticMixtureNLLLoss(reduction="mean")
    assert torch.equal(module(params, x), vk.discretized_logistic_mixture_nll(params, x, reduction="mean"))


# ------------------------------------------------------------------ sampling


def test_sample_is_reproducible_on_the_grid_and_in_range():
    params = mixture_params(2, 3, 6, 7, 10, seed=41)
    draw = lambda seed: vk.sample_discretized_logistic_mixture(  # noqa: E731
        params, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (2, 3, 6, 7)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    levels = (a + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)


def test_sample_frequencies_match_the_likelihood():
    """C = 1, M = 2: the frequency of each of the 2^3 levels over many pixels drawn
    from one mixture matches exp(-NLL) of that level."""
    num_bits, m, n = 3, 2, 20000
    one = torch.tensor([0.3, -0.4, -0.5, 0.4, -1.2, -1.6], dtype=torch.float64)  # logits, means, log-scales
    params = one.view(1, 3 * m, 1, 1).expand(1, 3 * m, 1, n).contiguous()
    samples = vk.sample_discretized_logistic_mixture(
        params, num_bits=num_bits, generator=torch.Generator().manual_seed(0)
    )
    levels = 2**num_bits - 1
    index = ((samples + 1) * (levels / 2)).round().long().view(-1)
    counts = torch.bincount(index, minlength=levels + 1).double()
    assert counts.numel() == levels + 1
    x = (torch.arange(levels + 1, dtype=torch.float64) * (2 / levels) - 1).view(1, 1, 1, -1)
    probs = torch.exp(-vk.discretized_logistic_mixture_nll(
        params[..., : levels + 1], x, num_bits=num_bits, reduction="none"
    )).view(-1)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9)
    expected = probs * n
    chi2 = (((counts - expected) ** 2) / expected.clamp(min=1)).sum().item()
    assert chi2 < 30, (chi2, counts.tolist(), expected.tolist())  # 7 dof: p ~ 1e-4


def test_sample_couples_rgb_through_the_binned_channels():
    """With the smallest scale the draw is the mean's bin: x1 = bin(m1 + tanh(a0) x0)."""
    m = 1
    params = torch.zeros(1, 10, 1, 1, dtype=torch.float64)
    rows = params[:, m:].view(1, 3, 3, 1, 1)
    rows[:, :, 0] = torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)  # means
    rows[:, :, 1] = -20.0  # log-scales (clamped to -7)
    rows[:, :, 2] = torch.tensor([0.5, -0.3, 0.8]).view(1, 3, 1, 1)  # coefficients
    x = vk.sample_discretized_logistic_mixture(params, generator=torch.Generator().manual_seed(0))
    to_bin = lambda v: round((v + 1) * 127.5) / 127.5 - 1  # noqa: E731
    x0 = to_bin(0.2)
    x1 = to_bin(-0.1 + math.tanh(0.5) * x0)
    x2 = to_bin(0.05 + math.tanh(-0.3) * x0 + math.tanh(0.8) * x1)
    torch.testing.assert_close(x.view(3), torch.tensor([x0, x1, x2], dtype=torch.float64))


def test_sample_channel_inference():
    with pytest.raises(ValueError, match="pass channels=3 or channels=1"):
        vk.sample_discretized_logistic_mixture(torch.zeros(1, 30, 2, 2))
    assert vk.sample_discretized_logistic_mixture(torch.zeros(1, 30, 2, 2), channels=1).shape == (1, 1, 2, 2)
    assert vk.sample_discretized_logistic_mixture(torch.zeros(1, 20, 2, 2)).shape == (1, 3, 2, 2)
