"""Tensors with more than 2^31 elements: no int32 overflow in any offset (loss loop,
per-row sums, the backward kernel, sampling with K samples).

Marked slow (deselected by default); run manually, memory permitting (about 15 GiB free):
    python -m pytest -m slow tests/test_hardening_large.py

The oracle is cheap by construction: all-zero inputs with a few ones at known positions,
most of them past element 2^31 (and in the last, partial vector), so the exact loss is
the number of ones and the exact gradient is known everywhere.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import vae_kernels as vk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cpu" not in vk.available_backends(), reason="the C++ extension is not built"),
]

N = 2**31 + 2**20 + 7  # elements in one reconstruction tensor (bfloat16: 4 GiB each)


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _needs(gib: float) -> None:
    if _available_bytes() < gib * 2**30:
        pytest.skip(f"needs about {gib} GiB of free memory")


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()


@pytest.mark.parametrize("shape", [(1, N), (2, N // 2 + 1)], ids=["one-row", "two-rows"])
def test_squared_error_past_2_pow_31_elements(shape):
    _needs(15)
    numel = shape[0] * shape[1]
    flat_positions = [0, 2**31 - 1, 2**31, 2**31 + 4097, numel - 1]
    inp = torch.zeros(shape, dtype=torch.bfloat16, requires_grad=True)
    target = torch.zeros(shape, dtype=torch.bfloat16)
    target.view(-1)[flat_positions] = 1.0
    rows = torch.tensor(flat_positions) // shape[1]
    expected_rows = torch.bincount(rows, minlength=shape[0]).to(torch.float64)

    with torch.no_grad():  # (no 4 GiB local-gradient buffer kept alive by a graph)
        out = vk.mse_loss(inp, target, reduction="per_sample", backend="cpu")
    assert out.dtype == torch.bfloat16 and out.shape == (shape[0],)
    torch.testing.assert_close(out.double(), expected_rows, rtol=0, atol=0)

    total = vk.mse_loss(inp, target, reduction="sum", backend="cpu")
    assert total.item() == len(flat_positions)

    # Backward writes the input gradient over all 2^31+ elements: -2 at the ones.
    total.backward()
    grad = inp.grad.view(-1)
    assert grad[flat_positions].eq(-2).all()
    assert grad.sum().item() == -2 * len(flat_positions)  # float accumulation, exact here
    assert grad[numel // 2 : numel // 2 + 1000].eq(0).all()
    inp.grad = None
    del grad, total
    gc.collect()

    # reduction="none": the elementwise loss at every offset.
    with torch.no_grad():
        elementwise = vk.mse_loss(inp, target, reduction="none", backend="cpu")
    flat = elementwise.view(-1)
    assert flat[flat_positions].eq(1).all()
    assert flat.sum().item() == len(flat_positions)


def test_bernoulli_logits_mean_past_2_pow_31_elements():
    """A loss with transcendental math over 2^31+ elements: logits 0 with target 1/2 give
    log(2) per element (bfloat16 inputs are exact), so the mean is log(2) and the
    per-row sums are row_len * log(2) (summed in float32 chunks, then float64)."""
    _needs(10)
    shape = (2, N // 2 + 1)
    logits = torch.zeros(shape, dtype=torch.bfloat16)
    target = torch.full(shape, 0.5, dtype=torch.bfloat16)
    mean = vk.bernoulli_nll(logits, target, reduction="mean", backend="cpu")
    assert mean.double().item() == pytest.approx(0.6931471805599453, rel=4e-3)  # bf16 output
    per_row = vk.bernoulli_nll(logits, target, reduction="per_sample", backend="cpu")
    expected = torch.full((2,), shape[1] * 0.6931471805599453, dtype=torch.float64)
    torch.testing.assert_close(per_row.double(), expected, rtol=8e-3, atol=0)


def test_reparameterize_k_samples_past_2_pow_31_elements():
    """K * numel > 2^31: z[k, i] = mu + std * eps[k, i] at every offset, and the
    backward's sum over k reads every sample."""
    _needs(10)
    k, m = 8, 2**28 + 3
    mu = torch.zeros(m, dtype=torch.bfloat16, requires_grad=True)
    logvar = torch.zeros(m, dtype=torch.bfloat16, requires_grad=True)
    eps = torch.empty(k, m, dtype=torch.bfloat16)
    for j in range(k):
        eps[j].fill_(j + 1)
    z = vk.reparameterize(mu, logvar, eps, num_samples=k, backend="cpu")
    assert z.shape == (k, m)
    for j in range(k):
        assert z[j].eq(j + 1).all(), f"sample {j}"
    z.backward(torch.ones_like(z))
    assert mu.grad.eq(k).all()
    assert logvar.grad.eq(0.5 * sum(range(1, k + 1))).all()
