"""The evaluator: importance log-weights, the log p(x) estimate against the ELBO, reports."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vae_kernels.app.data import binarize, load_mnist_5k
from vae_kernels.app.evaluate import elbo_per_image, evaluate_checkpoint, log_px_per_image, summarize
from vae_kernels.app.models import MLPVAE
from vae_kernels.app.train import TrainConfig, TrainingObjective, log_importance_weights, train


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_5k()


@pytest.fixture(scope="module")
def trained(mnist):
    """An MLP VAE trained for a few hundred steps, and 40 binarized test images."""
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    images = mnist.train_images[:1024]
    for epoch in range(4):
        for start in range(0, 1024, 64):
            x = binarize(images[start : start + 64], generator)
            optimizer.zero_grad()
            objective(x)["objective"].backward()
            optimizer.step()
    model.eval()
    test = binarize(mnist.test_images[::25], torch.Generator().manual_seed(1))
    return model, test


@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
def test_log_weights_match_torch_distributions(mnist, likelihood):
    torch.manual_seed(0)
    model = MLPVAE(likelihood=likelihood, backend="cpu").double()
    x = binarize(mnist.test_images[:6], torch.Generator().manual_seed(0)).double()
    eps = torch.randn(4, 6, 20, dtype=torch.float64)
    log_px_given_z, log_pz, log_qz = log_importance_weights(model, x, 4, eps)
    assert log_px_given_z.shape == log_pz.shape == log_qz.shape == (4, 6)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps
    out = model.decode(z.reshape(24, 20)).reshape(4, 6, 784)
    target = x.reshape(1, 6, 784).expand(4, 6, 784)
    if likelihood == "bernoulli":
        expected_px = Bernoulli(logits=out).log_prob(target).sum(-1)
    elif likelihood == "bernoulli_probs":
        expected_px = Bernoulli(probs=out).log_prob(target).sum(-1)
    else:
        expected_px = Normal(out, 1.0).log_prob(target).sum(-1)
    torch.testing.assert_close(log_px_given_z, expected_px, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(log_pz, Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_qz, Normal(mu, std).log_prob(z).sum(-1), rtol=1e-10, atol=1e-10)


def test_k1_log_weight_is_the_elbo_estimator(trained):
    """With K=1 the estimate is log p(x|z) + log p(z) - log q(z|x) for one z ~ q: the
    single-sample ELBO estimator (with a Monte Carlo KL). On the same z it equals the
    analytic-KL estimator up to log p(z) - log q(z|x) + KL, and it averages to the ELBO."""
    model, test = trained
    model = model.double()
    x = test.double()
    eps = torch.randn(1, x.shape[0], 20, dtype=torch.float64)
    log_px_given_z, log_pz, log_qz = log_importance_weights(model, x, 1, eps)
    log_w = (log_px_given_z + log_pz - log_qz)[0]
    import vae_kernels as vk

    recon, mu, logvar = model(x, eps[0])
    _, recon_nll, kl = vk.elbo_loss(
        recon, x.view_as(recon), mu, logvar, reduction="per_sample", return_components=True
    )
    z = mu + torch.exp(0.5 * logvar) * eps[0]
    mc_kl_minus_kl = (
        Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        + kl
    )
    torch.testing.assert_close(log_w, -recon_nll - kl + mc_kl_minus_kl, rtol=1e-10, atol=1e-8)
    model.float()

    # Averaged over many draws, the K=1 estimate is the ELBO.
    torch.manual_seed(0)
    repeated = test.repeat(30, 1, 1, 1)
    k1 = log_px_per_image(model, repeated, num_samples=1).view(30, -1).mean(0)
    elbo = elbo_per_image(model, test, num_samples=100)["elbo"]
    difference = summarize(k1 - elbo)
    assert abs(difference["mean"]) < 4 * difference["stderr"] + 0.05, difference


def test_log_px_estimate_is_at_least_the_elbo(trained):
    model, test = trained
    torch.manual_seed(0)
    elbo = elbo_per_image(model, test, num_samples=50)["elbo"]
    log_px = log_px_per_image(model, test, num_samples=500)
    gap = summarize(log_px - elbo)
    # The gap is KL(q(z|x) || p(z|x)) (less the estimator's bias): positive and a few nats.
    assert gap["mean"] > 5 * gap["stderr"] and gap["mean"] > 0.5, gap
    assert float((log_px >= elbo - 0.5).float().mean()) > 0.9
    # More samples give a tighter (larger) bound, on average.
    log_px_10 = log_px_per_image(model, test, num_samples=10)
    assert float(log_px.mean()) > float(log_px_10.mean())
    # And the bound stays a bound: below log p(x) <= 0 for binary data.
    assert float(log_px.max()) < 0


@pytest.mark.parametrize(
    "num_samples, max_rows", [(1, 20000), (7, 20000), (500, 20000), (500, 64), (60, 7)]
)
def test_estimate_is_exact_when_every_weight_is_p_x(mnist, num_samples, max_rows):
    """A decoder that ignores z and an encoder that outputs the prior make every
    importance weight p(x) exactly, so the estimate must equal log p(x) for every K and
    however the samples are chunked (a wrong log K or a chunk lost would show)."""
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    with torch.no_grad():
        for layer in (model.fc21, model.fc22, model.fc4):
            layer.weight.zero_()
        model.fc21.bias.zero_()
        model.fc22.bias.zero_()
        model.fc4.bias.copy_(torch.linspace(-3, 3, 784))
    x = binarize(mnist.test_images[:9], torch.Generator().manual_seed(0))
    log_px = log_px_per_image(model, x, num_samples=num_samples, max_rows=max_rows)
    exact = (
        Bernoulli(logits=model.fc4.bias.detach().double()).log_prob(x.view(9, 784).double()).sum(-1)
    )
    torch.testing.assert_close(log_px, exact, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(elbo_per_image(model, x)["elbo"], exact, rtol=1e-5, atol=1e-3)


def test_summarize_mean_and_standard_error():
    stats = summarize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert stats["mean"] == 2.5 and stats["n"] == 4
    assert stats["stderr"] == pytest.approx(math.sqrt(5.0 / 3.0) / 2.0)


def test_evaluate_checkpoint_reports_consistent_figures(mnist, tmp_path):
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=(mnist.train_images[:256, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:40, 0] * 255).byte().numpy(),
    )
    config = TrainConfig(
        epochs=1, batch_size=64, data=str(path), output_dir=str(tmp_path / "run"), quiet=True
    )
    train(config)
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoint.pt", k=64, limit=30)
    assert result["test_images"] == 30 and result["k"] == 64
    assert result["gap"]["mean"] == pytest.approx(
        result["log_px"]["mean"] - result["elbo"]["mean"], abs=1e-6
    )
    assert result["neg_elbo"]["mean"] == pytest.approx(-result["elbo"]["mean"])
    assert result["elbo"]["mean"] == pytest.approx(
        result["recon_log_lik"]["mean"] - result["kl"]["mean"], abs=1e-6
    )
    assert result["log_px"]["mean"] > result["elbo"]["mean"]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    from vae_kernels.app.data import DataError

    with pytest.raises(DataError, match="not a readable checkpoint"):
        evaluate_checkpoint(tmp_path / "bogus.pt")


# ------------------------------------------ the Laplace and continuous-Bernoulli likelihoods


@pytest.mark.parametrize("likelihood", ["laplace", "continuous_bernoulli"])
def test_new_likelihoods_log_weights_match_torch_distributions(mnist, likelihood):
    from torch.distributions import ContinuousBernoulli, Laplace

    torch.manual_seed(0)
    model = MLPVAE(likelihood=likelihood, backend="cpu").double()
    x = mnist.test_images[:6].double()  # intensities in [0, 1]: not binarized
    eps = torch.randn(4, 6, 20, dtype=torch.float64)
    log_px_given_z, _, _ = log_importance_weights(model, x, 4, eps)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    out = model.decode(z.reshape(24, 20)).reshape(4, 6, 784)
    target = x.reshape(1, 6, 784).expand(4, 6, 784)
    if likelihood == "laplace":
        expected_px = Laplace(out, 1.0).log_prob(target).sum(-1)
    else:
        expected_px = ContinuousBernoulli(logits=out).log_prob(target).sum(-1)
    torch.testing.assert_close(log_px_given_z, expected_px, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("likelihood", ["laplace", "continuous_bernoulli"])
def test_exact_estimate_for_the_new_likelihoods(mnist, likelihood):
    """As test_estimate_is_exact_when_every_weight_is_p_x: with z ignored and q = p(z),
    the estimate and the ELBO are the likelihood's own log p(x) of the intensities."""
    from torch.distributions import ContinuousBernoulli, Laplace

    model = MLPVAE(likelihood=likelihood, backend="cpu")
    with torch.no_grad():
        for layer in (model.fc21, model.fc22, model.fc4):
            layer.weight.zero_()
        model.fc21.bias.zero_()
        model.fc22.bias.zero_()
        model.fc4.bias.copy_(torch.linspace(-3, 3, 784))
    x = mnist.test_images[:9]
    log_px = log_px_per_image(model, x, num_samples=7)
    out = model.decode(torch.zeros(1, 20)).detach().double()
    if likelihood == "laplace":
        exact = Laplace(out, 1.0).log_prob(x.view(9, 784).double()).sum(-1)
    else:
        exact = ContinuousBernoulli(logits=out).log_prob(x.view(9, 784).double()).sum(-1)
    torch.testing.assert_close(log_px, exact, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(elbo_per_image(model, x)["elbo"], exact, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("likelihood", ["laplace", "continuous_bernoulli"])
def test_evaluate_checkpoint_of_a_new_likelihood(mnist, tmp_path, likelihood):
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=(mnist.train_images[:256, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:40, 0] * 255).byte().numpy(),
    )
    config = TrainConfig(
        epochs=1, batch_size=64, data=str(path), likelihood=likelihood,
        output_dir=str(tmp_path / "run"), quiet=True,
    )  # fmt: skip
    history = train(config)["history"]
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoint.pt", k=16, limit=30)
    assert result["test_images"] == 30
    for name in ("elbo", "log_px", "gap", "kl"):
        assert math.isfinite(result[name]["mean"]), (name, result[name])
    assert result["log_px"]["mean"] > result["elbo"]["mean"]
    # The ELBO of the evaluation is the training run's test ELBO (other z draws, a subset).
    assert result["neg_elbo"]["mean"] == pytest.approx(history[-1]["test_neg_elbo"], rel=0.1)


# ------------------------------------------ the discretized logistic mixture (dmol)


def test_exact_estimate_for_the_mixture(mnist):
    """As test_estimate_is_exact_when_every_weight_is_p_x, for ``dmol``: with z ignored
    and q = p(z), the estimate and the ELBO are the mixture's own log p(x), the library's
    per-image NLL of the 8-bit grid; chunked finely so the row budget (a row of 3M
    parameters per pixel counts as 3M image rows) splits the samples."""
    import vae_kernels as vk
    from vae_kernels.app.data import to_centered_grid

    model = MLPVAE(likelihood="dmol", mixture_components=2, backend="cpu")
    with torch.no_grad():
        for layer in (model.fc21, model.fc22, model.fc4):
            layer.weight.zero_()
        model.fc21.bias.zero_()
        model.fc22.bias.zero_()
        model.fc4.bias.copy_(torch.linspace(-3, 3, 6 * 784))
    x = to_centered_grid(mnist.test_images[:5])
    params = model.decode(torch.zeros(1, 20)).detach()
    exact = -vk.discretized_logistic_mixture_nll(
        params.double().expand(5, -1, -1, -1), x.double(), reduction="per_sample", backend="torch"
    )
    for max_rows in (20000, 13):
        log_px = log_px_per_image(model, x, num_samples=7, max_rows=max_rows)
        torch.testing.assert_close(log_px, exact, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(elbo_per_image(model, x)["elbo"], exact, rtol=1e-5, atol=1e-3)


def test_evaluate_a_dmol_checkpoint_per_dimension(mnist, tmp_path):
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=(mnist.train_images[:128, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:40, 0] * 255).byte().numpy(),
    )
    config = TrainConfig(
        epochs=1, batch_size=64, data=str(path), likelihood="dmol", model="conv",
        mixture_components=2, output_dir=str(tmp_path / "run"), quiet=True,
    )  # fmt: skip
    history = train(config)["history"]
    result = evaluate_checkpoint(tmp_path / "run", k=4, limit=10, elbo_samples=2)
    assert result["likelihood"] == "dmol" and result["dimensions"] == 784
    assert result["test_images"] == 10 and result["log_px"]["mean"] > result["elbo"]["mean"]
    per_image = {
        "neg_elbo_per_dim": result["neg_elbo"],
        "neg_log_px_per_dim": {"mean": -result["log_px"]["mean"], "stderr": result["log_px"]["stderr"]},
    }
    for name, stats in per_image.items():
        per_dim = result[name]
        assert per_dim["nats_per_dim"]["mean"] == pytest.approx(stats["mean"] / 784)
        assert per_dim["nats_per_dim"]["stderr"] == pytest.approx(stats["stderr"] / 784)
        assert per_dim["bits_per_dim"]["mean"] == pytest.approx(stats["mean"] / 784 / math.log(2))
    # An untrained-ish mixture: between the grid's best (0) and uniform (8 bits per pixel).
    assert 0.5 < result["neg_elbo_per_dim"]["bits_per_dim"]["mean"] < 8
    # The evaluation's -ELBO is the training run's test -ELBO (other z draws, a subset).
    assert result["neg_elbo"]["mean"] == pytest.approx(history[-1]["test_neg_elbo"], rel=0.1)
