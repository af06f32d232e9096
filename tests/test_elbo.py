"""elbo_loss: the fused negative ELBO against the oracle, its components, gradients,
the nn.Module wrapper, and the drop-in for pytorch/examples vae/main.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vae_kernels as vk

from conftest import ALL_DTYPES, assert_close_to_oracle, requires_cpu_backend, upstream_weights

pytestmark = requires_cpu_backend

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "gaussian", "mse", "laplace", "continuous_bernoulli"]
ELBO_REDUCTIONS = ["batchmean", "sum", "per_sample"]


def make_inputs(likelihood: str, batch=6, data_shape=(3, 7, 5), latent=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *data_shape)
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        recon, x = torch.randn(shape, generator=g, dtype=torch.float64) * 2, torch.rand(shape, generator=g, dtype=torch.float64)
    elif likelihood == "bernoulli_probs":
        recon = torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05
        x = torch.rand(shape, generator=g, dtype=torch.float64).round()
    else:
        recon, x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    mu = torch.randn(batch, latent, generator=g, dtype=torch.float64)
    logvar = torch.randn(batch, latent, generator=g, dtype=torch.float64) * 0.5
    return recon, x, mu, logvar


@pytest.mark.parametrize("reduction", ELBO_REDUCTIONS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_matches_oracle_with_components(likelihood, dtype, reduction):
    inputs = [t.to(dtype).requires_grad_() for t in make_inputs(likelihood)]
    out = vk.elbo_loss(*inputs, likelihood=likelihood, beta=0.7, reduction=reduction,
                       return_components=True, backend="cpu")
    rounded = [t.detach().double().requires_grad_() for t in inputs]
    expected = vk.elbo_loss(*rounded, likelihood=likelihood, beta=0.7, reduction=reduction,
                            return_components=True, backend="torch")
    for got, want in zip(out, expected):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close_to_oracle(got, want.detach(), dtype, scale=100)
    # Gradients of a weighted combination of all three outputs.
    weights = [upstream_weights(o, seed=i) for i, o in enumerate(out)]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), inputs[:1] + inputs[2:])
    grads64 = torch.autograd.grad(sum((o * w.double()).sum() for o, w in zip(expected, weights)),
                                  rounded[:1] + rounded[2:])
    for got, want in zip(grads, grads64):
        assert_close_to_oracle(got, want, dtype, scale=10)


@pytest.mark.parametrize("reduction", ELBO_REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_gradcheck(likelihood, reduction):
    recon, x, mu, logvar = (t.requires_grad_() for t in make_inputs(likelihood, 3, (4,), 2, seed=1))
    weights = {}

    def fn(recon, mu, logvar):
        outs = vk.elbo_loss(recon, x, mu, logvar, likelihood=likelihood, beta=1.3,
                            reduction=reduction, return_components=True, backend="cpu")
        for i, o in enumerate(outs):
            weights.setdefault(i, upstream_weights(o, seed=i))
        return tuple(o * weights[i] for i, o in enumerate(outs))

    assert torch.autograd.gradcheck(fn, (recon, mu, logvar))


def test_elbo_is_recon_plus_beta_kl():
    recon, x, mu, logvar = make_inputs("bernoulli", seed=2)
    loss, rec, kl = vk.elbo_loss(recon, x, mu, logvar, beta=2.5, return_components=True)
    torch.testing.assert_close(rec, vk.bernoulli_nll(recon, x))
    torch.testing.assert_close(kl, vk.gaussian_kl(mu, logvar))
    torch.testing.assert_close(loss, rec + 2.5 * kl)
    assert not torch.equal(loss, vk.elbo_loss(recon, x, mu, logvar, beta=1.0))


def test_elbo_module():
    recon, x, mu, logvar = make_inputs("mse", seed=3)
    module = vk.ELBOLoss(likelihood="mse", beta=0.5, reduction="sum")
    torch.testing.assert_close(
        module(recon, x, mu, logvar),
        vk.elbo_loss(recon, x, mu, logvar, likelihood="mse", beta=0.5, reduction="sum"))
    assert "likelihood='mse'" in repr(module)
    with pytest.raises(ValueError, match="reduction"):
        vk.ELBOLoss(reduction="mean")


def test_loss_modules_match_functions():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 5, 8, generator=g)
    torch.testing.assert_close(vk.GaussianKLLoss(reduction="sum")(a, b), vk.gaussian_kl(a, b, reduction="sum"))
    torch.testing.assert_close(vk.BernoulliNLLLoss()(a, b.sigmoid()), vk.bernoulli_nll(a, b.sigmoid()))
    lv = torch.zeros(8, requires_grad=True)
    vk.GaussianNLLLoss()(a, b, lv).backward()
    assert lv.grad is not None and lv.grad.shape == (8,)


# ------------------------------------------------------------- pytorch/examples drop-in


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py, verbatim architecture."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar, eps):
        std = torch.exp(0.5 * logvar)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, eps):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


def examples_loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def test_drop_in_for_pytorch_examples_loss_function():
    torch.manual_seed(0)
    model = ExamplesVAE()
    x = torch.rand(128, 1, 28, 28).round()
    eps = torch.randn(128, 20)

    def loss_and_grads(loss_fn):
        model.zero_grad()
        recon, mu, logvar = model(x, eps)
        loss = loss_fn(recon, x, mu, logvar)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    theirs, their_grads = loss_and_grads(examples_loss_function)
    ours, our_grads = loss_and_grads(
        lambda r, x, m, l: vk.elbo_loss(r, x.view(-1, 784), m, l,
                                        likelihood="bernoulli_probs", reduction="sum"))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reduction", ELBO_REDUCTIONS)
@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
@pytest.mark.parametrize("scale", ["float", "scalar", "per_pixel"])
def test_elbo_with_a_reconstruction_scale(likelihood, scale, reduction):
    """recon_scale: fixed (float) or learned (a tensor that gets its gradient), equal to the
    likelihood's own loss plus beta * KL."""
    recon, x, mu, logvar = (t.requires_grad_() for t in make_inputs(likelihood, seed=2))
    value = {"float": -0.4, "scalar": torch.tensor(0.3, dtype=torch.float64),
             "per_pixel": torch.randn(recon.shape[1:], dtype=torch.float64) * 0.3}[scale]
    if isinstance(value, torch.Tensor):
        value.requires_grad_()
    out = vk.elbo_loss(recon, x, mu, logvar, likelihood=likelihood, beta=0.7, recon_scale=value,
                       reduction=reduction, return_components=True, backend="cpu")
    nll = vk.gaussian_nll if likelihood == "gaussian" else vk.laplace_nll
    recon_nll = nll(recon, x, value, reduction=reduction, backend="torch")
    kl = vk.gaussian_kl(mu, logvar, reduction=reduction, backend="torch")
    for got, want in zip(out, (recon_nll + 0.7 * kl, recon_nll, kl)):
        torch.testing.assert_close(got, want)
    leaves = [recon, mu, logvar] + ([value] if isinstance(value, torch.Tensor) else [])
    grads = torch.autograd.grad(out[0].sum(), leaves)
    expected = torch.autograd.grad((recon_nll + 0.7 * kl).sum(), leaves)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_elbo_recon_scale_needs_a_likelihood_with_a_scale():
    recon, x, mu, logvar = make_inputs("bernoulli")
    with pytest.raises(ValueError, match="recon_scale applies to the likelihoods with a scale"):
        vk.elbo_loss(recon, x, mu, logvar, recon_scale=0.5)
    with pytest.raises(ValueError, match="recon_scale of shape"):
        vk.elbo_loss(recon, x, mu, logvar, likelihood="laplace",
                     recon_scale=torch.zeros(4, dtype=torch.float64))
