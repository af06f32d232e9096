"""The Triton kernel of discretized_logistic_mixture_nll (PixelCNN++'s likelihood):
the raw op (namespace vae_kernels_triton) against the float64 oracle
(vae_kernels.reference) for every reduction, with its gradient against autograd of
the oracle; layouts read without a copy, mixed dtypes, edge and improbable bins, the
log-scale clamp, determinism, argument errors, opcheck, torch.compile and the public
API with backend="triton".

On a machine without a GPU these run through the Triton interpreter; sizes are tiny."""

from __future__ import annotations

import math

import pytest
import torch

import vae_kernels as vk
from vae_kernels import reference

from triton_testing import DEVICE, requires_triton, upstream_weights

pytestmark = requires_triton

# Against the float64 oracle. float64: the oracle's F.softplus returns x itself beyond
# x = 20 (an error of e^-x, up to 2e-9), which the kernel does not; float32: a few ulp
# of terms up to e^7 ~ 1e3 in the gradient, summed over components.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
}
REDUCTION_NAMES = {0: "none", 1: "per_sample", 2: "sum"}


def _op():
    import vae_kernels.triton  # noqa: F401  registers the ops

    return torch.ops.vae_kernels_triton.discretized_logistic_mixture_nll


def grid_data(shape, num_bits=8, seed=0) -> torch.Tensor:
    """float64 x on the 2^bits-level grid of [-1, 1], edge levels included."""
    g = torch.Generator().manual_seed(seed)
    levels = 2**num_bits - 1
    index = torch.randint(0, levels + 1, shape, generator=g, dtype=torch.int64)
    return (index.double() * (2.0 / levels) - 1.0).to(DEVICE)


def mixture_params(b, c, h, w, m, seed=0) -> torch.Tensor:
    """float64 params: logits, means near the data, log-scales in about [-5, 0.5],
    coefficients in about [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    per_component = 10 if c == 3 else 3
    p = torch.randn(b, per_component * m, h, w, generator=g, dtype=torch.float64)
    rows = p[:, m:].view(b, c, -1, h, w)
    rows[:, :, :m] *= 0.6  # means
    rows[:, :, m : 2 * m] = rows[:, :, m : 2 * m] * 1.2 - 2.5  # log-scales
    return p.to(DEVICE)


def oracle(params64, x64, num_bits, reduction, divisor):
    """The oracle's loss for the op's (reduction, divisor), and its local gradient:
    d(sum of the loss) / d params, divided by divisor (as the op defines it)."""
    leaf = params64.detach().clone().requires_grad_()
    pixel_nll = reference.discretized_logistic_mixture_nll_pixelwise(leaf, x64, num_bits)
    if reduction == 0:
        loss = pixel_nll
    else:
        loss = reference.reduce_pixel_nll(pixel_nll, x64.shape[1], REDUCTION_NAMES[reduction])
        loss = loss / divisor
    (grad,) = torch.autograd.grad(pixel_nll.sum(), leaf)
    return loss.detach(), grad / divisor


def assert_close(actual, expected64, dtype, sum_of=1):
    """``sum_of``: the number of pixels a value sums (widens the absolute tolerance)."""
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double(), expected64, rtol=tol["rtol"], atol=tol["atol"] * sum_of
    )


CASES = [  # (B, C, H, W, M)
    (2, 3, 5, 7, 3),  # 35 pixels: one partly masked block per image
    (1, 3, 1, 1, 1),
    (2, 1, 3, 5, 4),
    (1, 1, 13, 11, 2),  # 143 pixels: two blocks of 128, the second partly masked
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_loss_and_gradient_match_the_oracle(case, dtype):
    b, c, h, w, m = case
    params64 = mixture_params(b, c, h, w, m, seed=sum(case))
    x64 = grid_data((b, c, h, w), seed=sum(case))
    divisor = 3
    for reduction in (0, 1, 2):
        expected, expected_grad = oracle(params64, x64, 8, reduction, divisor)
        loss, grad = _op()(params64.to(dtype), x64.to(dtype), 8, reduction, divisor, [True])
        assert loss.dtype == dtype and loss.shape == expected.shape
        assert grad.dtype == dtype and grad.shape == params64.shape and grad.is_contiguous()
        pixels_summed = 1 if reduction == 0 else h * w * (b if reduction == 2 else 1)
        assert_close(loss, expected, dtype, pixels_summed)
        assert_close(grad, expected_grad, dtype)
    # Without a gradient: the same loss, and an empty gradient output.
    loss_only, no_grad = _op()(params64.to(dtype), x64.to(dtype), 8, 2, divisor, [False])
    assert torch.equal(loss_only, loss)
    assert no_grad.shape == (0,) and no_grad.dtype == dtype


def test_float64_x_with_float32_params_computes_in_float32():
    """Each input is read in its own dtype; the loss has the promoted dtype (float64),
    the gradient params' (float32); the math runs in float32 on the rounded params."""
    b, c, h, w, m = 2, 3, 4, 5, 2
    params32 = mixture_params(b, c, h, w, m, seed=19).float()
    x64 = grid_data((b, c, h, w), num_bits=5, seed=19)
    for reduction in (0, 1):
        loss, grad = _op()(params32, x64, 5, reduction, 1, [True])
        assert loss.dtype == torch.float64 and grad.dtype == torch.float32
        expected, expected_grad = oracle(params32.double(), x64, 5, reduction, 1)
        assert_close(loss, expected, torch.float32, 1 if reduction == 0 else h * w)
        assert_close(grad, expected_grad, torch.float32)
        # x in float32 holds the same grid values: the same bits
        same_loss, same_grad = _op()(params32, x64.float(), 5, reduction, 1, [True])
        assert torch.equal(loss, same_loss.double()) and torch.equal(grad, same_grad)


