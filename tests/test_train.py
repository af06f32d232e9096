"""Training: fused and eager backends agree step for step; objectives; loss falls; resume."""

import contextlib
import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vae_kernels.app.data import binarize, load_mnist_5k
from vae_kernels.app.models import ConvVAE, MLPVAE
from vae_kernels.app.train import (
    TrainConfig,
    TrainingObjective,
    epoch_batches,
    kl_weight,
    negative_elbo_terms,
    negative_iwae_terms,
    run_epoch,
    train,
    train_step,
)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_5k()


@pytest.fixture(scope="module")
def binary_batch(mnist):
    return binarize(mnist.train_images[:64], torch.Generator().manual_seed(0))


def step_with_backend(
    backend, model_cls, x, eps, objective="elbo", k=1, free_bits=0.0, beta=1.0, dtype=torch.float64
):
    torch.manual_seed(0)  # the same initial weights for both backends
    model = model_cls(backend=backend).to(dtype)
    # SGD: the step is proportional to the gradient (Adam's first step is ~lr*sign(g),
    # which would amplify rounding differences of near-zero gradients).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    objective_module = TrainingObjective(model, objective, k, free_bits)
    terms = train_step(objective_module, optimizer, x.to(dtype), beta, eps.to(dtype))
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return terms, grads, params


STEP_CASES = [
    (MLPVAE, "elbo", 1, 0.0, 1.0),
    (MLPVAE, "elbo", 1, 0.05, 0.5),
    (MLPVAE, "iwae", 5, 0.0, 1.0),
    (ConvVAE, "elbo", 1, 0.0, 1.0),
]


