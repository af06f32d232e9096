"""Mixed precision as torch's own losses do it: floating arguments of different dtypes
promote (bfloat16 with float32 gives float32, float32 with float64 gives float64), each
gradient comes back in its own input's dtype, and under autocast the losses compute and
return float32 (the sampling ops keep the promoted dtype of their inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vae_kernels as vk

BACKENDS = [b for b in ("cpu", "triton", "torch") if b in vk.available_backends()]
PAIRS = [
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float16),
    (torch.float32, torch.float64),
    (torch.float64, torch.bfloat16),
]


def _calls():
    """(name, call(a, b, backend, dtype of the other arguments), a and b in float64)."""
    g = torch.Generator().manual_seed(0)
    n = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    logits, probs, x01, m, x, lat = n(6, 10) * 2, u(6, 10) * 0.9 + 0.05, u(6, 10), n(6, 10), n(6, 10), n(6, 3)
    return [
        ("bernoulli_nll", lambda a, b, be, d: vk.bernoulli_nll(a, b, backend=be), logits, x01),
        ("bernoulli_probs", lambda a, b, be, d: vk.bernoulli_nll(a, b, logits=False, backend=be), probs, x01),
        ("gaussian_nll", lambda a, b, be, d: vk.gaussian_nll(a, x.to(d), b, backend=be), m, n(10) * 0.3),
        ("laplace_nll", lambda a, b, be, d: vk.laplace_nll(a, b, backend=be), m, x),
        ("continuous_bernoulli", lambda a, b, be, d: vk.continuous_bernoulli_nll(a, b, backend=be), logits, x01),
        ("mse_loss", lambda a, b, be, d: vk.mse_loss(a, b, backend=be), m, x),
        ("gaussian_kl", lambda a, b, be, d: vk.gaussian_kl(a, b, backend=be), lat, lat * 0.5),
        ("gaussian_kl_prior", lambda a, b, be, d: vk.gaussian_kl(a, a.detach() * 0, b, b.detach(), backend=be), lat, n(3)),
        ("reparameterize", lambda a, b, be, d: vk.reparameterize(a, b, torch.ones_like(a), backend=be).sum(), lat, lat * 0.3),
        ("elbo_recon_vs_latent", lambda a, b, be, d: vk.elbo_loss(a, x01.to(d), b, b * 0.5, backend=be), logits, lat),
        ("elbo_x", lambda a, b, be, d: vk.elbo_loss(a, b, lat.to(d), lat.to(d), backend=be), logits, x01),
    ]


CALLS = _calls()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtypes", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}".replace("torch.", ""))
@pytest.mark.parametrize("name,call,a64,b64", CALLS, ids=[c[0] for c in CALLS])
def test_mixed_dtypes_promote(name, call, a64, b64, dtypes, backend):
    if backend == "triton" and torch.float16 in dtypes:
        pytest.skip("the Triton interpreter has no float16 arithmetic")
    da, db = dtypes
    promoted = torch.promote_types(da, db)
    a = a64.to(da).requires_grad_()
    b = b64.to(db).requires_grad_()
    out = call(a, b, backend, da)
    assert out.dtype == promoted, (out.dtype, promoted)
    grad_a, grad_b = torch.autograd.grad(out, (a, b))
    assert grad_a.dtype == da and grad_b.dtype == db
    # The same as casting both to the promoted dtype first.
    a2, b2 = (t.detach().to(promoted).requires_grad_() for t in (a, b))
    expected = call(a2, b2, backend, da)
    torch.testing.assert_close(out, expected)
    expected_a, expected_b = torch.autograd.grad(expected, (a2, b2))
    torch.testing.assert_close(grad_a, expected_a.to(da))
    torch.testing.assert_close(grad_b, expected_b.to(db))


@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_under_autocast_return_float32_as_torch_losses(backend):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 16, generator=g)
    linear = torch.nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(x)  # bfloat16 under autocast, the data stays float32
        assert logits.dtype == torch.bfloat16
        ours = vk.bernoulli_nll(logits, x, reduction="sum", backend=backend)
        theirs = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        mu = logits[:, :4]
        for loss in (ours, vk.gaussian_kl(mu, mu, backend=backend),
                     vk.elbo_loss(logits, x, mu, mu, backend=backend),
                     vk.laplace_nll(logits, x, backend=backend),
                     vk.mse_loss(logits.detach(), logits, backend=backend)):
            assert loss.dtype == torch.float32
        # The sample keeps its inputs' dtype: it feeds the decoder.
        assert vk.reparameterize(mu, mu, backend=backend).dtype == torch.bfloat16
    assert theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    (grad,) = torch.autograd.grad(ours, linear.weight, retain_graph=True)
    (expected,) = torch.autograd.grad(theirs, linear.weight)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)


def test_raw_ops_under_autocast_compute_float32():
    if "cpu" not in vk.available_backends():
        pytest.skip("the C++ extension is not built")
    x = torch.rand(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = torch.ops.vae_kernels.reconstruction_nll(
            x.bfloat16(), x.bfloat16(), None, 0.0, int(vk.schema.LossKind.BERNOULLI_LOGITS), 2, 1,
            [True, False, False])
    assert outputs[0].dtype == torch.float32 and outputs[1].dtype == torch.float32


@pytest.mark.parametrize("backend", [b for b in ("cpu", "torch") if b in BACKENDS])
def test_a_vae_step_under_cpu_autocast(backend):
    """The reference VAE's training step in bfloat16 autocast: the fused and eager
    backends agree, the loss is float32 and every parameter gets a finite gradient."""
    pytest.importorskip("numpy")
    from vae_kernels.app.models import MLPVAE

    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 784, generator=g).round()
    eps = torch.randn(16, 20, generator=g)
    results = {}
    for name in (backend, "torch"):
        torch.manual_seed(0)
        model = MLPVAE(backend=name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon, mu, logvar = model(x, eps)
            loss = vk.elbo_loss(recon, x.view(16, -1), mu, logvar, backend=name)
        assert recon.dtype == torch.bfloat16 and loss.dtype == torch.float32
        loss.backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        assert all(torch.isfinite(v).all() for v in grads.values())
        results[name] = (loss.detach(), grads)
    torch.testing.assert_close(results[backend][0], results["torch"][0], rtol=2e-2, atol=1e-1)
    for k in results["torch"][1]:
        scale = results["torch"][1][k].abs().max().item()
        torch.testing.assert_close(results[backend][1][k], results["torch"][1][k], rtol=5e-2,
                                   atol=5e-2 * max(scale, 1e-3))


def test_compile_with_mixed_dtypes():
    if "cpu" not in vk.available_backends():
        pytest.skip("the C++ extension is not built")

    def step(recon, x, mu, logvar):
        return vk.elbo_loss(recon, x, mu, logvar, backend="cpu")

    g = torch.Generator().manual_seed(3)
    recon = torch.randn(4, 10, generator=g).bfloat16().requires_grad_()
    x = torch.rand(4, 10, generator=g)
    mu = torch.randn(4, 3, generator=g).requires_grad_()
    logvar = torch.randn(4, 3, generator=g).bfloat16().requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(recon, x, mu, logvar)
    expected = step(recon, x, mu, logvar)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out, (recon, mu, logvar))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.bfloat16]


def test_integer_and_complex_arguments_still_raise_type_error():
    x = torch.rand(4, 6)
    with pytest.raises(TypeError, match="^target must be a floating-point tensor"):
        vk.bernoulli_nll(x, x.long())
    with pytest.raises(TypeError, match="^logvar must be a floating-point tensor"):
        vk.gaussian_kl(x, x.to(torch.complex64))


def _copied_shapes(fn) -> list:
    """The input shapes of every dtype conversion (aten::_to_copy) that ``fn`` runs."""
    with torch.profiler.profile(record_shapes=True) as trace:
        fn()
    return [tuple(e.input_shapes[0]) for e in trace.events() if e.name == "aten::_to_copy"]


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in BACKENDS])
def test_kernels_read_each_argument_in_its_own_dtype_without_a_conversion_pass(backend):
    """A bfloat16 decoder output with float32 data: no conversion of the decoder output
    (or of anything) before the kernels, in the forward of every loss."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 50, generator=g).bfloat16().requires_grad_()
    x = torch.rand(32, 50, generator=g)
    mu = torch.randn(32, 4, generator=g).bfloat16().requires_grad_()
    logvar = (torch.randn(32, 4, generator=g) * 0.5).bfloat16().requires_grad_()
    logvar32 = logvar.detach().float()
    calls = {
        "bernoulli_nll": lambda: vk.bernoulli_nll(logits, x, backend=backend),
        "gaussian_nll": lambda: vk.gaussian_nll(logits, x, logvar[:, :1], backend=backend),
        "laplace_nll": lambda: vk.laplace_nll(logits, x, backend=backend),
        "elbo_loss": lambda: vk.elbo_loss(logits, x, mu, logvar, backend=backend),
        "gaussian_kl": lambda: vk.gaussian_kl(mu, logvar32, backend=backend),
    }
    for name, call in calls.items():
        assert call().dtype == torch.float32, name
        copies = _copied_shapes(call)
        assert copies == [], (name, copies)


@pytest.mark.skipif("cpu" not in vk.available_backends(), reason="the C++ extension is not built")
def test_cpu_autocast_casts_only_the_smallest_argument():
    """Under autocast, all-bfloat16 arguments give float32 by casting one small argument
    (the target where sizes tie; logvar of the KL), never the decoder output."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 50, generator=g).bfloat16().requires_grad_()
    target = torch.rand(32, 50, generator=g).bfloat16()
    mu = torch.randn(32, 4, generator=g).bfloat16().requires_grad_()
    logvar = torch.randn(32, 4, generator=g).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vk.bernoulli_nll(logits, target, backend="cpu")
        assert loss.dtype == torch.float32
        assert _copied_shapes(lambda: vk.bernoulli_nll(logits, target, backend="cpu")) == [(32, 50)]
        kl = vk.gaussian_kl(mu, logvar, backend="cpu")
        assert kl.dtype == torch.float32
        assert _copied_shapes(lambda: vk.gaussian_kl(mu, logvar, backend="cpu")) == [(32, 4)]
        elbo = vk.elbo_loss(logits, target.float(), mu, logvar, backend="cpu")
        assert elbo.dtype == torch.float32
    expected = vk.bernoulli_nll(logits.float(), target.float(), backend="torch")
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