def _strided(params: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return params.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # every other channel of a wider output
        wide = torch.zeros(
            params.shape[0], 2 * params.shape[1], *params.shape[2:],
            dtype=params.dtype, device=params.device,
        )  # fmt: skip
        wide[:, ::2] = params
        return wide[:, ::2]
    # (B, P, W, H) transposed back
    return params.transpose(2, 3).contiguous().transpose(2, 3)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_strided_inputs_give_the_bits_of_contiguous_ones(layout):
    b, c, h, w, m = 2, 3, 3, 5, 2
    params = mixture_params(b, c, h, w, m, seed=13).float()
    x = grid_data((b, c, h, w), seed=13).float()
    strided = _strided(params, layout)
    assert not strided.is_contiguous() and torch.equal(strided, params)
    x_channels_last = x.contiguous(memory_format=torch.channels_last)
    assert not x_channels_last.is_contiguous()
    expected = _op()(params, x, 8, 0, 1, [True])
    for p, xx in ((strided, x), (strided, x_channels_last), (params, x_channels_last)):
        loss, grad = _op()(p, xx, 8, 0, 1, [True])
        assert torch.equal(loss, expected[0]) and torch.equal(grad, expected[1])
        assert grad.is_contiguous()


def test_two_runs_are_bitwise_equal():
    b, c, h, w, m = 2, 1, 9, 15, 2  # 135 pixels: two blocks per image
    params = mixture_params(b, c, h, w, m, seed=17).float()
    x = grid_data((b, c, h, w), seed=17).float()
    for reduction in (1, 2):
        first = _op()(params, x, 8, reduction, 1, [True])
        second = _op()(params, x, 8, reduction, 1, [True])
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_edge_bins_and_clamped_log_scales(dtype):
    """x = -1 and x = 1 take the open-ended edge bins; a raw log-scale below -7 is
    clamped, and its gradient is exactly zero (one exactly at -7 keeps its gradient,
    as torch.clamp's)."""
    b, c, h, w, m = 1, 3, 2, 4, 2
    params64 = mixture_params(b, c, h, w, m, seed=7)
    x64 = grid_data((b, c, h, w), seed=7)
    x64[0, :, 0, :2] = -1.0
    x64[0, :, 1, :2] = 1.0
    rows = params64[:, m:].view(b, c, 3 * m, h, w)
    rows[:, 1, m] = -9.0  # clamped: the log-scale of channel 1, component 0
    # At an interior pixel, component 1 with the dominant weight, its means (uncoupled)
    # a third of a bin from x: the log-scale of channel 1 is clamped (below -7), that
    # of channel 2 at the clamp, where the gradient passes.
    x64[0, :, 0, 3] = torch.tensor([0.2, -0.4, 0.6], dtype=torch.float64)
    rows[0, :, 2 * m + 1, 0, 3] = 0.0  # tanh(0): no coupling
    rows[0, 1:, 1, 0, 3] = x64[0, 1:, 0, 3] + 1 / 3 / 255  # means of channels 1 and 2
    rows[0, 1, m + 1, 0, 3] = -8.0
    rows[0, 2, m + 1, 0, 3] = -7.0
    params64[0, 1, 0, 3] = 5.0  # logit of component 1
    expected, expected_grad = oracle(params64, x64, 8, 0, 1)
    loss, grad = _op()(params64.to(dtype), x64.to(dtype), 8, 0, 1, [True])
    assert_close(loss, expected, dtype)
    assert_close(grad, expected_grad, dtype)
    grad_rows = grad[:, m:].view(b, c, 3 * m, h, w)
    assert torch.all(grad_rows[:, 1, m] == 0)
    assert grad_rows[0, 1, m + 1, 0, 3] == 0
    assert grad_rows[0, 2, m + 1, 0, 3].abs() > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_improbable_bins_take_the_mid_point_density(dtype):
    """Means 4 to 40 scales away from interior x at a small scale: the bin probabilities
    run from 1e-2 to far below 1e-5, so both interior branches are taken. In float32
    the kernel is at least as accurate as PixelCNN++'s eager formula, which cancels
    there (sigmoid(plus) - sigmoid(minus) with both near 1)."""
    b, c, h, w, m = 1, 1, 6, 8, 2
    params64 = mixture_params(b, c, h, w, m, seed=5)
    x64 = grid_data((b, c, h, w), seed=5).clamp(-0.99, 0.99)  # interior bins
    rows = params64[:, m:].view(b, 1, 2 * m, h, w)
    rows[:, 0, m : 2 * m] = -3.0  # log-scales
    offsets = torch.linspace(4, 40, h * w, dtype=torch.float64, device=DEVICE).view(1, h, w)
    rows[:, 0, :m] = (x64[:, 0] - offsets * math.exp(-3.0)).unsqueeze(1)  # means below x
    bin_log_probs = reference.logistic_bin_log_prob(
        x64[:, 0].unsqueeze(1), rows[:, 0, :m], rows[:, 0, m:], 8
    )
    improbable = bin_log_probs < math.log(1e-5)
    assert improbable.any() and not improbable.all()

    expected, expected_grad = oracle(params64, x64, 8, 0, 1)
    loss, grad = _op()(params64.to(dtype), x64.to(dtype), 8, 0, 1, [True])
    assert_close(loss, expected, dtype)
    assert_close(grad, expected_grad, dtype)
    if dtype == torch.float32:
        eager = reference.pixelcnn_discretized_mix_logistic_nll(params64.float(), x64.float())
        ours_error = (loss.double() - expected).abs().max().item()
        eager_error = (eager.double() - expected).abs().max().item()
        assert ours_error <= eager_error, (ours_error, eager_error)


def test_x_outside_the_unit_interval_raises():
    b, c, h, w, m = 2, 1, 12, 12, 1  # 144 pixels: two programs per image
    params = mixture_params(b, c, h, w, m, seed=3)
    x = grid_data((b, c, h, w), seed=3)
    for value in (1.0 + 1e-6, -1.5, float("inf")):
        bad = x.clone()
        bad[1, 0, 11, 11] = value  # the last program's last pixel
        with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
            _op()(params, bad, 8, 2, 1, [False])
    with_nan = x.clone()
    with_nan[0, 0, 0, 0] = float("nan")  # NaN passes (as on CPU), and poisons its pixel
    loss, _ = _op()(params, with_nan, 8, 0, 1, [False])
    assert loss[0, 0, 0].isnan() and not loss[0].flatten()[1:].isnan().any()


def test_argument_errors_name_the_argument():
    params = mixture_params(2, 3, 4, 4, 2)
    x = grid_data((2, 3, 4, 4))
    op = _op()
    cases = [
        ((params[:, :19], x, 8, 0, 1, [True]), ValueError,
         r"params must have a multiple of 10 channels \(10 per mixture component for "
         r"C = 3\), got 19"),
        ((params[:, :0], x, 8, 0, 1, [True]), ValueError, "params must have a multiple of 10"),
        ((params[:, :10], x[:, :1], 8, 0, 1, [True]), ValueError,
         r"params must have a multiple of 3 channels .* got 10"),
        ((params, x[:, :2], 8, 0, 1, [True]), ValueError, r"C = 1 or 3, got \(2, 2, 4, 4\)"),
        ((params[:, :, :3], x, 8, 0, 1, [True]), ValueError,
         r"params must have shape \(2, P, 4, 4\) to match x \(2, 3, 4, 4\), got \(2, 20, 3, 4\)"),
        ((params.long(), x, 8, 0, 1, [True]), TypeError,
         "params must be a floating-point tensor, got torch.int64"),
        ((params, x.long(), 8, 0, 1, [True]), TypeError, "x must be a floating-point tensor"),
        ((params, x, 0, 0, 1, [True]), ValueError, r"num_bits must be in \[1, 16\], got 0"),
        ((params, x, 17, 0, 1, [True]), ValueError, r"num_bits must be in \[1, 16\], got 17"),
        ((params, x, 8, 3, 1, [True]), ValueError, "reduction must be one of .* got 3"),
        ((params, x, 8, 0, 1, [True, True]), ValueError, "grad_mask must have 1 entries, got 2"),
    ]  # fmt: skip
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            op(*args)


def test_empty_batch_and_image():
    params, x = mixture_params(2, 1, 3, 3, 2), grid_data((2, 1, 3, 3))
    for p, xx in ((params[:0], x[:0]), (params[:, :, :0], x[:, :, :0])):
        loss, grad = _op()(p, xx, 8, 0, 1, [True])
        assert loss.shape == (xx.shape[0], xx.shape[2], xx.shape[3]) and grad.shape == p.shape
        per_sample, _ = _op()(p, xx, 8, 1, 1, [True])
        assert torch.equal(per_sample, torch.zeros(xx.shape[0], dtype=torch.float64))
        total, _ = _op()(p, xx, 8, 2, 1, [False])
        assert total.item() == 0


@pytest.mark.parametrize("reduction", ["none", "per_sample", "mean"])
def test_public_api_gradient_with_an_upstream_gradient(reduction):
    """vk.discretized_logistic_mixture_nll(backend="triton") through the registered
    autograd, with a non-uniform upstream gradient."""
    b, c, h, w, m = 2, 3, 3, 4, 2
    params64 = mixture_params(b, c, h, w, m, seed=23)
    x = grid_data((b, c, h, w), seed=23).float()
    params = params64.float().requires_grad_()
    loss = vk.discretized_logistic_mixture_nll(params, x, reduction=reduction, backend="triton")
    leaf = params64.clone().requires_grad_()
    expected = reference.discretized_logistic_mixture_nll(leaf, x.double(), 8, reduction)
    assert loss.dtype == torch.float32 and loss.shape == expected.shape
    weights = upstream_weights(expected.shape, torch.float64)
    (grad,) = torch.autograd.grad((loss * weights.float()).sum(), params)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), leaf)
    assert_close(loss, expected.detach(), torch.float32, 1 if reduction == "none" else h * w * b)
    assert_close(grad, expected_grad, torch.float32)


