"""The eager calls from Python (csrc/python/eager_calls.cpp): built and used by the
public API; the same values and gradients as torch.ops' path, bit for bit; the same seed
draw; and None, so that torch.ops' path runs, wherever that path must (tensor
subclasses, __torch_function__ modes, arguments the direct path does not take)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import vae_kernels as vk
from vae_kernels import functional, ops
from vae_kernels.schema import LossKind as K

from conftest import REDUCTIONS, requires_cpu_backend

pytestmark = requires_cpu_backend

CALLS = ops.EAGER_CALLS


def _leaves(*shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _outputs_and_grads(fn, leaves):
    for t in leaves:
        t.grad = None
    out = fn()
    outs = out if isinstance(out, tuple) else (out,)
    sum(o.sum() for o in outs).backward()
    return [o.detach() for o in outs] + [t.grad for t in leaves]


def _assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y) or (x.isnan() == y.isnan()).all() and torch.equal(
            x.nan_to_num(), y.nan_to_num()
        )


def test_the_module_is_built_and_public_calls_take_it():
    assert CALLS is not None, "vae_kernels._eager_calls was not built with the library"
    assert functional._direct_calls() is CALLS


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_direct_calls_equal_the_torch_ops_path_bitwise(reduction, dtype):
    recon, mu, logvar = _leaves((8, 12), (8, 3), (8, 3), dtype=dtype)
    x = torch.rand(8, 12).round().to(dtype)
    cases = [
        (lambda: vk.gaussian_kl(mu, logvar, reduction=reduction), [mu, logvar]),
        (lambda: vk.gaussian_kl(mu, logvar, reduction=reduction, scale="logsigma"), [mu, logvar]),
        (lambda: vk.bernoulli_nll(recon, x, reduction=reduction), [recon]),
        (lambda: vk.gaussian_nll(recon, x, 0.3, reduction=reduction), [recon]),
        (lambda: vk.laplace_nll(recon, x, -0.2, reduction=reduction), [recon]),
        (lambda: vk.mse_loss(recon, x, reduction=reduction), [recon]),
        (lambda: vk.continuous_bernoulli_nll(recon, x, reduction=reduction), [recon]),
    ]
    if reduction in ("batchmean", "sum", "per_sample"):
        cases.append((lambda: vk.elbo_loss(recon, x, mu, logvar, beta=0.5, reduction=reduction,
                                           return_components=True), [recon, mu, logvar]))
    for fn, leaves in cases:
        direct = _outputs_and_grads(fn, leaves)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(functional, "_direct_calls", lambda: None)
            patch.setattr(ops.cpu, "eager_calls", None)
            via_torch_ops = _outputs_and_grads(fn, leaves)
        _assert_bitwise_equal(direct, via_torch_ops)


def test_op_level_calls_return_only_the_reduced_outputs():
    recon, mu, logvar = _leaves((4, 6), (4, 2), (4, 2))
    x = torch.rand(4, 6)
    kl = CALLS.gaussian_kl(mu, logvar, None, None, 2, 4, [True, True, False, False], False)
    assert len(kl) == 1 and kl[0].shape == ()
    elbo = CALLS.elbo(recon, x, mu, logvar, int(K.BERNOULLI_LOGITS), 1.0, 1, 1, [True] * 4, False)
    assert len(elbo) == 3 and all(t.shape == (4,) for t in elbo)
    torch.testing.assert_close(elbo[0], elbo[1] + elbo[2])


def test_in_kernel_noise_draws_the_seed_as_the_python_path_does():
    mu, logvar = _leaves((5, 7), (5, 7))
    generator = torch.Generator().manual_seed(3)
    z = vk.reparameterize(mu, logvar, generator=generator)
    generator.manual_seed(3)
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, generator=generator)
    expected = torch.ops.vae_kernels.reparameterize_philox(mu, logvar, seed, None)
    assert torch.equal(z, expected)
    # The default generator too, and the draw advances it as torch.randint does.
    torch.manual_seed(11)
    z1, z2 = vk.reparameterize(mu, logvar), vk.reparameterize(mu, logvar)
    torch.manual_seed(11)
    seeds = [torch.randint(0, 2**62, (1,), dtype=torch.int64) for _ in range(2)]
    assert torch.equal(z1, torch.ops.vae_kernels.reparameterize_philox(mu, logvar, seeds[0], None))
    assert torch.equal(z2, torch.ops.vae_kernels.reparameterize_philox(mu, logvar, seeds[1], None))


def test_given_noise_takes_the_direct_call_with_its_gradients():
    mu, logvar, eps = _leaves((3, 4), (3, 4), (3, 4))
    direct = _outputs_and_grads(lambda: vk.reparameterize(mu, logvar, eps), [mu, logvar, eps])
    assert CALLS.direct_reparameterize(mu, logvar, eps, None, False, "auto") is not None
    expected = _outputs_and_grads(lambda: mu + torch.exp(0.5 * logvar) * eps, [mu, logvar, eps])
    for a, b in zip(direct, expected):
        torch.testing.assert_close(a, b)


class _Subclass(torch.Tensor):
    pass


def test_direct_calls_decline_what_the_checked_path_must_take():
    mu, logvar = _leaves((4, 3), (4, 3))
    kl = CALLS.direct_gaussian_kl
    assert kl(mu, logvar, "batchmean", False, "auto") is not None
    assert kl(mu, logvar, "batchmean", False, "cpu") is not None
    assert kl(mu, logvar, "batchmean", False, "torch") is None
    assert kl(mu, logvar, "average", False, "auto") is None  # the checked path names it
    assert kl(mu, logvar, None, False, "auto") is None
    assert kl(mu, logvar.double(), "batchmean", False, "auto") is None  # promotion
    assert kl(mu, logvar[:, :2], "batchmean", False, "auto") is None
    assert kl(mu.int(), logvar.int(), "batchmean", False, "auto") is None
    assert kl(mu.as_subclass(_Subclass), logvar, "batchmean", False, "auto") is None
    scalar = torch.tensor(0.5)
    assert kl(scalar, scalar, "batchmean", False, "auto") is None
    assert kl(scalar, scalar, "sum", False, "auto") is not None
    recon, x = torch.randn(4, 6), torch.rand(4, 6)
    elbo = CALLS.direct_elbo
    assert elbo(recon, x, mu, logvar, 2, 1.0, "batchmean", False, "auto") is not None
    assert elbo(recon, x, mu, logvar, 2, 1.0, "mean", False, "auto") is None
    assert elbo(recon, x, mu[:3], logvar[:3], 2, 1.0, "batchmean", False, "auto") is None
    # Errors of the checked path stay as they were.
    with pytest.raises(ValueError, match="reduction"):
        vk.gaussian_kl(mu, logvar, reduction="average")


def test_a_torch_function_mode_sees_the_public_calls():
    mu, logvar = _leaves((4, 3), (4, 3))
    seen = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder():
        assert CALLS.direct_gaussian_kl(mu, logvar, "batchmean", False, "auto") is None
        vk.gaussian_kl(mu, logvar)
    assert any("vae_kernels.gaussian_kl" in name for name in seen), seen


def test_errors_raised_in_the_kernels_keep_their_python_type():
    logits = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CALLS.direct_reconstruction_nll(logits, torch.full((4, 6), 2.0), 0.0,
                                        int(K.BERNOULLI_LOGITS), "sum", "auto")
