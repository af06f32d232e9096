"""The registered Triton ops (namespace vae_kernels_triton): opcheck, torch.compile,
determinism, the in-place backward, the tile rule, backend dispatch, argument errors;
and the GPU-only checks (half precision, large sizes, Inductor)."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk
from vae_kernels.schema import LossKind as K

from triton_testing import (
    DEVICE,
    HAS_CUDA,
    REDUCTIONS,
    TOLERANCES,
    assert_close_to_oracle,
    gpu_only,
    rand,
    randn,
    requires_triton,
    upstream_weights,
)

pytestmark = requires_triton


def _ops():
    import vae_kernels.triton  # noqa: F401  registers the ops

    return torch.ops.vae_kernels_triton


def _opcheck_cases():
    f64 = torch.float64
    mu, lv, pm, plv = (randn((4, 3), f64, i).requires_grad_() for i in range(4))
    recon, logits = randn((4, 6), f64, 5).requires_grad_(), randn((4, 6), f64, 6, 3.0).requires_grad_()
    x = rand((4, 6), f64, 7)
    probs = rand((4, 6), f64, 8, 0.05, 0.95).requires_grad_()
    seed = torch.tensor([1234], device=DEVICE)
    return {
        "reparameterize": [(mu, lv, randn((2, 4, 3), f64, 9))],
        "reparameterize_backward": [(randn((2, 4, 3), f64, 10), lv.detach(), randn((2, 4, 3), f64, 9))],
        "reparameterize_philox": [(mu, lv, seed, 3)],
        "reparameterize_philox_backward": [(randn((3, 4, 3), f64, 10), lv.detach(), seed)],
        "loss_backward": [(randn((4, 6), f64, 11), randn((4,), f64, 12), 1),
                          (randn((4, 6), f64, 11), randn((), f64, 12), 2),
                          (randn((4, 6), f64, 11), randn((4, 6), f64, 12), 0)],
        "loss_backward_": [(randn((4, 6), f64, 11), randn((4,), f64, 12), 1)],
        "gaussian_kl": [(mu, lv, None, None, r, 1, [True, True, False, False]) for r in (0, 1, 2)]
        + [(mu, lv, pm, plv, 2, 4, [True, True, True, True])],
        "reconstruction_nll": [(logits, x, None, 0.0, K.BERNOULLI_LOGITS, r, 1, [True, False, False])
                               for r in (0, 1, 2)]
        + [(probs, x, None, 0.0, K.BERNOULLI_PROBS, 2, 24, [True, False, False]),
           (recon, x, None, 0.5, K.GAUSSIAN_FIXED_VAR, 1, 1, [True, False, False]),
           (recon, x, plv.detach().repeat(1, 2).requires_grad_(), 0.0, K.GAUSSIAN_LEARNED_VAR, 2, 1,
            [True, False, True])]
        + [(recon, x, None, 0.0, K.SQUARED_ERROR, r, 1, [True, False, False]) for r in (0, 1, 2)],
        "elbo": [(logits, x, mu, lv, K.BERNOULLI_LOGITS, 0.5, 1, 1, [True, False, True, True]),
                 (recon, x, mu, lv, K.GAUSSIAN_FIXED_VAR, 1.0, 2, 4, [True, False, True, True])],
    }


@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_opcheck(name):
    for args in _opcheck_cases()[name]:
        torch.library.opcheck(getattr(_ops(), name), args)


def test_schemas_match_the_cpu_ops():
    """Same names, argument names and order, and outputs as csrc/schemas.cpp. (triton_op
    infers the types from Python annotations: int is SymInt there, bool[N] is bool[].)"""
    from vae_kernels import ops

    if ops.LIBRARY_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    for name in _opcheck_cases():
        if not hasattr(torch.ops.vae_kernels, name):
            continue
        ours = getattr(_ops(), name).default._schema
        theirs = getattr(torch.ops.vae_kernels, name).default._schema
        assert [a.name for a in ours.arguments] == [a.name for a in theirs.arguments], name
        assert len(ours.returns) == len(theirs.returns), name
        assert [a.is_out or a.alias_info is not None for a in ours.arguments] == [
            a.is_out or a.alias_info is not None for a in theirs.arguments
        ], name


def _training_step(recon, x, mu, logvar):
    z = vk.reparameterize(mu, logvar, backend="triton")
    loss = vk.elbo_loss(recon, x, mu, logvar, beta=0.5, backend="triton")
    loss = loss + vk.gaussian_kl(mu, logvar, torch.zeros_like(mu), logvar.detach() * 0.5,
                                 reduction="per_sample", backend="triton").sum()
    loss = loss + vk.bernoulli_nll(torch.sigmoid(recon), x, logits=False, reduction="mean",
                                   backend="triton")
    loss = loss + vk.gaussian_nll(recon, x, logvar.mean(), reduction="none", backend="triton").sum()
    return loss + vk.mse_loss(z, mu.detach(), reduction="batchmean", backend="triton")


def _step_inputs(dtype=torch.float32):
    return (randn((4, 6), dtype, 1).requires_grad_(), rand((4, 6), dtype, 2),
            randn((4, 6), dtype, 3).requires_grad_(), randn((4, 6), dtype, 4, 0.5).requires_grad_())


@pytest.mark.parametrize("compile_backend", ["aot_eager"] + (["inductor"] if HAS_CUDA else []))
def test_compile_fullgraph_matches_eager(compile_backend):
    """torch.compile(fullgraph=True) traces the public API with backend="triton" with no
    graph break, forward and backward (on CPU the interpreted ops stay opaque calls)."""
    torch._dynamo.reset()
    recon, x, mu, logvar = _step_inputs()
    compiled = torch.compile(_training_step, fullgraph=True, backend=compile_backend)
    torch.manual_seed(3)
    loss = compiled(recon, x, mu, logvar)
    grads = torch.autograd.grad(loss, (recon, mu, logvar))
    torch.manual_seed(3)
    expected = _training_step(recon, x, mu, logvar)
    expected_grads = torch.autograd.grad(expected, (recon, mu, logvar))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_two_runs_are_bitwise_equal(reduction):
    """Fixed-order reductions: no atomics, so repeated runs give identical bits (a
    shape with several programs per row and several row blocks)."""
    shape = (70, 300) if not HAS_CUDA else (1024, 3 * 64 * 64)
    logits = randn(shape, torch.float32, 1, 3.0).requires_grad_()
    target = rand(shape, torch.float32, 2)
    runs = []
    for _ in range(2):
        loss = vk.bernoulli_nll(logits, target, reduction=reduction, backend="triton")
        grad, = torch.autograd.grad((loss * upstream_weights(loss.shape, loss.dtype)).sum(), logits)
        runs.append((loss, grad))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("reduction,upstream_shape", [(0, (3, 4, 5)), (1, (3,)), (2, ())])
@pytest.mark.parametrize("layout", ["contiguous", "no_row_view"])
def test_loss_backward_in_place_equals_out_of_place(reduction, upstream_shape, layout):
    local = randn((3, 4, 5), torch.float64, 1)
    if layout == "no_row_view":  # a permuted tensor: the kernel cannot write it through a view
        local = randn((4, 3, 5), torch.float64, 1).transpose(0, 1)
    upstream = randn(upstream_shape, torch.float64, 2)
    expected = _ops().loss_backward(local, upstream, reduction)
    manual = local * (upstream.reshape(-1, 1, 1) if reduction == 1 else upstream)
    torch.testing.assert_close(expected, manual, **TOLERANCES[torch.float64])
    in_place = local.clone()
    _ops().loss_backward_(in_place, upstream, reduction)
    torch.testing.assert_close(in_place, expected, rtol=0, atol=0)


@pytest.mark.parametrize("rows,row_len", [(1, 1), (3, 5), (70, 5), (2, 300), (10**6, 1),
                                          (1, 10**7), (1024, 12288), (128, 784)])
def test_tile_rule(rows, row_len):
    from vae_kernels.triton.layout import MAX_TILE, tile_shape

    tile = tile_shape(rows, row_len)
    for block in (tile.block_rows, tile.block_cols):
        assert block & (block - 1) == 0, "block sizes are powers of two"
    assert tile.block_rows * tile.block_cols <= MAX_TILE
    assert tile.row_blocks * tile.block_rows >= rows > (tile.row_blocks - 1) * tile.block_rows
    assert tile.col_blocks * tile.block_cols >= row_len > (tile.col_blocks - 1) * tile.block_cols
    assert 1 <= tile.num_warps <= 8
    if rows * row_len >= 512 * 4096:  # large inputs get full tiles
        assert tile.block_rows * tile.block_cols == MAX_TILE


def test_backend_dispatch(monkeypatch):
    assert "triton" in vk.available_backends()
    mu = randn((3, 5), torch.float32, 1)
    kl = vk.gaussian_kl(mu, mu, backend="triton")
    torch.testing.assert_close(kl, vk.gaussian_kl(mu, mu, backend="torch"))
    if not HAS_CUDA:
        from vae_kernels import backends

        assert backends.resolve("auto", mu.device) is not backends.resolve("triton", mu.device)
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            vk.gaussian_kl(mu, mu, backend="triton")


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda o, t: o.reparameterize_philox(t, t, torch.tensor([1.0], device=DEVICE), 1),
         ValueError, "seed must be an int64 tensor with one element"),
        (lambda o, t: o.reparameterize_philox(t, t, torch.tensor([1], device=DEVICE), 0),
         ValueError, "num_samples must be >= 1, got 0"),
        (lambda o, t: o.reparameterize(t, t, t[:1]), ValueError, "eps must have shape mu.shape"),
        (lambda o, t: o.gaussian_kl(t, t.double(), None, None, 0, 1, [False] * 4),
         TypeError, "logvar must have the dtype of mu"),
        (lambda o, t: o.gaussian_kl(t, t, t, None, 0, 1, [False] * 4),
         ValueError, "pass both prior_mu and prior_logvar or neither"),
        (lambda o, t: o.reconstruction_nll(t, t[:2], None, 0.0, K.SQUARED_ERROR, 0, 1, [False] * 3),
         ValueError, "target must have the shape of input"),
        (lambda o, t: o.reconstruction_nll(t, t, None, 0.0, K.SQUARED_ERROR, 3, 1, [False] * 3),
         ValueError, "reduction must be one of"),
        (lambda o, t: o.reconstruction_nll(t, t, None, 0.0, K.GAUSSIAN_LEARNED_VAR, 0, 1, [False] * 3),
         ValueError, "kind 5 needs a scale tensor"),
        (lambda o, t: o.reconstruction_nll(t, t, t, 0.0, K.SQUARED_ERROR, 0, 1, [False] * 3),
         ValueError, "kind 6 takes no scale tensor"),
        (lambda o, t: o.reconstruction_nll(t, t, None, 0.0, K.KL_PRIOR, 0, 1, [False] * 3),
         ValueError, "kind must be a reconstruction LossKind, got 1"),
        (lambda o, t: o.elbo(t, t, t, t, K.BERNOULLI_LOGITS, 1.0, 0, 1, [False] * 4), ValueError,
         "reduction must be one of 1 \\(per_sample\\), 2 \\(sum\\), got 0"),
        (lambda o, t: o.elbo(t, t, t, t, 12, 1.0, 1, 1, [False] * 4), ValueError,
         "kind must be a reconstruction LossKind without a learned scale, got 12"),
        (lambda o, t: o.loss_backward(t, t[0], 1), ValueError, "grad_output must have 3 elements"),
        (lambda o, t: o.loss_backward_(t.half(), torch.tensor(2.0, device=DEVICE).half(), 2),
         TypeError, "local_grad must have dtype torch.float32 for a grad_output of dtype "
         "torch.float16, got torch.float16"),
        (lambda o, t: o.loss_backward_(t, torch.tensor(2.0, device=DEVICE).half(), 2),
         TypeError, "cannot write a result of grad_output's dtype torch.float16 in place"),
        (lambda o, t: o.reconstruction_nll(t.long(), t.long(), None, 0.0, K.SQUARED_ERROR, 0, 1,
                                           [False] * 3), TypeError,
         "input must be a floating-point tensor"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, message):
    t = randn((3, 5), torch.float32, 1)
    with pytest.raises(error, match=message):
        call(_ops(), t)


# ------------------------------------------------------------------ GPU only


def _losses(backend, recon, x, mu, logvar, probs):
    return [
        vk.gaussian_kl(mu, logvar, reduction="per_sample", backend=backend),
        vk.gaussian_kl(mu, logvar, mu.detach() * 0.5, logvar.detach() * 0.5, reduction="sum",
                       backend=backend),
        vk.bernoulli_nll(recon, x, reduction="none", backend=backend),
        vk.bernoulli_nll(probs, x, logits=False, reduction="mean", backend=backend),
        vk.gaussian_nll(recon, x, 0.3, reduction="batchmean", backend=backend),
        vk.gaussian_nll(recon, x, logvar.mean(1, keepdim=True).detach(), reduction="sum",
                        backend=backend),
        vk.mse_loss(recon, x, reduction="per_sample", backend=backend),
        *vk.elbo_loss(recon, x, mu, logvar, return_components=True, backend=backend),
        vk.reparameterize(mu, logvar, randn(mu.shape, mu.dtype, 9), backend=backend),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("sizes", [
    (3, 5, 2),
    pytest.param((128, 784, 20), marks=gpu_only),
    pytest.param((1024, 3 * 64 * 64, 256), marks=gpu_only),
], ids=str)
def test_every_op_matches_oracle(sizes, dtype):
    """Half precision loads/stores (float32 compute; the interpreter runs the tiny size
    too), and on a GPU the MNIST and large-image sizes."""
    batch, features, latent = sizes
    tensors = [randn((batch, features), dtype, 1), rand((batch, features), dtype, 2),
               randn((batch, latent), dtype, 3), randn((batch, latent), dtype, 4, 0.5),
               rand((batch, features), dtype, 5, 0.05, 0.95)]
    leaves = [t.detach().requires_grad_() for t in tensors]
    oracle = [t.detach().double().requires_grad_() for t in tensors]
    outputs = _losses("triton", *leaves)
    expected = _losses("torch", *oracle)
    scale = float(batch * features)
    for output, expected_output in zip(outputs, expected):
        assert_close_to_oracle(output, expected_output, dtype, scale)
    total = sum((o.float() * upstream_weights(o.shape, torch.float32, seed=i)).sum()
                for i, o in enumerate(outputs))
    expected_total = sum((o * upstream_weights(o.shape, torch.float32, seed=i).double()).sum()
                         for i, o in enumerate(expected))
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    expected_grads = torch.autograd.grad(expected_total, oracle, allow_unused=True)
    for grad, expected_grad in zip(grads, expected_grads):
        if expected_grad is not None:
            assert_close_to_oracle(grad, expected_grad, dtype, scale)


@gpu_only
def test_gpu_auto_backend_is_triton():
    from vae_kernels import backends
    from vae_kernels.triton import backend

    assert backends.resolve("auto", torch.device("cuda")) is backend


@gpu_only
def test_gpu_inductor_sees_the_kernels():
    """With Inductor, the triton_op decomposes into its kernels inside the graph."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    recon, x, mu, logvar = _step_inputs()
    compiled = torch.compile(_training_step, fullgraph=True)
    _, codes = run_and_get_code(compiled, recon, x, mu, logvar)
    assert any("elementwise_loss_kernel" in code for code in codes)


@gpu_only
@pytest.mark.slow
def test_gpu_int64_offsets():
    """More than 2^31 elements: offsets past int32 (bfloat16, ~4.3 GB per tensor)."""
    numel = 2**31 + 2**20
    logits = torch.full((2, numel // 2), 2.0, dtype=torch.bfloat16, device="cuda")
    target = torch.ones_like(logits)
    loss = vk.bernoulli_nll(logits, target, reduction="per_sample", backend="triton")
    per_element = torch.nn.functional.softplus(torch.tensor(-2.0, dtype=torch.float64)).item()
    torch.testing.assert_close(loss.double().cpu(), torch.full((2,), per_element * numel / 2,
                                                               dtype=torch.float64), rtol=2e-2, atol=0)
    del logits, target

