"""Bad input gets a ValueError/TypeError that names the argument and what was expected,
on every backend, never a crash or a silently wrong number."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk

BACKENDS = vk.available_backends()
x2 = torch.rand(4, 6)
lat = torch.randn(4, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda b: vk.bernoulli_nll(x2, torch.rand(4, 5), backend=b), ValueError, r"target must have the same shape as input \(4, 6\)"),
        (lambda b: vk.bernoulli_nll(x2, x2.to(torch.complex64), backend=b), TypeError, "target must be a floating-point tensor"),
        (lambda b: vk.bernoulli_nll(x2, x2.to(torch.device("meta")), backend=b), ValueError, "same device"),
        (lambda b: vk.bernoulli_nll(x2, (x2 > 0.5), backend=b), TypeError, "target must be a floating-point tensor"),
        (lambda b: vk.bernoulli_nll(x2.long(), x2, backend=b), TypeError, "input must be a floating-point tensor.*torch.int64"),
        (lambda b: vk.bernoulli_nll([1.0], x2, backend=b), TypeError, "input must be a torch.Tensor, got list"),
        (lambda b: vk.bernoulli_nll(x2 + 1, x2, logits=False, backend=b), ValueError, r"input \(probabilities.*must lie in \[0, 1\]"),
        (lambda b: vk.bernoulli_nll(x2 - 2, x2, logits=False, backend=b), ValueError, r"must lie in \[0, 1\]"),
        (lambda b: vk.bernoulli_nll(x2, x2 * 3, backend=b), ValueError, r"target must lie in \[0, 1\]"),
        (lambda b: vk.bernoulli_nll(x2, x2, logits=1, backend=b), TypeError, "logits must be a bool"),
        (lambda b: vk.bernoulli_nll(x2, x2, reduction="avg", backend=b), ValueError, r"reduction must be one of .*'none'.*got 'avg'"),
        (lambda b: vk.mse_loss(torch.tensor(1.0), torch.tensor(1.0), reduction="per_sample", backend=b), ValueError, "needs a batch dimension"),
        (lambda b: vk.gaussian_nll(x2, x2, torch.zeros(5), backend=b), ValueError, r"logvar of shape \(5,\) must broadcast to input's shape \(4, 6\)"),
        (lambda b: vk.gaussian_nll(x2, x2, "0", backend=b), TypeError, "logvar must be a float or a tensor, got str"),
        (lambda b: vk.gaussian_kl(lat, torch.randn(4, 2), backend=b), ValueError, "logvar must have the same shape as mu"),
        (lambda b: vk.gaussian_kl(lat, lat, torch.zeros(2), backend=b), ValueError, "prior_mu of shape"),
        (lambda b: vk.reparameterize(lat, lat, torch.randn(4, 4), backend=b), ValueError, r"eps must have shape \(4, 3\)"),
        (lambda b: vk.reparameterize(lat, lat, torch.randn(4, 3), num_samples=2, backend=b), ValueError, r"eps must have shape \(2, 4, 3\)"),
        (lambda b: vk.reparameterize(lat, lat, num_samples=0, backend=b), ValueError, "num_samples must be at least 1, got 0"),
        (lambda b: vk.reparameterize(lat, lat, num_samples=2.0, backend=b), TypeError, "num_samples must be an int"),
        (lambda b: vk.reparameterize(lat, lat, generator=3, backend=b), TypeError, "generator must be a torch.Generator"),
        (lambda b: vk.elbo_loss(x2, x2, lat, lat, likelihood="poisson", backend=b), ValueError, r"likelihood must be one of .*'bernoulli'.*got 'poisson'"),
        (lambda b: vk.elbo_loss(x2, x2, lat, lat, reduction="mean", backend=b), ValueError, r"reduction must be one of \('batchmean', 'sum', 'per_sample'\) \(the ELBO"),
        (lambda b: vk.elbo_loss(x2, x2, lat, lat, beta=-1.0, backend=b), ValueError, "beta must be >= 0, got -1.0"),
        (lambda b: vk.elbo_loss(x2, x2, lat, lat, beta="1", backend=b), TypeError, "beta must be a float"),
        (lambda b: vk.elbo_loss(x2, x2, torch.randn(5, 3), torch.randn(5, 3), backend=b), ValueError, "same batch size, got 4 and 5"),
        (lambda b: vk.elbo_loss(x2, x2.view(4, 2, 3), lat, lat, backend=b), ValueError, r"x must have the same shape as recon .*view_as"),
        (lambda b: vk.elbo_loss(x2, x2 * 2, lat, lat, backend=b), ValueError, r"x must lie in \[0, 1\]"),
        (lambda b: vk.elbo_loss(x2 + 1, x2, lat, lat, likelihood="bernoulli_probs", backend=b), ValueError, r"recon \(probabilities\) must lie in \[0, 1\]"),
        (lambda b: vk.elbo_loss(x2, x2, lat, lat.int(), backend=b), TypeError, "logvar must be a floating-point tensor"),
    ],
)
def test_bad_input_is_a_clear_error(backend, call, error, match):
    with pytest.raises(error, match=match):
        call(backend)


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'gpu'"):
        vk.mse_loss(x2, x2, backend="gpu")
    with pytest.raises(ValueError, match="backend='cuda' cannot run on cpu tensors: it runs on CUDA"):
        vk.mse_loss(x2, x2, backend="cuda")
    if "triton" not in BACKENDS:
        with pytest.raises(RuntimeError, match="backend='triton' cannot run on cpu tensors"):
            vk.mse_loss(x2, x2, backend="triton")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
def test_cpu_backend_refuses_other_devices():
    meta = torch.empty(4, 6, device="meta")
    with pytest.raises(ValueError, match="backend='cpu' cannot run on meta tensors: it runs on CPU"):
        vk.mse_loss(meta, meta, backend="cpu")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
def test_range_check_sees_every_element_including_tails():
    for n in (1, 15, 17, 4097, 9000):
        target = torch.rand(3, n)
        target[2, n - 1] = 1.5  # the very last element, in a partial vector
        with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
            vk.bernoulli_nll(torch.zeros(3, n), target, backend="cpu")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
def test_nan_propagates_instead_of_raising():
    l = torch.zeros(2, 5)
    l[1, 3] = float("nan")
    out = vk.bernoulli_nll(l, torch.rand(2, 5), reduction="per_sample", backend="cpu")
    assert out[0].isfinite() and out[1].isnan()
    p = torch.full((2, 5), 0.5)
    p[0, 0] = float("nan")
    assert vk.bernoulli_nll(p, torch.rand(2, 5), logits=False, reduction="sum", backend="cpu").isnan()
