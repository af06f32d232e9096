"""The C++ CUDA kernels (csrc/cuda) on CUDA tensors: the checks of the CPU suites
(test_losses, test_sampling, test_elbo, test_ops) against the float64 oracle in every
dtype and reduction, gradcheck in float64 on the GPU, opcheck, torch.compile, bitwise
determinism, the [0, 1] errors, the current stream (CUDA graph capture), no host
synchronization where none is documented, and unaligned (scalar-path) inputs.

The kernels are called through ``ops.OpsBackend("vae_kernels")``, the object that
``backend="cuda"`` resolves to on CUDA tensors, so they are tested whether or not
vae_kernels.backends selects them yet; test_public_api_backend_cuda checks that it does.

Skipped without a CUDA device, or when the library was built without its CUDA part
(a CPU-only torch, or no nvcc at build time).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vae_kernels as vk
from vae_kernels import ops, reference
from vae_kernels.schema import LossKind as K

from conftest import ALL_DTYPES, REDUCTIONS, assert_close_to_oracle, upstream_weights
from test_elbo import LIKELIHOODS
from test_elbo import make_inputs as make_elbo_inputs
from test_hardening_numerics import kl_near_the_prior
from test_losses import CASE_IDS, CASES
from test_losses import make_case as make_loss_case


def _unavailable_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    if ops.LIBRARY_ERROR is not None:
        return f"the C++ extension is not loaded: {ops.LIBRARY_ERROR}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("vae_kernels::reconstruction_nll", "CUDA"):
        return "the extension was built without its CUDA kernels (CPU-only torch or no nvcc)"
    return None


UNAVAILABLE = _unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

DEVICE = torch.device("cuda")
CUDA = ops.OpsBackend("vae_kernels")  # the C++ ops; on CUDA tensors, the CUDA kernels
OPS = torch.ops.vae_kernels if ops.LIBRARY_ERROR is None else None


# ---------------------------------------------------------------- cases


def make_case(op: str, option: str, shape, seed=0) -> dict[str, torch.Tensor]:
    """float64 CPU inputs for one loss op: the cases of test_losses."""
    return make_loss_case(op, shape, torch.float64, option, seed)[0]


def run(impl, op: str, option: str, t: dict, reduction: str) -> torch.Tensor:
    """One loss through a backend object (``CUDA`` or ``reference``)."""
    if op == "gaussian_kl":
        return impl.gaussian_kl(t["mu"], t["logvar"], t.get("prior_mu"), t.get("prior_logvar"), reduction)
    if op == "bernoulli_nll":
        return impl.bernoulli_nll(t["input"], t["target"], option == "logits", reduction)
    if op == "gaussian_nll":
        return impl.gaussian_nll(t["input"], t["target"], t.get("logvar", -0.3), reduction)
    if op == "laplace_nll":
        return impl.reconstruction_nll("laplace", t["input"], t["target"], t.get("logscale", 0.4),
                                       reduction)
    if op == "continuous_bernoulli_nll":
        return impl.reconstruction_nll("continuous_bernoulli", t["input"], t["target"], 0.0,
                                       reduction)
    return impl.mse_loss(t["input"], t["target"], reduction)


def grad_names(op: str, tensors: dict) -> list[str]:
    return [k for k in tensors if not (op == "bernoulli_nll" and k == "target")]


def value_and_grads(impl, op, option, tensors, dtype, reduction, device):
    leaves = {k: v.detach().to(device=device, dtype=dtype).requires_grad_(k in grad_names(op, tensors))
              for k, v in tensors.items()}
    out = run(impl, op, option, leaves, reduction)
    weights = upstream_weights(out).to(device)
    grads = torch.autograd.grad((out * weights).sum(), [leaves[k] for k in grad_names(op, tensors)])
    return out, grads, leaves


def n_summed(shape, reduction) -> float:
    if reduction in ("sum", "per_sample"):
        return math.prod(shape) / (shape[0] if reduction == "per_sample" else 1)
    return 1


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_losses_match_float64_oracle(op, option, dtype, reduction):
    shape = (41, 401, 3)
    tensors = make_case(op, option, shape)
    out, grads, leaves = value_and_grads(CUDA, op, option, tensors, dtype, reduction, DEVICE)
    rounded = {k: v.detach().cpu().double() for k, v in leaves.items()}
    out64, grads64, _ = value_and_grads(reference, op, option, rounded, torch.float64, reduction, "cpu")
    assert out.device.type == DEVICE.type and out.dtype == dtype and out.shape == out64.shape
    assert_close_to_oracle(out.cpu(), out64, dtype, scale=n_summed(shape, reduction))
    for name, grad, grad64 in zip(grad_names(op, tensors), grads, grads64):
        assert grad.dtype == dtype and grad.shape == leaves[name].shape, name
        assert_close_to_oracle(grad.cpu(), grad64, dtype, scale=max(1, grad64.abs().max().item()))


# (3, 20000): rows of three 8192-element blocks; (1,) and (5, 4, 3, 2): tiny; (7, 13):
# rows not a multiple of a 16-byte pack (scalar path for per_sample).
SHAPES = [(1,), (7, 13), (5, 4, 3, 2), (3, 20000), (2, 8192)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_odd_shapes(op, option, shape):
    tensors = make_case(op, option, shape, seed=1)
    for reduction in ("none", "per_sample", "batchmean", "sum"):
        got = run(CUDA, op, option, {k: v.to(DEVICE, torch.float32) for k, v in tensors.items()}, reduction)
        expected = run(reference, op, option, tensors, reduction)
        assert_close_to_oracle(got.cpu(), expected, torch.float32, scale=100)


def _unaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is not 16-byte aligned."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = storage[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_unaligned_inputs_take_the_scalar_path_with_the_same_results(op, option, dtype):
    shape = (6, 4096)
    tensors = make_case(op, option, shape, seed=2)
    aligned = {k: v.to(DEVICE, dtype) for k, v in tensors.items()}
    unaligned = {k: _unaligned_copy(v) for k, v in aligned.items()}
    rounded = {k: v.cpu().double() for k, v in aligned.items()}
    for reduction in ("none", "per_sample", "sum"):
        expected = run(reference, op, option, rounded, reduction)
        for inputs in (aligned, unaligned):
            got = run(CUDA, op, option, inputs, reduction)
            assert_close_to_oracle(got.cpu(), expected, dtype, scale=n_summed(shape, reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("op,option", CASES, ids=CASE_IDS)
def test_gradcheck_float64_on_cuda(op, option, reduction):
    tensors = make_case(op, option, (3, 5), seed=3)
    if op == "bernoulli_nll" and option == "probs":
        tensors["target"] = tensors["target"] * 0.8 + 0.1  # soft labels: finite differences stay in [0, 1]
    names = list(tensors)
    leaves = [tensors[k].to(DEVICE).requires_grad_() for k in names]
    weights = {}

    def fn(*values):
        out = run(CUDA, op, option, dict(zip(names, values)), reduction)
        weights.setdefault("w", upstream_weights(out, seed=4).to(DEVICE))
        return out * weights["w"]

    assert torch.autograd.gradcheck(fn, leaves)


def test_float32_sum_accuracy_over_large_tensor():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(64, 200_000, generator=g)
    ours = CUDA.mse_loss(x.to(DEVICE), torch.zeros_like(x, device=DEVICE), "sum").cpu()
    exact = (x.double() ** 2).sum()
    assert abs(ours.double() - exact) / exact < 1e-6


def test_empty_batch():
    empty = torch.empty(0, 5, device=DEVICE)
    assert CUDA.mse_loss(empty, empty, "sum").item() == 0.0
    assert CUDA.mse_loss(empty, empty, "per_sample").shape == (0,)
    assert math.isnan(CUDA.mse_loss(empty, empty, "mean").item())


def test_bernoulli_probs_equals_torch_binary_cross_entropy():
    g = torch.Generator().manual_seed(5)
    p = torch.rand(64, 784, generator=g).clamp(1e-6, 1 - 1e-6)
    p[0, :5] = torch.tensor([0.0, 1.0, 0.0, 1.0, 1e-30])  # the -100 clamp
    x = torch.rand(64, 784, generator=g).round()
    p, x = p.to(DEVICE), x.to(DEVICE)
    for reduction in ("none", "sum", "mean"):
        a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
        ours = CUDA.bernoulli_nll(a, x, False, reduction)
        theirs = torch.nn.functional.binary_cross_entropy(b, x, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("logits", [True, False])
def test_values_outside_unit_interval_raise_value_error(logits):
    l = torch.randn(4, 6, device=DEVICE) if logits else torch.rand(4, 6, device=DEVICE)
    x = torch.rand(4, 6, device=DEVICE)
    x[2, 3] = 1.5
    with pytest.raises(ValueError, match="target must lie in \\[0, 1\\]"):
        CUDA.bernoulli_nll(l, x, logits, "sum")
    if not logits:
        with pytest.raises(ValueError, match="input \\(probabilities\\) must lie"):
            CUDA.bernoulli_nll(l * 2 + 0.5, torch.rand(4, 6, device=DEVICE), False, "none")
    mu = torch.zeros(4, 2, device=DEVICE)
    with pytest.raises(ValueError, match="x must lie in \\[0, 1\\]"):
        CUDA.elbo_loss(l, x, mu, mu, "bernoulli" if logits else "bernoulli_probs", 1.0, "sum")
    # In range (NaN is not a range error, as on the CPU): no error.
    x[2, 3] = float("nan")
    assert torch.isnan(CUDA.bernoulli_nll(l, x, logits, "sum"))


def test_wrong_device_mix_is_a_clear_error():
    a = torch.randn(3, 4, device=DEVICE)
    with pytest.raises((ValueError, RuntimeError), match="device"):
        OPS.reconstruction_nll(a, a.cpu(), None, 0.0, K.SQUARED_ERROR, 2, 1, [False] * 3)


# ---------------------------------------------------------------- elbo


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "per_sample"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_matches_oracle_with_components(likelihood, dtype, reduction):
    inputs = [t.to(DEVICE, dtype).requires_grad_() for t in make_elbo_inputs(likelihood, batch=33, data_shape=(1, 28, 28), latent=20)]
    out = CUDA.elbo_loss(*inputs, likelihood, 0.7, reduction)
    rounded = [t.detach().cpu().double().requires_grad_() for t in inputs]
    expected = reference.elbo_loss(*rounded, likelihood, 0.7, reduction)
    for got, want in zip(out, expected):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close_to_oracle(got.cpu(), want.detach(), dtype, scale=1000)
    weights = [upstream_weights(o, seed=i) for i, o in enumerate(out)]
    grads = torch.autograd.grad(sum((o * w.to(DEVICE)).sum() for o, w in zip(out, weights)),
                                inputs[:1] + inputs[2:])
    grads64 = torch.autograd.grad(sum((o * w.double()).sum() for o, w in zip(expected, weights)),
                                  rounded[:1] + rounded[2:])
    for got, want in zip(grads, grads64):
        assert_close_to_oracle(got.cpu(), want, dtype, scale=10)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "per_sample"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_gradcheck_on_cuda(likelihood, reduction):
    recon, x, mu, logvar = (t.to(DEVICE) for t in make_elbo_inputs(likelihood, 3, (4,), 2, seed=1))
    recon, mu, logvar = (t.requires_grad_() for t in (recon, mu, logvar))
    weights = {}

    def fn(recon, mu, logvar):
        outs = CUDA.elbo_loss(recon, x, mu, logvar, likelihood, 1.3, reduction)
        for i, o in enumerate(outs):
            weights.setdefault(i, upstream_weights(o, seed=i).to(DEVICE))
        return tuple(o * weights[i] for i, o in enumerate(outs))

    assert torch.autograd.gradcheck(fn, (recon, mu, logvar))


# ---------------------------------------------------------------- sampling


def test_philox_noise_is_tritons_randn4x_stream():
    from test_sampling import triton_randn4x  # the stream's spec, in numpy

    seed = 0x1234_5678_9ABC
    mu = torch.zeros(3, 1000, device=DEVICE)
    z = OPS.reparameterize_philox(mu, torch.zeros_like(mu), torch.tensor([seed], device=DEVICE), 2)
    expected = triton_randn4x(seed, np.arange(z.numel(), dtype=np.int64)).reshape(z.shape)
    np.testing.assert_allclose(z.cpu().numpy(), expected, rtol=2e-6, atol=2e-6)
    # A seed passed as a CPU tensor gives the same stream.
    z_cpu_seed = OPS.reparameterize_philox(mu, torch.zeros_like(mu), torch.tensor([seed]), 2)
    assert torch.equal(z, z_cpu_seed)


def test_in_kernel_noise_statistics_and_generator_reproducibility():
    mu = torch.zeros(400, 500, device=DEVICE)
    torch.manual_seed(0)
    z = CUDA.reparameterize(mu, mu, None, None, None)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    torch.manual_seed(0)
    assert torch.equal(z, CUDA.reparameterize(mu, mu, None, None, None))
    g1 = torch.Generator(device=DEVICE).manual_seed(9)
    g2 = torch.Generator(device=DEVICE).manual_seed(9)
    assert torch.equal(CUDA.reparameterize(mu, mu, None, 3, g1), CUDA.reparameterize(mu, mu, None, 3, g2))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("num_samples", [None, 3])
def test_caller_eps_matches_oracle(dtype, num_samples):
    g = torch.Generator().manual_seed(3)
    shape = (37, 11)
    mu, lv = (torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    eps = torch.randn(((num_samples,) if num_samples else ()) + shape, generator=g).to(DEVICE, dtype)
    z = CUDA.reparameterize(mu, lv, eps, num_samples, None)
    mu64, lv64 = (t.detach().cpu().double().requires_grad_() for t in (mu, lv))
    z64 = reference.reparameterize(mu64, lv64, eps.cpu().double(), num_samples, None)
    assert z.dtype == dtype and z.shape == z64.shape
    assert_close_to_oracle(z.cpu(), z64.detach(), dtype, scale=10)
    w = upstream_weights(z)
    grads = torch.autograd.grad((z * w.to(DEVICE)).sum(), (mu, lv))
    grads64 = torch.autograd.grad((z64 * w.double()).sum(), (mu64, lv64))
    for got, want in zip(grads, grads64):
        assert_close_to_oracle(got.cpu(), want, dtype, scale=10)


@pytest.mark.parametrize("num_samples", [None, 1, 4])
def test_gradcheck_sampling_on_cuda(num_samples):
    g = torch.Generator().manual_seed(4)
    mu, lv = (torch.randn(3, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_() for _ in range(2))
    eps = torch.randn(((num_samples,) if num_samples else ()) + (3, 5), generator=g, dtype=torch.float64).to(DEVICE)
    assert torch.autograd.gradcheck(lambda m, l: CUDA.reparameterize(m, l, eps, num_samples, None), (mu, lv))
    # In-kernel noise, regenerated in backward: a fresh generator per call keeps fn deterministic.
    fn = lambda m, l: CUDA.reparameterize(  # noqa: E731
        m, l, None, num_samples, torch.Generator(device=DEVICE).manual_seed(6))
    w = upstream_weights(fn(mu, lv)).to(DEVICE)
    assert torch.autograd.gradcheck(lambda m, l: fn(m, l) * w, (mu, lv))


def test_backward_regenerates_the_forward_noise():
    torch.manual_seed(7)
    mu = torch.randn(50, 20, dtype=torch.float64, device=DEVICE, requires_grad=True)
    lv = torch.randn(50, 20, dtype=torch.float64, device=DEVICE, requires_grad=True)
    z = CUDA.reparameterize(mu, lv, None, None, None)
    z.sum().backward()
    torch.testing.assert_close(lv.grad, 0.5 * (z - mu).detach())
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))


# ---------------------------------------------------------------- ops


def _to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to(DEVICE).requires_grad_(value.requires_grad)
    return value


def _opcheck_cases():
    from test_ops import opcheck_cases  # the CPU suite's cases, moved to the GPU

    return [(name, tuple(_to_cuda(a) for a in args)) for name, args in opcheck_cases()]


@pytest.mark.parametrize("name,args", _opcheck_cases() if UNAVAILABLE is None else [],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name), args)


def test_loss_backward_ops_match_cpu():
    g = torch.Generator().manual_seed(20)
    local = torch.randn(9, 1000, generator=g, dtype=torch.float64)
    for reduction, upstream in ((0, torch.randn(9, 1000, generator=g, dtype=torch.float64)),
                                (1, torch.randn(9, generator=g, dtype=torch.float64)),
                                (2, torch.tensor(1.7, dtype=torch.float64))):
        expected = OPS.loss_backward(local, upstream, reduction)
        torch.testing.assert_close(OPS.loss_backward(local.to(DEVICE), upstream.to(DEVICE), reduction).cpu(),
                                   expected, rtol=1e-14, atol=0)
        in_place = local.to(DEVICE)
        OPS.loss_backward_(in_place, upstream.to(DEVICE), reduction)
        torch.testing.assert_close(in_place.cpu(), expected, rtol=1e-14, atol=0)


def _elbo_step(recon, x, mu, lv):
    loss, rec, kl = CUDA.elbo_loss(recon, x, mu, lv, "bernoulli", 1.0, "sum")
    return (loss + 0.1 * rec.detach() + kl + CUDA.gaussian_kl(mu, lv, None, None, "sum")
            + CUDA.gaussian_nll(recon, x, 0.3, "mean") + CUDA.mse_loss(recon, x, "batchmean")
            + CUDA.bernoulli_nll(recon.sigmoid(), x, False, "sum"))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    recon, mu, lv = (torch.randn(s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
                     for s in ((16, 40), (16, 6), (16, 6)))
    x = torch.rand(16, 40, generator=g, dtype=torch.float64).to(DEVICE)
    compiled = torch.compile(_elbo_step, fullgraph=True)
    eager = _elbo_step(recon, x, mu, lv)
    got = compiled(recon, x, mu, lv)
    torch.testing.assert_close(got, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (recon, mu, lv)), torch.autograd.grad(eager, (recon, mu, lv))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["per_sample", "sum"])
def test_bitwise_deterministic_across_runs(dtype, reduction):
    g = torch.Generator().manual_seed(8)
    recon = torch.randn(37, 30000, generator=g).to(DEVICE, dtype)  # rows of four blocks
    x = torch.rand(37, 30000, generator=g).to(DEVICE, dtype)
    mu, lv = torch.randn(2, 37, 64, generator=g).to(DEVICE, dtype)

    def once():
        leaves = [t.detach().requires_grad_() for t in (recon, mu, lv)]
        out = CUDA.elbo_loss(leaves[0], x, leaves[1], leaves[2], "bernoulli", 1.0, reduction)
        return [*out, *torch.autograd.grad(sum(o.sum() for o in out), leaves)]

    first, second = once(), once()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_runs_on_the_current_stream_inside_cuda_graph_capture():
    """A launch on any stream but the capturing one fails the capture; the [0, 1] check
    (a device-to-host copy) is skipped while capturing."""
    g = torch.Generator().manual_seed(9)
    l = torch.randn(64, 784, generator=g).to(DEVICE)
    x = torch.rand(64, 784, generator=g).to(DEVICE)
    mu, lv = torch.randn(2, 64, 20, generator=g).to(DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        for _ in range(2):
            OPS.elbo(l, x, mu, lv, K.BERNOULLI_LOGITS, 1.0, 2, 64, [True, False, True, True])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = OPS.elbo(l, x, mu, lv, K.BERNOULLI_LOGITS, 1.0, 2, 64, [True, False, True, True])
    l.copy_(torch.randn(64, 784, generator=g).to(DEVICE))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.elbo_loss(l.double(), x.double(), mu.double(), lv.double(), "bernoulli", 1.0, "batchmean")
    for got, want in zip(captured[:3], expected):
        assert_close_to_oracle(got.cpu(), want.cpu(), torch.float32, scale=1000)


def test_no_host_synchronization_outside_the_unit_interval_check():
    g = torch.Generator().manual_seed(10)
    recon, x = torch.randn(2, 32, 300, generator=g).to(DEVICE)
    mu, lv = torch.randn(2, 32, 16, generator=g).to(DEVICE)
    recon.requires_grad_()
    mu.requires_grad_()
    seed = torch.tensor([42], device=DEVICE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        z = OPS.reparameterize_philox(mu, lv, seed, 2)
        OPS.reparameterize_philox_backward(torch.ones_like(z), lv, seed)
        for reduction in (0, 1, 2):
            OPS.gaussian_kl(mu, lv, None, None, reduction, 1, [True, True, False, False])
            OPS.reconstruction_nll(recon, x, None, 0.0, K.SQUARED_ERROR, reduction, 1, [True, True, False])
            OPS.reconstruction_nll(recon, x, None, 0.5, K.GAUSSIAN_FIXED_VAR, reduction, 1, [True, True, False])
        OPS.elbo(recon, x, mu, lv, K.GAUSSIAN_FIXED_VAR, 1.0, 1, 32, [True, False, True, True])
        loss = CUDA.elbo_loss(recon, x, mu, lv, "gaussian", 1.0, "batchmean")[0]
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_second_gpu():
    a = torch.randn(8, 100, device="cuda:1")
    b = torch.randn(8, 100, device="cuda:1")
    with torch.cuda.device(0):
        got = CUDA.mse_loss(a, b, "per_sample")
    assert got.device == a.device
    torch.testing.assert_close(got, ((a - b) ** 2).sum(1))


def test_public_api_backend_cuda():
    """backend="cuda" on CUDA tensors runs these kernels (vae_kernels/backends.py)."""
    g = torch.Generator().manual_seed(11)
    l = torch.randn(8, 50, generator=g).to(DEVICE)
    x = torch.rand(8, 50, generator=g).to(DEVICE)
    assert "cuda" in vk.available_backends()
    got = vk.bernoulli_nll(l, x, reduction="per_sample", backend="cuda")
    assert torch.equal(got, CUDA.bernoulli_nll(l, x, True, "per_sample"))


@pytest.mark.parametrize("with_prior", [False, True], ids=["standard-normal", "learned-prior"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kl_near_the_prior_is_accurate_relative_to_its_size(dtype, with_prior):
    kl_near_the_prior("cuda", dtype, with_prior, device=DEVICE)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_discretized_logistic_mixture_matches_oracle(channels, dtype, reduction):
    from test_discretized_logistic_mixture import grid_data, mixture_params

    params64 = mixture_params(2, channels, 9, 11, 3, seed=5).to(dtype).double()
    x64 = grid_data((2, channels, 9, 11), seed=5)
    leaf64 = params64.clone().requires_grad_()
    expected = reference.discretized_logistic_mixture_nll(leaf64, x64, 8, reduction)
    expected.sum().backward()
    params = params64.to(dtype).to(DEVICE).contiguous(memory_format=torch.channels_last)
    params.requires_grad_()
    loss = vk.discretized_logistic_mixture_nll(params, x64.to(DEVICE), reduction=reduction, backend="cuda")
    assert loss.dtype == torch.float64  # promoted with x's float64
    loss.sum().backward()
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4 * 200)
    torch.testing.assert_close(loss.cpu(), expected.detach(), **tol)
    gtol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(params.grad.double().cpu(), leaf64.grad, **gtol)