def case_inputs(binary_batch, objective, k):
    x = binary_batch[:32]
    eps_shape = (32, 20) if objective == "elbo" else (k, 32, 20)
    return x, torch.randn(eps_shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_cls, objective, k, free_bits, beta", STEP_CASES)
def test_fused_and_torch_backends_give_the_same_step(
    binary_batch, model_cls, objective, k, free_bits, beta
):
    # float64: the kernels compute in float64 then, so the two backends must agree to
    # rounding; any difference is a wrong formula or a wrong gradient.
    x, eps = case_inputs(binary_batch, objective, k)
    fused = step_with_backend("cpu", model_cls, x, eps, objective, k, free_bits, beta)
    eager = step_with_backend("torch", model_cls, x, eps, objective, k, free_bits, beta)
    for name in ("objective", "neg_elbo", "recon", "kl"):
        torch.testing.assert_close(fused[0][name], eager[0][name], rtol=1e-10, atol=1e-9)
    for name in fused[1]:
        torch.testing.assert_close(
            fused[1][name], eager[1][name], rtol=1e-8, atol=1e-10, msg=with_name(name)
        )
        torch.testing.assert_close(
            fused[2][name], eager[2][name], rtol=1e-8, atol=1e-10, msg=with_name(name)
        )
    # A sanity floor on the values themselves: an untrained model on binary MNIST.
    assert 400 < float(fused[0]["neg_elbo"]) < 700


@contextlib.contextmanager
def relu_branches(decisions: list, replay: bool):
    """Records which side of 0 each ReLU input lies on (``replay=False``), or makes each
    ReLU take the recorded side (``replay=True``), call by call.

    Both models' ReLUs go through ``torch.relu`` (``nn.ReLU`` calls it via ``F.relu``).
    A float32 run and a float64 run may disagree on the sign of a pre-activation within
    rounding of 0, and one flipped unit moves the gradients by far more than rounding:
    replaying the float32 run's branches in the float64 reference compares the two on the
    same piece of the piecewise-smooth function.
    """
    original = torch.relu
    replayed = iter(decisions)

    def relu(x):
        if replay:
            positive = next(replayed)
            return torch.where(positive, x, torch.zeros((), dtype=x.dtype))
        decisions.append(x.detach() > 0)
        return original(x)

    torch.relu = relu
    try:
        yield
    finally:
        torch.relu = original
    if replay:
        assert next(replayed, None) is None, "the float64 run called ReLU fewer times"


def with_name(name):
    """An assert_close message that keeps torch's mismatch statistics."""
    return lambda statistics: f"{name}: {statistics}"


@pytest.mark.parametrize("model_cls, objective, k, free_bits, beta", STEP_CASES)
def test_float32_fused_step_matches_the_float64_reference(
    binary_batch, model_cls, objective, k, free_bits, beta
):
    x, eps = case_inputs(binary_batch, objective, k)
    branches = []
    with relu_branches(branches, replay=False):
        fused = step_with_backend(
            "cpu", model_cls, x, eps, objective, k, free_bits, beta, dtype=torch.float32
        )
    with relu_branches(branches, replay=True):
        oracle = step_with_backend("torch", model_cls, x, eps, objective, k, free_bits, beta)
    # Only units within rounding of 0 may take another side in the float64 run's own
    # decisions: a wrong sample or weight would flip many.
    own_branches = []
    with relu_branches(own_branches, replay=False):
        step_with_backend("torch", model_cls, x, eps, objective, k, free_bits, beta)
    units = sum(b.numel() for b in branches)
    flipped = sum(int((a != b).sum()) for a, b in zip(branches, own_branches))
    assert len(own_branches) == len(branches) and flipped <= 1e-4 * units, (flipped, units)
    for name in ("objective", "neg_elbo", "recon", "kl"):
        torch.testing.assert_close(
            fused[0][name].double(), oracle[0][name], rtol=1e-5, atol=1e-4, msg=with_name(name)
        )
    for name in fused[1]:
        scale = float(oracle[1][name].abs().max())
        torch.testing.assert_close(
            fused[1][name].double(), oracle[1][name], rtol=1e-4, atol=1e-4 * scale,
            msg=with_name(name),
        )


def test_elbo_matches_the_pytorch_examples_loss_function(binary_batch):
    # pytorch/examples vae/main.py: BCE(sigmoid decoder, sum) + KLD, summed over the batch.
    torch.manual_seed(0)
    model = MLPVAE(likelihood="bernoulli_probs", backend="cpu")
    x = binary_batch[:16]
    eps = torch.randn(16, 20)
    terms = negative_elbo_terms(model, x, eps=eps)
    recon, mu, logvar = model(x, eps)
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    torch.testing.assert_close(terms["objective"] * 16, bce + kld, rtol=1e-5, atol=1e-3)


def test_free_bits_clamps_the_batch_averaged_kl_per_dimension(binary_batch):
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    x = binary_batch[:32]
    eps = torch.randn(32, 20)
    recon, mu, logvar = model(x, eps)
    kl_elementwise = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    kl_per_dim = kl_elementwise.mean(0)
    free_bits = float(kl_per_dim.detach().median())  # half the dimensions fall under lambda
    beta = 0.7
    terms = negative_elbo_terms(model, x, beta=beta, free_bits=free_bits, eps=eps)
    recon_nll = F.binary_cross_entropy_with_logits(recon, x.view(32, -1), reduction="sum") / 32
    expected = recon_nll + beta * kl_per_dim.clamp_min(free_bits).sum()
    torch.testing.assert_close(terms["objective"], expected, rtol=1e-5, atol=1e-4)
    # Clamping per sample instead of after the batch average would give another number.
    per_sample = recon_nll + beta * kl_elementwise.clamp_min(free_bits).sum(1).mean()
    assert abs(float((per_sample - expected).detach())) > 1e-3
    # The reported ELBO is the true one, whatever the objective.
    torch.testing.assert_close(
        terms["neg_elbo"], (recon_nll + kl_elementwise.sum(1).mean()).detach(), rtol=1e-5, atol=1e-4
    )


def test_free_bits_above_every_kl_leaves_only_reconstruction_gradients(binary_batch):
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    x, eps = binary_batch[:16], torch.randn(16, 20)
    negative_elbo_terms(model, x, free_bits=100.0, eps=eps)["objective"].backward()
    with_free_bits = model.fc21.weight.grad.clone()
    model.zero_grad()
    recon, _, _ = model(x, eps)
    F.binary_cross_entropy_with_logits(recon, x.view(16, -1), reduction="sum").div(16).backward()
    torch.testing.assert_close(with_free_bits, model.fc21.weight.grad, rtol=1e-4, atol=1e-6)


def test_iwae_bound_is_between_elbo_and_zero_and_k1_is_the_elbo_estimator(binary_batch):
    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    x = binary_batch[:8]
    eps = torch.randn(1, 8, 20)
    one = negative_iwae_terms(model, x, 1, eps)
    torch.testing.assert_close(one["objective"], one["neg_elbo"])  # K=1: the ELBO estimator
    eps = torch.randn(50, 8, 20)
    many = negative_iwae_terms(model, x, 50, eps)
    # -IWAE_K <= -(mean of log-weights) (Jensen), on the same samples.
    assert float(many["objective"].detach()) < float(many["neg_elbo"])


def test_kl_warmup_is_linear_in_steps():
    config = TrainConfig(beta=2.0, kl_warmup=2.0)
    weights = [kl_weight(config, step, steps_per_epoch=10) for step in range(25)]
    assert weights[0] == pytest.approx(0.1)
    assert weights[9] == pytest.approx(1.0)
    assert weights[19] == pytest.approx(2.0) and weights[24] == pytest.approx(2.0)
    assert all(b > a for a, b in zip(weights[:19], weights[1:20]))
    assert kl_weight(TrainConfig(beta=0.5), 0, 10) == 0.5


def test_short_training_run_lowers_the_loss(mnist):
    torch.manual_seed(0)
    images = mnist.train_images[:640]
    config = TrainConfig(batch_size=64)
    model = MLPVAE(backend="cpu")
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = torch.utils.data.DistributedSampler(range(640), num_replicas=1, rank=0, seed=0)
    generator = torch.Generator().manual_seed(0)
    per_epoch = []
    for epoch in range(4):
        sums = run_epoch(
            objective,
            optimizer,
            images,
            epoch_batches(sampler, epoch, 64),
            config,
            torch.device("cpu"),
            binarize_generator=generator,
        )
        assert int(sums[4]) == 640
        per_epoch.append(float(sums[1] / sums[4]))
    assert per_epoch[0] > per_epoch[-1] + 50, per_epoch
    assert all(math.isfinite(v) for v in per_epoch)


@pytest.fixture
def small_npz(mnist, tmp_path):
    path = tmp_path / "small.npz"
    np.savez(
        path,
        x_train=(mnist.train_images[:256, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:64, 0] * 255).byte().numpy(),
    )
    return str(path)


def test_resume_continues_exactly(small_npz, tmp_path):
    base = TrainConfig(epochs=2, batch_size=64, data=small_npz, quiet=True, kl_warmup=1.5)
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "straight")))
    train(dataclasses.replace(base, epochs=1, output_dir=str(tmp_path / "resumed")))
    resumed = train(dataclasses.replace(base, output_dir=str(tmp_path / "resumed"), resume="auto"))
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    for key in ("train_neg_elbo", "beta"):
        assert resumed["history"][1][key] == pytest.approx(straight["history"][1][key], rel=1e-6)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model_state"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=with_name(name))


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="objective='iwae'.*free_bits=0.5"):
        TrainConfig(objective="iwae", free_bits=0.5).validate()
    with pytest.raises(ValueError, match="likelihood='mse' is a squared error"):
        TrainConfig(objective="iwae", likelihood="mse").validate()
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        TrainConfig(beta=-1.0).validate()
    with pytest.raises(ValueError, match="backend must be one of"):
        TrainConfig(backend="cuda-ish").validate()