@pytest.mark.parametrize(
    "reduction, divisor, requires_grad", [(0, 2, True), (1, 1, False), (2, 3, True)]
)
def test_opcheck(reduction, divisor, requires_grad):
    params = mixture_params(2, 1, 2, 3, 2, seed=31).requires_grad_(requires_grad)
    x = grid_data((2, 1, 2, 3), seed=31)
    torch.library.opcheck(_op(), (params, x, 8, reduction, divisor, [True]))


def test_schema_matches_the_cpu_op():
    from vae_kernels import ops

    if ops.LIBRARY_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    if not hasattr(torch.ops.vae_kernels, "discretized_logistic_mixture_nll"):
        pytest.skip("the built C++ extension predates discretized_logistic_mixture_nll")
    ours = _op().default._schema
    theirs = torch.ops.vae_kernels.discretized_logistic_mixture_nll.default._schema
    assert [a.name for a in ours.arguments] == [a.name for a in theirs.arguments]
    assert len(ours.returns) == len(theirs.returns)


def test_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) traces the public API with backend="triton" with no
    graph break (on CPU the interpreted op stays an opaque call)."""
    import torch._dynamo

    torch._dynamo.reset()
    params = mixture_params(2, 1, 3, 4, 2, seed=29).float().requires_grad_()
    x = grid_data((2, 1, 3, 4), seed=29).float()

    def f(p, x):
        return vk.discretized_logistic_mixture_nll(p, x, reduction="mean", backend="triton")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(params, x)
    (grad,) = torch.autograd.grad(loss, params)
    expected = f(params, x)
    (expected_grad,) = torch.autograd.grad(expected, params)
    assert torch.equal(loss, expected) and torch.equal(grad, expected_grad)