# ------------------------------------------ the Laplace and continuous-Bernoulli likelihoods

NEW_LIKELIHOODS = ["laplace", "continuous_bernoulli"]


@pytest.fixture(scope="module")
def intensity_batch(mnist):
    """Pixels in [0, 1], not binarized: what the continuous likelihoods train on."""
    x = mnist.train_images[:32]
    assert ((x > 0) & (x < 1)).any()
    return x


@pytest.mark.parametrize("likelihood", NEW_LIKELIHOODS)
@pytest.mark.parametrize("model_cls", [MLPVAE, ConvVAE])
def test_new_likelihoods_fused_and_torch_backends_give_the_same_step(
    intensity_batch, model_cls, likelihood
):
    # As test_fused_and_torch_backends_give_the_same_step, in float64, on intensities.
    x = intensity_batch
    eps = torch.randn(32, 20, generator=torch.Generator().manual_seed(1))
    model = functools.partial(model_cls, likelihood=likelihood)
    fused = step_with_backend("cpu", model, x, eps)
    eager = step_with_backend("torch", model, x, eps)
    for name in ("objective", "neg_elbo", "recon", "kl"):
        torch.testing.assert_close(fused[0][name], eager[0][name], rtol=1e-10, atol=1e-9)
    for name in fused[1]:
        torch.testing.assert_close(
            fused[1][name], eager[1][name], rtol=1e-8, atol=1e-10, msg=with_name(name)
        )
        torch.testing.assert_close(
            fused[2][name], eager[2][name], rtol=1e-8, atol=1e-10, msg=with_name(name)
        )
    assert all(math.isfinite(float(value)) for value in fused[0].values())


@pytest.mark.parametrize("likelihood", NEW_LIKELIHOODS)
def test_new_likelihoods_iwae_step_matches_torch_distributions(intensity_batch, likelihood):
    # The IWAE objective's log p(x|z) is the likelihood's own density, on both backends.
    from torch.distributions import ContinuousBernoulli, Laplace, Normal

    x = intensity_batch[:8].double()
    eps = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(0)
    model = MLPVAE(likelihood=likelihood, backend="cpu").double()
    terms = negative_iwae_terms(model, x, 3, eps)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    out = model.decode(z.reshape(24, 20)).reshape(3, 8, 784)
    target = x.reshape(1, 8, 784)
    if likelihood == "laplace":
        log_px = Laplace(out, 1.0).log_prob(target).sum(-1)
    else:
        log_px = ContinuousBernoulli(logits=out).log_prob(target).sum(-1)
    log_w = (
        log_px
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    )
    bound = (torch.logsumexp(log_w, 0) - math.log(3)).mean()
    torch.testing.assert_close(terms["objective"], -bound, rtol=1e-9, atol=1e-8)
    model.backend = "torch"
    torch.testing.assert_close(negative_iwae_terms(model, x, 3, eps)["objective"], -bound)


def test_only_the_bernoulli_likelihoods_binarize(mnist):
    from vae_kernels.app import train as train_module

    binary = [name for name in train_module.LIKELIHOODS if train_module.is_binary_likelihood(name)]
    assert binary == ["bernoulli", "bernoulli_probs"]
    for likelihood in NEW_LIKELIHOODS:
        # The test set as the model sees it: the intensities themselves.
        assert train_module.fixed_test_images(mnist, likelihood) is mnist.test_images
    binary = train_module.fixed_test_images(mnist, "bernoulli")
    assert set(binary.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("likelihood", NEW_LIKELIHOODS)
def test_short_training_run_with_new_likelihood_lowers_the_loss(mnist, monkeypatch, likelihood):
    from vae_kernels.app import train as train_module

    def no_binarization(*args, **kwargs):
        raise AssertionError(f"{likelihood} data must not be binarized")

    monkeypatch.setattr(train_module.data_module, "binarize", no_binarization)
    seen = []
    original_step = train_module.train_step

    def spy_step(objective, optimizer, x, *args, **kwargs):
        seen.append(x)
        return original_step(objective, optimizer, x, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", spy_step)
    torch.manual_seed(0)
    images = mnist.train_images[:512]
    config = TrainConfig(batch_size=64, likelihood=likelihood)
    model = MLPVAE(likelihood=likelihood, backend="cpu")
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = torch.utils.data.DistributedSampler(range(512), num_replicas=1, rank=0, seed=0)
    per_epoch = []
    for epoch in range(2):
        sums = train_module.run_epoch(
            objective, optimizer, images, epoch_batches(sampler, epoch, 64), config,
            torch.device("cpu"), binarize_generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert int(sums[4]) == 512
        per_epoch.append(float(sums[1] / sums[4]))
    assert all(math.isfinite(v) for v in per_epoch), per_epoch
    # The first epoch's mean includes the untrained start: the second is well below it.
    assert per_epoch[1] < per_epoch[0] - 10, per_epoch
    # Each batch held the images' own intensities.
    assert len(seen) == 16
    assert all(((x > 0) & (x < 1)).any() for x in seen)
    first_epoch = torch.cat(seen[:8]).flatten()
    assert torch.equal(torch.sort(first_epoch)[0], torch.sort(images.flatten())[0])


# ------------------------------------------ the discretized logistic mixture (dmol)


@pytest.fixture(scope="module")
def grid_batch(mnist):
    """8-bit pixels on the 256-level grid of [-1, 1]: what the mixture trains on."""
    from vae_kernels.app.data import to_centered_grid

    return to_centered_grid(mnist.train_images[:32])


@pytest.mark.parametrize("objective, k", [("elbo", 1), ("iwae", 3)])
def test_dmol_fused_and_torch_backends_give_the_same_step(grid_batch, objective, k):
    # As test_fused_and_torch_backends_give_the_same_step, for the conv model's mixture.
    x = grid_batch[:16]
    shape = (16, 20) if objective == "elbo" else (k, 16, 20)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    model = functools.partial(ConvVAE, likelihood="dmol", mixture_components=3)
    fused = step_with_backend("cpu", model, x, eps, objective, k)
    eager = step_with_backend("torch", model, x, eps, objective, k)
    for name in ("objective", "neg_elbo", "recon", "kl"):
        torch.testing.assert_close(fused[0][name], eager[0][name], rtol=1e-10, atol=1e-9)
    for name in fused[1]:
        torch.testing.assert_close(
            fused[1][name], eager[1][name], rtol=1e-8, atol=1e-10, msg=with_name(name)
        )
    # An untrained mixture (scales near 1 on [-1, 1]): over a nat per pixel, and below the
    # uniform distribution's log 256, as its edge bins hold the background's -1.
    assert 784 < float(fused[0]["neg_elbo"]) < 784 * math.log(256)


def test_dmol_elbo_is_the_mixture_nll_plus_the_kl(grid_batch):
    import vae_kernels as vk

    torch.manual_seed(0)
    model = ConvVAE(likelihood="dmol", mixture_components=3, backend="cpu").double()
    x = grid_batch[:8].double()
    eps = torch.randn(8, 20, dtype=torch.float64)
    terms = negative_elbo_terms(model, x, beta=0.5, eps=eps)
    params, mu, logvar = model(x, eps)
    recon = vk.discretized_logistic_mixture_nll(params, x, reduction="per_sample", backend="torch")
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(terms["recon"], recon.mean().detach(), rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(terms["kl"], kl.mean().detach(), rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(terms["objective"], recon.mean() + 0.5 * kl.mean())
    # IWAE's log p(x|z) is the same per-image mixture log-likelihood.
    from vae_kernels.app.train import log_importance_weights

    log_px_given_z, _, _ = log_importance_weights(model, x, 1, eps.unsqueeze(0))
    torch.testing.assert_close(log_px_given_z[0], -recon.detach(), rtol=1e-10, atol=1e-8)


def test_dmol_conv_training_lowers_the_loss(mnist, monkeypatch):
    from vae_kernels.app import train as train_module

    def no_binarization(*args, **kwargs):
        raise AssertionError("dmol data must not be binarized")

    monkeypatch.setattr(train_module.data_module, "binarize", no_binarization)
    torch.manual_seed(0)
    images = train_module.model_data(mnist.train_images[:256], "dmol")
    config = TrainConfig(batch_size=64, likelihood="dmol")
    model = ConvVAE(likelihood="dmol", mixture_components=3, backend="cpu")
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    sampler = torch.utils.data.DistributedSampler(range(256), num_replicas=1, rank=0, seed=0)
    per_epoch = []
    for epoch in range(3):
        sums = run_epoch(
            objective, optimizer, images, epoch_batches(sampler, epoch, 64), config,
            torch.device("cpu"),
        )  # fmt: skip
        per_epoch.append(float(sums[1] / sums[4]))
    assert all(math.isfinite(v) for v in per_epoch), per_epoch
    assert per_epoch[2] < per_epoch[0] - 50, per_epoch  # nats per image


def test_dmol_data_is_the_8_bit_grid(mnist):
    from vae_kernels.app import train as train_module

    test = train_module.fixed_test_images(mnist, "dmol")
    levels = (test.double() + 1) * 127.5
    assert torch.equal(levels.round(), (mnist.test_images.double() * 255).round())
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert len(test.unique()) > 200  # not binarized
    assert train_module.model_data(mnist.test_images, "gaussian") is mnist.test_images


def test_per_dimension_is_nats_over_dimensions_and_bits_over_ln2():
    from vae_kernels.app.train import per_dimension

    figures = per_dimension(784.0 * math.log(2), 784)
    assert figures["nats_per_dim"] == pytest.approx(math.log(2))
    assert figures["bits_per_dim"] == pytest.approx(1.0)


def test_dmol_config_errors():
    with pytest.raises(ValueError, match="mixture_components must be a positive int, got 0"):
        TrainConfig(likelihood="dmol", mixture_components=0).validate()
    TrainConfig(likelihood="dmol", objective="iwae").validate()  # a normalized likelihood
